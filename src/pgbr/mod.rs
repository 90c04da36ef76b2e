//! Reading pgBackRest 2.45 repositories (never writing them): a stanza's `backup.info` and
//! `archive.info`, the sets' manifests, every stored file decoded and checked against its SHA-1 and
//! size, and the archived WAL. Every read goes through [`Storage`], so a bucket works as a directory
//! does. [`adapter`] shows a stanza through pgfork's repository format, so every reading command
//! works on it; ARCHITECTURE.md summarizes the format.
//!
//! Passphrases form a chain: the user's opens the info files, `backup.info`'s opens the manifests,
//! each manifest's opens its set's files, `archive.info`'s opens the archive.

pub mod adapter;
pub mod archive;
mod block;
pub mod cipher;
pub mod compress;
mod file;
pub mod info;
pub mod ini;
pub mod manifest;

#[cfg(test)]
mod synthetic;

use std::sync::Arc;

pub use compress::CompressType;
pub use info::{PgbrDb, PgbrSet};
pub use manifest::{PgbrBlockIncr, PgbrFile, PgbrLink, PgbrManifest, PgbrOptions, PgbrPath, PgbrTablespace};

use cipher::CipherPass;
use info::{ArchiveInfo, BackupInfo};
use ini::Ini;

use crate::error::{Error, Result};
use crate::repo::crypto::Passphrase;
use crate::repo::storage::Storage;

/// A pgBackRest repository's stanza, opened: `backup.info` (falling back to `backup.info.copy` when
/// the main file is missing or damaged) and `archive.info` read, cipher passes unwrapped.
pub struct PgbrStanza {
    storage: Arc<dyn Storage>,
    stanza: String,
    backup: BackupInfo,
    archive: ArchiveInfo,
}

impl std::fmt::Debug for PgbrStanza {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgbrStanza").field("location", &self.storage.location()).field("stanza", &self.stanza).finish()
    }
}

impl PgbrStanza {
    /// Opens `stanza` of the repository in `storage` (keyed like `repo1-path`: `backup/<stanza>/…`).
    /// `passphrase` is the repository's `repo1-cipher-pass`, needed when it is encrypted.
    pub fn open(storage: Arc<dyn Storage>, stanza: &str, passphrase: Option<&Passphrase>) -> Result<PgbrStanza> {
        if stanza.is_empty() || stanza.contains('/') || stanza.starts_with('.') {
            return Err(Error::invalid(format!("stanza name {stanza:?}"), "not a plain name"));
        }
        let user_pass = passphrase.map(|p| CipherPass::new(p.expose()));
        let backup_what = format!("backup.info of stanza {stanza}");
        let backup_ini =
            load_info(&*storage, &format!("backup/{stanza}/backup.info"), user_pass.as_ref(), &backup_what)?;
        let backup = BackupInfo::from_ini(&backup_ini, &backup_what)?;
        let archive_what = format!("archive.info of stanza {stanza}");
        let archive_ini =
            load_info(&*storage, &format!("archive/{stanza}/archive.info"), user_pass.as_ref(), &archive_what)?;
        let archive = ArchiveInfo::from_ini(&archive_ini, &archive_what)?;
        if backup.current.system_identifier != archive.current.system_identifier {
            return Err(Error::invalid(
                format!("pgBackRest stanza {stanza}"),
                format!(
                    "backup.info (system identifier {}) and archive.info ({}) describe different clusters",
                    backup.current.system_identifier, archive.current.system_identifier
                ),
            ));
        }
        info::parse_major(&backup.current.version, &backup_what)?;
        Ok(PgbrStanza { storage, stanza: stanza.to_string(), backup, archive })
    }

