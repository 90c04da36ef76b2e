//! `fork`: a copy of a cluster on the same machine, cloned with reflinks where the file system
//! allows, taken hot through the online backup protocol (backup_label, tablespace_map and the WAL
//! from start to stop secured) or cold from a stopped cluster, then made safe to run beside it.

pub(crate) mod fixup;
pub mod options;
pub(crate) mod preflight;
pub mod register;
pub mod source;
pub(crate) mod staging;
mod wal;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cow::{CopyMethod, CopyStats, FsKind, TreePlan, probe_reflink};
use crate::error::{Error, IoContext, Result};
use crate::ops::identity::{Identity, become_owner_of};
use crate::pg::bins::PgBin;
use crate::pg::conf::set_auto_conf;
use crate::pg::datadir::{DataDir, Tablespace};
use crate::pg::layout::{Disposition, classify};
use crate::pg::session::{ConnTarget, Session};
use crate::progress::Progress;
use crate::util::fsx;

use crate::pg::backup_label::{BackupLabel, tablespace_map};
use crate::util::ms_since;
use fixup::{SourceSettings, fork_cluster_name, fork_settings};
pub use options::{ForkOptions, ModeRequest, default_destination, default_port};
use preflight::Destination;
use source::SourceMode;
use staging::Staging;

/// How the fork was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForkMode {
    /// From a running server, through pg_backup_start/stop.
    Hot,
    /// From a stopped cluster.
    Cold,
}

/// A fork whose checks have passed; nothing has been written yet.
pub struct PreparedFork {
    opts: ForkOptions,
    src: DataDir,
    identity: Identity,
    mode: SourceMode,
    destination: Destination,
    tablespaces: Vec<Tablespace>,
    src_fs: FsKind,
    dst_fs: FsKind,
    method: CopyMethod,
    bins: Option<PgBin>,
    registration: Option<register::Registration>,
    notes: Vec<String>,
}

/// What a prepared fork will do, for the user to confirm.
#[derive(Debug, Clone, Serialize)]
pub struct ForkPlan {
    /// Hot or cold.
    pub mode: ForkMode,
    /// Source data directory.
    pub src: PathBuf,
    /// Destination data directory.
    pub dst: PathBuf,
    /// The fork's port.
    pub dst_port: u16,
    /// The user pgfork acts as.
    pub user: String,
    /// File system of the source.
    pub src_fs: FsKind,
    /// File system of the destination.
    pub dst_fs: FsKind,
    /// Reflink or copy.
    pub method: CopyMethod,
    /// Existing paths `--force` will remove.
    pub replaces: Vec<PathBuf>,
    /// Warnings and remarks.
    pub notes: Vec<String>,
}

/// Wall-clock time of each step, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForkTimings {
    /// pg_backup_start, including its checkpoint (hot only).
    pub backup_start_ms: f64,
    /// Cloning or copying the data files.
    pub copy_ms: f64,
    /// pg_backup_stop (hot only).
    pub backup_stop_ms: f64,
    /// Cloning the WAL from start to stop (hot) or from the last checkpoint (cold).
    pub wal_ms: f64,
    /// Writing backup_label and settings, syncing, moving into place.
    pub finish_ms: f64,
    /// Starting the fork (with --start).
    pub start_ms: f64,
    /// Everything.
    pub total_ms: f64,
}

/// The outcome of a fork.
#[derive(Debug, Clone, Serialize)]
pub struct ForkReport {
    /// What was planned.
    #[serde(flatten)]
    pub plan: ForkPlan,
    /// The fork's cluster_name.
    pub cluster_name: String,
    /// The settings written into the fork's postgresql.auto.conf.
    pub settings: Vec<(String, String)>,
    /// Backup start LSN (hot).
    pub start_lsn: Option<String>,
    /// Backup stop LSN (hot).
    pub stop_lsn: Option<String>,
    /// WAL segments placed in the fork.
    pub wal_segments: u64,
    /// Data file counts and bytes.
    pub files: CopyStats,
    /// Tablespace copies: OID and location.
    pub tablespaces: Vec<(u32, PathBuf)>,
    /// Whether the fork needs crash recovery when it starts (cold copy of an unclean cluster).
    pub crash_recovery: bool,
    /// Whether it was started.
    pub started: bool,
    /// The socket directory or host to reach the fork on, when known.
    pub connect_host: Option<String>,
    /// With `--register`: the Debian cluster it became (`15/main-fork1`).
    pub registered: Option<String>,
    /// Step timings.
    pub timings: ForkTimings,
}

