//! The pusher of a stanza's asynchronous archive queue: exactly one per queue (a flock on
//! `pusher.lock`, which the kernel drops with the process, so a killed pusher never blocks the
//! next). It stores queued files in every repository of the stanza, several at a time, and
//! removes a file from the queue only once every repository holds it durably. With time to
//! spare it looks ahead at `pg_wal/archive_status/*.ready`, like pgBackRest and WAL-G, and pushes
//! files PostgreSQL has not handed over yet straight from pg_wal (newest first, away from the file
//! PostgreSQL is on), so archive-push finds them done.
//!
//! Reading a file from pg_wal is safe only while PostgreSQL keeps it: a segment is complete once
//! its `.ready` exists and is recycled (renamed to a later name, then rewritten) only after
//! archive-push for it returned. A read counts only when the name still leads to the inode read,
//! unchanged, after the last byte: then no rename, hence no rewrite, came first.
//!
//! Failures are recorded in the queue (`pusher.error`) for archive-push to report, and retried
//! with a backoff; a round of pushes without failure clears them. An idle pusher lingers a
//! moment, then lets go of the lock and looks at the queue once more, so a file queued while it
//! was leaving is never left without a pusher.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, Resolved};
use crate::error::{Error, IoContext, Result};
use crate::ops::archive::check_segment_cluster;
use crate::ops::archive_async::Settings;
use crate::ops::archive_async::spool::{FileIdentity, PusherError, Spool};
use crate::repo::archive::{WalFileKind, classify};
use crate::stanza::Stanza;

/// Largest WAL file read (the largest segment size).
const MAX_FILE: u64 = 1 << 30;
/// How long an idle background pusher waits for more work before it leaves.
const LINGER: Duration = Duration::from_secs(2);
/// How often an idle pusher looks for work.
const POLL: Duration = Duration::from_millis(200);
/// Longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Files attempted in one round at most, so failures are retried and recorded in good time.
const ROUND_MAX: usize = 256;

/// How the pusher runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Started by archive-push: leaves at once when another pusher runs, retries failures until
    /// they clear, leaves when idle.
    Background,
    /// Started by hand: waits for a running pusher to finish, then pushes until the queue is
    /// empty; a failure ends it with the error.
    Foreground,
}

/// What a pusher did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushQueueReport {
    /// Queued files stored in every repository and removed from the queue.
    pub pushed: u64,
    /// Files pushed straight from pg_wal ahead of PostgreSQL.
    pub pushed_ahead: u64,
    /// Whether another pusher was running (a background pusher then does nothing).
    pub another_running: bool,
}

/// Where a pushed file is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Queue,
    Ahead,
}

type TaskKey = (Source, String);

