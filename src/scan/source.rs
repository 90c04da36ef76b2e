//! Reading a file for the scanner: a read-only memory map of a snapshot file (nothing else writes
//! it, so it never shrinks under the map), or pread on a live file (which may shrink or vanish).

#![allow(unsafe_code)] // the crate's one memory map, justified at its `unsafe` block

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, IoContext, Result};

/// How the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Memory-map it: only for files in a snapshot pgfork made.
    Map,
    /// pread: for live files PostgreSQL may truncate.
    Pread,
}

/// An open file to scan.
pub enum FileSource {
    /// A mapped snapshot file (None for an empty file, which cannot be mapped).
    Map(Option<Mmap>, u32),
    /// A live file.
    File(File, u64, u32),
}

impl FileSource {
    /// Opens `path`; `None` when it does not exist (any more).
    pub fn open(path: &Path, mode: ReadMode) -> Result<Option<FileSource>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let meta = file.metadata().at("stat", path)?;
        let perm = meta.mode() & 0o7777;
        Ok(Some(match mode {
            ReadMode::Map if meta.len() > 0 => {
                // SAFETY: the file lies in a reflink snapshot that pgfork created and nothing else
                // writes or truncates, so the mapping cannot shrink under us (no SIGBUS); it is
                // mapped read-only and only read through `read_at`, which bounds every slice.
                let map = unsafe { Mmap::map(&file) }.at("map", path)?;
                FileSource::Map(Some(map), perm)
            }
            ReadMode::Map => FileSource::Map(None, perm),
            ReadMode::Pread => FileSource::File(file, meta.len(), perm),
        }))
    }

    /// Size when opened.
    pub fn len(&self) -> u64 {
        match self {
            FileSource::Map(map, _) => map.as_ref().map_or(0, |m| m.len() as u64),
            FileSource::File(_, len, _) => *len,
        }
    }

    /// Whether the file was empty when opened.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Permission bits.
    pub fn mode(&self) -> u32 {
        match self {
            FileSource::Map(_, mode) | FileSource::File(_, _, mode) => *mode,
        }
    }

    /// Fills `buf` from `offset` as far as the file goes; returns the bytes read (short at the end,
    /// or when a live file shrank).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        match self {
            FileSource::Map(None, _) => Ok(0),
            FileSource::Map(Some(map), _) => {
                let start = (offset as usize).min(map.len());
                let end = start.saturating_add(buf.len()).min(map.len());
                buf[..end - start].copy_from_slice(&map[start..end]);
                Ok(end - start)
            }
            FileSource::File(file, _, _) => {
                let mut done = 0;
                while done < buf.len() {
                    match file.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(done)
            }
        }
    }
}
