//! The TOML configuration: repositories (like pgBackRest's `repo`: path, retention, cipher,
//! compression, where the passphrase comes from) and stanzas (a cluster: data directory, port,
//! socket, binaries, repository).
//!
//! ```toml
//! [repo.main]
//! path = "/pg/backup"
//! retention_full_type = "count"   # or "time" (days)
//! retention_full = 2
//! retention_diff = 4
//! cipher = "aes-256-gcm"          # or "none"
//! compression = "lz4"             # or "none"
//! passphrase_file = "/etc/pgfork/passphrase"   # mode 0600; else $PGFORK_PASSPHRASE
//!
//! [stanza.pg-meta]
//! data = "/pg/data"
//! port = 5432
//! socket = "/var/run/postgresql"
//! snapshot = false                # scan a reflink snapshot instead of the live files
//! ```

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, IoContext, Result};
use crate::repo::codec::Compression;
use crate::repo::crypto::Passphrase;

/// Where the configuration is read from when neither `--config` nor `PGFORK_CONFIG` says.
pub const DEFAULT_CONFIG: &str = "/etc/pgfork/pgfork.toml";
/// The environment variable holding the passphrase (unless a repository names a file).
pub const PASSPHRASE_ENV: &str = "PGFORK_PASSPHRASE";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Repositories by name.
    #[serde(default)]
    pub repo: BTreeMap<String, RepoConfig>,
    /// Stanzas by name.
    #[serde(default)]
    pub stanza: BTreeMap<String, StanzaConfig>,
    /// The file this was read from.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// How full backups are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RetentionType {
    /// Keep the newest `retention_full` full backups.
    #[default]
    Count,
    /// Keep full backups younger than `retention_full` days (and always the newest).
    Time,
}

/// Encryption of a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum CipherKind {
    /// No encryption.
    #[serde(rename = "none")]
    #[default]
    None,
    /// AES-256-GCM.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

impl CipherKind {
    /// The name the configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            CipherKind::None => "none",
            CipherKind::Aes256Gcm => "aes-256-gcm",
        }
    }
}

/// One repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Directory of the repository.
    pub path: PathBuf,
    /// Count or time.
    #[serde(default)]
    pub retention_full_type: RetentionType,
    /// Full backups to keep (count) or days to keep them (time).
    #[serde(default = "default_retention_full")]
    pub retention_full: u32,
    /// Differential backups to keep; all when absent.
    pub retention_diff: Option<u32>,
    /// Encryption.
    #[serde(default)]
    pub cipher: CipherKind,
    /// Compression.
    #[serde(default)]
    pub compression: Compression,
    /// A file holding the passphrase (mode 0600 or stricter).
    pub passphrase_file: Option<PathBuf>,
}

fn default_retention_full() -> u32 {
    2
}

/// One stanza: a cluster and the repository it backs up to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StanzaConfig {
    /// Data directory.
    pub data: PathBuf,
    /// Server port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Unix socket directory or host [default: from postmaster.pid].
    pub socket: Option<String>,
    /// Database user [default: the data directory's owner].
    pub user: Option<String>,
    /// PostgreSQL binaries [default: found from the data directory].
    pub bindir: Option<PathBuf>,
    /// Repository name [default: the only one].
    pub repo: Option<String>,
    /// Scan a reflink snapshot of the data directory (memory-mapped) instead of reading the live
    /// files with pread. The snapshot gives each file a single point in time, but its pages are not
    /// in the page cache: on a cached cluster reading it costs several times the live read.
    #[serde(default)]
    pub snapshot: bool,
}

fn default_port() -> u16 {
    5432
}

/// A stanza with its repository, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The configuration file it came from (passed on to helper processes).
    pub config_path: Option<PathBuf>,
    /// Stanza name.
    pub name: String,
    /// The stanza's settings.
    pub stanza: StanzaConfig,
    /// Repository name.
    pub repo_name: String,
    /// The repository's settings.
    pub repo: RepoConfig,
}

