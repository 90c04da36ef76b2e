//! `stanza-create`, `stanza-upgrade`, `stanza-delete`: the record tying a repository stanza to one
//! cluster (system identifier and version), created with its encryption key.

use chrono::Utc;
use serde::Serialize;

use crate::config::{CipherKind, Resolved};
use crate::error::{Error, Result};
use crate::ops::identity::become_owner_of;
use crate::pg::datadir::DataDir;
use crate::repo::crypto::DataKey;
use crate::repo::keys::Layout;
use crate::repo::lease::LeaseInfo;
use crate::repo::object::FORMAT;
use crate::repo::stanza::{ClusterIdentity, StanzaRecord};
use crate::stanza::{lock, storage_of};

/// What a stanza command did.
#[derive(Debug, Clone, Serialize)]
pub struct StanzaReport {
    /// Stanza name.
    pub stanza: String,
    /// What happened: "created", "exists", "upgraded", "unchanged", "deleted".
    pub action: String,
    /// The cluster recorded.
    pub system_identifier: u64,
    /// Its major version.
    pub pg_version: u32,
    /// Cipher of the repository.
    pub cipher: String,
    /// Object storage: whether the server honours conditional create (`If-None-Match: *`); when it
    /// does not, pgfork keeps archive pushes exclusive with its own protocol.
    pub exclusive_create: Option<bool>,
}

fn cluster_identity(resolved: &Resolved) -> Result<(DataDir, ClusterIdentity)> {
    let data = DataDir::open(&resolved.stanza.data)?;
    become_owner_of(data.path())?;
    let control = data.control()?;
    let identity =
        ClusterIdentity { system_identifier: control.system_identifier, pg_version: data.major(), since: Utc::now() };
    Ok((data, identity))
}

/// Creates the stanza (idempotent for the same cluster).
pub fn create(resolved: &Resolved) -> Result<StanzaReport> {
    resolved.repo.refuse_write(&resolved.repo_name, "stanza-create")?;
    let (_, identity) = cluster_identity(resolved)?;
    let storage = storage_of(resolved)?;
    let layout = Layout::new(&resolved.name);
    let report = |action: &str, record: &StanzaRecord| StanzaReport {
        stanza: resolved.name.clone(),
        action: action.into(),
        system_identifier: record.current.system_identifier,
        pg_version: record.current.pg_version,
        cipher: record.cipher_name().into(),
        exclusive_create: record.exclusive_create,
    };
    if let Some(record) = StanzaRecord::load(storage.as_ref(), &layout)? {
        record.check_cluster(identity.system_identifier, identity.pg_version)?;
        // The configuration must agree with the stanza (cipher) and the passphrase open its key.
        crate::repo::handle::Repo::open(storage, &resolved.name, &resolved.repo.access()?)?;
        return Ok(report("exists", &record));
    }
    let key = match (resolved.repo.cipher, resolved.repo.passphrase()?) {
        (CipherKind::None, _) => None,
        (CipherKind::Aes256Gcm, Some(pass)) => Some(DataKey::generate().wrap(&pass)?),
        (CipherKind::Aes256Gcm, None) => {
            return Err(Error::refused("the repository is encrypted and no passphrase is set", None));
        }
    };
    // Object storage: whether the server honours exclusive create on its own (Garage 2.5 does
    // not); recorded so every later run knows which protocol keeps archive pushes exclusive.
    let exclusive_create = match resolved.repo.conditional_create {
        Some(false) => Some(false),
        _ => storage.probe_exclusive_create()?,
    };
    let record = StanzaRecord {
        exclusive_create,
        foreign: None,
        format: u32::from(FORMAT),
        name: resolved.name.clone(),
        current: identity,
        history: Vec::new(),
        compression: resolved.repo.compression,
        key,
    };
    record.save(storage.as_ref())?;
    Ok(report("created", &record))
}

/// Records the cluster's new identity after a major upgrade or a new initdb.
pub fn upgrade(resolved: &Resolved) -> Result<StanzaReport> {
    resolved.repo.refuse_write(&resolved.repo_name, "stanza-upgrade")?;
    let (_, identity) = cluster_identity(resolved)?;
    let storage = storage_of(resolved)?;
    // The configuration must agree with the stanza and the passphrase open its key before
    // anything changes.
    let repo = crate::repo::handle::Repo::open(storage.clone(), &resolved.name, &resolved.repo.access()?)?;
    let mut record = repo.record().clone();
    let action = if record.check_cluster(identity.system_identifier, identity.pg_version).is_ok() {
        "unchanged"
    } else {
        let old = std::mem::replace(&mut record.current, identity);
        record.history.push(old);
        record.save(storage.as_ref())?;
        "upgraded"
    };
    Ok(StanzaReport {
        stanza: resolved.name.clone(),
        action: action.into(),
        system_identifier: record.current.system_identifier,
        pg_version: record.current.pg_version,
        cipher: record.cipher_name().into(),
        exclusive_create: record.exclusive_create,
    })
}

/// Deletes the stanza and every backup in it; refused while its cluster runs unless `force`.
pub fn delete(resolved: &Resolved, force: bool) -> Result<StanzaReport> {
    resolved.repo.refuse_write(&resolved.repo_name, "stanza-delete")?;
    let data = DataDir::open(&resolved.stanza.data)?;
    become_owner_of(data.path())?;
    if let Some(pid) = data.running_server()?
        && !force
    {
        return Err(Error::refused(
            format!(
                "the cluster of stanza {} is running (pid {}); deleting its backups now leaves it unprotected",
                resolved.name, pid.pid
            ),
            Some("stop the cluster first, or pass --force".into()),
        ));
    }
    let storage = storage_of(resolved)?;
    let layout = Layout::new(&resolved.name);
    let record = StanzaRecord::require(storage.as_ref(), &layout)?;
    let _lock = lock(resolved, "stanza-delete")?;
    // A mount or verify reading a set is not pulled out from under (a stale lease is no obstacle).
    let leases: Vec<LeaseInfo> =
        storage.leases(&layout.leases())?.iter().map(|stored| LeaseInfo::open(stored)).collect::<Result<_>>()?;
    if let Some(lease) = leases.first()
        && !force
    {
        return Err(Error::refused(
            format!("backups of stanza {} are in use by {}", resolved.name, lease.holder()),
            Some("wait for it to finish (or unmount it), or pass --force".into()),
        ));
    }
    // The record goes first: from then on the stanza does not exist, whatever remains.
    storage.delete(&layout.record())?;
    storage.delete_prefix(&layout.root())?;
    Ok(StanzaReport {
        stanza: resolved.name.clone(),
        action: "deleted".into(),
        system_identifier: record.current.system_identifier,
        pg_version: record.current.pg_version,
        cipher: record.cipher_name().into(),
        exclusive_create: record.exclusive_create,
    })
}
