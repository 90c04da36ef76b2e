//! The stanza record (`<stanza>/stanza.json`, enveloped but never encrypted): which cluster a stanza belongs to (system identifier,
//! version), how its objects are stored (compression, the wrapped data key), and its history
//! across `stanza-upgrade`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::codec::{Codec, Compression};
use crate::repo::crypto::{Passphrase, WrappedKey};
use crate::repo::keys::Layout;
use crate::repo::object::{self, Kind};
use crate::repo::storage::Storage;

/// One cluster a stanza has recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// pg_control's database system identifier.
    pub system_identifier: u64,
    /// Major version.
    pub pg_version: u32,
    /// When the stanza started recording this cluster.
    pub since: DateTime<Utc>,
}

/// The stanza record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StanzaRecord {
    /// Format version of this record.
    pub format: u32,
    /// The stanza name.
    pub name: String,
    /// The current cluster.
    pub current: ClusterIdentity,
    /// Earlier clusters (before stanza-upgrade), oldest first.
    pub history: Vec<ClusterIdentity>,
    /// Compression of objects.
    pub compression: Compression,
    /// The wrapped data key; `None` when the repository is not encrypted.
    pub key: Option<WrappedKey>,
    /// Whether the store honours exclusive create on its own (probed by stanza-create in object
    /// storage); `None` for a directory.
    #[serde(default)]
    pub exclusive_create: Option<bool>,
    /// The format of a repository pgfork reads but did not write (`pgbackrest`): its objects are
    /// made from that format as they are read, and each file is checked against that format's own
    /// checksum (SHA-1 of the whole file) before any byte of it is served, so runs and WAL carry no
    /// checksums of pgfork's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign: Option<String>,
}

/// Largest stanza record accepted.
const MAX_RECORD: usize = 1 << 20;

impl StanzaRecord {
    /// Reads the record of the stanza laid out by `layout`; `None` when the stanza does not
    /// exist. The record is never encrypted (it holds what opens the key) but is enveloped.
    pub fn load(storage: &dyn Storage, layout: &Layout) -> Result<Option<StanzaRecord>> {
        let key = layout.record();
        let Some(stored) = storage.get(&key)? else { return Ok(None) };
        let what = format!("stanza record {key} in {}", storage.location());
        let json = object::open(&Codec::plain(), Kind::StanzaRecord, key.as_bytes(), &stored, MAX_RECORD, &what)?;
        let record: StanzaRecord = serde_json::from_slice(&json).map_err(|e| Error::invalid(&what, e.to_string()))?;
        if record.name != layout.stanza() {
            return Err(Error::invalid(what, format!("it names stanza {}", record.name)));
        }
        Ok(Some(record))
    }

    /// Reads the record or refuses, naming the repository (and whether it exists at all), with a
    /// hint to create the stanza.
    pub fn require(storage: &dyn Storage, layout: &Layout) -> Result<StanzaRecord> {
        if let Some(record) = Self::load(storage, layout)? {
            return Ok(record);
        }
        let stanza = layout.stanza();
        let location = storage.location();
        Err(if storage.exists()? {
            Error::refused(
                format!("stanza {stanza} does not exist in the repository {location}"),
                Some("run: pgfork stanza-create".into()),
            )
        } else {
            Error::refused(
                format!("the repository {location} of stanza {stanza} does not exist"),
                Some("check the repository's path in the configuration, or run: pgfork stanza-create".into()),
            )
        })
    }

    /// Writes the record.
    pub fn save(&self, storage: &dyn Storage) -> Result<()> {
        let key = Layout::new(&self.name).record();
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::invalid(&key, e.to_string()))?;
        storage.put(&key, &object::seal(&Codec::plain(), Kind::StanzaRecord, key.as_bytes(), &json))
    }

    /// Whether this stanza is another tool's repository, read through pgfork's format.
    pub fn is_foreign(&self) -> bool {
        self.foreign.is_some()
    }

    /// Refuses a cluster that is not the stanza's current one.
    pub fn check_cluster(&self, system_identifier: u64, pg_version: u32) -> Result<()> {
        if system_identifier != self.current.system_identifier || pg_version != self.current.pg_version {
            return Err(Error::refused(
                format!(
                    "cluster (system identifier {system_identifier}, version {pg_version}) does not match stanza {} \
                     (system identifier {}, version {}): is this the correct stanza?",
                    self.name, self.current.system_identifier, self.current.pg_version
                ),
                Some("after a major upgrade or a new initdb, run pgfork stanza-upgrade".into()),
            ));
        }
        Ok(())
    }

    /// The codec for this stanza's objects, opening the data key with `passphrase` when encrypted.
    pub fn codec(&self, passphrase: Option<&Passphrase>) -> Result<Codec> {
        let cipher = match (&self.key, passphrase) {
            (None, _) => None,
            (Some(wrapped), Some(pass)) => Some(wrapped.unwrap_key(pass, &self.name)?.cipher()),
            (Some(_), None) => {
                return Err(Error::refused(
                    format!("the repository of stanza {} is encrypted and no passphrase was given", self.name),
                    Some("set PGFORK_PASSPHRASE or passphrase_file in the repository's configuration".into()),
                ));
            }
        };
        Ok(Codec::new(self.compression, cipher))
    }

    /// The cipher's name as `info` shows it.
    pub fn cipher_name(&self) -> &'static str {
        if self.key.is_some() { "aes-256-gcm" } else { "none" }
    }
}
