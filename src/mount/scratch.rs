//! The writable layer of a mount that a server boots on: copy-on-write at block granularity. A
//! file's first write gives it a sparse scratch file on local disk; each 4 KiB block written is
//! kept there (a partly written block is first filled from the backup), and reads take written
//! blocks from the scratch file and the rest from the backup. Unlike an overlay, which copies a
//! whole file up the first time it is opened for writing (and PostgreSQL opens every relation it
//! reads for writing), only the blocks the server changes ever reach the disk.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::util::fsx;

/// Granularity of copy-on-write.
pub const BLOCK: u64 = 4096;

/// Where the writable layer keeps its scratch files.
#[derive(Debug, Clone)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Scratch files go into `dir` (an existing directory on local disk).
    pub fn new(dir: &Path) -> Scratch {
        Scratch { dir: dir.to_path_buf() }
    }

    /// A new layer for inode `ino` over base contents of `base_size` bytes.
    pub fn layer(&self, ino: u64, base_size: u64) -> Result<Layer> {
        let path = self.dir.join(ino.to_string());
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).at("create", &path)?;
        Ok(Layer { file, path, written: Vec::new(), size: base_size, base_limit: base_size })
    }
}

/// One file's writes.
#[derive(Debug)]
pub struct Layer {
    file: File,
    path: PathBuf,
    /// Bitset of written blocks.
    written: Vec<u64>,
    /// The file's size now.
    size: u64,
    /// Bytes of the backup still visible: a truncation hides what lies beyond it for good.
    base_limit: u64,
}

/// Where a byte range of a layered file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The scratch file.
    Written,
    /// The backup.
    Base,
    /// Zeros (past the backup's visible end, never written).
    Zeros,
}

impl Layer {
    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn is_written(&self, block: u64) -> bool {
        self.written.get((block / 64) as usize).is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    fn set_written(&mut self, block: u64, on: bool) {
        let word = (block / 64) as usize;
        if self.written.len() <= word {
            if !on {
                return;
            }
            self.written.resize(word + 1, 0);
        }
        if on {
            self.written[word] |= 1 << (block % 64);
        } else {
            self.written[word] &= !(1 << (block % 64));
        }
    }

    /// The ranges `[offset, offset + len)` (clipped to the size) is made of, in order.
    pub fn plan_read(&self, offset: u64, len: u64) -> Vec<(u64, u64, Source)> {
        let end = self.size.min(offset.saturating_add(len));
        let mut out: Vec<(u64, u64, Source)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK;
            let block_end = ((block + 1) * BLOCK).min(end);
            let (source, upto) = if self.is_written(block) {
                (Source::Written, block_end)
            } else if pos < self.base_limit {
                (Source::Base, block_end.min(self.base_limit))
            } else {
                (Source::Zeros, block_end)
            };
            match out.last_mut() {
                Some((start, n, s)) if *s == source && *start + *n == pos => *n += upto - pos,
                _ => out.push((pos, upto - pos, source)),
            }
            pos = upto;
        }
        out
    }

    /// Reads from the scratch file (a range [`Layer::plan_read`] called written).
    pub fn read_written(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        // Past the scratch file's end (a block written beyond a hole) reads as zeros.
        let got = fsx::read_fully_at(&self.file, buf, offset).at("read", &self.path)?;
        buf[got..].fill(0);
        Ok(())
    }

    /// Writes `data` at `offset`; `base` reads the backup's bytes of a block that is only partly
    /// overwritten (given the block's offset and a buffer of the visible length).
    pub fn write(&mut self, offset: u64, data: &[u8], base: impl Fn(u64, &mut [u8]) -> Result<()>) -> Result<()> {
        let end = offset + data.len() as u64;
        let first = offset / BLOCK;
        let last = end.div_ceil(BLOCK);
        for block in first..last {
            let start = block * BLOCK;
            let partial = offset > start || end < start + BLOCK;
            if partial && !self.is_written(block) && start < self.base_limit {
                let visible = (self.base_limit.min(start + BLOCK) - start) as usize;
                let mut bytes = vec![0u8; visible];
                base(start, &mut bytes)?;
                self.file.write_all_at(&bytes, start).at("write", &self.path)?;
            }
            self.set_written(block, true);
        }
        self.file.write_all_at(data, offset).at("write", &self.path)?;
        self.size = self.size.max(end);
        Ok(())
    }

