//! Reading an export back: `export --check` streams the file through its layers (age when it
//! starts like an age file, then the LZ4 or Zstandard frame its first bytes announce), walks the
//! tar entries, digests every file as it passes and, at the end, holds them against the manifest
//! — which must be the archive's last entry, so a truncated export has none. Nothing is written;
//! `extract.rs` walks the same way into a staging directory.
//!
//! Tar headers are parsed raw: only directories, regular files and GNU long names (at most
//! [`MAX_NAME_BYTES`]) are accepted, every name must stay inside the directory, and nothing is
//! allocated by a size a header claims beyond those bounds and [`MAX_MANIFEST_BYTES`].

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use age::secrecy::SecretString;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::ops::export::Compression;
use crate::ops::export::crypt::{AGE_MAGIC, decrypting};
use crate::ops::export::manifest::{
    DIGEST, ExportManifest, Hasher, MANIFEST_NAME, MAX_MANIFEST_BYTES, normalize, octal, parse_octal, read_bounded,
};
use crate::progress::Progress;
use crate::util::ms_since;

/// Bytes read at a time.
const CHUNK: usize = 1024 * 1024;

/// The longest GNU long name accepted (PATH_MAX).
pub const MAX_NAME_BYTES: u64 = 4096;

/// The first bytes of an LZ4 frame.
const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];

/// The first bytes of a Zstandard frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// What reading an export found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The export.
    pub file: PathBuf,
    /// LZ4 or Zstandard.
    pub compression: Compression,
    /// Whether it is age-encrypted.
    pub encrypted: bool,
    /// The digest the manifest names.
    pub digest: &'static str,
    /// Whether every entry matched the manifest and the file ended where the archive does.
    pub ok: bool,
    /// Regular files read (the manifest not counted).
    pub files: u64,
    /// Directories read.
    pub dirs: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Bytes of the export file.
    pub file_bytes: u64,
    /// Files the manifest lists, when it was read.
    pub manifest_files: Option<u64>,
    /// The first file found damaged, in archive order.
    pub damaged: Option<String>,
    /// Whether the file ends before the archive does.
    pub truncated: bool,
    /// What is wrong, when something is.
    pub failure: Option<String>,
    /// Extract: the directory the export went into.
    pub dir: Option<PathBuf>,
    /// Extract: the user the extracted files belong to.
    pub owner: Option<String>,
    /// Wall time, milliseconds.
    pub duration_ms: f64,
}

/// Checks the export `input` against its manifest without writing anything: `Ok` with `ok` false
/// (and the first damaged file, or the truncation) when it does not match; `Err` when it cannot be
/// read at all (missing, not an export, wrong passphrase) or `check` fails (a termination signal).
/// `passphrase` is asked for only when the file is encrypted.
pub fn check(
    input: &Path,
    passphrase: &dyn Fn() -> Result<SecretString>,
    progress: &dyn Progress,
    check: &dyn Fn() -> Result<()>,
) -> Result<CheckReport> {
    let started = Instant::now();
    let layers = Layers::open(input, passphrase, progress)?;
    progress.begin("check", layers.file_bytes);
    let mut report = walk(layers, input, &mut NoUnpack, check);
    progress.end();
    if let Ok(report) = &mut report {
        report.duration_ms = ms_since(started);
    }
    report
}

/// Where the walk puts what it reads (nowhere, for a check).
pub(crate) trait Unpack {
    /// The first entry's header, before anything is created (who the entries belong to).
    fn first(&mut self, header: &tar::Header) -> Result<()>;
    /// Directory `rel` ("." for the top).
    fn dir(&mut self, rel: &str, mode: u32) -> Result<()>;
    /// File `rel` begins.
    fn begin_file(&mut self, rel: &str, mode: u32, mtime: u64) -> Result<()>;
    /// The next bytes of the file begun.
    fn data(&mut self, bytes: &[u8]) -> Result<()>;
    /// The file begun is complete.
    fn end_file(&mut self) -> Result<()>;
}

/// A check unpacks nothing.
struct NoUnpack;

