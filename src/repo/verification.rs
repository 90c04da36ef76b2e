//! The record of a set's latest verification (`<stanza>/backup/<label>/verification`), written by
//! `verify` and shown by `info`. It lives inside the set, so removing the set removes it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::codec::Codec;
use crate::repo::label::SetLabel;
use crate::repo::manifest::Manifest;
use crate::repo::storage::Storage;

/// Largest record accepted.
const MAX_RECORD: usize = 1 << 20;

/// How a verification ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerificationRecord {
    /// When it finished.
    pub at: DateTime<Utc>,
    /// Whether the set was proven: PostgreSQL reached the target and every check passed.
    pub proven: bool,
    /// The recovery target (`immediate` for the set's consistent point).
    pub target: String,
    /// The LSN recovery reached.
    pub reached_lsn: Option<String>,
    /// Checks that ran, each with its outcome.
    pub checks: Vec<(String, bool)>,
    /// Why it was not proven.
    pub failure: Option<String>,
    /// Wall time, milliseconds.
    pub duration_ms: f64,
}

impl VerificationRecord {
    fn key(stanza: &str, label: &SetLabel) -> String {
        format!("{}/verification", Manifest::set_prefix(stanza, label))
    }

    /// Stores the record for `label` (replacing the previous one).
    pub fn save(&self, storage: &dyn Storage, codec: &Codec, stanza: &str, label: &SetLabel) -> Result<()> {
        let key = Self::key(stanza, label);
        let bytes = serde_json::to_vec(self).map_err(|e| Error::invalid(&key, e.to_string()))?;
        storage.put(&key, &codec.encode(key.as_bytes(), &bytes))
    }

    /// The latest record of `label`, if it was ever verified.
    pub fn load(storage: &dyn Storage, codec: &Codec, stanza: &str, label: &SetLabel) -> Result<Option<Self>> {
        let key = Self::key(stanza, label);
        let Some(stored) = storage.get(&key)? else { return Ok(None) };
        let bytes = codec.decode(key.as_bytes(), &stored, MAX_RECORD, &key)?;
        serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::invalid(key, e.to_string()))
    }
}
