//! pgfork on real pgBackRest 2.45 repositories, made in the test by pgBackRest from a PostgreSQL 15
//! cluster (full, diff, incr between pgbench runs, a recorded point-in-time target, WAL archived
//! by pgBackRest's archive-push): one test per way of storing them (gz files; lz4 bundles with
//! aes-256-cbc; zst bundles with aes-256-cbc and block incremental; bz2 files with aes-256-cbc).
//!
//! Each checks that `info` lists pgBackRest's sets; that every set mounted as a data directory
//! holds the bytes `pgbackrest restore` writes for it; that `verify --amcheck` proves the newest
//! set and the full; that a restore to the target time lands where pgBackRest's lands; that damage
//! (a byte of a stored file, both copies of a manifest, a wrong passphrase) is an error naming
//! what is damaged, while a damaged manifest with an intact copy still reads; that the commands
//! that write are refused; and that nothing pgfork did wrote into the repository.

mod common;

use std::path::Path;
use std::process::Command;

use common::mount::*;
use common::pgbackrest::*;
use common::*;

#[test]
fn gz_files_plain() {
    exercise(
        "gz_files_plain",
        Variant { compress: "gz", bundle: false, bundle_limit: None, cipher: false, block: false },
    );
}

/// Bundles hold every file here (the limit above the largest relation), pgbench_accounts too.
#[test]
fn lz4_bundles_encrypted() {
    exercise(
        "lz4_bundles_encrypted",
        Variant { compress: "lz4", bundle: true, bundle_limit: Some("64MiB"), cipher: true, block: false },
    );
}

#[test]
fn zst_bundles_encrypted_block_incremental() {
    exercise(
        "zst_bundles_encrypted_block_incremental",
        Variant { compress: "zst", bundle: true, bundle_limit: None, cipher: true, block: true },
    );
}

#[test]
fn bz2_files_encrypted() {
    exercise(
        "bz2_files_encrypted",
        Variant { compress: "bz2", bundle: false, bundle_limit: None, cipher: true, block: false },
    );
}

fn exercise(name: &str, variant: Variant) {
    if !can_run(name) || !pgbackrest_available(name) {
        return;
    }
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("{name}: {what} done at {:.1} s", started.elapsed().as_secs_f64());
    let repo = PgbrRepo::build(variant);
    step("pgBackRest repository");
    let untouched = listing(&repo.repo_path());
    info_lists_the_same_sets(&repo);
    writes_are_refused(&repo);
    step("info and refusals");
    mounted_sets_hold_what_pgbackrest_restores(&repo);
    step("mounts");
    verify_proves_sets(&repo);
    step("verify");
    pitr_lands_where_pgbackrest_lands(&repo);
    step("PITR");
    damage_is_named(&repo);
    step("damage");
    assert_same_listing(&untouched, &listing(&repo.repo_path()), "the pgBackRest repository after the test");
}

/// `pgfork info` lists pgBackRest's sets: labels, types, references, LSNs and WAL ranges.
fn info_lists_the_same_sets(repo: &PgbrRepo) {
    let theirs = repo.pgbackrest_info();
    let ours: serde_json::Value = serde_json::from_str(&repo.ok(&["info", "--output", "json"])).unwrap();
    assert_eq!(ours["status"], "ok", "{ours}");
    let ours_sets = ours["sets"].as_array().unwrap();
    let theirs_sets = theirs["backup"].as_array().unwrap();
    let summary = |sets: &[serde_json::Value], label: &str, kind: &str| -> Vec<(String, String)> {
        sets.iter().map(|s| (s[label].as_str().unwrap().to_string(), s[kind].as_str().unwrap().to_string())).collect()
    };
    assert_eq!(summary(ours_sets, "label", "kind"), summary(theirs_sets, "label", "type"));
    for (o, t) in ours_sets.iter().zip(theirs_sets) {
        let label = o["label"].as_str().unwrap();
        assert_eq!(o["start_lsn"], t["lsn"]["start"], "{label}");
        assert_eq!(o["stop_lsn"], t["lsn"]["stop"], "{label}");
        assert_eq!(o["wal_start"], t["archive"]["start"], "{label}");
        assert_eq!(o["wal_stop"], t["archive"]["stop"], "{label}");
        let references = if t["reference"].is_null() { serde_json::json!([]) } else { t["reference"].clone() };
        assert_eq!(o["references"], references, "{label}");
    }
    assert_eq!(ours["pg_version"], 15);
    assert_eq!(ours["archive"][0]["min"], theirs["archive"][0]["min"], "{ours}");
    assert_eq!(ours["archive"][0]["max"], theirs["archive"][0]["max"], "{ours}");
}

