//! A PostgreSQL data directory on disk: its version, `pg_control` fields, `postmaster.pid`, and
//! tablespaces. Reads only; never writes into the directory.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::pg::lsn::{Lsn, TimelineId};

/// The oldest and newest major versions pgfork supports.
pub const SUPPORTED_MAJORS: std::ops::RangeInclusive<u32> = 15..=18;

/// A directory that holds `PG_VERSION` and `global/pg_control`.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
    major: u32,
}

impl DataDir {
    /// Opens `path` as a data directory, refusing anything that is not one of a supported version.
    pub fn open(path: &Path) -> Result<DataDir> {
        let path = fs::canonicalize(path)
            .map_err(|e| Error::refused(format!("{} is not a PostgreSQL data directory: {e}", path.display()), None))?;
        let version_file = path.join("PG_VERSION");
        let version = fs::read_to_string(&version_file).map_err(|e| {
            Error::refused(
                format!("{} is not a PostgreSQL data directory: cannot read PG_VERSION: {e}", path.display()),
                None,
            )
        })?;
        if !path.join("global/pg_control").is_file() {
            return Err(Error::refused(
                format!("{} is not a PostgreSQL data directory: global/pg_control is missing", path.display()),
                None,
            ));
        }
        let major: u32 = version.trim().parse().map_err(|_| {
            Error::invalid(version_file.display().to_string(), format!("unexpected content {version:?}"))
        })?;
        if !SUPPORTED_MAJORS.contains(&major) {
            return Err(Error::refused(
                format!("{} is PostgreSQL {major}; pgfork supports 15 to 18", path.display()),
                None,
            ));
        }
        Ok(DataDir { path, major })
    }

    /// The canonical path of the directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The major version from `PG_VERSION`.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// Reads the fields pgfork needs from `global/pg_control`.
    pub fn control(&self) -> Result<ControlData> {
        let path = self.path.join("global/pg_control");
        let bytes = fs::read(&path).at("read", &path)?;
        ControlData::parse(&bytes).map_err(|reason| Error::invalid(path.display().to_string(), reason))
    }

    /// The parsed `postmaster.pid`, if the file exists.
    pub fn postmaster(&self) -> Result<Option<PostmasterPid>> {
        PostmasterPid::read(&self.path)
    }

    /// Whether a live server owns this directory according to `postmaster.pid`.
    pub fn running_server(&self) -> Result<Option<PostmasterPid>> {
        Ok(self.postmaster()?.filter(PostmasterPid::is_alive))
    }

    /// The tablespaces under `pg_tblspc`: OID and the directory the link points to.
    pub fn tablespaces(&self) -> Result<Vec<Tablespace>> {
        let dir = self.path.join("pg_tblspc");
        let mut found = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(Error::io("read directory", dir, e)),
        };
        for entry in entries {
            let entry = entry.at("read directory", &dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(oid) = name.parse::<u32>() else { continue };
            let link = entry.path();
            let meta = fs::symlink_metadata(&link).at("stat", &link)?;
            let location = if meta.file_type().is_symlink() {
                let target = fs::read_link(&link).at("read link", &link)?;
                Some(if target.is_absolute() { target } else { dir.join(target) })
            } else {
                None
            };
            found.push(Tablespace { oid, location });
        }
        found.sort_by_key(|t| t.oid);
        Ok(found)
    }

    /// The name of the version directory inside each tablespace (`PG_15_202209061`), found by listing
    /// the first tablespace that has one.
    pub fn tablespace_version_dir(&self, tablespace_root: &Path) -> Result<Option<String>> {
        let prefix = format!("PG_{}_", self.major);
        let entries = fs::read_dir(tablespace_root).at("read directory", tablespace_root)?;
        for entry in entries {
            let entry = entry.at("read directory", tablespace_root)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }
}

/// A tablespace of a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// The tablespace OID (the name under `pg_tblspc`).
    pub oid: u32,
    /// Where the symbolic link points; `None` for an in-place tablespace (a plain directory).
    pub location: Option<PathBuf>,
}

/// The cluster state recorded in `pg_control` (`DBState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Starting up.
    Startup,
    /// Shut down cleanly.
    ShutDown,
    /// Shut down cleanly while in recovery (a standby).
    ShutDownInRecovery,
    /// Shutting down.
    ShuttingDown,
    /// In crash recovery.
    InCrashRecovery,
    /// In archive recovery.
    InArchiveRecovery,
    /// Running (or crashed while running).
    InProduction,
}

impl ClusterState {
    fn from_raw(raw: u32) -> Option<ClusterState> {
        Some(match raw {
            0 => ClusterState::Startup,
            1 => ClusterState::ShutDown,
            2 => ClusterState::ShutDownInRecovery,
            3 => ClusterState::ShuttingDown,
            4 => ClusterState::InCrashRecovery,
            5 => ClusterState::InArchiveRecovery,
            6 => ClusterState::InProduction,
            _ => return None,
        })
    }

    /// Whether the cluster was stopped cleanly, so a copy of it needs no crash recovery.
    pub fn is_clean_shutdown(self) -> bool {
        matches!(self, ClusterState::ShutDown | ClusterState::ShutDownInRecovery)
    }

