//! `export --extract FILE --to DIR`: the export unpacked into a staging directory beside `DIR`
//! (`.<name>.pgfork-extract.<pid>`), every file digested as it is written and the whole held
//! against the manifest; only then synced and renamed to `DIR`. Damage, truncation, a failure or
//! a termination signal leave nothing at `DIR` and remove the staging directory (one a killed
//! extraction left is removed by the next extraction to the same `DIR`). `DIR` must not exist or
//! be an empty directory, and that is checked before anything is written.
//!
//! Run as root, the tree belongs to the user the export's entries name (found by name on this
//! machine, as `tar` does), else the owner of `DIR` or of the nearest directory above it that root
//! does not own, else `postgres` ([`owner_for`]); run as anyone else, to that user.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use age::secrecy::SecretString;
use nix::unistd::{Gid, Uid};

use crate::error::{Error, IoContext, Result};
use crate::ops::export::check::{CheckReport, Layers, Unpack, walk};
use crate::ops::identity::owner_for;
use crate::progress::Progress;
use crate::util::{fsx, ms_since};

/// What marks a staging directory, between `.<name>` and the pid.
const STAGING_MARK: &str = ".pgfork-extract.";

/// Unpacks the export `input` into the new directory `dir` (absolute), verified against its
/// manifest first; see the module. `passphrase` is asked for only when the file is encrypted;
/// `check` runs between chunks and stops the extraction when it fails.
pub fn extract(
    input: &Path,
    dir: &Path,
    passphrase: &dyn Fn() -> Result<SecretString>,
    progress: &dyn Progress,
    check: &dyn Fn() -> Result<()>,
) -> Result<CheckReport> {
    let started = Instant::now();
    let (parent, name) = check_target(dir)?;
    remove_dead_stagings(&parent, &name)?;
    let layers = Layers::open(input, passphrase, progress)?;
    let staging = Staging::create(parent.join(format!(".{name}{STAGING_MARK}{}", std::process::id())))?;
    let mut unpack =
        Stager { staging: &staging, target: dir, owner: None, open: None, dirs: Vec::new(), files: Vec::new() };
    progress.begin("extract", layers.file_bytes);
    let walked = walk(layers, input, &mut unpack, check);
    progress.end();
    let mut report = walked?;
    if let Some(failure) = &report.failure {
        return Err(Error::invalid(format!("nothing extracted into {}", dir.display()), failure.clone()));
    }
    unpack.finish()?;
    report.owner = Some(match &unpack.owner {
        Some((_, _, name)) => name.clone(),
        None => current_user(),
    });
    let dirs: Vec<PathBuf> = unpack.dirs.iter().rev().map(|(path, _)| path.clone()).collect();
    fsx::sync_tree(&unpack.files, &dirs)?;
    std::fs::rename(&staging.path, dir).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => Error::refused(
            format!("{} was filled while the export was extracted; nothing was changed in it", dir.display()),
            None,
        ),
        _ => Error::io("rename into place", dir, e),
    })?;
    staging.commit();
    fsx::fsync_dir(&parent)?;
    report.dir = Some(dir.to_path_buf());
    report.duration_ms = ms_since(started);
    Ok(report)
}

/// Refuses a `dir` that is not a new or empty directory in an existing one on the same file
/// system; returns its parent and name.
fn check_target(dir: &Path) -> Result<(PathBuf, String)> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(Error::refused(format!("cannot extract into {}", dir.display()), None));
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let name = name.to_string_lossy().into_owned();
    let parent_meta = std::fs::metadata(parent).map_err(|e| {
        Error::refused(
            format!("cannot extract into {}: {} is not there ({e})", dir.display(), parent.display()),
            Some(format!("create it first (mkdir -p {})", parent.display())),
        )
    })?;
    if !parent_meta.is_dir() {
        return Err(Error::refused(format!("{} is not a directory", parent.display()), None));
    }
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("stat", dir, e)),
        Ok(meta) if !meta.is_dir() => {
            return Err(Error::refused(
                format!("{} exists and is not a directory", dir.display()),
                Some("name a new directory to extract into".into()),
            ));
        }
        Ok(meta) => {
            if std::fs::read_dir(dir).at("read directory", dir)?.next().is_some() {
                return Err(Error::refused(
                    format!("{} exists and is not empty", dir.display()),
                    Some(format!(
                        "extract into a new directory, or empty this one first (the export is never mixed with \
                         what {} holds)",
                        dir.display()
                    )),
                ));
            }
            if meta.dev() != parent_meta.dev() {
                return Err(Error::refused(
                    format!("{} is a mount point: the extracted directory cannot be renamed onto it", dir.display()),
                    Some(format!("extract into a directory inside it, such as {}/data", dir.display())),
                ));
            }
        }
    }
    if let Err(e) = nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK) {
        return Err(Error::refused(
            format!(
                "cannot extract into {}: {} is not writable by {} ({e})",
                dir.display(),
                parent.display(),
                current_user()
            ),
            None,
        ));
    }
    Ok((parent.to_path_buf(), name))
}

