//! Mounting and unmounting: the FUSE session on its threads, a mount point checked first (a
//! stale mount left by a killed process is detached; a live one refused), and unmounting that
//! falls back to a lazy detach when the mount is busy.

use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, MountOption, SessionACL};
use nix::mount::{MntFlags, umount2};

use crate::error::{Error, Result};
use crate::mount::fs::MountFs;

/// Source name of pgfork mounts in /proc/self/mountinfo (their type is `fuse`).
pub const FS_NAME: &str = "pgfork";

/// A mounted file system, served by background threads.
pub struct Mounted {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

/// Mounts `fs` at `mountpoint` (read-only unless `fs` is writable), open to every user
/// (`allow_other`) with the kernel checking permissions. Returns once the kernel has accepted
/// the mount.
pub fn mount(fs: MountFs, mountpoint: &Path) -> Result<Mounted> {
    let mountpoint = std::path::absolute(mountpoint).map_err(|e| Error::io("resolve", mountpoint, e))?;
    prepare_mountpoint(&mountpoint)?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.into()),
        MountOption::Subtype(FS_NAME.into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    if !fs.is_writable() {
        config.mount_options.push(MountOption::RO);
    }
    config.acl = SessionACL::All;
    config.n_threads = Some(std::thread::available_parallelism().map_or(2, |n| n.get()).max(2) * 2);
    config.clone_fd = true;
    let session = fuser::Session::new(fs, &mountpoint, &config)
        .and_then(fuser::Session::spawn)
        .map_err(|e| Error::io("mount FUSE file system at", &mountpoint, e))?;
    Ok(Mounted { session: Some(session), mountpoint })
}

impl Mounted {
    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether the session ended (someone unmounted it).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts (lazily when busy) and waits for the session to end.
    pub fn unmount(mut self) -> Result<()> {
        let lazy = unmount_path(&self.mountpoint).inspect_err(|_| {
            // Still mounted: joining would wait for ever; the serving thread is left to its end.
            self.session.take();
        })?;
        if lazy {
            tracing::warn!(
                "{} is busy; detached: it goes away when the last open file is closed",
                self.mountpoint.display()
            );
        }
        self.join()
    }

    /// Waits for the session to end.
    pub fn join(&mut self) -> Result<()> {
        match self.session.take() {
            Some(session) => session.join().map_err(|e| Error::io("serve", &self.mountpoint, e)),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.session.is_some() {
            match unmount_path(&self.mountpoint) {
                Ok(_) => {
                    let _ = self.join();
                }
                Err(_) => {
                    self.session.take();
                }
            }
        }
    }
}

/// Unmounts `mountpoint`; when it is busy, detaches it lazily and returns true.
pub fn unmount_path(mountpoint: &Path) -> Result<bool> {
    match umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => Ok(false),
        Err(nix::errno::Errno::EINVAL) if mount_type(mountpoint).is_none() => Ok(false),
        Err(nix::errno::Errno::EBUSY) => {
            umount2(mountpoint, MntFlags::MNT_DETACH).map_err(|e| Error::io("detach", mountpoint, e.into()))?;
            Ok(true)
        }
        Err(e) => Err(Error::io("unmount", mountpoint, e.into())),
    }
}

/// Checks `mountpoint` can take a mount: an existing, empty directory. A pgfork mount whose
/// process died (the kernel answers ENOTCONN) is detached first; any other mount is refused.
pub fn prepare_mountpoint(mountpoint: &Path) -> Result<()> {
    if let Some(kind) = mount_type(mountpoint) {
        let dead = matches!(std::fs::metadata(mountpoint), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
        if kind.is_pgfork() && dead {
            umount2(mountpoint, MntFlags::MNT_DETACH).map_err(|e| Error::io("detach", mountpoint, e.into()))?;
            tracing::warn!("removed a stale mount at {} (its process had died)", mountpoint.display());
        } else {
            return Err(Error::refused(
                format!("{} is already a mount point ({})", mountpoint.display(), kind.fs_type),
                Some(format!("unmount it first: pgfork umount {}", mountpoint.display())),
            ));
        }
    }
    let meta = std::fs::metadata(mountpoint).map_err(|e| Error::io("stat", mountpoint, e))?;
    if !meta.is_dir() {
        return Err(Error::refused(format!("{} is not a directory", mountpoint.display()), None));
    }
    if std::fs::read_dir(mountpoint).map_err(|e| Error::io("list", mountpoint, e))?.next().is_some() {
        return Err(Error::refused(
            format!("{} is not empty", mountpoint.display()),
            Some("mount on an empty directory".into()),
        ));
    }
    Ok(())
}

/// What is mounted at a mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountKind {
    /// File system type (`fuse`, `overlay`, `xfs`).
    pub fs_type: String,
    /// Source (`pgfork`, `/dev/loop0`).
    pub source: String,
}

impl MountKind {
    /// Whether pgfork mounted it.
    pub fn is_pgfork(&self) -> bool {
        self.fs_type.starts_with("fuse") && self.source == FS_NAME
    }
}

/// What is mounted exactly at `path`, from /proc/self/mountinfo (the last mount wins, as in the
/// kernel).
pub fn mount_type(path: &Path) -> Option<MountKind> {
    let path = std::path::absolute(path).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines()
        .rev()
        .filter_map(parse_mountinfo_line)
        .filter(|(point, _)| Path::new(point) == path)
        .map(|(_, k)| k)
        .next()
}

/// Mount point and kind of a mountinfo line.
fn parse_mountinfo_line(line: &str) -> Option<(String, MountKind)> {
    let mut fields = line.split(' ');
    let point = unescape(fields.nth(4)?);
    let mut rest = fields.skip_while(|f| *f != "-");
    rest.next()?;
    let fs_type = rest.next()?.to_string();
    let source = unescape(rest.next()?);
    Some((point, MountKind { fs_type, source }))
}

/// Undoes the kernel's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(digits) = octal
        {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mount_points_and_types_from_mountinfo() {
        let line = "36 35 0:31 / /mnt/my\\040backup rw,nosuid - fuse pgfork ro,user_id=0";
        let (point, kind) = parse_mountinfo_line(line).unwrap();
        assert_eq!(point, "/mnt/my backup");
        assert!(kind.is_pgfork());
        let optional = "40 1 8:1 / /var/tmp rw shared:1 master:2 - xfs /dev/loop0 rw";
        let (point, kind) = parse_mountinfo_line(optional).unwrap();
        assert_eq!((point.as_str(), kind.fs_type.as_str(), kind.is_pgfork()), ("/var/tmp", "xfs", false));
        assert_eq!(unescape("a\\134b"), "a\\b");
    }
}
