//! Asynchronous archiving (`archive_async = true` in the stanza): archive-push queues the WAL file
//! durably beside pg_wal ([`spool`]) and returns, and a background pusher per stanza
//! ([`pusher`], one by lock) stores the queue in every repository of the stanza in parallel.
//!
//! archive-push never asks a repository anything, so a slow or unreachable one does not hold
//! PostgreSQL up. What it promises on exit 0 is that the file is queued durably (or was already
//! pushed from the very pg_wal file it is handed); the queue is pushed from then on, whatever
//! happens to PostgreSQL's file. WAL is never dropped: archive-push fails — PostgreSQL keeps the
//! file and tries again — when the pusher reported a refusal (it cannot push a file without
//! someone's help), and when the queue is full (`archive_async_queue_max_mb`), naming the pusher's
//! failure if it has one. A transient failure of the pusher (a repository unreachable or
//! unwritable) is reported as a warning while the queue has room.

pub mod pusher;
pub mod spool;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Resolved, StanzaConfig};
use crate::error::{Error, IoContext, Result};
use crate::ops::identity::become_owner_of;
use crate::repo::archive::classify;

pub use pusher::{Mode, PushQueueReport};
pub use spool::{Enqueued, PusherError, Spool};

/// How long archive-push waits for room in a full queue while the pusher reports no failure.
const FULL_WAIT: Duration = Duration::from_secs(10);

/// The stanza's asynchronous archiving settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Files pushed at a time.
    pub parallel: usize,
    /// Bytes the queue may hold before archive-push fails.
    pub queue_max: u64,
}

impl Settings {
    /// The settings of `stanza`.
    pub fn of(stanza: &StanzaConfig) -> Settings {
        Settings {
            parallel: usize::from(stanza.archive_async_parallel.clamp(1, 64)),
            queue_max: stanza.archive_async_queue_max_mb.saturating_mul(1 << 20),
        }
    }
}

/// What archive-push did with a file in asynchronous mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Queuing {
    /// Queued durably now.
    Queued,
    /// The same content was queued already.
    AlreadyQueued,
    /// The pusher had pushed this very file from pg_wal to every repository.
    AlreadyPushed,
}

/// What archive-push reports in asynchronous mode.
#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    /// The WAL file name.
    pub name: String,
    /// What happened to it.
    pub outcome: Queuing,
    /// The pusher's failure, when it has one that does not stop archive-push (yet).
    pub pusher_error: Option<String>,
}

/// archive-push in asynchronous mode: queues the WAL file at `path` for the stanza's repositories
/// and makes sure a pusher runs.
pub fn queue(resolved: &Resolved, path: &Path) -> Result<QueueReport> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::invalid(path.display().to_string(), "no file name"))?;
    if classify(&name).is_none() {
        return Err(Error::refused(format!("{name} is not a WAL segment, history, partial or backup file"), None));
    }
    let spool = open_spool(resolved)?;
    let settings = Settings::of(&resolved.stanza);
    if let Some(error) = spool.error().filter(|e| e.permanent) {
        start_pusher(resolved, &spool);
        return Err(blocked(resolved, &spool, &error));
    }
    let identity = spool::FileIdentity::of(&std::fs::metadata(path).at("stat", path)?);
    let report =
        |outcome| QueueReport { name: name.clone(), outcome, pusher_error: spool.error().map(|e| e.describe()) };
    if spool.take_pushed(&name, &identity) {
        return Ok(report(Queuing::AlreadyPushed));
    }
    let deadline = Instant::now() + FULL_WAIT;
    loop {
        let outcome = match spool.enqueue(&name, path, settings.queue_max)? {
            Enqueued::Queued => Queuing::Queued,
            Enqueued::AlreadyQueued => Queuing::AlreadyQueued,
            Enqueued::Full { files, bytes } => {
                start_pusher(resolved, &spool);
                let error = spool.error();
                if error.is_some() || Instant::now() >= deadline {
                    return Err(full(resolved, &name, files, bytes, error.as_ref()));
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        start_pusher(resolved, &spool);
        return Ok(report(outcome));
    }
}

/// Runs the stanza's pusher: in the foreground until the queue is empty (after any running pusher
/// has finished), or as the background pusher archive-push starts.
pub fn push_queue(resolved: &Resolved, mode: Mode) -> Result<PushQueueReport> {
    let spool = open_spool(resolved)?;
    pusher::run(resolved, &spool, mode)
}

/// The stanza's queue, created if missing, with the process acting as pg_wal's owner.
fn open_spool(resolved: &Resolved) -> Result<Spool> {
    let spool = Spool::of(resolved)?;
    if nix::unistd::Uid::effective().is_root() {
        become_owner_of(spool.wal_dir())?;
    }
    spool.create()?;
    Ok(spool)
}

/// Starts the background pusher unless one runs. It gets its own process group, so the signals
/// PostgreSQL sends its archiver's group at shutdown do not stop it: the queue is pushed anyway.
fn start_pusher(resolved: &Resolved, spool: &Spool) {
    if spool.pusher_running() {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!("cannot start the archive pusher: {e}");
            return;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.args(["archive-push", "--push-queue", "--background", "--stanza", &resolved.name]);
    if let Some(config) = &resolved.config_path {
        cmd.arg("--config").arg(config);
    }
    use std::os::unix::process::CommandExt;
    cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if let Err(e) = cmd.spawn() {
        // The file is queued; the next archive-push tries again.
        tracing::warn!("cannot start the archive pusher of stanza {}: {e}", resolved.name);
    }
}

/// archive-push refused because the pusher met a refusal.
fn blocked(resolved: &Resolved, spool: &Spool, error: &PusherError) -> Error {
    let mut hint = error.hint.clone().map(|h| format!("{h}; ")).unwrap_or_default();
    if spool.holds(&error.file) {
        hint.push_str(&format!(
            "{} waits in {}: once the cause is fixed it is pushed and archive-push succeeds again (remove it from \
             there only to give it up)",
            error.file,
            spool.dir().display()
        ));
    } else {
        hint.push_str("archive-push succeeds again once the pusher gets past it");
    }
    Error::refused(
        format!("asynchronous archiving of stanza {} is stopped: {}", resolved.name, error.describe()),
        Some(hint),
    )
}

/// archive-push refused because the queue is full.
fn full(resolved: &Resolved, name: &str, files: usize, bytes: u64, error: Option<&PusherError>) -> Error {
    let why = match error {
        Some(error) => error.describe(),
        None => "the pusher has not caught up".into(),
    };
    Error::refused(
        format!(
            "the asynchronous archive queue of stanza {} is full ({files} files, {} MiB; archive_async_queue_max_mb = \
             {}), so {name} stays in pg_wal for PostgreSQL to retry: {why}",
            resolved.name,
            bytes >> 20,
            resolved.stanza.archive_async_queue_max_mb
        ),
        Some(
            "nothing is dropped: the queue drains once the repository takes WAL again; raise \
             archive_async_queue_max_mb to queue more meanwhile"
                .into(),
        ),
    )
}
