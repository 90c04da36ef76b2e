//! The repository handle: one stanza of a repository, opened. It holds the storage, the keys
//! ([`Layout`]), the stanza record and the codec with its unwrapped key; every object of the
//! stanza is read and written through it, sealed in the envelope of [`crate::repo::object`].

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::CipherKind;
use crate::error::{Error, Result};
use crate::repo::archive::Archive;
use crate::repo::codec::Codec;
use crate::repo::crypto::Passphrase;
use crate::repo::keys::Layout;
use crate::repo::label::SetLabel;
use crate::repo::manifest::Manifest;
use crate::repo::object::{self, Kind};
use crate::repo::pack::PackSink;
use crate::repo::read::RunReader;
use crate::repo::stanza::StanzaRecord;
use crate::repo::storage::Storage;

/// Largest manifest plaintext accepted (bounds allocation on corrupt input).
const MAX_MANIFEST: usize = 2 << 30;

/// How to open a stanza: what the configuration says of its encryption.
#[derive(Debug, Clone)]
pub struct Access {
    /// The cipher the configuration names.
    pub cipher: CipherKind,
    /// The passphrase, for an encrypted repository.
    pub passphrase: Option<Passphrase>,
}

/// A stanza of a repository, opened.
pub struct Repo {
    storage: Arc<dyn Storage>,
    layout: Layout,
    record: StanzaRecord,
    codec: Codec,
}

impl Repo {
    /// Opens `stanza` in `storage`: reads its record (refusing a missing repository or stanza,
    /// naming where it looked), checks the configured cipher against the record and unwraps the
    /// data key.
    pub fn open(storage: Arc<dyn Storage>, stanza: &str, access: &Access) -> Result<Repo> {
        let layout = Layout::new(stanza);
        let record = StanzaRecord::require(storage.as_ref(), &layout)?;
        let recorded = if record.key.is_some() { CipherKind::Aes256Gcm } else { CipherKind::None };
        // A foreign repository's own encryption is the reader's business, not the record's.
        if recorded != access.cipher && !record.is_foreign() {
            return Err(Error::refused(
                format!(
                    "stanza {stanza} in {} was created with cipher {}, but the configuration says cipher = {}",
                    storage.location(),
                    recorded.name(),
                    access.cipher.name()
                ),
                Some(format!("set cipher = \"{}\" for this repository in the configuration", recorded.name())),
            ));
        }
        let codec = record.codec(access.passphrase.as_ref())?;
        if let Some(honoured) = record.exclusive_create {
            storage.set_exclusive_create(honoured);
        }
        Ok(Repo { storage, layout, record, codec })
    }

    /// The storage.
    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    /// A shared reference to the storage.
    pub fn storage_arc(&self) -> Arc<dyn Storage> {
        Arc::clone(&self.storage)
    }

    /// The stanza's keys.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The stanza's name.
    pub fn name(&self) -> &str {
        self.layout.stanza()
    }

    /// The stanza record.
    pub fn record(&self) -> &StanzaRecord {
        &self.record
    }

