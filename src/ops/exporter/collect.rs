//! One collection: every configured stanza, each of its repositories read through `info` (which
//! reads and never locks or writes), and its cluster's archiver when the cluster answers. What
//! cannot be read is kept as a status and a reason, never as a failed collection.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::cluster::{Archiver, archiver};
use crate::config::{Config, Resolved};
use crate::error::Result;
use crate::ops::info::{InfoReport, info};
use crate::repo::keys::Layout;
use crate::repo::stanza::StanzaRecord;
use crate::stanza::storage_of;

/// pgBackRest's status codes of a stanza or repository, as its `info` and exporter report them.
pub mod status {
    /// Everything is fine.
    pub const OK: i64 = 0;
    /// The repository or the stanza's directory in it does not exist.
    pub const MISSING_STANZA_PATH: i64 = 1;
    /// The stanza has no backup set.
    pub const NO_VALID_BACKUPS: i64 = 2;
    /// The repositories of the stanza disagree.
    pub const MIXED: i64 = 4;
    /// Anything else: unreadable, damaged, wrong passphrase.
    pub const OTHER: i64 = 99;
}

/// Everything one collection found.
#[derive(Debug, Clone)]
pub struct Collected {
    /// When it finished.
    pub at: DateTime<Utc>,
    /// How long it took, seconds.
    pub seconds: f64,
    /// Why the configuration could not be read, if it could not.
    pub config_error: Option<String>,
    /// Each configured stanza.
    pub stanzas: Vec<StanzaState>,
}

/// One stanza.
#[derive(Debug, Clone)]
pub struct StanzaState {
    /// Its name.
    pub name: String,
    /// Why its configuration does not resolve (no repository, say), if it does not.
    pub error: Option<String>,
    /// Each of its repositories, in order.
    pub repos: Vec<RepoState>,
    /// Its cluster's archiver, or why it could not be asked.
    pub archiver: std::result::Result<Archiver, String>,
}

/// One repository of a stanza.
#[derive(Debug, Clone)]
pub struct RepoState {
    /// Its name in the configuration.
    pub name: String,
    /// Its position among the stanza's repositories, from 1 (pgBackRest's `repo_key`).
    pub key: usize,
    /// The cipher the configuration names.
    pub cipher: String,
    /// What `info` read, or why it could not.
    pub read: std::result::Result<Readable, Unreadable>,
}

/// A repository `info` could read.
#[derive(Debug, Clone)]
pub struct Readable {
    /// The report.
    pub info: InfoReport,
    /// pgBackRest's `database_id`: 1, plus one for each `stanza-upgrade`.
    pub database_id: usize,
}

/// A repository `info` could not read.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// pgBackRest's status code for it.
    pub code: i64,
    /// Why.
    pub reason: String,
}

impl RepoState {
    /// The repository's status code.
    pub fn code(&self) -> i64 {
        match &self.read {
            Ok(r) if !r.info.healthy => status::OTHER,
            Ok(r) if r.info.sets.is_empty() => status::NO_VALID_BACKUPS,
            Ok(_) => status::OK,
            Err(u) => u.code,
        }
    }
}

impl StanzaState {
    /// The stanza's status code: its repositories' when they agree.
    pub fn code(&self) -> i64 {
        if self.error.is_some() {
            return status::OTHER;
        }
        let codes: Vec<i64> = self.repos.iter().map(RepoState::code).collect();
        match codes.split_first() {
            Some((first, rest)) if rest.iter().all(|c| c == first) => *first,
            Some(_) => status::MIXED,
            None => status::OTHER,
        }
    }

    /// The reports of the repositories that could be read.
    pub fn readable(&self) -> impl Iterator<Item = (&RepoState, &Readable)> {
        self.repos.iter().filter_map(|r| r.read.as_ref().ok().map(|readable| (r, readable)))
    }
}

impl Collected {
    /// What could not be read, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self.config_error.iter().map(|e| format!("configuration: {e}")).collect();
        for s in &self.stanzas {
            out.extend(s.error.iter().map(|e| format!("stanza {}: {e}", s.name)));
            for r in &s.repos {
                if let Err(u) = &r.read {
                    out.push(format!("stanza {} repository {}: {}", s.name, r.name, u.reason));
                }
            }
            if let Err(e) = &s.archiver {
                out.push(format!("stanza {} cluster: {e}", s.name));
            }
        }
        out
    }
}

