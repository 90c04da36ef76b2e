//! What a mount shows. Loading (repository I/O, done without holding the tree) is split from
//! applying (quick, under the tree's lock): a stanza's sets with `latest` and the archive by
//! timeline, and a set's data directory with the files, WAL, backup_label and
//! postgresql.auto.conf that `restore` would write for it.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::error::{Error, Result};
use crate::mount::content::{ContentReader, DEFAULT_SEGMENT};
use crate::mount::tree::{Content, Fill, Ino, Kind, Node, Tree};
use crate::pg::conf::rewrite;
use crate::pg::lsn::{TimelineId, WalSegment};
use crate::repo::archive::WalFileKind;
use crate::repo::label::SetLabel;
use crate::repo::manifest::Manifest;
use crate::stanza::recovery::{RecoveryPlan, restored_settings};

/// Name of the directory holding a stanza's archive, beside its sets.
pub const ARCHIVE_DIR: &str = "archive";
/// Name of the link to a stanza's newest set.
pub const LATEST: &str = "latest";

/// A set's data directory as it is shown.
#[derive(Debug, Clone)]
pub struct DataDirView {
    /// Index of the stanza in the mount.
    pub stanza: usize,
    /// The set.
    pub manifest: Arc<Manifest>,
    /// Comment above the settings in postgresql.auto.conf.
    pub reason: String,
    /// Settings replaced or added in postgresql.auto.conf.
    pub settings: Vec<(String, String)>,
    /// Whether to show recovery.signal.
    pub recovery_signal: bool,
    /// Archived files shown in pg_wal besides the set's own WAL: the segments (and history
    /// files) on the way to a recovery target.
    pub archived_wal: Vec<(String, u64)>,
}

impl DataDirView {
    /// The view `restore` would write for `manifest`; with `plan`, prepared for recovery to its
    /// target with the archived WAL it needs in pg_wal.
    pub fn new(
        reader: &ContentReader,
        stanza: usize,
        manifest: Arc<Manifest>,
        plan: Option<&RecoveryPlan>,
    ) -> Result<DataDirView> {
        let (reason, mut settings) = restored_settings(&manifest.label, plan);
        if !manifest.tablespaces.is_empty() {
            // Tablespaces are shown in place under pg_tblspc (a tablespace_map would make the
            // server link them to the original locations).
            settings.push(("allow_in_place_tablespaces".into(), "on".into()));
        }
        let archived_wal = match plan {
            Some(plan) => archived_on_path(reader, stanza, &manifest, plan)?,
            None => Vec::new(),
        };
        Ok(DataDirView { stanza, manifest, reason, settings, recovery_signal: plan.is_some(), archived_wal })
    }
}

/// The archived segments of `plan`'s timeline path that the set does not carry, and the history
/// files of its timelines, with their sizes.
fn archived_on_path(
    reader: &ContentReader,
    stanza: usize,
    manifest: &Manifest,
    plan: &RecoveryPlan,
) -> Result<Vec<(String, u64)>> {
    let size = manifest.segment_size().unwrap_or(DEFAULT_SEGMENT);
    let mut out = Vec::new();
    for (tli, first, last) in &plan.timelines {
        let (Some(first), Some(last)) = (WalSegment::parse(first, size), WalSegment::parse(last, size)) else {
            continue;
        };
        for number in first.number..=last.number {
            let name = WalSegment { timeline: TimelineId(*tli), number }.file_name(size);
            if !manifest.wal.iter().any(|w| w.name == name) {
                out.push((name, size));
            }
        }
        if *tli > 1 {
            let history = format!("{tli:08X}.history");
            if let Ok(bytes) = reader.archived(stanza, &history) {
                out.push((history, bytes.len() as u64));
            }
        }
    }
    Ok(out)
}

/// What loading a directory found.
pub enum Loaded {
    /// A stanza's committed sets, oldest first.
    Stanza(Vec<SetLabel>),
    /// A set's data directory, with the text of its postgresql.auto.conf.
    Set(Box<DataDirView>, Option<Vec<u8>>),
    /// The archive's timelines.
    Archive(Vec<u32>),
    /// One timeline's files with their sizes.
    Timeline(Vec<(String, u64)>),
    /// Nothing to show (a set whose manifest went away).
    Gone,
}

/// Loads what `fill` shows; `known` tells the entries the directory already has (their sizes are
/// not looked up again).
pub fn load(reader: &Arc<ContentReader>, fill: &Fill, known: &dyn Fn(&str) -> bool) -> Result<Loaded> {
    match fill {
        Fill::Done => Ok(Loaded::Gone),
        Fill::Stanza(s) => {
            let repo = &reader.stanzas()[*s];
            Ok(Loaded::Stanza(repo.labels()?))
        }
        Fill::Set(s, label) => {
            let repo = &reader.stanzas()[*s];
            match repo.load_manifest(label)? {
                Some(manifest) => {
                    let view = DataDirView::new(reader, *s, Arc::new(manifest), None)?;
                    let auto_conf = auto_conf(reader, &view)?;
                    Ok(Loaded::Set(Box::new(view), auto_conf))
                }
                None => Ok(Loaded::Gone),
            }
        }
        Fill::Archive(s) => {
            let repo = &reader.stanzas()[*s];
            let list = repo.archive().list()?;
            Ok(Loaded::Archive(list.keys().map(|t| t.0).collect()))
        }
        Fill::Timeline(s, tli) => {
            let repo = &reader.stanzas()[*s];
            let listed = repo.archive().list_timeline(TimelineId(*tli))?;
            let mut files = Vec::new();
            for file in listed {
                // Archived files never change: an entry already shown keeps its size.
                let bytes = match file.kind {
                    _ if known(&file.name) => 0,
                    WalFileKind::Segment | WalFileKind::Partial => reader.segment_size(*s)?,
                    _ => reader.archived(*s, &file.name)?.len() as u64,
                };
                files.push((file.name, bytes));
            }
            Ok(Loaded::Timeline(files))
        }
    }
}