impl Config {
    /// Reads `path` (or `PGFORK_CONFIG`, or the default location).
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("PGFORK_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::refused(
                format!("cannot read the configuration {}: {e}", path.display()),
                Some("pass --config FILE or set PGFORK_CONFIG".into()),
            )
        })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            Error::Invalid { reason, .. } => Error::invalid(path.display().to_string(), reason),
            other => other,
        })?;
        config.source = Some(path);
        Ok(config)
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::invalid("configuration", e.to_string()))
    }

    /// The stanza named `name`, or the only one when `None`.
    pub fn resolve(&self, name: Option<&str>) -> Result<Resolved> {
        let (name, stanza) = match name {
            Some(name) => (
                name.to_string(),
                self.stanza.get(name).cloned().ok_or_else(|| {
                    Error::refused(format!("stanza {name} is not in the configuration"), Some(self.stanza_hint()))
                })?,
            ),
            None => match self.stanza.len() {
                1 => {
                    let (n, s) = self.stanza.iter().next().expect("one stanza");
                    (n.clone(), s.clone())
                }
                0 => {
                    return Err(Error::refused(
                        "the configuration has no stanza",
                        Some("add a [stanza.NAME] table".into()),
                    ));
                }
                _ => return Err(Error::refused("several stanzas are configured", Some(self.stanza_hint()))),
            },
        };
        let repo_name = match &stanza.repo {
            Some(repo) => repo.clone(),
            None if self.repo.len() == 1 => self.repo.keys().next().expect("one repo").clone(),
            None => {
                return Err(Error::refused(
                    format!("stanza {name} names no repository and {} are configured", self.repo.len()),
                    Some("set repo = \"NAME\" in the stanza".into()),
                ));
            }
        };
        let repo = self.repo.get(&repo_name).cloned().ok_or_else(|| {
            Error::refused(format!("repository {repo_name} of stanza {name} is not configured"), None)
        })?;
        Ok(Resolved { config_path: self.source.clone(), name, stanza, repo_name, repo })
    }

    fn stanza_hint(&self) -> String {
        let names: Vec<&str> = self.stanza.keys().map(String::as_str).collect();
        format!("pass --stanza with one of: {}", names.join(", "))
    }
}

impl RepoConfig {
    /// What opening a stanza of this repository needs: the configured cipher and, when encrypted,
    /// the passphrase.
    pub fn access(&self) -> Result<crate::repo::handle::Access> {
        Ok(crate::repo::handle::Access { cipher: self.cipher, passphrase: self.passphrase()? })
    }

    /// The passphrase for an encrypted repository: from `passphrase_file` (which must not be
    /// readable by group or others) or `PGFORK_PASSPHRASE`; `None` for an unencrypted one.
    pub fn passphrase(&self) -> Result<Option<Passphrase>> {
        if self.cipher == CipherKind::None {
            return Ok(None);
        }
        if let Some(file) = &self.passphrase_file {
            let meta = std::fs::metadata(file).at("stat", file)?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(Error::refused(
                    format!("passphrase file {} is readable by other users", file.display()),
                    Some(format!("chmod 600 {}", file.display())),
                ));
            }
            let text = std::fs::read_to_string(file).at("read", file)?;
            return Ok(Some(Passphrase::new(text.trim_end_matches(['\n', '\r']))));
        }
        match std::env::var(PASSPHRASE_ENV) {
            Ok(text) if !text.is_empty() => Ok(Some(Passphrase::new(text))),
            _ => Err(Error::refused(
                "the repository is encrypted and no passphrase is set",
                Some(format!("set {PASSPHRASE_ENV} or passphrase_file in the repository's configuration")),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        [repo.main]
        path = "/pg/backup"
        retention_full_type = "time"
        retention_full = 14
        cipher = "aes-256-gcm"

        [stanza.pg-meta]
        data = "/pg/data"
        socket = "/tmp"
    "#;

    #[test]
    fn parses_and_resolves_the_only_stanza() {
        let config = Config::parse(SAMPLE).unwrap();
        let resolved = config.resolve(None).unwrap();
        assert_eq!(resolved.name, "pg-meta");
        assert_eq!(resolved.repo_name, "main");
        assert_eq!(resolved.stanza.port, 5432);
        assert_eq!(resolved.repo.retention_full_type, RetentionType::Time);
        assert_eq!(resolved.repo.compression, Compression::Lz4);
        assert_eq!(resolved.repo.cipher, CipherKind::Aes256Gcm);
        assert!(config.resolve(Some("other")).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Config::parse("[repo.main]\npath = \"/x\"\ncypher = \"none\"\n").is_err());
        assert!(Config::parse("[repo.main]\npath = \"/x\"\ncipher = \"rot13\"\n").is_err());
    }

    #[test]
    fn passphrase_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, "secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut repo = Config::parse(SAMPLE).unwrap().resolve(None).unwrap().repo;
        repo.passphrase_file = Some(file.clone());
        assert!(repo.passphrase().is_err());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(repo.passphrase().unwrap().is_some());
    }
}
