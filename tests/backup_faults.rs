//! Backups under bad input and faults: a wrong passphrase, a flipped byte in a pack, a truncated or
//! missing manifest, a backup killed at any point, two backups at once, relations truncated and
//! dropped during a backup, and a data directory that is not the stanza's cluster.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn set_dir(repo: &RepoSetup, label: &str) -> PathBuf {
    repo.repo_path().join("main/backup").join(label)
}

fn set_count(repo: &RepoSetup) -> usize {
    let info: serde_json::Value = repo.info();
    info["sets"].as_array().unwrap().len()
}

/// Restores `label` and checks the result starts and holds pgbench_accounts intact.
fn assert_restores(cluster: &Cluster, repo: &RepoSetup, label: &str) {
    let (_dir, restored) = repo.restore_started(cluster, Some(label), None);
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM pgbench_accounts"),
        cluster.psql("postgres", "SELECT count(*) FROM pgbench_accounts")
    );
    restored.amcheck();
}

#[test]
fn wrong_passphrase_is_refused() {
    if !can_run("wrong_passphrase_is_refused") {
        return;
    }
    let (_cluster, mut repo) = cluster_with_stanza(1, Some("right"));
    repo.backup("full");
    // The repository reads its passphrase file; put the wrong one there.
    let pass_file = repo.dir.path().join("passphrase");
    std::fs::write(&pass_file, "wrong").unwrap();
    for args in [&["backup"][..], &["info"][..]] {
        let out = repo.run(args);
        assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
        assert!(stderr_of(&out).contains("wrong passphrase for the repository of stanza main"), "{}", stderr_of(&out));
    }
    // Without a file and without the environment variable there is no passphrase at all.
    let text = std::fs::read_to_string(&repo.config).unwrap();
    let line = text.lines().find(|l| l.starts_with("passphrase_file")).unwrap().to_string();
    std::fs::write(&repo.config, text.replace(&line, "")).unwrap();
    repo.passphrase = None;
    let out = repo.run(&["info"]);
    assert!(stderr_of(&out).contains("no passphrase"), "{}", stderr_of(&out));
}

#[test]
fn a_flipped_byte_in_a_pack_is_named() {
    if !can_run("a_flipped_byte_in_a_pack_is_named") {
        return;
    }
    let (_cluster, repo) = cluster_with_stanza(1, Some("pw"));
    let label = repo.backup("full")["label"].as_str().unwrap().to_string();
    let pack = set_dir(&repo, &label).join("pack/000001");
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();
    let target = PgDir::new(None, "restore-");
    let out = repo.run(&["restore", "--data", target.path().join("d").to_str().unwrap()]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.contains(&format!("backup {label}, file ")) && err.contains("pack 1 at "), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
}

#[test]
fn truncated_and_missing_manifests() {
    if !can_run("truncated_and_missing_manifests") {
        return;
    }
    let (cluster, repo) = cluster_with_stanza(1, None);
    let first = repo.backup("full")["label"].as_str().unwrap().to_string();
    let second = repo.backup("full")["label"].as_str().unwrap().to_string();
    let third = repo.backup("incr")["label"].as_str().unwrap().to_string();

    let manifest = set_dir(&repo, &second).join("manifest");
    let bytes = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &bytes[..bytes.len() / 2]).unwrap();
    // Regression: info exited 0 with status "error", and listed the incremental built on the
    // damaged set as a normal set.
    let out = repo.run(&["info", "--output", "json"]);
    assert!(!out.status.success(), "info must fail when a set is unreadable");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(info["status"].as_str().unwrap().starts_with("error"), "{info}");
    assert!(info["errors"][0].as_str().unwrap().contains(&second), "{info}");
    let dependent = info["sets"].as_array().unwrap().iter().find(|s| s["label"] == third.as_str()).unwrap();
    assert_eq!(dependent["depends_on_damaged"], second.as_str(), "{info}");
    let text = stdout_of(&repo.run(&["info"]));
    assert!(text.contains(&format!("UNUSABLE: depends on {second}")), "{text}");
    let out = repo.run(&["restore", "--set", &second, "--data", "/tmp/pgfork-never"]);
    assert!(stderr_of(&out).contains(&format!("manifest of backup {second}")), "{}", stderr_of(&out));
    // Retention goes on around a damaged set and keeps it.
    let expire: serde_json::Value = serde_json::from_str(&repo.ok(&["expire", "--dry-run", "--json"])).unwrap();
    assert!(expire["unreadable"][0].as_str().unwrap().starts_with(&second), "{expire}");
    assert!(!expire["removed"].to_string().contains(&second));

    // A set whose manifest is missing does not exist: absent from info, removed by the next backup.
    std::fs::remove_file(set_dir(&repo, &third).join("manifest")).unwrap();
    std::fs::write(&manifest, &bytes).unwrap();
    let info: serde_json::Value = repo.info();
    assert!(!info.to_string().contains(&third));
    let next = repo.backup("incr");
    assert!(next["cleaned"].to_string().contains(&third), "{next}");
    // (Within the same second the new set may take the freed label; then the directory is its own.)
    assert!(!set_dir(&repo, &third).exists() || next["label"] == third.as_str());
    assert_restores(&cluster, &repo, &first);
}