/// Runs the pusher of the stanza's queue.
pub fn run(resolved: &Resolved, spool: &Spool, mode: Mode) -> Result<PushQueueReport> {
    let mut report = PushQueueReport::default();
    let Some(mut lock) = spool.lock_pusher(mode == Mode::Foreground)? else {
        report.another_running = true;
        return Ok(report);
    };
    spool.remove_dead_temporaries();
    let settings = Settings::of(&resolved.stanza);
    let mut targets = resolved.each_repo();
    let mut opened: Vec<Option<Stanza>> = targets.iter().map(|_| None).collect();
    let mut done: HashMap<TaskKey, Vec<bool>> = HashMap::new();
    let failing_since: Mutex<Option<DateTime<Utc>>> = Mutex::new(None);
    let mut backoff = Duration::from_secs(1);
    let mut idle_since: Option<Instant> = None;
    loop {
        let work = !spool.queued()?.is_empty() || !ready_ahead(spool, &settings, &HashSet::new()).is_empty();
        let mut progressed = false;
        if work {
            let round = Round {
                spool,
                targets: &targets,
                slots: opened.drain(..).map(|s| s.map(|s| OnceLock::from(Some(s))).unwrap_or_default()).collect(),
                settings: &settings,
                failing_since: &failing_since,
                state: Mutex::new(RoundState::default()),
            };
            let outcome = round.run(&mut done);
            report.pushed += outcome.pushed;
            report.pushed_ahead += outcome.pushed_ahead;
            opened = outcome.opened;
            if let Some(error) = outcome.first_error {
                if mode == Mode::Foreground {
                    return Err(error);
                }
                // The configuration may have been repaired: read it again for the next round.
                if let Ok(current) = Config::load(resolved.config_path.as_deref())
                    .and_then(|c| c.resolve(Some(&resolved.name)))
                    .map(|r| r.each_repo())
                {
                    let names = |t: &[Resolved]| t.iter().map(|r| r.repo_name.clone()).collect::<Vec<_>>();
                    if names(&current) != names(&targets) {
                        done.clear();
                    }
                    targets = current;
                    opened = targets.iter().map(|_| None).collect();
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            backoff = Duration::from_secs(1);
            progressed = outcome.pushed + outcome.pushed_ahead > 0;
        }
        // Nothing failed (or nothing is left that could).
        *failing_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        spool.clear_error();
        if progressed {
            idle_since = None;
            continue;
        }
        spool.prune_pushed();
        if mode == Mode::Foreground {
            return Ok(report);
        }
        if idle_since.get_or_insert_with(Instant::now).elapsed() < LINGER {
            std::thread::sleep(POLL);
            continue;
        }
        // Leave, then look once more: a file queued after the last look found the lock held and
        // started no pusher, so it must be seen here.
        drop(lock);
        if spool.queued()?.is_empty() {
            return Ok(report);
        }
        match spool.lock_pusher(false)? {
            Some(again) => lock = again,
            None => return Ok(report),
        }
        idle_since = None;
    }
}

/// Records a failure in the queue for archive-push (a refusal is not overwritten by a transient
/// failure of the same streak: it is what archive-push must report).
fn record_failure(spool: &Spool, file: &str, repository: &str, error: &Error, since: &Mutex<Option<DateTime<Utc>>>) {
    let since = *since.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Utc::now);
    let record = PusherError::new(file, repository, error, since);
    tracing::warn!("{}", record.describe());
    let recorded = spool.error().filter(|e| e.since == since);
    if (record.permanent || !recorded.is_some_and(|r| r.permanent))
        && let Err(e) = spool.set_error(&record)
    {
        tracing::warn!("record the pusher's failure: {e}");
    }
}

/// Files ready in pg_wal that are neither queued nor pushed nor in `seen`, newest first, a few.
/// The oldest is left out: it is the one PostgreSQL hands archive-push next.
fn ready_ahead(spool: &Spool, settings: &Settings, seen: &HashSet<TaskKey>) -> Vec<String> {
    let status = spool.wal_dir().join("archive_status");
    let Ok(entries) = std::fs::read_dir(&status) else { return Vec::new() };
    let mut ready: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".ready").map(str::to_string))
        .filter(|name| classify(name).is_some())
        .collect();
    ready.sort_unstable_by(|a, b| b.cmp(a));
    ready.pop();
    ready
        .into_iter()
        .filter(|name| !seen.contains(&(Source::Ahead, name.clone())))
        .filter(|name| !spool.holds(name) && !spool.was_pushed(name))
        .take(settings.parallel * 2)
        .collect()
}

/// One round of pushes: each queued file once (and, with time to spare, files ready in pg_wal),
/// by `parallel` workers. A repository is opened when first needed; once it failed, the round
/// leaves it alone, so the other repositories go on at full speed.
struct Round<'a> {
    spool: &'a Spool,
    targets: &'a [Resolved],
    slots: Vec<OnceLock<Option<Stanza>>>,
    settings: &'a Settings,
    failing_since: &'a Mutex<Option<DateTime<Utc>>>,
    state: Mutex<RoundState>,
}

#[derive(Default)]
struct RoundState {
    tasks: VecDeque<TaskKey>,
    seen: HashSet<TaskKey>,
    attempted: usize,
    failed_repos: HashSet<usize>,
    pushed: u64,
    pushed_ahead: u64,
    first_error: Option<Error>,
}

