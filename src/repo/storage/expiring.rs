//! Locks and leases in object storage, where there is no flock: an object naming its holder and an
//! expiry, refreshed by a thread while held, removed when released. A holder that dies stops
//! refreshing; its object expires a minute later and is then taken over (a lock) or removed (a
//! lease) by the next look. A lock is created with the store's exclusive create, so of two takers
//! one wins; a holder that finds its object taken over (it stalled past the expiry) is told by
//! [`Held::check`] and must not commit anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::codec::Codec;
use crate::repo::crypto::{from_hex, to_hex};
use crate::repo::object::{self, Kind};
use crate::repo::storage::{Held, Storage};

/// How long an unrefreshed lock or lease lives.
const TTL: Duration = Duration::from_secs(60);
/// How often a holder refreshes.
const REFRESH: Duration = Duration::from_secs(15);
/// How long a taker of an expired lock waits before confirming it still holds what it created:
/// far longer than a rival taker's read-then-delete round trip.
const SETTLE: Duration = Duration::from_secs(2);

/// What the object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// Random: tells this holder's object from a later one under the same key.
    token: String,
    /// Who holds it, for messages.
    holder: String,
    /// Until when it holds without a refresh.
    expires: DateTime<Utc>,
    /// The holding process and its host: a holder on this host whose process is gone holds
    /// nothing, whatever the expiry says.
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    host: String,
    /// The lease's record, hex.
    data: String,
}

impl Record {
    fn new(holder: &str, data: &[u8]) -> Record {
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).expect("the operating system's random source works");
        Record {
            token: to_hex(&token),
            holder: holder.to_string(),
            expires: expiry(),
            pid: std::process::id(),
            host: crate::repo::lease::hostname(),
            data: to_hex(data),
        }
    }

    fn seal(&self, key: &str) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("a lease record serializes");
        object::seal(&Codec::plain(), Kind::Lease, key.as_bytes(), &json)
    }

    /// Whether it holds nothing any more: past its expiry, or its holder (on this host) is gone.
    fn expired(&self) -> bool {
        let dead_here = self.host == crate::repo::lease::hostname()
            && self.pid != 0
            && !crate::repo::storage::local::process_alive(self.pid);
        dead_here || self.expires < Utc::now()
    }
}

fn expiry() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(TTL).unwrap_or_default()
}

/// The record at `key`, `None` when absent.
fn read(storage: &dyn Storage, key: &str) -> Result<Option<Record>> {
    let Some(stored) = storage.get(key)? else { return Ok(None) };
    let what = format!("lease {key}");
    let json = object::open(&Codec::plain(), Kind::Lease, key.as_bytes(), &stored, 1 << 20, &what)?;
    serde_json::from_slice(&json).map(Some).map_err(|e| Error::invalid(what, e.to_string()))
}

/// A held object, refreshed by a thread until dropped.
struct Hold {
    storage: Arc<dyn Storage>,
    key: String,
    token: String,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    refresher: Option<JoinHandle<()>>,
}

impl Hold {
    fn start(storage: Arc<dyn Storage>, key: &str, mut record: Record) -> Hold {
        let (stop, lost) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (thread_storage, thread_key, thread_stop, thread_lost) =
            (Arc::clone(&storage), key.to_string(), Arc::clone(&stop), Arc::clone(&lost));
        let token = record.token.clone();
        let refresher = std::thread::Builder::new()
            .name("pgfork-lease".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    let mut waited = Duration::ZERO;
                    while waited < REFRESH && !thread_stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(200));
                        waited += Duration::from_millis(200);
                    }
                    if thread_stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match read(thread_storage.as_ref(), &thread_key) {
                        Ok(Some(current)) if current.token == record.token => {}
                        Err(e) => {
                            tracing::warn!("refresh of {thread_key}: {e}; retrying");
                            continue;
                        }
                        _ => {
                            tracing::error!("{thread_key} was taken over after it expired");
                            thread_lost.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                    record.expires = expiry();
                    if let Err(e) = thread_storage.put(&thread_key, &record.seal(&thread_key)) {
                        tracing::warn!("refresh of {thread_key}: {e}; retrying");
                    }
                }
            })
            .ok();
        Hold { storage, key: key.to_string(), token, stop, lost, refresher }
    }
}

impl Held for Hold {
    fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::Relaxed) {
            return Err(Error::refused(
                format!("{} was taken over by another process after it expired", self.key),
                Some("the operation stopped before committing anything; run it again".into()),
            ));
        }
        Ok(())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.refresher.take() {
            let _ = thread.join();
        }
        if matches!(read(self.storage.as_ref(), &self.key), Ok(Some(current)) if current.token == self.token) {
            let _ = self.storage.delete(&self.key);
        }
    }
}

/// Takes the lock object `key` for `holder`: created exclusively; an expired one is taken over;
/// a live one refuses naming its holder.
///
/// Taking over is a delete then an exclusive create, and no store offers a delete conditional on
/// what it deletes: a rival that read the same expired object may delete this taker's fresh one
/// and create its own. So a taker waits [`SETTLE`] and reads the object again: only the one whose
/// object is still there holds the lock. (A rival stalled longer than that between its read and
/// its delete is still caught by the refresher, and [`Held::check`] before committing.)
pub fn lock(storage: Arc<dyn Storage>, key: &str, holder: &str) -> Result<Box<dyn Held>> {
    lock_settling(storage, key, holder, SETTLE)
}

