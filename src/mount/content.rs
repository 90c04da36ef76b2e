//! Producing a mounted file's bytes on read: runs fetched from the packs, decoded, decrypted and
//! checked against their checksum, kept in a cache bounded in bytes; a sequential reader gets
//! the following runs decoded ahead on other threads. Every failed read is recorded with the file
//! it belongs to, so `verify` can name it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use lru::LruCache;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::mount::tree::Content;
use crate::repo::label::SetLabel;
use crate::repo::manifest::{Manifest, RunRef};
use crate::stanza::Stanza;

/// PostgreSQL's default WAL segment size, for a stanza without a set to tell.
pub const DEFAULT_SEGMENT: u64 = 16 << 20;

/// Bytes decoded ahead of a sequential reader.
const READAHEAD: u64 = 2 * 1024 * 1024;
/// The same from an object store, where each request costs a round trip: a reader of highly
/// compressed data would otherwise wait on one small request after another.
const REMOTE_READAHEAD: u64 = 16 * 1024 * 1024;

/// A read that failed: which file, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadFailure {
    /// The file, relative to the mount point.
    pub path: String,
    /// The error (names the set and pack).
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
enum Key {
    Run { stanza: usize, set: SetLabel, pack: u32, at: u64 },
    SetWal { stanza: usize, set: SetLabel, name: String },
    Archived { stanza: usize, name: String },
}

struct Cache {
    entries: LruCache<Key, Arc<Vec<u8>>>,
    bytes: usize,
    limit: usize,
    /// Keys some thread is decoding now: others wait for it instead of decoding them again.
    loading: HashSet<Key>,
}

impl Cache {
    fn get(&mut self, key: &Key) -> Option<Arc<Vec<u8>>> {
        self.entries.get(key).cloned()
    }

    fn put(&mut self, key: Key, value: Arc<Vec<u8>>) {
        self.bytes += value.len();
        if let Some(old) = self.entries.put(key, value) {
            self.bytes -= old.len();
        }
        while self.bytes > self.limit && self.entries.len() > 1 {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.bytes -= evicted.len(),
                None => break,
            }
        }
    }
}

/// Reads file contents for the mount; shared by all FUSE threads.
pub struct ContentReader {
    stanzas: Vec<Stanza>,
    cache: Mutex<Cache>,
    loaded: Condvar,
    segment_sizes: Vec<OnceLock<u64>>,
    /// Where the last read of each file ended, by (manifest, file index): a read starting there
    /// is sequential.
    sequential: Mutex<HashMap<(usize, usize), u64>>,
    failures: Mutex<Vec<ReadFailure>>,
    pool: rayon::ThreadPool,
}