impl Unpack for NoUnpack {
    fn first(&mut self, _header: &tar::Header) -> Result<()> {
        Ok(())
    }
    fn dir(&mut self, _rel: &str, _mode: u32) -> Result<()> {
        Ok(())
    }
    fn begin_file(&mut self, _rel: &str, _mode: u32, _mtime: u64) -> Result<()> {
        Ok(())
    }
    fn data(&mut self, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }
    fn end_file(&mut self) -> Result<()> {
        Ok(())
    }
}

/// How far the layer above the file has consumed it (not how far the file was read ahead).
#[derive(Default)]
struct RawState {
    consumed: Cell<u64>,
    size: u64,
}

impl RawState {
    /// Whether the layer above has taken every byte of the file: an error or an end of the
    /// archive then means the file ended too early.
    fn at_end(&self) -> bool {
        self.consumed.get() >= self.size
    }
}

/// The export file, buffered, counting what the layer above consumes and reporting it as
/// progress.
struct Raw<'a> {
    inner: BufReader<File>,
    state: Rc<RawState>,
    progress: &'a dyn Progress,
}

impl Raw<'_> {
    fn count(&self, n: usize) {
        self.state.consumed.set(self.state.consumed.get() + n as u64);
        self.progress.advance(n as u64);
    }
}

impl Read for Raw<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count(n);
        Ok(n)
    }
}

impl BufRead for Raw<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
        self.count(amount);
    }
}

/// An export opened down to its tar stream.
pub(crate) struct Layers<'a> {
    reader: Box<dyn Read + 'a>,
    compression: Compression,
    encrypted: bool,
    /// Bytes of the export file.
    pub(crate) file_bytes: u64,
    state: Rc<RawState>,
}

impl<'a> Layers<'a> {
    /// Opens `input`: age if it starts like an age file (asking `passphrase` then), then the
    /// frame its plaintext starts with. Refuses what is neither.
    pub(crate) fn open(
        input: &Path,
        passphrase: &dyn Fn() -> Result<SecretString>,
        progress: &'a dyn Progress,
    ) -> Result<Layers<'a>> {
        let file = File::open(input).at("open", input)?;
        let meta = file.metadata().at("stat", input)?;
        if !meta.is_file() {
            return Err(Error::refused(format!("{} is not a file", input.display()), None));
        }
        let state = Rc::new(RawState { consumed: Cell::new(0), size: meta.len() });
        let inner = BufReader::with_capacity(CHUNK, file);
        let mut raw = Raw { inner, state: Rc::clone(&state), progress };
        let encrypted = raw.fill_buf().at("read", input)?.starts_with(AGE_MAGIC);
        let mut plain: Box<dyn BufRead + 'a> = if encrypted {
            let pass = passphrase()?;
            Box::new(BufReader::with_capacity(CHUNK, decrypting(raw, input, &pass)?))
        } else {
            Box::new(raw)
        };
        let head = plain.fill_buf().map_err(|e| {
            Error::invalid(input.display().to_string(), format!("damaged: cannot decrypt its beginning ({e})"))
        })?;
        let compression = if head.starts_with(&LZ4_MAGIC) {
            Compression::Lz4
        } else if head.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            return Err(Error::invalid(
                input.display().to_string(),
                format!(
                    "not an export: {} neither an LZ4 nor a Zstandard frame",
                    if encrypted { "its plaintext is" } else { "it is not age-encrypted, nor" }
                ),
            ));
        };
        let reader: Box<dyn Read + 'a> = match compression {
            Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(plain)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(plain).at("decompress", input)?),
        };
        Ok(Layers { reader, compression, encrypted, file_bytes: meta.len(), state })
    }

    /// The stream below the archive, for messages.
    fn describe(&self) -> String {
        let frame = match self.compression {
            Compression::Lz4 => "LZ4",
            Compression::Zstd => "Zstandard",
        };
        if self.encrypted { format!("age-encrypted {frame} stream") } else { format!("{frame} stream") }
    }
}

/// What went wrong in the archive.
struct Failure {
    message: String,
    damaged: Option<String>,
    truncated: bool,
}

impl Failure {
    fn damaged(message: String, file: Option<&str>) -> Failure {
        Failure { message: format!("damaged: {message}"), damaged: file.map(str::to_string), truncated: false }
    }

