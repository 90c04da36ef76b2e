//! The scratch stage of a verification: a work directory holding the data directory (the
//! writable FUSE mount, with its scratch directory on local disk; or, with `--overlay`, a kernel
//! overlay whose upper and work directories are on local disk above a read-only FUSE mount), the
//! server's socket directory, pg_hba.conf, log and secrets file. Whatever was set up is torn down
//! in reverse order — server, secrets file, overlay, mount, directory — when the stage is dropped,
//! also after an error or an interruption.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MsFlags, mount};

use crate::config::secrets::SecretsFile;
use crate::error::{Error, IoContext, Result};
use crate::mount::fs::Owner;
use crate::mount::session::{Mounted, unmount_path};
use crate::ops::verify::server::Server;
use crate::repo::storage::Held;
use crate::util::fsx;

/// The directories and mounts of one verification.
pub struct Stage {
    /// The work directory.
    pub root: PathBuf,
    /// The server, once started.
    pub server: Option<Server>,
    overlay: bool,
    mounted: Option<Mounted>,
    lease: Option<Box<dyn Held>>,
    secrets: Option<SecretsFile>,
    keep_dir: bool,
}

impl Stage {
    /// Creates the work directory `root` (which must not exist) with its subdirectories; the ones
    /// the server writes to belong to `owner`.
    pub fn create(root: &Path, owner: Owner) -> Result<Stage> {
        if let Some(parent) = root.parent() {
            std::fs::create_dir_all(parent).at("create directory", parent)?;
        }
        fsx::create_dir_mode(root, 0o755).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => Error::refused(
                format!("{} already exists", root.display()),
                Some("pass another --work directory, or remove what a previous run left".into()),
            ),
            other => other,
        })?;
        let stage = Stage {
            root: root.to_path_buf(),
            server: None,
            overlay: false,
            mounted: None,
            lease: None,
            secrets: None,
            keep_dir: false,
        };
        let give = |path: &Path| chown(path, Some(owner.uid), Some(owner.gid)).at("chown", path);
        for (dir, mode, owned) in [
            ("data", 0o700, true),
            ("run", 0o700, true),
            ("scratch", 0o700, false),
            ("lower", 0o755, false),
            ("upper", 0o700, true),
            ("work", 0o700, false),
        ] {
            let path = root.join(dir);
            fsx::create_dir_mode(&path, mode)?;
            if owned {
                give(&path)?;
            }
        }
        let hba = stage.hba_file();
        std::fs::write(&hba, "# pgfork verify: only the socket in a private directory\nlocal all all trust\n")
            .at("write", &hba)?;
        give(&hba)?;
        let log = stage.log_file();
        std::fs::write(&log, "").at("create", &log)?;
        give(&log)?;
        Ok(stage)
    }

    /// The FUSE mount point below an overlay.
    pub fn lower(&self) -> PathBuf {
        self.root.join("lower")
    }

    /// The data directory the server runs on: the writable FUSE mount, or the overlay above it.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Where the writable FUSE mount keeps the blocks the server writes.
    pub fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }

    /// The server's socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The server's pg_hba.conf (trust on the private socket only).
    pub fn hba_file(&self) -> PathBuf {
        self.root.join("pg_hba.conf")
    }

    /// The server's log.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// Where the server's archive-get reads the secrets verify has only in its environment.
    pub fn secrets_file(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// Keeps the secrets file until the teardown, which removes it whatever else fails.
    pub fn hold_secrets(&mut self, secrets: Option<SecretsFile>) {
        self.secrets = secrets;
    }

    /// Keeps the FUSE mount so it is unmounted with the stage.
    pub fn hold_mount(&mut self, mounted: Mounted) {
        self.mounted = Some(mounted);
    }

    /// Keeps the lease on the sets until the stage is torn down: expire must not remove them
    /// while the server still runs on them.
    pub fn hold_lease(&mut self, lease: Option<Box<dyn Held>>) {
        self.lease = lease;
    }

    /// Mounts the overlay: the FUSE mount below, upper and work directories on local disk. The
    /// upper layer is throwaway, so it is mounted `volatile` (no syncs) where the kernel allows.
    pub fn mount_overlay(&mut self) -> Result<()> {
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower().display(),
            self.root.join("upper").display(),
            self.root.join("work").display()
        );
        let data = self.data();
        let volatile = format!("{options},volatile");
        let result = mount(Some("overlay"), &data, Some("overlay"), MsFlags::empty(), Some(volatile.as_str()))
            .or_else(|_| mount(Some("overlay"), &data, Some("overlay"), MsFlags::empty(), Some(options.as_str())));
        result.map_err(|e| Error::io("mount overlay at", &data, e.into()))?;
        self.overlay = true;
        Ok(())
    }

    /// Bytes the server's writes take on local disk: the scratch files, or the overlay's upper
    /// directory (allocated blocks, so sparse files count what they hold).
    pub fn local_disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        [self.scratch(), self.root.join("upper")]
            .iter()
            .flat_map(|dir| walkdir::WalkDir::new(dir).min_depth(1).into_iter().filter_map(|e| e.ok()))
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.blocks() * 512)
            .sum()
    }

    /// Stops the server, unmounts the overlay and the FUSE mount, removes the work directory.
    /// Returns what could not be done.
    pub fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(server) = self.server.take()
            && let Err(e) = server.stop()
        {
            problems.push(format!("stop the server: {e}"));
        }
        // Removed even when the work directory has to stay (something may still be mounted in it).
        if let Some(secrets) = self.secrets.take()
            && let Err(e) = secrets.remove()
        {
            problems.push(e.to_string());
        }
        if self.overlay {
            let data = self.data();
            // The server's last processes may still be exiting: retry briefly before detaching.
            let mut result = unmount_path(&data);
            for _ in 0..20 {
                if matches!(result, Ok(false)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                result = unmount_path(&data);
            }
            if let Err(e) = result {
                problems.push(e.to_string());
            }
            self.overlay = false;
        }
        if let Some(mounted) = self.mounted.take()
            && let Err(e) = mounted.unmount()
        {
            problems.push(e.to_string());
        }
        self.lease = None;
        // Never remove a tree that may still have something mounted in it.
        self.keep_dir |= !problems.is_empty();
        if !self.keep_dir
            && self.root.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.root)
        {
            problems.push(format!("remove {}: {e}", self.root.display()));
        }
        problems
    }
}

