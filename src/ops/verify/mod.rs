//! `verify`: proves that a backup set restores, without restoring it. The set is mounted as a data
//! directory prepared to recover to its target, writable copy-on-write into a scratch directory on
//! local disk (or, with `--overlay`, read-only below a kernel overlay), and PostgreSQL starts there
//! as the data's owner on a private socket, recovers to the target and pauses; then pg_amcheck
//! and the user's SQL run against it in hot standby.
//! Server, overlay and mount are torn down afterwards, also on failure or interruption, and the
//! outcome is recorded with the set for `info`.

pub mod checks;
pub mod server;
pub mod stage;

use std::os::unix::fs::chown;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use chrono::Utc;
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::config::Resolved;
use crate::config::secrets::{self, Secrets, SecretsFile};
use crate::error::{Error, IoContext, Result};
use crate::mount::content::ReadFailure;
use crate::mount::fs::Owner;
use crate::mount::{DEFAULT_CACHE, DataDirRequest, Scope, default_owner, prepare, session};
use crate::ops::verify::checks::CheckOutcome;
use crate::ops::verify::server::{Interrupt, Reached, Server};
use crate::ops::verify::stage::Stage;
use crate::pg::bins::PgBin;
use crate::pg::session::ConnTarget;
use crate::repo::label::SetLabel;
use crate::repo::verification::VerificationRecord;
use crate::stanza::recovery::{RecoveryRequest, Target, TargetAction, TargetTimeline};
use crate::util::{Laps, ms_since};

/// A verification request.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The set; by default the newest (for a time or LSN target, the newest ending before it).
    pub set: Option<SetLabel>,
    /// The recovery target; `None` for the set's consistent point. The action is always pause.
    pub recovery: Option<RecoveryRequest>,
    /// Run pg_amcheck on every database.
    pub amcheck: bool,
    /// SQL files to run; each must succeed.
    pub sql: Vec<PathBuf>,
    /// Leave the server running after the checks until a termination signal arrives.
    pub keep: bool,
    /// Work directory [default: /var/tmp/pgfork-verify-STANZA-PID]; must not exist.
    pub work: Option<PathBuf>,
    /// PostgreSQL binaries [default: found by version].
    pub bindir: Option<PathBuf>,
    /// Boot on a kernel overlay above a read-only mount instead of the writable mount (the
    /// overlay copies each file whole the first time the server opens it for writing).
    pub overlay: bool,
}

/// Time one step took.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The step.
    pub name: String,
    /// Milliseconds.
    pub ms: f64,
}

/// Where a kept server can be reached.
#[derive(Debug, Clone, Serialize)]
pub struct KeptServer {
    /// Its data directory (the overlay).
    pub data: PathBuf,
    /// Its socket directory.
    pub socket_dir: PathBuf,
    /// Its port.
    pub port: u16,
    /// The verifying process to signal for the teardown.
    pub pid: u32,
}

/// What a verification found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Stanza.
    pub stanza: String,
    /// The set verified.
    pub set: SetLabel,
    /// The recovery target.
    pub target: String,
    /// Whether the set is proven: recovery reached the target, every check passed, every read
    /// from the repository succeeded.
    pub proven: bool,
    /// Where recovery paused.
    pub reached: Option<Reached>,
    /// Why it is not proven.
    pub failure: Option<String>,
    /// The checks run.
    pub checks: Vec<CheckOutcome>,
    /// Files whose reads failed (corrupt or missing runs).
    pub read_failures: Vec<ReadFailure>,
    /// Bytes the server wrote to local disk (what verify needs instead of a restore's full copy).
    pub local_disk_bytes: u64,
    /// Stored bytes fetched from the repository: what verify read instead of the whole set.
    pub repository_bytes_fetched: u64,
    /// Stored bytes of the set and the sets it reads from: what a restore would fetch.
    pub repository_set_bytes: u64,
    /// Time per step.
    pub steps: Vec<Step>,
    /// Wall time, milliseconds.
    pub duration_ms: f64,
    /// With --keep: the running server.
    pub kept: Option<KeptServer>,
}

