//! Where an export's bytes go: a tar stream, compressed as the `lz4` and `zstd` tools read it
//! (an LZ4 frame, a Zstandard frame, each with a checksum of its content), optionally encrypted
//! in the age format under a passphrase, into a temporary file beside the destination. `commit`
//! finishes every layer, fsyncs, renames into place and fsyncs the directory; a sink dropped
//! uncommitted removes its temporary, so an export is either whole under its name or absent.
//! Every entry is recorded as it is written — each file's SHA-256 taken from the very bytes the
//! archive receives — and the manifest of them all is the archive's last entry.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::ops::export::manifest::{
    ExportManifest, Hasher, MANIFEST_NAME, ManifestDir, ManifestFile, ManifestOwner, normalize, octal, sha256_hex,
};
use crate::progress::Progress;
use crate::util::fsx;

/// Bytes handed to the compressor at a time, and read from a source file at a time.
const CHUNK: usize = 1024 * 1024;

/// The compression of an export, told by its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `.tar.lz4`: an LZ4 frame (`lz4 -d`).
    Lz4,
    /// `.tar.zst`: a Zstandard frame (`zstd -d`).
    Zstd,
}

/// The suffix of an encrypted export.
pub const AGE_SUFFIX: &str = ".age";

impl Compression {
    /// The compression `path`'s name asks for (`.tar.lz4`, `.tar.zst`, then `.age` exactly when
    /// `encrypted`); a name that says something else is refused, so that a file's name always
    /// tells how to open it.
    pub fn of_name(path: &Path, encrypted: bool) -> Result<Compression> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let sealed = name.ends_with(AGE_SUFFIX);
        if sealed != encrypted {
            let hint = if encrypted {
                format!("name it {name}{AGE_SUFFIX}: the name tells how to open the file")
            } else {
                "pass --encrypt, or drop .age from the name".to_string()
            };
            let what = if encrypted { "an encrypted export" } else { "an unencrypted export" };
            return Err(Error::refused(format!("{name} is not a name for {what}"), Some(hint)));
        }
        let inner = name.strip_suffix(AGE_SUFFIX).unwrap_or(&name);
        if inner.ends_with(".tar.lz4") {
            Ok(Compression::Lz4)
        } else if inner.ends_with(".tar.zst") {
            Ok(Compression::Zstd)
        } else {
            Err(Error::refused(
                format!("{name}: the export's format is told by its name"),
                Some("name it FILE.tar.lz4 or FILE.tar.zst (with .age after it when encrypted)".into()),
            ))
        }
    }

    /// The file name extension, without the encryption suffix.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Lz4 => ".tar.lz4",
            Compression::Zstd => ".tar.zst",
        }
    }
}

/// Who the archive says owns its entries: `tar -x` as root gives them to this user.
#[derive(Debug, Clone)]
pub struct EntryOwner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// User name (tar prefers names to ids when extracting).
    pub user: String,
    /// Group name.
    pub group: String,
}

impl EntryOwner {
    /// The owner with ids `uid` and `gid`, named from the accounts of this machine.
    pub fn of_ids(uid: u32, gid: u32) -> EntryOwner {
        let user = nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name);
        let group = nix::unistd::Group::from_gid(gid.into()).ok().flatten().map(|g| g.name);
        EntryOwner {
            uid,
            gid,
            user: user.unwrap_or_else(|| uid.to_string()),
            group: group.unwrap_or_else(|| gid.to_string()),
        }
    }

    /// The owner as the manifest records it.
    pub fn manifest_owner(&self) -> ManifestOwner {
        ManifestOwner { uid: self.uid, gid: self.gid, user: self.user.clone(), group: self.group.clone() }
    }
}

/// The encryption layer: the file itself, or an age stream over it.
enum Sealed {
    Plain(BufWriter<File>),
    Age(age::stream::StreamWriter<BufWriter<File>>),
}

impl Write for Sealed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

impl Sealed {
    fn finish(self) -> io::Result<File> {
        let buffered = match self {
            Sealed::Plain(w) => w,
            Sealed::Age(w) => w.finish()?,
        };
        buffered.into_inner().map_err(io::IntoInnerError::into_error)
    }
}

