//! The page scanner: reads one file of the cluster (memory-mapped from a reflink snapshot, or with
//! pread from the live directory), decides page by page what the set must store — pages changed
//! since the prior backup's start LSN, new pages, everything of files copied whole — validates
//! page checksums, and turns the file into extents: zeros, runs written to packs, and references
//! to the prior set's runs.

mod source;

use std::path::Path;

use rayon::prelude::*;

use crate::error::{IoContext, Result};
use crate::pg::layout::parse_relation_file;
use crate::pg::lsn::Lsn;
use crate::pg::page::{BLCKSZ, BLOCKS_PER_SEGMENT, PageCheck, PageHeader, is_all_zero, verify};
use crate::repo::manifest::{BadPage, Extent, FileEntry, MAX_RUN, RunRef};
use crate::repo::pack::PackSink;

pub use source::{FileSource, ReadMode};

/// How to back up one file.
pub struct ScanRequest<'a> {
    /// Path relative to the data directory.
    pub rel_path: &'a str,
    /// The file to read (in the snapshot or the live directory).
    pub file: &'a Path,
    /// mmap (snapshot) or pread (live).
    pub mode: ReadMode,
    /// The prior set's entry for this path, when the file may be taken incrementally.
    pub prior: Option<&'a FileEntry>,
    /// Pages with an LSN at or after this are stored; `None` stores every page.
    pub since: Option<Lsn>,
    /// Validate checksums of pages with an LSN before this (the backup's start); `None` skips.
    pub verify_before: Option<Lsn>,
}

/// What scanning a file produced.
#[derive(Debug)]
pub struct ScannedFile {
    /// The manifest entry.
    pub entry: FileEntry,
    /// Pages examined.
    pub pages_total: u64,
    /// Pages stored.
    pub pages_changed: u64,
    /// Plaintext bytes stored.
    pub stored_plain: u64,
    /// Pages whose checksum failed twice.
    pub bad_pages: Vec<BadPage>,
}

/// Whether a file's pages carry LSNs that can select them (the main fork of a relation).
pub fn selects_by_lsn(rel_path: &str) -> bool {
    let name = rel_path.rsplit('/').next().unwrap_or(rel_path);
    in_relation_dir(rel_path) && parse_relation_file(name).is_some_and(|r| r.fork.is_none())
}

/// Whether a file is a relation fork with page checksums.
pub fn has_page_checksums(rel_path: &str) -> bool {
    let name = rel_path.rsplit('/').next().unwrap_or(rel_path);
    in_relation_dir(rel_path) && parse_relation_file(name).is_some()
}

fn in_relation_dir(rel_path: &str) -> bool {
    rel_path.starts_with("base/") || rel_path.starts_with("global/") || rel_path.starts_with("pg_tblspc/")
}

/// Pages to store, gathered until they fill a run. They need not be contiguous in the file: a run
/// packs up to 16 changed pages of one file, compressed together, and each page's extent points
/// at its slice of the run.
struct Pending {
    data: Vec<u8>,
    /// Indexes of the placeholder extents waiting for this run, with their offset in it.
    slots: Vec<(usize, u32)>,
}

impl Pending {
    fn add(&mut self, extents: &mut Vec<Extent>, offset: u64, bytes: &[u8]) {
        self.slots.push((extents.len(), self.data.len() as u32));
        extents.push(Extent { offset, len: bytes.len() as u64, run: None });
        self.data.extend_from_slice(bytes);
    }

    fn flush(&mut self, extents: &mut [Extent], stored: &mut u64, sink: &PackSink<'_>) -> Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        let run = sink.write_run(&self.data)?;
        for (index, skip) in self.slots.drain(..) {
            extents[index].run = Some(RunRef { skip, ..run.clone() });
        }
        *stored += self.data.len() as u64;
        self.data.clear();
        Ok(())
    }
}

/// Files are scanned in slices of this size in parallel, so one large relation does not keep a
/// single core busy while the others idle.
const SLICE: u64 = 64 * 1024 * 1024;

