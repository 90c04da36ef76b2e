//! Reading runs back: fetch the stored bytes from the set's pack, decode, check the plaintext
//! checksum. Errors name the set, the file and the pack.

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::repo::codec::Codec;
use crate::repo::label::SetLabel;
use crate::repo::manifest::{MAX_RUN, Manifest, RunRef, WalEntry};
use crate::repo::pack::run_aad;
use crate::repo::storage::Storage;

/// Largest WAL segment accepted (1 GiB, PostgreSQL's maximum).
pub const MAX_SEGMENT: usize = 1 << 30;

/// Reads runs (and the WAL segments sets carry) of one stanza.
pub struct RunReader<'a> {
    storage: &'a dyn Storage,
    codec: &'a Codec,
    stanza: &'a str,
}

impl<'a> RunReader<'a> {
    /// A reader over `stanza`'s sets.
    pub fn new(storage: &'a dyn Storage, codec: &'a Codec, stanza: &'a str) -> RunReader<'a> {
        RunReader { storage, codec, stanza }
    }

    /// The local pack file holding `run` as plaintext, when the repository stores runs unencoded in a
    /// local directory: such runs can be cloned (FICLONERANGE) instead of read and written.
    pub fn plain_pack_path(&self, run: &RunRef) -> Option<std::path::PathBuf> {
        if !self.codec.is_plain() {
            return None;
        }
        self.storage.local_path(&Manifest::pack_key(self.stanza, &run.set, run.pack))
    }

    /// A WAL segment stored in `set`, verified against its manifest entry.
    pub fn read_wal(&self, set: &SetLabel, entry: &WalEntry) -> Result<Vec<u8>> {
        let key = Manifest::wal_key(self.stanza, set, &entry.name);
        let what = format!("backup {set}, WAL segment {}", entry.name);
        let stored = self.storage.get(&key)?.ok_or_else(|| Error::invalid(&what, "missing from the repository"))?;
        let bytes = self.codec.decode(key.as_bytes(), &stored, MAX_SEGMENT, &what)?;
        if bytes.len() as u64 != entry.size || xxh3_64(&bytes) != entry.sum {
            return Err(Error::invalid(what, "checksum mismatch"));
        }
        Ok(bytes)
    }

    /// The whole plaintext of `run`, verified; `file` names the file for errors.
    pub fn read(&self, run: &RunRef, file: &str) -> Result<Vec<u8>> {
        let what = format!("backup {}, file {file}, pack {} at {}", run.set, run.pack, run.at);
        let key = Manifest::pack_key(self.stanza, &run.set, run.pack);
        let stored = self
            .storage
            .get_range(&key, run.at, u64::from(run.stored))
            .map_err(|e| Error::invalid(&what, e.to_string()))?;
        let aad = run_aad(&run.set, run.pack, run.at);
        let plain = self.codec.decode(aad.as_bytes(), &stored, MAX_RUN.max(run.run_len as usize), &what)?;
        if plain.len() != run.run_len as usize || xxh3_64(&plain) != run.run_sum {
            return Err(Error::invalid(what, "checksum mismatch: the stored run is corrupt"));
        }
        Ok(plain)
    }
}
