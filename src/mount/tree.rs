//! The inode table of a mount: directories, files and links. Directories that mirror the
//! repository (a stanza's sets, a set's data directory, the archive) are filled when first looked
//! at; those that change while mounted (sets come and go, WAL arrives) are filled again once
//! their listing is older than [`REFRESH`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::repo::label::SetLabel;
use crate::repo::manifest::{Manifest, WalEntry};

/// Inode number; the root is 1.
pub type Ino = u64;

/// The root directory's inode.
pub const ROOT: Ino = 1;

/// How long a changing directory's listing is trusted.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// Bytes made by the mount (backup_label, the rewritten postgresql.auto.conf, recovery.signal).
    Bytes(Arc<[u8]>),
    /// File `index` of a set's manifest, read run by run from the packs.
    SetFile {
        /// Index of the stanza in the mount.
        stanza: usize,
        /// The set's manifest.
        manifest: Arc<Manifest>,
        /// Index in `manifest.files`.
        index: usize,
    },
    /// A WAL segment a set carries.
    SetWal {
        /// Index of the stanza in the mount.
        stanza: usize,
        /// The set.
        set: SetLabel,
        /// The segment.
        entry: WalEntry,
    },
    /// A file of the WAL archive.
    Archived {
        /// Index of the stanza in the mount.
        stanza: usize,
        /// Its name (`000000010000000000000003`, `00000002.history`).
        name: String,
    },
}

/// How a directory gets (and refreshes) its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fill {
    /// Complete: nothing to load.
    Done,
    /// A stanza: its sets, `latest` and `archive` (refreshed).
    Stanza(usize),
    /// A set's data directory, built once from its manifest.
    Set(usize, SetLabel),
    /// The archive of a stanza: one directory per timeline (refreshed).
    Archive(usize),
    /// One timeline of the archive (refreshed).
    Timeline(usize, u32),
}

/// What a node is.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A directory.
    Dir {
        /// Entries by name.
        children: BTreeMap<String, Ino>,
        /// How entries are loaded.
        fill: Fill,
        /// When they were last loaded (`None`: never).
        filled: Option<Instant>,
    },
    /// A regular file.
    File(Content),
    /// A symbolic link to this target.
    Link(String),
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Node {
    /// Parent directory (the root is its own parent).
    pub parent: Ino,
    /// What it is.
    pub kind: Kind,
    /// Permission bits.
    pub perm: u16,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
}

impl Node {
    /// An empty directory filled by `fill`.
    pub fn dir(parent: Ino, perm: u16, mtime: SystemTime, fill: Fill) -> Node {
        Node { parent, kind: Kind::Dir { children: BTreeMap::new(), fill, filled: None }, perm, size: 0, mtime }
    }

    /// Whether the directory must be (re)loaded before use.
    pub fn needs_fill(&self, now: Instant) -> bool {
        match &self.kind {
            Kind::Dir { fill: Fill::Done, .. } => false,
            Kind::Dir { fill: Fill::Set(..), filled, .. } => filled.is_none(),
            Kind::Dir { filled, .. } => filled.is_none_or(|at| now.duration_since(at) >= REFRESH),
            _ => false,
        }
    }
}

