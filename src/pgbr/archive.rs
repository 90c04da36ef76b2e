//! The WAL archive: `archive/<stanza>/<version>-<history id>/` holds timeline history files, and
//! below `<first 16 characters>/` the segments (`<name>-<sha1>[.<ext>]`, `.partial` ones too) and
//! backup history files. Archive ids are searched newest first among the current cluster's; files
//! are encrypted with `archive.info`'s passphrase and compressed as their extension says.

use std::collections::BTreeMap;

use super::PgbrStanza;
use super::cipher::decrypt;
use super::compress::{CompressType, decompress};
use super::ini::sha1_hex;
use crate::error::{Error, Result};
use crate::pg::lsn::is_segment_name;

/// Largest WAL segment PostgreSQL allows.
const MAX_SEGMENT: u64 = 1 << 30;
/// Smallest WAL segment PostgreSQL allows.
const MIN_SEGMENT: u64 = 1 << 20;

/// What an archived file's PostgreSQL name says about where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A segment or `.partial` segment: stored as `<name>-<sha1>[.ext]` in the 16-character directory.
    Segment { dir: String },
    /// A `.backup` file: stored as named in the 16-character directory.
    Backup { dir: String },
    /// A `.history` file: stored as named at the archive id's top.
    History,
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn classify(name: &str) -> Option<Kind> {
    let dir = || name.get(..16).map(str::to_string);
    if is_segment_name(name) || name.strip_suffix(".partial").is_some_and(is_segment_name) {
        return Some(Kind::Segment { dir: dir()? });
    }
    if let Some(stem) = name.strip_suffix(".backup")
        && let Some((segment, offset)) = stem.split_once('.')
        && is_segment_name(segment)
        && is_hex(offset, 8)
    {
        return Some(Kind::Backup { dir: dir()? });
    }
    if name.strip_suffix(".history").is_some_and(|tli| is_hex(tli, 8)) {
        return Some(Kind::History);
    }
    None
}

/// Splits a stored segment file name into PostgreSQL's name, the SHA-1 and the compression.
fn parse_stored(file: &str) -> Option<(&str, &str, CompressType)> {
    let (name, rest) = file.split_once('-')?;
    let (sha1, compress) = match rest.split_once('.') {
        None => (rest, CompressType::None),
        Some((sha1, ext)) => (sha1, CompressType::from_extension(ext).filter(|c| *c != CompressType::None)?),
    };
    let plain = is_segment_name(name) || name.strip_suffix(".partial").is_some_and(is_segment_name);
    let lower = sha1.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (plain && sha1.len() == 40 && lower).then_some((name, sha1, compress))
}

/// See [`PgbrStanza::archive_get`].
pub(super) fn get(stanza: &PgbrStanza, name: &str) -> Result<Option<Vec<u8>>> {
    let what = format!("archived {name} of stanza {}", stanza.stanza);
    let kind = classify(name).ok_or_else(|| {
        Error::invalid(format!("archive file name {name:?}"), "not a WAL segment, .partial, .backup or .history name")
    })?;
    for archive_id in stanza.archive.search_order() {
        let root = format!("archive/{}/{archive_id}", stanza.stanza);
        match &kind {
            Kind::History | Kind::Backup { .. } => {
                let key = match &kind {
                    Kind::Backup { dir } => format!("{root}/{dir}/{name}"),
                    _ => format!("{root}/{name}"),
                };
                if let Some(stored) = stanza.storage.get(&key)? {
                    return open(stanza, &stored, CompressType::None, &format!("{what} ({key})")).map(Some);
                }
            }
            Kind::Segment { dir } => {
                let prefix = format!("{root}/{dir}/");
                let found: Vec<_> = stanza
                    .storage
                    .list(&prefix)?
                    .into_iter()
                    .filter_map(|object| {
                        let file = object.key.strip_prefix(&prefix)?.to_string();
                        let (stored_name, sha1, compress) = parse_stored(&file)?;
                        (stored_name == name).then(|| (object.key.clone(), sha1.to_string(), compress))
                    })
                    .collect();
                let (key, sha1, compress) = match found.as_slice() {
                    [] => continue,
                    [one] => one.clone(),
                    several => {
                        let keys: Vec<&str> = several.iter().map(|(k, _, _)| k.as_str()).collect();
                        return Err(Error::invalid(
                            what,
                            format!("duplicates found in the archive: {}", keys.join(", ")),
                        ));
                    }
                };
                let Some(stored) = stanza.storage.get(&key)? else { continue };
                let what = format!("{what} ({key})");
                let plain = open(stanza, &stored, compress, &what)?;
                let found = sha1_hex(&plain);
                if found != sha1 {
                    return Err(Error::invalid(what, format!("SHA-1 mismatch (name says {sha1}, content {found})")));
                }
                let size = plain.len() as u64;
                if !size.is_power_of_two() || !(MIN_SEGMENT..=MAX_SEGMENT).contains(&size) {
                    return Err(Error::invalid(what, format!("{size} bytes is not a WAL segment size")));
                }
                return Ok(Some(plain));
            }
        }
    }
    Ok(None)
}

