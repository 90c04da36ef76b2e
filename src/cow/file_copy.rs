//! Copying one file: a reflink when the file system can, otherwise a sparse-aware copy with
//! copy_file_range (read/write where even that is refused).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use nix::unistd::Whence;

use crate::cow::fs_kind::{CopyMethod, is_clone_unsupported};

/// Copy chunk: progress is reported at this granularity.
const CHUNK: u64 = 8 * 1024 * 1024;

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOutcome {
    /// The destination shares the source's extents.
    Cloned,
    /// The data was copied; this many bytes of data (holes excluded).
    Copied(u64),
}

/// Copies `src` into the empty file `dst` using `method`; reports copied bytes to `advance`.
/// A reflink refused for this pair of files falls back to a copy.
pub fn copy_file(src: &File, dst: &File, method: CopyMethod, advance: &dyn Fn(u64)) -> io::Result<FileOutcome> {
    if method == CopyMethod::Reflink {
        match reflink_copy::reflink_file(src, dst) {
            Ok(()) => return Ok(FileOutcome::Cloned),
            Err(e) if is_clone_unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    sparse_copy(src, dst, advance).map(FileOutcome::Copied)
}

/// Copies the data regions of `src` into `dst`, leaving holes as holes; returns bytes of data.
pub fn sparse_copy(src: &File, dst: &File, advance: &dyn Fn(u64)) -> io::Result<u64> {
    let len = src.metadata()?.len();
    let mut copied = 0;
    let mut pos: u64 = 0;
    while pos < len {
        let data_start = match nix::unistd::lseek(src, pos as i64, Whence::SeekData) {
            Ok(offset) => offset as u64,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole remains
            Err(nix::errno::Errno::EINVAL) => pos,  // no SEEK_DATA support: treat as data
            Err(e) => return Err(e.into()),
        };
        let data_end = match nix::unistd::lseek(src, data_start as i64, Whence::SeekHole) {
            Ok(offset) => (offset as u64).min(len),
            Err(_) => len,
        };
        copied += copy_range(src, dst, data_start, data_end.saturating_sub(data_start), advance)?;
        pos = data_end.max(data_start + 1);
    }
    // Trailing holes, and files that shrank while being read, end at the source's length.
    dst.set_len(len)?;
    Ok(copied)
}

fn copy_range(src: &File, dst: &File, start: u64, len: u64, advance: &dyn Fn(u64)) -> io::Result<u64> {
    let mut off_in = start as i64;
    let mut off_out = start as i64;
    let end = start + len;
    while (off_in as u64) < end {
        let want = (end - off_in as u64).min(CHUNK) as usize;
        match nix::fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => break, // the source shrank
            Ok(n) => advance(n as u64),
            Err(nix::errno::Errno::EXDEV | nix::errno::Errno::ENOSYS | nix::errno::Errno::EOPNOTSUPP) => {
                return read_write_copy(src, dst, off_in as u64, end, advance).map(|n| n + (off_in as u64 - start));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(off_in as u64 - start)
}

fn read_write_copy(mut src: &File, mut dst: &File, start: u64, end: u64, advance: &dyn Fn(u64)) -> io::Result<u64> {
    src.seek(SeekFrom::Start(start))?;
    dst.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut done = 0;
    while start + done < end {
        let want = ((end - start - done) as usize).min(buf.len());
        let n = src.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
        done += n as u64;
        advance(n as u64);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn sparse_copy_keeps_content_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let src = File::create(&src_path).unwrap();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(b"tail", 40 * 1024 * 1024).unwrap();
        src.set_len(48 * 1024 * 1024).unwrap();
        let src = File::open(&src_path).unwrap();
        let dst_path = dir.path().join("dst");
        let dst = File::create(&dst_path).unwrap();
        let total = std::sync::atomic::AtomicU64::new(0);
        let copied = sparse_copy(&src, &dst, &|n| {
            total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(std::fs::read(&dst_path).unwrap(), std::fs::read(&src_path).unwrap());
        assert_eq!(copied, total.into_inner());
        assert!(copied < 48 * 1024 * 1024, "holes were copied as data ({copied} bytes)");
    }
}