/// The compression layer over the encryption layer.
enum Compressed {
    Lz4(lz4_flex::frame::FrameEncoder<Sealed>),
    Zstd(zstd::Encoder<'static, Sealed>),
}

impl Write for Compressed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressed::Lz4(w) => w.write(buf),
            Compressed::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressed::Lz4(w) => w.flush(),
            Compressed::Zstd(w) => w.flush(),
        }
    }
}

impl Compressed {
    fn new(compression: Compression, inner: Sealed) -> io::Result<Compressed> {
        Ok(match compression {
            Compression::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_size(lz4_flex::frame::BlockSize::Max4MB)
                    .content_checksum(true);
                Compressed::Lz4(lz4_flex::frame::FrameEncoder::with_frame_info(info, inner))
            }
            Compression::Zstd => {
                let mut encoder = zstd::Encoder::new(inner, 3)?;
                encoder.include_checksum(true)?;
                let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
                encoder.multithread(u32::try_from(workers).unwrap_or(1))?;
                Compressed::Zstd(encoder)
            }
        })
    }

    fn finish(self) -> io::Result<Sealed> {
        match self {
            Compressed::Lz4(w) => w.finish().map_err(io::Error::other),
            Compressed::Zstd(w) => w.finish(),
        }
    }
}

/// A temporary file removed on drop unless it was renamed into place.
struct Temp {
    path: PathBuf,
    committed: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An export being written.
pub struct Sink {
    tar: tar::Builder<Compressed>,
    temp: Temp,
    dest: PathBuf,
    owner: EntryOwner,
    mtime: u64,
    manifest: ExportManifest,
    /// Bytes of file contents written (before compression).
    pub data_bytes: u64,
}

impl Sink {
    /// Opens a temporary beside `dest` for an export compressed with `compression` and, with a
    /// passphrase, encrypted; entries belong to `owner` and carry `mtime` (seconds since 1970).
    /// Started as root, the file belongs to `owner` too, as the repository's files belong to its
    /// owner: an export is the cluster's data, not root's.
    pub fn create(
        dest: &Path,
        compression: Compression,
        passphrase: Option<&SecretString>,
        owner: EntryOwner,
        mtime: u64,
    ) -> Result<Sink> {
        let temp = Temp { path: fsx::temp_name(dest), committed: false };
        let file =
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp.path).at("create", &temp.path)?;
        if nix::unistd::Uid::effective().is_root() && owner.uid != 0 {
            std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid)).at("chown", &temp.path)?;
        }
        let buffered = BufWriter::with_capacity(CHUNK, file);
        let sealed = match passphrase {
            Some(pass) => Sealed::Age(
                age::Encryptor::with_user_passphrase(pass.clone()).wrap_output(buffered).at("encrypt", &temp.path)?,
            ),
            None => Sealed::Plain(buffered),
        };
        let compressed = Compressed::new(compression, sealed).at("compress", &temp.path)?;
        let mut tar = tar::Builder::new(compressed);
        tar.mode(tar::HeaderMode::Complete);
        let manifest = ExportManifest::new(owner.manifest_owner());
        Ok(Sink { tar, temp, dest: dest.to_path_buf(), owner, mtime, manifest, data_bytes: 0 })
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> Result<tar::Header> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode & 0o7777);
        header.set_size(size);
        header.set_mtime(self.mtime);
        header.set_uid(self.owner.uid.into());
        header.set_gid(self.owner.gid.into());
        header.set_username(&self.owner.user).at("name the owner in", &self.temp.path)?;
        header.set_groupname(&self.owner.group).at("name the group in", &self.temp.path)?;
        Ok(header)
    }

    /// The name `rel` has in the manifest; the manifest's own name is refused (the callers leave
    /// out a file of that name that a data directory unpacked by `tar` holds).
    fn entry_name(&self, rel: &str) -> Result<String> {
        match normalize(rel.as_bytes()) {
            Some(name) if name != MANIFEST_NAME => Ok(name),
            _ => Err(Error::invalid(format!("export entry {rel:?}"), "not a name an export may hold")),
        }
    }

    /// Adds directory `rel` ("." for the data directory itself).
    pub fn dir(&mut self, rel: &str, mode: u32) -> Result<()> {
        let path = self.entry_name(rel)?;
        let mut header = self.header(tar::EntryType::Directory, mode, 0)?;
        self.tar.append_data(&mut header, rel, io::empty()).at("write", &self.temp.path)?;
        self.manifest.dirs.push(ManifestDir { path, mode: octal(mode) });
        Ok(())
    }

    /// Adds file `rel` holding `bytes`.
    pub fn bytes(&mut self, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let path = self.entry_name(rel)?;
        let mut header = self.header(tar::EntryType::Regular, mode, bytes.len() as u64)?;
        self.tar.append_data(&mut header, rel, bytes).at("write", &self.temp.path)?;
        self.data_bytes += bytes.len() as u64;
        self.manifest.files.push(ManifestFile {
            path,
            size: bytes.len() as u64,
            mode: octal(mode),
            sha256: sha256_hex(bytes),
        });
        Ok(())
    }

    /// Adds file `rel` of `size` bytes read from `source`: zeros after a short end (a file
    /// truncated while it was read; WAL replay restores it), nothing beyond `size`. `check` runs
    /// before each chunk and stops the export when it fails.
    pub fn file(
        &mut self,
        rel: &str,
        size: u64,
        mode: u32,
        source: impl Read,
        progress: &dyn Progress,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        let path = self.entry_name(rel)?;
        let mut header = self.header(tar::EntryType::Regular, mode, size)?;
        let mut reader = Exact::new(source, rel, size, progress, check);
        let written = self.tar.append_data(&mut header, rel, &mut reader);
        if let Some(error) = reader.failed.take() {
            return Err(error);
        }
        written.at("write", &self.temp.path)?;
        self.data_bytes += size;
        self.manifest.files.push(ManifestFile { path, size, mode: octal(mode), sha256: reader.digest.finish() });
        Ok(())
    }

    /// Appends the manifest, last; finishes the archive, the compression and the encryption,
    /// makes the file durable and renames it to its name. Returns the file's size.
    pub fn commit(mut self) -> Result<u64> {
        let path = self.temp.path.clone();
        let manifest = self.manifest.to_text();
        let mut header = self.header(tar::EntryType::Regular, 0o600, manifest.len() as u64)?;
        self.tar.append_data(&mut header, MANIFEST_NAME, manifest.as_bytes()).at("write", &path)?;
        let compressed = self.tar.into_inner().at("finish the archive in", &path)?;
        let sealed = compressed.finish().at("finish the compression of", &path)?;
        let file = sealed.finish().at("finish", &path)?;
        file.sync_all().at("fsync", &path)?;
        let size = file.metadata().at("stat", &path)?.len();
        drop(file);
        std::fs::rename(&path, &self.dest).at("rename into place", &self.dest)?;
        self.temp.committed = true;
        fsx::fsync_dir(self.dest.parent().unwrap_or(Path::new(".")))?;
        Ok(size)
    }
}