    fn truncated(message: String) -> Failure {
        Failure { message: format!("truncated: {message}"), damaged: None, truncated: true }
    }
}

/// An entry read.
struct Seen {
    path: String,
    mode: u32,
    /// `None` for a directory; else size and digest.
    file: Option<(u64, String)>,
}

/// Where in the archive a failure is, for messages.
fn place(current: Option<&str>, last: Option<&str>) -> String {
    match (current, last) {
        (Some(file), _) => format!("in {file}"),
        (None, Some(last)) => format!("after {last}"),
        (None, None) => "at its start".into(),
    }
}

/// Walks the archive of `layers` into `unpack`, digesting every file, and holds what it read
/// against the manifest at the end. Damage and truncation make a report with `ok` false; `Err` is
/// for what `unpack` or `check` fail with.
pub(crate) fn walk(
    layers: Layers<'_>,
    input: &Path,
    unpack: &mut dyn Unpack,
    check: &dyn Fn() -> Result<()>,
) -> Result<CheckReport> {
    let mut report = CheckReport {
        file: input.to_path_buf(),
        compression: layers.compression,
        encrypted: layers.encrypted,
        digest: DIGEST,
        ok: false,
        files: 0,
        dirs: 0,
        bytes: 0,
        file_bytes: layers.file_bytes,
        manifest_files: None,
        damaged: None,
        truncated: false,
        failure: None,
        dir: None,
        owner: None,
        duration_ms: 0.0,
    };
    let what = layers.describe();
    let state = Rc::clone(&layers.state);
    let stream_failure = |e: &io::Error, at: String, file: Option<&str>| {
        if state.at_end() || e.kind() == io::ErrorKind::UnexpectedEof {
            Failure::truncated(format!("the file ends before its archive does, {at} ({e})"))
        } else {
            Failure::damaged(format!("the {what} cannot be read {at} ({e})"), file)
        }
    };

    let mut archive = tar::Archive::new(layers.reader);
    let mut seen: Vec<Seen> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut manifest_text: Option<Vec<u8>> = None;
    let mut last: Option<String> = None;
    let mut first = true;
    let mut buf = vec![0u8; CHUNK];
    let failure = 'walk: {
        let entries = match archive.entries() {
            Ok(entries) => entries.raw(true),
            Err(e) => break 'walk Some(stream_failure(&e, place(None, None), None)),
        };
        let mut entries = entries;
        let mut long_name: Option<Vec<u8>> = None;
        loop {
            check()?;
            let mut entry = match entries.next() {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => break 'walk Some(stream_failure(&e, place(None, last.as_deref()), None)),
            };
            let header = entry.header().clone();
            let offset = entry.raw_header_position();
            let kind = header.entry_type();
            if kind.is_gnu_longname() {
                let size = entry.size();
                if long_name.is_some() || size > MAX_NAME_BYTES {
                    break 'walk Some(Failure::damaged(
                        format!("a long name of {size} bytes at byte {offset} of the archive"),
                        None,
                    ));
                }
                match read_bounded(&mut entry, size) {
                    Ok(bytes) if bytes.len() as u64 == size => {
                        let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                        long_name = Some(bytes[..end].to_vec());
                    }
                    Ok(_) => {
                        break 'walk Some(Failure::truncated(format!(
                            "the archive ends in a long name at byte {offset}"
                        )));
                    }
                    Err(e) => break 'walk Some(stream_failure(&e, place(None, last.as_deref()), None)),
                }
                continue;
            }
            let raw_path = long_name.take().unwrap_or_else(|| header.path_bytes().into_owned());
            let Some(path) = normalize(&raw_path) else {
                break 'walk Some(Failure::damaged(
                    format!(
                        "an entry at byte {offset} of the archive is named {:?}, outside the directory",
                        String::from_utf8_lossy(&raw_path)
                    ),
                    None,
                ));
            };
            if manifest_text.is_some() {
                break 'walk Some(Failure::damaged(
                    format!("{path} follows the manifest, which must be the last entry"),
                    Some(&path),
                ));
            }
            if !names.insert(path.clone()) {
                break 'walk Some(Failure::damaged(format!("{path} is in the archive twice"), Some(&path)));
            }
            let mode = header.mode().unwrap_or(0) & 0o7777;
            if first {
                unpack.first(&header)?;
                first = false;
            }
            match kind {
                tar::EntryType::Directory => {
                    unpack.dir(&path, mode)?;
                    seen.push(Seen { path: path.clone(), mode, file: None });
                    report.dirs += 1;
                }
                tar::EntryType::Regular if path == MANIFEST_NAME => {
                    let size = entry.size();
                    if size > MAX_MANIFEST_BYTES {
                        break 'walk Some(Failure::damaged(
                            format!("the manifest claims {size} bytes, more than any export's"),
                            None,
                        ));
                    }
                    match read_bounded(&mut entry, size) {
                        Ok(bytes) if bytes.len() as u64 == size => manifest_text = Some(bytes),
                        Ok(bytes) => {
                            break 'walk Some(Failure::truncated(format!(
                                "the archive ends in its manifest, after {} of its {size} bytes",
                                bytes.len()
                            )));
                        }
                        Err(e) => break 'walk Some(stream_failure(&e, place(Some(MANIFEST_NAME), None), None)),
                    }
                }
                tar::EntryType::Regular => {
                    let size = entry.size();
                    unpack.begin_file(&path, mode, header.mtime().unwrap_or(0))?;
                    let mut digest = Hasher::default();
                    let mut got = 0u64;
                    loop {
                        check()?;
                        let n = match entry.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => break 'walk Some(stream_failure(&e, place(Some(&path), None), Some(&path))),
                        };
                        digest.update(&buf[..n]);
                        unpack.data(&buf[..n])?;
                        got += n as u64;
                        report.bytes += n as u64;
                    }
                    if got < size {
                        break 'walk Some(Failure::truncated(format!(
                            "the archive ends in {path}, after {got} of its {size} bytes"
                        )));
                    }
                    unpack.end_file()?;
                    seen.push(Seen { path: path.clone(), mode, file: Some((size, digest.finish())) });
                    report.files += 1;
                }
                other => {
                    break 'walk Some(Failure::damaged(
                        format!("{path} is an entry of type {other:?}, which exports never hold"),
                        Some(&path),
                    ));
                }
            }
            last = Some(path);
        }
        if long_name.is_some() {
            break 'walk Some(Failure::damaged("the archive ends with a long name and no entry".into(), None));
        }
        // The rest of the stream: the archive's end blocks, then the frame's end and checksum.
        let mut rest = archive.into_inner();
        let (zeros, end) = drain(&mut rest, &mut buf);
        let Some(manifest_text) = manifest_text else {
            let after = last.as_deref().map(|l| format!(", after {l}")).unwrap_or_default();
            break 'walk Some(match end {
                Err(Some(e)) => stream_failure(&e, place(None, last.as_deref()), None),
                Err(None) => {
                    Failure::damaged(format!("the archive ends without its manifest{after}, and data follows"), None)
                }
                // Both end blocks of the archive, and the frame's end with its checksum: whole.
                Ok(()) if zeros >= 512 => Failure {
                    message: format!(
                        "no manifest: the archive is whole ({} files) but carries none (written by a pgfork \
                         before manifests, or by another tool), so its files cannot be checked",
                        report.files
                    ),
                    damaged: None,
                    truncated: false,
                },
                Ok(()) => Failure::truncated(format!(
                    "no manifest at the end (the archive stops {} files in{after})",
                    report.files
                )),
            });
        };
        // A file that differs from the manifest is named before what the frame's checksum says.
        let end_failure = match end {
            Ok(()) => None,
            Err(None) => Some(Failure::damaged("data follows the end of the archive".into(), None)),
            Err(Some(e)) => Some(stream_failure(&e, "after the manifest".into(), None)),
        };
        if !ExportManifest::intact(&manifest_text) {
            break 'walk Some(Failure::damaged(
                format!("{MANIFEST_NAME}: the manifest's own SHA-256 differs"),
                Some(MANIFEST_NAME),
            ));
        }
        let manifest = match ExportManifest::parse(&manifest_text) {
            Ok(manifest) => manifest,
            Err(e) => {
                let message = format!("the manifest cannot be used: {e}");
                break 'walk Some(Failure { message, damaged: None, truncated: false });
            }
        };
        report.manifest_files = Some(manifest.files.len() as u64);
        compare(&seen, &manifest).or(end_failure)
    };
    match failure {
        None => report.ok = true,
        Some(failure) => {
            report.failure = Some(failure.message);
            report.damaged = failure.damaged;
            report.truncated = failure.truncated;
        }
    }
    Ok(report)
}

