//! Tests against real repositories made by pgBackRest 2.45 (`/work/notes/pgbr/fixtures`, built by
//! `make-fixtures.sh`): every file of every set and every archived file decoded and checked, wrong
//! passphrases refused, damage named. The fixtures live outside the repository: without them these
//! tests say so loudly and pass.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::repo::storage::LocalStorage;

const FIXTURES: &str = "/work/notes/pgbr/fixtures";
const STANZA: &str = "demo";

struct Fixture {
    root: PathBuf,
    meta: HashMap<String, String>,
}

impl Fixture {
    /// The fixture `variant`, or `None` (with a loud message) when the fixtures are absent.
    fn load(variant: &str) -> Option<Fixture> {
        let root = Path::new(FIXTURES).join(variant);
        let Ok(text) = std::fs::read_to_string(root.join("meta.env")) else {
            eprintln!(
                "\n!!! SKIPPED: pgBackRest fixture {} is absent (build it with make-fixtures.sh) !!!\n",
                root.display()
            );
            return None;
        };
        let meta = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        Some(Fixture { root, meta })
    }

    fn repo(&self) -> PathBuf {
        self.root.join("repo")
    }

    fn pass(&self) -> Option<Passphrase> {
        self.meta.get("CIPHER_PASS").map(Passphrase::new)
    }

    fn open_at(&self, repo: &Path) -> PgbrStanza {
        PgbrStanza::open(Arc::new(LocalStorage::new(repo)), STANZA, self.pass().as_ref()).unwrap()
    }
}

/// Reads everything of a fixture and checks what meta.env says.
fn read_everything(variant: &str) {
    let Some(fixture) = Fixture::load(variant) else { return };
    let stanza = fixture.open_at(&fixture.repo());
    let labels: Vec<&str> = stanza.sets().iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels.join(" "), fixture.meta["LABELS"], "{variant}: sets");
    assert_eq!(stanza.system_identifier().to_string(), fixture.meta["SYSTEM_ID"]);
    assert_eq!(stanza.pg_version(), 15);
    fn send_sync<T: Send + Sync>(_: &T) {}
    send_sync(&stanza);
    let block = fixture.meta["EXTRAS"].contains("block");
    let mut files = 0;
    let mut block_files = 0;
    for set in stanza.sets() {
        let manifest = stanza.manifest(&set.label).unwrap();
        assert_eq!(manifest.backup_type, set.backup_type);
        assert_eq!(manifest.references.last(), Some(&set.label));
        assert_eq!(manifest.options.compress_type.name(), fixture.meta["COMPRESS_TYPE"]);
        assert_eq!(manifest.options.encrypted, fixture.pass().is_some());
        assert_eq!(manifest.block_incremental, block);
        assert_eq!(set.block_incremental, block);
        assert_eq!((manifest.start_lsn, manifest.stop_lsn), (set.start_lsn, set.stop_lsn));
        assert_eq!(manifest.prior, set.prior);
        assert_eq!(manifest.references[..manifest.references.len() - 1], set.references[..]);
        assert_eq!(manifest.timeline, manifest.archive_start.as_deref().map(info::timeline_of));
        assert!(manifest.paths.iter().any(|p| p.name == "pg_data" && p.mode == 0o700));
        let total: u64 = manifest.files.iter().map(|f| f.size).sum();
        assert_eq!(total, set.size, "{variant} {}: sizes differ from backup.info", set.label);
        for file in &manifest.files {
            let data = stanza.read_file(&manifest, file).unwrap_or_else(|e| panic!("{variant} {}: {e:#}", set.label));
            assert_eq!(data.len() as u64, file.size);
            files += 1;
            block_files += usize::from(file.is_block_incr());
        }
        // The largest file again as a stream.
        let largest = manifest.files.iter().max_by_key(|f| f.size).unwrap();
        let mut streamed = Vec::new();
        stanza.open_file(&manifest, largest).unwrap().read_to_end(&mut streamed).unwrap();
        assert_eq!(ini::sha1_hex(&streamed), largest.checksum.clone().unwrap());
    }
    assert!(files > 1000, "{variant}: only {files} files");
    assert_eq!(block_files > 0, block, "{variant}: block-incremental files");
    let names = stanza.archive_list().unwrap();
    let mut segments = 0;
    for name in &names {
        let data = stanza.archive_get(name).unwrap().unwrap_or_else(|| panic!("{variant}: {name} listed, not found"));
        if crate::pg::lsn::is_segment_name(name) {
            assert_eq!(data.len(), 16 << 20);
            segments += 1;
        } else if name.ends_with(".history") {
            assert!(data.starts_with(b"1\t"), "{name}");
        } else {
            assert!(data.starts_with(b"START WAL LOCATION:"), "{name}");
        }
    }
    assert!(segments >= 7, "{variant}: {segments} segments");
    assert_eq!(stanza.archive_get("0000000900000000000000FF").unwrap(), None);
    for set in stanza.sets() {
        for wal in [&set.archive_start, &set.archive_stop].into_iter().flatten() {
            assert!(names.contains(wal), "{variant} {}: {wal} not archived", set.label);
        }
    }
    eprintln!("{variant}: {files} files ({block_files} block-incremental), {} archived files", names.len());
}

