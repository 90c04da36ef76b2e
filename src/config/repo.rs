//! A repository's configuration: where it is (a directory, an S3-compatible bucket), how long sets
//! are kept, how objects are encoded, and where the passphrase and the bucket's credentials come
//! from. Secrets are read from files of mode 0600 or the environment (for archive-get run by a
//! server pgfork starts, from a file standing in for it: see `secrets`), never from arguments.
//!
//! ```toml
//! [repo.offsite]
//! type = "s3"                          # "posix" (default): `path` is a directory
//! endpoint = "https://minio:9000"      # certificates verified unless verify_tls = false; ca_file
//! bucket = "pgfork"
//! region = "us-east-1"
//! prefix = "pg"                        # optional key prefix inside the bucket
//! uri_style = "path"                   # or "host"
//! credentials_file = "/etc/pgfork/s3"  # mode 0600, AWS format; else $AWS_ACCESS_KEY_ID …
//! stall_timeout = 30                   # s without a byte: the request is sent again
//! request_timeout = 30                 # s a request may take besides its size at min_rate
//! min_rate = 256                       # KiB/s, of the requests in flight together
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::secrets;
use crate::error::{Error, IoContext, Result};
use crate::repo::codec::Compression;
use crate::repo::crypto::Passphrase;
use crate::repo::storage::Deadlines;

/// The environment variable holding the passphrase (unless a repository names a file).
pub const PASSPHRASE_ENV: &str = "PGFORK_PASSPHRASE";

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

/// What kind of place holds a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    /// A directory of a local (or mounted) file system.
    #[default]
    Posix,
    /// A bucket of an S3-compatible object store.
    S3,
    /// A pgBackRest repository (its `repo1-path`, in a directory or, with `endpoint` and `bucket`,
    /// under `prefix` in a bucket): read, never written.
    Pgbackrest,
}

/// How requests name the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UriStyle {
    /// `https://endpoint/bucket/key`.
    #[default]
    Path,
    /// `https://bucket.endpoint/key`.
    Host,
}

/// One repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Where the repository is.
    #[serde(rename = "type", default)]
    pub kind: RepoKind,
    /// Directory of a posix repository.
    #[serde(default)]
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
    /// S3: the endpoint URL (`https://host:port`).
    pub endpoint: Option<String>,
    /// S3: the bucket.
    pub bucket: Option<String>,
    /// S3: the region.
    #[serde(default = "default_region")]
    pub region: String,
    /// S3: a key prefix inside the bucket.
    #[serde(default)]
    pub prefix: String,
    /// S3: path-style or virtual-host-style requests.
    #[serde(default)]
    pub uri_style: UriStyle,
    /// S3: verify the endpoint's certificate.
    #[serde(default = "default_true")]
    pub verify_tls: bool,
    /// S3: a PEM file of certificate authorities to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// S3: whether to rely on the server's conditional create (`If-None-Match: *`) [default:
    /// what stanza-create found by probing the server]. `false` uses pgfork's own protocol.
    pub conditional_create: Option<bool>,
    /// S3: a credentials file (mode 0600) in the AWS format (`aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_session_token` under `[default]`).
    pub credentials_file: Option<PathBuf>,
    /// S3: seconds a request may receive nothing (a stalled connection) before it is abandoned
    /// and sent again on a new connection [default: 30].
    pub stall_timeout: Option<u64>,
    /// S3: seconds a request may take besides its size at `min_rate` [default: 30].
    pub request_timeout: Option<u64>,
    /// S3: the slowest transfer allowed, in KiB/s, of the requests in flight together [default:
    /// 256].
    pub min_rate: Option<u64>,
    /// pgBackRest repository: where pgfork keeps what it records about the sets (verifications,
    /// scrubs, leases) and its scratch files [default: ~/.local/state/pgfork/<repo> of the user
    /// pgfork acts as].
    pub state_path: Option<PathBuf>,
}

fn default_retention_full() -> u32 {
    2
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_true() -> bool {
    true
}

/// Keys of an S3 bucket; never printed.
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3Credentials(***)")
    }
}