/// Fuzzing: `data` walked as an export's tar stream (below the compression), and parsed as a
/// manifest; never panics, and allocates within the bounds above whatever the headers claim.
pub fn fuzz(data: &[u8]) {
    let _ = ExportManifest::parse(data);
    let size = data.len() as u64;
    let layers = Layers {
        reader: Box::new(data),
        compression: Compression::Lz4,
        encrypted: false,
        file_bytes: size,
        state: Rc::new(RawState { consumed: Cell::new(size), size }),
    };
    let _ = walk(layers, Path::new("fuzz"), &mut NoUnpack, &|| Ok(()));
}

/// A valid tar stream of an export to start fuzzing from: a directory, a file with a long name,
/// and the manifest.
pub fn fuzz_seed() -> Vec<u8> {
    use crate::ops::export::manifest::{ManifestDir, ManifestFile, ManifestOwner, sha256_hex};
    let long = format!("base/{}/1259", "1".repeat(120));
    let owner = ManifestOwner { uid: 26, gid: 26, user: "postgres".into(), group: "postgres".into() };
    let mut manifest = ExportManifest::new(owner);
    manifest.dirs.push(ManifestDir { path: ".".into(), mode: octal(0o700) });
    manifest.files.push(ManifestFile { path: long.clone(), size: 3, mode: octal(0o600), sha256: sha256_hex(b"18\n") });
    let mut tar = tar::Builder::new(Vec::new());
    let mut append = |kind: tar::EntryType, path: &str, bytes: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        let _ = tar.append_data(&mut header, path, bytes);
    };
    append(tar::EntryType::Directory, ".", b"", 0o700);
    append(tar::EntryType::Regular, &long, b"18\n", 0o600);
    append(tar::EntryType::Regular, MANIFEST_NAME, manifest.to_text().as_bytes(), 0o600);
    tar.into_inner().unwrap_or_default()
}