impl PreparedFork {
    /// Checks everything a fork needs, refusing with nothing touched when something is wrong.
    /// As root, switches to the owner of the source directory first.
    pub fn prepare(opts: ForkOptions) -> Result<PreparedFork> {
        let src = DataDir::open(&opts.src)?;
        let identity = become_owner_of(src.path())?;
        let destination = preflight::check_destination(&opts, src.path())?;
        let user = opts.user.clone().unwrap_or_else(|| identity.name.clone());
        let (mode, socket_dirs) = source::decide(&src, opts.mode, opts.host.as_deref(), opts.src_port, &user)?;
        preflight::check_port(&opts, &socket_dirs)?;

        let mut notes = Vec::new();
        match &mode {
            SourceMode::Cold { note } => {
                notes.extend(note.clone());
                let state = src.control()?.state;
                if !state.is_clean_shutdown() {
                    notes.push(format!(
                        "the source was not shut down cleanly (state: {}); the fork will go through crash recovery",
                        state.describe()
                    ));
                }
            }
            SourceMode::Hot(session) => {
                let version = session.version_num()?;
                if version / 10000 != src.major() {
                    return Err(Error::refused(
                        format!("the server reports version {version}, the data directory is {}", src.major()),
                        None,
                    ));
                }
            }
        }
        let registration = match opts.register {
            true => Some(register::Registration::plan(src.path(), src.major(), opts.id)?),
            false => None,
        };
        let bins = match (&mode, opts.start) {
            (SourceMode::Hot(_), false) => None,
            _ => Some(PgBin::locate(src.major(), opts.bindir.as_deref(), Some(src.path()))?),
        };

        let parent = existing_ancestor(opts.dst.parent().unwrap_or(Path::new("/")));
        nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK).map_err(|e| {
            Error::refused(
                format!(
                    "cannot create {}: {} is not writable by {} ({e})",
                    opts.dst.display(),
                    parent.display(),
                    identity.name
                ),
                Some("choose a destination the cluster's owner can write to".into()),
            )
        })?;
        let src_fs = FsKind::of(src.path())?;
        let dst_fs = FsKind::of(&parent)?;
        let method = probe_reflink(&src.path().join("PG_VERSION"), &parent)?;
        let tablespaces = src.tablespaces()?;
        for location in tablespaces.iter().filter_map(|ts| ts.location.as_ref()) {
            let fs = FsKind::of(location)?;
            if fs != dst_fs {
                notes.push(format!("tablespace at {} is on {fs}, not {dst_fs}: it will be copied", location.display()));
            }
        }
        Ok(PreparedFork {
            opts,
            src,
            identity,
            mode,
            destination,
            tablespaces,
            src_fs,
            dst_fs,
            method,
            bins,
            registration,
            notes,
        })
    }

    /// What the fork will do.
    pub fn plan(&self) -> ForkPlan {
        ForkPlan {
            mode: match self.mode {
                SourceMode::Hot(_) => ForkMode::Hot,
                SourceMode::Cold { .. } => ForkMode::Cold,
            },
            src: self.src.path().to_path_buf(),
            dst: self.opts.dst.clone(),
            dst_port: self.opts.dst_port,
            user: self.identity.name.clone(),
            src_fs: self.src_fs,
            dst_fs: self.dst_fs,
            method: self.method,
            replaces: match &self.destination {
                Destination::Absent => Vec::new(),
                Destination::Replace(paths) => paths.clone(),
            },
            notes: self.notes.clone(),
        }
    }

    /// Takes the fork: everything is built in a staging directory beside the destination and moved
    /// into place only when complete, so a crash never leaves a half-made fork under its name.
    pub fn run(self, progress: &dyn Progress) -> Result<ForkReport> {
        let started_at = Instant::now();
        let plan = self.plan();
        for note in &plan.notes {
            progress.note(note);
        }
        let dst = self.opts.dst.clone();
        let final_tblspc = ForkOptions::tablespace_root(&dst);
        let staging = Staging::create(&dst, &final_tblspc)?;
        let mut timings = ForkTimings::default();

        let mut tree = TreePlan::default();
        let has_linked_tablespaces = self.tablespaces.iter().any(|t| t.location.is_some());
        let linked: Vec<String> =
            self.tablespaces.iter().filter(|t| t.location.is_some()).map(|t| format!("pg_tblspc/{}", t.oid)).collect();
        tree.add_tree(self.src.path(), staging.data(), &|rel, is_dir| {
            if linked.iter().any(|l| l == rel) { Disposition::Skip } else { classify(rel, is_dir) }
        })?;
        tree.dirs.push((staging.data().join("pg_wal/archive_status"), 0o700));
        if self.src.major() >= 17 {
            tree.dirs.push((staging.data().join("pg_wal/summaries"), 0o700));
        }
        let mut tablespace_copies = Vec::new();
        if has_linked_tablespaces {
            tree.dirs.push((staging.tablespaces().to_path_buf(), 0o700));
        }
        for ts in &self.tablespaces {
            let Some(location) = &ts.location else { continue };
            let staged = staging.tablespaces().join(ts.oid.to_string());
            let mode =
                std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(location).at("stat", location)?) & 0o7777;
            tree.dirs.push((staged.clone(), mode));
            if let Some(version_dir) = self.src.tablespace_version_dir(location)? {
                tree.add_tree(&location.join(&version_dir), &staged.join(&version_dir), &classify)?;
            }
            let final_path = final_tblspc.join(ts.oid.to_string());
            tree.symlinks.push((staging.data().join(format!("pg_tblspc/{}", ts.oid)), final_path.clone()));
            tablespace_copies.push((ts.oid, final_path));
        }
        tree.prune_unlogged();

        let copy_begin = |progress: &dyn Progress, bytes: u64| {
            if self.method == CopyMethod::Copy {
                progress.note(&format!(
                    "{} → {}: no reflink between these file systems, copying {}",
                    self.src_fs,
                    self.dst_fs,
                    crate::util::human_bytes(bytes)
                ));
                progress.begin("copy", bytes);
            }
        };

        let (files, wal_segments, start_lsn, stop_lsn, settings, crash_recovery, connect_host);
        match &self.mode {
            SourceMode::Hot(session) => {
                let slot = format!("pgfork_{}", std::process::id());
                if let Err(e) = session.query("SELECT pg_create_physical_replication_slot($1, true, true)", &[&slot]) {
                    progress.note(&format!("could not reserve WAL with a temporary replication slot ({e}); going on"));
                }
                let step = Instant::now();
                let label_name = format!("pgfork fork {}", self.opts.id);
                let start: String = session.query_one("SELECT pg_backup_start($1, true)::text", &[&label_name])?.get(0);
                timings.backup_start_ms = ms_since(step);

                let step = Instant::now();
                copy_begin(progress, tree.allocated_bytes());
                files = tree.execute(self.method, true, progress)?;
                progress.end();
                self.copy_external_conf(staging.data(), progress)?;
                timings.copy_ms = ms_since(step);

                let step = Instant::now();
                let row =
                    session.query_one("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)", &[])?;
                let (stop, labelfile, _spcmap): (String, String, String) = (row.get(0), row.get(1), row.get(2));
                timings.backup_stop_ms = ms_since(step);

                let step = Instant::now();
                let label = BackupLabel::parse(&labelfile)?;
                let segment_size = crate::pg::wal::segment_size(session)?;
                let stop_lsn_value: crate::pg::lsn::Lsn = stop.parse()?;
                let mut wal_plan = TreePlan::default();
                wal_segments = wal::add_backup_wal(
                    &mut wal_plan,
                    &self.src,
                    staging.data(),
                    &label,
                    stop_lsn_value,
                    segment_size,
                )?;
                wal_plan.execute(self.method, false, &crate::progress::Silent)?;
                timings.wal_ms = ms_since(step);

                let step = Instant::now();
                fsx::write_atomic(&staging.data().join("backup_label"), labelfile.as_bytes(), 0o600)?;
                if has_linked_tablespaces {
                    let entries: Vec<(u32, &Path)> = tablespace_copies.iter().map(|(o, p)| (*o, p.as_path())).collect();
                    fsx::write_atomic(
                        &staging.data().join("tablespace_map"),
                        tablespace_map(&entries)?.as_bytes(),
                        0o600,
                    )?;
                }
                settings = SourceSettings::read(|name| session.show(name))?;
                connect_host = first_socket_dir(&session.show("unix_socket_directories")?);
                timings.finish_ms = ms_since(step);
                start_lsn = Some(start);
                stop_lsn = Some(stop);
                crash_recovery = false;
            }
            SourceMode::Cold { .. } => {
                let control = self.src.control()?;
                let step = Instant::now();
                wal_segments = wal::add_checkpoint_wal(&mut tree, &self.src, staging.data(), control.redo)?;
                copy_begin(progress, tree.allocated_bytes());
                files = tree.execute(self.method, false, progress)?;
                progress.end();
                self.copy_external_conf(staging.data(), progress)?;
                timings.copy_ms = ms_since(step);
                let step = Instant::now();
                let bins = self.bins.as_ref().expect("cold forks locate binaries in prepare");
                settings = SourceSettings::read(|name| bins.config_value(staging.data(), name))?;
                connect_host = first_socket_dir(&bins.config_value(staging.data(), "unix_socket_directories")?);
                timings.finish_ms = ms_since(step);
                start_lsn = None;
                stop_lsn = None;
                crash_recovery = !control.state.is_clean_shutdown();
            }
        }
        drop(self.mode);

        let step = Instant::now();
        let cluster_name = fork_cluster_name(&settings, self.src.path(), self.opts.id);
        let reason = format!("pgfork: fork {} of {}", self.opts.id, self.src.path().display());
        let fork_conf = fork_settings(&settings, self.src.path(), &dst, self.opts.dst_port, &cluster_name);
        set_auto_conf(staging.data(), &reason, &fork_conf)?;
        fsx::sync_filesystem(staging.data())?;
        if let Destination::Replace(paths) = &self.destination {
            for path in paths {
                std::fs::remove_dir_all(path).at("remove", path)?;
            }
        }
        staging.commit()?;
        let mut registered = None;
        let mut config_dir = dst.clone();
        if let Some(registration) = &self.registration
            && let Some(conf) = crate::pg::external_conf::ExternalConf::find(self.src.path())?
        {
            registration.register(&dst, self.opts.dst_port, &conf)?;
            registered = Some(format!("{}/{}", registration.version, registration.name));
            config_dir = registration.etc.clone();
        }
        timings.finish_ms += ms_since(step);

        let mut started = false;
        if self.opts.start {
            let step = Instant::now();
            let bins = self.bins.as_ref().expect("--start locates binaries in prepare");
            let user = self.opts.user.as_deref().unwrap_or(&self.identity.name);
            start_fork(bins, &config_dir, &dst, self.opts.dst_port, connect_host.as_deref(), user)?;
            timings.start_ms = ms_since(step);
            started = true;
        }
        timings.total_ms = ms_since(started_at);
        Ok(ForkReport {
            plan,
            cluster_name,
            settings: fork_conf.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            start_lsn,
            stop_lsn,
            wal_segments,
            files,
            tablespaces: tablespace_copies,
            crash_recovery,
            started,
            connect_host,
            registered,
            timings,
        })
    }
}

