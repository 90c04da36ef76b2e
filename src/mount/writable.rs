//! The write side of a mount a server boots on (`verify`): new files and directories, renames and
//! removals change the in-memory tree; data goes to the copy-on-write [`Layer`] of each file. A
//! mount without a scratch directory refuses all of it with EROFS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, RenameFlags};

use crate::error::Error;
use crate::mount::fs::MountFs;
use crate::mount::scratch::{Layer, Scratch, Source};
use crate::mount::tree::{Content, Fill, Ino, Kind, Node};

/// The scratch directory and the layers of the files written so far.
pub struct WriteState {
    scratch: Scratch,
    layers: Mutex<HashMap<Ino, Arc<Mutex<Layer>>>>,
}

impl WriteState {
    /// Writes go to scratch files in `scratch`.
    pub fn new(scratch: Scratch) -> WriteState {
        WriteState { scratch, layers: Mutex::new(HashMap::new()) }
    }

    /// The layer of `ino`, if it was written.
    pub fn layer(&self, ino: Ino) -> Option<Arc<Mutex<Layer>>> {
        self.layers.lock().expect("layers lock").get(&ino).cloned()
    }

    fn drop_layer(&self, ino: Ino) {
        self.layers.lock().expect("layers lock").remove(&ino);
    }
}

fn io_errno(e: &Error) -> Errno {
    match e {
        Error::Io { source, .. } => source.raw_os_error().map(Errno::from_i32).unwrap_or(Errno::EIO),
        _ => Errno::EIO,
    }
}

impl MountFs {
    fn writes(&self) -> Result<&WriteState, Errno> {
        self.write_state().ok_or(Errno::EROFS)
    }

    /// The layer of file `ino`, created over its backup contents on first use.
    fn layer_of(&self, ino: Ino) -> Result<(Arc<Mutex<Layer>>, Content), Errno> {
        let writes = self.writes()?;
        let (content, size) = {
            let tree = self.tree().read().expect("tree lock");
            match tree.get(ino).map(|n| (&n.kind, n.size)) {
                Some((Kind::File(content), size)) => (content.clone(), size),
                Some(_) => return Err(Errno::EISDIR),
                None => return Err(Errno::ENOENT),
            }
        };
        let mut layers = writes.layers.lock().expect("layers lock");
        if let Some(layer) = layers.get(&ino) {
            return Ok((Arc::clone(layer), content));
        }
        let layer = Arc::new(Mutex::new(writes.scratch.layer(ino, size).map_err(|e| io_errno(&e))?));
        layers.insert(ino, Arc::clone(&layer));
        Ok((layer, content))
    }

    /// Reads through the layer of a written file.
    pub(super) fn read_layered(
        &self,
        layer: &Mutex<Layer>,
        content: &Content,
        offset: u64,
        size: u32,
    ) -> crate::Result<Vec<u8>> {
        let (plan, mut out) = {
            let layer = layer.lock().expect("layer lock");
            let plan = layer.plan_read(offset, u64::from(size));
            let total: u64 = plan.iter().map(|(_, n, _)| n).sum();
            let mut out = vec![0u8; total as usize];
            let mut at = 0usize;
            for (start, len, source) in &plan {
                if *source == Source::Written {
                    layer.read_written(*start, &mut out[at..at + *len as usize])?;
                }
                at += *len as usize;
            }
            (plan, out)
        };
        let mut at = 0usize;
        for (start, len, source) in plan {
            if source == Source::Base {
                let bytes = self.reader().read(content, start, len as u32)?;
                out[at..at + bytes.len()].copy_from_slice(&bytes);
            }
            at += len as usize;
        }
        Ok(out)
    }

    fn base_reader<'a>(&'a self, content: &'a Content) -> impl Fn(u64, &mut [u8]) -> crate::Result<()> + 'a {
        move |at, buf: &mut [u8]| {
            let bytes = self.reader().read(content, at, buf.len() as u32)?;
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(())
        }
    }

    /// Writes `data` at `offset` of file `ino`.
    pub(super) fn write_at(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let (layer, content) = self.layer_of(ino)?;
        let mut layer = layer.lock().expect("layer lock");
        layer.write(offset, data, self.base_reader(&content)).map_err(|e| {
            self.reader().record_failure(&self.tree().read().expect("tree lock").path(ino), &e);
            io_errno(&e)
        })?;
        Ok(data.len() as u32)
    }

