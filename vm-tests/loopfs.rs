//! Loop-mounted file systems for tests: an image file, formatted, mounted, always unmounted.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A file system kind to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    XfsReflink,
    Btrfs,
    Ext4,
    Tmpfs,
}

/// A mounted file system, unmounted and deleted on drop.
pub struct LoopFs {
    /// Holds the image; removed after the unmount in `drop`.
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Whether the tools for `kind` exist; under CI=true their absence fails the test.
pub fn available(kind: Kind) -> bool {
    let tool = match kind {
        Kind::XfsReflink => "mkfs.xfs",
        Kind::Btrfs => "mkfs.btrfs",
        Kind::Ext4 => "mkfs.ext4",
        Kind::Tmpfs => "mount",
    };
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "CI=true but {tool} is missing (run scripts/install-deps)");
        eprintln!("\n!!! SKIPPED: {tool} missing; run scripts/install-deps !!!\n");
    }
    found
}

impl LoopFs {
    /// Creates a `size_mb` image under /var/tmp, formats it as `kind`, and mounts it.
    pub fn new(kind: Kind, size_mb: u64) -> LoopFs {
        let dir = tempfile::Builder::new().prefix("pgfork-vm-").tempdir_in("/var/tmp").unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        if kind == Kind::Tmpfs {
            run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"]).arg(&mnt));
        } else {
            run(Command::new("truncate").arg("-s").arg(format!("{size_mb}M")).arg(&img));
            match kind {
                Kind::XfsReflink => run(Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&img)),
                Kind::Btrfs => run(Command::new("mkfs.btrfs").arg("-q").arg(&img)),
                Kind::Ext4 => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)),
                Kind::Tmpfs => unreachable!(),
            }
            run(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt));
        }
        std::fs::set_permissions(&mnt, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        LoopFs { _dir: dir, mnt }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Bytes in use on the file system, after flushing it.
    pub fn used_bytes(&self) -> u64 {
        run(Command::new("sync").arg("-f").arg(&self.mnt));
        let stat = nix::sys::statvfs::statvfs(&self.mnt).unwrap();
        (stat.blocks() - stat.blocks_free()) as u64 * stat.fragment_size() as u64
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.mnt).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        // The image goes with the temporary directory.
    }
}