/// backup, expire, stanza-create and archive-push are refused (exit 3, naming pgBackRest), and
/// the repository is exactly as it was.
fn writes_are_refused(repo: &PgbrRepo) {
    let before = listing(&repo.repo_path());
    let segment = std::fs::read_dir(repo.cluster.data.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().len() == 24)
        .expect("a WAL segment in the cluster's pg_wal");
    for args in [
        &["backup", "--type", "full"][..],
        &["backup", "--type", "incr"][..],
        &["expire"][..],
        &["stanza-create"][..],
        &["archive-push", segment.to_str().unwrap()][..],
    ] {
        let out = repo.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "pgfork {args:?}: {stderr}");
        assert!(stderr.contains("pgBackRest"), "pgfork {args:?} does not name pgBackRest: {stderr}");
    }
    assert_same_listing(&before, &listing(&repo.repo_path()), "the repository after refused writes");
}

/// Every set mounted as a data directory holds, file for file, what `pgbackrest restore --set`
/// writes (pgBackRest's recovery settings aside, and pg_wal, where the mount shows the set's WAL).
fn mounted_sets_hold_what_pgbackrest_restores(repo: &PgbrRepo) {
    let dir = PgDir::new(fast_base().as_deref(), "pgbr-mount-");
    for (i, label) in repo.labels.iter().enumerate() {
        let restored = PgbrRepo::empty_data_dir(dir.path(), &format!("restored-{i}"));
        repo.pgbackrest_ok(&[&format!("--pg1-path={}", restored.display()), &format!("--set={label}"), "restore"]);
        let mountpoint = dir.path().join(format!("mount-{i}"));
        let mount =
            MountProcess::start(repo.command(&["mount", mountpoint.to_str().unwrap(), "--set", label]), &mountpoint);
        assert!(mountpoint.join("backup_label").is_file(), "{label}: no backup_label in the mount");
        assert_same_data_dirs(&mountpoint, &restored, label);
        mount.unmount();
        std::fs::remove_dir_all(&restored).unwrap();
    }
}

fn assert_same_data_dirs(mounted: &Path, restored: &Path, label: &str) {
    let compared = |rel: &String| {
        !matches!(rel.as_str(), "postgresql.auto.conf" | "recovery.signal" | "standby.signal")
            && !rel.starts_with("pg_wal/")
    };
    let ours: std::collections::BTreeSet<String> = regular_files(mounted).into_iter().filter(compared).collect();
    let theirs: std::collections::BTreeSet<String> = regular_files(restored).into_iter().filter(compared).collect();
    assert!(theirs.len() > 900, "{label}: pgbackrest restored only {} files", theirs.len());
    for rel in ours.union(&theirs) {
        match (ours.contains(rel), theirs.contains(rel)) {
            (true, false) => panic!("set {label}: {rel} is in the mount, pgbackrest restore does not write it"),
            (false, true) => panic!("set {label}: {rel} is written by pgbackrest restore, missing from the mount"),
            _ => {}
        }
        let (a, b) = (std::fs::read(mounted.join(rel)).unwrap(), std::fs::read(restored.join(rel)).unwrap());
        assert!(
            a == b,
            "set {label}: {rel} differs: the mount has {} bytes, pgbackrest restore wrote {}",
            a.len(),
            b.len()
        );
    }
}