/// Scans one file; `Ok(None)` when it vanished (a relation dropped during the backup).
pub fn scan_file(req: &ScanRequest<'_>, sink: &PackSink<'_>) -> Result<Option<ScannedFile>> {
    let Some(source) = FileSource::open(req.file, req.mode)? else { return Ok(None) };
    let size = source.len();
    let mode = source.mode();
    drop(source);
    let slices: Vec<(u64, u64)> =
        (0..size.div_ceil(SLICE).max(1)).map(|i| (i * SLICE, ((i + 1) * SLICE).min(size))).collect();
    let parts: Vec<Slice> = if slices.len() == 1 {
        vec![scan_slice(req, size, slices[0], sink)?]
    } else {
        slices.par_iter().map(|&range| scan_slice(req, size, range, sink)).collect::<Result<_>>()?
    };
    let mut out = ScannedFile {
        entry: FileEntry { path: req.rel_path.to_string(), size: 0, mode, extents: Vec::new() },
        pages_total: 0,
        pages_changed: 0,
        stored_plain: 0,
        bad_pages: Vec::new(),
    };
    for (part, (_, end)) in parts.into_iter().zip(slices) {
        for extent in part.extents {
            push(&mut out.entry.extents, extent);
        }
        out.pages_total += part.pages_total;
        out.pages_changed += part.pages_changed;
        out.stored_plain += part.stored_plain;
        out.bad_pages.extend(part.bad_pages);
        out.entry.size = part.reached;
        if part.reached < end {
            break; // the live file shrank: what follows is PostgreSQL's to replay
        }
    }
    Ok(Some(out))
}

/// What scanning one slice of a file produced.
struct Slice {
    extents: Vec<Extent>,
    pages_total: u64,
    pages_changed: u64,
    stored_plain: u64,
    bad_pages: Vec<BadPage>,
    /// Where reading stopped (the slice's end unless the file shrank).
    reached: u64,
}

/// Scans `[start, end)` of a file of `size` bytes (as first seen).
fn scan_slice(req: &ScanRequest<'_>, size: u64, (start, end): (u64, u64), sink: &PackSink<'_>) -> Result<Slice> {
    let mut out = Slice {
        extents: Vec::new(),
        pages_total: 0,
        pages_changed: 0,
        stored_plain: 0,
        bad_pages: Vec::new(),
        reached: start,
    };
    let Some(source) = FileSource::open(req.file, req.mode)? else { return Ok(out) };
    let paged = size.is_multiple_of(BLCKSZ as u64) && has_page_checksums(req.rel_path);
    let by_lsn = paged && req.since.is_some() && req.prior.is_some() && selects_by_lsn(req.rel_path);
    let segment = req.rel_path.rsplit('/').next().and_then(parse_relation_file).map(|r| r.segment).unwrap_or(0);
    // One extent per page or chunk while scanning; merged by the caller.
    let mut pending = Pending { data: Vec::with_capacity(MAX_RUN), slots: Vec::new() };
    let unit = if paged { BLCKSZ } else { MAX_RUN };
    let mut chunk = vec![0u8; MAX_RUN];
    let mut offset = start;
    'slice: while offset < end {
        let want = (MAX_RUN as u64).min(end - offset) as usize;
        let got = source.read_at(&mut chunk[..want], offset).at("read", req.file)?;
        if got == 0 {
            break; // the live file shrank
        }
        for data in chunk[..got].chunks(unit) {
            if paged && data.len() < BLCKSZ {
                break 'slice; // a live file shrank mid-page
            }
            out.pages_total += u64::from(paged);
            if is_all_zero(data) {
                out.extents.push(Extent { offset, len: data.len() as u64, run: None });
                offset += data.len() as u64;
                continue;
            }
            let take = match paged.then(|| PageHeader::parse(data)).flatten() {
                Some(h) if by_lsn => h.is_new() || h.lsn.0 == 0 || h.lsn >= req.since.expect("by_lsn"),
                _ => true,
            };
            // A page kept from the prior set needs the prior extent holding it; look it up only then.
            match (!take).then(|| req.prior.and_then(|p| p.extent_at(offset))).flatten() {
                Some(prior) => push_from_prior(&mut out.extents, prior, offset, data.len() as u64),
                None => {
                    let reread;
                    let mut bytes = data;
                    if paged {
                        out.pages_changed += 1;
                        let block = segment * BLOCKS_PER_SEGMENT + (offset / BLCKSZ as u64) as u32;
                        reread = validated_page(req, &source, data, offset, block, &mut out.bad_pages)?;
                        if let Some(page) = &reread {
                            bytes = page;
                        }
                    }
                    pending.add(&mut out.extents, offset, bytes);
                    if pending.data.len() + unit > MAX_RUN {
                        pending.flush(&mut out.extents, &mut out.stored_plain, sink)?;
                    }
                }
            }
            offset += data.len() as u64;
        }
    }
    pending.flush(&mut out.extents, &mut out.stored_plain, sink)?;
    out.reached = offset;
    Ok(out)
}