/// The default work directory of a verify of `stanza` by process `pid`.
pub fn default_work_dir(stanza: &str, pid: u32) -> PathBuf {
    PathBuf::from(format!("/var/tmp/pgfork-verify-{stanza}-{pid}"))
}

/// Tears down what verifies of `stanza` that were killed (SIGKILL, a crash) left in their default
/// work directories: the server still running on a dead mount is stopped, the mounts detached,
/// the directory removed. Returns the directories removed.
pub fn remove_stale(stanza: &str) -> Vec<PathBuf> {
    let prefix = format!("pgfork-verify-{stanza}-");
    let Ok(entries) = std::fs::read_dir("/var/tmp") else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<i32>().ok()) else { continue };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if alive {
            continue;
        }
        let root = entry.path();
        // The socket lock file names the postmaster (postmaster.pid is on the dead mount).
        let socket_locks = std::fs::read_dir(root.join("run")).into_iter().flatten().filter_map(|e| e.ok());
        for lock in socket_locks.filter(|e| e.file_name().to_string_lossy().ends_with(".lock")) {
            let text = std::fs::read_to_string(lock.path()).unwrap_or_default();
            if let Some(server) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok())
                && crate::pg::datadir::process_is_postgres(server)
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), nix::sys::signal::Signal::SIGKILL);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let _ = std::fs::remove_file(root.join("secrets"));
        for mountpoint in [root.join("data"), root.join("lower")] {
            if crate::mount::session::mount_type(&mountpoint).is_some() {
                let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if std::fs::remove_dir_all(&root).is_ok() {
            removed.push(root);
        }
    }
    removed
}

impl Drop for Stage {
    fn drop(&mut self) {
        for problem in self.teardown() {
            tracing::warn!("verify teardown: {problem}");
        }
    }
}