struct RoundOutcome {
    pushed: u64,
    pushed_ahead: u64,
    first_error: Option<Error>,
    /// The repositories opened, to keep for the next round (none that failed).
    opened: Vec<Option<Stanza>>,
}

impl Round<'_> {
    fn run(self, done: &mut HashMap<TaskKey, Vec<bool>>) -> RoundOutcome {
        let shared = Mutex::new(std::mem::take(done));
        std::thread::scope(|scope| {
            for _ in 0..self.settings.parallel {
                scope.spawn(|| {
                    while let Some(task) = self.next() {
                        self.push(&task, &shared);
                    }
                });
            }
        });
        *done = shared.into_inner().unwrap_or_else(|p| p.into_inner());
        let state = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        let opened = self
            .slots
            .into_iter()
            .enumerate()
            .map(|(i, slot)| slot.into_inner().flatten().filter(|_| !state.failed_repos.contains(&i)))
            .collect();
        RoundOutcome { pushed: state.pushed, pushed_ahead: state.pushed_ahead, first_error: state.first_error, opened }
    }

    /// The next file to push: queued files first (PostgreSQL counts them archived), then, while
    /// every repository works, files ready in pg_wal.
    fn next(&self) -> Option<TaskKey> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.tasks.is_empty() && state.attempted < ROUND_MAX {
            let queued: Vec<TaskKey> = match self.spool.queued() {
                Ok(queued) => queued.into_iter().map(|q| (Source::Queue, q.name)).collect(),
                Err(e) => {
                    tracing::warn!("list the archive queue: {e}");
                    Vec::new()
                }
            };
            let mut fresh: Vec<TaskKey> = queued.into_iter().filter(|t| !state.seen.contains(t)).collect();
            if fresh.is_empty() && state.failed_repos.is_empty() {
                fresh = ready_ahead(self.spool, self.settings, &state.seen)
                    .into_iter()
                    .map(|name| (Source::Ahead, name))
                    .collect();
            }
            for task in fresh {
                state.seen.insert(task.clone());
                state.tasks.push_back(task);
            }
        }
        let task = state.tasks.pop_front()?;
        state.attempted += 1;
        Some(task)
    }

    /// The stanza in repository `index`, opened on first use; `None` when it failed.
    fn stanza(&self, index: usize) -> Option<&Stanza> {
        if self.state.lock().unwrap_or_else(|p| p.into_inner()).failed_repos.contains(&index) {
            return None;
        }
        let target = &self.targets[index];
        let opened = self.slots[index].get_or_init(|| match Stanza::open(target) {
            Ok(stanza) => Some(stanza),
            Err(e) => {
                let file = self.spool.queued().ok().and_then(|q| q.first().map(|q| q.name.clone()));
                self.fail(&file.unwrap_or_default(), index, e);
                None
            }
        });
        opened.as_ref()
    }

    /// Pushes one file to every repository that does not hold it yet.
    fn push(&self, task: &TaskKey, done: &Mutex<HashMap<TaskKey, Vec<bool>>>) {
        let (source, name) = task;
        let read = match source {
            Source::Queue => read_queued(&self.spool.path_of(name)).map(|bytes| bytes.map(|b| (b, None))),
            Source::Ahead => read_stable(&self.spool.wal_dir().join(name)).map(|r| r.map(|(b, id)| (b, Some(id)))),
        };
        let (bytes, identity) = match read {
            Ok(Some(read)) => read,
            // Gone: pushed and removed meanwhile, or recycled by PostgreSQL after archive-push.
            Ok(None) => return,
            Err(e) => {
                record_failure(self.spool, name, "", &e, self.failing_since);
                self.state.lock().unwrap_or_else(|p| p.into_inner()).first_error.get_or_insert(e);
                return;
            }
        };
        let count = self.targets.len();
        let mut held = done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task)
            .filter(|held| held.len() == count)
            .cloned()
            .unwrap_or_else(|| vec![false; count]);
        let kind = classify(name).map(|(kind, _)| kind);
        for (index, held) in held.iter_mut().enumerate().filter(|(_, held)| !**held) {
            let Some(stanza) = self.stanza(index) else { continue };
            let pushed = (|| {
                if matches!(kind, Some(WalFileKind::Segment | WalFileKind::Partial)) {
                    check_segment_cluster(name, &bytes, stanza.record())?;
                }
                stanza.archive().push(name, &bytes)
            })();
            match pushed {
                Ok(_) => *held = true,
                Err(e) => self.fail(name, index, e),
            }
        }
        let complete = held.iter().all(|h| *h);
        {
            let mut done = done.lock().unwrap_or_else(|p| p.into_inner());
            if !complete {
                done.insert(task.clone(), held);
                return;
            }
            done.remove(task);
        }
        let finished = match (source, identity) {
            (Source::Queue, _) => self.spool.remove(name),
            (Source::Ahead, Some(identity)) => self.spool.mark_pushed(name, &identity),
            (Source::Ahead, None) => Ok(()),
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match finished {
            Err(e) => {
                drop(state);
                record_failure(self.spool, name, "", &e, self.failing_since);
                self.state.lock().unwrap_or_else(|p| p.into_inner()).first_error.get_or_insert(e);
            }
            Ok(()) if *source == Source::Queue => state.pushed += 1,
            Ok(()) => state.pushed_ahead += 1,
        }
    }

    /// Records the failure of repository `index` at once, so archive-push learns of it while the
    /// round goes on; the round leaves that repository alone from now on.
    fn fail(&self, name: &str, index: usize, error: Error) {
        record_failure(self.spool, name, &self.targets[index].repo_name, &error, self.failing_since);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.failed_repos.insert(index);
        state.first_error.get_or_insert(error);
    }
}