/// Checks the page's checksum when asked; a failure is re-read once (a torn read of a live file)
/// and recorded if it persists. Returns the re-read page when it replaced `data`.
fn validated_page(
    req: &ScanRequest<'_>,
    source: &FileSource,
    data: &[u8],
    offset: u64,
    block: u32,
    bad: &mut Vec<BadPage>,
) -> Result<Option<Vec<u8>>> {
    let Some(limit) = req.verify_before else { return Ok(None) };
    let page: &[u8; BLCKSZ] = data.try_into().expect("a full page");
    let header = PageHeader::parse(page).expect("a full page");
    if header.lsn >= limit {
        return Ok(None);
    }
    let PageCheck::Mismatch { .. } = verify(page, block) else { return Ok(None) };
    let mut again = vec![0u8; BLCKSZ];
    let got = source.read_at(&mut again, offset).at("re-read", req.file)?;
    if got < BLCKSZ {
        return Ok(None); // truncated meanwhile: WAL replay owns this page now
    }
    let reread: &[u8; BLCKSZ] = again.as_slice().try_into().expect("a full page");
    match verify(reread, block) {
        PageCheck::Mismatch { stored, computed } => {
            let lsn = PageHeader::parse(reread).expect("a full page").lsn;
            if lsn < limit {
                bad.push(BadPage { path: req.rel_path.to_string(), block, stored, computed });
            }
            Ok(Some(again))
        }
        _ => Ok(Some(again)),
    }
}

/// Appends an extent, merging it into the last one when it continues it.
fn push(extents: &mut Vec<Extent>, next: Extent) {
    match extents.last_mut() {
        Some(last) if last.continued_by(&next) => last.len += next.len,
        _ => extents.push(next),
    }
}

/// Appends the part `[offset, offset + len)` of a prior extent covering it, growing the last
/// extent when it continues the same prior run: an unchanged page costs no copy of the run
/// reference. (Extents without a run are left alone here: a page waiting to be stored has none
/// yet, and zeros must not merge into it.)
fn push_from_prior(extents: &mut Vec<Extent>, prior: &Extent, offset: u64, len: u64) {
    let delta = offset - prior.offset;
    if let Some(run) = &prior.run
        && let Some(last) = extents.last_mut()
        && last.continues_at(offset, Some((run, run.skip + delta as u32)))
    {
        last.len += len.min(prior.len - delta);
        return;
    }
    extents.push(slice_of(prior, offset, len));
}

/// The part `[offset, offset + len)` of a prior extent covering it.
fn slice_of(prior: &Extent, offset: u64, len: u64) -> Extent {
    let delta = offset - prior.offset;
    let len = len.min(prior.len - delta);
    let run = prior.run.clone().map(|mut r| {
        r.skip += delta as u32;
        r
    });
    Extent { offset, len, run }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_pages_grow_the_prior_extent_but_never_a_page_waiting_to_be_stored() {
        let run = RunRef {
            set: "20250101-000000F".parse().unwrap(),
            pack: 1,
            at: 0,
            stored: 10,
            run_len: 16 * 8192,
            run_sum: 1,
            skip: 0,
        };
        let prior = Extent { offset: 0, len: 16 * 8192, run: Some(run) };
        let mut extents = Vec::new();
        push_from_prior(&mut extents, &prior, 0, 8192);
        push_from_prior(&mut extents, &prior, 8192, 8192);
        assert_eq!(extents.len(), 1);
        assert_eq!(extents[0].len, 2 * 8192);
        // A changed page (no run until its pack is written), then unchanged ones after it.
        extents.push(Extent { offset: 2 * 8192, len: 8192, run: None });
        push_from_prior(&mut extents, &prior, 3 * 8192, 8192);
        assert_eq!(extents.len(), 3);
        assert_eq!(extents[2].run.as_ref().unwrap().skip, 3 * 8192);
        // Zeros in the prior set are not merged into the waiting page either.
        push_from_prior(&mut extents, &Extent { offset: 4 * 8192, len: 8192, run: None }, 4 * 8192, 8192);
        extents.push(Extent { offset: 5 * 8192, len: 8192, run: None });
        push_from_prior(&mut extents, &Extent { offset: 6 * 8192, len: 8192, run: None }, 6 * 8192, 8192);
        assert_eq!(extents.len(), 6);
    }

    #[test]
    fn lsn_selection_applies_to_main_forks_only() {
        assert!(selects_by_lsn("base/5/16384"));
        assert!(selects_by_lsn("base/5/16384.2"));
        assert!(selects_by_lsn("pg_tblspc/16400/PG_18_1/5/16384"));
        assert!(!selects_by_lsn("base/5/16384_vm"));
        assert!(!selects_by_lsn("base/5/16384_fsm"));
        assert!(!selects_by_lsn("base/5/16384_init"));
        assert!(!selects_by_lsn("pg_xact/0000"));
        assert!(!selects_by_lsn("base/5/pg_filenode.map"));
        assert!(has_page_checksums("base/5/16384_vm"));
        assert!(!has_page_checksums("global/pg_control"));
    }
}