/// All inodes of a mount. Inodes are never reused: an entry removed from a directory (an expired
/// set) keeps its inode, so open files fail cleanly instead of reading another file.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// A tree whose root is `root`.
    pub fn new(root: Node) -> Tree {
        Tree { nodes: vec![root] }
    }

    /// The node `ino`.
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// The node `ino`, mutably.
    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get_mut(i as usize))
    }

    /// Adds `node` under `parent` as `name` (replacing an entry of that name) and returns its inode.
    pub fn add(&mut self, parent: Ino, name: &str, node: Node) -> Ino {
        self.nodes.push(node);
        let ino = self.nodes.len() as Ino;
        if let Some(Kind::Dir { children, .. }) = self.get_mut(parent).map(|n| &mut n.kind) {
            children.insert(name.to_string(), ino);
        }
        ino
    }

    /// Makes the existing node `ino` the entry `name` of `parent` (a rename).
    pub fn attach(&mut self, parent: Ino, name: &str, ino: Ino) {
        if let Some(node) = self.get_mut(ino) {
            node.parent = parent;
        }
        if let Some(Kind::Dir { children, .. }) = self.get_mut(parent).map(|n| &mut n.kind) {
            children.insert(name.to_string(), ino);
        }
    }

    /// The entry `name` of directory `parent`.
    pub fn child(&self, parent: Ino, name: &str) -> Option<Ino> {
        match &self.get(parent)?.kind {
            Kind::Dir { children, .. } => children.get(name).copied(),
            _ => None,
        }
    }

    /// The directory at `path` (components separated by `/`) under `base`, created with `perm`
    /// where missing.
    pub fn ensure_dir(&mut self, base: Ino, path: &str, perm: u16, mtime: SystemTime) -> Ino {
        let mut at = base;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            at = match self.child(at, part) {
                Some(ino) => ino,
                None => self.add(at, part, Node::dir(at, perm, mtime, Fill::Done)),
            };
        }
        at
    }

    /// Marks directory `ino` as loaded now.
    pub fn mark_filled(&mut self, ino: Ino, now: Instant) {
        if let Some(Kind::Dir { filled, .. }) = self.get_mut(ino).map(|n| &mut n.kind) {
            *filled = Some(now);
        }
    }

    /// Removes the entries of directory `ino` whose names `keep` rejects (their inodes live on).
    pub fn retain(&mut self, ino: Ino, keep: impl Fn(&str) -> bool) {
        if let Some(Kind::Dir { children, .. }) = self.get_mut(ino).map(|n| &mut n.kind) {
            children.retain(|name, _| keep(name));
        }
    }

    /// The path of `ino` below the root, for messages.
    pub fn path(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT {
            let Some(parent) = self.get(at).map(|n| n.parent) else { break };
            let name = match self.get(parent).map(|p| &p.kind) {
                Some(Kind::Dir { children, .. }) => children.iter().find(|&(_, &c)| c == at).map(|(n, _)| n.clone()),
                _ => None,
            };
            parts.push(name.unwrap_or_else(|| format!("(inode {at})")));
            at = parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Number of inodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no inode (never: the root exists).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_created_along_a_path_and_entries_replaced_by_name() {
        let now = SystemTime::now();
        let mut tree = Tree::new(Node::dir(ROOT, 0o755, now, Fill::Done));
        let deep = tree.ensure_dir(ROOT, "base/5", 0o700, now);
        assert_eq!(tree.ensure_dir(ROOT, "/base/5/", 0o700, now), deep);
        let base = tree.child(ROOT, "base").unwrap();
        assert_eq!(tree.get(deep).unwrap().parent, base);
        assert_eq!(tree.path(deep), "base/5");
        let link = Node { parent: ROOT, kind: Kind::Link("x".into()), perm: 0o777, size: 1, mtime: now };
        let first = tree.add(ROOT, "latest", link.clone());
        let second = tree.add(ROOT, "latest", link);
        assert_ne!(first, second);
        assert_eq!(tree.child(ROOT, "latest"), Some(second));
        tree.retain(ROOT, |name| name != "latest");
        assert_eq!(tree.child(ROOT, "latest"), None);
        assert!(tree.get(second).is_some(), "a removed entry keeps its inode");
    }

    #[test]
    fn changing_directories_refresh_and_sets_fill_once() {
        let now = Instant::now();
        let mut stanza = Node::dir(ROOT, 0o755, SystemTime::now(), Fill::Stanza(0));
        let mut set = Node::dir(ROOT, 0o700, SystemTime::now(), Fill::Set(0, "20250101-000000F".parse().unwrap()));
        assert!(stanza.needs_fill(now) && set.needs_fill(now));
        for node in [&mut stanza, &mut set] {
            if let Kind::Dir { filled, .. } = &mut node.kind {
                *filled = Some(now);
            }
        }
        assert!(!stanza.needs_fill(now) && !set.needs_fill(now));
        assert!(stanza.needs_fill(now + REFRESH) && !set.needs_fill(now + REFRESH));
    }
}
