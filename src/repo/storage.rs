//! Where repository objects live. The [`Storage`] trait is what an object store offers — whole
//! object put, ranged get, list by prefix, delete; no append, no rename — so the local directory
//! and an S3-compatible store can both implement it.
//!
//! Guarantees every implementation gives:
//! - `put` is atomic: a reader sees the whole new object or none (or the old one). When `put`
//!   returns, the object is durable.
//! - Nothing else is ordered: a crash may leave any subset of the objects put before it. The
//!   repository makes a backup set's manifest its commit point: it is put last, and a set without
//!   one is garbage that the next locked run removes.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::util::fsx;

/// An object store keyed by `/`-separated names.
pub trait Storage: Send + Sync {
    /// Stores `bytes` under `key`, replacing any object there; durable on return.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// The whole object, or `None` when absent.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// `len` bytes at `offset` of the object; an error if the object is shorter.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Every key under `prefix` (a "directory": `stanza/backup/`), sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// The size of each object under `prefix`, summed.
    fn size(&self, prefix: &str) -> Result<u64>;
    /// Removes the object; absent is fine.
    fn delete(&self, key: &str) -> Result<()>;
    /// Removes every object under `prefix`.
    fn delete_prefix(&self, prefix: &str) -> Result<()>;
    /// A local file holding the object, for stores that have one (to clone ranges from it).
    fn local_path(&self, key: &str) -> Option<PathBuf>;
    /// When the object was last written, or `None` when absent.
    fn modified(&self, key: &str) -> Result<Option<std::time::SystemTime>>;
}

/// A repository in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: &Path) -> LocalStorage {
        LocalStorage { root: root.to_path_buf() }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(Error::invalid(format!("repository key {key:?}"), "not a plain relative name"));
        }
        Ok(self.root.join(key))
    }
}

impl Storage for LocalStorage {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        let parent = path.parent().expect("keys have a parent");
        if !parent.is_dir() {
            let mut missing = Vec::new();
            let mut dir = parent;
            while !dir.is_dir() {
                missing.push(dir);
                dir = dir.parent().expect("the file system root exists");
            }
            std::fs::create_dir_all(parent).at("create directory", parent)?;
            // A new directory's entry is durable only once the directory holding it is synced:
            // every one created here, from the top (a set's first pack creates two levels).
            for created in missing.iter().rev() {
                fsx::fsync_dir(created.parent().expect("below an existing directory"))?;
            }
        }
        fsx::write_atomic(&path, bytes, 0o640)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        let file = std::fs::File::open(&path).at("open", &path)?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| Error::invalid(key, "range too large"))?];
        file.read_exact_at(&mut buf, offset).at("read", &path)?;
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let entry = entry.map_err(|e| Error::io("list", &dir, e.into()))?;
            let name = entry.file_name().to_string_lossy();
            if entry.file_type().is_file() && !name.contains(".pgfork-tmp.") {
                let rel = entry.path().strip_prefix(&self.root).expect("under root");
                keys.push(rel.to_string_lossy().into_owned());
            }
        }
        Ok(keys)
    }

    fn size(&self, prefix: &str) -> Result<u64> {
        let mut total = 0;
        for key in self.list(prefix)? {
            let path = self.root.join(&key);
            total += std::fs::metadata(&path).at("stat", &path)?.len();
        }
        Ok(total)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let dir = self.path(prefix.trim_end_matches('/'))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", dir, e)),
        }
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    fn modified(&self, key: &str) -> Result<Option<std::time::SystemTime>> {
        let path = self.path(key)?;
        match std::fs::metadata(&path) {
            Ok(meta) => meta.modified().map(Some).at("stat", path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::new(dir.path());
        store.put("s/backup/L1/pack/000001", b"abcdef").unwrap();
        store.put("s/backup/L1/manifest", b"m").unwrap();
        assert_eq!(store.get("s/backup/L1/manifest").unwrap().unwrap(), b"m");
        assert_eq!(store.get("s/backup/L2/manifest").unwrap(), None);
        assert_eq!(store.get_range("s/backup/L1/pack/000001", 2, 3).unwrap(), b"cde");
        assert!(store.get_range("s/backup/L1/pack/000001", 4, 3).is_err());
        assert_eq!(store.list("s/backup/").unwrap(), vec!["s/backup/L1/manifest", "s/backup/L1/pack/000001"]);
        assert_eq!(store.size("s/backup/L1").unwrap(), 7);
        store.delete_prefix("s/backup/L1").unwrap();
        assert!(store.list("s/").unwrap().is_empty());
        assert!(store.put("../escape", b"x").is_err());
    }
}