impl ContentReader {
    /// A reader over `stanzas` with a cache of `cache_bytes`.
    pub fn new(stanzas: Vec<Stanza>, cache_bytes: usize) -> Result<ContentReader> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name(|i| format!("pgfork-readahead-{i}"))
            .build()
            .map_err(|e| Error::invalid("readahead threads", e.to_string()))?;
        let segment_sizes = stanzas.iter().map(|_| OnceLock::new()).collect();
        Ok(ContentReader {
            stanzas,
            cache: Mutex::new(Cache {
                entries: LruCache::unbounded(),
                bytes: 0,
                limit: cache_bytes,
                loading: HashSet::new(),
            }),
            loaded: Condvar::new(),
            segment_sizes,
            sequential: Mutex::new(HashMap::new()),
            failures: Mutex::new(Vec::new()),
            pool,
        })
    }

    /// The stanzas served.
    pub fn stanzas(&self) -> &[Stanza] {
        &self.stanzas
    }

    /// Stored bytes fetched from the repositories so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.stanzas.iter().map(|s| s.storage().fetched_bytes()).sum()
    }

    /// Reads failed so far.
    pub fn failures(&self) -> Vec<ReadFailure> {
        self.failures.lock().expect("failures lock").clone()
    }

    /// Records a failed read of `path`.
    pub fn record_failure(&self, path: &str, error: &Error) {
        tracing::error!("read of {path} failed: {error}");
        let mut failures = self.failures.lock().expect("failures lock");
        if failures.len() < 1000 && !failures.iter().any(|f| f.path == path) {
            failures.push(ReadFailure { path: path.to_string(), reason: error.to_string() });
        }
    }

    /// Up to `size` bytes of `content` from `offset` (fewer at the end of the file).
    pub fn read(self: &Arc<Self>, content: &Content, offset: u64, size: u32) -> Result<Vec<u8>> {
        match content {
            Content::Bytes(bytes) => Ok(slice(bytes, offset, size).to_vec()),
            Content::SetWal { stanza, set, entry } => {
                let key = Key::SetWal { stanza: *stanza, set: set.clone(), name: entry.name.clone() };
                let bytes = self.cached(key, || {
                    let repo = &self.stanzas[*stanza];
                    repo.runs().read_wal(set, entry)
                })?;
                Ok(slice(&bytes, offset, size).to_vec())
            }
            Content::Archived { stanza, name } => {
                let bytes = self.archived(*stanza, name)?;
                Ok(slice(&bytes, offset, size).to_vec())
            }
            Content::SetFile { stanza, manifest, index } => self.read_set_file(*stanza, manifest, *index, offset, size),
        }
    }

    /// The whole archived file `name` of stanza `stanza`, decoded (through the cache).
    pub fn archived(&self, stanza: usize, name: &str) -> Result<Arc<Vec<u8>>> {
        self.cached(Key::Archived { stanza, name: name.to_string() }, || {
            let repo = &self.stanzas[stanza];
            repo.archive().get(name)?.ok_or_else(|| {
                Error::invalid(format!("stanza {}, archived WAL {name}", repo.name()), "no longer in the archive")
            })
        })
    }

    /// The WAL segment size of stanza `stanza`: from its newest set (looked up once), else
    /// PostgreSQL's default.
    pub fn segment_size(&self, stanza: usize) -> Result<u64> {
        if let Some(size) = self.segment_sizes[stanza].get() {
            return Ok(*size);
        }
        let repo = &self.stanzas[stanza];
        let newest = match repo.labels()?.pop() {
            Some(label) => repo.load_manifest(&label)?,
            None => None,
        };
        let size = newest.and_then(|m| m.segment_size()).unwrap_or(DEFAULT_SEGMENT);
        Ok(*self.segment_sizes[stanza].get_or_init(|| size))
    }

    fn read_set_file(
        self: &Arc<Self>,
        stanza: usize,
        manifest: &Arc<Manifest>,
        index: usize,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>> {
        let entry = &manifest.files[index];
        let end = entry.size.min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let extent = entry.extent_at(pos).ok_or_else(|| {
                Error::invalid(format!("backup {}, file {}", manifest.label, entry.path), "no extent covers the offset")
            })?;
            let upto = end.min(extent.offset + extent.len);
            let take = (upto - pos) as usize;
            match &extent.run {
                None => out.resize(out.len() + take, 0),
                Some(run) => {
                    let plain = self.run(stanza, run, &entry.path)?;
                    let from = run.skip as usize + (pos - extent.offset) as usize;
                    let bytes = plain.get(from..from + take).ok_or_else(|| {
                        Error::invalid(format!("backup {}, file {}", run.set, entry.path), "extent outside its run")
                    })?;
                    out.extend_from_slice(bytes);
                }
            }
            pos = upto;
        }
        self.read_ahead(stanza, manifest, index, offset, end);
        Ok(out)
    }

    /// After a read that continues the previous one of the same file, decodes the runs of the next
    /// [`READAHEAD`] bytes ([`REMOTE_READAHEAD`] from an object store) on the readahead threads.
    /// It fetches in batches: nothing while at least half the window ahead is cached or loading,
    /// then the rest of it at once, so each request carries many runs rather than the one that
    /// slid into the window.
    fn read_ahead(self: &Arc<Self>, stanza: usize, manifest: &Arc<Manifest>, index: usize, offset: u64, end: u64) {
        let key = (Arc::as_ptr(manifest) as usize, index);
        let sequential = {
            let mut last = self.sequential.lock().expect("sequential lock");
            if last.len() > 4096 {
                last.clear();
            }
            last.insert(key, end) == Some(offset)
        };
        if !sequential {
            return;
        }
        let entry = &manifest.files[index];
        let start = entry.extents.partition_point(|e| e.offset + e.len <= end);
        let remote = entry.extents.get(start..).unwrap_or_default().iter().find_map(|e| e.run.as_ref());
        let Some(remote) = remote.map(|run| self.stanzas[stanza].runs().is_remote(run)) else { return };
        let window = if remote { REMOTE_READAHEAD } else { READAHEAD };
        let (mut ahead, mut covered) = (0, Some(0));
        // The runs to fetch, claimed (marked loading) so no other thread fetches them too, by pack.
        let mut by_pack: HashMap<(SetLabel, u32), Vec<RunRef>> = HashMap::new();
        let mut cache = self.cache.lock().expect("cache lock");
        for extent in entry.extents.get(start..).unwrap_or_default() {
            if ahead >= window {
                break;
            }
            ahead += extent.len;
            let have = |run: &RunRef| {
                let key = run_key(stanza, run);
                cache.entries.contains(&key) || cache.loading.contains(&key)
            };
            let Some(run) = extent.run.as_ref().filter(|run| !have(run)) else {
                // Zeros, or a run cached or on its way: part of what is already ahead.
                covered = covered.map(|c| c + extent.len);
                continue;
            };
            if let Some(done) = covered.take()
                && done >= window / 2
            {
                return;
            }
            let key = run_key(stanza, run);
            cache.loading.insert(key);
            by_pack.entry((run.set.clone(), run.pack)).or_default().push(run.clone());
        }
        drop(cache);
        for runs in by_pack.into_values() {
            let this = Arc::clone(self);
            let path = entry.path.clone();
            // One request for the neighbouring runs of a pack; a failure here is reported when
            // the reader gets to the run.
            self.pool.spawn(move || this.fetch_runs(stanza, &runs, &path));
        }
    }

    /// Fetches claimed `runs` of one pack together (the store coalesces neighbouring ranges),
    /// decodes each into the cache and releases the claims.
    fn fetch_runs(&self, stanza: usize, runs: &[RunRef], path: &str) {
        let repo = &self.stanzas[stanza];
        let decoded: Vec<Option<Vec<u8>>> = match repo.runs().read_many(runs, path) {
            Ok(all) => all.into_iter().map(Result::ok).collect(),
            Err(_) => runs.iter().map(|_| None).collect(),
        };
        let mut cache = self.cache.lock().expect("cache lock");
        for (run, plain) in runs.iter().zip(decoded) {
            let key = run_key(stanza, run);
            cache.loading.remove(&key);
            if let Some(plain) = plain {
                cache.put(key, Arc::new(plain));
            }
        }
        drop(cache);
        self.loaded.notify_all();
    }

    fn run(&self, stanza: usize, run: &RunRef, path: &str) -> Result<Arc<Vec<u8>>> {
        self.cached(run_key(stanza, run), || {
            let repo = &self.stanzas[stanza];
            repo.runs().read(run, path)
        })
    }

    /// The cached value of `key`, or `load`'s. Each key is decoded by one thread at a time: the
    /// others (readers of the same run, readahead) wait for it.
    fn cached(&self, key: Key, load: impl FnOnce() -> Result<Vec<u8>>) -> Result<Arc<Vec<u8>>> {
        let mut cache = self.cache.lock().expect("cache lock");
        loop {
            if let Some(hit) = cache.get(&key) {
                return Ok(hit);
            }
            if !cache.loading.contains(&key) {
                break;
            }
            cache = self.loaded.wait(cache).expect("cache lock");
        }
        cache.loading.insert(key.clone());
        drop(cache);
        let value = load().map(Arc::new);
        let mut cache = self.cache.lock().expect("cache lock");
        cache.loading.remove(&key);
        if let Ok(value) = &value {
            cache.put(key, Arc::clone(value));
        }
        drop(cache);
        self.loaded.notify_all();
        value
    }
}

