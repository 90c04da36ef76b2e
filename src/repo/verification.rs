//! The record of a set's latest verification (`<stanza>/backup/<label>/verification`), written by
//! `verify` and shown by `info`. It lives inside the set, so removing the set removes it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::handle::Repo;
use crate::repo::label::SetLabel;
use crate::repo::object::Kind;

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
    /// Stores the record for `label` (replacing the previous one).
    pub fn save(&self, repo: &Repo, label: &SetLabel) -> Result<()> {
        let key = repo.layout().verification(label);
        let bytes = serde_json::to_vec(self).map_err(|e| Error::invalid(&key, e.to_string()))?;
        repo.put_object(Kind::Verification, &key, &bytes).map(drop)
    }

    /// The latest record of `label`, if it was ever verified.
    pub fn load(repo: &Repo, label: &SetLabel) -> Result<Option<Self>> {
        let key = repo.layout().verification(label);
        let what = format!("verification record of backup {label}");
        let Some(bytes) = repo.get_object(Kind::Verification, &key, MAX_RECORD, &what)? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::invalid(what, e.to_string()))
    }
}