/// Reads everything the configuration at `config` (or the default place) names.
pub fn collect(config: Option<&Path>) -> Collected {
    let started = Instant::now();
    let (config_error, stanzas) = match Config::load(config) {
        Ok(config) => (None, config.stanza.keys().map(|name| collect_stanza(&config, name)).collect()),
        Err(e) => (Some(e.to_string()), Vec::new()),
    };
    Collected { at: Utc::now(), seconds: started.elapsed().as_secs_f64(), config_error, stanzas }
}

fn collect_stanza(config: &Config, name: &str) -> StanzaState {
    let resolved = match config.resolve(Some(name)) {
        Ok(resolved) => resolved,
        Err(e) => {
            return StanzaState {
                name: name.to_string(),
                error: Some(e.to_string()),
                repos: Vec::new(),
                archiver: Err("the stanza's configuration does not resolve".into()),
            };
        }
    };
    let repos: Vec<RepoState> =
        resolved.each_repo().iter().enumerate().map(|(i, target)| collect_repo(target, i + 1)).collect();
    let archiver = archiver(&resolved, &owner_name(&resolved.stanza.data)).map_err(|e| e.to_string());
    StanzaState { name: name.to_string(), error: None, repos, archiver }
}

fn collect_repo(target: &Resolved, key: usize) -> RepoState {
    let read = read_repo(target);
    RepoState { name: target.repo_name.clone(), key, cipher: target.repo.cipher.name().to_string(), read }
}

fn read_repo(target: &Resolved) -> std::result::Result<Readable, Unreadable> {
    let other = |e: crate::Error| Unreadable { code: status::OTHER, reason: e.to_string() };
    let record = match stanza_record(target) {
        Ok(Some(record)) => record,
        Ok(None) => {
            return Err(Unreadable {
                code: status::MISSING_STANZA_PATH,
                reason: format!("stanza {} does not exist in repository {}", target.name, target.repo_name),
            });
        }
        Err(e) => return Err(other(e)),
    };
    // A panic in reading one repository must not end the exporter's collections.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| info(target, None)));
    match read {
        Ok(Ok(info)) => Ok(Readable { info, database_id: record.history.len() + 1 }),
        Ok(Err(e)) => Err(other(e)),
        Err(_) => Err(Unreadable { code: status::OTHER, reason: "reading the repository panicked".into() }),
    }
}

fn stanza_record(target: &Resolved) -> Result<Option<StanzaRecord>> {
    let storage = storage_of(target)?;
    StanzaRecord::load(storage.as_ref(), &Layout::new(&target.name))
}

/// The user that owns `data` (the cluster's user), else the one the exporter runs as.
fn owner_name(data: &Path) -> String {
    let uid = std::fs::metadata(data).map(|m| m.uid()).unwrap_or_else(|_| nix::unistd::Uid::effective().as_raw());
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreadable(name: &str, key: usize, code: i64) -> RepoState {
        RepoState {
            name: name.into(),
            key,
            cipher: "none".into(),
            read: Err(Unreadable { code, reason: "test".into() }),
        }
    }

    #[test]
    fn a_stanza_takes_its_repositories_status_when_they_agree() {
        let stanza = |repos| StanzaState { name: "main".into(), error: None, repos, archiver: Err("down".into()) };
        let one = stanza(vec![unreadable("a", 1, status::MISSING_STANZA_PATH)]);
        assert_eq!(one.code(), status::MISSING_STANZA_PATH);
        let same = stanza(vec![unreadable("a", 1, status::OTHER), unreadable("b", 2, status::OTHER)]);
        assert_eq!(same.code(), status::OTHER);
        let mixed = stanza(vec![unreadable("a", 1, status::MISSING_STANZA_PATH), unreadable("b", 2, status::OTHER)]);
        assert_eq!(mixed.code(), status::MIXED);
        let unresolved = StanzaState { error: Some("no repository".into()), ..stanza(Vec::new()) };
        assert_eq!(unresolved.code(), status::OTHER);
        let collected =
            Collected { at: Utc::now(), seconds: 0.0, config_error: None, stanzas: vec![unresolved, mixed] };
        assert_eq!(collected.problems().len(), 5, "{:?}", collected.problems());
    }
}
