//! A backup set's manifest (`<label>/backup.manifest`): the set's header, options, targets
//! (PGDATA, links, tablespaces), and every file and directory with the `:default` sections applied.
//! Everything read from it is checked here, so the readers can form repository keys from it.

use serde_json::Value;

use super::cipher::CipherPass;
use super::compress::CompressType;
use super::info::{parse_backup_type, parse_lsn, timeline_of};
use super::ini::{Ini, as_str, as_u64};
use crate::error::{Error, Result};
use crate::pg::lsn::Lsn;
use crate::repo::label::BackupType;

/// A backup set's manifest.
#[derive(Debug, Clone)]
pub struct PgbrManifest {
    /// The set's label (`20261129-172458F`, `…F_20261129-172501D`).
    pub label: String,
    /// Full, differential or incremental.
    pub backup_type: BackupType,
    /// The set this one is based on (diff/incr).
    pub prior: Option<String>,
    /// Every set of the chain, oldest first, this one last (block maps index this list).
    pub references: Vec<String>,
    /// `pg_backup_start`'s LSN (absent for offline backups).
    pub start_lsn: Option<Lsn>,
    /// `pg_backup_stop`'s LSN.
    pub stop_lsn: Option<Lsn>,
    /// First WAL segment needed for consistency (absent for offline backups).
    pub archive_start: Option<String>,
    /// Last WAL segment needed for consistency.
    pub archive_stop: Option<String>,
    /// Timeline of `archive_start`.
    pub timeline: Option<u32>,
    /// Backup start, epoch seconds.
    pub start_time: i64,
    /// Backup stop, epoch seconds.
    pub stop_time: i64,
    /// PostgreSQL major version (`15`).
    pub pg_version: u32,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// The stanza history id of the cluster (`db-id`).
    pub db_id: u32,
    /// How files are stored.
    pub options: PgbrOptions,
    /// Whether the set uses block incremental (beta in pgBackRest 2.45).
    pub block_incremental: bool,
    /// PGDATA at backup time.
    pub pg_data: String,
    /// Tablespaces (`pg_tblspc/<oid>` targets).
    pub tablespaces: Vec<PgbrTablespace>,
    /// Symbolic links inside PGDATA (`[target:link]`), tablespace links included.
    pub links: Vec<PgbrLink>,
    /// Every directory with its mode and owner (`[target:path]`).
    pub paths: Vec<PgbrPath>,
    /// Every file (`[target:file]`), sorted by name.
    pub files: Vec<PgbrFile>,
    /// Databases at backup time: name and oid.
    pub databases: Vec<(String, u32)>,
    /// Passphrase of the set's stored files.
    pub(super) cipher_pass: Option<CipherPass>,
}

/// The options a set was made with that matter to a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgbrOptions {
    /// Compression of stored files (constant along a chain).
    pub compress_type: CompressType,
    /// Compression level.
    pub compress_level: Option<u64>,
    /// Small files are stored in bundles.
    pub bundle: bool,
    /// Bundled files use the raw formats (block-incremental sets).
    pub bundle_raw: bool,
    /// Taken from a running cluster.
    pub online: bool,
    /// Page checksums were verified.
    pub checksum_page: bool,
    /// Taken from a standby.
    pub backup_standby: bool,
    /// Hard links to the prior set were used.
    pub hardlink: bool,
    /// Delta (checksum-based) comparison with the prior set.
    pub delta: bool,
    /// Whether the stored files are encrypted.
    pub encrypted: bool,
}

/// A tablespace of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgbrTablespace {
    /// Its oid (`pg_tblspc/<oid>`).
    pub oid: u32,
    /// Its name.
    pub name: String,
    /// Its location at backup time (the `PG_<ver>_<catver>` directory is below it).
    pub location: String,
}

/// A symbolic link inside PGDATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgbrLink {
    /// Manifest name (`pg_data/pg_wal`, `pg_data/pg_tblspc/16384`).
    pub name: String,
    /// Where it pointed at backup time.
    pub destination: String,
    /// Owner name (`None`: could not be mapped at backup time).
    pub user: Option<String>,
    /// Group name.
    pub group: Option<String>,
}