    /// The stanza's name.
    pub fn name(&self) -> &str {
        &self.stanza
    }

    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        self.storage.location()
    }

    /// Stored bytes read from the repository so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.storage.fetched_bytes()
    }

    /// The backup sets, oldest first.
    pub fn sets(&self) -> &[PgbrSet] {
        &self.backup.sets
    }

    /// The set labelled `label`.
    pub fn set(&self, label: &str) -> Option<&PgbrSet> {
        self.backup.sets.iter().find(|s| s.label == label)
    }

    /// The current cluster's system identifier.
    pub fn system_identifier(&self) -> u64 {
        self.backup.current.system_identifier
    }

    /// The current cluster's PostgreSQL major version.
    pub fn pg_version(&self) -> u32 {
        info::parse_major(&self.backup.current.version, "").unwrap_or(0)
    }

    /// The clusters the stanza has known (`backup.info [db:history]`), oldest first.
    pub fn db_history(&self) -> &[PgbrDb] {
        &self.backup.history
    }

    /// The manifest of set `label` (`backup.manifest`, falling back to `backup.manifest.copy`),
    /// decrypted with `backup.info`'s passphrase, its checksum verified.
    pub fn manifest(&self, label: &str) -> Result<PgbrManifest> {
        check_label(label, &format!("set label {label:?}"))?;
        if self.set(label).is_none() {
            return Err(Error::refused(
                format!("stanza {} has no pgBackRest set {label}", self.stanza),
                Some("the sets are listed in backup.info; an expired or unfinished set cannot be read".into()),
            ));
        }
        let key = format!("backup/{}/{label}/backup.manifest", self.stanza);
        let what = format!("manifest of pgBackRest set {label}");
        let ini = load_info(&*self.storage, &key, self.backup.cipher_pass.as_ref(), &what)?;
        let manifest = PgbrManifest::from_ini(&ini, label)?;
        if let Some(db) = self.backup.history.iter().find(|db| db.id == manifest.db_id)
            && db.system_identifier != manifest.system_identifier
        {
            return Err(Error::invalid(
                what,
                format!(
                    "system identifier {} differs from backup.info's {}",
                    manifest.system_identifier, db.system_identifier
                ),
            ));
        }
        Ok(manifest)
    }

    /// The whole content of `file` of `manifest`: located in the set that holds it, decrypted,
    /// decompressed, its size and SHA-1 checked.
    pub fn read_file(&self, manifest: &PgbrManifest, file: &PgbrFile) -> Result<Vec<u8>> {
        file::read_file(self, manifest, file)
    }

    /// The content of `file` as a stream, read from the repository in ranged chunks and decoded as
    /// it goes; the stream fails at its end when the size or SHA-1 does not match, so a caller must
    /// read it to the end before trusting what it got.
    pub fn open_file(&self, manifest: &PgbrManifest, file: &PgbrFile) -> Result<Box<dyn std::io::Read + Send>> {
        file::open_file(self, manifest, file)
    }

    /// An archived file by PostgreSQL's name (WAL segment, `.partial` segment, `.backup` or
    /// `.history` file), decrypted, decompressed and checked against the SHA-1 in its name; `None`
    /// when the archive does not have it.
    pub fn archive_get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        archive::get(self, name)
    }

    /// Every archived file's PostgreSQL name (without pgBackRest's `-<sha1>.<ext>` suffix), sorted.
    pub fn archive_list(&self) -> Result<Vec<String>> {
        Ok(archive::list(self)?.into_iter().map(|f| f.name).collect())
    }

    /// Every archived file with its stored size and time, sorted by name.
    pub fn archive_files(&self) -> Result<Vec<archive::ArchivedFile>> {
        archive::list(self)
    }
}

/// The targets of [`fuzz`].
pub const FUZZ_TARGETS: &[&str] = &["ini", "cipher", "compress", "block"];

/// Runs the parsers of one kind of pgBackRest bytes on `data`: info files and manifests (`ini`),
/// OpenSSL-format ciphertext (`cipher`), every compression (`compress`), block-incremental maps
/// and chunks (`block`). They may fail; none may panic, hang or allocate without bound.
pub fn fuzz(target: &str, data: &[u8]) {
    match target {
        "ini" => {
            if let Ok(ini) = Ini::parse(data, "fuzz") {
                let _ = PgbrManifest::from_ini(&ini, "20250101-000000F");
                let _ = BackupInfo::from_ini(&ini, "fuzz");
                let _ = ArchiveInfo::from_ini(&ini, "fuzz");
            }
        }
        "cipher" => {
            let pass = CipherPass::new("fuzz");
            let _ = cipher::decrypt(data, &pass, false);
            let _ = cipher::decrypt(data, &pass, true);
        }
        "compress" => {
            for kind in [CompressType::Gz, CompressType::Lz4, CompressType::Zst, CompressType::Bz2, CompressType::None]
            {
                for raw in [false, true] {
                    let _ = compress::decompress(kind, data, raw, 1 << 20);
                }
            }
        }
        "block" => {
            let _ = block::dechunk(data);
            let _ = block::parse_map(data, 8192, 6);
            let mut pos = 0;
            let _ = block::read_varint(data, &mut pos);
        }
        _ => {}
    }
}

/// Valid inputs of a [`fuzz`] target to start from.
pub fn fuzz_seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "ini" => vec![
            ini::render(concat!(
                "[backrest]\nbackrest-format=5\nbackrest-version=\"2.45\"\n\n",
                "[backup]\nbackup-archive-start=\"000000010000000000000001\"\n",
                "backup-archive-stop=\"000000010000000000000001\"\nbackup-label=\"20250101-000000F\"\n",
                "backup-lsn-start=\"0/1000028\"\nbackup-lsn-stop=\"0/1000100\"\n",
                "backup-timestamp-start=1735689600\nbackup-timestamp-stop=1735689601\nbackup-type=\"full\"\n\n",
                "[backup:db]\ndb-id=1\ndb-system-id=7\ndb-version=\"15\"\n\n",
                "[backup:option]\noption-compress-type=\"gz\"\noption-online=true\n\n",
                "[backup:target]\npg_data={\"path\":\"/pg/data\",\"type\":\"path\"}\n\n",
                "[target:file]\npg_data/PG_VERSION={\"checksum\":\"587b596f04f7db9c2cad3d6b87dd2b3a05de4f35\",\"size\":3,\"timestamp\":1}\n\n",
                "[target:file:default]\ngroup=\"postgres\"\nmode=\"0600\"\nuser=\"postgres\"\n\n",
                "[target:path]\npg_data={}\n\n",
                "[target:path:default]\ngroup=\"postgres\"\nmode=\"0700\"\nuser=\"postgres\"\n",
            ))
            .into_bytes(),
        ],
        "cipher" => vec![cipher::encrypt(b"pgfork fuzz seed", &CipherPass::new("fuzz"), [1; 8], false)],
        "compress" => {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = gz.write_all(b"pgfork fuzz seed, pgfork fuzz seed");
            let mut lz4 = lz4_flex::frame::FrameEncoder::new(Vec::new());
            let _ = lz4.write_all(b"pgfork fuzz seed, pgfork fuzz seed");
            [gz.finish().ok(), lz4.finish().ok()].into_iter().flatten().collect()
        }
        "block" => vec![vec![0, 1, 2, 3, 0x80, 0x01, 0, 0]],
        _ => Vec::new(),
    }
}

