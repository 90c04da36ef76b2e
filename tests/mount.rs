//! The FUSE mount and `verify` on PostgreSQL 15 and 18: mounted sets are byte-identical to what
//! `restore` writes and read the same from concurrent readers; servers boot on an overlay above a
//! mount and pass pg_amcheck; verify to a time target lands where PITR lands; a wrong passphrase,
//! a corrupt run, a missing manifest, a killed mount process and a backup plus an expire running
//! under a mount are all handled.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::heartbeat::*;
use common::mount::*;
use common::*;

/// Runs `pgfork mount <mountpoint> <args>` for `repo` and waits until the mount is there.
fn mount_repo(repo: &RepoSetup, mountpoint: &Path, args: &[&str]) -> MountProcess {
    let mut all = vec!["mount", mountpoint.to_str().unwrap()];
    all.extend(args);
    MountProcess::start(repo.command(&all), mountpoint)
}

/// Relative paths of the files and directories under `root`.
fn tree(root: &Path) -> BTreeSet<String> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Asserts the mounted data directory `mounted` holds exactly the files of the restored `restored`
/// with the same bytes (restore's tablespace_map aside: the mount shows tablespaces in place).
fn assert_same_files(mounted: &Path, restored: &Path) {
    let restored_tree: BTreeSet<String> = tree(restored).into_iter().filter(|p| p != "tablespace_map").collect();
    assert_eq!(tree(mounted), restored_tree, "the mount and the restore hold different files");
    for rel in &restored_tree {
        let (a, b) = (mounted.join(rel), restored.join(rel));
        if b.is_file() {
            assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{rel} differs");
            let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
            assert_eq!(mode(&a) & 0o777, mode(&b) & 0o777, "{rel}: mode differs");
        }
    }
}

/// Reads `file` from `threads` threads at once, each in its own order and read size, and checks
/// every thread got `expected`.
fn assert_concurrent_reads(file: &Path, expected: &[u8], threads: usize) {
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let f = File::open(file).unwrap();
                let chunk = 4096 * (t + 1) * 3;
                let count = expected.len().div_ceil(chunk);
                let mut got = vec![0u8; expected.len()];
                // Every other thread reads back to front.
                for i in 0..count {
                    let i = if t % 2 == 1 { count - 1 - i } else { i };
                    let at = i * chunk;
                    let end = (at + chunk).min(expected.len());
                    f.read_exact_at(&mut got[at..end], at as u64).unwrap();
                }
                assert!(got == expected, "thread {t} read different bytes from {}", file.display());
            });
        }
    });
}

fn mounted_sets_match_restores_and_boot(version: &PgVersion) {
    mounted_sets_match_restores_and_boot_in(version, None);
}

/// The same with the repository in a bucket of a real S3 server: the mount reads runs lazily with
/// ranged requests, and verify fetches less than the set.
#[test]
fn mounted_sets_match_restores_and_boot_s3_18() {
    if can_run("mounted_sets_match_restores_and_boot_s3_18") {
        let server = s3::Seaweed::start("pgfork-mount");
        mounted_sets_match_restores_and_boot_in(&PgVersion::get(18), Some(&server));
    }
}

