//! A pgBackRest repository seen through pgfork's repository format, read-only, so that every
//! command that reads (info, mount, verify, restore, pitr --fork, archive-get, scrub) works on it
//! unchanged. The stanza record, the manifests and the archive are made from pgBackRest's as they
//! are asked for; a set's "pack" `n` is file `n` of its pgBackRest manifest, decoded whole and
//! checked (size, SHA-1) before a byte of it is served. What pgfork records about the sets
//! (verifications, scrubs, leases, locks) goes into a state directory of pgfork's own: nothing is
//! ever written into the pgBackRest repository.

pub mod convert;
pub mod decoded;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::error::{Error, IoContext, Result};
use crate::pg::wal_header::SegmentHeader;
use crate::pgbr::{PgbrManifest, PgbrStanza};
use crate::repo::codec::{Codec, Compression};
use crate::repo::crypto::Passphrase;
use crate::repo::keys::Layout;
use crate::repo::label::SetLabel;
use crate::repo::object::{self, FORMAT, Kind};
use crate::repo::stanza::{ClusterIdentity, StanzaRecord};
use crate::repo::storage::{Held, LocalStorage, ObjectMeta, Storage};

use decoded::DecodedFiles;

/// The value of [`StanzaRecord::foreign`] for a pgBackRest repository.
pub const FOREIGN: &str = "pgbackrest";

/// Decoded files kept in scratch at most (bytes); one larger file is still decoded.
const SCRATCH_LIMIT: u64 = 4 << 30;

/// PostgreSQL's default WAL segment size, for a stanza whose archive is empty.
const DEFAULT_SEGMENT: u64 = 16 << 20;

/// What a key of pgfork's layout stands for in the pgBackRest repository.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Record,
    Manifest(SetLabel),
    Pack(SetLabel, u32),
    SetWal(String),
    Archived(String),
    /// pgfork's own records: in the state directory.
    State,
    /// Anything else of pgfork's layout (a set's scratch, a temporary): nothing in this repository.
    Nothing,
}

/// A set's manifest made into pgfork's, sealed; or why it could not be.
type Converted = std::result::Result<Arc<Vec<u8>>, String>;

/// A pgBackRest stanza as a pgfork [`Storage`].
pub struct PgbrAdapter {
    stanza: PgbrStanza,
    layout: Layout,
    state: Arc<LocalStorage>,
    manifests: Mutex<HashMap<String, Arc<PgbrManifest>>>,
    converted: Mutex<HashMap<SetLabel, Converted>>,
    decoded: DecodedFiles,
    segment_size: OnceLock<u64>,
}

impl PgbrAdapter {
    /// Opens stanza `stanza` of the pgBackRest repository in `repository` (keyed like its
    /// `repo1-path`), with its cipher pass when encrypted; pgfork's records go to `state_dir`.
    pub fn open(
        repository: Arc<dyn Storage>,
        stanza: &str,
        passphrase: Option<&Passphrase>,
        state_dir: &Path,
    ) -> Result<PgbrAdapter> {
        let opened = PgbrStanza::open(repository, stanza, passphrase)?;
        Ok(PgbrAdapter {
            stanza: opened,
            layout: Layout::new(stanza),
            state: Arc::new(LocalStorage::new(state_dir)),
            manifests: Mutex::new(HashMap::new()),
            converted: Mutex::new(HashMap::new()),
            // Per user: a mount runs as root, a restore as the repository's user.
            decoded: DecodedFiles::new(&state_dir.join(format!("scratch-{}", nix::unistd::geteuid())), SCRATCH_LIMIT),
            segment_size: OnceLock::new(),
        })
    }

    /// The pgBackRest stanza.
    pub fn stanza(&self) -> &PgbrStanza {
        &self.stanza
    }

    fn route(&self, key: &str) -> Route {
        route(&self.layout, key)
    }

