//! Reading one file of a set: find its stored bytes (a file of its own with the compression's
//! extension, or a range of a bundle, in the set that holds it), then stream them through
//! decryption and decompression while checking the stored bytes' SHA-1 (`rck`), the size and the
//! content's SHA-1. A check that fails surfaces as an error naming the set and the file.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use sha1::{Digest, Sha1};

use super::cipher::DecryptReader;
use super::ini::to_hex;
use super::{PgbrFile, PgbrManifest, PgbrStanza};
use crate::error::{Error, Result};
use crate::repo::storage::Storage;

/// SHA-1 of nothing: the implied checksum of zero-length files.
pub(super) const SHA1_EMPTY: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
/// Bytes fetched per ranged get when streaming.
const STREAM_CHUNK: u64 = 4 << 20;
/// Up to this many stored bytes, `read_file` fetches a file in one request.
const WHOLE_LIMIT: u64 = 64 << 20;

/// Where a file's stored bytes are.
#[derive(Debug, Clone)]
pub(super) struct Located {
    /// Repository key of the object holding them.
    pub key: String,
    /// Offset of the first stored byte in that object.
    pub offset: u64,
    /// For messages: "bundle 3 of set X at offset N", "X/pg_data/base/5/16384.gz".
    pub place: String,
    /// Whether the raw formats apply (bundled files of block-incremental sets).
    pub raw: bool,
}

/// How errors name the file.
pub(super) fn file_what(manifest: &PgbrManifest, file: &PgbrFile) -> String {
    format!("pgBackRest set {}, file {}", manifest.label, file.name)
}

/// Finds `file`'s stored bytes and checks the object holding them is there and large enough.
pub(super) fn locate(stanza: &PgbrStanza, manifest: &PgbrManifest, file: &PgbrFile) -> Result<Located> {
    let what = file_what(manifest, file);
    let holder = file.reference.as_deref().unwrap_or(&manifest.label);
    let base = format!("backup/{}/{holder}", stanza.stanza);
    let located = match file.bundle {
        Some((id, offset)) => Located {
            key: format!("{base}/bundle/{id}"),
            offset,
            place: format!("bundle {id} of set {holder} at offset {offset}"),
            raw: manifest.options.bundle_raw,
        },
        None => {
            let ext = if file.is_block_incr() { ".pgbi" } else { manifest.options.compress_type.extension() };
            Located {
                key: format!("{base}/{}{ext}", file.name),
                offset: 0,
                place: format!("{holder}/{}{ext}", file.name),
                raw: false,
            }
        }
    };
    let Some(meta) = stanza.storage.stat(&located.key)? else {
        let missing = match file.bundle {
            Some((id, _)) => format!("bundle {id} of set {holder} is missing"),
            None => format!("{} is missing from the repository", located.place),
        };
        return Err(Error::invalid(what, missing));
    };
    let end = located.offset.checked_add(file.repo_size);
    let fits = match file.bundle {
        Some(_) => end.is_some_and(|end| end <= meta.size),
        None => meta.size == file.repo_size,
    };
    if !fits {
        return Err(Error::invalid(
            what,
            format!("{} holds {} bytes where the manifest expects {}", located.place, meta.size, file.repo_size),
        ));
    }
    Ok(located)
}

/// See [`PgbrStanza::read_file`].
pub(super) fn read_file(stanza: &PgbrStanza, manifest: &PgbrManifest, file: &PgbrFile) -> Result<Vec<u8>> {
    let chunk = if file.repo_size <= WHOLE_LIMIT { WHOLE_LIMIT } else { STREAM_CHUNK };
    let mut reader = open(stanza, manifest, file, chunk)?;
    let capacity = usize::try_from(file.size.min(WHOLE_LIMIT)).unwrap_or(0);
    let mut out = Vec::with_capacity(capacity);
    reader.read_to_end(&mut out).map_err(|e| from_io(e, &file_what(manifest, file)))?;
    Ok(out)
}

/// See [`PgbrStanza::open_file`].
pub(super) fn open_file(stanza: &PgbrStanza, manifest: &PgbrManifest, file: &PgbrFile) -> Result<Box<dyn Read + Send>> {
    open(stanza, manifest, file, STREAM_CHUNK)
}

fn open(stanza: &PgbrStanza, manifest: &PgbrManifest, file: &PgbrFile, chunk: u64) -> Result<Box<dyn Read + Send>> {
    let what = file_what(manifest, file);
    let expected = file.checksum.clone().unwrap_or_else(|| SHA1_EMPTY.to_string());
    if file.size == 0 {
        // Zero-length files are not read: bundled sets do not even store them.
        if expected != SHA1_EMPTY {
            return Err(Error::invalid(what, "zero-length file with the checksum of a non-empty one"));
        }
        return Ok(Box::new(io::empty()));
    }
    let located = locate(stanza, manifest, file)?;
    if let Some(block_incr) = file.block_incr {
        let blocks = super::block::open(stanza, manifest, file, block_incr, &located)?;
        return Ok(Box::new(Checked::new(blocks, None, file, expected, what, located.place)));
    }
    let source = Arc::new(Mutex::new(Source {
        storage: stanza.storage.clone(),
        key: located.key.clone(),
        next: located.offset,
        end: located.offset + file.repo_size,
        chunk,
        buf: Vec::new(),
        at: 0,
        hasher: Sha1::new(),
    }));
    let mut reader: Box<dyn Read + Send> = Box::new(Shared(source.clone()));
    if let Some(pass) = &manifest.cipher_pass {
        reader = Box::new(DecryptReader::new(reader, pass.clone(), located.raw));
    }
    let compress = manifest.options.compress_type;
    let decoded = match compress.decoder(reader, located.raw) {
        Ok(decoded) => decoded,
        Err(e) => {
            let mut checked = Checked::new(Box::new(io::empty()), Some(source), file, expected, what, located.place);
            return Err(from_io(checked.fail(e), &file_what(manifest, file)));
        }
    };
    Ok(Box::new(Checked::new(decoded, Some(source), file, expected, what, located.place)))
}

