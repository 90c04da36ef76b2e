//! Writing a set's runs into packs: each worker thread fills its own pack buffer with encoded runs
//! and puts it as one object when it reaches the target size, so memory stays bounded by
//! threads × target whatever the cluster's size or file count. Into an object store the full
//! packs go to a few uploader threads through a short queue, so scanning goes on while a pack
//! travels (the queue bounds the memory; a full queue makes the scanners wait).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::repo::handle::Repo;
use crate::repo::label::SetLabel;
use crate::repo::manifest::RunRef;

/// Size at which a pack buffer is put.
const PACK_TARGET: usize = 8 * 1024 * 1024;
/// Alignment of runs in unencoded packs, so restores can clone them.
const PLAIN_ALIGN: usize = 4096;
/// Packs uploaded at once into an object store, and queued for upload.
const UPLOADERS: usize = 4;

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
    uploads: Option<Uploads>,
}

/// A pack to upload: its key and bytes.
type Upload = (String, Vec<u8>);

/// Uploader threads of an object store and the first error one met.
struct Uploads {
    queue: Mutex<Option<SyncSender<Upload>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    failed: Arc<Mutex<Option<Error>>>,
}

impl Uploads {
    fn start(storage: Arc<dyn crate::repo::storage::Storage>) -> Uploads {
        let (queue, receiver) = sync_channel::<Upload>(UPLOADERS);
        let receiver = Arc::new(Mutex::new(receiver));
        let failed: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let threads = (0..UPLOADERS)
            .map(|_| {
                let (receiver, storage, failed) = (Arc::clone(&receiver), Arc::clone(&storage), Arc::clone(&failed));
                std::thread::spawn(move || {
                    loop {
                        let next = receiver.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((key, data)) = next else { return };
                        if let Err(e) = storage.put(&key, &data) {
                            failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        }
                    }
                })
            })
            .collect();
        Uploads { queue: Mutex::new(Some(queue)), threads: Mutex::new(threads), failed }
    }

    /// An error when an upload failed: the backup stops at the next pack.
    fn check(&self) -> Result<()> {
        match self.failed.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(e) => Err(Error::invalid("pack upload", e.to_string())),
            None => Ok(()),
        }
    }

    fn send(&self, key: String, data: Vec<u8>) -> Result<()> {
        self.check()?;
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match queue {
            Some(queue) => queue.send((key, data)).map_err(|_| Error::invalid("pack upload", "the uploaders stopped")),
            None => Err(Error::invalid("pack upload", "the set's packs were already finished")),
        }
    }

    /// Waits for every queued upload; the first error, if any.
    fn finish(&self) -> Result<()> {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        for thread in self.threads.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = thread.join();
        }
        match self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<'a> PackSink<'a> {
    /// A sink for the set `label` of `repo`'s stanza.
    pub fn new(repo: &'a Repo, label: &SetLabel) -> PackSink<'a> {
        let slots = (0..rayon::current_num_threads() + 1).map(|_| Mutex::new(None)).collect();
        let remote = repo.storage().local_path(&repo.layout().record()).is_none();
        PackSink {
            repo,
            label: label.clone(),
            next_id: AtomicU32::new(1),
            slots,
            stored_bytes: AtomicU64::new(0),
            uploads: remote.then(|| Uploads::start(repo.storage_arc())),
        }
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
        match &self.uploads {
            Some(uploads) => uploads.finish(),
            None => Ok(()),
        }
    }

    /// Bytes put so far.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    fn put(&self, buf: PackBuf) -> Result<()> {
        self.stored_bytes.fetch_add(buf.data.len() as u64, Ordering::Relaxed);
        let key = self.repo.layout().pack(&self.label, buf.id);
        match &self.uploads {
            Some(uploads) => uploads.send(key, buf.data),
            None => self.repo.storage().put(&key, &buf.data),
        }
    }
}

/// The associated data that binds a sealed run to its place: set, pack, offset.
pub fn run_aad(label: &SetLabel, pack: u32, at: u64) -> String {
    format!("{label}/pack/{pack}/{at}")
}