    /// The synthesized record: the stanza's cluster, no compression or cipher of pgfork's.
    fn record(&self) -> Vec<u8> {
        let first_set = self.stanza.sets().first().map_or(0, |s| s.start_time);
        let record = StanzaRecord {
            format: u32::from(FORMAT),
            name: self.layout.stanza().to_string(),
            current: ClusterIdentity {
                system_identifier: self.stanza.system_identifier(),
                pg_version: self.stanza.pg_version(),
                since: chrono::DateTime::from_timestamp(first_set, 0).unwrap_or_default(),
            },
            history: Vec::new(),
            compression: Compression::None,
            key: None,
            exclusive_create: None,
            foreign: Some(FOREIGN.into()),
        };
        let key = self.layout.record();
        let json = serde_json::to_vec(&record).expect("a stanza record serializes: plain data");
        object::seal(&Codec::plain(), Kind::StanzaRecord, key.as_bytes(), &json)
    }

    /// The pgBackRest manifest of `label`, read once.
    fn pgbr_manifest(&self, label: &str) -> Result<Arc<PgbrManifest>> {
        if let Some(m) = lock(&self.manifests).get(label) {
            return Ok(Arc::clone(m));
        }
        let m = Arc::new(self.stanza.manifest(label)?);
        lock(&self.manifests).insert(label.to_string(), Arc::clone(&m));
        Ok(m)
    }

    /// The converted manifest of `label`, sealed as pgfork stores one; made once.
    fn manifest_object(&self, label: &SetLabel) -> Result<Option<Arc<Vec<u8>>>> {
        if self.stanza.set(label.as_str()).is_none() {
            return Ok(None);
        }
        if let Some(done) = lock(&self.converted).get(label) {
            return done.clone().map(Some).map_err(|reason| Error::invalid(format!("pgBackRest set {label}"), reason));
        }
        let made = self.make_manifest(label);
        let kept = made.as_ref().map(Arc::clone).map_err(|e| e.to_string());
        lock(&self.converted).insert(label.clone(), kept);
        made.map(Some)
    }

    fn make_manifest(&self, label: &SetLabel) -> Result<Arc<Vec<u8>>> {
        let pgbr = self.pgbr_manifest(label.as_str())?;
        let manifest = convert::convert(&self.stanza, &pgbr, self.segment_size())?;
        let key = self.layout.manifest(label);
        Ok(Arc::new(object::seal(&Codec::plain(), Kind::Manifest, key.as_bytes(), &manifest.to_json())))
    }

    /// The cluster's WAL segment size, from the header of its first archived segment.
    fn segment_size(&self) -> u64 {
        *self.segment_size.get_or_init(|| {
            let first = self.stanza.archive_list().ok().and_then(|names| {
                names.into_iter().find(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            });
            first
                .and_then(|name| self.stanza.archive_get(&name).ok().flatten())
                .and_then(|bytes| SegmentHeader::parse(&bytes))
                .map_or(DEFAULT_SEGMENT, |h| u64::from(h.segment_size))
        })
    }

    /// `len` bytes at `offset` of file `pack` of set `label`, decoded and checked.
    fn pack_range(&self, label: &SetLabel, pack: u32, offset: u64, len: u64) -> Result<Vec<u8>> {
        let m = self.pgbr_manifest(label.as_str())?;
        let file = m.files.get(pack as usize).ok_or_else(|| {
            Error::invalid(format!("pgBackRest set {label}"), format!("it has no file number {pack}"))
        })?;
        let holder = file.reference.clone().unwrap_or_else(|| label.to_string());
        let what = format!("pgBackRest set {holder}, file {}", file.name);
        self.decoded.read(&(holder, file.name.clone()), file.size, offset, len, &what, |scratch: &mut File| {
            let mut stream = self.stanza.open_file(&m, file)?;
            // The stream checks the size and SHA-1 when it reaches the end: nothing is served
            // from a scratch file whose stream failed.
            let copied = std::io::copy(&mut stream, scratch).map_err(|e| match e.into_inner() {
                Some(inner) => match inner.downcast::<Error>() {
                    Ok(error) => *error,
                    Err(other) => Error::invalid(&what, other.to_string()),
                },
                None => Error::invalid(&what, "read failed"),
            })?;
            if copied != file.size {
                return Err(Error::invalid(&what, format!("{copied} bytes decoded, the manifest says {}", file.size)));
            }
            scratch.flush().at("write", "scratch file")
        })
    }

    fn sealed_wal(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.stanza.archive_get(name)?.map(|bytes| object::seal(&Codec::plain(), Kind::Wal, key.as_bytes(), &bytes)))
    }