/// A queued file; `None` when it is no longer queued.
fn read_queued(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let size = file.metadata().at("stat", path)?.len();
    read_bounded(&mut file, size, path).map(Some)
}

/// A file of pg_wal and its identity, read while PostgreSQL kept it: `None` when it is gone, or
/// when its name no longer leads to the same unchanged file after the read.
fn read_stable(path: &Path) -> Result<Option<(Vec<u8>, FileIdentity)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let before = FileIdentity::of(&file.metadata().at("stat", path)?);
    let bytes = read_bounded(&mut file, before.size(), path)?;
    let after = match std::fs::metadata(path) {
        Ok(meta) => FileIdentity::of(&meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    Ok((after == before && bytes.len() as u64 == before.size()).then_some((bytes, before)))
}

fn read_bounded(file: &mut File, size: u64, path: &Path) -> Result<Vec<u8>> {
    if size > MAX_FILE {
        return Err(Error::invalid(path.display().to_string(), format!("{size} bytes is larger than any WAL file")));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_FILE + 1).read_to_end(&mut bytes).at("read", path)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::archive_async::Enqueued;
    use crate::repo::handle::test_repo;
    use std::path::PathBuf;

    /// A stanza `main` (system identifier 7) in the repositories `names`, with a data directory
    /// that has a pg_wal, and its queue.
    fn setup(names: &[&str]) -> (tempfile::TempDir, Resolved, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("pg_wal/archive_status")).unwrap();
        let mut text = String::new();
        for name in names {
            let path = dir.path().join(name);
            drop(test_repo(&path, false));
            text.push_str(&format!("[repo.{name}]\npath = \"{}\"\n", path.display()));
        }
        let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        text.push_str(&format!(
            "[stanza.main]\ndata = \"{}\"\nrepos = [{}]\narchive_async = true\n",
            data.display(),
            list.join(", ")
        ));
        let resolved = Config::parse(&text).unwrap().resolve(None).unwrap();
        let spool = Spool::of(&resolved).unwrap();
        spool.create().unwrap();
        (dir, resolved, spool)
    }

    /// A segment whose long page header names `system_identifier`.
    fn segment(system_identifier: u64, fill: u8) -> Vec<u8> {
        let mut bytes = vec![fill; 16384];
        bytes[2..4].copy_from_slice(&2u16.to_ne_bytes());
        bytes[24..32].copy_from_slice(&system_identifier.to_ne_bytes());
        bytes
    }

    fn in_pg_wal(spool: &Spool, name: &str, bytes: &[u8]) -> PathBuf {
        let path = spool.wal_dir().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn archived(resolved: &Resolved, name: &str) -> Vec<Option<Vec<u8>>> {
        resolved.each_repo().iter().map(|t| Stanza::open(t).unwrap().archive().get(name).unwrap()).collect()
    }

    #[test]
    fn the_queue_goes_to_every_repository_then_leaves() {
        let (_dir, resolved, spool) = setup(&["main", "second"]);
        let names = ["000000010000000000000001", "000000010000000000000002", "00000002.history"];
        for (i, name) in names.iter().enumerate() {
            let bytes = if name.ends_with(".history") {
                b"1\t0/3000000\tno recovery target\n".to_vec()
            } else {
                segment(7, i as u8)
            };
            let path = in_pg_wal(&spool, name, &bytes);
            assert_eq!(spool.enqueue(name, &path, 1 << 30).unwrap(), Enqueued::Queued);
            // PostgreSQL may recycle its file at once: the queue has its own.
            std::fs::write(&path, b"recycled").unwrap();
        }
        let report = run(&resolved, &spool, Mode::Foreground).unwrap();
        assert_eq!(report.pushed, 3);
        assert!(spool.queued().unwrap().is_empty());
        assert_eq!(archived(&resolved, names[1]), vec![Some(segment(7, 1)); 2]);
        assert!(archived(&resolved, names[2]).iter().all(Option::is_some));
        assert_eq!(spool.error(), None);
    }

    #[test]
    fn another_clusters_segment_stops_the_queue_as_a_refusal() {
        let (_dir, resolved, spool) = setup(&["main"]);
        let name = "000000010000000000000005";
        let path = in_pg_wal(&spool, name, &segment(8, 0));
        spool.enqueue(name, &path, 1 << 30).unwrap();
        let err = run(&resolved, &spool, Mode::Foreground).unwrap_err();
        assert!(err.to_string().contains("system identifier"), "{err}");
        let recorded = spool.error().unwrap();
        assert!(recorded.permanent && recorded.file == name && recorded.repository == "main", "{recorded:?}");
        assert!(spool.holds(name), "a file that could not be pushed stays queued");
        assert_eq!(archived(&resolved, name), vec![None]);
        // Given up by hand: the next pusher finds nothing to do and clears the failure.
        spool.remove(name).unwrap();
        run(&resolved, &spool, Mode::Foreground).unwrap();
        assert_eq!(spool.error(), None);
    }

    #[test]
    fn ready_files_are_pushed_ahead_but_the_oldest() {
        let (_dir, resolved, spool) = setup(&["main"]);
        let names = ["000000010000000000000007", "000000010000000000000008", "000000010000000000000009"];
        for (i, name) in names.iter().enumerate() {
            in_pg_wal(&spool, name, &segment(7, i as u8));
            std::fs::write(spool.wal_dir().join(format!("archive_status/{name}.ready")), b"").unwrap();
        }
        let report = run(&resolved, &spool, Mode::Foreground).unwrap();
        assert_eq!(report.pushed_ahead, 2);
        assert_eq!(archived(&resolved, names[0]), vec![None]);
        for name in &names[1..] {
            assert!(archived(&resolved, name)[0].is_some());
            let identity = FileIdentity::of(&std::fs::metadata(spool.wal_dir().join(name)).unwrap());
            assert!(spool.take_pushed(name, &identity), "archive-push of {name} finds it pushed");
        }
    }

    #[test]
    fn a_stable_read_needs_the_name_to_lead_to_the_same_unchanged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000010000000000000004");
        std::fs::write(&path, b"complete segment").unwrap();
        let (bytes, identity) = read_stable(&path).unwrap().unwrap();
        assert_eq!(bytes, b"complete segment");
        assert_eq!(identity, FileIdentity::of(&std::fs::metadata(&path).unwrap()));
        std::fs::rename(&path, dir.path().join("000000010000000000000009")).unwrap();
        assert!(read_stable(&path).unwrap().is_none(), "a recycled segment is not read");
        assert!(read_queued(&path).unwrap().is_none());
    }
}
