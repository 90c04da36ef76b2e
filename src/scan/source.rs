//! Reading a file for the scanner: read-only memory maps of a snapshot file (nothing else writes
//! it, so it never shrinks under the map), or pread on a live file (which may shrink or vanish).
//!
//! Maps are windows of [`WINDOW`] bytes, replaced as the scan moves on, so the pages a scan has
//! mapped — which count in the process's resident set — stay bounded per thread whatever the
//! file's size. Small snapshot files are read with pread: a map would cost more than it saves.

#![allow(unsafe_code)] // the crate's one memory map, justified at its `unsafe` block

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, IoContext, Result};
use crate::util::fsx;

/// Bytes mapped at a time.
pub const WINDOW: u64 = 8 * 1024 * 1024;
/// Snapshot files smaller than this are read with pread.
const MAP_THRESHOLD: u64 = 1024 * 1024;

/// How the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Memory-map it: only for files in a snapshot pgfork made.
    Map,
    /// pread: for live files PostgreSQL may truncate.
    Pread,
}

/// An open file to scan. Used by one thread at a time.
pub struct FileSource {
    file: File,
    len: u64,
    mode: u32,
    map: bool,
    window: RefCell<Option<(u64, Mmap)>>,
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
        Ok(Some(FileSource {
            map: mode == ReadMode::Map && meta.len() >= MAP_THRESHOLD,
            len: meta.len(),
            mode: meta.mode() & 0o7777,
            file,
            window: RefCell::new(None),
        }))
    }

    /// Size when opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file was empty when opened.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Permission bits.
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// Fills `buf` from `offset` as far as the file goes; returns the bytes read (short at the end,
    /// or when a live file shrank).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if !self.map {
            return fsx::read_fully_at(&self.file, buf, offset);
        }
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            if pos >= self.len {
                break;
            }
            let mut window = self.window.borrow_mut();
            let stale = window.as_ref().is_none_or(|(start, map)| pos < *start || pos >= start + map.len() as u64);
            if stale {
                let start = pos - pos % WINDOW;
                let len = WINDOW.min(self.len - start) as usize;
                // SAFETY: the file lies in a reflink snapshot that pgfork created and nothing else
                // writes or truncates, so the mapping cannot shrink under us (no SIGBUS). The window
                // lies within the length the file had when opened; it is mapped read-only and read
                // only through the bounds-checked slice below.
                let map = unsafe { MmapOptions::new().offset(start).len(len).map(&self.file)? };
                *window = Some((start, map));
            }
            let (start, map) = window.as_ref().expect("window mapped");
            let from = (pos - start) as usize;
            let n = (buf.len() - done).min(map.len() - from);
            buf[done..done + n].copy_from_slice(&map[from..from + n]);
            done += n;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_across_their_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(WINDOW as usize * 2 + 5000)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        for mode in [ReadMode::Map, ReadMode::Pread] {
            let source = FileSource::open(&path, mode).unwrap().unwrap();
            let mut buf = vec![0u8; 20000];
            let at = WINDOW - 7000;
            assert_eq!(source.read_at(&mut buf, at).unwrap(), 20000);
            assert_eq!(&buf[..], &data[at as usize..at as usize + 20000]);
            let tail = data.len() as u64 - 100;
            assert_eq!(source.read_at(&mut buf, tail).unwrap(), 100);
            assert_eq!(source.read_at(&mut buf, data.len() as u64 + 10).unwrap(), 0);
        }
        assert!(FileSource::open(&dir.path().join("gone"), ReadMode::Map).unwrap().is_none());
    }
}
