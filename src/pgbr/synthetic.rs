//! Tests over a small repository the test writes itself, laid out as pgBackRest 2.45 does (a full
//! set with standalone gz files, a diff referencing it and bundling its own, the archive), plain and
//! encrypted: these run without the real fixtures.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use super::cipher::{CipherPass, encrypt};
use super::ini::{render, sha1_hex};
use super::*;
use crate::repo::label::BackupType;
use crate::repo::storage::LocalStorage;

const FULL: &str = "20250101-000000F";
const DIFF: &str = "20250101-000000F_20250102-000000D";
const SYSTEM_ID: u64 = 7000000000000000001;
const USER_PASS: &str = "user pass";

struct Repo {
    dir: tempfile::TempDir,
    encrypted: bool,
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i / 7) as u8 ^ seed).collect()
}

impl Repo {
    fn pass(&self, text: &str) -> Option<CipherPass> {
        self.encrypted.then(|| CipherPass::new(text))
    }

    fn write(&self, key: &str, bytes: &[u8]) {
        let path = self.dir.path().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// gz then, when encrypted, aes-256-cbc with `pass`.
    fn store(&self, data: &[u8], pass: &str) -> Vec<u8> {
        let compressed = gz(data);
        match self.pass(pass) {
            Some(pass) => encrypt(&compressed, &pass, [7; 8], false),
            None => compressed,
        }
    }

    fn write_ini(&self, key: &str, body: &str, pass: &str) {
        let text = render(body);
        let bytes = match self.pass(pass) {
            Some(pass) => encrypt(text.as_bytes(), &pass, [3; 8], false),
            None => text.into_bytes(),
        };
        self.write(key, &bytes);
    }

    fn cipher_section(&self, pass: &str) -> String {
        if self.encrypted { format!("[cipher]\ncipher-pass=\"{pass}\"\n\n") } else { String::new() }
    }

    /// A manifest of `label` listing `files` (`name={json}` lines).
    fn write_manifest(&self, label: &str, kind: &str, references: &str, bundle: bool, files: &[String]) {
        let prior = if kind == "full" { String::new() } else { format!("backup-prior=\"{FULL}\"\n") };
        let bundle = if bundle { "backup-bundle=true\n" } else { "" };
        let body = format!(
            "[backrest]\nbackrest-format=5\nbackrest-version=\"2.45\"\n\n\
             [backup]\nbackup-archive-start=\"000000010000000000000001\"\nbackup-archive-stop=\"000000010000000000000001\"\n\
             {bundle}backup-label=\"{label}\"\nbackup-lsn-start=\"0/1000028\"\nbackup-lsn-stop=\"0/1000100\"\n\
             {prior}backup-reference=\"{references}\"\nbackup-timestamp-start=1735689600\nbackup-timestamp-stop=1735689601\n\
             backup-type=\"{kind}\"\n\n\
             [backup:db]\ndb-id=1\ndb-system-id={SYSTEM_ID}\ndb-version=\"15\"\n\n\
             [backup:option]\noption-compress-type=\"gz\"\noption-online=true\n\n\
             [backup:target]\npg_data={{\"path\":\"/pg/data\",\"type\":\"path\"}}\n\
             pg_tblspc/16400={{\"path\":\"/ts\",\"tablespace-id\":\"16400\",\"tablespace-name\":\"ts\",\"type\":\"link\"}}\n\n\
             {cipher}[target:file]\n{files}\n\n\
             [target:file:default]\ngroup=\"postgres\"\nmode=\"0600\"\nuser=\"postgres\"\n\n\
             [target:link]\npg_data/pg_tblspc/16400={{\"destination\":\"/ts\"}}\n\n\
             [target:link:default]\ngroup=\"postgres\"\nuser=\"postgres\"\n\n\
             [target:path]\npg_data={{}}\npg_data/base={{\"mode\":\"0750\"}}\n\n\
             [target:path:default]\ngroup=\"postgres\"\nmode=\"0700\"\nuser=\"postgres\"\n",
            cipher = self.cipher_section("files pass"),
            files = files.join("\n"),
        );
        self.write_ini(&format!("backup/demo/{label}/backup.manifest"), &body, "manifest pass");
    }

    /// A manifest entry for `data` stored as `stored`, with `extra` JSON fields.
    fn entry(name: &str, data: &[u8], stored: &[u8], extra: &str) -> String {
        format!(
            "{name}={{{extra}\"checksum\":\"{}\",\"rck\":\"{}\",\"repo-size\":{},\"size\":{},\"timestamp\":1}}",
            sha1_hex(data),
            sha1_hex(stored),
            stored.len(),
            data.len()
        )
    }

    fn build(encrypted: bool) -> Repo {
        let repo = Repo { dir: tempfile::tempdir().unwrap(), encrypted };
        let set = |label: &str, kind: &str, extra: &str| {
            format!(
                "{label}={{\"backrest-format\":5,\"backrest-version\":\"2.45\",\
                 \"backup-archive-start\":\"000000010000000000000001\",\"backup-archive-stop\":\"000000010000000000000001\",\
                 \"backup-info-repo-size\":1,\"backup-info-repo-size-delta\":1,\"backup-info-size\":1,\"backup-info-size-delta\":1,\
                 \"backup-lsn-start\":\"0/1000028\",\"backup-lsn-stop\":\"0/1000100\",{extra}\"backup-timestamp-start\":1735689600,\
                 \"backup-timestamp-stop\":1735689601,\"backup-type\":\"{kind}\",\"db-id\":1}}"
            )
        };
        let diff_extra = format!("\"backup-prior\":\"{FULL}\",\"backup-reference\":[\"{FULL}\"],");
        let backup_info = format!(
            "[backrest]\nbackrest-format=5\nbackrest-version=\"2.45\"\n\n[backup:current]\n{}\n{}\n\n{}\
             [db]\ndb-id=1\ndb-system-id={SYSTEM_ID}\ndb-version=\"15\"\n\n\
             [db:history]\n1={{\"db-system-id\":{SYSTEM_ID},\"db-version\":\"15\"}}\n",
            set(FULL, "full", ""),
            set(DIFF, "diff", &diff_extra),
            repo.cipher_section("manifest pass"),
        );
        repo.write_ini("backup/demo/backup.info", &backup_info, USER_PASS);
        let archive_info = format!(
            "[backrest]\nbackrest-format=5\nbackrest-version=\"2.45\"\n\n{}\
             [db]\ndb-id=1\ndb-system-id={SYSTEM_ID}\ndb-version=\"15\"\n\n\
             [db:history]\n1={{\"db-id\":{SYSTEM_ID},\"db-version\":\"15\"}}\n",
            repo.cipher_section("archive pass"),
        );
        repo.write_ini("archive/demo/archive.info", &archive_info, USER_PASS);

        // The full set: standalone files with the compression's extension, a zero-length one.
        let version = b"15\n".to_vec();
        let relation = content(1, 50_000);
        let (version_stored, relation_stored) =
            (repo.store(&version, "files pass"), repo.store(&relation, "files pass"));
        repo.write(&format!("backup/demo/{FULL}/pg_data/PG_VERSION.gz"), &version_stored);
        repo.write(&format!("backup/demo/{FULL}/pg_data/base/1/1.gz"), &relation_stored);
        let empty = "pg_data/empty={\"mode\":\"0644\",\"size\":0,\"timestamp\":1,\"user\":false}".to_string();
        let full_files = vec![
            Repo::entry("pg_data/PG_VERSION", &version, &version_stored, ""),
            Repo::entry("pg_data/base/1/1", &relation, &relation_stored, ""),
            empty.clone(),
        ];
        repo.write_manifest(FULL, "full", FULL, false, &full_files);

        // The diff: PG_VERSION referenced, two files in bundle 1 back to back.
        let changed = content(2, 30_000);
        let added = b"new file".to_vec();
        let (changed_stored, added_stored) = (repo.store(&changed, "files pass"), repo.store(&added, "files pass"));
        repo.write(&format!("backup/demo/{DIFF}/bundle/1"), &[&added_stored[..], &changed_stored].concat());
        let diff_files = vec![
            Repo::entry("pg_data/PG_VERSION", &version, &version_stored, &format!("\"reference\":\"{FULL}\",")),
            Repo::entry(
                "pg_data/base/1/1",
                &changed,
                &changed_stored,
                &format!("\"bni\":1,\"bno\":{},", added_stored.len()),
            ),
            empty,
            Repo::entry("pg_data/global/new", &added, &added_stored, "\"bni\":1,"),
        ];
        repo.write_manifest(DIFF, "diff", &format!("{FULL},{DIFF}"), true, &diff_files);

        // The archive: one 1 MiB segment and a history file.
        let segment = content(3, 1 << 20);
        let key = format!("archive/demo/15-1/0000000100000000/000000010000000000000001-{}.gz", sha1_hex(&segment));
        repo.write(&key, &repo.store(&segment, "archive pass"));
        let history = b"1\t0/1000100\tno recovery target specified\n";
        let history = match repo.pass("archive pass") {
            Some(pass) => encrypt(history, &pass, [5; 8], false),
            None => history.to_vec(),
        };
        repo.write("archive/demo/15-1/00000002.history", &history);
        repo
    }

    fn open(&self) -> Result<PgbrStanza> {
        let pass = self.encrypted.then(|| Passphrase::new(USER_PASS));
        PgbrStanza::open(Arc::new(LocalStorage::new(self.dir.path())), "demo", pass.as_ref())
    }
}

fn reads_its_repository(encrypted: bool) {
    let repo = Repo::build(encrypted);
    let stanza = repo.open().unwrap();
    assert_eq!(stanza.system_identifier(), SYSTEM_ID);
    assert_eq!(stanza.pg_version(), 15);
    let labels: Vec<_> = stanza.sets().iter().map(|s| (s.label.as_str(), s.backup_type)).collect();
    assert_eq!(labels, [(FULL, BackupType::Full), (DIFF, BackupType::Diff)]);
    assert_eq!(stanza.sets()[1].references, [FULL]);

    let full = stanza.manifest(FULL).unwrap();
    assert_eq!(full.pg_data, "/pg/data");
    assert_eq!(full.tablespaces, [PgbrTablespace { oid: 16400, name: "ts".into(), location: "/ts".into() }]);
    assert_eq!(full.links[0].destination, "/ts");
    assert_eq!(full.links[0].user.as_deref(), Some("postgres"));
    assert_eq!((full.paths[0].mode, full.paths[1].mode), (0o700, 0o750));
    assert_eq!((full.timeline, full.options.compress_type), (Some(1), CompressType::Gz));
    let version = full.file("pg_data/PG_VERSION").unwrap();
    assert_eq!((version.mode, version.user.as_deref()), (0o600, Some("postgres")));
    let empty = full.file("pg_data/empty").unwrap();
    assert_eq!((empty.mode, empty.user.as_deref(), empty.checksum.as_deref()), (0o644, None, None));

    let diff = stanza.manifest(DIFF).unwrap();
    assert_eq!(diff.references, [FULL, DIFF]);
    assert_eq!(diff.file("pg_data/base/1/1").unwrap().bundle.map(|b| b.0), Some(1));
    for manifest in [&full, &diff] {
        for file in &manifest.files {
            let data = stanza.read_file(manifest, file).unwrap();
            assert_eq!(sha1_hex(&data), file.checksum.clone().unwrap_or_else(|| file::SHA1_EMPTY.into()));
            let mut streamed = Vec::new();
            stanza.open_file(manifest, file).unwrap().read_to_end(&mut streamed).unwrap();
            assert_eq!(streamed, data);
        }
    }
    assert_eq!(stanza.read_file(&diff, diff.file("pg_data/global/new").unwrap()).unwrap(), b"new file");

    assert_eq!(stanza.archive_list().unwrap(), ["000000010000000000000001", "00000002.history"]);
    assert_eq!(stanza.archive_get("000000010000000000000001").unwrap().unwrap(), content(3, 1 << 20));
    assert!(stanza.archive_get("00000002.history").unwrap().unwrap().starts_with(b"1\t0/1000100"));
    assert_eq!(stanza.archive_get("000000010000000000000002").unwrap(), None);
    assert_eq!(stanza.archive_get("000000010000000000000001.00000028.backup").unwrap(), None);
    assert!(stanza.archive_get("../backup.info").is_err());
}

#[test]
fn reads_a_plain_repository() {
    reads_its_repository(false);
}

#[test]
fn reads_an_encrypted_repository() {
    reads_its_repository(true);
}

#[test]
fn refusals_and_damage_name_their_object() {
    let repo = Repo::build(true);
    let wrong =
        PgbrStanza::open(Arc::new(LocalStorage::new(repo.dir.path())), "demo", Some(&Passphrase::new("not it")))
            .unwrap_err();
    assert!(wrong.to_string().contains("wrong passphrase or damaged: backup.info of stanza demo"), "{wrong}");
    let stanza = repo.open().unwrap();
    let err = stanza.manifest("20250101-000000F_20250103-000000I").unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert!(stanza.manifest("../x").is_err());

    // A manifest whose checksum entry lies: the content's SHA-1 is named as mismatching.
    let mut full = stanza.manifest(FULL).unwrap();
    let file = full.files.iter_mut().find(|f| f.name == "pg_data/base/1/1").unwrap();
    file.checksum = Some("0".repeat(40));
    let file = file.clone();
    let err = stanza.read_file(&full, &file).unwrap_err().to_string();
    assert_eq!(err.split(':').next(), Some(format!("pgBackRest set {FULL}, file pg_data/base/1/1").as_str()));
    assert!(err.contains("SHA-1 mismatch"), "{err}");

    // A missing bundle.
    let diff = stanza.manifest(DIFF).unwrap();
    std::fs::remove_file(repo.dir.path().join(format!("backup/demo/{DIFF}/bundle/1"))).unwrap();
    let err = stanza.read_file(&diff, diff.file("pg_data/global/new").unwrap()).unwrap_err().to_string();
    assert!(err.contains(&format!("bundle 1 of set {DIFF} is missing")), "{err}");

    // backup.info gone: its copy is used; both gone: refused.
    let info = repo.dir.path().join("backup/demo/backup.info");
    std::fs::rename(&info, info.with_extension("info.copy")).unwrap();
    assert_eq!(repo.open().unwrap().sets().len(), 2);
    std::fs::remove_file(info.with_extension("info.copy")).unwrap();
    let err = repo.open().unwrap_err();
    assert!(matches!(err, Error::Refused { .. }) && err.to_string().contains("not found"), "{err}");
    assert!(Path::new(repo.dir.path()).join("archive/demo/archive.info").exists());
}