/// Removes the staging directories of extractions to `<parent>/<name>` whose process is gone.
fn remove_dead_stagings(parent: &Path, name: &str) -> Result<()> {
    fsx::remove_dead_leftovers(parent, &format!(".{name}{STAGING_MARK}"))
}

fn current_user() -> String {
    let uid = Uid::effective();
    nix::unistd::User::from_uid(uid).ok().flatten().map_or_else(|| format!("uid {uid}"), |u| u.name)
}

/// The staging directory, removed with everything in it unless committed.
struct Staging {
    path: PathBuf,
    committed: std::cell::Cell<bool>,
}

impl Staging {
    fn create(path: PathBuf) -> Result<Staging> {
        fsx::create_dir_mode(&path, 0o700)?;
        Ok(Staging { path, committed: std::cell::Cell::new(false) })
    }

    fn commit(&self) {
        self.committed.set(true);
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed.get() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes the walked entries under the staging directory.
struct Stager<'a> {
    staging: &'a Staging,
    target: &'a Path,
    /// Root only: who everything is given to.
    owner: Option<(Uid, Gid, String)>,
    /// The file being written, its path and mode.
    open: Option<(File, PathBuf, u32, u64)>,
    /// Directories and their modes, applied once everything is in them (one without write
    /// permission must still take its files).
    dirs: Vec<(PathBuf, u32)>,
    /// The files written, their writeback started: made durable together at the end.
    files: Vec<PathBuf>,
}

impl Stager<'_> {
    /// Where `rel` goes (a normalized name: never outside the staging directory).
    fn path(&self, rel: &str) -> PathBuf {
        if rel == "." { self.staging.path.clone() } else { self.staging.path.join(rel) }
    }

    fn give(&self, path: &Path) -> Result<()> {
        match &self.owner {
            Some((uid, gid, _)) => nix::unistd::chown(path, Some(*uid), Some(*gid)).at("chown", path),
            None => Ok(()),
        }
    }

    /// Creates the directories above `path` that are missing (mode 0700, as `tar` does).
    fn parents(&mut self, path: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.staging.path && !d.is_dir()) {
            missing.push(d.to_path_buf());
            dir = d.parent();
        }
        for created in missing.into_iter().rev() {
            DirBuilder::new().mode(0o700).create(&created).at("create directory", &created)?;
            self.give(&created)?;
        }
        Ok(())
    }

    /// Applies the directories' modes, deepest first.
    fn finish(&mut self) -> Result<()> {
        for (path, mode) in self.dirs.iter().rev() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode)).at("chmod", path)?;
        }
        Ok(())
    }
}