    fn refuse_write(&self, key: &str) -> Error {
        Error::refused(
            format!(
                "{} is a pgBackRest repository: pgfork reads it and never writes it ({key})",
                self.stanza_location()
            ),
            Some("back up and archive into a repository of pgfork's (type = \"posix\" or \"s3\")".into()),
        )
    }

    fn stanza_location(&self) -> String {
        format!("stanza {}", self.layout.stanza())
    }

    fn meta(key: String, size: u64, modified: SystemTime) -> ObjectMeta {
        ObjectMeta { key, size, modified }
    }

    /// The sets as pgfork lists them: each one's manifest and packs (what pgBackRest stored for it).
    fn list_sets(&self) -> Vec<ObjectMeta> {
        let mut out = Vec::new();
        for set in self.stanza.sets() {
            let Ok(label) = set.label.parse::<SetLabel>() else { continue };
            let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(set.stop_time).unwrap_or(0));
            out.push(Self::meta(self.layout.manifest(&label), 0, modified));
            out.push(Self::meta(format!("{}000000", self.layout.packs(&label)), set.repo_size_delta, modified));
        }
        out
    }

    fn list_archive(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        for file in self.stanza.archive_files()? {
            let Ok(key) = self.layout.archived(&file.name) else { continue };
            if key.starts_with(prefix) {
                out.push(Self::meta(key, file.stored, file.modified));
            }
        }
        Ok(out)
    }
}