#[test]
fn a_killed_backup_leaves_no_set_and_earlier_sets_intact() {
    if !can_run("a_killed_backup_leaves_no_set_and_earlier_sets_intact") {
        return;
    }
    let (cluster, repo) = cluster_with_stanza(5, Some("pw"));
    let first = repo.backup("full")["label"].as_str().unwrap().to_string();
    cluster.psql("postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0");
    for delay_ms in [30u64, 250, 700, 1500] {
        let mut child =
            repo.command(&["backup", "--type", "full"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            // It finished before the kill: a complete set is fine too; drop it to keep counting simple.
            let sets: serde_json::Value = repo.info();
            let last = sets["sets"].as_array().unwrap().last().unwrap()["label"].as_str().unwrap().to_string();
            repo.ok(&["expire", "--set", &last]);
        }
        assert_eq!(set_count(&repo), 1, "a killed backup (after {delay_ms} ms) left a set behind");
    }
    let next = repo.backup("incr");
    assert_eq!(next["prior"], first.as_str());
    assert_restores(&cluster, &repo, &first);
    assert_restores(&cluster, &repo, next["label"].as_str().unwrap());
}

#[test]
fn two_backups_at_once_are_refused_with_the_holder_named() {
    if !can_run("two_backups_at_once_are_refused_with_the_holder_named") {
        return;
    }
    let (_cluster, repo) = cluster_with_stanza(8, Some("pw"));
    let mut first =
        repo.command(&["backup", "--type", "full"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let lock = repo.repo_path().join("main/lock");
    let mark = format!("pid {}", first.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&lock).unwrap_or_default().contains(&mark) {
        assert!(Instant::now() < deadline, "the first backup never took the lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = repo.run(&["backup"]);
    let finished_first = first.try_wait().unwrap().is_some();
    if !finished_first {
        assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
        assert!(stderr_of(&out).contains(&format!("stanza main is locked by backup ({mark}")), "{}", stderr_of(&out));
    }
    assert!(first.wait().unwrap().success());
    assert!(!finished_first, "the first backup ended before the second started; make it larger");
}

#[test]
fn relations_truncated_and_dropped_during_a_backup() {
    if !can_run("relations_truncated_and_dropped_during_a_backup") {
        return;
    }
    let (cluster, repo) = cluster_with_stanza(3, None);
    cluster.psql(
        "postgres",
        "CREATE TABLE shrink AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 200000) g",
    );
    for i in 0..20 {
        cluster.psql("postgres", &format!("CREATE TABLE doomed_{i} AS SELECT g FROM generate_series(1, 20000) g"));
    }
    let expected = cluster
        .psql("postgres", "SELECT md5(string_agg(aid::text || abalance, ',' ORDER BY aid)) FROM pgbench_accounts");
    let mut child = repo
        .command(&["backup", "--type", "full", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it scans: drop tables, and shrink one with VACUUM (which truncates its file in place).
    let mut round = 0;
    while child.try_wait().unwrap().is_none() && round < 20 {
        cluster.psql("postgres", &format!("DROP TABLE doomed_{round}"));
        if round % 5 == 0 {
            cluster.psql("postgres", &format!("DELETE FROM shrink WHERE id > {}", 200000 - (round + 1) * 9000));
            cluster.psql("postgres", "VACUUM shrink");
        }
        round += 1;
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(round > 0, "the backup finished before any change: nothing was tested");
    let label =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["label"].as_str().unwrap().to_string();

    let (_dir, restored) = repo.restore_started(&cluster, Some(&label), None);
    assert_eq!(
        restored
            .psql("postgres", "SELECT md5(string_agg(aid::text || abalance, ',' ORDER BY aid)) FROM pgbench_accounts"),
        expected
    );
    restored.amcheck();
}

#[test]
fn a_data_directory_of_another_cluster_is_refused() {
    if !can_run("a_data_directory_of_another_cluster_is_refused") {
        return;
    }
    let (_cluster, repo) = cluster_with_stanza(1, None);
    repo.backup("full");
    let mut other = Cluster::init(&PgVersion::get(18), None);
    other.start();
    let text = std::fs::read_to_string(&repo.config).unwrap();
    let data_line = text.lines().find(|l| l.starts_with("data = ")).unwrap().to_string();
    let port_line = text.lines().find(|l| l.starts_with("port = ")).unwrap().to_string();
    let socket_line = text.lines().find(|l| l.starts_with("socket = ")).unwrap().to_string();
    let text = text
        .replace(&data_line, &format!("data = \"{}\"", other.data.display()))
        .replace(&port_line, &format!("port = {}", other.port))
        .replace(&socket_line, &format!("socket = \"{}\"", other.socket_dir.path().display()));
    std::fs::write(&repo.config, text).unwrap();
    // The other cluster's directory under the stanza's name: refused before anything is written.
    for args in [&["backup"][..], &["stanza-create"][..]] {
        let out = repo.run(args);
        assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
        assert!(stderr_of(&out).contains("is this the correct stanza?"), "{}", stderr_of(&out));
    }
}

#[test]
fn bad_page_checksums_are_recorded_without_aborting() {
    if !can_run("bad_page_checksums_are_recorded_without_aborting") {
        return;
    }
    let (mut cluster, repo) = cluster_with_stanza(1, None);
    let rel = cluster.relation_path("postgres", "pgbench_accounts");
    cluster.stop();
    // Corrupt block 7 on disk while the server is down, so no buffer hides it.
    let file = cluster.data.join(&rel);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[7 * 8192 + 3000] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    cluster.start();

    let report = repo.backup("full");
    assert_eq!(report["bad_pages"], 1, "{report}");
    let info: serde_json::Value = repo.info();
    let bad = &info["sets"][0]["bad_pages"][0];
    assert_eq!(bad["path"], rel.as_str());
    assert_eq!(bad["block"], 7);
    let text = repo.ok(&["info"]);
    assert!(text.contains("bad checksums: 1") && text.contains(&format!("bad page: {rel} block 7")), "{text}");
}