/// A directory of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgbrPath {
    /// Manifest name (`pg_data/base/5`).
    pub name: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner name.
    pub user: Option<String>,
    /// Group name.
    pub group: Option<String>,
}

/// Where a block-incremental file's block map is and how its blocks are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgbrBlockIncr {
    /// Block size in bytes (`bi` × 8192).
    pub block_size: u64,
    /// Bytes of each block's XXH3 checksum prefix (`bic`, default 6).
    pub checksum_size: u64,
    /// Size of the block map stored at the end of the file's stored bytes (`bim`).
    pub map_size: u64,
}

/// A file of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgbrFile {
    /// Manifest name (`pg_data/base/5/16384`, `pg_tblspc/16400/PG_15_202209061/5/16385`).
    pub name: String,
    /// Original size.
    pub size: u64,
    /// Stored size (after compression and encryption).
    pub repo_size: u64,
    /// Modification time, epoch seconds.
    pub timestamp: i64,
    /// Permission bits.
    pub mode: u32,
    /// Owner name.
    pub user: Option<String>,
    /// Group name.
    pub group: Option<String>,
    /// SHA-1 (hex) of the content; `None` only for zero-length files.
    pub checksum: Option<String>,
    /// SHA-1 (hex) of the stored bytes (`rck`), when compression or encryption changed them.
    pub repo_checksum: Option<String>,
    /// The earlier set that holds the bytes; `None` when this set does.
    pub reference: Option<String>,
    /// Bundle id and offset in it, for bundled files.
    pub bundle: Option<(u64, u64)>,
    /// Block-incremental storage, when the file uses it.
    pub block_incr: Option<PgbrBlockIncr>,
    /// Whether page checksums were verified as valid (`None`: not checked for this file).
    pub checksum_page: Option<bool>,
}

impl PgbrFile {
    /// Whether the file is stored in block-incremental form.
    pub fn is_block_incr(&self) -> bool {
        self.block_incr.is_some()
    }
}