/// What `key`, in pgfork's layout of a stanza, stands for.
fn route(layout: &Layout, key: &str) -> Route {
    let Some(rest) = key.strip_prefix(&layout.root()) else { return Route::Nothing };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["stanza.json"] => Route::Record,
        ["backup", label, "manifest"] => label.parse().map_or(Route::Nothing, Route::Manifest),
        ["backup", label, "pack", n] => match (label.parse(), n.parse()) {
            (Ok(label), Ok(n)) => Route::Pack(label, n),
            _ => Route::Nothing,
        },
        ["backup", _, "wal", name] => Route::SetWal(name.to_string()),
        ["backup", _, "verification" | "scrub"] | ["archive-scrub"] | ["lock"] | ["leases", ..] => Route::State,
        ["archive", _, name] => Route::Archived(name.to_string()),
        _ => Route::Nothing,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Storage for PgbrAdapter {
    fn location(&self) -> String {
        format!("pgBackRest stanza {} in {}", self.layout.stanza(), self.stanza.location())
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        match self.route(key) {
            Route::State => self.state.put(key, bytes),
            _ => Err(self.refuse_write(key)),
        }
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        match self.route(key) {
            Route::State => self.state.put_new(key, bytes),
            _ => Err(self.refuse_write(key)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.route(key) {
            Route::Record => Ok(Some(self.record())),
            Route::Manifest(label) => Ok(self.manifest_object(&label)?.map(|m| m.to_vec())),
            Route::Pack(label, pack) => {
                let m = self.pgbr_manifest(label.as_str())?;
                let size = m.files.get(pack as usize).map_or(0, |f| f.size);
                self.pack_range(&label, pack, 0, size).map(Some)
            }
            Route::SetWal(name) | Route::Archived(name) => self.sealed_wal(key, &name),
            Route::State => self.state.get(key),
            Route::Nothing => Ok(None),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        match self.route(key) {
            Route::Pack(label, pack) => self.pack_range(&label, pack, offset, len),
            _ => {
                let whole = self.get(key)?.ok_or_else(|| Error::invalid(key, "no such object"))?;
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                whole.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| Error::invalid(key, "range past its end"))
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out: Vec<ObjectMeta> = Vec::new();
        if prefix.starts_with(&self.layout.sets()) || self.layout.sets().starts_with(prefix) {
            out.extend(self.list_sets().into_iter().filter(|o| o.key.starts_with(prefix)));
        }
        if prefix.starts_with(&self.layout.archive()) || self.layout.archive().starts_with(prefix) {
            out.extend(self.list_archive(prefix)?);
        }
        out.extend(self.state.list(prefix)?);
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self.route(key) {
            Route::State => self.state.stat(key),
            Route::Nothing => Ok(None),
            _ => Ok(self.list(key)?.into_iter().find(|o| o.key == key)),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.route(key) {
            Route::State => self.state.delete(key),
            _ => Err(self.refuse_write(key)),
        }
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        Err(self.refuse_write(prefix))
    }

    fn exists(&self) -> Result<bool> {
        Ok(true)
    }

    fn remove_stale(&self, prefix: &str) -> Result<u64> {
        self.state.remove_stale(prefix)
    }

    fn fetched_bytes(&self) -> u64 {
        self.stanza.fetched_bytes()
    }

    fn foreign_description(&self) -> Option<String> {
        let newest = self.stanza.sets().last().and_then(|s| self.pgbr_manifest(&s.label).ok());
        let how = match newest {
            Some(m) => format!(
                "compress-type {}, {}, {}{}",
                m.options.compress_type.name(),
                if m.options.bundle { "bundles" } else { "a file per file" },
                if m.options.encrypted { "aes-256-cbc" } else { "not encrypted" },
                if m.block_incremental { ", block incremental" } else { "" }
            ),
            None => "no sets".into(),
        };
        Some(format!("pgBackRest repository, read only: {how}"))
    }

    fn lock(self: Arc<Self>, key: &str, holder: &str) -> Result<Box<dyn Held>> {
        Arc::clone(&self.state).lock(key, holder)
    }

    fn lease(self: Arc<Self>, key: &str, record: &[u8]) -> Result<Box<dyn Held>> {
        Arc::clone(&self.state).lease(key, record)
    }

    fn leases(&self, prefix: &str) -> Result<Vec<Vec<u8>>> {
        self.state.leases(prefix)
    }
}

/// The state directory of a pgBackRest repository named `repo` when the configuration gives none:
/// under the acting user's home (`~/.local/state/pgfork/<repo>`), else the system temporary
/// directory.
pub fn default_state_dir(repo: &str) -> PathBuf {
    let home = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.dir);
    match home {
        Some(home) if home.is_dir() => home.join(".local/state/pgfork").join(repo),
        _ => std::env::temp_dir().join(format!("pgfork-state-{repo}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_route_to_what_they_stand_for() {
        let layout = Layout::new("demo");
        let label: SetLabel = "20250101-000000F".parse().unwrap();
        let adapter_route = |key: &str| route(&layout, key);
        assert_eq!(adapter_route(&layout.record()), Route::Record);
        assert_eq!(adapter_route(&layout.manifest(&label)), Route::Manifest(label.clone()));
        assert_eq!(adapter_route(&layout.pack(&label, 7)), Route::Pack(label.clone(), 7));
        assert_eq!(adapter_route(&layout.verification(&label)), Route::State);
        assert_eq!(adapter_route(&layout.lease("x")), Route::State);
        assert_eq!(adapter_route(&layout.lock()), Route::State);
        assert_eq!(
            adapter_route(&layout.archived("000000010000000000000003").unwrap()),
            Route::Archived("000000010000000000000003".into())
        );
        assert_eq!(adapter_route("other/stanza.json"), Route::Nothing);
        assert_eq!(adapter_route(&format!("{}pack/x", layout.set(&label))), Route::Nothing);
    }
}
