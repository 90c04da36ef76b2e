//! `scrub` reads back every object of a repository: an intact one passes and is recorded for
//! `info`; a flipped byte in a pack, in a set's WAL, in the archive and a damaged manifest are each
//! named by set, file and segment, in an encrypted and an unencrypted repository.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::heartbeat::*;
use common::*;

fn flip(path: &Path, at: u64) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], at).unwrap();
}

fn scrub(repo: &RepoSetup, args: &[&str]) -> (bool, serde_json::Value) {
    let mut all = vec!["scrub", "--output", "json"];
    all.extend(args);
    let out = repo.run(&all);
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

fn scrub_names_damage(passphrase: Option<&str>) {
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    let repo = RepoSetup::new(&cluster, passphrase, "compression = \"none\"\n");
    repo.enable_archiving(&cluster);
    cluster.start();
    repo.ok(&["stanza-create"]);
    cluster.pgbench_init("postgres", 1);
    let full = repo.backup("full")["label"].as_str().unwrap().to_string();
    cluster.psql("postgres", "UPDATE pgbench_branches SET bbalance = bbalance + 1");
    let incr = repo.backup("incr")["label"].as_str().unwrap().to_string();
    archive_now(&repo);

    let (ok, report) = scrub(&repo, &[]);
    assert!(ok, "{report}");
    assert_eq!(report["intact"], true);
    assert_eq!(report["sets"].as_array().unwrap().len(), 2);
    assert!(report["archive"]["files"].as_u64().unwrap() > 0);
    let info = repo.info();
    assert_eq!(info["sets"][0]["scrub"]["intact"], true, "{info}");
    assert_eq!(info["archive_scrub"]["intact"], true, "{info}");

    // A flipped byte in the middle of the full's largest pack.
    let set_dir = repo.repo_path().join("main/backup").join(&full);
    let packs: Vec<_> = std::fs::read_dir(set_dir.join("pack")).unwrap().map(|e| e.unwrap().path()).collect();
    let largest = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    flip(largest, std::fs::metadata(largest).unwrap().len() / 2);
    // A flipped byte in a WAL segment the full carries, and in an archived segment.
    let wal = std::fs::read_dir(set_dir.join("wal")).unwrap().next().unwrap().unwrap().path();
    flip(&wal, 100);
    let archived = walkdir::WalkDir::new(repo.repo_path().join("main/archive"))
        .into_iter()
        .filter_map(|e| e.ok())
        .find(|e| e.file_type().is_file() && e.file_name().len() == 24)
        .unwrap()
        .into_path();
    flip(&archived, 200);

    let (ok, report) = scrub(&repo, &[]);
    assert!(!ok, "scrub passed a damaged repository: {report}");
    assert_eq!(report["intact"], false);
    let text = report.to_string();
    let full_report = report["sets"].as_array().unwrap().iter().find(|s| s["label"] == full.as_str()).unwrap();
    assert_eq!(full_report["intact"], false, "{report}");
    let wal_name = wal.file_name().unwrap().to_string_lossy().into_owned();
    assert!(text.contains(&format!("pg_wal/{wal_name}")), "the set's WAL is not named: {report}");
    let archived_name = archived.file_name().unwrap().to_string_lossy().into_owned();
    assert!(report["archive"]["damaged"].to_string().contains(&archived_name), "{report}");
    assert!(
        full_report["damaged"].as_array().unwrap().iter().any(|d| d["what"].as_str().unwrap().starts_with("base/"))
    );
    let info = stdout_of_info(&repo);
    assert!(info.contains("scrubbed: DAMAGED"), "{info}");

    // --archive reads only the archive; --set on the incremental reads the runs it uses from the
    // full as well as its own (more bytes than the incremental's own objects).
    let (_, report) = scrub(&repo, &["--archive"]);
    assert!(report["sets"].as_array().unwrap().is_empty() && report["archive"]["intact"] == false);
    let (ok, report) = scrub(&repo, &["--set", &incr]);
    assert!(report["archive"].is_null());
    assert_eq!(ok, report["intact"] == true);
    let incr_dir = repo.repo_path().join("main/backup").join(&incr);
    let own: u64 = walkdir::WalkDir::new(&incr_dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert!(report["bytes"].as_u64().unwrap() > own, "--set read only the set's own objects: {report}");

    // A damaged manifest is a damaged set.
    let manifest = repo.repo_path().join("main/backup").join(&incr).join("manifest");
    flip(&manifest, std::fs::metadata(&manifest).unwrap().len() - 3);
    let (ok, report) = scrub(&repo, &[]);
    assert!(!ok);
    let incr_report = report["sets"].as_array().unwrap().iter().find(|s| s["label"] == incr.as_str()).unwrap();
    assert_eq!(incr_report["damaged"][0]["what"], "manifest", "{report}");
}

fn stdout_of_info(repo: &RepoSetup) -> String {
    String::from_utf8_lossy(&repo.run(&["info"]).stdout).into_owned()
}

#[test]
fn scrub_names_damage_encrypted() {
    if can_run("scrub_names_damage_encrypted") {
        scrub_names_damage(Some("scrub pass"));
    }
}

#[test]
fn scrub_names_damage_unencrypted() {
    if can_run("scrub_names_damage_unencrypted") {
        scrub_names_damage(None);
    }
}
