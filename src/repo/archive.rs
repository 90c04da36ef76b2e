//! The WAL archive of a stanza: `<stanza>/archive/<timeline>/<file>` for segments, partial
//! segments, backup history files and timeline history files, encoded like every object. A file is
//! archived once: pushing the same content again succeeds, different content is refused.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::pg::lsn::{TimelineId, WalSegment, is_history_file};
use crate::repo::codec::Codec;
use crate::repo::storage::Storage;

/// Largest archived file accepted when decoding (1 GiB, the largest segment size).
const MAX_FILE: usize = 1 << 30;

/// What a WAL archive file is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    /// A complete segment.
    Segment,
    /// A partial segment left at a timeline switch (`….partial`).
    Partial,
    /// A backup history file (`….00000028.backup`).
    Backup,
    /// A timeline history file (`00000002.history`).
    History,
}

/// Classifies an archive file name and gives its timeline; `None` for anything else.
pub fn classify(name: &str) -> Option<(WalFileKind, TimelineId)> {
    let hex = |s: &str| s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let tli = |s: &str| u32::from_str_radix(&s[..8], 16).ok().map(TimelineId);
    if is_history_file(name) {
        return Some((WalFileKind::History, tli(name)?));
    }
    let base = name.get(..24)?;
    if !base.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let kind = match &name[24..] {
        "" => WalFileKind::Segment,
        ".partial" => WalFileKind::Partial,
        rest if rest.len() == 16 && rest.starts_with('.') && hex(&rest[1..9]) && &rest[9..] == ".backup" => {
            WalFileKind::Backup
        }
        _ => return None,
    };
    Some((kind, tli(base)?))
}

/// What pushing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored now.
    Stored,
    /// Already there with the same content.
    AlreadyArchived,
}

/// A stanza's WAL archive.
pub struct Archive<'a> {
    storage: &'a dyn Storage,
    codec: &'a Codec,
    stanza: &'a str,
}

impl<'a> Archive<'a> {
    /// The archive of `stanza`.
    pub fn new(storage: &'a dyn Storage, codec: &'a Codec, stanza: &'a str) -> Archive<'a> {
        Archive { storage, codec, stanza }
    }

    /// The object key of an archive file.
    pub fn key(&self, name: &str) -> Result<String> {
        let (_, tli) = classify(name)
            .ok_or_else(|| Error::invalid(format!("WAL file name {name:?}"), "not a WAL archive file"))?;
        Ok(format!("{}/archive/{:08X}/{name}", self.stanza, tli.0))
    }

    /// Stores `bytes` as `name`; the same content again is fine, different content is refused.
    pub fn push(&self, name: &str, bytes: &[u8]) -> Result<PushOutcome> {
        let key = self.key(name)?;
        if let Some(existing) = self.read(&key, name)? {
            if existing == bytes {
                return Ok(PushOutcome::AlreadyArchived);
            }
            return Err(Error::refused(
                format!("WAL file {name} is already archived in stanza {} with different content", self.stanza),
                Some("another cluster may be archiving into this stanza; check archive_command of every server".into()),
            ));
        }
        self.storage.put(&key, &self.codec.encode(key.as_bytes(), bytes))?;
        Ok(PushOutcome::Stored)
    }

    /// The content of `name`, or `None` when it is not archived.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.read(&self.key(name)?, name)
    }

    fn read(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(stored) = self.storage.get(key)? else { return Ok(None) };
        self.codec.decode(key.as_bytes(), &stored, MAX_FILE, &format!("archived WAL file {name}")).map(Some)
    }

    /// Every archived file name per timeline, sorted.
    pub fn list(&self) -> Result<BTreeMap<TimelineId, Vec<String>>> {
        let mut by_timeline: BTreeMap<TimelineId, Vec<String>> = BTreeMap::new();
        for key in self.storage.list(&format!("{}/archive/", self.stanza))? {
            let Some(name) = key.rsplit('/').next() else { continue };
            if let Some((_, tli)) = classify(name) {
                by_timeline.entry(tli).or_default().push(name.to_string());
            }
        }
        for names in by_timeline.values_mut() {
            names.sort();
        }
        Ok(by_timeline)
    }

    /// The archived file names of one timeline, sorted.
    pub fn list_timeline(&self, timeline: TimelineId) -> Result<Vec<String>> {
        let keys = self.storage.list(&format!("{}/archive/{:08X}/", self.stanza, timeline.0))?;
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|key| key.rsplit('/').next())
            .filter(|name| classify(name).is_some())
            .map(String::from)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Complete segments per timeline, by segment number.
    pub fn segments(&self, segment_size: u64) -> Result<BTreeMap<TimelineId, Vec<WalSegment>>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|(tli, names)| (tli, names.iter().filter_map(|n| WalSegment::parse(n, segment_size)).collect()))
            .collect())
    }

    /// Removes an archived file.
    pub fn delete(&self, name: &str) -> Result<()> {
        self.storage.delete(&self.key(name)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::codec::Compression;
    use crate::repo::storage::LocalStorage;

    #[test]
    fn classifies_archive_names() {
        assert_eq!(classify("000000010000000000000002"), Some((WalFileKind::Segment, TimelineId(1))));
        assert_eq!(classify("000000020000000000000002.partial"), Some((WalFileKind::Partial, TimelineId(2))));
        assert_eq!(classify("000000010000000000000002.00000028.backup"), Some((WalFileKind::Backup, TimelineId(1))));
        assert_eq!(classify("0000000A.history"), Some((WalFileKind::History, TimelineId(10))));
        for bad in ["x", "00000001000000000000000G", "000000010000000000000002.tmp", "archive_status"] {
            assert_eq!(classify(bad), None, "{bad}");
        }
    }

    #[test]
    fn pushes_are_idempotent_and_conflicts_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        let codec = Codec::new(Compression::Lz4, None);
        let archive = Archive::new(&storage, &codec, "main");
        let name = "000000010000000000000003";
        assert_eq!(archive.push(name, b"wal bytes").unwrap(), PushOutcome::Stored);
        assert_eq!(archive.push(name, b"wal bytes").unwrap(), PushOutcome::AlreadyArchived);
        let err = archive.push(name, b"other bytes").unwrap_err();
        assert!(err.to_string().contains("different content"));
        assert_eq!(archive.get(name).unwrap().unwrap(), b"wal bytes");
        assert_eq!(archive.get("000000010000000000000004").unwrap(), None);
        assert_eq!(archive.list().unwrap()[&TimelineId(1)], vec![name.to_string()]);
    }
}