impl Unpack for Stager<'_> {
    fn first(&mut self, header: &tar::Header) -> Result<()> {
        if !Uid::effective().is_root() {
            return Ok(());
        }
        let user = header.username().ok().flatten().unwrap_or_default();
        let group = header.groupname().ok().flatten().unwrap_or_default();
        let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok()).unwrap_or(0);
        let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok()).unwrap_or(0);
        self.owner = Some(owner_for(Some((user, group, uid, gid)), self.target)?);
        self.give(&self.staging.path)
    }

    fn dir(&mut self, rel: &str, mode: u32) -> Result<()> {
        let path = self.path(rel);
        if rel != "." {
            self.parents(&path)?;
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => self.give(&path)?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
                Err(e) => return Err(Error::io("create directory", path, e)),
            }
        }
        self.dirs.push((path, mode));
        Ok(())
    }

    fn begin_file(&mut self, rel: &str, mode: u32, mtime: u64) -> Result<()> {
        let path = self.path(rel);
        self.parents(&path)?;
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).at("create", &path)?;
        if let Some((uid, gid, _)) = &self.owner {
            std::os::unix::fs::fchown(&file, Some(uid.as_raw()), Some(gid.as_raw())).at("chown", &path)?;
        }
        self.open = Some((file, path, mode, mtime));
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.open {
            Some((file, path, ..)) => file.write_all(bytes).at("write", path.as_path()),
            None => Ok(()),
        }
    }

    fn end_file(&mut self) -> Result<()> {
        if let Some((file, path, mode, mtime)) = self.open.take() {
            file.set_permissions(std::fs::Permissions::from_mode(mode)).at("chmod", &path)?;
            file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime)).at("set the time of", &path)?;
            fsx::start_writeback_of(&file);
            self.files.push(path);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::export::Compression;
    use crate::ops::export::check::tests::{no_pass, small_export};
    use crate::progress::Silent;

    #[test]
    fn extracts_a_whole_export_and_nothing_of_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.tar.lz4");
        small_export(&file, Compression::Lz4, None, 2 << 20);
        let out = dir.path().join("data");
        let report = extract(&file, &out, &no_pass, &Silent, &|| Ok(())).unwrap();
        assert!(report.ok && report.files == 3, "{report:?}");
        assert_eq!(std::fs::read(out.join("base/1/PG_VERSION")).unwrap(), b"18\n");
        assert_eq!(std::fs::metadata(out.join("base/1/1259")).unwrap().len(), 2 << 20);
        assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(out.join("PG_VERSION")).unwrap().mode() & 0o777, 0o600);
        assert!(!out.join(crate::ops::export::manifest::MANIFEST_NAME).exists(), "the manifest stays in the export");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no staging left");

        // Not over a directory that holds anything.
        let err = extract(&file, &out, &no_pass, &Silent, &|| Ok(())).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        // An empty one is taken.
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::create_dir(&out).unwrap();
        extract(&file, &out, &no_pass, &Silent, &|| Ok(())).unwrap();
        std::fs::remove_dir_all(&out).unwrap();

        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let err = extract(&file, &out, &no_pass, &Silent, &|| Ok(())).unwrap_err();
        assert!(err.to_string().contains("base/1/1259"), "{err}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no staging left");

        std::fs::write(&file, &bytes[..bytes.len() - (1 << 20)]).unwrap();
        let err = extract(&file, &out, &no_pass, &Silent, &|| Ok(())).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no staging left");
    }

    #[test]
    fn an_interrupted_extraction_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.tar.zst");
        small_export(&file, Compression::Zstd, None, 4 << 20);
        let out = dir.path().join("data");
        let calls = std::cell::Cell::new(0);
        let stop = || {
            calls.set(calls.get() + 1);
            if calls.get() > 5 { Err(Error::refused("interrupted by SIGINT", None)) } else { Ok(()) }
        };
        let err = extract(&file, &out, &no_pass, &Silent, &stop).unwrap_err();
        assert!(err.to_string().contains("interrupted"), "{err}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no staging left");
    }

    #[test]
    fn stagings_of_dead_extractions_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(format!(".data{STAGING_MARK}999999999"));
        let alive = dir.path().join(format!(".data{STAGING_MARK}{}", std::process::id()));
        let other = dir.path().join(format!(".other{STAGING_MARK}999999999"));
        for path in [&dead, &alive, &other] {
            std::fs::create_dir(path).unwrap();
            std::fs::write(path.join("f"), b"x").unwrap();
        }
        remove_dead_stagings(dir.path(), "data").unwrap();
        assert!(!dead.exists() && alive.exists() && other.exists());
    }

    #[test]
    fn targets_must_be_new_or_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        check_target(&dir.path().join("new")).unwrap();
        assert!(check_target(&dir.path().join("missing/new")).is_err());
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(check_target(&file).unwrap_err().to_string().contains("not a directory"));
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        check_target(&dir.path().join("empty")).unwrap();
    }
}
