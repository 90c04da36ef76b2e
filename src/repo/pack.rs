//! Writing a set's runs into packs: each worker thread fills its own pack buffer with encoded runs
//! and puts it as one object when it reaches the target size, so memory stays bounded by
//! threads × target whatever the cluster's size or file count.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_64;

use crate::error::Result;
use crate::repo::handle::Repo;
use crate::repo::label::SetLabel;
use crate::repo::manifest::RunRef;

/// Size at which a pack buffer is put.
const PACK_TARGET: usize = 8 * 1024 * 1024;
/// Alignment of runs in unencoded packs, so restores can clone them.
const PLAIN_ALIGN: usize = 4096;

struct PackBuf {
    id: u32,
    data: Vec<u8>,
}

/// Where a backup's runs go.
pub struct PackSink<'a> {
    repo: &'a Repo,
    label: SetLabel,
    next_id: AtomicU32,
    slots: Vec<Mutex<Option<PackBuf>>>,
    stored_bytes: AtomicU64,
}

impl<'a> PackSink<'a> {
    /// A sink for the set `label` of `repo`'s stanza.
    pub fn new(repo: &'a Repo, label: &SetLabel) -> PackSink<'a> {
        let slots = (0..rayon::current_num_threads() + 1).map(|_| Mutex::new(None)).collect();
        PackSink { repo, label: label.clone(), next_id: AtomicU32::new(1), slots, stored_bytes: AtomicU64::new(0) }
    }

    /// Encodes and stores one run; returns where it went.
    pub fn write_run(&self, plaintext: &[u8]) -> Result<RunRef> {
        let slot = rayon::current_thread_index().map(|i| i + 1).unwrap_or(0) % self.slots.len();
        let mut guard = self.slots[slot].lock().expect("pack slot lock");
        let buf = guard.get_or_insert_with(|| PackBuf {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            data: Vec::with_capacity(PACK_TARGET + 256 * 1024),
        });
        if self.repo.codec().is_plain() {
            let padded = buf.data.len().next_multiple_of(PLAIN_ALIGN);
            buf.data.resize(padded, 0);
        }
        let at = buf.data.len() as u64;
        let aad = run_aad(&self.label, buf.id, at);
        let stored = self.repo.codec().encode(aad.as_bytes(), plaintext);
        buf.data.extend_from_slice(&stored);
        let run = RunRef {
            set: self.label.clone(),
            pack: buf.id,
            at,
            stored: stored.len() as u32,
            run_len: plaintext.len() as u32,
            run_sum: xxh3_64(plaintext),
            skip: 0,
        };
        if buf.data.len() >= PACK_TARGET {
            let full = guard.take().expect("buffer present");
            drop(guard);
            self.put(full)?;
        }
        Ok(run)
    }

    /// Puts every partly filled pack.
    pub fn finish(&self) -> Result<()> {
        for slot in &self.slots {
            let taken = slot.lock().expect("pack slot lock").take();
            if let Some(buf) = taken {
                self.put(buf)?;
            }
        }
        Ok(())
    }

    /// Bytes put so far.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    fn put(&self, buf: PackBuf) -> Result<()> {
        self.stored_bytes.fetch_add(buf.data.len() as u64, Ordering::Relaxed);
        self.repo.storage().put(&self.repo.layout().pack(&self.label, buf.id), &buf.data)
    }
}

/// The associated data that binds a sealed run to its place: set, pack, offset.
pub fn run_aad(label: &SetLabel, pack: u32, at: u64) -> String {
    format!("{label}/pack/{pack}/{at}")
}