impl RepoConfig {
    /// Refuses settings that do not make a repository of its kind.
    pub fn validate(&self, name: &str) -> Result<()> {
        let missing = |what: &str| {
            Error::refused(
                format!("repository {name} ({}) has no {what}", self.kind_name()),
                Some(format!("set {what} in [repo.{name}]")),
            )
        };
        match self.kind {
            RepoKind::Posix if self.path.as_os_str().is_empty() => Err(missing("path")),
            RepoKind::S3 if self.endpoint.as_deref().is_none_or(str::is_empty) => Err(missing("endpoint")),
            RepoKind::S3 if self.bucket.as_deref().is_none_or(str::is_empty) => Err(missing("bucket")),
            RepoKind::Pgbackrest if self.path.as_os_str().is_empty() && self.bucket.is_none() => {
                Err(missing("path (pgBackRest's repo1-path), or endpoint and bucket"))
            }
            _ if [self.stall_timeout, self.request_timeout, self.min_rate].contains(&Some(0)) => Err(Error::refused(
                format!("repository {name}: stall_timeout, request_timeout and min_rate must be above 0"),
                None,
            )),
            _ => Ok(()),
        }
    }

    /// How long requests to the bucket may take.
    pub fn deadlines(&self) -> Deadlines {
        let default = Deadlines::default();
        Deadlines {
            stall: self.stall_timeout.map_or(default.stall, Duration::from_secs),
            base: self.request_timeout.map_or(default.base, Duration::from_secs),
            min_rate: self.min_rate.map_or(default.min_rate, |kib| kib << 10),
            ..default
        }
    }

    /// The kind as the configuration names it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            RepoKind::Posix => "posix",
            RepoKind::S3 => "s3",
            RepoKind::Pgbackrest => "pgbackrest",
        }
    }

    /// Whether this is a pgBackRest repository kept in a bucket (else in a directory).
    pub fn in_bucket(&self) -> bool {
        self.kind == RepoKind::S3 || (self.kind == RepoKind::Pgbackrest && self.bucket.is_some())
    }

    /// The local directory of a repository in a directory; `None` for object storage.
    pub fn local_path(&self) -> Option<&Path> {
        (!self.in_bucket()).then_some(self.path.as_path())
    }

    /// Refuses `command`, which writes, for a repository pgfork only reads.
    pub fn refuse_write(&self, name: &str, command: &str) -> Result<()> {
        if self.kind != RepoKind::Pgbackrest {
            return Ok(());
        }
        Err(Error::refused(
            format!("{command}: repository {name} is a pgBackRest repository, which pgfork reads and never writes"),
            Some(
                "pass --repo with a repository of pgfork's (type = \"posix\" or \"s3\"), or use pgbackrest for this one"
                    .into(),
            ),
        ))
    }

    /// What opening a stanza of this repository needs: the configured cipher and, when encrypted,
    /// the passphrase.
    pub fn access(&self) -> Result<crate::repo::handle::Access> {
        Ok(crate::repo::handle::Access { cipher: self.cipher, passphrase: self.passphrase()? })
    }

    /// The passphrase for an encrypted repository: from `passphrase_file` (which must not be
    /// readable by group or others) or `PGFORK_PASSPHRASE` (see [`secrets::var`]); `None` for an
    /// unencrypted one.
    pub fn passphrase(&self) -> Result<Option<Passphrase>> {
        if self.kind == RepoKind::Pgbackrest {
            // pgBackRest's repo1-cipher-pass: the repository says whether it needs one.
            return match (&self.passphrase_file, secrets::var(PASSPHRASE_ENV)) {
                (Some(file), _) => Ok(Some(Passphrase::new(read_private(file)?.trim_end_matches(['\n', '\r'])))),
                (None, Some(text)) => Ok(Some(Passphrase::new(text))),
                _ => Ok(None),
            };
        }
        if self.cipher == CipherKind::None {
            return Ok(None);
        }
        if let Some(file) = &self.passphrase_file {
            let text = read_private(file)?;
            return Ok(Some(Passphrase::new(text.trim_end_matches(['\n', '\r']))));
        }
        match secrets::var(PASSPHRASE_ENV) {
            Some(text) => Ok(Some(Passphrase::new(text))),
            None => Err(Error::refused(
                "the repository is encrypted and no passphrase is set",
                Some(format!("set {PASSPHRASE_ENV} or passphrase_file in the repository's configuration")),
            )),
        }
    }

    /// The bucket's credentials: from `credentials_file`, else `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` (see [`secrets::var`]).
    pub fn s3_credentials(&self) -> Result<S3Credentials> {
        if let Some(file) = &self.credentials_file {
            let text = read_private(file)?;
            let value = |key: &str| aws_ini_value(&text, key);
            return match (value("aws_access_key_id"), value("aws_secret_access_key")) {
                (Some(access_key_id), Some(secret_access_key)) => {
                    Ok(S3Credentials { access_key_id, secret_access_key, session_token: value("aws_session_token") })
                }
                _ => Err(Error::refused(
                    format!("{} has no aws_access_key_id and aws_secret_access_key under [default]", file.display()),
                    None,
                )),
            };
        }
        let env = secrets::var;
        match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => {
                Ok(S3Credentials { access_key_id, secret_access_key, session_token: env("AWS_SESSION_TOKEN") })
            }
            _ => Err(Error::refused(
                "no credentials for the S3 repository",
                Some("set credentials_file in the repository's configuration, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into()),
            )),
        }
    }
}