/// The text of the set's postgresql.auto.conf, which the view shows rewritten.
pub fn auto_conf(reader: &Arc<ContentReader>, view: &DataDirView) -> Result<Option<Vec<u8>>> {
    let auto_conf = match view.manifest.files.iter().position(|f| f.path == "postgresql.auto.conf") {
        Some(index) => {
            let content = Content::SetFile { stanza: view.stanza, manifest: Arc::clone(&view.manifest), index };
            let size = u32::try_from(view.manifest.files[index].size)
                .map_err(|_| Error::invalid("postgresql.auto.conf", "larger than 4 GiB"))?;
            Some(reader.read(&content, 0, size)?)
        }
        None => None,
    };
    Ok(auto_conf)
}

/// Applies what was loaded to directory `ino`.
pub fn apply(tree: &mut Tree, ino: Ino, fill: &Fill, loaded: Loaded, now: Instant) {
    let mtime = tree.get(ino).map_or(SystemTime::UNIX_EPOCH, |n| n.mtime);
    match (fill, loaded) {
        (Fill::Stanza(s), Loaded::Stanza(labels)) => {
            let names: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
            tree.retain(ino, |name| name == ARCHIVE_DIR || names.iter().any(|n| n == name));
            for label in &labels {
                if tree.child(ino, label.as_str()).is_none() {
                    tree.add(ino, label.as_str(), Node::dir(ino, 0o700, mtime, Fill::Set(*s, label.clone())));
                }
            }
            match labels.last() {
                Some(newest) => {
                    let same = tree
                        .child(ino, LATEST)
                        .and_then(|l| tree.get(l))
                        .is_some_and(|n| matches!(&n.kind, Kind::Link(target) if target == newest.as_str()));
                    if !same {
                        let target = newest.to_string();
                        let link = Node {
                            parent: ino,
                            size: target.len() as u64,
                            kind: Kind::Link(target),
                            perm: 0o777,
                            mtime,
                        };
                        tree.add(ino, LATEST, link);
                    }
                }
                None => tree.retain(ino, |name| name != LATEST),
            }
            if tree.child(ino, ARCHIVE_DIR).is_none() {
                tree.add(ino, ARCHIVE_DIR, Node::dir(ino, 0o755, mtime, Fill::Archive(*s)));
            }
        }
        (Fill::Archive(s), Loaded::Archive(timelines)) => {
            for tli in timelines {
                let name = format!("{tli:08X}");
                if tree.child(ino, &name).is_none() {
                    tree.add(ino, &name, Node::dir(ino, 0o755, mtime, Fill::Timeline(*s, tli)));
                }
            }
        }
        (Fill::Timeline(s, _), Loaded::Timeline(files)) => {
            tree.retain(ino, |name| files.iter().any(|(n, _)| n == name));
            for (name, size) in files {
                if tree.child(ino, &name).is_none() {
                    let content = Content::Archived { stanza: *s, name: name.clone() };
                    tree.add(ino, &name, file_node(ino, content, 0o600, size, mtime));
                }
            }
        }
        (_, Loaded::Set(view, auto_conf)) => build_data_dir(tree, ino, &view, auto_conf.as_deref()),
        _ => {}
    }
    tree.mark_filled(ino, now);
}

fn file_node(parent: Ino, content: Content, perm: u16, size: u64, mtime: SystemTime) -> Node {
    Node { parent, kind: Kind::File(content), perm, size, mtime }
}

/// Fills directory `root` with the data directory of `view`.
pub fn build_data_dir(tree: &mut Tree, root: Ino, view: &DataDirView, auto_conf: Option<&[u8]>) {
    let manifest = &view.manifest;
    let mtime: SystemTime = manifest.stop_time.into();
    let perm = |mode: u32| (mode & 0o7777) as u16;
    for dir in &manifest.dirs {
        let ino = tree.ensure_dir(root, &dir.path, 0o700, mtime);
        if let Some(node) = tree.get_mut(ino) {
            node.perm = perm(dir.mode);
        }
    }
    for (index, file) in manifest.files.iter().enumerate() {
        let (parent_path, name) = file.path.rsplit_once('/').unwrap_or(("", file.path.as_str()));
        let parent = tree.ensure_dir(root, parent_path, 0o700, mtime);
        let content = Content::SetFile { stanza: view.stanza, manifest: Arc::clone(manifest), index };
        tree.add(parent, name, file_node(parent, content, perm(file.mode), file.size, mtime));
    }
    let wal = tree.ensure_dir(root, "pg_wal", 0o700, mtime);
    for entry in &manifest.wal {
        let content = Content::SetWal { stanza: view.stanza, set: manifest.label.clone(), entry: entry.clone() };
        tree.add(wal, &entry.name, file_node(wal, content, 0o600, entry.size, mtime));
    }
    for (name, size) in &view.archived_wal {
        let content = Content::Archived { stanza: view.stanza, name: name.clone() };
        tree.add(wal, name, file_node(wal, content, 0o600, *size, mtime));
    }
    let mut bytes = |name: &str, data: Vec<u8>| {
        let size = data.len() as u64;
        tree.add(root, name, file_node(root, Content::Bytes(data.into()), 0o600, size, mtime));
    };
    bytes("backup_label", manifest.backup_label.clone().into_bytes());
    let settings: Vec<(&str, String)> = view.settings.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let current = auto_conf.map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    bytes("postgresql.auto.conf", rewrite(&current, &view.reason, &settings).into_bytes());
    if view.recovery_signal {
        bytes("recovery.signal", Vec::new());
    }
}
