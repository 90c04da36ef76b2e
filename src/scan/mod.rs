//! The page scanner: reads one file of the cluster (memory-mapped from a reflink snapshot, or with
//! pread from the live directory), decides page by page what the set must store — pages changed
//! since the prior backup's start LSN, new pages, everything of files copied whole — validates
//! page checksums, and turns the file into extents: zeros, runs written to packs, and references
//! to the prior set's runs.

mod source;

use std::path::Path;

use crate::error::{IoContext, Result};
use crate::pg::layout::parse_relation_file;
use crate::pg::lsn::Lsn;
use crate::pg::page::{BLCKSZ, BLOCKS_PER_SEGMENT, PageCheck, PageHeader, is_all_zero, verify};
use crate::repo::manifest::{BadPage, Extent, FileEntry, MAX_RUN};
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

/// Scans one file; `Ok(None)` when it vanished (a relation dropped during the backup).
pub fn scan_file(req: &ScanRequest<'_>, sink: &PackSink<'_>) -> Result<Option<ScannedFile>> {
    let Some(source) = FileSource::open(req.file, req.mode)? else { return Ok(None) };
    let size = source.len();
    let paged = size.is_multiple_of(BLCKSZ as u64) && has_page_checksums(req.rel_path);
    let by_lsn = paged && req.since.is_some() && req.prior.is_some() && selects_by_lsn(req.rel_path);
    let segment = req.rel_path.rsplit('/').next().and_then(parse_relation_file).map(|r| r.segment).unwrap_or(0);

    let mut out = ScannedFile {
        entry: FileEntry { path: req.rel_path.to_string(), size, mode: source.mode(), extents: Vec::new() },
        pages_total: 0,
        pages_changed: 0,
        stored_plain: 0,
        bad_pages: Vec::new(),
    };
    let mut pending: Vec<u8> = Vec::with_capacity(MAX_RUN);
    let mut pending_at = 0u64;
    let step = if paged { BLCKSZ as u64 } else { MAX_RUN as u64 };
    let mut offset = 0u64;
    let mut chunk = vec![0u8; step as usize];
    while offset < size {
        let want = step.min(size - offset) as usize;
        let got = source.read_at(&mut chunk[..want], offset).at("read", req.file)?;
        if got == 0 {
            break; // the live file shrank
        }
        let data = &chunk[..got];
        if is_all_zero(data) {
            flush(&mut pending, pending_at, &mut out, sink)?;
            push(&mut out.entry.extents, Extent { offset, len: got as u64, run: None });
        } else if paged {
            out.pages_total += 1;
            let header = PageHeader::parse(data).expect("a full page");
            let take = !by_lsn || header.is_new() || header.lsn.0 == 0 || header.lsn >= req.since.expect("by_lsn");
            let prior_extent = if take { None } else { req.prior.and_then(|p| p.extent_at(offset)) };
            match prior_extent {
                Some(prior) => {
                    flush(&mut pending, pending_at, &mut out, sink)?;
                    push(&mut out.entry.extents, slice_of(prior, offset, got as u64));
                }
                None => {
                    out.pages_changed += 1;
                    let block = segment * BLOCKS_PER_SEGMENT + (offset / BLCKSZ as u64) as u32;
                    let page = validated_page(req, &source, data, offset, block, &mut out.bad_pages)?;
                    if pending.is_empty() {
                        pending_at = offset;
                    }
                    pending.extend_from_slice(&page);
                    if pending.len() >= MAX_RUN {
                        flush(&mut pending, pending_at, &mut out, sink)?;
                    }
                }
            }
        } else {
            flush(&mut pending, pending_at, &mut out, sink)?;
            pending_at = offset;
            pending.extend_from_slice(data);
            flush(&mut pending, pending_at, &mut out, sink)?;
        }
        offset += got as u64;
    }
    flush(&mut pending, pending_at, &mut out, sink)?;
    out.entry.size = offset;
    Ok(Some(out))
}

/// Checks the page's checksum when asked; a failure is re-read once (a torn read of a live file)
/// and recorded if it persists. Returns the page to store (the re-read one when it was re-read).
fn validated_page(
    req: &ScanRequest<'_>,
    source: &FileSource,
    data: &[u8],
    offset: u64,
    block: u32,
    bad: &mut Vec<BadPage>,
) -> Result<Vec<u8>> {
    let Some(limit) = req.verify_before else { return Ok(data.to_vec()) };
    let page: &[u8; BLCKSZ] = data.try_into().expect("a full page");
    let header = PageHeader::parse(page).expect("a full page");
    if header.lsn >= limit {
        return Ok(data.to_vec());
    }
    let PageCheck::Mismatch { .. } = verify(page, block) else { return Ok(data.to_vec()) };
    let mut again = vec![0u8; BLCKSZ];
    let got = source.read_at(&mut again, offset).at("re-read", req.file)?;
    if got == BLCKSZ {
        let reread: &[u8; BLCKSZ] = again.as_slice().try_into().expect("a full page");
        match verify(reread, block) {
            PageCheck::Mismatch { stored, computed } => {
                bad.push(BadPage { path: req.rel_path.to_string(), block, stored, computed });
            }
            _ => return Ok(again),
        }
    }
    Ok(data.to_vec())
}

fn flush(pending: &mut Vec<u8>, at: u64, out: &mut ScannedFile, sink: &PackSink<'_>) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let run = sink.write_run(pending)?;
    out.stored_plain += pending.len() as u64;
    push(&mut out.entry.extents, Extent { offset: at, len: pending.len() as u64, run: Some(run) });
    pending.clear();
    Ok(())
}

/// Appends an extent, merging it into the last one when it continues it.
fn push(extents: &mut Vec<Extent>, next: Extent) {
    match extents.last_mut() {
        Some(last) if last.continued_by(&next) => last.len += next.len,
        _ => extents.push(next),
    }
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
