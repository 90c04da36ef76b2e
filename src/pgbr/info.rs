//! `backup.info` (the stanza's sets and cluster history) and `archive.info` (the archive's cluster
//! history, whose `db-id` key holds the system identifier), read into typed records.

use serde_json::Value;

use super::cipher::CipherPass;
use super::ini::{Ini, as_str, as_u64};
use crate::error::{Error, Result};
use crate::pg::lsn::Lsn;
use crate::repo::label::BackupType;

/// pgBackRest's `backup-type` (`full`, `diff`, `incr`) as pgfork's kind of set, the error naming
/// `what` holds it.
pub fn parse_backup_type(text: &str, what: &str) -> Result<BackupType> {
    text.parse().map_err(|_| Error::invalid(what, format!("unknown backup type {text:?}")))
}

/// A cluster the stanza has known (one entry of `[db:history]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgbrDb {
    /// History id (`db-id`): the archive id is `<version>-<id>`.
    pub id: u32,
    /// PostgreSQL version as pgBackRest writes it (`"15"`, `"9.6"`).
    pub version: String,
    /// System identifier.
    pub system_identifier: u64,
}

impl PgbrDb {
    /// The archive directory of this cluster: `15-1`.
    pub fn archive_id(&self) -> String {
        format!("{}-{}", self.version, self.id)
    }
}

/// A backup set as `backup.info [backup:current]` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgbrSet {
    /// Label (`20261129-172458F`, `…F_20261129-172501D`, `…F_…I`).
    pub label: String,
    /// Full, diff or incr.
    pub backup_type: BackupType,
    /// The set this one is based on.
    pub prior: Option<String>,
    /// Earlier sets whose files this one references, oldest first (without itself).
    pub references: Vec<String>,
    /// `pg_backup_start`'s LSN.
    pub start_lsn: Option<Lsn>,
    /// `pg_backup_stop`'s LSN.
    pub stop_lsn: Option<Lsn>,
    /// Backup start, epoch seconds.
    pub start_time: i64,
    /// Backup stop, epoch seconds.
    pub stop_time: i64,
    /// First WAL segment needed.
    pub archive_start: Option<String>,
    /// Last WAL segment needed.
    pub archive_stop: Option<String>,
    /// Size of the cluster's files (`backup-info-size`).
    pub size: u64,
    /// Size of the files stored by this set (`backup-info-size-delta`).
    pub size_delta: u64,
    /// Stored size of all files (`backup-info-repo-size`).
    pub repo_size: u64,
    /// Stored size of the files stored by this set (`backup-info-repo-size-delta`).
    pub repo_size_delta: u64,
    /// History id of the cluster.
    pub db_id: u32,
    /// PostgreSQL major version.
    pub pg_version: u32,
    /// System identifier.
    pub system_identifier: u64,
    /// Block incremental (beta in 2.45): the set has block maps.
    pub block_incremental: bool,
    /// Page checksum errors were found during the backup.
    pub error: bool,
}

/// `backup.info`: current cluster, its history, the sets, the manifests' passphrase.
#[derive(Debug)]
pub(super) struct BackupInfo {
    pub current: PgbrDb,
    pub history: Vec<PgbrDb>,
    pub sets: Vec<PgbrSet>,
    pub cipher_pass: Option<CipherPass>,
}

/// `archive.info`: current cluster, its history, the archive's passphrase.
#[derive(Debug)]
pub(super) struct ArchiveInfo {
    pub current: PgbrDb,
    pub history: Vec<PgbrDb>,
    pub cipher_pass: Option<CipherPass>,
}

/// Parses an LSN as pgBackRest writes it (`0/3000028`).
pub fn parse_lsn(text: &str) -> Result<Lsn> {
    text.parse()
}

/// The timeline of a (checked) WAL segment name.
pub fn timeline_of(segment: &str) -> u32 {
    segment.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok()).unwrap_or(0)
}

/// The major version of a version string: `15` → 15, `9.6` → 9.
pub fn parse_major(text: &str, what: &str) -> Result<u32> {
    text.split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .ok_or_else(|| Error::invalid(what, format!("PostgreSQL version {text:?} is not a number")))
}

fn small(value: Option<&Value>, what: &str, key: &str) -> Result<u32> {
    u32::try_from(as_u64(value, what, key)?).map_err(|_| Error::invalid(what, format!("{key} out of range")))
}

