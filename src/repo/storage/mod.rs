//! Where repository objects live. The [`Storage`] trait is what an object store offers — whole
//! object put, exclusive create, ranged get, list by prefix, delete; no append, no rename — so the
//! local directory and an S3-compatible store can both implement it.
//!
//! Guarantees every implementation gives:
//! - `put` and `put_new` are atomic: a reader sees the whole new object or none (or the old one).
//!   When they return, the object is durable.
//! - `put_new` is exclusive: of several concurrent creators of one key exactly one creates it; the
//!   others are told an object exists (and compare it with theirs).
//! - Nothing else is ordered: a crash may leave any subset of the objects put before it, and
//!   temporaries a later [`Storage::remove_stale`] removes. The repository makes a backup set's
//!   manifest its commit point: it is put last, and a set without one is garbage that the next
//!   locked run removes.

mod deadline;
mod expiring;
mod local;
mod local_lock;
mod s3;

pub use deadline::Deadlines;
pub use local::LocalStorage;
pub use s3::{S3Settings, S3Storage};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::Result;

/// A lock or lease held until dropped.
pub trait Held: Send {
    /// An error when the hold was lost (taken over after it expired unrefreshed): whoever holds it
    /// must not commit anything after that.
    fn check(&self) -> Result<()>;
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// An object store keyed by `/`-separated names.
pub trait Storage: Send + Sync {
    /// Where the repository is, for messages: a directory, or a bucket at an endpoint.
    fn location(&self) -> String;
    /// Stores `bytes` under `key`, replacing any object there; durable on return.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Stores `bytes` under `key` only if no object is there; `Ok(false)` when one is (it is left
    /// as it was). Durable on return.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool>;
    /// The whole object, or `None` when absent.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// `len` bytes at `offset` of the object; an error if the object is shorter or absent.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Every object under `prefix` (a "directory": `stanza/backup/`), sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// The object's size and time, or `None` when absent.
    fn stat(&self, key: &str) -> Result<Option<ObjectMeta>>;
    /// Removes the object; absent is fine.
    fn delete(&self, key: &str) -> Result<()>;
    /// Removes every object under `prefix`.
    fn delete_prefix(&self, prefix: &str) -> Result<()>;
    /// Whether the repository itself (its directory or bucket) exists.
    fn exists(&self) -> Result<bool>;

    /// A local file holding the object, for stores that have one (to clone ranges from it).
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    /// Removes what writers that died left under `prefix` (temporary files); returns how many.
    fn remove_stale(&self, _prefix: &str) -> Result<u64> {
        Ok(0)
    }

    /// The size of every object under `prefix`, summed.
    fn size(&self, prefix: &str) -> Result<u64> {
        Ok(self.list(prefix)?.iter().map(|o| o.size).sum())
    }

    /// Several byte ranges of one object, in the order asked (a store may fetch neighbouring
    /// ranges in one request).
    fn get_ranges(&self, key: &str, ranges: &[(u64, u64)]) -> Result<Vec<Vec<u8>>> {
        ranges.iter().map(|(offset, len)| self.get_range(key, *offset, *len)).collect()
    }

    /// Finds out whether the store honours exclusive create on its own (S3's `If-None-Match: *`);
    /// `None` where the question does not arise (a directory has `link(2)`).
    fn probe_exclusive_create(&self) -> Result<Option<bool>> {
        Ok(None)
    }

    /// Tells the store whether its exclusive create can be relied on (what the probe recorded);
    /// without it a store uses a protocol that is safe either way.
    fn set_exclusive_create(&self, _honoured: bool) {}

    /// Stored bytes read so far by this process (gets and ranged gets).
    fn fetched_bytes(&self) -> u64;

    /// For another tool's repository read through pgfork's format: what it is and how it stores
    /// (`pgBackRest repository, read only: compress-type lz4, bundles, aes-256-cbc`).
    fn foreign_description(&self) -> Option<String> {
        None
    }

    /// Takes the exclusive lock at `key` for `holder` (a description shown to whoever is refused),
    /// or refuses naming the current holder. The lock is held until the guard drops; a process
    /// that dies loses it (a local lock at once, an object lock once its lease expires).
    fn lock(self: Arc<Self>, key: &str, holder: &str) -> Result<Box<dyn Held>>;

    /// Leases `key` with `record` (what the lease says) until the guard drops; a process that dies
    /// loses it as a lock does.
    fn lease(self: Arc<Self>, key: &str, record: &[u8]) -> Result<Box<dyn Held>>;

    /// The records of the leases under `prefix` held now; leases whose holder died are removed.
    fn leases(&self, prefix: &str) -> Result<Vec<Vec<u8>>>;
}
