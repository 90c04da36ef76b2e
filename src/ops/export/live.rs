//! Exporting the running cluster: the online backup protocol as `fork` and `backup` run it — a
//! temporary replication slot reserves the WAL, `pg_backup_start(fast)`, the files a base backup
//! takes (the same planner as `backup`: exclusions, unlogged relations' init forks only,
//! tablespaces in place under pg_tblspc), `pg_backup_stop`, then the WAL segments from start to
//! stop read *after* the stop so none is missing, and the backup_label. Where the file system can
//! clone, the files are reflinked into a hidden snapshot beside the data directory first and the
//! backup stops at once; elsewhere they are read live, as pg_basebackup does (a file that shrinks
//! meanwhile is padded with zeros: WAL replay rewrites it).

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::ops::backup::snapshot::{BackupSource, prepare_at};
use crate::ops::export::sink::{EntryOwner, Sink};
use crate::ops::export::{Begun, ExportOptions, ExportReport, Opened, begin};
use crate::ops::fork::options::ModeRequest;
use crate::ops::fork::source::{DEFAULT_SOCKET_DIRS, SourceMode, decide};
use crate::ops::identity::become_owner_of;
use crate::pg::backup_label::BackupLabel;
use crate::pg::conf::rewrite;
use crate::pg::datadir::DataDir;
use crate::pg::external_conf::ExternalConf;
use crate::pg::lsn::{Lsn, is_history_file};
use crate::pg::session::{ConnTarget, Session};
use crate::progress::Progress;
use crate::util::{Laps, fsx};

/// The running cluster to export.
#[derive(Debug, Clone)]
pub struct LiveSource {
    /// Its data directory; when `None`, the one the server's socket lock file names (or, over
    /// TCP, the one the server reports).
    pub data: Option<PathBuf>,
    /// Socket directory or host; `postmaster.pid`'s socket and the usual directories when `None`.
    pub host: Option<String>,
    /// Server port.
    pub port: u16,
    /// Database user; the data directory's owner when `None`.
    pub user: Option<String>,
    /// Ask for an immediate checkpoint (pg_backup_start's `fast`) rather than a spread one.
    pub fast: bool,
}

impl LiveSource {
    /// The server a libpq connection URI or `key=value` string names (`postgres:///`,
    /// `postgresql://user@/db?host=/var/run/postgresql&port=5433`); its data directory is found
    /// when exporting. A password is not used: pgfork reads the data directory on this machine
    /// and connects as its owner through the local socket.
    pub fn from_conninfo(conninfo: &str) -> Result<LiveSource> {
        let config: tokio_postgres::Config = conninfo.parse().map_err(|e| {
            Error::refused(
                format!("cannot parse the source {conninfo:?}: {e}"),
                Some("give a connection URI such as postgres:/// or postgres://user@/db?host=/tmp&port=5432".into()),
            )
        })?;
        let host = config.get_hosts().first().map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        });
        let port = config
            .get_ports()
            .first()
            .copied()
            .unwrap_or_else(|| std::env::var("PGPORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5432));
        let host = host.or_else(|| std::env::var("PGHOST").ok().filter(|h| !h.is_empty()));
        Ok(LiveSource { data: None, host, port, user: config.get_user().map(str::to_string), fast: true })
    }

    /// The data directory: the given one, else the one named in the lock file of the server's
    /// socket, else the one the server reports over TCP.
    fn find_data(&self) -> Result<PathBuf> {
        if let Some(data) = &self.data {
            return Ok(data.clone());
        }
        let dirs: Vec<String> = match &self.host {
            Some(host) if !host.starts_with('/') => return self.ask_data_directory(host),
            Some(host) => vec![host.clone()],
            None => DEFAULT_SOCKET_DIRS.iter().map(|d| d.to_string()).collect(),
        };
        for dir in &dirs {
            let lock = Path::new(dir).join(format!(".s.PGSQL.{}.lock", self.port));
            if let Ok(text) = std::fs::read_to_string(&lock)
                && let Some(data) = text.lines().nth(1).filter(|l| l.starts_with('/'))
            {
                return Ok(PathBuf::from(data));
            }
        }
        Err(Error::refused(
            format!("no PostgreSQL server listens on port {} in {}", self.port, dirs.join(", ")),
            Some("start the cluster, or name its socket directory and port in the source".into()),
        ))
    }

    fn ask_data_directory(&self, host: &str) -> Result<PathBuf> {
        let user = self.user.clone().unwrap_or_else(|| {
            let uid = nix::unistd::Uid::effective();
            nix::unistd::User::from_uid(uid).ok().flatten().map_or_else(|| "postgres".into(), |u| u.name)
        });
        let target = ConnTarget { host: host.to_string(), port: self.port, user, dbname: "postgres".into() };
        let session = Session::connect(&target)?;
        Ok(PathBuf::from(session.show("data_directory")?))
    }
}

