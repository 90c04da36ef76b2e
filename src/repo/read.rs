//! Reading runs back: fetch the stored bytes from the set's pack, decode, check the plaintext
//! checksum. Errors name the set, the file and the pack.

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::repo::handle::Repo;
use crate::repo::label::SetLabel;
use crate::repo::manifest::{MAX_RUN, RunRef, WalEntry};
use crate::repo::object::Kind;
use crate::repo::pack::run_aad;

/// Largest WAL segment accepted (1 GiB, PostgreSQL's maximum).
pub const MAX_SEGMENT: usize = 1 << 30;

/// Reads runs (and the WAL segments sets carry) of one stanza.
pub struct RunReader<'a> {
    repo: &'a Repo,
}

impl<'a> RunReader<'a> {
    /// A reader over `repo`'s sets.
    pub fn new(repo: &'a Repo) -> RunReader<'a> {
        RunReader { repo }
    }

    /// The local pack file holding `run` as plaintext, when the repository stores runs unencoded in a
    /// local directory: such runs can be cloned (FICLONERANGE) instead of read and written.
    pub fn plain_pack_path(&self, run: &RunRef) -> Option<std::path::PathBuf> {
        if !self.repo.codec().is_plain() {
            return None;
        }
        self.repo.storage().local_path(&self.repo.layout().pack(&run.set, run.pack))
    }

    /// A WAL segment stored in `set`, verified against its manifest entry.
    pub fn read_wal(&self, set: &SetLabel, entry: &WalEntry) -> Result<Vec<u8>> {
        let key = self.repo.layout().set_wal(set, &entry.name);
        let what = format!("backup {set}, WAL segment {}", entry.name);
        let bytes = self
            .repo
            .get_object(Kind::Wal, &key, MAX_SEGMENT, &what)?
            .ok_or_else(|| Error::invalid(&what, "missing from the repository"))?;
        if self.repo.record().is_foreign() {
            check_wal_size(&bytes, entry, &what)?;
        } else {
            check_wal(&bytes, entry, &what)?;
        }
        Ok(bytes)
    }

    /// The whole plaintext of `run`, verified; `file` names the file for errors.
    pub fn read(&self, run: &RunRef, file: &str) -> Result<Vec<u8>> {
        let key = self.repo.layout().pack(&run.set, run.pack);
        let stored = self
            .repo
            .storage()
            .get_range(&key, run.at, u64::from(run.stored))
            .map_err(|e| Error::invalid(run_what(run, file), e.to_string()))?;
        self.decode(run, &stored, file)
    }

    /// Whether `run` lives in a remote store, where a request costs a round trip.
    pub fn is_remote(&self, run: &RunRef) -> bool {
        self.repo.storage().local_path(&self.repo.layout().pack(&run.set, run.pack)).is_none()
    }

    /// The stored (still encoded) bytes of several runs of one pack, fetched together; decode each
    /// with [`RunReader::decode`].
    pub fn fetch_stored(&self, runs: &[&RunRef], file: &str) -> Result<Vec<Vec<u8>>> {
        let Some(first) = runs.first() else { return Ok(Vec::new()) };
        let key = self.repo.layout().pack(&first.set, first.pack);
        let ranges: Vec<(u64, u64)> = runs.iter().map(|r| (r.at, u64::from(r.stored))).collect();
        self.repo.storage().get_ranges(&key, &ranges).map_err(|e| Error::invalid(run_what(first, file), e.to_string()))
    }

    /// The plaintexts of several runs of one pack, fetched together (a store may coalesce
    /// neighbouring ranges into one request); each decoded and checked on its own.
    pub fn read_many(&self, runs: &[RunRef], file: &str) -> Result<Vec<Result<Vec<u8>>>> {
        let stored = self.fetch_stored(&runs.iter().collect::<Vec<_>>(), file)?;
        Ok(runs.iter().zip(stored).map(|(run, bytes)| self.decode(run, &bytes, file)).collect())
    }

    /// Decodes and checks the stored bytes of `run` (read by the caller, e.g. from a whole pack).
    pub fn decode(&self, run: &RunRef, stored: &[u8], file: &str) -> Result<Vec<u8>> {
        let what = run_what(run, file);
        let aad = run_aad(&run.set, run.pack, run.at);
        let plain = self.repo.codec().decode(aad.as_bytes(), stored, MAX_RUN.max(run.run_len as usize), &what)?;
        let sum_differs = !self.repo.record().is_foreign() && xxh3_64(&plain) != run.run_sum;
        if plain.len() != run.run_len as usize || sum_differs {
            return Err(Error::invalid(what, "checksum mismatch: the stored run is corrupt"));
        }
        Ok(plain)
    }
}

/// How errors name a run.
fn run_what(run: &RunRef, file: &str) -> String {
    format!("backup {}, file {file}, pack {} at {}", run.set, run.pack, run.at)
}

/// Checks the size of a foreign set's WAL segment (its content was checked by the foreign format).
pub fn check_wal_size(bytes: &[u8], entry: &WalEntry, what: &str) -> Result<()> {
    if bytes.len() as u64 != entry.size {
        return Err(Error::invalid(what, format!("{} bytes, expected {}", bytes.len(), entry.size)));
    }
    Ok(())
}

/// Checks a set's WAL segment against its manifest entry.
pub fn check_wal(bytes: &[u8], entry: &WalEntry, what: &str) -> Result<()> {
    if bytes.len() as u64 != entry.size || xxh3_64(bytes) != entry.sum {
        return Err(Error::invalid(what, "checksum mismatch"));
    }
    Ok(())
}