fn run_key(stanza: usize, run: &RunRef) -> Key {
    Key::Run { stanza, set: run.set.clone(), pack: run.pack, at: run.at }
}

fn slice(bytes: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = (offset as usize).min(bytes.len());
    let end = start.saturating_add(size as usize).min(bytes.len());
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_within_its_byte_limit_evicting_the_least_recent() {
        let mut cache = Cache { entries: LruCache::unbounded(), bytes: 0, limit: 300, loading: HashSet::new() };
        let key = |n: u64| Key::Archived { stanza: 0, name: n.to_string() };
        for n in 0..3 {
            cache.put(key(n), Arc::new(vec![0; 100]));
        }
        assert!(cache.get(&key(0)).is_some(), "touch 0 so 1 is the least recent");
        cache.put(key(3), Arc::new(vec![0; 100]));
        assert_eq!(cache.bytes, 300);
        assert!(cache.get(&key(1)).is_none());
        assert!(cache.get(&key(0)).is_some() && cache.get(&key(3)).is_some());
        cache.put(key(4), Arc::new(vec![0; 1000]));
        assert_eq!(cache.entries.len(), 1, "an entry larger than the limit still serves its reader");
    }

    #[test]
    fn slices_stop_at_the_end() {
        assert_eq!(slice(b"abcdef", 2, 3), b"cde");
        assert_eq!(slice(b"abcdef", 4, 10), b"ef");
        assert_eq!(slice(b"abcdef", 10, 10), b"");
    }
}
