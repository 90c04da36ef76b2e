//! Exporting a backup set: the data directory the mount shows for it — the very files, WAL,
//! backup_label and postgresql.auto.conf that `restore` writes (one function builds both) — walked
//! in order and streamed into the archive, each file decoded run by run with the mount's reader
//! (its cache and readahead), nothing written to disk but the export. A lease keeps `expire` off
//! the sets it reads meanwhile.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::mount::content::ContentReader;
use crate::mount::tree::{Content, Fill, Ino, Kind, Node, ROOT, Tree};
use crate::mount::view::{self, DataDirView};
use crate::mount::{DEFAULT_CACHE, default_owner};
use crate::ops::export::manifest::MANIFEST_NAME;
use crate::ops::export::sink::{EntryOwner, Sink};
use crate::ops::export::{ExportReport, Opened};
use crate::progress::Progress;
use crate::repo::label::SetLabel;
use crate::repo::manifest::Manifest;
use crate::stanza::Stanza;
use crate::stanza::recovery::set_and_plan;

/// Bytes of a file read from the repository at a time.
const READ: u32 = 1024 * 1024;

/// A set ready to be streamed: its data directory as a tree, and the reader of its contents.
pub struct SetExport {
    reader: Arc<ContentReader>,
    manifest: Arc<Manifest>,
    tree: Tree,
    total: u64,
    _lease: Box<dyn crate::repo::storage::Held>,
}

/// Opens `label` (the newest set when `None`) of the stanza and builds its data directory.
pub fn open(resolved: &Resolved, label: Option<&SetLabel>) -> Result<(SetExport, Opened)> {
    let stanza = Stanza::open(resolved)?;
    let reader = Arc::new(ContentReader::new(vec![stanza], DEFAULT_CACHE)?);
    let repo = &reader.stanzas()[0];
    let (manifest, _) = set_and_plan(repo, label, None)?;
    let lease = repo.lease("export", manifest.sets_needed())?;
    let manifest = Arc::new(manifest);
    let view = DataDirView::new(&reader, 0, Arc::clone(&manifest), None)?;
    let auto_conf = view::auto_conf(&reader, &view)?;
    let mtime: SystemTime = manifest.stop_time.into();
    let mut tree = Tree::new(Node::dir(ROOT, 0o700, mtime, Fill::Done));
    view::build_data_dir(&mut tree, ROOT, &view, auto_conf.as_deref());
    tree.mark_filled(ROOT, Instant::now());
    let owner = default_owner(resolved)?;
    let total = manifest.stats.database_size + manifest.wal.iter().map(|w| w.size).sum::<u64>();
    let opened = Opened {
        owner: EntryOwner::of_ids(owner.uid, owner.gid),
        mtime: manifest.stop_time.timestamp().max(0) as u64,
        tag: repo.name().to_string(),
    };
    Ok((SetExport { reader, manifest, tree, total, _lease: lease }, opened))
}

impl SetExport {
    /// The set's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Streams the data directory into `sink`.
    pub fn write(
        &self,
        sink: &mut Sink,
        report: &mut ExportReport,
        progress: &dyn Progress,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        progress.begin("export", self.total);
        sink.dir(".", self.tree.get(ROOT).map_or(0o700, |n| u32::from(n.perm)))?;
        self.write_dir(ROOT, "", sink, report, progress, check)?;
        progress.end();
        Ok(())
    }

    fn write_dir(
        &self,
        dir: Ino,
        prefix: &str,
        sink: &mut Sink,
        report: &mut ExportReport,
        progress: &dyn Progress,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        let Some(Kind::Dir { children, .. }) = self.tree.get(dir).map(|n| &n.kind) else {
            return Ok(());
        };
        for (name, &ino) in children {
            // A manifest a backup of an unpacked export kept: the export writes its own.
            if dir == ROOT && name.as_str() == MANIFEST_NAME {
                continue;
            }
            let Some(node) = self.tree.get(ino) else { continue };
            let rel = format!("{prefix}{name}");
            let mode = u32::from(node.perm);
            match &node.kind {
                Kind::Dir { .. } => {
                    sink.dir(&rel, mode)?;
                    self.write_dir(ino, &format!("{rel}/"), sink, report, progress, check)?;
                }
                Kind::File(content) => {
                    let source = ContentRead { reader: &self.reader, content, offset: 0, size: node.size, rel: &rel };
                    sink.file(&rel, node.size, mode, source, progress, check)?;
                    match content {
                        Content::SetWal { .. } | Content::Archived { .. } => report.wal_segments += 1,
                        _ => report.files += 1,
                    }
                }
                Kind::Link(target) => {
                    return Err(Error::invalid(format!("backup file {rel}"), format!("a link to {target}")));
                }
            }
        }
        Ok(())
    }
}

/// A file of the set, read sequentially through the content reader (which decodes the runs of
/// the next bytes ahead on other threads).
struct ContentRead<'a> {
    reader: &'a Arc<ContentReader>,
    content: &'a Content,
    offset: u64,
    size: u64,
    rel: &'a str,
}

impl std::io::Read for ContentRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.offset >= self.size {
            return Ok(0);
        }
        let want = u32::try_from(buf.len()).unwrap_or(READ).min(READ);
        let bytes = self
            .reader
            .read(self.content, self.offset, want)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", self.rel)))?;
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}