impl PgbrManifest {
    /// Reads a decrypted, checksum-verified manifest of set `label`.
    pub(super) fn from_ini(ini: &Ini, label: &str) -> Result<PgbrManifest> {
        let what = format!("manifest of pgBackRest set {label}");
        let get = |section: &str, key: &str| ini.get(section, key);
        let found_label = as_str(get("backup", "backup-label"), &what, "backup-label")?;
        if found_label != label {
            return Err(Error::invalid(&what, format!("it is the manifest of set {found_label}")));
        }
        let backup_type = parse_backup_type(as_str(get("backup", "backup-type"), &what, "backup-type")?, &what)?;
        let prior = get("backup", "backup-prior").and_then(Value::as_str).map(str::to_string);
        let archive_start = segment_name(get("backup", "backup-archive-start"), &what)?;
        let archive_stop = segment_name(get("backup", "backup-archive-stop"), &what)?;
        let flag = |section: &str, key: &str| get(section, key).and_then(Value::as_bool).unwrap_or(false);
        let compress_type = match get("backup:option", "option-compress-type") {
            Some(Value::String(name)) => CompressType::from_name(name)
                .ok_or_else(|| Error::refused(format!("{what}: unknown compress type {name:?}"), None))?,
            Some(_) => return Err(Error::invalid(&what, "option-compress-type is not a string")),
            None if flag("backup:option", "option-compress") => CompressType::Gz,
            None => CompressType::None,
        };
        let cipher_pass = get("cipher", "cipher-pass").and_then(Value::as_str).map(CipherPass::new);
        let options = PgbrOptions {
            compress_type,
            compress_level: get("backup:option", "option-compress-level").and_then(Value::as_u64),
            bundle: flag("backup", "backup-bundle"),
            bundle_raw: flag("backup", "backup-bundle-raw"),
            online: flag("backup:option", "option-online"),
            checksum_page: flag("backup:option", "option-checksum-page"),
            backup_standby: flag("backup:option", "option-backup-standby"),
            hardlink: flag("backup:option", "option-hardlink"),
            delta: flag("backup:option", "option-delta"),
            encrypted: cipher_pass.is_some(),
        };
        let files = parse_files(ini, &what)?;
        let references = match get("backup", "backup-reference") {
            Some(Value::String(list)) => list.split(',').map(str::to_string).collect(),
            Some(_) => return Err(Error::invalid(&what, "backup-reference is not a string")),
            // Manifests before 2.42: the sets the files name, then this one.
            None => {
                let mut refs: Vec<String> = files.iter().filter_map(|f| f.reference.clone()).collect();
                refs.sort();
                refs.dedup();
                refs.push(label.to_string());
                refs
            }
        };
        if references.last().map(String::as_str) != Some(label) {
            return Err(Error::invalid(&what, "backup-reference does not end with the set itself"));
        }
        for reference in &references {
            super::check_label(reference, &what)?;
        }
        let earlier = &references[..references.len() - 1];
        if let Some(file) = files.iter().find(|f| f.reference.as_ref().is_some_and(|r| !earlier.contains(r))) {
            return Err(Error::invalid(
                &what,
                format!("file {} references set {:?}, not in the set's references", file.name, file.reference),
            ));
        }
        let (pg_data, tablespaces) = parse_targets(ini, &what)?;
        let pg_version = super::info::parse_major(as_str(get("backup:db", "db-version"), &what, "db-version")?, &what)?;
        Ok(PgbrManifest {
            label: label.to_string(),
            backup_type,
            prior,
            references,
            start_lsn: get("backup", "backup-lsn-start").and_then(Value::as_str).map(parse_lsn).transpose()?,
            stop_lsn: get("backup", "backup-lsn-stop").and_then(Value::as_str).map(parse_lsn).transpose()?,
            timeline: archive_start.as_deref().map(timeline_of),
            archive_start,
            archive_stop,
            start_time: get("backup", "backup-timestamp-start").and_then(Value::as_i64).unwrap_or(0),
            stop_time: get("backup", "backup-timestamp-stop").and_then(Value::as_i64).unwrap_or(0),
            pg_version,
            system_identifier: as_u64(get("backup:db", "db-system-id"), &what, "db-system-id")?,
            db_id: u32::try_from(as_u64(get("backup:db", "db-id"), &what, "db-id")?)
                .map_err(|_| Error::invalid(&what, "db-id out of range"))?,
            block_incremental: flag("backup", "backup-block-incr") || files.iter().any(PgbrFile::is_block_incr),
            options,
            pg_data,
            tablespaces,
            links: parse_links(ini, &what)?,
            paths: parse_paths(ini, &what)?,
            files,
            databases: ini
                .section("db")
                .iter()
                .filter_map(|(name, v)| Some((name.clone(), u32::try_from(v.get("db-id")?.as_u64()?).ok()?)))
                .collect(),
            cipher_pass,
        })
    }

    /// The file named `name` (as in the manifest).
    pub fn file(&self, name: &str) -> Option<&PgbrFile> {
        self.files.binary_search_by(|f| f.name.as_str().cmp(name)).ok().map(|i| &self.files[i])
    }
}

/// A WAL segment name field, checked.
fn segment_name(value: Option<&Value>, what: &str) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(Value::String(name)) if crate::pg::lsn::is_segment_name(name) => Ok(Some(name.clone())),
        Some(other) => Err(Error::invalid(what, format!("{other} is not a WAL segment name"))),
    }
}

/// Owner defaults and overrides: a name, or `false` when it could not be mapped.
fn owner(entry: &Value, default: Option<&Value>, key: &str) -> Option<String> {
    entry.get(key).or(default).and_then(Value::as_str).map(str::to_string)
}

fn mode(entry: &Value, default: Option<&Value>, what: &str) -> Result<u32> {
    let text = entry.get("mode").or(default).and_then(Value::as_str).ok_or_else(|| Error::invalid(what, "no mode"))?;
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| Error::invalid(what, format!("mode {text:?} is not octal permission bits")))
}

/// A manifest name used to form repository keys: relative, no empty, `.` or `..` part.
pub(super) fn check_name(name: &str, what: &str) -> Result<()> {
    let plain = !name.is_empty() && name.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    if !plain || !(name.starts_with("pg_data") || name.starts_with("pg_tblspc")) {
        return Err(Error::invalid(what, format!("{name:?} is not a name under pg_data or pg_tblspc")));
    }
    Ok(())
}