    /// How objects are encoded.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The WAL archive.
    pub fn archive(&self) -> Archive<'_> {
        Archive::new(self)
    }

    /// Reads runs and the WAL sets carry.
    pub fn runs(&self) -> RunReader<'_> {
        RunReader::new(self)
    }

    /// Where the runs of the new set `label` go.
    pub fn packs(&self, label: &SetLabel) -> PackSink<'_> {
        PackSink::new(self, label)
    }

    /// Seals `plaintext` as an object of `kind` and puts it at `key`; returns the bytes stored.
    pub fn put_object(&self, kind: Kind, key: &str, plaintext: &[u8]) -> Result<u64> {
        let sealed = object::seal(&self.codec, kind, key.as_bytes(), plaintext);
        self.storage.put(key, &sealed)?;
        Ok(sealed.len() as u64)
    }

    /// Seals and creates the object only if `key` is free; `Ok(false)` when an object is there.
    pub fn put_new_object(&self, kind: Kind, key: &str, plaintext: &[u8]) -> Result<bool> {
        self.storage.put_new(key, &object::seal(&self.codec, kind, key.as_bytes(), plaintext))
    }

    /// The object of `kind` at `key`, opened and checked; `None` when absent. `what` names it in
    /// errors.
    pub fn get_object(&self, kind: Kind, key: &str, max_len: usize, what: &str) -> Result<Option<Vec<u8>>> {
        let Some(stored) = self.storage.get(key)? else { return Ok(None) };
        self.open_object(kind, key, &stored, max_len, what).map(Some)
    }

    /// Opens stored bytes of the object at `key`.
    pub fn open_object(&self, kind: Kind, key: &str, stored: &[u8], max_len: usize, what: &str) -> Result<Vec<u8>> {
        object::open(&self.codec, kind, key.as_bytes(), stored, max_len, what)
    }

    /// Every set in the stanza, oldest first, with whether it is committed (has its manifest),
    /// from one listing.
    pub fn list_sets(&self) -> Result<Vec<(SetLabel, bool)>> {
        let mut sets: std::collections::BTreeMap<SetLabel, bool> = std::collections::BTreeMap::new();
        for object in self.storage.list(&self.layout.sets())? {
            let Some(label) = self.layout.set_of(&object.key) else { continue };
            let committed = object.key == self.layout.manifest(&label);
            *sets.entry(label).or_default() |= committed;
        }
        Ok(sets.into_iter().collect())
    }

    /// Labels of committed sets, oldest first.
    pub fn labels(&self) -> Result<Vec<SetLabel>> {
        Ok(self.list_sets()?.into_iter().filter(|(_, committed)| *committed).map(|(l, _)| l).collect())
    }

    /// A set's manifest; `None` when the set has none (absent or never committed).
    pub fn load_manifest(&self, label: &SetLabel) -> Result<Option<Manifest>> {
        let key = self.layout.manifest(label);
        let what = format!("manifest of backup {label}");
        let Some(json) = self.get_object(Kind::Manifest, &key, MAX_MANIFEST, &what)? else { return Ok(None) };
        Manifest::from_json(&json, label, &what).map(Some)
    }

    /// The manifest of `label`; refused when the set does not exist.
    pub fn manifest(&self, label: &SetLabel) -> Result<Manifest> {
        self.load_manifest(label)?.ok_or_else(|| {
            Error::refused(
                format!("backup {label} does not exist in stanza {}", self.name()),
                Some("list the sets with pgfork info".into()),
            )
        })
    }

    /// Puts the manifest: this commits the set.
    pub fn save(&self, manifest: &Manifest) -> Result<()> {
        self.put_object(Kind::Manifest, &self.layout.manifest(&manifest.label), &manifest.to_json()).map(drop)
    }

    /// Every committed manifest that can be read, oldest first, and the sets that cannot (with the
    /// reason): retention must go on around a damaged set, and must not remove it blindly.
    pub fn readable_manifests(&self) -> Result<Readable> {
        let mut readable = Readable::default();
        for label in self.labels()? {
            match self.manifest(&label) {
                Ok(manifest) => readable.manifests.push(manifest),
                Err(e) => readable.unreadable.push((label, e.to_string())),
            }
        }
        Ok(readable)
    }

    /// Removes set directories that have no manifest (what a crashed or killed backup left) and
    /// temporaries of dead writers. Call with the lock held. Returns the labels removed.
    pub fn remove_uncommitted(&self) -> Result<Vec<SetLabel>> {
        let mut removed = Vec::new();
        for (label, committed) in self.list_sets()? {
            if !committed {
                self.storage.delete_prefix(&self.layout.set(&label))?;
                removed.push(label);
            }
        }
        self.storage.remove_stale(&self.layout.root())?;
        Ok(removed)
    }

    /// Removes a set: its manifest first, so from then on the set no longer exists whatever
    /// remains, then the rest.
    pub fn remove_set(&self, label: &SetLabel) -> Result<()> {
        self.storage.delete(&self.layout.manifest(label))?;
        self.storage.delete_prefix(&self.layout.set(label))
    }
}

/// The sets of a stanza split by whether their manifest can be read.
#[derive(Debug, Default)]
pub struct Readable {
    /// Readable manifests, oldest first.
    pub manifests: Vec<Manifest>,
    /// Unreadable sets and why.
    pub unreadable: Vec<(SetLabel, String)>,
}

impl Readable {
    /// The unreadable set a readable one may depend on, if any: its own full (same full part of
    /// the label) or a set it names as prior or reference.
    pub fn damaged_dependency(&self, manifest: &Manifest) -> Option<&SetLabel> {
        self.unreadable.iter().map(|(bad, _)| bad).find(|bad| {
            bad.full_part() == manifest.label.full_part()
                || manifest.references.iter().chain(manifest.prior.iter()).any(|d| d == *bad)
        })
    }

    /// Removes from `remove` every set that may depend on an unreadable one: its dependencies are
    /// unknown, so it is kept until the damaged set is repaired or removed by hand.
    pub fn protect(&self, remove: &mut BTreeSet<SetLabel>) {
        remove
            .retain(|label| !self.manifests.iter().any(|m| &m.label == label && self.damaged_dependency(m).is_some()));
    }
}

/// A repository with one stanza `main` in `dir` (encrypted or not), for unit tests.
#[cfg(test)]
pub fn test_repo(dir: &std::path::Path, encrypted: bool) -> Repo {
    use crate::repo::codec::Compression;
    use crate::repo::crypto::DataKey;
    use crate::repo::stanza::ClusterIdentity;
    let storage: Arc<dyn Storage> = Arc::new(crate::repo::storage::LocalStorage::new(dir));
    let passphrase = Passphrase::new("test pass");
    let record = StanzaRecord {
        format: u32::from(object::FORMAT),
        name: "main".into(),
        current: ClusterIdentity { system_identifier: 7, pg_version: 18, since: chrono::Utc::now() },
        history: Vec::new(),
        compression: Compression::Lz4,
        key: encrypted.then(|| DataKey::generate().wrap(&passphrase).unwrap()),
        exclusive_create: None,
        foreign: None,
    };
    record.save(storage.as_ref()).unwrap();
    let cipher = if encrypted { CipherKind::Aes256Gcm } else { CipherKind::None };
    Repo::open(storage, "main", &Access { cipher, passphrase: encrypted.then_some(passphrase) }).unwrap()
}
