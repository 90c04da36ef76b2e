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
//! repo = "main"                   # or repos = ["main", "offsite"]; see config/repo.rs for S3
//! archive_async = false           # archive-push queues WAL beside pg_wal; a pusher stores it
//! archive_async_parallel = 4      # files the pusher stores at a time
//! archive_async_queue_max_mb = 1024   # archive-push fails (never drops WAL) past this
//! ```

mod repo;
mod schedule;
pub mod secrets;

pub use repo::{CipherKind, PASSPHRASE_ENV, RepoConfig, RepoKind, RetentionType, S3Credentials, UriStyle};
pub use schedule::ScheduleConfig;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where the configuration is read from when neither `--config` nor `PGFORK_CONFIG` says.
pub const DEFAULT_CONFIG: &str = "/etc/pgfork/pgfork.toml";

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
    /// When recurring jobs run (`pgfork schedule`).
    pub schedule: Option<ScheduleConfig>,
    /// The file this was read from, as an absolute path.
    #[serde(skip)]
    pub source: Option<PathBuf>,
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
    /// Several repositories, as pgBackRest's repo1, repo2: backups go to the first unless
    /// `--repo` names another, WAL goes to every one, archive-get takes the first that has it.
    pub repos: Option<Vec<String>>,
    /// Patroni's REST API of this member (`http://127.0.0.1:8008`) [default: found from a running
    /// patroni process whose configuration manages the data directory].
    pub patroni: Option<String>,
    /// Where snapshot points live [default: `pgfork-snapshots/<stanza>` beside the data
    /// directory]; on the data directory's file system, never inside it.
    pub snapshot_dir: Option<PathBuf>,
    /// Snapshot points to keep (the newest); all when absent.
    pub snapshot_retention: Option<u32>,
    /// Hours to keep snapshot points; forever when absent.
    pub snapshot_retention_hours: Option<u32>,
    /// A new snapshot point is refused when its file system is fuller than this, in percent.
    #[serde(default = "default_max_used_percent")]
    pub snapshot_max_used_percent: u8,
    /// Scan a reflink snapshot of the data directory (memory-mapped) instead of reading the live
    /// files with pread. The snapshot gives each file a single point in time, but its pages are not
    /// in the page cache: on a cached cluster reading it costs several times the live read.
    #[serde(default)]
    pub snapshot: bool,
    /// Asynchronous archiving: archive-push returns once the WAL file is queued durably beside
    /// pg_wal, and a background pusher stores the queue in every repository.
    #[serde(default)]
    pub archive_async: bool,
    /// Files the asynchronous pusher stores at a time.
    #[serde(default = "default_archive_async_parallel")]
    pub archive_async_parallel: u16,
    /// The asynchronous queue's limit in MiB: past it archive-push fails (PostgreSQL keeps the
    /// WAL and retries) instead of queuing.
    #[serde(default = "default_archive_async_queue_max_mb")]
    pub archive_async_queue_max_mb: u64,
}

fn default_archive_async_parallel() -> u16 {
    4
}

fn default_archive_async_queue_max_mb() -> u64 {
    1024
}

fn default_max_used_percent() -> u8 {
    90
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
    /// Every repository of the stanza, in order (the chosen one among them).
    pub repos: Vec<(String, RepoConfig)>,
    /// The file from which archive-get, run by a server pgfork starts, reads the secrets pgfork
    /// has only in its environment (`--secrets` in the restore_command pgfork writes).
    pub secrets_file: Option<PathBuf>,
}

impl Resolved {
    /// The same stanza with repository `name` chosen (the first when `None`); refused when the
    /// stanza does not use it.
    pub fn with_repo(mut self, name: Option<&str>) -> Result<Resolved> {
        let Some(name) = name else { return Ok(self) };
        let (repo_name, repo) = self.repos.iter().find(|(n, _)| n == name).cloned().ok_or_else(|| {
            let names: Vec<&str> = self.repos.iter().map(|(n, _)| n.as_str()).collect();
            Error::refused(
                format!("stanza {} does not use repository {name}", self.name),
                Some(format!("pass --repo with one of: {}", names.join(", "))),
            )
        })?;
        self.repo_name = repo_name;
        self.repo = repo;
        Ok(self)
    }

    /// One resolution per repository of the stanza, in order.
    pub fn each_repo(&self) -> Vec<Resolved> {
        self.repos
            .iter()
            .map(|(name, repo)| Resolved { repo_name: name.clone(), repo: repo.clone(), ..self.clone() })
            .collect()
    }
}

impl Config {
    /// Reads `path` (or `PGFORK_CONFIG`, or the default location). The path is made absolute
    /// first, against the current directory: it is written into commands that other processes run
    /// from elsewhere (a server's `restore_command` runs in its data directory, a scheduled job in
    /// its user's home), so [`Config::source`] is always absolute.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("PGFORK_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let path = std::path::absolute(&path).map_err(|e| {
            Error::refused(
                format!("cannot make the configuration path {} absolute: {e}", path.display()),
                Some("pass --config with an absolute path".into()),
            )
        })?;
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
        let names: Vec<String> = match (&stanza.repo, &stanza.repos) {
            (Some(_), Some(_)) => {
                return Err(Error::refused(
                    format!("stanza {name} sets both repo and repos"),
                    Some("keep one: repos = [\"first\", \"second\"] lists several".into()),
                ));
            }
            (Some(repo), None) => vec![repo.clone()],
            (None, Some(repos)) if !repos.is_empty() => repos.clone(),
            (None, _) if self.repo.len() == 1 => self.repo.keys().cloned().collect(),
            (None, _) => {
                return Err(Error::refused(
                    format!("stanza {name} names no repository and {} are configured", self.repo.len()),
                    Some("set repo = \"NAME\" in the stanza".into()),
                ));
            }
        };
        let mut repos = Vec::new();
        for repo_name in names {
            let repo = self.repo.get(&repo_name).cloned().ok_or_else(|| {
                Error::refused(format!("repository {repo_name} of stanza {name} is not configured"), None)
            })?;
            repo.validate(&repo_name)?;
            repos.push((repo_name, repo));
        }
        let Some((repo_name, repo)) = repos.first().cloned() else {
            return Err(Error::refused(format!("stanza {name} has no repository"), None));
        };
        Ok(Resolved { config_path: self.source.clone(), name, stanza, repo_name, repo, repos, secrets_file: None })
    }

    fn stanza_hint(&self) -> String {
        let names: Vec<&str> = self.stanza.keys().map(String::as_str).collect();
        format!("pass --stanza with one of: {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::codec::Compression;
    use std::os::unix::fs::PermissionsExt;

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
