//! The manifest of an export: the last entry of the archive, `pgfork-export.manifest` at the top of
//! the data directory, a JSON document naming its digest (SHA-256), the owner the entries name,
//! every directory with its mode and every regular file with its size, mode and digest, and last
//! the SHA-256 of the text before it (so damage to the manifest is told from damage to a file). Written
//! last, it is missing from a truncated export; `export --check` and `export --extract` read the
//! archive against it. PostgreSQL ignores the file when the archive is unpacked with `tar`
//! (unknown files at the top of a data directory are none of its business), and the copies pgfork
//! makes of a data directory leave it out (`pg::layout`), so an export of a cluster that came from
//! an export never holds two.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The manifest's name, relative to the data directory.
pub const MANIFEST_NAME: &str = crate::pg::layout::EXPORT_MANIFEST;

/// What the manifest's `format` says.
pub const FORMAT: &str = "pgfork-export-manifest";

/// The manifest's layout version.
pub const VERSION: u32 = 1;

/// The digest of every file, as the manifest names it.
pub const DIGEST: &str = "sha256";

/// The manifest's last field: the SHA-256 of the text before it.
const SELF_DIGEST: &[u8] = b"\"manifest_sha256\":";

/// The largest manifest a reader accepts (a million files take about 150 MB).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 30;

/// Who the archive's entries belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestOwner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// User name.
    pub user: String,
    /// Group name.
    pub group: String,
}

/// A directory of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDir {
    /// Path relative to the data directory ("." for itself).
    pub path: String,
    /// Permission bits, in octal ("0700").
    pub mode: String,
}

/// A regular file of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the data directory.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Permission bits, in octal ("0600").
    pub mode: String,
    /// SHA-256 of the content, in hex.
    pub sha256: String,
}

/// The manifest of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportManifest {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The digest algorithm of `files[].sha256`: [`DIGEST`].
    pub digest: String,
    /// Who the entries belong to (`tar -x` as root gives them to this user).
    pub owner: ManifestOwner,
    /// Every directory, in archive order.
    pub dirs: Vec<ManifestDir>,
    /// Every regular file but the manifest, in archive order.
    pub files: Vec<ManifestFile>,
}

impl ExportManifest {
    /// An empty manifest for entries belonging to `owner`.
    pub fn new(owner: ManifestOwner) -> ExportManifest {
        ExportManifest {
            format: FORMAT.into(),
            version: VERSION,
            digest: DIGEST.into(),
            owner,
            dirs: Vec::new(),
            files: Vec::new(),
        }
    }

    /// The manifest as written: JSON with one directory or file a line, so that it reads (and
    /// greps) as a listing, ending with `"manifest_sha256"`: the SHA-256 of every byte before it.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{{\"format\":{},\"version\":{},\"digest\":{},\"owner\":{},\n\"dirs\":[",
            json(&self.format),
            self.version,
            json(&self.digest),
            json(&self.owner)
        );
        let lines: Vec<String> = self.dirs.iter().map(json).collect();
        if !lines.is_empty() {
            out.push('\n');
            out.push_str(&lines.join(",\n"));
        }
        out.push_str("],\n\"files\":[");
        let lines: Vec<String> = self.files.iter().map(json).collect();
        if !lines.is_empty() {
            out.push('\n');
            out.push_str(&lines.join(",\n"));
        }
        out.push_str("],\n");
        let own = sha256_hex(out.as_bytes());
        out.push_str(&format!("{}\"{own}\"}}\n", std::str::from_utf8(SELF_DIGEST).unwrap_or_default()));
        out
    }

    /// Whether `text` ends with the SHA-256 of what comes before, as [`ExportManifest::to_text`]
    /// writes it: `false` for a damaged manifest.
    pub fn intact(text: &[u8]) -> bool {
        let Some(at) = text.windows(SELF_DIGEST.len()).rposition(|w| w == SELF_DIGEST) else { return false };
        let digest = text.get(at + SELF_DIGEST.len() + 1..at + SELF_DIGEST.len() + 65);
        digest == Some(sha256_hex(&text[..at]).as_bytes())
    }

    /// Parses a manifest, refusing one that is not [`intact`](ExportManifest::intact), or of
    /// another format, version or digest.
    pub fn parse(text: &[u8]) -> Result<ExportManifest> {
        if !ExportManifest::intact(text) {
            return Err(Error::invalid(MANIFEST_NAME, "damaged: its own SHA-256 differs"));
        }
        let manifest: ExportManifest =
            serde_json::from_slice(text).map_err(|e| Error::invalid(MANIFEST_NAME, format!("not readable ({e})")))?;
        if manifest.format != FORMAT || manifest.version != VERSION {
            return Err(Error::invalid(
                MANIFEST_NAME,
                format!(
                    "format {} version {}, this pgfork reads {FORMAT} version {VERSION}",
                    manifest.format, manifest.version
                ),
            ));
        }
        if manifest.digest != DIGEST {
            return Err(Error::invalid(
                MANIFEST_NAME,
                format!("digest {}, this pgfork knows {DIGEST}", manifest.digest),
            ));
        }
        Ok(manifest)
    }
}