/// Exports the running cluster of `live` as `opts` says.
pub fn export(
    live: &LiveSource,
    opts: &ExportOptions,
    progress: &dyn Progress,
    check: &dyn Fn() -> Result<()>,
) -> Result<ExportReport> {
    let data = DataDir::open(&live.find_data()?)?;
    let identity = become_owner_of(data.path())?;
    let user = live.user.clone().unwrap_or_else(|| identity.name.clone());
    let session = match decide(&data, ModeRequest::Auto, live.host.as_deref(), live.port, &user)?.0 {
        SourceMode::Hot(session) => session,
        SourceMode::Cold { .. } => {
            return Err(Error::refused(
                format!("{} is not running: an online export needs its server", data.path().display()),
                Some("start the cluster, or export a backup set with --set".into()),
            ));
        }
    };
    let version = session.version_num()?;
    if version / 10000 != data.major() {
        return Err(Error::refused(
            format!("the server reports version {version}, the data directory is {}", data.major()),
            None,
        ));
    }
    let segment_size = crate::pg::wal::segment_size(&session)?;
    let cluster_name = session.show("cluster_name")?;
    let tag = if cluster_name.is_empty() { hostname() } else { cluster_name };
    let meta = std::fs::metadata(data.path()).at("stat", data.path())?;
    let opened = Opened {
        owner: EntryOwner::of_ids(
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta),
        ),
        mtime: chrono::Utc::now().timestamp().max(0) as u64,
        tag,
    };
    let Begun { mut sink, mut report } = begin(opts, &opened)?;
    report.data = Some(data.path().to_path_buf());
    report.pg_version = data.major();
    remove_dead_snapshots(&data)?;

    let mut laps = Laps::start();
    let slot = format!("pgfork_export_{}", std::process::id());
    if let Err(e) = session.query("SELECT pg_create_physical_replication_slot($1, true, true)", &[&slot]) {
        report.notes.push(format!("could not reserve WAL with a temporary replication slot ({e}); went on"));
    }
    let start: String = session.query_one("SELECT pg_backup_start('pgfork export', $1)::text", &[&live.fast])?.get(0);
    report.start_lsn = Some(start.parse()?);
    laps.lap("backup_start");
    let source = prepare_at(&data, &snapshot_path(&data, std::process::id()), true)?;
    for link in &source.links_left_out {
        report.notes.push(format!("symbolic link {link} is not exported (the archive holds files and directories)"));
    }
    report.snapshot = source.snapshot_taken();
    laps.lap("snapshot");
    // A snapshot is a copy taken inside the backup: the backup can stop now.
    let mut stopped = if source.snapshot_taken() { Some(stop(&session)?) } else { None };
    write_files(&mut sink, &data, &source, &mut report, progress, check)?;
    laps.lap("files");
    let (stop_lsn, labelfile) = match stopped.take() {
        Some(done) => done,
        None => stop(&session)?,
    };
    report.stop_lsn = Some(stop_lsn);
    laps.lap("backup_stop");
    write_wal(&mut sink, &data, &labelfile, stop_lsn, segment_size, &mut report, progress, check)?;
    sink.bytes("backup_label", labelfile.as_bytes(), 0o600)?;
    laps.lap("wal");
    report.data_bytes = sink.data_bytes;
    report.file_bytes = sink.commit()?;
    drop(session);
    drop(source);
    laps.lap("commit");
    report.timings = laps.timings;
    report.notes.push(
        "archive_mode is off in the exported copy so it cannot write into the cluster's archive: once it is \
         checked, turn archiving on and take a full backup"
            .into(),
    );
    Ok(report)
}

fn stop(session: &Session) -> Result<(Lsn, String)> {
    let row = session.query_one("SELECT lsn::text, labelfile FROM pg_backup_stop(false)", &[])?;
    let (lsn, labelfile): (String, String) = (row.get(0), row.get(1));
    Ok((lsn.parse()?, labelfile))
}

/// The directories and files of the data directory (and of a configuration kept outside it),
/// postgresql.auto.conf rewritten so the copy starts beside the cluster without touching it.
fn write_files(
    sink: &mut Sink,
    data: &DataDir,
    source: &BackupSource,
    report: &mut ExportReport,
    progress: &dyn Progress,
    check: &dyn Fn() -> Result<()>,
) -> Result<()> {
    let conf = ExternalConf::find(data.path())?;
    sink.dir(".", 0o700)?;
    let mut dirs: Vec<(String, u32)> = source.dirs.iter().map(|d| (d.path.clone(), d.mode)).collect();
    dirs.push(("pg_wal/archive_status".into(), 0o700));
    if data.major() >= 17 {
        dirs.push(("pg_wal/summaries".into(), 0o700));
    }
    dirs.extend(conf.iter().flat_map(|c| &c.dirs).map(|d| (d.clone(), 0o700)));
    dirs.sort();
    dirs.dedup_by(|a, b| a.0 == b.0);
    for (rel, mode) in &dirs {
        sink.dir(rel, *mode)?;
    }
    progress.begin("export", source.files.iter().map(|f| f.size).sum());
    let mut auto_conf = None;
    for file in &source.files {
        check()?;
        let handle = match std::fs::File::open(&file.path) {
            Ok(handle) => handle,
            // Dropped since it was listed: WAL replay does the same.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("open", &file.path, e)),
        };
        if file.rel == "postgresql.auto.conf" {
            auto_conf = Some(std::fs::read_to_string(&file.path).at("read", &file.path)?);
            continue;
        }
        let meta = handle.metadata().at("stat", &file.path)?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        sink.file(&file.rel, meta.len(), mode, handle, progress, check)?;
        report.files += 1;
    }
    progress.end();
    for file in conf.iter().flat_map(|c| &c.files) {
        sink.bytes(&file.rel, file.text.as_bytes(), 0o600)?;
        report.files += 1;
    }
    if let Some(conf) = &conf {
        report.notes.push(format!(
            "the configuration in {} is in the export (data_directory, hba_file, ident_file dropped)",
            conf.origin.display()
        ));
    }
    let settings = exported_settings(!source.tablespaces.is_empty());
    let settings: Vec<(&str, String)> = settings.iter().map(|(k, v)| (*k, v.clone())).collect();
    let reason = format!("pgfork: exported from {}; archiving off until checked", data.path().display());
    sink.bytes("postgresql.auto.conf", rewrite(&auto_conf.unwrap_or_default(), &reason, &settings).as_bytes(), 0o600)?;
    report.files += 1;
    Ok(())
}