/// Verifies a set. Errors are for what kept the verification from running (bad arguments, no
/// binaries, a file system that cannot mount); a backup that fails to prove itself gives a report
/// with `proven` false. `signals` interrupts it; `say` hears each step as it begins (for people
/// watching); `on_kept` is told about a kept server before the wait for the signal that ends it.
pub fn verify(
    resolved: &Resolved,
    opts: &VerifyOptions,
    signals: &Receiver<Signal>,
    say: &dyn Fn(&str),
    on_kept: impl FnOnce(&VerifyReport),
) -> Result<VerifyReport> {
    let started = Instant::now();
    if !nix::unistd::Uid::effective().is_root() {
        return Err(Error::refused(
            "verify mounts file systems and starts PostgreSQL as the data's owner",
            Some("run it as root".into()),
        ));
    }
    let interrupt = Interrupt::new(signals);
    let request = match &opts.recovery {
        Some(request) => RecoveryRequest { action: TargetAction::Pause, ..request.clone() },
        None => RecoveryRequest {
            target: Target::Immediate,
            exclusive: false,
            action: TargetAction::Pause,
            timeline: TargetTimeline::Current,
        },
    };
    let owner = default_owner(resolved)?;
    let user = match &resolved.stanza.user {
        Some(user) => user.clone(),
        None => nix::unistd::User::from_uid(owner.uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or_else(|| Error::refused(format!("uid {} has no user name", owner.uid), None))?,
    };
    for stale in stage::remove_stale(&resolved.name) {
        tracing::warn!("removed {} (left by a verify that was killed)", stale.display());
    }
    let work = opts.work.clone().unwrap_or_else(|| stage::default_work_dir(&resolved.name, std::process::id()));
    let mut stage = Stage::create(&work, owner)?;
    let port = free_port()?;
    let mut laps = Laps::start();
    // The server starts with a clean environment: its archive-get reads what verify has only in
    // its own from a file in the work directory.
    let secrets = Secrets::from_environment(resolved);
    let resolved = &secrets::naming_file(resolved, &secrets, stage.secrets_file());

    let scope = Scope::DataDir(Box::new(DataDirRequest {
        resolved: resolved.clone(),
        set: opts.set.clone(),
        recovery: Some(request.clone()),
        extra_settings: boot_settings(&stage, port),
        command: "verify".into(),
    }));
    let prepared = prepare(&scope, Some(owner), DEFAULT_CACHE)?;
    let manifest = prepared.manifest.clone().expect("a data directory has a set");
    say(&format!("mounting backup {} in {}", manifest.label, work.display()));
    let reader = Arc::clone(&prepared.reader);
    stage.hold_lease(prepared.lease);
    if opts.overlay {
        stage.hold_mount(session::mount(prepared.fs, &stage.lower())?);
        laps.lap("mount");
        stage.mount_overlay()?;
        laps.lap("overlay");
    } else {
        stage.hold_mount(session::mount(prepared.fs.writable(&stage.scratch()), &stage.data())?);
        laps.lap("mount");
    }
    let bindir = opts.bindir.as_deref().or(resolved.stanza.bindir.as_deref());
    let bin = PgBin::locate(manifest.pg_version, bindir, Some(&resolved.stanza.data))?;
    let sql_copies = copy_sql_files(&stage, &opts.sql, owner)?;
    stage.server = Some(Server {
        bin,
        data: stage.data(),
        log: stage.log_file(),
        target: ConnTarget::socket(&stage.socket_dir(), port, &user, "postgres"),
        owner,
    });
    stage.hold_secrets(SecretsFile::write(&stage.secrets_file(), &secrets, Some((owner.uid, owner.gid)))?);
    let server = stage.server.as_ref().expect("just set");

    let mut checks = Vec::new();
    let mut reached = None;
    let mut failure = None;
    say(&format!("starting PostgreSQL {} on the set (port {port})", manifest.pg_version));
    match server.start(&interrupt) {
        Err(e) => failure = Some(format!("the server did not start on the mounted set: {e}")),
        Ok(()) => {
            laps.lap("start");
            say(&format!("recovering to the target: {}", describe_target(&request.target)));
            match server.wait_for_target(&interrupt) {
                Err(e) => failure = Some(format!("recovery did not reach the target: {e}")),
                Ok(at) => {
                    laps.lap("recovery");
                    reached = Some(at);
                }
            }
        }
    }
    interrupt.check()?;
    if reached.is_some() {
        for (name, copy) in &sql_copies {
            say(&format!("running {}", name.display()));
            checks.push(checks::sql_file(server, name, copy, &interrupt)?);
        }
        if opts.amcheck {
            say("running pg_amcheck on every database");
            checks.push(checks::amcheck(server, &interrupt)?);
        }
        if checks.iter().any(|c| !c.passed) && failure.is_none() {
            let failed: Vec<&str> = checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
            failure = Some(format!("checks failed: {}", failed.join(", ")));
        }
    }
    let read_failures = reader.failures();
    if !read_failures.is_empty() {
        let files: Vec<&str> = read_failures.iter().map(|f| f.path.as_str()).collect();
        let reads = format!("reads from the repository failed for: {}", files.join(", "));
        failure = Some(match failure {
            Some(other) => format!("{other}; {reads}"),
            None => reads,
        });
    }
    let mut report = VerifyReport {
        stanza: resolved.name.clone(),
        set: manifest.label.clone(),
        target: describe_target(&request.target),
        proven: failure.is_none(),
        reached,
        failure,
        checks,
        read_failures,
        local_disk_bytes: stage.local_disk_bytes(),
        repository_bytes_fetched: reader.bytes_fetched(),
        repository_set_bytes: set_bytes(&reader.stanzas()[0], &manifest)?,
        steps: laps.timings.into_iter().map(|(name, ms)| Step { name: name.into(), ms }).collect(),
        duration_ms: ms_since(started),
        kept: None,
    };
    let record = VerificationRecord {
        at: Utc::now(),
        proven: report.proven,
        target: report.target.clone(),
        reached_lsn: report.reached.as_ref().map(|r| r.lsn.clone()),
        checks: report.checks.iter().map(|c| (c.name.clone(), c.passed)).collect(),
        failure: report.failure.clone(),
        duration_ms: report.duration_ms,
    };
    let repo = &reader.stanzas()[0];
    record.save(repo, &manifest.label)?;
    if opts.keep {
        report.kept =
            Some(KeptServer { data: stage.data(), socket_dir: stage.socket_dir(), port, pid: std::process::id() });
        on_kept(&report);
        let _ = signals.recv();
        report.kept = None;
    }
    say("stopping the server and unmounting");
    let mut laps = Laps::start();
    let problems = stage.teardown();
    laps.lap("teardown");
    report.steps.extend(laps.timings.into_iter().map(|(name, ms)| Step { name: name.into(), ms }));
    report.duration_ms = ms_since(started);
    if !problems.is_empty() {
        return Err(Error::invalid(
            format!("verify teardown in {}", work.display()),
            format!("{} (the work directory was left in place)", problems.join("; ")),
        ));
    }
    Ok(report)
}

/// Stored bytes of `manifest`'s set and the sets it reads pages from.
fn set_bytes(stanza: &crate::stanza::Stanza, manifest: &crate::repo::manifest::Manifest) -> Result<u64> {
    let mut total = 0;
    for label in manifest.sets_needed() {
        total += stanza.storage().size(&stanza.layout().set(&label))?;
    }
    Ok(total)
}

/// Settings that make the mounted set boot here as a private, throwaway server: its own port and
/// socket, trust only on that socket, no archiving, no replication, small memory. They go into
/// verify's own mount of the set (`pgfork mount` shows what restore writes).
fn boot_settings(stage: &Stage, port: u16) -> Vec<(String, String)> {
    [
        ("port", port.to_string()),
        ("listen_addresses", String::new()),
        ("unix_socket_directories", stage.socket_dir().display().to_string()),
        ("hba_file", stage.hba_file().display().to_string()),
        ("cluster_name", "pgfork-verify".to_string()),
        ("logging_collector", "off".to_string()),
        // Never the pid file of the cluster the set came from (its postgresql.conf may name one);
        // an empty value is no way out: PostgreSQL tries to write "" and logs that it cannot.
        ("external_pid_file", stage.socket_dir().join("postmaster.external.pid").display().to_string()),
        // Not open every file at startup to sync it: the overlay would copy each one up whole,
        // the writable mount would look each one up.
        ("recovery_init_sync_method", "syncfs".to_string()),
        ("shared_buffers", "128MB".to_string()),
        ("huge_pages", "off".to_string()),
        ("ssl", "off".to_string()),
        ("hot_standby", "on".to_string()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("synchronous_standby_names", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Copies the SQL files where the server's owner can read them; returns (given path, copy).
fn copy_sql_files(stage: &Stage, files: &[PathBuf], owner: Owner) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut copies = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let copy = stage.root.join(format!("check-{i}.sql"));
        std::fs::copy(file, &copy).at("copy SQL file", file)?;
        chown(&copy, Some(owner.uid), Some(owner.gid)).at("chown", &copy)?;
        copies.push((file.clone(), copy));
    }
    Ok(copies)
}

/// A TCP port nothing listens on (the server listens only on its socket, but its socket file is
/// named after the port, and a kept server is easier to reach on a port no one else uses).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind", "127.0.0.1:0", e))?;
    let port = listener.local_addr().map_err(|e| Error::io("bind", "127.0.0.1:0", e))?.port();
    Ok(port)
}

/// The target as the report names it.
pub fn describe_target(target: &Target) -> String {
    match target {
        Target::Default => "end of the archive".into(),
        Target::Immediate => "immediate (the set's consistent point)".into(),
        Target::Time(_, text) => format!("time {text}"),
        Target::Name(name) => format!("restore point {name}"),
        Target::Lsn(lsn) => format!("lsn {lsn}"),
        Target::Xid(xid) => format!("xid {xid}"),
    }
}