impl PreparedFork {
    /// A configuration kept outside the source (Debian's /etc/postgresql) goes into the fork,
    /// rewritten to stand on its own.
    fn copy_external_conf(&self, staged: &Path, progress: &dyn Progress) -> Result<()> {
        if let Some(conf) = crate::pg::external_conf::ExternalConf::find(self.src.path())? {
            conf.write_into(staged)?;
            progress.note(&format!(
                "the configuration in {} was copied into the fork (data_directory, hba_file, ident_file dropped)",
                conf.origin.display()
            ));
        }
        Ok(())
    }
}

/// Starts the instance in `dst` (`pg_ctl start -w`, log in `dst/log/pgfork-start.log`) and waits
/// until it accepts connections on `port`.
/// `config_dir` is where its postgresql.conf is: `dst`, or a registered fork's /etc directory.
pub fn start_fork(
    bins: &PgBin,
    config_dir: &Path,
    dst: &Path,
    port: u16,
    host: Option<&str>,
    user: &str,
) -> Result<()> {
    let log_dir = dst.join("log");
    if !log_dir.exists() {
        fsx::create_dir_mode(&log_dir, 0o700)?;
    }
    bins.start(config_dir, &log_dir.join("pgfork-start.log"), 300)?;
    let host = host.unwrap_or("localhost");
    let target = ConnTarget { host: host.to_string(), port, user: user.to_string(), dbname: "postgres".into() };
    let session = Session::connect_retry(&target, Duration::from_secs(60))?;
    session.query_one("SELECT 1", &[])?;
    Ok(())
}

/// The first directory of a `unix_socket_directories` setting.
pub(crate) fn first_socket_dir(setting: &str) -> Option<String> {
    setting.split(',').map(str::trim).find(|d| d.starts_with('/')).map(str::to_string)
}

fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/")).to_path_buf()
}
