//! A stanza opened for an operation: its configuration and its repository handle, with the lock,
//! the leases and the server checks that operations share. This layer sits below both the
//! operations (`ops`) and the mount, so neither reaches into the other: recovery planning and the
//! settings a restored data directory gets live here too.

pub mod preflight;
pub mod recovery;
pub mod snapshots;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{RepoKind, Resolved, UriStyle};
use crate::error::{Error, Result};
use crate::pg::datadir::DataDir;
use crate::pg::session::{ConnTarget, Session};
use crate::pgbr::adapter::{PgbrAdapter, default_state_dir};
use crate::repo::handle::Repo;
use crate::repo::keys::Layout;
use crate::repo::label::SetLabel;
use crate::repo::lease::LeaseInfo;
use crate::repo::storage::{Held, LocalStorage, S3Settings, S3Storage, Storage};

/// An opened stanza: the repository handle (through `Deref`) and the configuration it came from.
pub struct Stanza {
    /// The configuration of the stanza and its repository.
    pub config: Resolved,
    repo: Repo,
}

impl std::ops::Deref for Stanza {
    type Target = Repo;

    fn deref(&self) -> &Repo {
        &self.repo
    }
}

impl Stanza {
    /// Opens the stanza, refusing when the repository or the stanza does not exist, when the
    /// configured cipher disagrees with the stanza's, or when the passphrase is wrong.
    pub fn open(resolved: &Resolved) -> Result<Stanza> {
        let repo = Repo::open(storage_of(resolved)?, &resolved.name, &resolved.repo.access()?)?;
        if let Some(honoured) = resolved.repo.conditional_create {
            repo.storage().set_exclusive_create(honoured);
        }
        Ok(Stanza { config: resolved.clone(), repo })
    }

    /// The repository handle.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// Takes the stanza's lock for `command` (one backup, expire or stanza-delete at a time).
    pub fn lock(&self, command: &str) -> Result<Box<dyn Held>> {
        lock_storage(self.storage_arc(), self.name(), command)
    }

    /// Leases `sets` for `command` (a mount or verify), so expire keeps them.
    pub fn lease(&self, command: &str, sets: Vec<SetLabel>) -> Result<Box<dyn Held>> {
        let info = LeaseInfo::new(command, sets);
        let key = self.layout().lease(&info.name());
        self.storage_arc().lease(&key, &info.seal(&key))
    }

    /// The leases held now (damaged ones are errors: they might protect a set).
    pub fn leases(&self) -> Result<Vec<LeaseInfo>> {
        self.storage().leases(&self.layout().leases())?.iter().map(|stored| LeaseInfo::open(stored)).collect()
    }
}

/// The storage of the stanza's chosen repository.
pub fn storage_of(resolved: &Resolved) -> Result<Arc<dyn Storage>> {
    let repo = &resolved.repo;
    let place: Arc<dyn Storage> = if repo.in_bucket() {
        Arc::new(S3Storage::new(&S3Settings {
            endpoint: repo.endpoint.clone().unwrap_or_default(),
            bucket: repo.bucket.clone().unwrap_or_default(),
            region: repo.region.clone(),
            prefix: repo.prefix.clone(),
            host_style: repo.uri_style == UriStyle::Host,
            verify_tls: repo.verify_tls,
            ca_file: repo.ca_file.clone(),
            credentials: repo.s3_credentials()?,
            deadlines: repo.deadlines(),
        })?)
    } else {
        Arc::new(LocalStorage::new(&repo.path))
    };
    if repo.kind != RepoKind::Pgbackrest {
        return Ok(place);
    }
    let state = repo.state_path.clone().unwrap_or_else(|| default_state_dir(&resolved.repo_name));
    prepare_state_dir(resolved, &state)?;
    Ok(Arc::new(PgbrAdapter::open(place, &resolved.name, repo.passphrase()?.as_ref(), &state)?))
}

/// Creates the state directory of a pgBackRest repository; created by root, it is given to the
/// repository's user, who writes the records in it.
fn prepare_state_dir(resolved: &Resolved, state: &Path) -> Result<()> {
    if state.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(state).map_err(|e| Error::io("create", state, e))?;
    if nix::unistd::geteuid().is_root()
        && let Some(anchor) = crate::ops::identity::repository_owner_anchor(resolved)
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&anchor).map_err(|e| Error::io("stat", &anchor, e))?;
        std::os::unix::fs::chown(state, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| Error::io("chown", state, e))?;
    }
    Ok(())
}

/// Takes the lock of the stanza `resolved` names, before (or without) opening it.
pub fn lock(resolved: &Resolved, command: &str) -> Result<Box<dyn Held>> {
    lock_storage(storage_of(resolved)?, &resolved.name, command)
}

fn lock_storage(storage: Arc<dyn Storage>, stanza: &str, command: &str) -> Result<Box<dyn Held>> {
    let holder = format!(
        "{command} (pid {} on {}, since {})",
        std::process::id(),
        crate::repo::lease::hostname(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    storage.lock(&Layout::new(stanza).lock(), &holder)
}

/// Refuses a server that does not serve the stanza's data directory or cluster.
pub fn check_server(session: &Session, data: &DataDir, system_identifier: u64) -> Result<()> {
    let served = PathBuf::from(session.show("data_directory")?);
    let served = std::fs::canonicalize(&served).unwrap_or(served);
    if served != data.path() {
        return Err(Error::refused(
            format!(
                "the server on {} serves {}, not the stanza's data directory {}",
                session.target().describe(),
                served.display(),
                data.path().display()
            ),
            Some("set port and socket of the stanza to its own server".into()),
        ));
    }
    let id: i64 = session.query_one("SELECT system_identifier FROM pg_control_system()", &[])?.get(0);
    if id as u64 != system_identifier {
        return Err(Error::refused(
            format!(
                "the server's system identifier {} does not match the stanza's ({system_identifier}): is this the correct stanza?",
                id as u64
            ),
            None,
        ));
    }
    Ok(())
}

/// How to reach the stanza's server: configured socket, else the one in postmaster.pid, else the
/// usual socket directories.
pub fn server_target(resolved: &Resolved, data_dir: &Path, user: &str) -> ConnTarget {
    let host = resolved
        .stanza
        .socket
        .clone()
        .or_else(|| {
            crate::pg::datadir::PostmasterPid::read(data_dir)
                .ok()
                .flatten()
                .and_then(|p| p.socket_dir)
                .map(|d| d.display().to_string())
        })
        .unwrap_or_else(|| "/var/run/postgresql".into());
    ConnTarget {
        host,
        port: resolved.stanza.port,
        user: resolved.stanza.user.clone().unwrap_or_else(|| user.to_string()),
        dbname: "postgres".into(),
    }
}