/// `[db]` plus `[db:history]`; `system_key` is `db-system-id` in backup.info, `db-id` in archive.info.
fn parse_dbs(ini: &Ini, what: &str, system_key: &str) -> Result<(PgbrDb, Vec<PgbrDb>)> {
    let current = PgbrDb {
        id: small(ini.get("db", "db-id"), what, "db-id")?,
        version: as_str(ini.get("db", "db-version"), what, "db-version")?.to_string(),
        system_identifier: as_u64(ini.get("db", "db-system-id"), what, "db-system-id")?,
    };
    let mut history = Vec::new();
    for (id, entry) in ini.section("db:history") {
        let entry_what = format!("{what}, db:history {id}");
        history.push(PgbrDb {
            id: id.parse().map_err(|_| Error::invalid(&entry_what, "history id is not a number"))?,
            version: as_str(entry.get("db-version"), &entry_what, "db-version")?.to_string(),
            system_identifier: as_u64(entry.get(system_key), &entry_what, system_key)?,
        });
    }
    history.sort_by_key(|db| db.id);
    if !history.contains(&current) {
        return Err(Error::invalid(what, format!("current db-id {} is not in [db:history]", current.id)));
    }
    Ok((current, history))
}

fn cipher_pass(ini: &Ini) -> Option<CipherPass> {
    ini.get("cipher", "cipher-pass").and_then(Value::as_str).map(CipherPass::new)
}

impl BackupInfo {
    pub fn from_ini(ini: &Ini, what: &str) -> Result<BackupInfo> {
        let (current, history) = parse_dbs(ini, what, "db-system-id")?;
        let mut sets = Vec::new();
        for (label, entry) in ini.section("backup:current") {
            let set_what = format!("{what}, set {label}");
            super::check_label(label, &set_what)?;
            let text = |key: &str| entry.get(key).and_then(Value::as_str);
            let num = |key: &str| entry.get(key).and_then(Value::as_u64).unwrap_or(0);
            let db_id = small(entry.get("db-id"), &set_what, "db-id")?;
            let db = history
                .iter()
                .find(|db| db.id == db_id)
                .ok_or_else(|| Error::invalid(&set_what, format!("db-id {db_id} is not in [db:history]")))?;
            let references = match entry.get("backup-reference") {
                None => Vec::new(),
                Some(Value::Array(list)) => list
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| Error::invalid(&set_what, "backup-reference holds a non-string"))?,
                Some(_) => return Err(Error::invalid(&set_what, "backup-reference is not a list")),
            };
            sets.push(PgbrSet {
                label: label.clone(),
                backup_type: parse_backup_type(as_str(entry.get("backup-type"), &set_what, "backup-type")?, &set_what)?,
                prior: text("backup-prior").map(str::to_string),
                references,
                start_lsn: text("backup-lsn-start").map(parse_lsn).transpose()?,
                stop_lsn: text("backup-lsn-stop").map(parse_lsn).transpose()?,
                start_time: entry.get("backup-timestamp-start").and_then(Value::as_i64).unwrap_or(0),
                stop_time: entry.get("backup-timestamp-stop").and_then(Value::as_i64).unwrap_or(0),
                archive_start: text("backup-archive-start").map(str::to_string),
                archive_stop: text("backup-archive-stop").map(str::to_string),
                size: num("backup-info-size"),
                size_delta: num("backup-info-size-delta"),
                repo_size: num("backup-info-repo-size"),
                repo_size_delta: num("backup-info-repo-size-delta"),
                db_id,
                pg_version: parse_major(&db.version, &set_what)?,
                system_identifier: db.system_identifier,
                block_incremental: entry.get("backup-info-repo-size-map").is_some(),
                error: entry.get("backup-error").and_then(Value::as_bool).unwrap_or(false),
            });
        }
        sets.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(BackupInfo { current, history, sets, cipher_pass: cipher_pass(ini) })
    }
}

impl ArchiveInfo {
    pub fn from_ini(ini: &Ini, what: &str) -> Result<ArchiveInfo> {
        let (current, history) = parse_dbs(ini, what, "db-id")?;
        Ok(ArchiveInfo { current, history, cipher_pass: cipher_pass(ini) })
    }

    /// Archive ids to search, newest first: the history entries of the current cluster.
    pub fn search_order(&self) -> Vec<String> {
        self.history
            .iter()
            .rev()
            .filter(|db| db.system_identifier == self.current.system_identifier && db.version == self.current.version)
            .map(PgbrDb::archive_id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_types_and_timelines() {
        assert_eq!(parse_major("15", "x").unwrap(), 15);
        assert_eq!(parse_major("9.6", "x").unwrap(), 9);
        assert!(parse_major("", "x").is_err());
        assert_eq!(parse_backup_type("diff", "x").unwrap().to_string(), "diff");
        assert!(parse_backup_type("snap", "x").is_err());
        assert_eq!(timeline_of("00000002000000000000000A"), 2);
        assert_eq!(PgbrDb { id: 1, version: "15".into(), system_identifier: 7 }.archive_id(), "15-1");
    }
}
