//! Writing a set's files: each file created at its final size, then its extents written in slices
//! of about 32 MiB on several threads — cloned from an unencoded local repository where the file
//! system allows, skipped where a live cluster shows the page unchanged, compared first with a
//! delta — and flushed as soon as its last slice is written. From an object store, the runs a
//! slice needs are fetched together first (neighbouring ranges of a pack coalesce into one request,
//! several in flight): one request per run would spend the restore waiting on round trips.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::cow::fs_kind::is_clone_unsupported;
use crate::error::{Error, IoContext, Result};
use crate::pg::lsn::Lsn;
use crate::pg::page::{BLCKSZ, PageHeader, is_all_zero};
use crate::repo::manifest::{Extent, FileEntry, RunRef};
use crate::repo::read::RunReader;
use crate::scan::selects_by_lsn;
use crate::util::fsx;

/// Bytes of extents restored as one unit of parallel work.
pub const SLICE: u64 = 32 * 1024 * 1024;

/// Splits a file's extents into runs of about `slice` bytes.
pub fn slices_of(entry: &FileEntry, slice: u64) -> Vec<&[Extent]> {
    let mut slices = Vec::new();
    let (mut begin, mut bytes) = (0, 0);
    for (i, extent) in entry.extents.iter().enumerate() {
        bytes += extent.len;
        if bytes >= slice {
            slices.push(&entry.extents[begin..=i]);
            (begin, bytes) = (i + 1, 0);
        }
    }
    if begin < entry.extents.len() || slices.is_empty() {
        slices.push(&entry.extents[begin..]);
    }
    slices
}

/// Creates (or, with delta, keeps) the file, and gives it its final size and mode.
pub fn prepare_file(target: &Path, entry: &FileEntry, delta: bool) -> Result<()> {
    let path = target.join(&entry.path);
    let keep = delta && path.is_file();
    let file =
        OpenOptions::new().write(true).create(true).truncate(!keep).mode(entry.mode).open(&path).at("create", &path)?;
    file.set_len(entry.size).at("size", &path)?;
    file.set_permissions(std::fs::Permissions::from_mode(entry.mode)).at("chmod", &path)
}

/// With a delta restore onto a fork of a live cluster: the live data directory, whose pages with an
/// LSN older than the set's start are unchanged since the set and so already right in the fork.
#[derive(Clone, Copy)]
pub struct LiveHint<'a> {
    /// The live data directory.
    pub dir: &'a Path,
    /// The set's start LSN.
    pub since: Lsn,
}

/// Bytes a restore wrote, found right, and cloned; summed over threads.
#[derive(Debug, Default)]
pub struct Counts {
    /// Bytes written.
    pub written: AtomicU64,
    /// Bytes already right (delta, or unchanged in the live cluster).
    pub unchanged: AtomicU64,
    /// Bytes cloned from the repository (FICLONERANGE).
    pub cloned: AtomicU64,
}

/// Writes slices of files of one set into one directory.
pub struct FileWriter<'a> {
    /// The data directory.
    pub target: &'a Path,
    /// Reads runs from the repository.
    pub reader: RunReader<'a>,
    /// Compare with what is there and rewrite only what differs.
    pub delta: bool,
    /// Pages unchanged in this live cluster need no work.
    pub live: Option<LiveHint<'a>>,
    /// Clone aligned extents of an unencoded local repository while this stays true (the first
    /// refusal of the file system turns it off); `None` never clones.
    pub clone: Option<&'a AtomicBool>,
    /// What was done.
    pub counts: &'a Counts,
}

/// A run's place: its set, pack and offset.
type RunKey = (crate::repo::label::SetLabel, u32, u64);

fn run_key(run: &RunRef) -> RunKey {
    (run.set.clone(), run.pack, run.at)
}