/// Decrypts (when the archive is encrypted) and decompresses one archived file.
fn open(stanza: &PgbrStanza, stored: &[u8], compress: CompressType, what: &str) -> Result<Vec<u8>> {
    let decrypted;
    let data = match &stanza.archive.cipher_pass {
        Some(pass) => {
            decrypted = decrypt(stored, pass, false).map_err(|e| Error::invalid(what, e.to_string()))?;
            &decrypted[..]
        }
        None => stored,
    };
    decompress(compress, data, false, MAX_SEGMENT).map_err(|e| Error::invalid(what, format!("cannot decode: {e}")))
}

/// See [`PgbrStanza::archive_files`].
pub(super) fn list(stanza: &PgbrStanza) -> Result<Vec<ArchivedFile>> {
    let mut names: BTreeMap<String, ArchivedFile> = BTreeMap::new();
    for archive_id in stanza.archive.search_order() {
        let prefix = format!("archive/{}/{archive_id}/", stanza.stanza);
        for object in stanza.storage.list(&prefix)? {
            let Some(rel) = object.key.strip_prefix(&prefix) else { continue };
            let name = match rel.split_once('/') {
                None => Some(rel).filter(|n| classify(n) == Some(Kind::History)),
                Some((dir, file)) => parse_stored(file)
                    .map(|(name, _, _)| name)
                    .or_else(|| Some(file).filter(|f| matches!(classify(f), Some(Kind::Backup { .. }))))
                    .filter(|name| name.get(..16) == Some(dir)),
            };
            if let Some(name) = name {
                let file = ArchivedFile { name: name.to_string(), stored: object.size, modified: object.modified };
                names.entry(file.name.clone()).or_insert(file);
            }
        }
    }
    Ok(names.into_values().collect())
}

/// An archived file: PostgreSQL's name, the bytes pgBackRest stored, when it was archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    /// PostgreSQL's name (without pgBackRest's `-<sha1>.<ext>`).
    pub name: String,
    /// Bytes stored.
    pub stored: u64,
    /// When it was stored.
    pub modified: std::time::SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        let dir = || "0000000100000000".to_string();
        assert_eq!(classify("000000010000000000000003"), Some(Kind::Segment { dir: dir() }));
        assert_eq!(classify("000000010000000000000003.partial"), Some(Kind::Segment { dir: dir() }));
        assert_eq!(classify("000000010000000000000003.00000028.backup"), Some(Kind::Backup { dir: dir() }));
        assert_eq!(classify("00000002.history"), Some(Kind::History));
        for bad in ["", "0000000100000000000000", "00000002.histor", "../../x", "000000010000000000000003.x.backup"] {
            assert_eq!(classify(bad), None, "{bad}");
        }
    }

    #[test]
    fn stored_names_are_parsed() {
        let sha = "9387997e62d8dbd1ee338f95c6c5e157e0151f52";
        let gz = format!("000000010000000000000003-{sha}.gz");
        assert_eq!(parse_stored(&gz), Some(("000000010000000000000003", sha, CompressType::Gz)));
        let plain = format!("000000010000000000000003.partial-{sha}");
        assert_eq!(parse_stored(&plain), Some(("000000010000000000000003.partial", sha, CompressType::None)));
        assert_eq!(parse_stored(&format!("000000010000000000000003-{sha}.xz")), None);
        assert_eq!(parse_stored(&format!("000000010000000000000003-{sha}.none")), None);
        assert_eq!(parse_stored("000000010000000000000003.00000028.backup"), None);
        assert_eq!(parse_stored(&format!("000000010000000000000003-{}", sha.to_uppercase())), None);
    }
}
