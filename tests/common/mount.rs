//! A `pgfork mount` process for tests: started from a command, waited for until the FUSE mount
//! answers, unmounted or waited for, and killed with its mount detached on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::pgfork_ok;

/// How long a mount may take to appear, or its process to exit.
const PATIENCE: Duration = Duration::from_secs(60);

/// A `pgfork mount` process; killed and its mount detached on drop.
pub struct MountProcess {
    pub child: Child,
    pub mountpoint: PathBuf,
    log: PathBuf,
}

impl MountProcess {
    /// Runs `command` (a `pgfork mount <mountpoint> …`), its output logged beside the mount
    /// point, and waits until the mount is there.
    pub fn start(mut command: Command, mountpoint: &Path) -> MountProcess {
        // A stale mount point (its process killed) cannot be stat-ed; it exists all the same.
        let _ = std::fs::create_dir_all(mountpoint);
        let log = mountpoint.with_extension("log");
        let out = File::create(&log).unwrap();
        let child = command.stdout(out.try_clone().unwrap()).stderr(out).spawn().unwrap();
        let mut mount = MountProcess { child, mountpoint: mountpoint.to_path_buf(), log };
        let deadline = Instant::now() + PATIENCE;
        // A stale mount at the same place is listed too, but answers ENOTCONN until replaced.
        while !(is_pgfork_mount(mountpoint) && std::fs::metadata(mountpoint).is_ok()) {
            if let Some(status) = mount.child.try_wait().unwrap() {
                panic!("pgfork mount exited ({status}) before mounting:\n{}", mount.output());
            }
            assert!(Instant::now() < deadline, "no mount at {} after {PATIENCE:?}", mountpoint.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    /// What the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "pgfork mount did not exit:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `pgfork umount`, then waits for the serving process to exit 0.
    pub fn unmount(mut self) {
        pgfork_ok(&["umount", self.mountpoint.to_str().unwrap()]);
        assert_eq!(self.wait(), Some(0), "pgfork mount:\n{}", self.output());
        assert!(!is_pgfork_mount(&self.mountpoint));
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_pgfork_mount(&self.mountpoint) {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Whether a pgfork FUSE file system is mounted at `path`.
pub fn is_pgfork_mount(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let point = path.to_str().unwrap();
    text.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        fields.get(4) == Some(&point) && l.contains(" - fuse pgfork ")
    })
}
