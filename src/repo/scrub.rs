//! The record of a scrub (`<stanza>/backup/<label>/scrub` for a set, `<stanza>/archive-scrub` for
//! the archive), written by `scrub` and shown by `info`. A set's record lives inside the set, so
//! removing the set removes it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::handle::Repo;
use crate::repo::object::Kind;

/// Largest record accepted.
const MAX_RECORD: usize = 4 << 20;

/// How a scrub of a set or of the archive ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubRecord {
    /// When it finished.
    pub at: DateTime<Utc>,
    /// Whether every object read back intact.
    pub intact: bool,
    /// Objects read (runs, WAL files, records).
    pub objects: u64,
    /// Stored bytes read.
    pub bytes: u64,
    /// What was damaged: files of the set, or WAL files, each with the reason (at most 100).
    pub damaged: Vec<String>,
}

impl ScrubRecord {
    /// Stores the record at `key` (replacing the previous one).
    pub fn save(&self, repo: &Repo, key: &str) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::invalid(key, e.to_string()))?;
        repo.put_object(Kind::Scrub, key, &bytes).map(drop)
    }

    /// The record at `key`, if that was ever scrubbed.
    pub fn load(repo: &Repo, key: &str) -> Result<Option<ScrubRecord>> {
        let what = format!("scrub record {key}");
        let Some(bytes) = repo.get_object(Kind::Scrub, key, MAX_RECORD, &what)? else { return Ok(None) };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::invalid(what, e.to_string()))
    }
}
