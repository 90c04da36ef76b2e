//! The WAL archive of a stanza: `<stanza>/archive/<timeline>/<file>` for segments, partial
//! segments, backup history files and timeline history files, encoded like every object. A file is
//! archived once: pushing the same content again succeeds, different content is refused.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::pg::lsn::{TimelineId, WalSegment, is_history_file};
use crate::repo::handle::Repo;
use crate::repo::object::Kind;
use crate::repo::storage::ObjectMeta;

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
    fn hex8(bytes: &[u8]) -> Option<u32> {
        if bytes.len() != 8 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(bytes).ok()?, 16).ok()
    }
    let bytes = name.as_bytes();
    if is_history_file(name) {
        return Some((WalFileKind::History, TimelineId(hex8(bytes.get(..8)?)?)));
    }
    let (base, rest) = (bytes.get(..24)?, bytes.get(24..)?);
    if !base.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let kind = match rest {
        b"" => WalFileKind::Segment,
        b".partial" => WalFileKind::Partial,
        [b'.', offset @ .., b'.', b'b', b'a', b'c', b'k', b'u', b'p'] if hex8(offset).is_some() => WalFileKind::Backup,
        _ => return None,
    };
    Some((kind, TimelineId(hex8(base.get(..8)?)?)))
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
    repo: &'a Repo,
}

impl<'a> Archive<'a> {
    /// The archive of `repo`'s stanza.
    pub fn new(repo: &'a Repo) -> Archive<'a> {
        Archive { repo }
    }

    /// The object key of an archive file.
    pub fn key(&self, name: &str) -> Result<String> {
        self.repo.layout().archived(name)
    }

    /// Stores `bytes` as `name` with an exclusive create, so that of two concurrent pushes of one
    /// name exactly one stores its content; the other (and any later push) compares: the same
    /// content is fine, different content is refused.
    pub fn push(&self, name: &str, bytes: &[u8]) -> Result<PushOutcome> {
        let key = self.key(name)?;
        // A killed push leaves its temporary beside the archived files: the next one removes it.
        self.repo.storage().remove_stale(key.strip_suffix(name).unwrap_or(&key))?;
        if self.repo.put_new_object(Kind::Wal, &key, bytes)? {
            return Ok(PushOutcome::Stored);
        }
        let existing = self.read(&key, name)?;
        if existing.as_deref() == Some(bytes) {
            return Ok(PushOutcome::AlreadyArchived);
        }
        Err(Error::refused(
            format!("WAL file {name} is already archived in stanza {} with different content", self.repo.name()),
            Some("another cluster may be archiving into this stanza; check archive_command of every server".into()),
        ))
    }

    /// The content of `name`, checked, or `None` when it is not archived.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.read(&self.key(name)?, name)
    }

    fn read(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let what = format!("archived WAL file {name} of stanza {}", self.repo.name());
        self.repo.get_object(Kind::Wal, key, MAX_FILE, &what)
    }

    /// Every archived file per timeline, sorted, with its size and time.
    pub fn list(&self) -> Result<BTreeMap<TimelineId, Vec<ArchivedFile>>> {
        let mut by_timeline: BTreeMap<TimelineId, Vec<ArchivedFile>> = BTreeMap::new();
        for object in self.repo.storage().list(&self.repo.layout().archive())? {
            if let Some(file) = ArchivedFile::from_meta(object) {
                by_timeline.entry(file.timeline).or_default().push(file);
            }
        }
        for files in by_timeline.values_mut() {
            files.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(by_timeline)
    }

    /// The archived files of one timeline, sorted.
    pub fn list_timeline(&self, timeline: TimelineId) -> Result<Vec<ArchivedFile>> {
        let objects = self.repo.storage().list(&self.repo.layout().archive_timeline(timeline))?;
        let mut files: Vec<ArchivedFile> = objects.into_iter().filter_map(ArchivedFile::from_meta).collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// Complete segments per timeline, by segment number.
    pub fn segments(&self, segment_size: u64) -> Result<BTreeMap<TimelineId, Vec<WalSegment>>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|(tli, files)| (tli, files.iter().filter_map(|f| WalSegment::parse(&f.name, segment_size)).collect()))
            .collect())
    }

    /// Removes an archived file.
    pub fn delete(&self, name: &str) -> Result<()> {
        self.repo.storage().delete(&self.key(name)?)
    }
}

/// One file of the archive as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: WalFileKind,
    /// Its timeline.
    pub timeline: TimelineId,
    /// Stored size (encoded).
    pub stored: u64,
    /// When it was archived.
    pub modified: std::time::SystemTime,
}

impl ArchivedFile {
    fn from_meta(object: ObjectMeta) -> Option<ArchivedFile> {
        let name = object.key.rsplit('/').next()?;
        let (kind, timeline) = classify(name)?;
        Some(ArchivedFile { name: name.to_string(), kind, timeline, stored: object.size, modified: object.modified })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::handle::test_repo;

    #[test]
    fn classifies_archive_names() {
        assert_eq!(classify("000000010000000000000002"), Some((WalFileKind::Segment, TimelineId(1))));
        assert_eq!(classify("000000020000000000000002.partial"), Some((WalFileKind::Partial, TimelineId(2))));
        assert_eq!(classify("000000010000000000000002.00000028.backup"), Some((WalFileKind::Backup, TimelineId(1))));
        assert_eq!(classify("0000000A.history"), Some((WalFileKind::History, TimelineId(10))));
        for bad in [
            "x",
            "00000001000000000000000G",
            "000000010000000000000002.tmp",
            "archive_status",
            "000000010000000000000002.0000002é.backup",
            "0000000é.history",
            "00000001000000000000000é",
        ] {
            assert_eq!(classify(bad), None, "{bad}");
        }
    }

    #[test]
    fn pushes_are_idempotent_and_conflicts_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = test_repo(dir.path(), false);
        let archive = repo.archive();
        let name = "000000010000000000000003";
        assert_eq!(archive.push(name, b"wal bytes").unwrap(), PushOutcome::Stored);
        assert_eq!(archive.push(name, b"wal bytes").unwrap(), PushOutcome::AlreadyArchived);
        let err = archive.push(name, b"other bytes").unwrap_err();
        assert!(err.to_string().contains("different content"));
        assert_eq!(archive.get(name).unwrap().unwrap(), b"wal bytes");
        assert_eq!(archive.get("000000010000000000000004").unwrap(), None);
        let listed: Vec<String> = archive.list().unwrap()[&TimelineId(1)].iter().map(|f| f.name.clone()).collect();
        assert_eq!(listed, vec![name.to_string()]);
    }

    proptest::proptest! {
        #[test]
        fn any_name_classifies_without_panic(name in "\\PC{0,48}") {
            let _ = classify(&name);
        }
    }
}