/// Turns an error of the decoding stack back into the crate's error.
pub(super) fn from_io(e: io::Error, what: &str) -> Error {
    let kind = e.kind();
    match e.into_inner() {
        Some(inner) => match inner.downcast::<Error>() {
            Ok(err) => *err,
            Err(other) => Error::invalid(what, other.to_string()),
        },
        None => Error::invalid(what, kind.to_string()),
    }
}

/// Wraps the crate's error for the `io::Read` stack.
pub(super) fn to_io(e: Error) -> io::Error {
    io::Error::other(e)
}

/// The stored bytes of one file, fetched in ranged gets and hashed as they go by.
struct Source {
    storage: Arc<dyn Storage>,
    key: String,
    next: u64,
    end: u64,
    chunk: u64,
    buf: Vec<u8>,
    at: usize,
    hasher: Sha1,
}

impl Read for Source {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            if self.next >= self.end || out.is_empty() {
                return Ok(0);
            }
            let len = self.chunk.min(self.end - self.next);
            self.buf = self.storage.get_range(&self.key, self.next, len).map_err(to_io)?;
            if self.buf.len() as u64 != len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("short read of {}", self.key)));
            }
            self.hasher.update(&self.buf);
            self.next += len;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A [`Source`] shared between the decoding stack and the final check.
struct Shared(Arc<Mutex<Source>>);

impl Read for Shared {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.0.lock().map_err(|_| io::Error::other("source lock poisoned"))?.read(out)
    }
}

/// The decoded content, checked at its end: stored bytes' SHA-1, size, content SHA-1.
struct Checked {
    inner: Box<dyn Read + Send>,
    source: Option<Arc<Mutex<Source>>>,
    size: u64,
    checksum: String,
    repo_checksum: Option<String>,
    produced: u64,
    hasher: Sha1,
    what: String,
    place: String,
    done: bool,
}

impl Checked {
    fn new(
        inner: Box<dyn Read + Send>,
        source: Option<Arc<Mutex<Source>>>,
        file: &PgbrFile,
        checksum: String,
        what: String,
        place: String,
    ) -> Checked {
        Checked {
            inner,
            source,
            size: file.size,
            checksum,
            repo_checksum: file.repo_checksum.clone(),
            produced: 0,
            hasher: Sha1::new(),
            what,
            place,
            done: false,
        }
    }

    fn invalid(&self, reason: String) -> io::Error {
        to_io(Error::invalid(&self.what, reason))
    }

    /// Reads the rest of the stored bytes and compares their SHA-1 with `rck`.
    fn check_stored(&mut self) -> io::Result<()> {
        let Some(source) = &self.source else { return Ok(()) };
        let mut source = source.lock().map_err(|_| io::Error::other("source lock poisoned"))?;
        io::copy(&mut *source, &mut io::sink())?;
        let Some(expected) = &self.repo_checksum else { return Ok(()) };
        let found = to_hex(&source.hasher.clone().finalize());
        if &found != expected {
            return Err(self.invalid(format!(
                "stored bytes ({}) do not match their SHA-1 (rck {expected}, found {found}): damaged in the repository",
                self.place
            )));
        }
        Ok(())
    }

    /// The error to report when decoding failed with `e`: the stored bytes' damage if that is
    /// the cause, else the decoding error itself.
    fn fail(&mut self, e: io::Error) -> io::Error {
        self.done = true;
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return e;
        }
        if let Err(stored) = self.check_stored() {
            return stored;
        }
        self.invalid(format!("cannot decode {}: {e}", self.place))
    }

    fn finish(&mut self) -> io::Result<()> {
        self.done = true;
        self.check_stored()?;
        if self.produced != self.size {
            return Err(self.invalid(format!("decodes to {} bytes, the manifest says {}", self.produced, self.size)));
        }
        let found = to_hex(&self.hasher.clone().finalize());
        if found != self.checksum {
            return Err(self.invalid(format!("SHA-1 mismatch (manifest {}, content {found})", self.checksum)));
        }
        Ok(())
    }
}

impl Read for Checked {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        let n = match self.inner.read(out) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.fail(e)),
        };
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        self.produced += n as u64;
        if self.produced > self.size {
            self.done = true;
            return Err(self.invalid(format!("decodes to more than the {} bytes the manifest says", self.size)));
        }
        self.hasher.update(&out[..n]);
        Ok(n)
    }
}