fn mounted_sets_match_restores_and_boot_in(version: &PgVersion, s3: Option<&s3::Seaweed>) {
    let mut cluster = Cluster::init(version, None);
    let pass = (version.major == 15).then_some("mount pass");
    let place = s3.map(|server| server.repo_lines("mount", &server.credentials_file())).unwrap_or_default();
    let repo = RepoSetup::new(&cluster, pass, &place);
    repo.enable_archiving(&cluster);
    cluster.start();
    cluster.pgbench_init("postgres", 2);
    repo.ok(&["stanza-create"]);
    let full = repo.backup("full")["label"].as_str().unwrap().to_string();
    cluster.pgbench("postgres", &["-t", "300"]).wait().unwrap();
    let incr = repo.backup("incr")["label"].as_str().unwrap().to_string();
    repo.ok(&["check", "--timeout", "60"]);

    let dir = PgDir::new(None, "mount-");
    let mountpoint = dir.path().join("repo");
    let mut mount = mount_repo(&repo, &mountpoint, &[]);
    let stanza = mountpoint.join("main");
    assert_eq!(std::fs::read_link(stanza.join("latest")).unwrap(), PathBuf::from(&incr));
    let archived = tree(&stanza.join("archive/00000001"));
    assert!(archived.iter().any(|n| n.len() == 24), "no WAL segment under archive/00000001: {archived:?}");
    for label in [&full, &incr] {
        let restored = dir.path().join(format!("restored-{label}"));
        repo.ok(&["restore", "--set", label, "--data", restored.to_str().unwrap()]);
        assert_same_files(&stanza.join(label), &restored);
    }
    // Concurrent readers of the largest relation get the restored bytes.
    let accounts = cluster.relation_path("postgres", "pgbench_accounts");
    let expected = std::fs::read(dir.path().join(format!("restored-{incr}")).join(&accounts)).unwrap();
    assert_concurrent_reads(&stanza.join(&incr).join(&accounts), &expected, 4);

    // Read-only, yet readable by postgres.
    let file = stanza.join(&incr).join("PG_VERSION");
    let err = std::fs::OpenOptions::new().write(true).open(&file).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = File::create(stanza.join(&incr).join("new")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let read = run_as_postgres(Path::new("/usr/bin/cat"), &[file.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), version.major.to_string());

    // `pgfork umount` ends the serving process cleanly.
    pgfork_ok(&["umount", mountpoint.to_str().unwrap()]);
    assert_eq!(mount.wait(), Some(0), "{}", mount.output());
    assert!(!is_pgfork_mount(&mountpoint));

    // PostgreSQL boots on the copy-on-write mount of the set, and on a kernel overlay above a
    // read-only mount, and passes pg_amcheck on both.
    for mode in [&[][..], &["--overlay"][..]] {
        let mut args = vec!["verify", "--amcheck", "--output", "json"];
        args.extend(mode);
        let report: serde_json::Value = serde_json::from_str(&repo.ok(&args)).unwrap();
        assert_eq!(report["proven"], true, "{report}");
        assert_eq!(report["set"], incr.as_str());
        assert_eq!(report["checks"][0]["name"], "amcheck");
        assert_eq!(report["checks"][0]["passed"], true, "{report}");
        let steps = report["steps"].to_string();
        assert_eq!(steps.contains("overlay"), !mode.is_empty(), "{steps}");
    }
    let info: serde_json::Value = repo.info();
    assert_eq!(info["sets"][1]["verification"]["proven"], true, "{info}");
    assert!(info["sets"][0]["verification"].is_null(), "{info}");
    assert!(repo.ok(&["info"]).contains("verified: proven at"));

    // Booting to the consistent point touches a fraction of the set: the rest is never fetched.
    // With the passphrase and the S3 keys only in pgfork's environment, the server's archive-get
    // reads them from the file verify hands it (the server's environment has none of them).
    let mut repo = repo;
    repo.secrets_from_env_only();
    let args = ["verify", "--output", "json"];
    let mut command = repo.command(&args);
    if s3.is_some() {
        command.env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY).env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY);
    }
    let report: serde_json::Value = serde_json::from_str(&succeeded(&args, command.output().unwrap())).unwrap();
    let (fetched, set) =
        (report["repository_bytes_fetched"].as_u64().unwrap(), report["repository_set_bytes"].as_u64().unwrap());
    assert!(fetched > 0 && fetched < set, "verify fetched {fetched} of the set's {set} bytes");
}
on_each_version!(
    mounted_sets_match_restores_and_boot_15,
    mounted_sets_match_restores_and_boot_18,
    mounted_sets_match_restores_and_boot
);

