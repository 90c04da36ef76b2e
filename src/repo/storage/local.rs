//! A repository in a local directory. Objects are files written under a temporary name, synced,
//! then renamed into place (or, for an exclusive create, hard-linked: `link(2)` fails when the
//! name exists), and the directory synced. Run as root, everything written is given to the
//! repository directory's owner, so the repository stays usable by the user that owns it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::repo::storage::{Held, ObjectMeta, Storage, local_lock};
use crate::util::fsx;

/// Mode of the files of a repository.
const FILE_MODE: u32 = 0o640;
/// Mode of the directories of a repository.
const DIR_MODE: u32 = 0o750;
/// A temporary older than this is stale even if a process with its pid runs (pids are reused).
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// A repository in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    /// Who new files and directories belong to, when running as root.
    owner: Option<(u32, u32)>,
    /// Bytes read by gets.
    fetched: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl LocalStorage {
    /// A store rooted at `root` (created on first write). Run as root, what it writes belongs to
    /// the owner of `root` (or of its nearest existing ancestor).
    pub fn new(root: &Path) -> LocalStorage {
        let owner = nix::unistd::Uid::effective().is_root().then(|| owner_of_nearest(root)).flatten();
        LocalStorage { root: root.to_path_buf(), owner, fetched: Default::default() }
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn path(&self, key: &str) -> Result<PathBuf> {
        if key.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(Error::invalid(format!("repository key {key:?}"), "not a plain relative name"));
        }
        Ok(self.root.join(key))
    }

    pub(super) fn give(&self, path: &Path) -> Result<()> {
        match self.owner {
            Some((uid, gid)) => std::os::unix::fs::lchown(path, Some(uid), Some(gid)).at("chown", path),
            None => Ok(()),
        }
    }

    /// Creates the directories above `path` that are missing, durably: each new entry is synced
    /// in its parent.
    pub(super) fn make_parents(&self, path: &Path) -> Result<()> {
        let parent = path.parent().unwrap_or(&self.root);
        if parent.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut dir = parent;
        while !dir.is_dir() {
            missing.push(dir);
            dir = dir.parent().unwrap_or(Path::new("/"));
        }
        for created in missing.iter().rev() {
            match std::fs::DirBuilder::new().mode(DIR_MODE).create(created) {
                Ok(()) => self.give(created)?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("create directory", *created, e)),
            }
            fsx::fsync_dir(created.parent().unwrap_or(Path::new("/")))?;
        }
        Ok(())
    }

    /// Writes `bytes` to a synced temporary beside `path`; returns its name.
    fn write_temp(&self, path: &Path, bytes: &[u8]) -> Result<PathBuf> {
        self.make_parents(path)?;
        let tmp = fsx::temp_name(path);
        let result = (|| {
            let mut file =
                OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&tmp).at("create", &tmp)?;
            self.give(&tmp)?;
            file.write_all(bytes).at("write", &tmp)?;
            file.sync_all().at("fsync", &tmp)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| tmp)
    }
}

/// The owner of `path` or of its nearest existing ancestor, unless that is root.
fn owner_of_nearest(path: &Path) -> Option<(u32, u32)> {
    let meta = path.ancestors().find_map(|p| std::fs::metadata(p).ok())?;
    (meta.uid() != 0).then_some((meta.uid(), meta.gid()))
}

fn not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

fn meta_of(key: String, meta: &std::fs::Metadata) -> ObjectMeta {
    ObjectMeta { key, size: meta.len(), modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) }
}

impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        let tmp = self.write_temp(&path, bytes)?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io("rename into place", path, e));
        }
        fsx::fsync_dir(path.parent().unwrap_or(&self.root))
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let path = self.path(key)?;
        if path.exists() {
            return Ok(false);
        }
        let tmp = self.write_temp(&path, bytes)?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => fsx::fsync_dir(path.parent().unwrap_or(&self.root)).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("link into place", path, e)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                self.fetched.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(bytes))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        let file = File::open(&path).at("open", &path)?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| Error::invalid(key, "range too large"))?];
        file.read_exact_at(&mut buf, offset).at("read", &path)?;
        self.fetched.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut objects = Vec::new();
        for entry in walkdir::WalkDir::new(&dir) {
            let entry = match entry {
                Ok(entry) => entry,
                // Removed while listed (a concurrent expire): not there.
                Err(e) if e.io_error().is_some_and(not_found) => continue,
                Err(e) => return Err(Error::io("list", &dir, e.into())),
            };
            let name = entry.file_name().to_string_lossy();
            if !entry.file_type().is_file() || fsx::temp_pid(&name).is_some() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&self.root) else { continue };
            match entry.metadata() {
                Ok(meta) => objects.push(meta_of(rel.to_string_lossy().into_owned(), &meta)),
                Err(e) if e.io_error().is_some_and(not_found) => {}
                Err(e) => return Err(Error::io("stat", entry.path(), e.into())),
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        match std::fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta_of(key.to_string(), &meta))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let dir = self.path(prefix.trim_end_matches('/'))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(Error::io("remove", dir, e)),
        }
    }

    fn exists(&self) -> Result<bool> {
        match std::fs::metadata(&self.root) {
            Ok(meta) => Ok(meta.is_dir()),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(Error::io("stat", &self.root, e)),
        }
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    fn fetched_bytes(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(self: Arc<Self>, key: &str, holder: &str) -> Result<Box<dyn Held>> {
        local_lock::lock(&self, &self.path(key)?, holder)
    }

    fn lease(self: Arc<Self>, key: &str, record: &[u8]) -> Result<Box<dyn Held>> {
        local_lock::lease(&self, &self.path(key)?, record)
    }

    fn leases(&self, prefix: &str) -> Result<Vec<Vec<u8>>> {
        local_lock::leases(&self.root.join(prefix.trim_end_matches('/')))
    }

    fn remove_stale(&self, prefix: &str) -> Result<u64> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let mut removed = 0;
        for entry in walkdir::WalkDir::new(&dir).into_iter().filter_map(|e| e.ok()) {
            let Some(pid) = fsx::temp_pid(&entry.file_name().to_string_lossy()) else { continue };
            let old = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_AFTER);
            if (old || !process_alive(pid)) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Whether a process with `pid` exists on this machine.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::new(dir.path());
        store.put("s/backup/L1/pack/000001", b"abcdef").unwrap();
        store.put("s/backup/L1/manifest", b"m").unwrap();
        assert_eq!(store.get("s/backup/L1/manifest").unwrap().unwrap(), b"m");
        assert_eq!(store.get("s/backup/L2/manifest").unwrap(), None);
        assert_eq!(store.get_range("s/backup/L1/pack/000001", 2, 3).unwrap(), b"cde");
        assert!(store.get_range("s/backup/L1/pack/000001", 4, 3).is_err());
        let keys: Vec<String> = store.list("s/backup/").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["s/backup/L1/manifest", "s/backup/L1/pack/000001"]);
        assert_eq!(store.size("s/backup/L1").unwrap(), 7);
        assert_eq!(store.stat("s/backup/L1/manifest").unwrap().unwrap().size, 1);
        store.delete_prefix("s/backup/L1").unwrap();
        assert!(store.list("s/").unwrap().is_empty());
        assert!(store.put("../escape", b"x").is_err());
    }

    #[test]
    fn exclusive_create_keeps_the_first_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::new(dir.path());
        assert!(store.put_new("s/archive/x", b"one").unwrap());
        assert!(!store.put_new("s/archive/x", b"two").unwrap());
        assert_eq!(store.get("s/archive/x").unwrap().unwrap(), b"one");
        assert_eq!(std::fs::read_dir(dir.path().join("s/archive")).unwrap().count(), 1, "no temporary left");
    }

    #[test]
    fn concurrent_exclusive_creates_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::new(dir.path());
        for round in 0..20 {
            let key = format!("s/archive/{round}");
            let wins: usize = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..4u8)
                    .map(|i| {
                        let (store, key) = (&store, &key);
                        scope.spawn(move || store.put_new(key, &[i; 64]).unwrap() as usize)
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(wins, 1, "round {round}");
        }
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed_and_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::new(dir.path());
        store.put("s/archive/00000001/a", b"x").unwrap();
        let tl = dir.path().join("s/archive/00000001");
        // A pid that cannot exist (above the kernel's pid_max) and ours, which is alive.
        std::fs::write(tl.join(".b.pgfork-tmp.4194399.0"), b"half").unwrap();
        let ours = fsx::temp_name(&tl.join("c"));
        std::fs::write(&ours, b"in progress").unwrap();
        assert_eq!(store.list("s/").unwrap().len(), 1);
        assert_eq!(store.remove_stale("s/archive/").unwrap(), 1);
        assert!(!tl.join(".b.pgfork-tmp.4194399.0").exists());
        assert!(ours.exists(), "a live writer's temporary is kept");
    }
}
