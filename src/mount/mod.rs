//! `mount`: the repository as a read-only FUSE file system. Either the whole repository (a
//! directory per stanza with its sets, `latest` and the archive by timeline) or one set as a data
//! directory ready for PostgreSQL (its files, the WAL it needs and, for a target, the recovery
//! settings). Contents are decoded run by run on read; nothing is restored.

pub mod content;
pub mod fs;
pub mod scratch;
pub mod session;
pub mod tree;
pub mod view;
pub mod writable;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::mount::content::ContentReader;
use crate::mount::fs::{MountFs, Owner};
use crate::mount::session::Mounted;
use crate::mount::tree::{Fill, Node, ROOT, Tree};
use crate::mount::view::DataDirView;
use crate::repo::label::SetLabel;
use crate::repo::manifest::Manifest;
use crate::repo::storage::Held;
use crate::stanza::Stanza;
use crate::stanza::recovery::{RecoveryPlan, RecoveryRequest, set_and_plan};
use crate::util::ms_since;

/// Decoded runs kept in memory by default.
pub const DEFAULT_CACHE: usize = 64 * 1024 * 1024;

/// What to show.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every given stanza, browsable.
    Repository(Vec<Resolved>),
    /// One set of a stanza as a data directory.
    DataDir(Box<DataDirRequest>),
}

/// One set as a data directory.
#[derive(Debug, Clone)]
pub struct DataDirRequest {
    /// The stanza.
    pub resolved: Resolved,
    /// The set; by default the newest (for a time or LSN target, the newest ending before it).
    pub set: Option<SetLabel>,
    /// With a target: the recovery settings and the archived WAL up to it.
    pub recovery: Option<RecoveryRequest>,
    /// Settings added to postgresql.auto.conf after the recovery settings.
    pub extra_settings: Vec<(String, String)>,
    /// Who uses the set, for the lease (`mount`, `verify`).
    pub command: String,
}

/// A file system ready to mount.
pub struct Prepared {
    /// The file system.
    pub fs: MountFs,
    /// Its content reader (read failures are recorded there).
    pub reader: Arc<ContentReader>,
    /// For a data directory: the set shown.
    pub manifest: Option<Arc<Manifest>>,
    /// For a data directory with a target: the checked recovery plan.
    pub plan: Option<RecoveryPlan>,
    /// For a data directory: the lease that keeps expire from removing the sets it reads.
    pub lease: Option<Box<dyn Held>>,
}

/// Opens the stanzas (refusing a wrong passphrase), checks the set and target, and builds the
/// file system.
pub fn prepare(scope: &Scope, owner: Option<Owner>, cache_bytes: usize) -> Result<Prepared> {
    let now = SystemTime::now();
    match scope {
        Scope::Repository(stanzas) => {
            let repos = stanzas.iter().map(Stanza::open).collect::<Result<Vec<_>>>()?;
            let owner = match owner {
                Some(owner) => owner,
                None => match stanzas.first() {
                    Some(first) => default_owner(first)?,
                    None => Owner { uid: 0, gid: 0 },
                },
            };
            let names: Vec<String> = repos.iter().map(|r| r.name().to_string()).collect();
            let reader = Arc::new(ContentReader::new(repos, cache_bytes)?);
            let mut tree = Tree::new(Node::dir(ROOT, 0o755, now, Fill::Done));
            for (i, name) in names.iter().enumerate() {
                tree.add(ROOT, name, Node::dir(ROOT, 0o755, now, Fill::Stanza(i)));
            }
            tree.mark_filled(ROOT, Instant::now());
            let fs = MountFs::new(tree, Arc::clone(&reader), owner);
            Ok(Prepared { fs, reader, manifest: None, plan: None, lease: None })
        }
        Scope::DataDir(request) => {
            let owner = match owner {
                Some(owner) => owner,
                None => default_owner(&request.resolved)?,
            };
            let repo = Stanza::open(&request.resolved)?;
            let reader = Arc::new(ContentReader::new(vec![repo], cache_bytes)?);
            let repo = &reader.stanzas()[0];
            let (manifest, plan) = set_and_plan(repo, request.set.as_ref(), request.recovery.as_ref())?;
            let lease = repo.lease(&request.command, manifest.sets_needed())?;
            let manifest = Arc::new(manifest);
            let mut view = DataDirView::new(&reader, 0, Arc::clone(&manifest), plan.as_ref())?;
            view.settings.extend(request.extra_settings.iter().cloned());
            let auto_conf = view::auto_conf(&reader, &view)?;
            let mut tree = Tree::new(Node::dir(ROOT, 0o700, manifest.stop_time.into(), Fill::Done));
            view::build_data_dir(&mut tree, ROOT, &view, auto_conf.as_deref());
            tree.mark_filled(ROOT, Instant::now());
            let fs = MountFs::new(tree, Arc::clone(&reader), owner);
            Ok(Prepared { fs, reader, manifest: Some(manifest), plan, lease: Some(lease) })
        }
    }
}

