//! The FUSE file system: answers the kernel's lookups, attribute and directory requests from the
//! inode tree, and reads from the content reader, on several threads. Read-only (EROFS) unless
//! it was given a scratch directory for a server to boot on; the write side is in
//! [`crate::mount::writable`].

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use crate::mount::content::ContentReader;
use crate::mount::tree::{Content, Ino, Kind, Node, Tree};
use crate::mount::view;
use crate::mount::writable::WriteState;

/// How long the kernel may cache names and attributes.
const TTL: Duration = Duration::from_secs(1);

/// Who the files belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The mounted file system.
pub struct MountFs {
    tree: RwLock<Tree>,
    reader: Arc<ContentReader>,
    owner: Owner,
    writes: Option<WriteState>,
}

impl MountFs {
    /// A read-only file system showing `tree`, reading through `reader`, owned by `owner`.
    pub fn new(tree: Tree, reader: Arc<ContentReader>, owner: Owner) -> MountFs {
        MountFs { tree: RwLock::new(tree), reader, owner, writes: None }
    }

    /// Makes the file system writable, copy-on-write into scratch files in `scratch`.
    pub fn writable(mut self, scratch: &Path) -> MountFs {
        self.writes = Some(WriteState::new(crate::mount::scratch::Scratch::new(scratch)));
        self
    }

    /// Whether writes are accepted.
    pub fn is_writable(&self) -> bool {
        self.writes.is_some()
    }

    pub(super) fn tree(&self) -> &RwLock<Tree> {
        &self.tree
    }

    pub(super) fn reader(&self) -> &Arc<ContentReader> {
        &self.reader
    }

    pub(super) fn write_state(&self) -> Option<&WriteState> {
        self.writes.as_ref()
    }

    /// Loads directory `ino` if it has never been loaded or its listing is stale.
    fn fill(&self, ino: Ino) -> Result<(), Errno> {
        let now = Instant::now();
        let fill = {
            let tree = self.tree.read().expect("tree lock");
            match tree.get(ino) {
                Some(node) if node.needs_fill(now) => match &node.kind {
                    Kind::Dir { fill, .. } => fill.clone(),
                    _ => return Ok(()),
                },
                Some(_) => return Ok(()),
                None => return Err(Errno::ENOENT),
            }
        };
        // Repository I/O without the lock; a concurrent load of the same directory is harmless.
        let known = |name: &str| self.tree.read().expect("tree lock").child(ino, name).is_some();
        let loaded = view::load(&self.reader, &fill, &known).map_err(|e| {
            let path = self.tree.read().expect("tree lock").path(ino);
            self.reader.record_failure(&path, &e);
            Errno::EIO
        })?;
        let mut tree = self.tree.write().expect("tree lock");
        if tree.get(ino).is_some_and(|n| n.needs_fill(now)) {
            view::apply(&mut tree, ino, &fill, loaded, now);
        }
        Ok(())
    }