fn lock_settling(storage: Arc<dyn Storage>, key: &str, holder: &str, settle: Duration) -> Result<Box<dyn Held>> {
    let record = Record::new(holder, b"");
    let mut took_over = false;
    for _ in 0..3 {
        if storage.put_new(key, &record.seal(key))? {
            if took_over {
                std::thread::sleep(settle);
                if !matches!(read(storage.as_ref(), key)?, Some(current) if current.token == record.token) {
                    return Err(Error::busy(
                        format!("{key} was taken over by another process at the same time"),
                        Some("wait for it to finish".into()),
                    ));
                }
            }
            return Ok(Box::new(Hold::start(storage, key, record)));
        }
        match read(storage.as_ref(), key)? {
            Some(current) if !current.expired() => {
                return Err(Error::busy(
                    format!("{key} is held by {} (until {} unless refreshed)", current.holder, current.expires),
                    Some("wait for it to finish; a holder that died lets go within a minute".into()),
                ));
            }
            // Expired: its holder died or stalled; take it over.
            Some(_) => {
                storage.delete(key)?;
                took_over = true;
            }
            None => {}
        }
    }
    Err(Error::busy(format!("{key} is contended: another process takes it at the same time"), None))
}

/// Creates and holds the lease object `key` with `data`.
pub fn lease(storage: Arc<dyn Storage>, key: &str, data: &[u8]) -> Result<Box<dyn Held>> {
    let record = Record::new("lease", data);
    storage.put(key, &record.seal(key))?;
    Ok(Box::new(Hold::start(storage, key, record)))
}

/// The data of the live leases under `prefix`; expired ones are removed.
pub fn leases(storage: &dyn Storage, prefix: &str) -> Result<Vec<Vec<u8>>> {
    let mut live = Vec::new();
    for object in storage.list(prefix)? {
        match read(storage, &object.key) {
            Ok(Some(record)) if !record.expired() => {
                live.push(from_hex(&record.data).ok_or_else(|| Error::invalid(&object.key, "lease data is not hex"))?)
            }
            Ok(Some(_)) => storage.delete(&object.key)?,
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::storage::LocalStorage;

    #[test]
    fn an_object_lock_refuses_a_second_holder_and_lets_go_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let first = lock(Arc::clone(&storage), "s/lock", "backup (pid 1)").unwrap();
        let err = lock(Arc::clone(&storage), "s/lock", "expire").err().unwrap().to_string();
        assert!(err.contains("held by backup (pid 1)"), "{err}");
        assert!(first.check().is_ok());
        drop(first);
        assert!(storage.get("s/lock").unwrap().is_none());
        lock(Arc::clone(&storage), "s/lock", "expire").unwrap();
    }

    #[test]
    fn an_expired_lock_is_taken_over_and_expired_leases_removed() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let mut dead = Record::new("backup (pid 9, killed)", b"");
        dead.expires = Utc::now() - chrono::Duration::seconds(1);
        storage.put("s/lock", &dead.seal("s/lock")).unwrap();
        let taken = lock_settling(Arc::clone(&storage), "s/lock", "backup (pid 2)", Duration::ZERO).unwrap();
        drop(taken);
        storage.put("s/leases/dead", &dead.seal("s/leases/dead")).unwrap();
        let held = lease(Arc::clone(&storage), "s/leases/live", b"{\"sets\":[]}").unwrap();
        assert_eq!(leases(storage.as_ref(), "s/leases/").unwrap(), vec![b"{\"sets\":[]}".to_vec()]);
        assert!(storage.get("s/leases/dead").unwrap().is_none());
        drop(held);
        assert!(leases(storage.as_ref(), "s/leases/").unwrap().is_empty());
    }

    /// Two takers of one expired lock: the second deletes the first's fresh object and creates its
    /// own while the first is settling; the first then finds it gone and steps aside.
    #[test]
    fn of_two_takers_of_an_expired_lock_only_one_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let mut dead = Record::new("backup (pid 9, killed)", b"");
        dead.expires = Utc::now() - chrono::Duration::seconds(1);
        storage.put("s/lock", &dead.seal("s/lock")).unwrap();
        let first = {
            let storage = Arc::clone(&storage);
            std::thread::spawn(move || lock_settling(storage, "s/lock", "first", Duration::from_millis(500)))
        };
        std::thread::sleep(Duration::from_millis(100));
        // The rival read the dead record before the first took over: it deletes and creates.
        storage.delete("s/lock").unwrap();
        let second = lock_settling(Arc::clone(&storage), "s/lock", "second", Duration::ZERO).unwrap();
        let err = first.join().unwrap().err().expect("the first taker must step aside").to_string();
        assert!(err.contains("taken over by another process"), "{err}");
        assert!(second.check().is_ok());
        assert_eq!(read(storage.as_ref(), "s/lock").unwrap().unwrap().holder, "second");
    }
}