/// Reads `rest` to its end: the zero bytes it held, and `Err(None)` when something else follows
/// them, `Err(Some(error))` when it fails.
fn drain(rest: &mut dyn Read, buf: &mut [u8]) -> (u64, std::result::Result<(), Option<io::Error>>) {
    let mut zeros = 0u64;
    loop {
        match rest.read(buf) {
            Ok(0) => return (zeros, Ok(())),
            Ok(n) if buf[..n].iter().all(|b| *b == 0) => zeros += n as u64,
            Ok(_) => return (zeros, Err(None)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (zeros, Err(Some(e))),
        }
    }
}

/// The entries read against the manifest: the first that differs, in archive order, then what
/// the manifest lists and the archive lacks.
fn compare(seen: &[Seen], manifest: &ExportManifest) -> Option<Failure> {
    let dirs: HashMap<&str, &str> = manifest.dirs.iter().map(|d| (d.path.as_str(), d.mode.as_str())).collect();
    let files: HashMap<&str, _> = manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut problems: Vec<(&str, String)> = Vec::new();
    for entry in seen {
        let listed_mode = match &entry.file {
            None => dirs.get(entry.path.as_str()).copied(),
            Some(_) => files.get(entry.path.as_str()).map(|f| f.mode.as_str()),
        };
        let Some(listed_mode) = listed_mode else {
            let what = if entry.file.is_some() { "a file" } else { "a directory" };
            problems.push((&entry.path, format!("{what} the manifest does not list")));
            continue;
        };
        if let Some((size, digest)) = &entry.file {
            let listed = files[entry.path.as_str()];
            if *size != listed.size {
                problems.push((&entry.path, format!("{size} bytes, the manifest says {}", listed.size)));
                continue;
            }
            if *digest != listed.sha256 {
                problems.push((&entry.path, "its SHA-256 differs from the manifest's".into()));
                continue;
            }
        }
        if parse_octal(listed_mode) != Some(entry.mode) {
            problems.push((&entry.path, format!("mode {}, the manifest says {listed_mode}", octal(entry.mode))));
        }
    }
    let read: HashSet<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    for path in manifest.dirs.iter().map(|d| &d.path).chain(manifest.files.iter().map(|f| &f.path)) {
        if !read.contains(path.as_str()) {
            problems.push((path, "listed in the manifest, missing from the archive".into()));
        }
    }
    let (path, why) = problems.first()?;
    let more = match problems.len() {
        1 => String::new(),
        n => format!(" ({} more entries differ)", n - 1),
    };
    Some(Failure::damaged(format!("{path}: {why}{more}"), Some(path)))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;
    use crate::ops::export::{EntryOwner, Sink};
    use crate::progress::Silent;

    /// An export at `dest` of a small data directory: a few directories, small files, and one
    /// file of `big` bytes (deterministic, poorly compressible) so that damage lands in it.
    pub(crate) fn small_export(dest: &Path, compression: Compression, pass: Option<&str>, big: u64) {
        let pass = pass.map(|p| SecretString::from(p.to_string()));
        let mut sink = Sink::create(dest, compression, pass.as_ref(), EntryOwner::of_ids(0, 0), 1_700_000_000).unwrap();
        sink.dir(".", 0o700).unwrap();
        sink.dir("base", 0o700).unwrap();
        sink.dir("base/1", 0o700).unwrap();
        sink.bytes("PG_VERSION", b"18\n", 0o600).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let bytes: Vec<u8> = (0..big)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        sink.file("base/1/1259", big, 0o600, &bytes[..], &Silent, &|| Ok(())).unwrap();
        sink.bytes("base/1/PG_VERSION", b"18\n", 0o600).unwrap();
        sink.commit().unwrap();
    }

    pub(crate) fn no_pass() -> Result<SecretString> {
        Err(Error::refused("no passphrase", None))
    }

    fn checked(path: &Path) -> CheckReport {
        check(path, &no_pass, &Silent, &|| Ok(())).unwrap()
    }

    #[test]
    fn a_whole_export_passes() {
        for compression in [Compression::Lz4, Compression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join(format!("x{}", compression.extension()));
            small_export(&file, compression, None, 3 << 20);
            let report = checked(&file);
            assert!(report.ok, "{:?}", report.failure);
            assert_eq!((report.files, report.dirs, report.bytes), (3, 3, (3 << 20) + 6));
            assert_eq!(report.manifest_files, Some(3));
            assert_eq!(report.compression, compression);
        }
    }

    #[test]
    fn a_flipped_byte_names_the_damaged_file() {
        for compression in [Compression::Lz4, Compression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join(format!("x{}", compression.extension()));
            small_export(&file, compression, None, 3 << 20);
            let mut bytes = std::fs::read(&file).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x10;
            std::fs::write(&file, &bytes).unwrap();
            let report = checked(&file);
            assert!(!report.ok && !report.truncated, "{report:?}");
            let failure = report.failure.unwrap();
            assert!(failure.starts_with("damaged:"), "{failure}");
            assert_eq!(report.damaged.as_deref(), Some("base/1/1259"), "{failure}");
        }
    }

    #[test]
    fn a_truncated_export_says_so() {
        for compression in [Compression::Lz4, Compression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join(format!("x{}", compression.extension()));
            small_export(&file, compression, None, 3 << 20);
            let bytes = std::fs::read(&file).unwrap();
            for cut in [bytes.len() - (1 << 20), bytes.len() - 1, bytes.len() / 2, 100] {
                std::fs::write(&file, &bytes[..cut]).unwrap();
                let report = checked(&file);
                assert!(!report.ok, "{compression:?} cut at {cut}");
                let failure = report.failure.unwrap();
                assert!(failure.contains("truncated"), "{compression:?} cut at {cut}: {failure}");
            }
        }
    }

    #[test]
    fn encrypted_exports_need_their_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.tar.zst.age");
        small_export(&file, Compression::Zstd, Some("pw"), 1 << 20);
        let pass = || Ok(SecretString::from("pw".to_string()));
        let report = check(&file, &pass, &Silent, &|| Ok(())).unwrap();
        assert!(report.ok && report.encrypted, "{report:?}");
        assert!(check(&file, &no_pass, &Silent, &|| Ok(())).unwrap_err().to_string().contains("no passphrase"));
        let wrong = || Ok(SecretString::from("not it".to_string()));
        assert!(check(&file, &wrong, &Silent, &|| Ok(())).unwrap_err().to_string().contains("wrong passphrase"));

        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let report = check(&file, &pass, &Silent, &|| Ok(())).unwrap();
        assert!(!report.ok, "{report:?}");
        assert_eq!(report.damaged.as_deref(), Some("base/1/1259"), "{:?}", report.failure);
        bytes[at] ^= 1;
        std::fs::write(&file, &bytes[..bytes.len() - 1000]).unwrap();
        let report = check(&file, &pass, &Silent, &|| Ok(())).unwrap();
        assert!(report.failure.unwrap().contains("truncated"));
    }

    #[test]
    fn what_is_not_an_export_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.tar.lz4");
        std::fs::write(&file, b"hello, world").unwrap();
        assert!(check(&file, &no_pass, &Silent, &|| Ok(())).unwrap_err().to_string().contains("not an export"));
        // A whole tar stream without a manifest (an export of an older pgfork, or another
        // tool's): not called truncated; cut after its entry, it is.
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o600);
        tar.append_data(&mut header, "PG_VERSION", &b"18\n"[..]).unwrap();
        let stream = tar.into_inner().unwrap();
        lz4_of(&stream, &file);
        let report = checked(&file);
        assert!(!report.ok && !report.truncated);
        assert!(report.failure.unwrap().contains("carries none"));
        lz4_of(&stream[..1024], &file);
        let report = checked(&file);
        assert!(report.truncated);
        assert!(report.failure.unwrap().starts_with("truncated: no manifest at the end"));
    }

    /// A GNU header for `path` claiming `size`, with its checksum.
    fn raw_header(path: &[u8], kind: tar::EntryType, size: u64) -> [u8; 512] {
        let mut header = tar::Header::new_gnu();
        header.as_mut_bytes()[..path.len()].copy_from_slice(path);
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o600);
        header.set_cksum();
        *header.as_bytes()
    }

    fn lz4_of(tar_bytes: &[u8], file: &Path) {
        let mut encoder = lz4_flex::frame::FrameEncoder::new(File::create(file).unwrap());
        encoder.write_all(tar_bytes).unwrap();
        encoder.finish().unwrap();
    }

    #[test]
    fn the_fuzz_seed_is_a_whole_export() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.tar.lz4");
        let mut seed = fuzz_seed();
        lz4_of(&seed, &file);
        let report = checked(&file);
        assert!(report.ok && report.files == 1, "{report:?}");
        // Damage inside the manifest is told from damage to a file.
        let at = seed.windows(8).rposition(|w| w == b"postgres").unwrap();
        seed[at] = b'P';
        lz4_of(&seed, &file);
        let report = checked(&file);
        assert_eq!(report.damaged.as_deref(), Some(MANIFEST_NAME), "{report:?}");
    }

    #[test]
    fn hostile_headers_are_refused_without_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.tar.lz4");
        // A long name claiming a terabyte, a manifest claiming one, a name going up, a link.
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw_header(b"././@LongLink", tar::EntryType::GNULongName, 1 << 40).to_vec(), "long name"),
            (raw_header(MANIFEST_NAME.as_bytes(), tar::EntryType::Regular, 1 << 40).to_vec(), "manifest claims"),
            (raw_header(b"../../etc/passwd", tar::EntryType::Regular, 0).to_vec(), "outside the directory"),
            (raw_header(b"/etc/passwd", tar::EntryType::Regular, 0).to_vec(), "outside the directory"),
            (raw_header(b"base/x", tar::EntryType::Symlink, 0).to_vec(), "never hold"),
        ];
        for (mut stream, expected) in cases {
            stream.extend_from_slice(&[0u8; 1024]);
            lz4_of(&stream, &file);
            let report = checked(&file);
            let failure = report.failure.unwrap();
            assert!(failure.contains(expected), "{failure}");
        }
    }
}