/// Reads exactly `left` bytes of `inner`, reporting progress and digesting what it returns; the
/// first error of `check` or of the source is kept in `failed` (tar only sees that the read
/// failed).
struct Exact<'a, R> {
    inner: R,
    rel: &'a str,
    left: u64,
    ended: bool,
    progress: &'a dyn Progress,
    check: &'a dyn Fn() -> Result<()>,
    failed: Option<Error>,
    digest: Hasher,
}

impl<'a, R> Exact<'a, R> {
    fn new(inner: R, rel: &'a str, left: u64, progress: &'a dyn Progress, check: &'a dyn Fn() -> Result<()>) -> Self {
        Exact { inner, rel, left, ended: false, progress, check, failed: None, digest: Hasher::default() }
    }
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if let Err(e) = (self.check)() {
            self.failed = Some(e);
            return Err(io::Error::other("interrupted"));
        }
        let want = buf.len().min(CHUNK).min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let got = if self.ended {
            0
        } else {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
                Err(e) => {
                    self.failed = Some(Error::io("read", self.rel, e));
                    return Err(io::Error::other("read failed"));
                }
            }
        };
        let n = if got == 0 {
            // Shorter than when it was listed: the rest reads as zeros.
            self.ended = true;
            buf[..want].fill(0);
            want
        } else {
            got
        };
        self.left -= n as u64;
        self.digest.update(&buf[..n]);
        self.progress.advance(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;

    #[test]
    fn names_tell_the_format() {
        let of = |name: &str, enc: bool| Compression::of_name(Path::new(name), enc);
        assert_eq!(of("/b/x.tar.lz4", false).unwrap(), Compression::Lz4);
        assert_eq!(of("x.tar.zst", false).unwrap(), Compression::Zstd);
        assert_eq!(of("x.tar.zst.age", true).unwrap(), Compression::Zstd);
        assert!(of("x.tar.lz4", true).is_err(), "an encrypted export must say so in its name");
        assert!(of("x.tar.lz4.age", false).is_err());
        assert!(of("x.tar.gz", false).is_err());
        assert!(of("x.lz4", false).is_err());
    }

    #[test]
    fn exact_pads_a_short_source_and_cuts_a_long_one() {
        let ok = || Ok(());
        let mut out = Vec::new();
        let mut short = Exact::new(&b"abc"[..], "a", 5, &Silent, &ok);
        short.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc\0\0");
        assert_eq!(short.digest.finish(), sha256_hex(b"abc\0\0"), "the digest is of what the archive holds");
        out.clear();
        let mut long = Exact::new(&b"abcdef"[..], "a", 4, &Silent, &ok);
        long.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcd");
    }

    #[test]
    fn an_uncommitted_sink_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.tar.lz4");
        let owner = EntryOwner::of_ids(0, 0);
        let mut sink = Sink::create(&dest, Compression::Lz4, None, owner, 0).unwrap();
        sink.bytes("PG_VERSION", b"18\n", 0o600).unwrap();
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn lz4_and_zstd_exports_hold_the_tar_stream() {
        for compression in [Compression::Lz4, Compression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join(format!("x{}", compression.extension()));
            let mut sink = Sink::create(&dest, compression, None, EntryOwner::of_ids(0, 0), 0).unwrap();
            sink.dir(".", 0o700).unwrap();
            sink.bytes("PG_VERSION", b"18\n", 0o600).unwrap();
            sink.file("base/1/1259", 9, 0o600, &b"123"[..], &Silent, &|| Ok(())).unwrap();
            sink.commit().unwrap();
            let packed = std::fs::read(&dest).unwrap();
            let tar_bytes = match compression {
                Compression::Lz4 => {
                    let mut out = Vec::new();
                    lz4_flex::frame::FrameDecoder::new(&packed[..]).read_to_end(&mut out).unwrap();
                    out
                }
                Compression::Zstd => zstd::decode_all(&packed[..]).unwrap(),
            };
            let mut archive = tar::Archive::new(&tar_bytes[..]);
            let names: Vec<(String, u64)> = archive
                .entries()
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.path().unwrap().display().to_string(), e.size())
                })
                .collect();
            assert_eq!(names[..3], [(".".to_string(), 0), ("PG_VERSION".into(), 3), ("base/1/1259".into(), 9)]);
            assert_eq!(names.len(), 4);
            assert_eq!(names[3].0, MANIFEST_NAME, "the manifest comes last");
        }
    }

    #[test]
    fn an_interrupted_file_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.tar.lz4");
        let mut sink = Sink::create(&dest, Compression::Lz4, None, EntryOwner::of_ids(0, 0), 0).unwrap();
        let stop = || Err(Error::refused("interrupted by SIGINT", None));
        let err = sink.file("a", 3, 0o600, &b"abc"[..], &Silent, &stop).unwrap_err();
        assert!(err.to_string().contains("interrupted by SIGINT"), "{err}");
    }
}