/// `verify --amcheck` proves the newest set, and the full with `--set`.
fn verify_proves_sets(repo: &PgbrRepo) {
    for set in [None, Some(repo.full())] {
        let mut args = vec!["verify", "--amcheck", "--output", "json"];
        if let Some(label) = set {
            args.extend(["--set", label]);
        }
        let out = repo.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("pgfork {args:?} ({}) printed no report: {stderr}", out.status));
        assert!(out.status.success(), "pgfork {args:?}: {report}\n{stderr}");
        assert_eq!(report["proven"], true, "{report}");
        assert_eq!(report["set"], set.unwrap_or(repo.newest()), "{report}");
        let amcheck = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "amcheck");
        assert!(amcheck.is_some_and(|c| c["passed"] == true), "{report}");
    }
}

/// A restore to the target time recovers the data as it was then, as pgBackRest's does.
fn pitr_lands_where_pgbackrest_lands(repo: &PgbrRepo) {
    let dir = PgDir::new(fast_base().as_deref(), "pgbr-pitr-");
    let ours = dir.path().join("pgfork");
    repo.ok(&["restore", "--data", ours.to_str().unwrap(), "--type", "time", "--target", &repo.target]);
    assert!(ours.join("recovery.signal").is_file());
    let (server, ours_result) = repo.start_paused(&ours);
    drop(server);

    let theirs = PgbrRepo::empty_data_dir(dir.path(), "pgbackrest");
    repo.pgbackrest_ok(&[
        &format!("--pg1-path={}", theirs.display()),
        "--type=time",
        &format!("--target={}", repo.target),
        "restore",
    ]);
    let (server, theirs_result) = repo.start_paused(&theirs);
    drop(server);

    assert_eq!(ours_result, repo.at_target, "pgfork's PITR to {} differs from the data then", repo.target);
    assert_eq!(ours_result, theirs_result, "pgfork's and pgBackRest's PITR to {} differ", repo.target);
}