fn is_sha1(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn parse_files(ini: &Ini, what: &str) -> Result<Vec<PgbrFile>> {
    let default = |key: &str| ini.get("target:file:default", key);
    let mut files = Vec::with_capacity(ini.section("target:file").len());
    for (name, entry) in ini.section("target:file") {
        let file_what = format!("{what}, file {name}");
        check_name(name, &file_what)?;
        let num =
            |key: &str| entry.get(key).map(|v| v.as_u64().ok_or_else(|| Error::invalid(&file_what, key))).transpose();
        let hex = |key: &str| -> Result<Option<String>> {
            match entry.get(key) {
                None => Ok(None),
                Some(Value::String(s)) if is_sha1(s) => Ok(Some(s.clone())),
                Some(_) => Err(Error::invalid(&file_what, format!("{key} is not a SHA-1"))),
            }
        };
        let size = num("size")?.ok_or_else(|| Error::invalid(&file_what, "no size"))?;
        let checksum = hex("checksum")?;
        if checksum.is_none() && size != 0 {
            return Err(Error::invalid(&file_what, "no checksum (a partial manifest?)"));
        }
        let block_incr = match num("bi")? {
            None => None,
            Some(0) => return Err(Error::invalid(&file_what, "block size 0")),
            Some(bi) => Some(PgbrBlockIncr {
                block_size: bi.checked_mul(8192).ok_or_else(|| Error::invalid(&file_what, "block size"))?,
                checksum_size: match num("bic")?.unwrap_or(6) {
                    size @ 1..=16 => size,
                    other => return Err(Error::invalid(&file_what, format!("block checksum size {other}"))),
                },
                map_size: num("bim")?.ok_or_else(|| Error::invalid(&file_what, "block-incremental without bim"))?,
            }),
        };
        let reference = match entry.get("reference") {
            None => None,
            Some(Value::String(label)) => Some(label.clone()),
            Some(_) => return Err(Error::invalid(&file_what, "reference is not a string")),
        };
        files.push(PgbrFile {
            name: name.clone(),
            size,
            repo_size: num("repo-size")?.unwrap_or(size),
            timestamp: entry.get("timestamp").and_then(Value::as_i64).unwrap_or(0),
            mode: mode(entry, default("mode"), &file_what)?,
            user: owner(entry, default("user"), "user"),
            group: owner(entry, default("group"), "group"),
            checksum,
            repo_checksum: hex("rck")?,
            reference,
            bundle: num("bni")?.map(|id| num("bno").map(|off| (id, off.unwrap_or(0)))).transpose()?,
            block_incr,
            checksum_page: entry.get("checksum-page").and_then(Value::as_bool),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

fn parse_paths(ini: &Ini, what: &str) -> Result<Vec<PgbrPath>> {
    let default = |key: &str| ini.get("target:path:default", key);
    ini.section("target:path")
        .iter()
        .map(|(name, entry)| {
            let path_what = format!("{what}, directory {name}");
            check_name(name, &path_what)?;
            Ok(PgbrPath {
                name: name.clone(),
                mode: mode(entry, default("mode"), &path_what)?,
                user: owner(entry, default("user"), "user"),
                group: owner(entry, default("group"), "group"),
            })
        })
        .collect()
}

fn parse_links(ini: &Ini, what: &str) -> Result<Vec<PgbrLink>> {
    let default = |key: &str| ini.get("target:link:default", key);
    ini.section("target:link")
        .iter()
        .map(|(name, entry)| {
            let link_what = format!("{what}, link {name}");
            check_name(name, &link_what)?;
            Ok(PgbrLink {
                name: name.clone(),
                destination: as_str(entry.get("destination"), &link_what, "destination")?.to_string(),
                user: owner(entry, default("user"), "user"),
                group: owner(entry, default("group"), "group"),
            })
        })
        .collect()
}

fn parse_targets(ini: &Ini, what: &str) -> Result<(String, Vec<PgbrTablespace>)> {
    let mut pg_data = None;
    let mut tablespaces = Vec::new();
    for (name, entry) in ini.section("backup:target") {
        let target_what = format!("{what}, target {name}");
        let path = as_str(entry.get("path"), &target_what, "path")?.to_string();
        if name == "pg_data" {
            pg_data = Some(path);
        } else if let Some(oid) = name.strip_prefix("pg_tblspc/") {
            let oid = oid.parse().map_err(|_| Error::invalid(&target_what, "tablespace oid is not a number"))?;
            let name = entry.get("tablespace-name").and_then(Value::as_str).unwrap_or_default().to_string();
            tablespaces.push(PgbrTablespace { oid, name, location: path });
        }
    }
    let pg_data = pg_data.ok_or_else(|| Error::invalid(what, "no pg_data target"))?;
    Ok((pg_data, tablespaces))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgbr::ini::render;

    const LABEL: &str = "20250101-000000F_20250102-000000I";
    const SHA: &str = "587b596f04f7db9c2cad3d6b87dd2b3a05de4f35";

    fn manifest(files: &str, options: &str) -> Result<PgbrManifest> {
        let body = format!(
            "[backrest]\nbackrest-format=5\n\n[backup]\nbackup-label=\"{LABEL}\"\n\
             backup-reference=\"20250101-000000F,{LABEL}\"\nbackup-type=\"incr\"\n\n\
             [backup:db]\ndb-id=1\ndb-system-id=1\ndb-version=\"15\"\n\n[backup:option]\n{options}\n\n\
             [backup:target]\npg_data={{\"path\":\"/d\",\"type\":\"path\"}}\n\n[target:file]\n{files}\n\n\
             [target:file:default]\ngroup=\"postgres\"\nmode=\"0600\"\nuser=\"postgres\"\n"
        );
        PgbrManifest::from_ini(&Ini::parse(render(&body).as_bytes(), "m")?, LABEL)
    }

    #[test]
    fn entries_are_read_with_defaults_and_block_incremental_fields() {
        let files = format!(
            "pg_data/a={{\"bi\":2,\"bim\":40,\"bni\":3,\"checksum\":\"{SHA}\",\"reference\":\"20250101-000000F\",\
             \"repo-size\":90,\"size\":20000,\"timestamp\":5}}\npg_data/b={{\"group\":false,\"size\":0,\"timestamp\":6}}"
        );
        let m = manifest(&files, "option-compress=true").unwrap();
        assert_eq!(m.options.compress_type, CompressType::Gz, "legacy option-compress means gz");
        assert!(m.block_incremental && m.backup_type == BackupType::Incr);
        let a = m.file("pg_data/a").unwrap();
        assert_eq!(a.block_incr, Some(PgbrBlockIncr { block_size: 16384, checksum_size: 6, map_size: 40 }));
        assert_eq!((a.bundle, a.repo_size, a.mode), (Some((3, 0)), 90, 0o600));
        let b = m.file("pg_data/b").unwrap();
        assert_eq!((b.repo_size, b.group.as_deref(), b.user.as_deref()), (0, None, Some("postgres")));
    }

    #[test]
    fn bad_entries_are_refused() {
        let entry = |name: &str, json: &str| manifest(&format!("{name}={json}"), "option-compress-type=\"lz4\"");
        let ok = format!("{{\"checksum\":\"{SHA}\",\"size\":3,\"timestamp\":1}}");
        assert!(entry("pg_data/x", &ok).is_ok());
        assert!(entry("pg_data/../x", &ok).is_err());
        assert!(entry("etc/passwd", &ok).is_err());
        assert!(entry("pg_data/x", "{\"size\":3,\"timestamp\":1}").is_err(), "no checksum");
        assert!(entry("pg_data/x", "{\"checksum\":\"ABC\",\"size\":3,\"timestamp\":1}").is_err());
        let foreign =
            format!("{{\"checksum\":\"{SHA}\",\"reference\":\"20240101-000000F\",\"size\":3,\"timestamp\":1}}");
        assert!(entry("pg_data/x", &foreign).unwrap_err().to_string().contains("not in the set's references"));
        let xz = manifest("", "option-compress-type=\"xz\"").unwrap_err();
        assert!(matches!(xz, Error::Refused { .. }), "{xz}");
    }
}
