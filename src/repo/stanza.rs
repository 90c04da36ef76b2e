//! The stanza record (`<stanza>/stanza.json`): which cluster a stanza belongs to (system identifier,
//! version), how its objects are stored (compression, the wrapped data key), and its history
//! across `stanza-upgrade`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::codec::{Codec, Compression};
use crate::repo::crypto::{Passphrase, WrappedKey};
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
}

impl StanzaRecord {
    /// The object key of the record.
    pub fn key_of(stanza: &str) -> String {
        format!("{stanza}/stanza.json")
    }

    /// Reads the record of `stanza`; `None` when the stanza does not exist.
    pub fn load(storage: &dyn Storage, stanza: &str) -> Result<Option<StanzaRecord>> {
        let Some(bytes) = storage.get(&Self::key_of(stanza))? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::invalid(Self::key_of(stanza), e.to_string()))
    }

    /// Reads the record or refuses with a hint to create the stanza.
    pub fn require(storage: &dyn Storage, stanza: &str) -> Result<StanzaRecord> {
        Self::load(storage, stanza)?.ok_or_else(|| {
            Error::refused(
                format!("stanza {stanza} does not exist in the repository"),
                Some("run: pgfork stanza-create".into()),
            )
        })
    }

    /// Writes the record.
    pub fn save(&self, storage: &dyn Storage) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("a stanza record serializes");
        storage.put(&Self::key_of(&self.name), &bytes)
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