/// Reads a secret file, refusing one other users can read.
fn read_private(file: &Path) -> Result<String> {
    let meta = std::fs::metadata(file).at("stat", file)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::refused(
            format!("{} is readable by other users", file.display()),
            Some(format!("chmod 600 {}", file.display())),
        ));
    }
    std::fs::read_to_string(file).at("read", file)
}

/// `key` of the `[default]` profile of an AWS-format credentials file (lines `key = value`;
/// before any section header counts as default too).
fn aws_ini_value(text: &str, key: &str) -> Option<String> {
    let mut in_default = true;
    for line in text.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_default = section.trim() == "default";
            continue;
        }
        if !in_default || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_string()).filter(|v| !v.is_empty());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_are_read_in_the_aws_format() {
        let text = "[other]\naws_access_key_id = no\n\n[default]\naws_access_key_id = AK\naws_secret_access_key=SK\n";
        assert_eq!(aws_ini_value(text, "aws_access_key_id").as_deref(), Some("AK"));
        assert_eq!(aws_ini_value(text, "aws_secret_access_key").as_deref(), Some("SK"));
        assert_eq!(aws_ini_value(text, "aws_session_token"), None);
        assert_eq!(aws_ini_value("aws_access_key_id=top\n", "aws_access_key_id").as_deref(), Some("top"));
    }

    #[test]
    fn request_deadlines_are_set_per_repository() {
        let repo = |lines: &str| {
            let text = format!("[repo.b]\ntype = \"s3\"\nendpoint = \"http://s3\"\nbucket = \"b\"\n{lines}");
            crate::config::Config::parse(&text).unwrap().repo.remove("b").unwrap()
        };
        assert_eq!(repo("").deadlines(), Deadlines::default());
        let set = repo("stall_timeout = 2\nrequest_timeout = 5\nmin_rate = 64\n");
        let d = set.deadlines();
        assert_eq!((d.stall, d.base, d.min_rate), (Duration::from_secs(2), Duration::from_secs(5), 64 << 10));
        assert!(set.validate("b").is_ok());
        assert!(repo("stall_timeout = 0\n").validate("b").is_err());
    }

    #[test]
    fn credentials_never_print() {
        let creds =
            S3Credentials { access_key_id: "AK".into(), secret_access_key: "SECRET".into(), session_token: None };
        assert!(!format!("{creds:?}").contains("SECRET"));
    }
}