    /// The wording `pg_controldata` uses.
    pub fn describe(self) -> &'static str {
        match self {
            ClusterState::Startup => "starting up",
            ClusterState::ShutDown => "shut down",
            ClusterState::ShutDownInRecovery => "shut down in recovery",
            ClusterState::ShuttingDown => "shutting down",
            ClusterState::InCrashRecovery => "in crash recovery",
            ClusterState::InArchiveRecovery => "in archive recovery",
            ClusterState::InProduction => "in production",
        }
    }
}

/// The `pg_control` fields pgfork uses. Their offsets are the same in PostgreSQL 15 to 18.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlData {
    /// The database system identifier.
    pub system_identifier: u64,
    /// The cluster state.
    pub state: ClusterState,
    /// The location of the latest checkpoint record.
    pub checkpoint: Lsn,
    /// The REDO location of the latest checkpoint: where crash recovery starts.
    pub redo: Lsn,
    /// The timeline of the latest checkpoint.
    pub timeline: TimelineId,
}

impl ControlData {
    /// Parses the leading fields of `pg_control` (native endianness).
    pub fn parse(bytes: &[u8]) -> std::result::Result<ControlData, String> {
        if bytes.len() < 52 {
            return Err(format!("{} bytes is too short for pg_control", bytes.len()));
        }
        let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let raw_state = u32_at(16);
        let state = ClusterState::from_raw(raw_state).ok_or_else(|| format!("unknown cluster state {raw_state}"))?;
        Ok(ControlData {
            system_identifier: u64_at(0),
            state,
            checkpoint: Lsn(u64_at(32)),
            redo: Lsn(u64_at(40)),
            timeline: TimelineId(u32_at(48)),
        })
    }
}

/// The content of `postmaster.pid`, written by a running server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostmasterPid {
    /// The postmaster's process id.
    pub pid: i32,
    /// The data directory the server was started on.
    pub data_dir: PathBuf,
    /// The port it listens on.
    pub port: u16,
    /// The first Unix socket directory, if any.
    pub socket_dir: Option<PathBuf>,
    /// The status word (`ready`, `starting`, `stopping`, `standby`), when written yet.
    pub status: Option<String>,
}

impl PostmasterPid {
    /// The live server of `dir`, if one runs: its postmaster.pid, when readable and its process is
    /// a live PostgreSQL.
    pub fn running(dir: &Path) -> Option<PostmasterPid> {
        PostmasterPid::read(dir).ok().flatten().filter(PostmasterPid::is_alive)
    }

    /// Reads `<dir>/postmaster.pid`; `None` when absent.
    pub fn read(dir: &Path) -> Result<Option<PostmasterPid>> {
        let path = dir.join("postmaster.pid");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        Self::parse(&text).map(Some).map_err(|reason| Error::invalid(path.display().to_string(), reason))
    }

    /// Parses the text of `postmaster.pid`.
    pub fn parse(text: &str) -> std::result::Result<PostmasterPid, String> {
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() < 4 {
            return Err("fewer than 4 lines (server still starting?)".into());
        }
        let pid = lines[0].trim().parse().map_err(|_| format!("bad pid {:?}", lines[0]))?;
        let port = lines[3].trim().parse().map_err(|_| format!("bad port {:?}", lines[3]))?;
        let socket_dir = lines.get(4).map(|s| s.trim()).filter(|s| !s.is_empty()).map(PathBuf::from);
        let status = lines.get(7).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(PostmasterPid { pid, data_dir: PathBuf::from(lines[1]), port, socket_dir, status })
    }

    /// Whether the recorded process still exists and is a PostgreSQL server.
    pub fn is_alive(&self) -> bool {
        process_is_postgres(self.pid)
    }
}

/// Whether `pid` is a live process that looks like a PostgreSQL server.
pub fn process_is_postgres(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    // A recycled pid belongs to some other program; the postmaster's comm is "postgres".
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.trim_end().starts_with("postgres"),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postmaster_pid() {
        let text = "4242\n/pg/data\n1700000000\n5432\n/var/run/postgresql\n*\n  5432001     32768\nready   \n";
        let pid = PostmasterPid::parse(text).unwrap();
        assert_eq!(pid.pid, 4242);
        assert_eq!(pid.port, 5432);
        assert_eq!(pid.data_dir, PathBuf::from("/pg/data"));
        assert_eq!(pid.socket_dir, Some(PathBuf::from("/var/run/postgresql")));
        assert_eq!(pid.status.as_deref(), Some("ready"));
    }

    #[test]
    fn truncated_postmaster_pid_is_an_error() {
        assert!(PostmasterPid::parse("4242\n/pg/data\n").is_err());
        assert!(PostmasterPid::parse("x\n/pg/data\n1\n5432\n").is_err());
    }

    #[test]
    fn control_data_rejects_short_or_unknown_input() {
        assert!(ControlData::parse(&[0u8; 20]).is_err());
        let mut bytes = vec![0u8; 64];
        bytes[16] = 9;
        assert!(ControlData::parse(&bytes).is_err());
        bytes[16] = 1;
        bytes[48] = 2;
        let control = ControlData::parse(&bytes).unwrap();
        assert_eq!(control.state, ClusterState::ShutDown);
        assert_eq!(control.timeline, TimelineId(2));
    }

    #[test]
    fn dead_pid_is_not_alive() {
        assert!(!process_is_postgres(0));
        assert!(!process_is_postgres(i32::MAX));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn corrupt_control_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ControlData::parse(&bytes);
        }

        #[test]
        fn corrupt_pid_files_never_panic(text in "(?s).{0,300}") {
            let _ = PostmasterPid::parse(&text);
        }
    }
}
