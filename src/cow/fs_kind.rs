//! Which file system a path is on, and whether it can clone file extents (reflink).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// File systems pgfork tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// XFS (clones when made with `-m reflink=1`).
    Xfs,
    /// Btrfs (always clones).
    Btrfs,
    /// OpenZFS (clones through copy_file_range/FICLONE from 2.2 when block cloning is enabled).
    Zfs,
    /// ext4 (no clones).
    Ext4,
    /// tmpfs (no clones).
    Tmpfs,
    /// overlayfs.
    Overlay,
    /// Anything else, by its magic number.
    Other(i64),
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsKind::Xfs => f.write_str("xfs"),
            FsKind::Btrfs => f.write_str("btrfs"),
            FsKind::Zfs => f.write_str("zfs"),
            FsKind::Ext4 => f.write_str("ext4"),
            FsKind::Tmpfs => f.write_str("tmpfs"),
            FsKind::Overlay => f.write_str("overlayfs"),
            FsKind::Other(magic) => write!(f, "file system 0x{magic:x}"),
        }
    }
}

impl FsKind {
    /// The file system of `path` (statfs).
    pub fn of(path: &Path) -> Result<FsKind> {
        let stat = nix::sys::statfs::statfs(path).at("statfs", path)?;
        #[allow(clippy::useless_conversion)] // the field's width differs between targets
        let magic = i64::from(stat.filesystem_type().0);
        Ok(match magic {
            0x5846_5342 => FsKind::Xfs,
            0x9123_683E => FsKind::Btrfs,
            0x2FC1_2FC1 => FsKind::Zfs,
            0xEF53 => FsKind::Ext4,
            0x0102_1994 => FsKind::Tmpfs,
            0x794C_7630 => FsKind::Overlay,
            other => FsKind::Other(other),
        })
    }
}

/// How files get from the source to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyMethod {
    /// FICLONE: the destination shares the source's extents; costs metadata only.
    Reflink,
    /// copy_file_range over the data regions: a real copy (OpenZFS may still clone).
    Copy,
}

impl fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::Copy => "copy",
        })
    }
}

/// Whether a FICLONE error means "this pair of files cannot share extents" rather than a failure.
pub fn is_clone_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS | libc::EPERM)
    )
}

/// Finds out whether files under `src_dir` can be cloned into `dst_dir` by cloning `sample` (a
/// small file under `src_dir`) into a temporary file in `dst_dir`.
pub fn probe_reflink(sample: &Path, dst_dir: &Path) -> Result<CopyMethod> {
    let src = File::open(sample).at("open", sample)?;
    let probe = dst_dir.join(format!(".pgfork-reflink-probe.{}", std::process::id()));
    let dst = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&probe).at("create", &probe)?;
    let outcome = reflink_copy::reflink_file(&src, &dst);
    drop(dst);
    let _ = fs::remove_file(&probe);
    match outcome {
        Ok(()) => Ok(CopyMethod::Reflink),
        Err(e) if is_clone_unsupported(&e) => Ok(CopyMethod::Copy),
        Err(e) => Err(Error::io("clone", sample, e)),
    }
}