    /// Sets the size. Shrinking hides the backup's bytes beyond the new end (a block cut in the
    /// middle is copied first); growing reads as zeros.
    pub fn truncate(&mut self, size: u64, base: impl Fn(u64, &mut [u8]) -> Result<()>) -> Result<()> {
        if size < self.size {
            let block = size / BLOCK;
            let start = block * BLOCK;
            if !size.is_multiple_of(BLOCK) && !self.is_written(block) && start < self.base_limit {
                let visible = (self.base_limit.min(size) - start) as usize;
                let mut bytes = vec![0u8; visible];
                base(start, &mut bytes)?;
                self.file.write_all_at(&bytes, start).at("write", &self.path)?;
                self.set_written(block, true);
            }
            // Blocks past the end are gone: the scratch file is cut, their bits cleared.
            self.file.set_len(size).at("truncate", &self.path)?;
            let first_gone = size.div_ceil(BLOCK);
            for b in first_gone..(self.written.len() as u64 * 64) {
                self.set_written(b, false);
            }
            self.base_limit = self.base_limit.min(start);
        }
        self.size = size;
        Ok(())
    }
}

impl Drop for Layer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer over `base` with a reference model: a plain byte vector changed the same way.
    struct Check {
        layer: Layer,
        base: Vec<u8>,
        model: Vec<u8>,
        _dir: tempfile::TempDir,
    }

    impl Check {
        fn new(base: Vec<u8>) -> Check {
            let dir = tempfile::tempdir().unwrap();
            let layer = Scratch::new(dir.path()).layer(7, base.len() as u64).unwrap();
            Check { layer, model: base.clone(), base, _dir: dir }
        }

        fn base_reader(&self) -> impl Fn(u64, &mut [u8]) -> Result<()> + '_ {
            |at, buf: &mut [u8]| {
                buf.copy_from_slice(&self.base[at as usize..at as usize + buf.len()]);
                Ok(())
            }
        }

        fn write(&mut self, offset: usize, data: &[u8]) {
            let base = self.base.clone();
            self.layer
                .write(offset as u64, data, |at, buf| {
                    buf.copy_from_slice(&base[at as usize..at as usize + buf.len()]);
                    Ok(())
                })
                .unwrap();
            if self.model.len() < offset + data.len() {
                self.model.resize(offset + data.len(), 0);
            }
            self.model[offset..offset + data.len()].copy_from_slice(data);
        }

        fn truncate(&mut self, size: usize) {
            let base = self.base.clone();
            self.layer
                .truncate(size as u64, |at, buf| {
                    buf.copy_from_slice(&base[at as usize..at as usize + buf.len()]);
                    Ok(())
                })
                .unwrap();
            self.model.resize(size, 0);
        }

        fn read_all(&self) -> Vec<u8> {
            let base = self.base_reader();
            let mut out = Vec::new();
            for (at, len, source) in self.layer.plan_read(0, u64::MAX) {
                let mut buf = vec![0u8; len as usize];
                match source {
                    Source::Written => self.layer.read_written(at, &mut buf).unwrap(),
                    Source::Base => base(at, &mut buf).unwrap(),
                    Source::Zeros => {}
                }
                out.extend_from_slice(&buf);
            }
            out
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn writes_truncations_and_growth_read_back_like_a_plain_file() {
        let mut c = Check::new(pattern(5 * 4096 + 100, 1));
        c.write(10, &pattern(20, 2)); // partial first block: the rest comes from the backup
        c.write(4096, &pattern(4096, 3)); // a whole block
        assert_eq!(c.read_all(), c.model);
        c.truncate(3 * 4096 + 7); // cut inside an unwritten block
        assert_eq!(c.read_all(), c.model);
        c.write(6 * 4096, &pattern(10, 4)); // grow past the old end: the gap reads as zeros
        assert_eq!(c.read_all(), c.model);
        c.truncate(4096 + 1);
        c.truncate(8 * 4096);
        assert_eq!(c.read_all(), c.model, "bytes hidden by a truncation stay hidden after growing");
        assert_eq!(c.layer.size(), 8 * 4096);
    }

    #[test]
    fn reads_are_planned_in_contiguous_runs_by_source() {
        let mut c = Check::new(pattern(4 * 4096, 1));
        c.write(4096, &pattern(8192, 2));
        let plan = c.layer.plan_read(0, 4 * 4096 + 50);
        assert_eq!(plan, vec![(0, 4096, Source::Base), (4096, 8192, Source::Written), (3 * 4096, 4096, Source::Base)]);
        c.truncate(4096 + 10);
        c.truncate(3 * 4096);
        assert_eq!(
            c.layer.plan_read(0, u64::MAX),
            vec![(0, 4096, Source::Base), (4096, 4096, Source::Written), (2 * 4096, 4096, Source::Zeros)]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_sequence_of_writes_and_truncations_matches_a_plain_file(
            ops in proptest::collection::vec((0usize..40_000, 1usize..9000, proptest::bool::ANY), 1..30)
        ) {
            let mut c = Check::new(pattern(20_000, 9));
            for (i, (at, len, truncate)) in ops.into_iter().enumerate() {
                if truncate { c.truncate(at) } else { c.write(at, &pattern(len, i as u8)) }
            }
            proptest::prop_assert_eq!(c.read_all(), c.model);
        }
    }
}