/// The owner shown for the files: the local repository directory's owner, else the stanza's data
/// directory's; `postgres` when root owns it or there is none (PostgreSQL must be able to read
/// what it boots from).
pub fn default_owner(resolved: &Resolved) -> Result<Owner> {
    let anchors = resolved.repo.local_path().into_iter().chain([resolved.stanza.data.as_path()]);
    for anchor in anchors {
        if let Ok(meta) = std::fs::metadata(anchor)
            && meta.uid() != 0
        {
            return Ok(Owner { uid: meta.uid(), gid: meta.gid() });
        }
    }
    match nix::unistd::User::from_name("postgres").ok().flatten() {
        Some(user) => Ok(Owner { uid: user.uid.as_raw(), gid: user.gid.as_raw() }),
        None => Ok(Owner { uid: 0, gid: 0 }),
    }
}

/// What `mount` reports once mounted.
#[derive(Debug, Clone, Serialize)]
pub struct MountReport {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// The set shown, for a data directory.
    pub set: Option<SetLabel>,
    /// The recovery plan, for a target.
    pub plan: Option<RecoveryPlan>,
    /// Milliseconds from start to mounted.
    pub mount_ms: f64,
    /// The mounting process.
    pub pid: u32,
    /// Bytes fetched from the repositories so far (manifests and what was read ahead).
    pub bytes_fetched: u64,
}

/// What a mount did, once unmounted.
#[derive(Debug, Clone, Serialize)]
pub struct MountStats {
    /// The mount point.
    pub mountpoint: PathBuf,
    /// Bytes fetched from the repositories while mounted.
    pub bytes_fetched: u64,
    /// Reads that failed (corrupt or missing runs), by file.
    pub read_failures: Vec<content::ReadFailure>,
    /// Seconds mounted.
    pub seconds: f64,
}

/// Mounts `prepared` at `mountpoint` and serves it until a termination signal arrives (then
/// unmounts) or someone unmounts it. `ready` is called once mounted.
pub fn serve(
    prepared: Prepared,
    mountpoint: &Path,
    signals: &Receiver<nix::sys::signal::Signal>,
    started: Instant,
    ready: impl FnOnce(&MountReport),
) -> Result<MountStats> {
    let report = MountReport {
        mountpoint: std::path::absolute(mountpoint).map_err(|e| Error::io("resolve", mountpoint, e))?,
        set: prepared.manifest.as_ref().map(|m| m.label.clone()),
        plan: prepared.plan.clone(),
        mount_ms: 0.0,
        pid: std::process::id(),
        bytes_fetched: 0,
    };
    // The lease lives as long as the mount.
    let _lease = prepared.lease;
    let reader = Arc::clone(&prepared.reader);
    let mounted = session::mount(prepared.fs, mountpoint)?;
    let mounted_at = Instant::now();
    ready(&MountReport { mount_ms: ms_since(started), bytes_fetched: reader.bytes_fetched(), ..report.clone() });
    wait_for_end(mounted, signals)?;
    Ok(MountStats {
        mountpoint: report.mountpoint,
        bytes_fetched: reader.bytes_fetched(),
        read_failures: reader.failures(),
        seconds: mounted_at.elapsed().as_secs_f64(),
    })
}

/// Waits until `mounted` is unmounted from outside, or a signal asks to unmount it.
pub fn wait_for_end(mut mounted: Mounted, signals: &Receiver<nix::sys::signal::Signal>) -> Result<()> {
    loop {
        match signals.recv_timeout(Duration::from_millis(200)) {
            Ok(signal) => {
                tracing::info!("{signal}: unmounting {}", mounted.mountpoint().display());
                return mounted.unmount();
            }
            Err(RecvTimeoutError::Timeout) if mounted.is_finished() => return mounted.join(),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return mounted.unmount(),
        }
    }
}