    fn attr(&self, ino: Ino, node: &Node) -> FileAttr {
        let kind = file_type(&node.kind);
        FileAttr {
            ino: INodeNo(ino),
            size: node.size,
            blocks: node.size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: node.perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.owner.uid,
            gid: self.owner.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub(super) fn attr_of(&self, ino: Ino) -> Result<FileAttr, Errno> {
        let mut attr = {
            let tree = self.tree.read().expect("tree lock");
            tree.get(ino).map(|node| self.attr(ino, node)).ok_or(Errno::ENOENT)?
        };
        if let Some(layer) = self.writes.as_ref().and_then(|w| w.layer(ino)) {
            attr.size = layer.lock().expect("layer lock").size();
            attr.blocks = attr.size.div_ceil(512);
        }
        Ok(attr)
    }

    fn entry_reply(&self, ino: Result<Ino, Errno>, reply: ReplyEntry) {
        match ino.and_then(|ino| self.attr_of(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

/// The kernel's file type of a node.
fn file_type(kind: &Kind) -> FileType {
    match kind {
        Kind::Dir { .. } => FileType::Directory,
        Kind::File(_) => FileType::RegularFile,
        Kind::Link(_) => FileType::Symlink,
    }
}

impl Filesystem for MountFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Larger kernel reads mean fewer round trips for sequential readers; a refusal keeps the default.
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Err(e) = self.fill(parent.0) {
            return reply.error(e);
        }
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        let child = self.tree.read().expect("tree lock").child(parent.0, name);
        match child.map(|ino| self.attr_of(ino)) {
            Some(Ok(attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Some(Err(e)) => reply.error(e),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let tree = self.tree.read().expect("tree lock");
        match tree.get(ino.0).map(|n| &n.kind) {
            Some(Kind::Link(target)) => reply.data(target.as_bytes()),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writing = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if writing && !self.is_writable() {
            return reply.error(Errno::EROFS);
        }
        if flags.0 & libc::O_TRUNC != 0
            && let Err(e) = self.set_attr(ino.0, None, Some(0))
        {
            return reply.error(e);
        }
        match self.tree.read().expect("tree lock").get(ino.0).map(|n| &n.kind) {
            // Contents never change while mounted: let the kernel keep its cache across opens.
            Some(Kind::File(_)) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let content: Option<Content> = match self.tree.read().expect("tree lock").get(ino.0).map(|n| &n.kind) {
            Some(Kind::File(content)) => Some(content.clone()),
            _ => None,
        };
        let Some(content) = content else { return reply.error(Errno::EISDIR) };
        let result = match self.writes.as_ref().and_then(|w| w.layer(ino.0)) {
            Some(layer) => self.read_layered(&layer, &content, offset, size),
            None => self.reader.read(&content, offset, size),
        };
        match result {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => {
                let path = self.tree.read().expect("tree lock").path(ino.0);
                self.reader.record_failure(&path, &e);
                reply.error(Errno::EIO)
            }
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // Overlayfs asks for inode flags when it copies a file up; there are none.
        reply.error(Errno::ENOTTY);
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _offset: i64, _whence: i32, reply: ReplyLseek) {
        // No holes to report: the kernel's own SEEK_DATA/SEEK_HOLE (whole file is data) is right.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY && !self.is_writable() {
            return reply.error(Errno::EROFS);
        }
        match self.fill(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if let Err(e) = self.fill(ino.0) {
            return reply.error(e);
        }
        {
            let tree = self.tree.read().expect("tree lock");
            let Some(node) = tree.get(ino.0) else { return reply.error(Errno::ENOENT) };
            let Kind::Dir { children, .. } = &node.kind else { return reply.error(Errno::ENOTDIR) };
            let dots = [(".", ino.0, FileType::Directory), ("..", node.parent, FileType::Directory)];
            let entries = dots.into_iter().chain(children.iter().map(|(name, &child)| {
                (name.as_str(), child, tree.get(child).map_or(FileType::RegularFile, |n| file_type(&n.kind)))
            }));
            for (i, (name, child, kind)) in entries.enumerate().skip(offset as usize) {
                if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                    break;
                }
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.tree.read().expect("tree lock").len() as u64;
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) && !self.is_writable() {
            return reply.error(Errno::EROFS);
        }
        match self.attr_of(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.write_at(ino.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if !self.is_writable() {
            return reply.error(Errno::EROFS);
        }
        match self.set_attr(ino.0, mode, size) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(name) = name.to_str() else { return reply.error(Errno::EINVAL) };
        let created = match self.create_file(parent.0, name, mode & !umask) {
            Err(e) if e == Errno::EEXIST && flags & libc::O_EXCL == 0 => {
                let existing = self.tree.read().expect("tree lock").child(parent.0, name).ok_or(Errno::ENOENT);
                existing.and_then(|ino| {
                    if flags & libc::O_TRUNC != 0 { self.set_attr(ino, None, Some(0)).map(|_| ino) } else { Ok(ino) }
                })
            }
            other => other,
        };
        match created.and_then(|ino| self.attr_of(ino)) {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let Some(name) = name.to_str() else { return reply.error(Errno::EINVAL) };
        self.entry_reply(self.create_file(parent.0, name, mode & !umask), reply);
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let Some(name) = name.to_str() else { return reply.error(Errno::EINVAL) };
        self.entry_reply(self.create_dir(parent.0, name, mode & !umask), reply);
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (Some(name), Some(target)) = (link_name.to_str(), target.to_str()) else {
            return reply.error(Errno::EINVAL);
        };
        self.entry_reply(self.create_link(parent.0, name, target), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        match self.remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        match self.remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (Some(name), Some(newname)) = (name.to_str(), newname.to_str()) else {
            return reply.error(Errno::EINVAL);
        };
        match self.rename_entry(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // The writable layer is throwaway: nothing in it must survive a crash.
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // Callers (posix_fallocate, PostgreSQL) fall back to writing zeros.
        reply.error(Errno::EOPNOTSUPP);
    }
}