/// On a copy of the repository: a flipped byte in the full set's largest relation (and, with
/// bundles, in the largest relation stored in a bundle), both copies of a manifest damaged, a
/// wrong or missing passphrase: each an error that names what is damaged. A damaged manifest whose
/// copy is intact still reads.
fn damage_is_named(repo: &PgbrRepo) {
    let dir = PgDir::new(fast_base().as_deref(), "pgbr-damage-");
    let copy = dir.path().join("repo");
    let status = Command::new("cp").arg("-a").arg(repo.repo_path()).arg(&copy).status().unwrap();
    assert!(status.success());
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    chown_postgres(&state);
    let passphrase = repo.variant.cipher.then(|| {
        let file = dir.path().join("passphrase");
        write_private(&file, CIPHER_PASS);
        file
    });
    let config = dir.path().join("pgfork.toml");
    repo.write_config(&config, &copy, passphrase.as_deref(), &state);
    let full = repo.full();
    let set_dir = copy.join(format!("backup/{STANZA}/{full}"));

    // Which files to damage: the largest relation, wherever it is stored, and the largest one in
    // a bundle.
    let files = repo.manifest_files(full);
    let relations: Vec<(&String, &serde_json::Value)> =
        files.iter().filter(|(name, e)| name.starts_with("pg_data/base/") && e["size"].as_u64() > Some(0)).collect();
    let largest = |bundled: bool| {
        relations
            .iter()
            .filter(|(_, e)| !bundled || !e["bni"].is_null())
            .max_by_key(|(_, e)| e["size"].as_u64().unwrap())
            .map(|(name, e)| ((*name).clone(), (*e).clone()))
    };
    let mut targets = vec![largest(false).unwrap()];
    if repo.variant.bundle {
        let bundled = largest(true).expect("a relation stored in a bundle");
        if bundled.0 != targets[0].0 {
            targets.push(bundled);
        }
    }
    for (name, entry) in &targets {
        assert!(entry["reference"].is_null(), "{name} of the full set refers to another set: {entry}");
        let (stored, at) = if let Some(bundle) = entry["bni"].as_u64() {
            let offset = entry["bno"].as_u64().unwrap_or(0);
            (set_dir.join(format!("bundle/{bundle}")), offset + entry["repo-size"].as_u64().unwrap() / 2)
        } else {
            let ext = if entry["bi"].is_null() { repo.variant.extension() } else { ".pgbi" };
            let stored = set_dir.join(format!("{name}{ext}"));
            let len = std::fs::metadata(&stored).unwrap_or_else(|e| panic!("{}: {e}", stored.display())).len();
            (stored, len / 2)
        };
        if repo.variant.bundle {
            assert!(
                stored.starts_with(set_dir.join("bundle")) || !entry["bi"].is_null(),
                "{name} is not in a bundle: {entry}"
            );
        }
        flip_byte(&stored, at);
        let data = dir.path().join("damaged-restore");
        let out = repo.run_with(&config, &["restore", "--set", full, "--data", data.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "restore of {full} with {name} damaged succeeded");
        let rel = name.strip_prefix("pg_data/").unwrap();
        assert!(stderr.contains(rel) && stderr.contains(full), "the error names neither {rel} nor {full}: {stderr}");
        if name == &targets[0].0 {
            // verify reads it through the mount (pg_amcheck reads every relation): not proven,
            // the file and the set named.
            let out = repo.run_with(&config, &["verify", "--set", full, "--amcheck", "--output", "json"]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "verify of {full} with {name} damaged: {stderr}");
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|_| panic!("verify of {full} with {name} damaged printed no report: {stderr}"));
            assert_eq!(report["proven"], false, "{report}");
            assert!(report["read_failures"].to_string().contains(rel), "{report}");
            assert!(stderr.contains(rel) && stderr.contains(full), "verify names neither {rel} nor {full}: {stderr}");
        }
        flip_byte(&stored, at);
        let _ = std::fs::remove_dir_all(&data);
    }

    // Both copies of the newest set's manifest damaged: an error naming the manifest; the main
    // one alone: the copy is read.
    let newest = repo.newest();
    let manifest = copy.join(format!("backup/{STANZA}/{newest}/backup.manifest"));
    let manifest_copy = manifest.with_extension("manifest.copy");
    let middle = |path: &Path| std::fs::metadata(path).unwrap().len() / 2;
    flip_byte(&manifest, middle(&manifest));
    flip_byte(&manifest_copy, middle(&manifest_copy));
    let data = dir.path().join("manifest-restore");
    let out = repo.run_with(&config, &["restore", "--set", newest, "--data", data.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore of {newest} with both manifests damaged succeeded");
    assert!(stderr.contains("manifest") && stderr.contains(newest), "the error does not name the manifest: {stderr}");
    let _ = std::fs::remove_dir_all(&data);
    flip_byte(&manifest_copy, middle(&manifest_copy));
    let out = repo.run_with(&config, &["restore", "--set", newest, "--data", data.to_str().unwrap()]);
    succeeded(&["restore", "--set", newest], out);
    assert!(data.join("backup_label").is_file());

    // A wrong passphrase, and none, for an encrypted repository: refused.
    if repo.variant.cipher {
        let wrong = dir.path().join("wrong-passphrase");
        write_private(&wrong, "not the cipher pass");
        let wrong_config = dir.path().join("wrong.toml");
        repo.write_config(&wrong_config, &copy, Some(&wrong), &state);
        let none_config = dir.path().join("none.toml");
        repo.write_config(&none_config, &copy, None, &state);
        for (config, what) in [(&wrong_config, "passphrase"), (&none_config, "no passphrase")] {
            for args in [&["info", "--output", "json"][..], &["verify", "--set", full][..]] {
                let out = repo.run_with(config, args);
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(3), "pgfork {args:?} with {what}: {stderr}");
                assert!(stderr.contains(what), "pgfork {args:?}: {stderr}");
            }
        }
    }
}