fn verify_to_a_time_target(version: &PgVersion) {
    let (cluster, repo) = archiving_cluster(version);
    let beats = heartbeats(&cluster, 30, None);
    archive_now(&repo);
    let target = &beats[15];
    // The same condition the PITR tests check: the last heartbeat is at or before the target, and
    // within a second of it.
    let dir = PgDir::new(None, "verify-");
    let check = dir.path().join("landed.sql");
    std::fs::write(
        &check,
        format!(
            "DO $$ DECLARE last float8 := (SELECT extract(epoch FROM max(ts)) FROM heartbeat); BEGIN \
             IF last > {t} OR {t} - last >= 1.0 THEN RAISE EXCEPTION 'landed at %, target {t}', last; END IF; END $$;",
            t = target.epoch
        ),
    )
    .unwrap();
    // Mounted for that target: recovery.signal, the target in postgresql.auto.conf, and in pg_wal
    // the archived segments after the set's own.
    let mp = dir.path().join("target");
    let mount = mount_repo(&repo, &mp, &["--type", "time", "--target", &target.ts]);
    assert!(mp.join("recovery.signal").is_file());
    let conf = std::fs::read_to_string(mp.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains(&format!("recovery_target_time = '{}'", target.ts)), "{conf}");
    assert!(conf.contains("recovery_target_action = 'pause'") && conf.contains("archive-get"), "{conf}");
    // What restore writes, nothing more: verify sets what its own server needs in its own mount.
    assert!(!conf.contains("recovery_init_sync_method") && !conf.contains("--secrets"), "{conf}");
    let backup_label = std::fs::read_to_string(mp.join("backup_label")).unwrap();
    let start_wal = backup_label.lines().next().unwrap().rsplit(' ').next().unwrap().trim_end_matches(')').to_string();
    let wal: Vec<String> = tree(&mp.join("pg_wal")).into_iter().filter(|n| n.len() == 24).collect();
    assert!(wal.len() >= 2 && wal[0] == start_wal, "pg_wal of the target view: {wal:?} (start {start_wal})");
    drop(mount);

    let out = repo.run(&[
        "verify",
        "--type",
        "time",
        "--target",
        &target.ts,
        "--sql",
        check.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report["proven"], true, "{report}");
    assert!(report["target"].as_str().unwrap().contains(&target.ts));
    let steps: Vec<&str> = report["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["mount", "start", "recovery", "teardown"]);

    // A check that fails makes the set unproven, with exit code 1, and the work directory is gone.
    let bad = dir.path().join("bad.sql");
    std::fs::write(&bad, "SELECT count(*) FROM no_such_table;").unwrap();
    let work = dir.path().join("work");
    let out = repo.run(&["verify", "--sql", bad.to_str().unwrap(), "--work", work.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NOT PROVEN") && text.contains("no_such_table"), "{text}");
    assert!(!work.exists(), "verify left its work directory");
}
on_each_version!(verify_to_a_time_target_15, verify_to_a_time_target_18, verify_to_a_time_target);

/// A plain repository (no compression, no cipher) so the test can find and damage one run.
fn plain_repo(cluster: &Cluster) -> RepoSetup {
    RepoSetup::new(cluster, None, "compression = \"none\"\n")
}

#[test]
fn faults_under_a_mount() {
    if !can_run("faults_under_a_mount") {
        return;
    }
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    cluster.start();
    cluster.pgbench_init("postgres", 1);
    let repo = plain_repo(&cluster);
    repo.ok(&["stanza-create"]);
    let first = repo.backup("full")["label"].as_str().unwrap().to_string();
    let second = repo.backup("full")["label"].as_str().unwrap().to_string();
    let dir = PgDir::new(None, "faults-");

    // A wrong passphrase: the mount is refused, nothing is mounted.
    let encrypted = RepoSetup::new(&cluster, Some("right"), "");
    encrypted.ok(&["stanza-create"]);
    std::fs::write(encrypted.dir.path().join("passphrase"), "wrong").unwrap();
    let mp = dir.path().join("refused");
    std::fs::create_dir(&mp).unwrap();
    let out = encrypted.command(&["mount", mp.to_str().unwrap()]).env_remove("PGFORK_PASSPHRASE").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_pgfork_mount(&mp));

    // A corrupt run: reads of that file fail with EIO, the rest of the set reads.
    let accounts = cluster.relation_path("postgres", "pgbench_accounts");
    let manifest = plain_manifest(&repo.repo_path().join(format!("main/backup/{second}/manifest")));
    let entry = manifest["files"].as_array().unwrap().iter().find(|f| f["path"] == accounts.as_str()).unwrap();
    let run = &entry["extents"].as_array().unwrap().iter().find(|e| e["run"].is_object()).unwrap()["run"];
    let pack = repo.repo_path().join(format!("main/backup/{second}/pack/{:06}", run["pack"].as_u64().unwrap()));
    let at = run["at"].as_u64().unwrap() + run["stored"].as_u64().unwrap() / 2;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&pack).unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
    drop(f);

    // A set whose manifest is missing is absent from the tree.
    let third = repo.backup("full")["label"].as_str().unwrap().to_string();
    let third_manifest = repo.repo_path().join(format!("main/backup/{third}/manifest"));
    let saved = std::fs::read(&third_manifest).unwrap();
    std::fs::remove_file(&third_manifest).unwrap();

    let mp = dir.path().join("browse");
    let mut mount = mount_repo(&repo, &mp, &[]);
    let stanza = mp.join("main");
    let listed = tree(&stanza);
    assert!(listed.contains(&first) && listed.contains(&second), "{listed:?}");
    assert!(!listed.iter().any(|p| p.starts_with(&third)), "a set without manifest is listed: {listed:?}");
    let err = std::fs::read(stanza.join(&second).join(&accounts)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let pg_class = cluster.relation_path("postgres", "pg_class");
    assert!(!std::fs::read(stanza.join(&second).join(&pg_class)).unwrap().is_empty());
    assert!(!std::fs::read(stanza.join(&first).join(&accounts)).unwrap().is_empty());

    // Reads go on while a backup and an expire run on the repository: the new set appears, the
    // expired ones go (retention keeps three fulls, so the first goes too), and a set being read
    // keeps its bytes.
    std::fs::write(&third_manifest, &saved).unwrap();
    let reading = stanza.join(&second).join(&pg_class);
    let expected = std::fs::read(&reading).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let fourth = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert!(std::fs::read(&reading).unwrap() == expected, "a read under a running backup differed");
                reads += 1;
            }
            reads
        });
        let fourth = repo.backup("full")["label"].as_str().unwrap().to_string();
        repo.ok(&["expire", "--set", &third]);
        std::thread::sleep(Duration::from_millis(1200));
        let listed: BTreeSet<String> = std::fs::read_dir(&stanza)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let want: BTreeSet<String> = [second.as_str(), fourth.as_str(), "archive", "latest"].map(String::from).into();
        assert_eq!(listed, want);
        assert_eq!(std::fs::read_link(stanza.join("latest")).unwrap(), PathBuf::from(&fourth));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        fourth
    });

    // verify --keep keeps the server until interrupted, then tears everything down.
    let work = dir.path().join("kept");
    let log = dir.path().join("kept.log");
    let mut verify = repo
        .command(&["verify", "--set", &fourth, "--keep", "--work", work.to_str().unwrap()])
        .stdout(File::create(&log).unwrap())
        .stderr(File::create(dir.path().join("kept.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(dir.path().join("kept.err")).unwrap().contains("kept running") {
        assert!(
            verify.try_wait().unwrap().is_none(),
            "verify --keep exited: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(Instant::now() < deadline, "verify --keep never reported its server");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(work.join("data/postmaster.pid").exists());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(verify.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = verify.wait().unwrap();
    assert!(status.success(), "{status}: {}", std::fs::read_to_string(&log).unwrap());
    assert!(!work.exists(), "the work directory outlived the interrupted verify");
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(work.to_str().unwrap()));

    // A verify killed outright leaves its server and work directory; the next verify removes them.
    let err_log = dir.path().join("killed.err");
    let mut killed = repo
        .command(&["verify", "--set", &fourth, "--keep"])
        .stdout(Stdio::null())
        .stderr(File::create(&err_log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&err_log).unwrap().contains("kept running") {
        assert!(killed.try_wait().unwrap().is_none() && Instant::now() < deadline, "verify --keep did not keep");
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = PathBuf::from(format!("/var/tmp/pgfork-verify-main-{}", killed.id()));
    assert!(left.join("run").exists());
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(left.exists());
    let out = repo.run(&["verify", "--set", &fourth]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("left by a verify that was killed"));
    assert!(!left.exists(), "the killed verify's work directory is still there");

    // verify of the damaged set fails and names the file.
    let out = repo.run(&["verify", "--set", &second, "--amcheck", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["proven"], false);
    assert!(report["read_failures"].to_string().contains(&accounts), "{report}");
    let info = repo.ok(&["info"]);
    assert!(info.contains("verified: NOT PROVEN"), "{info}");

    // The mount process killed: the stale mount is detected and replaced by the next mount.
    mount.child.kill().unwrap();
    mount.child.wait().unwrap();
    let err = std::fs::metadata(&stanza).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    let mut again = mount_repo(&repo, &mp, &["--set", &second]);
    // Replaced, not stacked: one mount at the place, and it answers.
    let mounts_here = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == mp.to_str())
        .count();
    assert_eq!(mounts_here, 1, "{}", again.output());
    assert_eq!(std::fs::read(mp.join(&pg_class)).unwrap(), expected);
    assert!(mp.join("backup_label").is_file() && !mp.join("recovery.signal").exists());
    // A set mounted as a data directory is leased: expire leaves it alone while it is mounted.
    let out = repo.run(&["expire", "--set", &second]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("backup {second} is in use by mount (pid")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SIGTERM unmounts cleanly.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(again.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    assert_eq!(again.wait(), Some(0), "{}", again.output());
    assert!(!is_pgfork_mount(&mp));
    repo.ok(&["expire", "--set", &second]);
}

fn a_set_with_a_tablespace(version: &PgVersion) {
    let mut cluster = Cluster::init(version, None);
    cluster.start();
    let ts_dir = PgDir::new(None, "ts-");
    cluster.psql("postgres", &format!("CREATE TABLESPACE extra LOCATION '{}'", ts_dir.path().display()));
    cluster.psql("postgres", "CREATE TABLE far TABLESPACE extra AS SELECT g AS id FROM generate_series(1, 5000) g");
    cluster.psql("postgres", "CHECKPOINT");
    let repo = RepoSetup::new(&cluster, None, "");
    repo.ok(&["stanza-create"]);
    let label = repo.backup("full")["label"].as_str().unwrap().to_string();

    // The tablespace is shown in place under pg_tblspc, with the files' bytes.
    let dir = PgDir::new(None, "mount-ts-");
    let mp = dir.path().join("set");
    let _mount = mount_repo(&repo, &mp, &["--set", &label]);
    let oid = cluster.psql("postgres", "SELECT oid FROM pg_tablespace WHERE spcname = 'extra'");
    let far = cluster.relation_path("postgres", "far");
    assert!(far.starts_with(&format!("pg_tblspc/{oid}/")), "{far}");
    assert!(std::fs::symlink_metadata(mp.join("pg_tblspc").join(&oid)).unwrap().is_dir());
    let on_disk = std::fs::read(ts_dir.path().join(far.splitn(3, '/').nth(2).unwrap())).unwrap();
    assert!(std::fs::read(mp.join(&far)).unwrap() == on_disk, "{far} differs from the cluster's file");
    assert!(!mp.join("tablespace_map").exists());
    let conf = std::fs::read_to_string(mp.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("allow_in_place_tablespaces = 'on'"), "{conf}");

    // And it boots there, the table readable, without touching the cluster's own tablespace.
    let check = dir.path().join("far.sql");
    std::fs::write(
        &check,
        "DO $$ BEGIN IF (SELECT count(*) FROM far) <> 5000 THEN RAISE EXCEPTION 'far is incomplete'; END IF; END $$;",
    )
    .unwrap();
    let report: serde_json::Value = serde_json::from_str(&repo.ok(&[
        "verify",
        "--set",
        &label,
        "--amcheck",
        "--sql",
        check.to_str().unwrap(),
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(report["proven"], true, "{report}");
    assert_eq!(std::fs::read(ts_dir.path().join(far.splitn(3, '/').nth(2).unwrap())).unwrap(), on_disk);
}
on_each_version!(a_set_with_a_tablespace_15, a_set_with_a_tablespace_18, a_set_with_a_tablespace);