/// Checks that `label` has the form of a set label (it becomes part of repository keys).
pub(crate) fn check_label(label: &str, what: &str) -> Result<()> {
    let stamp = |s: &str| {
        s.len() == 15
            && s.as_bytes().get(8) == Some(&b'-')
            && s.bytes().enumerate().all(|(i, b)| i == 8 || b.is_ascii_digit())
    };
    let ok = match label.split_once('_') {
        None => label.strip_suffix('F').is_some_and(stamp),
        Some((full, rest)) => {
            full.strip_suffix('F').is_some_and(stamp)
                && (rest.strip_suffix('D').or_else(|| rest.strip_suffix('I'))).is_some_and(stamp)
        }
    };
    if ok { Ok(()) } else { Err(Error::invalid(what, format!("{label:?} is not a pgBackRest set label"))) }
}

/// Reads an info file or manifest at `key`, falling back to `key.copy` when the main one is missing
/// or fails to decrypt, parse or match its checksum.
fn load_info(storage: &dyn Storage, key: &str, pass: Option<&CipherPass>, what: &str) -> Result<Ini> {
    let main = match load_one(storage, key, pass, what) {
        Some(Ok(ini)) => return Ok(ini),
        other => other,
    };
    let copy_what = format!("{what} (backup copy)");
    match (main, load_one(storage, &format!("{key}.copy"), pass, &copy_what)) {
        (main, Some(Ok(ini))) => {
            match main {
                Some(Err(e)) => tracing::warn!("{e:#}; using {key}.copy"),
                _ => tracing::warn!("{key} is missing; using {key}.copy"),
            }
            Ok(ini)
        }
        (Some(Err(main_err)), _) => Err(main_err),
        (_, Some(Err(copy_err))) => Err(copy_err),
        _ => Err(Error::refused(
            format!("{what} not found in pgBackRest repository {}: no {key} nor {key}.copy", storage.location()),
            Some("check the repository path and the stanza name".into()),
        )),
    }
}

/// One attempt of [`load_info`]; `None` when the object is absent.
fn load_one(storage: &dyn Storage, key: &str, pass: Option<&CipherPass>, what: &str) -> Option<Result<Ini>> {
    let bytes = match storage.get(key) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    if !cipher::is_encrypted(&bytes) {
        return Some(Ini::parse(&bytes, what));
    }
    let Some(pass) = pass else {
        return Some(Err(Error::refused(
            format!("{what} is encrypted and no passphrase was given"),
            Some("give the repository's cipher pass (repo1-cipher-pass)".into()),
        )));
    };
    let wrong = || {
        Error::refused(
            format!("wrong passphrase or damaged: {what} cannot be decrypted"),
            Some("check the repository's cipher pass (repo1-cipher-pass)".into()),
        )
    };
    let Ok(plain) = cipher::decrypt(&bytes, pass, false) else { return Some(Err(wrong())) };
    Some(match Ini::parse(&plain, what) {
        // Garbage after a "successful" decryption: the padding matched by chance.
        Err(Error::Invalid { reason, .. }) if !reason.contains("checksum") => Err(wrong()),
        other => other,
    })
}

#[cfg(test)]
mod fuzz_tests {
    use super::*;

    #[test]
    fn seeds_reach_past_the_first_check() {
        let ini = &fuzz_seeds("ini")[0];
        let parsed = Ini::parse(ini, "seed").expect("the seed's checksum matches");
        PgbrManifest::from_ini(&parsed, "20250101-000000F").expect("the seed is a manifest");
        let plain = cipher::decrypt(&fuzz_seeds("cipher")[0], &CipherPass::new("fuzz"), false).unwrap();
        assert_eq!(plain, b"pgfork fuzz seed");
        for (seed, kind) in fuzz_seeds("compress").iter().zip([CompressType::Gz, CompressType::Lz4]) {
            assert!(compress::decompress(kind, seed, false, 1 << 20).is_ok(), "{kind}");
        }
    }
}
