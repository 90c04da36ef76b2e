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

mod local;

pub use local::LocalStorage;

use std::path::PathBuf;
use std::time::SystemTime;

use crate::error::Result;

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
}