/// Copies the files of `from` named by `keys` (relative) into a new temporary repository.
fn copy_repo(from: &Path, keys: &[String]) -> tempfile::TempDir {
    let temp = tempfile::tempdir().unwrap();
    for key in keys {
        let target = temp.path().join(key);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(key), &target).unwrap();
    }
    temp
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

/// Wrong passphrases are refused; a flipped byte in a stored file, an info file or a WAL file is
/// noticed and named.
fn damage_is_named(variant: &str) {
    let Some(fixture) = Fixture::load(variant) else { return };
    let repo = fixture.repo();
    let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(&repo));
    if fixture.pass().is_some() {
        let err = PgbrStanza::open(storage.clone(), STANZA, Some(&Passphrase::new("not the pass"))).unwrap_err();
        assert!(matches!(err, Error::Refused { .. }) && err.to_string().contains("wrong passphrase"), "{err}");
        let err = PgbrStanza::open(storage.clone(), STANZA, None).unwrap_err();
        assert!(err.to_string().contains("no passphrase"), "{err}");
    }
    let stanza = fixture.open_at(&repo);
    let full = &stanza.sets()[0].label;
    let manifest = stanza.manifest(full).unwrap();
    // The largest file this set stores itself, and the largest it stores in a bundle.
    let own = || manifest.files.iter().filter(|f| f.reference.is_none());
    let mut victims = vec![own().max_by_key(|f| f.repo_size).unwrap()];
    victims.extend(own().filter(|f| f.bundle.is_some()).max_by_key(|f| f.repo_size));
    let info_keys: Vec<String> =
        ["backup/demo/backup.info", "backup/demo/backup.info.copy", "archive/demo/archive.info"]
            .iter()
            .map(|k| k.to_string())
            .collect();
    let manifest_key = format!("backup/demo/{full}/backup.manifest");
    let located: Vec<_> = victims.iter().map(|v| file::locate(&stanza, &manifest, v).unwrap()).collect();
    let mut keys = info_keys.clone();
    keys.push(manifest_key.clone());
    keys.extend(located.iter().map(|l| l.key.clone()));
    let temp = copy_repo(&repo, &keys);
    let damaged = fixture.open_at(temp.path());
    for (victim, located) in victims.iter().zip(&located) {
        flip(&temp.path().join(&located.key), located.offset + victim.repo_size / 2);
        let err = damaged.read_file(&manifest, victim).unwrap_err().to_string();
        assert!(err.contains(full) && err.contains(&victim.name), "{variant}: {err}");
        let mut stream = damaged.open_file(&manifest, victim).unwrap();
        let err = stream.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains(full) && err.contains(&victim.name), "{variant}: {err}");
        eprintln!("{variant}: flipped byte reported as: {err}");
    }
    if let Some((id, _)) = victims.last().and_then(|v| v.bundle) {
        std::fs::remove_file(temp.path().join(&located[located.len() - 1].key)).unwrap();
        let err = damaged.read_file(&manifest, victims[victims.len() - 1]).unwrap_err().to_string();
        assert!(err.contains(&format!("bundle {id} of set {full} is missing")), "{variant}: {err}");
    }

    // A damaged backup.info falls back to its copy; a damaged manifest without copy is named.
    flip(&temp.path().join("backup/demo/backup.info"), 40);
    assert_eq!(fixture.open_at(temp.path()).sets().len(), stanza.sets().len());
    flip(&temp.path().join(&manifest_key), 200);
    let err = damaged.manifest(full).unwrap_err().to_string();
    assert!(err.contains(full), "{variant}: {err}");
    std::fs::remove_file(temp.path().join("backup/demo/backup.info.copy")).unwrap();
    let err = PgbrStanza::open(Arc::new(LocalStorage::new(temp.path())), STANZA, fixture.pass().as_ref()).unwrap_err();
    assert!(err.to_string().contains("backup.info of stanza demo"), "{variant}: {err}");

    // A flipped byte in an archived segment.
    let segment = stanza.archive_list().unwrap().into_iter().find(|n| crate::pg::lsn::is_segment_name(n)).unwrap();
    let stored =
        storage.list("archive/demo/").unwrap().into_iter().find(|o| o.key.contains(&format!("/{segment}-"))).unwrap();
    let temp = copy_repo(&repo, &[info_keys[0].clone(), info_keys[2].clone(), stored.key.clone()]);
    flip(&temp.path().join(&stored.key), stored.size / 2);
    let err = fixture.open_at(temp.path()).archive_get(&segment).unwrap_err().to_string();
    assert!(err.contains(&segment), "{variant}: {err}");
}

macro_rules! fixture_tests {
    ($($name:ident => $variant:literal,)*) => {
        $(
            mod $name {
                #[test]
                fn every_file_and_archived_file_decodes() {
                    super::read_everything($variant);
                }

                #[test]
                fn wrong_passphrase_and_damage_are_named() {
                    super::damage_is_named($variant);
                }
            }
        )*
    };
}

fixture_tests! {
    gz_plain => "gz-plain",
    none_plain => "none-plain",
    lz4_enc => "lz4-enc",
    bz2_enc => "bz2-enc",
    lz4_bundle => "lz4-bundle",
    gz_bundle_enc => "gz-bundle-enc",
    zst_bundle_enc => "zst-bundle-enc",
    none_bundle_enc => "none-bundle-enc",
    block_gz => "block-gz",
    block_zst_enc => "block-zst-enc",
}