/// One part of the manifest as compact JSON (plain strings and numbers: it cannot fail).
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Permission bits as the manifest writes them.
pub fn octal(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// Permission bits from the manifest's octal.
pub fn parse_octal(text: &str) -> Option<u32> {
    u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o7777)
}

/// A digest as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A running SHA-256.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest, in hex.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

/// The path of an archive entry as pgfork names it: relative, `/`-separated, without `./` in front
/// or `/` behind, `.` for the data directory itself; `None` for an absolute path, one going up
/// (`..`), an empty one or one that is not UTF-8 — never anything that could land outside the
/// directory it is unpacked into.
pub fn normalize(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    if text.starts_with('/') || text.contains('\0') {
        return None;
    }
    let parts: Vec<&str> = text.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.contains(&"..") {
        return None;
    }
    if parts.is_empty() {
        // "." or "./": the data directory; an empty name is no entry.
        return (!text.is_empty()).then(|| ".".to_string());
    }
    Some(parts.join("/"))
}

/// Reads `reader` to its end into memory, refusing more than `limit` bytes (checked before each
/// allocation grows past it).
pub fn read_bounded(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let read = reader.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    if read as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("longer than {limit} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_as_a_listing() {
        let mut manifest =
            ExportManifest::new(ManifestOwner { uid: 26, gid: 26, user: "postgres".into(), group: "postgres".into() });
        manifest.dirs.push(ManifestDir { path: ".".into(), mode: octal(0o700) });
        manifest.dirs.push(ManifestDir { path: "base".into(), mode: octal(0o700) });
        manifest.files.push(ManifestFile {
            path: "PG_VERSION".into(),
            size: 3,
            mode: octal(0o600),
            sha256: sha256_hex(b"18\n"),
        });
        let text = manifest.to_text();
        assert!(text.contains("\n{\"path\":\"PG_VERSION\",\"size\":3,\"mode\":\"0600\",\"sha256\":\""), "{text}");
        assert_eq!(ExportManifest::parse(text.as_bytes()).unwrap(), manifest);
        let empty = ExportManifest::new(manifest.owner.clone());
        assert_eq!(ExportManifest::parse(empty.to_text().as_bytes()).unwrap(), empty);

        let body = &text.as_bytes()[..text.len() - 86];
        let own = format!("],\n\"manifest_sha256\":\"{}\"}}\n", sha256_hex(body));
        assert!(text.ends_with(&own), "the manifest ends with the digest of what comes before: {text}");
        let other = text.replace("\"sha256\",", "\"md5\",");
        assert!(ExportManifest::parse(other.as_bytes()).unwrap_err().to_string().contains("own SHA-256 differs"));
        let body = &other[..other.rfind("\"manifest_sha256\"").unwrap()];
        let resealed = format!("{body}\"manifest_sha256\":\"{}\"}}\n", sha256_hex(body.as_bytes()));
        assert!(ExportManifest::parse(resealed.as_bytes()).unwrap_err().to_string().contains("md5"));
        let flipped = text.replacen("PG_VERSION", "PG_VERSIOM", 1);
        assert!(ExportManifest::parse(flipped.as_bytes()).unwrap_err().to_string().contains("damaged"));
        assert!(ExportManifest::parse(&text.as_bytes()[..text.len() / 2]).is_err());
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "the digest sha256sum prints"
        );
        assert_eq!((parse_octal("0700"), parse_octal("17777"), parse_octal("x")), (Some(0o700), None, None));
    }

    #[test]
    fn names_stay_inside_the_directory() {
        assert_eq!(normalize(b".").as_deref(), Some("."));
        assert_eq!(normalize(b"./").as_deref(), Some("."));
        assert_eq!(normalize(b"base/").as_deref(), Some("base"));
        assert_eq!(normalize(b"./base//1/1259").as_deref(), Some("base/1/1259"));
        for bad in [&b"/etc/passwd"[..], b"../x", b"base/../../x", b"", b"a\0b", b"\xff"] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bounded_reads_refuse_more() {
        assert_eq!(read_bounded(&b"abc"[..], 3).unwrap(), b"abc");
        assert!(read_bounded(&b"abcd"[..], 3).is_err());
    }
}