/// The settings of an exported copy: no archiving into the cluster's archive, no replication or
/// recovery settings inherited (a standby's, or a synchronous primary's, would stop it), and
/// tablespaces in place under pg_tblspc.
pub fn exported_settings(tablespaces: bool) -> Vec<(&'static str, String)> {
    let mut settings = crate::ops::fork::fixup::detached_settings();
    if tablespaces {
        settings.push(("allow_in_place_tablespaces", "on".into()));
    }
    settings
}

/// The WAL from the backup's start segment to its stop segment, and the history files.
#[allow(clippy::too_many_arguments)]
fn write_wal(
    sink: &mut Sink,
    data: &DataDir,
    labelfile: &str,
    stop: Lsn,
    segment_size: u64,
    report: &mut ExportReport,
    progress: &dyn Progress,
    check: &dyn Fn() -> Result<()>,
) -> Result<()> {
    let label = BackupLabel::parse(labelfile)?;
    let wal_dir = data.path().join("pg_wal");
    for name in crate::pg::wal::backup_segments(&label, stop, segment_size)? {
        let path = wal_dir.join(&name);
        let handle = std::fs::File::open(&path).map_err(|e| {
            Error::invalid(
                format!("WAL segment {name}"),
                format!(
                    "needed by the export (backup {}..{stop}) but unreadable in {}: {e}",
                    label.start_lsn,
                    wal_dir.display()
                ),
            )
        })?;
        sink.file(&format!("pg_wal/{name}"), segment_size, 0o600, handle, progress, check)?;
        report.wal_segments += 1;
    }
    for entry in std::fs::read_dir(&wal_dir).at("read directory", &wal_dir)? {
        let entry = entry.at("read directory", &wal_dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_history_file(&name) {
            let bytes = std::fs::read(entry.path()).at("read", entry.path())?;
            sink.bytes(&format!("pg_wal/{name}"), &bytes, 0o600)?;
        }
    }
    Ok(())
}

/// The name of the snapshots exports take of `data`, before the pid of the export.
fn snapshot_prefix(data: &DataDir) -> String {
    let name = data.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(".{name}.pgfork-export-")
}

/// Where an export by process `pid` clones the data directory: beside it, hidden.
fn snapshot_path(data: &DataDir, pid: u32) -> PathBuf {
    data.path().with_file_name(format!("{}{pid}", snapshot_prefix(data)))
}

/// Removes the snapshots that killed exports left beside the data directory.
fn remove_dead_snapshots(data: &DataDir) -> Result<()> {
    let Some(parent) = data.path().parent() else { return Ok(()) };
    fsx::remove_dead_leftovers(parent, &snapshot_prefix(data))
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_come_from_connection_strings() {
        let any = LiveSource::from_conninfo("postgres:///").unwrap();
        assert_eq!((any.data, any.user), (None, None));
        let full = LiveSource::from_conninfo("postgresql://dba@/postgres?host=/tmp/pgs&port=6543").unwrap();
        assert_eq!(full.host.as_deref(), Some("/tmp/pgs"));
        assert_eq!(full.port, 6543);
        assert_eq!(full.user.as_deref(), Some("dba"));
        let kv = LiveSource::from_conninfo("host=db1 port=5433").unwrap();
        assert_eq!((kv.host.as_deref(), kv.port), (Some("db1"), 5433));
        assert!(LiveSource::from_conninfo("postgres://[bad").is_err());
    }

    #[test]
    fn exported_copies_cut_their_ties() {
        let settings = exported_settings(true);
        let get = |n: &str| settings.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("archive_mode"), Some("off"));
        assert_eq!(get("synchronous_standby_names"), Some(""));
        assert_eq!(get("recovery_target_time"), Some(""));
        assert_eq!(get("allow_in_place_tablespaces"), Some("on"));
        assert_eq!(exported_settings(false).iter().find(|(k, _)| *k == "allow_in_place_tablespaces"), None);
    }
}