/// One file being written by one thread: its handle, the live copy, the last run decoded, the
/// stored bytes of the runs fetched ahead, and the pack file last cloned from.
struct Open<'a> {
    entry: &'a FileEntry,
    path: PathBuf,
    file: File,
    live: Option<(LiveHint<'a>, File)>,
    run: Option<(RunRef, Vec<u8>)>,
    fetched: HashMap<RunKey, Vec<u8>>,
    pack: Option<(PathBuf, File)>,
    scratch: Vec<u8>,
}

impl FileWriter<'_> {
    /// Writes `extents` of `entry` (already at its final size).
    pub fn write(&self, entry: &FileEntry, extents: &[Extent]) -> Result<()> {
        let path = self.target.join(&entry.path);
        let file = OpenOptions::new().read(true).write(true).open(&path).at("open", &path)?;
        // Only main forks carry LSNs that tell a page is unchanged.
        let live = self
            .live
            .filter(|_| self.delta && selects_by_lsn(&entry.path))
            .and_then(|hint| File::open(hint.dir.join(&entry.path)).ok().map(|f| (hint, f)));
        let mut open =
            Open { entry, path, file, live, run: None, fetched: HashMap::new(), pack: None, scratch: Vec::new() };
        let mut todo = Vec::with_capacity(extents.len());
        for extent in extents {
            if self.try_clone(&mut open, extent)? {
                self.counts.cloned.fetch_add(extent.len, Ordering::Relaxed);
                continue;
            }
            let len = usize::try_from(extent.len).map_err(|_| Error::invalid(&open.entry.path, "extent too large"))?;
            let stale = self.stale_pages(&mut open, extent, len)?;
            if stale.as_ref().is_some_and(|flags| !flags.contains(&true)) {
                self.counts.unchanged.fetch_add(extent.len, Ordering::Relaxed);
                continue;
            }
            todo.push((extent, len, stale));
        }
        self.fetch_ahead(&mut open, todo.iter().filter_map(|(extent, _, _)| extent.run.as_ref()))?;
        for (extent, len, stale) in todo {
            self.write_extent(&mut open, extent, len, stale)?;
        }
        Ok(())
    }

    /// From a remote repository: fetches the stored bytes of every run in `runs` at once, a
    /// request per pack (the store coalesces neighbouring ranges and fetches several at a time).
    /// A local repository reads each run when it is needed.
    fn fetch_ahead<'r>(&self, open: &mut Open<'_>, runs: impl Iterator<Item = &'r RunRef>) -> Result<()> {
        let mut by_pack: Vec<Vec<&RunRef>> = Vec::new();
        for run in runs {
            if !self.reader.is_remote(run) || open.fetched.contains_key(&run_key(run)) {
                continue;
            }
            open.fetched.insert(run_key(run), Vec::new());
            match by_pack.iter_mut().find(|group| group[0].set == run.set && group[0].pack == run.pack) {
                Some(group) => group.push(run),
                None => by_pack.push(vec![run]),
            }
        }
        for group in by_pack {
            let stored = self.reader.fetch_stored(&group, &open.entry.path)?;
            for (run, bytes) in group.into_iter().zip(stored) {
                open.fetched.insert(run_key(run), bytes);
            }
        }
        Ok(())
    }

    /// Clones `extent` from its plain pack when it can; `Ok(false)` when it must be copied.
    fn try_clone(&self, open: &mut Open<'_>, extent: &Extent) -> Result<bool> {
        let (Some(flag), Some(run)) = (self.clone, &extent.run) else { return Ok(false) };
        if !flag.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let Some(pack_path) = self.reader.plain_pack_path(run) else { return Ok(false) };
        let from = run.at + u64::from(run.skip);
        let Some(length) = std::num::NonZeroU64::new(extent.len) else { return Ok(false) };
        if !extent.offset.is_multiple_of(4096) || !extent.len.is_multiple_of(4096) || !from.is_multiple_of(4096) {
            return Ok(false);
        }
        if open.pack.as_ref().is_none_or(|(p, _)| *p != pack_path) {
            let file = File::open(&pack_path).at("open", &pack_path)?;
            open.pack = Some((pack_path, file));
        }
        let Some((_, pack)) = &open.pack else { return Ok(false) };
        match reflink_copy::ReflinkBlockBuilder::new(pack, &open.file, length)
            .from_offset(from)
            .to_offset(extent.offset)
            .reflink_block()
        {
            Ok(()) => Ok(true),
            Err(e) if is_clone_unsupported(&e) => {
                flag.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(Error::io("clone into", &open.path, e)),
        }
    }

    /// Writes one extent: skipping pages the live cluster shows unchanged, and with delta what is
    /// already right.
    fn write_extent(&self, open: &mut Open<'_>, extent: &Extent, len: usize, stale: Option<Vec<bool>>) -> Result<()> {
        let wanted = match &extent.run {
            // A hole in a new file reads as zeros.
            None if !self.delta => return Ok(()),
            None => vec![0u8; len],
            Some(run) => self.run_bytes(open, run, len)?,
        };
        if let Some(flags) = stale {
            for (i, page) in wanted.chunks(BLCKSZ).enumerate() {
                let counter = if flags.get(i).copied().unwrap_or(true) {
                    open.file.write_all_at(page, extent.offset + (i * BLCKSZ) as u64).at("write", &open.path)?;
                    &self.counts.written
                } else {
                    &self.counts.unchanged
                };
                counter.fetch_add(page.len() as u64, Ordering::Relaxed);
            }
            return Ok(());
        }
        if self.delta {
            open.scratch.resize(len, 0);
            let got = fsx::read_fully_at(&open.file, &mut open.scratch, extent.offset).at("read", &open.path)?;
            if got == len && open.scratch == wanted {
                self.counts.unchanged.fetch_add(extent.len, Ordering::Relaxed);
                return Ok(());
            }
        }
        open.file.write_all_at(&wanted, extent.offset).at("write", &open.path)?;
        self.counts.written.fetch_add(extent.len, Ordering::Relaxed);
        Ok(())
    }

    /// With a live cluster: per page of the extent, whether it changed there since the set began
    /// (and so must be written); `None` without one.
    fn stale_pages(&self, open: &mut Open<'_>, extent: &Extent, len: usize) -> Result<Option<Vec<bool>>> {
        let Some((hint, live_file)) = &open.live else { return Ok(None) };
        open.scratch.resize(len, 0);
        let got = fsx::read_fully_at(live_file, &mut open.scratch, extent.offset)
            .at("read", hint.dir.join(&open.entry.path))?;
        let flags = open
            .scratch
            .chunks(BLCKSZ)
            .enumerate()
            .map(|(i, page)| {
                let whole = (i + 1) * BLCKSZ <= got;
                let unchanged = whole
                    && !is_all_zero(page)
                    && PageHeader::parse(page).is_some_and(|h| !h.is_new() && h.lsn < hint.since);
                !unchanged
            })
            .collect();
        Ok(Some(flags))
    }

    /// The `len` bytes of `run` from its `skip`, decoding the run unless it is the last one.
    fn run_bytes(&self, open: &mut Open<'_>, run: &RunRef, len: usize) -> Result<Vec<u8>> {
        let same = open.run.as_ref().is_some_and(|(r, _)| r.set == run.set && r.pack == run.pack && r.at == run.at);
        if !same {
            let plain = match open.fetched.get(&run_key(run)) {
                Some(stored) if !stored.is_empty() => self.reader.decode(run, stored, &open.entry.path)?,
                _ => self.reader.read(run, &open.entry.path)?,
            };
            open.run = Some((run.clone(), plain));
        }
        let plain = open.run.as_ref().map(|(_, p)| p.as_slice()).unwrap_or_default();
        let skip = run.skip as usize;
        plain.get(skip..skip + len).map(<[u8]>::to_vec).ok_or_else(|| {
            Error::invalid(format!("backup {}, file {}", run.set, open.entry.path), "extent outside its run")
        })
    }
}