    /// Changes the size or the permissions of `ino`.
    pub(super) fn set_attr(&self, ino: Ino, mode: Option<u32>, size: Option<u64>) -> Result<FileAttr, Errno> {
        if let Some(size) = size {
            let (layer, content) = self.layer_of(ino)?;
            let mut layer = layer.lock().expect("layer lock");
            layer.truncate(size, self.base_reader(&content)).map_err(|e| io_errno(&e))?;
        }
        if let Some(mode) = mode {
            self.writes()?;
            let mut tree = self.tree().write().expect("tree lock");
            let node = tree.get_mut(ino).ok_or(Errno::ENOENT)?;
            node.perm = (mode & 0o7777) as u16;
        }
        self.attr_of(ino)
    }

    /// Adds `node` as `name` in directory `parent`; EEXIST when the name is taken.
    pub(super) fn add_node(&self, parent: Ino, name: &str, node: Node) -> Result<Ino, Errno> {
        self.writes()?;
        let mut tree = self.tree().write().expect("tree lock");
        match tree.get(parent).map(|p| &p.kind) {
            Some(Kind::Dir { .. }) => {}
            Some(_) => return Err(Errno::ENOTDIR),
            None => return Err(Errno::ENOENT),
        }
        if tree.child(parent, name).is_some() {
            return Err(Errno::EEXIST);
        }
        Ok(tree.add(parent, name, node))
    }

    /// A new empty file.
    pub(super) fn create_file(&self, parent: Ino, name: &str, mode: u32) -> Result<Ino, Errno> {
        let empty: Arc<[u8]> = Arc::from(Vec::new());
        let node = Node {
            parent,
            kind: Kind::File(Content::Bytes(empty)),
            perm: (mode & 0o7777) as u16,
            size: 0,
            mtime: SystemTime::now(),
        };
        let ino = self.add_node(parent, name, node)?;
        self.layer_of(ino)?;
        Ok(ino)
    }

    /// A new directory.
    pub(super) fn create_dir(&self, parent: Ino, name: &str, mode: u32) -> Result<Ino, Errno> {
        self.add_node(parent, name, Node::dir(parent, (mode & 0o7777) as u16, SystemTime::now(), Fill::Done))
    }

    /// A new symbolic link.
    pub(super) fn create_link(&self, parent: Ino, name: &str, target: &str) -> Result<Ino, Errno> {
        let node = Node {
            parent,
            size: target.len() as u64,
            kind: Kind::Link(target.to_string()),
            perm: 0o777,
            mtime: SystemTime::now(),
        };
        self.add_node(parent, name, node)
    }

    /// Removes entry `name` of `parent`: a file or link (`dir` false) or an empty directory.
    pub(super) fn remove(&self, parent: Ino, name: &str, dir: bool) -> Result<(), Errno> {
        let writes = self.writes()?;
        let mut tree = self.tree().write().expect("tree lock");
        let ino = tree.child(parent, name).ok_or(Errno::ENOENT)?;
        removable(&tree.get(ino).ok_or(Errno::ENOENT)?.kind, dir)?;
        tree.retain(parent, |n| n != name);
        // Its scratch data is freed now: PostgreSQL closes a file before removing it.
        writes.drop_layer(ino);
        Ok(())
    }

    /// Moves `name` of `parent` to `new_name` of `new_parent`, replacing what is there unless
    /// `flags` say not to.
    pub(super) fn rename_entry(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let writes = self.writes()?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let mut tree = self.tree().write().expect("tree lock");
        let ino = tree.child(parent, name).ok_or(Errno::ENOENT)?;
        if !matches!(tree.get(new_parent).map(|n| &n.kind), Some(Kind::Dir { .. })) {
            return Err(Errno::ENOTDIR);
        }
        let is_dir = matches!(tree.get(ino).map(|n| &n.kind), Some(Kind::Dir { .. }));
        if let Some(existing) = tree.child(new_parent, new_name) {
            if existing == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            removable(&tree.get(existing).ok_or(Errno::ENOENT)?.kind, is_dir)?;
            writes.drop_layer(existing);
        }
        tree.retain(parent, |n| n != name);
        tree.attach(new_parent, new_name, ino);
        Ok(())
    }
}

/// Whether a node of `kind` may be removed (or replaced) as a directory (`dir`) or as a file:
/// the errors `rmdir`, `unlink` and `rename` give.
fn removable(kind: &Kind, dir: bool) -> Result<(), Errno> {
    match (kind, dir) {
        (Kind::Dir { children, .. }, true) if !children.is_empty() => Err(Errno::ENOTEMPTY),
        (Kind::Dir { .. }, false) => Err(Errno::EISDIR),
        (Kind::Dir { .. }, true) => Ok(()),
        (_, true) => Err(Errno::ENOTDIR),
        (_, false) => Ok(()),
    }
}
