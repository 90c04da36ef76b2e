//! Decoded pgBackRest files, each decoded once, whole, into an unnamed scratch file and checked
//! (size, SHA-1) before a byte of it is served: gzip and bzip2 cannot seek, and no compression
//! pgBackRest uses lets a range be checked on its own. Scratch files are unlinked from the start
//! (a crash leaves nothing) and kept while their total stays under a limit, least recently used
//! first out; a reader still holding one keeps it until it is done.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use lru::LruCache;

use crate::error::{Error, IoContext, Result};

/// Which file: the set that stores it and its name in that set's manifest.
pub type FileKey = (String, String);

/// One file: decoded by the first reader, waited for by the others.
struct Slot {
    cell: OnceLock<std::result::Result<Arc<File>, String>>,
    size: u64,
}

struct Slots {
    entries: LruCache<FileKey, Arc<Slot>>,
    bytes: u64,
}

/// The scratch files of one process.
pub struct DecodedFiles {
    dir: PathBuf,
    limit: u64,
    slots: Mutex<Slots>,
}

impl DecodedFiles {
    /// Scratch files in `dir` (created when first needed), at most about `limit` bytes of them.
    pub fn new(dir: &Path, limit: u64) -> DecodedFiles {
        DecodedFiles {
            dir: dir.to_path_buf(),
            limit,
            slots: Mutex::new(Slots { entries: LruCache::unbounded(), bytes: 0 }),
        }
    }

    /// `len` bytes at `offset` of the file `key` (`size` bytes when decoded), decoding it first
    /// with `decode` (which writes the whole content, checked, into the file it is given) unless
    /// it is decoded already. `what` names the file in errors.
    pub fn read(
        &self,
        key: &FileKey,
        size: u64,
        offset: u64,
        len: u64,
        what: &str,
        decode: impl FnOnce(&mut File) -> Result<()>,
    ) -> Result<Vec<u8>> {
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::invalid(what, format!("{len} bytes at {offset} lie past its end ({size} bytes)")));
        }
        let slot = self.slot(key, size);
        let file = slot
            .cell
            .get_or_init(|| self.decode_into_scratch(decode).map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(|reason| Error::invalid(what, reason))?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| Error::invalid(what, "range too large"))?];
        file.read_exact_at(&mut buf, offset).map_err(|e| Error::io("read decoded", what, e))?;
        Ok(buf)
    }

    /// The slot of `key`, made most recently used; a new one evicts the least recently used over
    /// the limit.
    fn slot(&self, key: &FileKey, size: u64) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = slots.entries.get(key) {
            return Arc::clone(slot);
        }
        let slot = Arc::new(Slot { cell: OnceLock::new(), size });
        slots.entries.put(key.clone(), Arc::clone(&slot));
        slots.bytes += size;
        while slots.bytes > self.limit && slots.entries.len() > 1 {
            match slots.entries.pop_lru() {
                Some((_, evicted)) => slots.bytes -= evicted.size,
                None => break,
            }
        }
        slot
    }

    fn decode_into_scratch(&self, decode: impl FnOnce(&mut File) -> Result<()>) -> Result<File> {
        std::fs::create_dir_all(&self.dir).at("create", &self.dir)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(&self.dir)
            .at("create a scratch file in", &self.dir)?;
        decode(&mut file)?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn decodes_once_and_reads_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let files = DecodedFiles::new(dir.path(), 1 << 20);
        let key = ("20250101-000000F".to_string(), "pg_data/base/1/1".to_string());
        let calls = std::sync::atomic::AtomicU32::new(0);
        let decode = |f: &mut File| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            f.write_all(b"0123456789").map_err(|e| Error::io("write", "t", e))
        };
        assert_eq!(files.read(&key, 10, 2, 3, "t", decode).unwrap(), b"234");
        assert_eq!(files.read(&key, 10, 7, 3, "t", decode).unwrap(), b"789");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(files.read(&key, 10, 8, 3, "t", decode).is_err(), "past the end");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "scratch files have no name");
    }

    #[test]
    fn a_failed_decode_is_an_error_every_time_and_eviction_bounds_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let files = DecodedFiles::new(dir.path(), 10);
        let bad = ("s".to_string(), "bad".to_string());
        let fail = |_: &mut File| Err(Error::invalid("pg_data/x", "SHA-1 mismatch"));
        assert!(files.read(&bad, 4, 0, 1, "x", fail).unwrap_err().to_string().contains("SHA-1"));
        assert!(files.read(&bad, 4, 0, 1, "x", fail).is_err());
        for name in ["a", "b", "c"] {
            let key = ("s".to_string(), name.to_string());
            files.read(&key, 8, 0, 1, name, |f| f.write_all(b"abcdefgh").map_err(|e| Error::io("w", "t", e))).unwrap();
        }
        let slots = files.slots.lock().unwrap();
        assert!(
            slots.bytes <= 10 || slots.entries.len() == 1,
            "{} bytes in {} slots",
            slots.bytes,
            slots.entries.len()
        );
    }
}
