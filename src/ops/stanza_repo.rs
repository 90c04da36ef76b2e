//! A stanza's repository opened for an operation: storage, stanza record, codec (with the data
//! key unwrapped), lock and the committed backup sets.

use std::path::{Path, PathBuf};

use crate::config::{RepoConfig, Resolved};
use crate::error::{Error, Result};
use crate::pg::datadir::DataDir;
use crate::pg::session::{ConnTarget, Session};
use crate::repo::codec::Codec;
use crate::repo::label::SetLabel;
use crate::repo::lock::StanzaLock;
use crate::repo::manifest::Manifest;
use crate::repo::stanza::StanzaRecord;
use crate::repo::storage::{LocalStorage, Storage};

/// An opened stanza.
pub struct StanzaRepo {
    /// Stanza name.
    pub name: String,
    /// The repository's storage.
    pub storage: LocalStorage,
    /// The stanza record.
    pub record: StanzaRecord,
    /// Encoding of objects.
    pub codec: Codec,
    /// Repository settings.
    pub settings: RepoConfig,
}

impl StanzaRepo {
    /// Opens the stanza, refusing when it does not exist or the passphrase is wrong.
    pub fn open(resolved: &Resolved) -> Result<StanzaRepo> {
        let storage = LocalStorage::new(&resolved.repo.path);
        let record = StanzaRecord::require(&storage, &resolved.name)?;
        let codec = record.codec(resolved.repo.passphrase()?.as_ref())?;
        Ok(StanzaRepo { name: resolved.name.clone(), storage, record, codec, settings: resolved.repo.clone() })
    }

    /// Takes the stanza's lock for `command`.
    pub fn lock(&self, command: &str) -> Result<StanzaLock> {
        StanzaLock::acquire(&lock_path(&self.settings.path, &self.name), &self.name, command)
    }

    /// Labels of committed sets, oldest first.
    pub fn labels(&self) -> Result<Vec<SetLabel>> {
        Manifest::list_committed(&self.storage, &self.name)
    }

    /// The manifest of `label`; an error naming it when missing or unreadable.
    pub fn manifest(&self, label: &SetLabel) -> Result<Manifest> {
        Manifest::load(&self.storage, &self.codec, &self.name, label)?.ok_or_else(|| {
            Error::refused(
                format!("backup {label} does not exist in stanza {}", self.name),
                Some("list the sets with pgfork info".into()),
            )
        })
    }

    /// Every committed manifest, oldest first.
    pub fn manifests(&self) -> Result<Vec<Manifest>> {
        self.labels()?.iter().map(|l| self.manifest(l)).collect()
    }

    /// Every committed manifest that can be read, oldest first, and the sets that cannot (with the
    /// reason): retention must go on around a damaged set, and must not remove it blindly.
    pub fn readable_manifests(&self) -> Result<Readable> {
        let mut readable = Readable::default();
        for label in self.labels()? {
            match self.manifest(&label) {
                Ok(manifest) => readable.manifests.push(manifest),
                Err(e) => readable.unreadable.push((label, e.to_string())),
            }
        }
        Ok(readable)
    }

    /// Removes set directories that have no manifest: what a crashed or killed backup left.
    /// Call with the lock held. Returns the labels removed.
    pub fn remove_uncommitted(&self) -> Result<Vec<SetLabel>> {
        let mut removed = Vec::new();
        for (label, committed) in Manifest::list_sets(&self.storage, &self.name)? {
            if !committed {
                self.storage.delete_prefix(&Manifest::set_prefix(&self.name, &label))?;
                removed.push(label);
            }
        }
        Ok(removed)
    }
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

/// The lock file of a stanza in a local repository.
pub fn lock_path(repo: &Path, stanza: &str) -> PathBuf {
    repo.join(stanza).join("lock")
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

/// The sets of a stanza split by whether their manifest can be read.
#[derive(Debug, Default)]
pub struct Readable {
    /// Readable manifests, oldest first.
    pub manifests: Vec<Manifest>,
    /// Unreadable sets and why.
    pub unreadable: Vec<(SetLabel, String)>,
}

impl Readable {
    /// Removes from `remove` every set that may depend on an unreadable one: its dependencies are
    /// unknown, so it is kept until the damaged set is repaired or removed by hand.
    pub fn protect(&self, remove: &mut std::collections::BTreeSet<SetLabel>) {
        remove.retain(|label| {
            !self.unreadable.iter().any(|(bad, _)| label.full_part() == bad.full_part())
                && !self.manifests.iter().any(|m| {
                    &m.label == label
                        && m.references
                            .iter()
                            .chain(m.prior.iter())
                            .any(|d| self.unreadable.iter().any(|(bad, _)| bad == d))
                })
        });
    }
}
