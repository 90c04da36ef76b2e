//! Single-file exports against real PostgreSQL 15 and 18: from a backup set and from the running
//! cluster (while pgbench writes; read live on ext4, from a reflink snapshot on XFS), unpacked with
//! `pgfork export --extract` or the real `lz4`/`zstd` and `tar`, started, and checked; `export
//! --check` and `--extract` on whole, damaged and truncated exports; encrypted exports opened with
//! `age -d` on a terminal and with `pgfork export --decrypt`; the `pg-basebackup` name with its
//! flags and its retention.

mod common;
#[path = "../vm-tests/loopfs.rs"]
#[allow(dead_code)]
mod loopfs;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// The plain-tools line of the README: `open` (the command that turns the export into a tar
/// stream) piped into `tar -x` in a new directory `dir`, under `pipefail`.
fn plain_unpack(open: &str, file: &Path, dir: &Path) -> std::process::Output {
    let script = format!(
        "set -o pipefail; mkdir -m 700 '{}' && {open} < '{}' | tar -x -C '{}'",
        dir.display(),
        file.display(),
        dir.display()
    );
    Command::new("bash").args(["-c", &script]).output().unwrap()
}

/// Unpacks `file` into a new directory `dir` the way the README says, as root (so the archive's
/// owner, postgres, owns what comes out); `open` is the command that turns it into a tar stream.
fn unpack(open: &str, file: &Path, dir: &Path) {
    let out = plain_unpack(open, file, dir);
    assert!(out.status.success(), "unpack {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("pgfork-export.manifest").exists(), "tar leaves the manifest in the data directory");
    owned_by_postgres(dir);
}

/// Asserts that everything in `dir` belongs to postgres and `dir` is mode 0700.
fn owned_by_postgres(dir: &Path) {
    let owner = nix::unistd::User::from_name(PG_USER).unwrap().unwrap();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap();
        assert_eq!(
            entry.metadata().unwrap().uid(),
            owner.uid.as_raw(),
            "{} not owned by postgres",
            entry.path().display()
        );
    }
    assert_eq!(std::fs::metadata(dir).unwrap().mode() & 0o777, 0o700);
}

/// The pgbench invariant: every transaction adds the same delta to an account, a teller, a branch
/// and the history, so in a consistent copy the four sums agree.
fn pgbench_sums(psql: &dyn Fn(&str) -> String) -> String {
    let sums = psql(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ',' || (SELECT sum(tbalance) FROM pgbench_tellers) \
         || ',' || (SELECT sum(bbalance) FROM pgbench_branches) || ',' || (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let parts: Vec<&str> = sums.split(',').collect();
    assert!(parts.iter().all(|p| *p == parts[0]), "inconsistent copy: sums {sums}");
    sums
}

fn export_from_a_set(version: &PgVersion) {
    let mut cluster = Cluster::init(version, None);
    cluster.start();
    cluster.pgbench_init("postgres", 1);
    cluster.psql("postgres", "CREATE TABLE marker AS SELECT 42 AS answer");
    // PostgreSQL 15: an encrypted repository and LZ4; 18: a plain one and Zstandard.
    let (pass, open, ext) =
        if version.major == 15 { (Some("pw"), "lz4 -d", "tar.lz4") } else { (None, "zstd -d", "tar.zst") };
    let repo = RepoSetup::new(&cluster, pass, "");
    repo.ok(&["stanza-create"]);
    let label = repo.backup("full")["label"].as_str().unwrap().to_string();
    let at_backup = cluster.psql("postgres", "SELECT count(*) FROM pgbench_accounts");
    cluster.psql("postgres", "DROP TABLE marker");

    let dir = PgDir::new(None, "export-");
    let file = dir.path().join(format!("meta.{ext}"));
    let out = repo.ok(&["export", "--set", &label, "--to", file.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["set"], label.as_str());
    assert!(report["wal_segments"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["file_bytes"].as_u64().unwrap(), std::fs::metadata(&file).unwrap().len());
    assert!(report["file_bytes"].as_u64().unwrap() < report["data_bytes"].as_u64().unwrap());
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600, "an export holds the whole database");
    // An existing file is kept unless --force.
    let again = repo.run(&["export", "--set", &label, "--to", file.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(3), "{}", String::from_utf8_lossy(&again.stderr));

    let pg_uid = nix::unistd::User::from_name(PG_USER).unwrap().unwrap().uid.as_raw();
    assert_eq!(
        std::fs::metadata(&file).unwrap().uid(),
        pg_uid,
        "run as root, the export belongs to the cluster's owner"
    );

    // --check reads it all against the manifest; --extract unpacks it, checked, into a new directory.
    let checked: serde_json::Value =
        serde_json::from_str(&pgfork_ok(&["export", "--check", file.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(checked["ok"], true, "{checked}");
    assert_eq!(checked["digest"], "sha256");
    assert_eq!(checked["files"], checked["manifest_files"]);
    assert_eq!(
        checked["files"].as_u64().unwrap(),
        report["files"].as_u64().unwrap() + report["wal_segments"].as_u64().unwrap(),
        "{checked} {report}"
    );
    assert_eq!(checked["bytes"], report["data_bytes"]);
    let text = pgfork_ok(&["export", "--check", file.to_str().unwrap()]);
    assert!(text.contains(": OK") && text.contains("every file matches its sha256 digest"), "{text}");
    let data = dir.path().join("data");
    let extracted: serde_json::Value = serde_json::from_str(&pgfork_ok(&[
        "export",
        "--extract",
        file.to_str().unwrap(),
        "--to",
        data.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!((&extracted["ok"], &extracted["owner"]), (&true.into(), &PG_USER.into()), "{extracted}");
    owned_by_postgres(&data);
    assert!(data.join("backup_label").exists());
    assert!(!data.join("pgfork-export.manifest").exists(), "the manifest stays in the export");
    assert_eq!(leftovers(dir.path()), ["data".to_string(), format!("meta.{ext}")], "no staging directory left");
    // Into a directory that holds something: refused before anything is written.
    let refused = pgfork(&["export", "--extract", file.to_str().unwrap(), "--to", data.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(3), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));
    let copy = start_copy(&cluster, &data);
    assert_eq!(copy.psql("postgres", "SELECT answer FROM marker"), "42", "the copy is the set, not the cluster now");
    assert_eq!(copy.psql("postgres", "SELECT count(*) FROM pgbench_accounts"), at_backup);
    assert_eq!(copy.psql("postgres", "SHOW archive_mode"), "off");
    copy.amcheck();
    drop(copy);

    damaged_and_truncated(&file, open);
}
on_each_version!(export_from_a_set_15, export_from_a_set_18, export_from_a_set);

/// The names in `dir`, sorted.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// `export --check` and `--extract` on `file` with one byte flipped in its middle, then cut 1 MB
/// short: both fail, naming the damage or the truncation, and nothing is left where the
/// extraction was to go. The README's plain-tools line fails too (pipefail).
fn damaged_and_truncated(file: &Path, open: &str) {
    let whole = std::fs::read(file).unwrap();
    assert!(whole.len() > 2 << 20, "an export of {} bytes is too small to cut 1 MB off", whole.len());
    let scratch = PgDir::new(None, "export-bad-");
    let bad = scratch.path().join(file.file_name().unwrap());
    let bad_name = bad.file_name().unwrap().to_string_lossy().into_owned();
    let into = scratch.path().join("data");
    let check = || pgfork(&["export", "--check", bad.to_str().unwrap(), "--json"]);
    let extract = || pgfork(&["export", "--extract", bad.to_str().unwrap(), "--to", into.to_str().unwrap()]);

    let mut flipped = whole.clone();
    flipped[whole.len() / 2] ^= 0x20;
    std::fs::write(&bad, &flipped).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failure = report["failure"].as_str().unwrap();
    assert!(failure.starts_with("damaged: ") && report["truncated"] == false, "{report}");
    // The damaged file, or the entry after which the stream could no longer be read.
    let named = report["damaged"].as_str().or_else(|| failure.split(" after ").nth(1));
    assert!(named.is_some_and(|n| !n.is_empty()), "{report}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(failure), "the error repeats the failure");
    let out = extract();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged: "), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(leftovers(scratch.path()), std::slice::from_ref(&bad_name), "nothing left at DIR");
    let plain = plain_unpack(open, &bad, &into);
    assert!(!plain.status.success(), "lz4/zstd under pipefail must fail the pipeline");
    std::fs::remove_dir_all(&into).unwrap();

    std::fs::write(&bad, &whole[..whole.len() - (1 << 20)]).unwrap();
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["failure"].as_str().unwrap().starts_with("truncated: ") && report["truncated"] == true, "{report}");
    let out = extract();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated: "), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(leftovers(scratch.path()), [bad_name], "nothing left at DIR");
}

/// An online export while pgbench writes, with a tablespace; `base` holds the cluster (an XFS
/// image makes the export read a reflink snapshot, elsewhere it reads the live files).
fn export_live_in(version: &PgVersion, base: Option<&Path>, open: &str, ext: &str, snapshot: bool) {
    let mut cluster = Cluster::init(version, base);
    cluster.start();
    cluster.pgbench_init("postgres", 1);
    let ts_dir = PgDir::new(base, "ts-");
    cluster.psql("postgres", &format!("CREATE TABLESPACE extra LOCATION '{}'", ts_dir.path().display()));
    cluster.psql("postgres", "CREATE TABLE far TABLESPACE extra AS SELECT g AS id FROM generate_series(1, 5000) g");
    let repo = RepoSetup::new(&cluster, None, "");
    let mut bench = cluster.pgbench("postgres", &["-c", "2", "-T", "60"]);
    std::thread::sleep(std::time::Duration::from_secs(2));

    let dir = PgDir::new(None, "export-live-");
    let file = dir.path().join(format!("live.{ext}"));
    let out = repo.ok(&["export", "--live", "--to", file.to_str().unwrap(), "--json"]);
    let _ = bench.kill();
    let _ = bench.wait();
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["stop_lsn"].is_string() && report["wal_segments"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["snapshot"], snapshot, "{report}");
    let leftovers: Vec<_> = std::fs::read_dir(cluster.data.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("pgfork"))
        .collect();
    assert!(leftovers.is_empty(), "the export left {leftovers:?} beside the data directory");
    assert_eq!(cluster.psql("postgres", "SELECT count(*) FROM pg_replication_slots"), "0");

    let checked = pgfork_ok(&["export", "--check", file.to_str().unwrap()]);
    assert!(checked.contains(": OK"), "{checked}");
    let data = dir.path().join("data");
    unpack(open, &file, &data);
    assert!(!data.join("postmaster.pid").exists() && !data.join("tablespace_map").exists());
    let oid = cluster.psql("postgres", "SELECT oid FROM pg_tablespace WHERE spcname = 'extra'");
    assert!(std::fs::symlink_metadata(data.join("pg_tblspc").join(&oid)).unwrap().is_dir(), "tablespace in place");
    let copy = start_copy(&cluster, &data);
    let sums = pgbench_sums(&|sql| copy.psql("postgres", sql));
    assert_ne!(sums.split(',').next(), Some("0"), "pgbench wrote before the export");
    assert_eq!(copy.psql("postgres", "SELECT count(*) FROM far"), "5000");
    assert_eq!(copy.psql("postgres", "SHOW archive_mode"), "off");
    // Its external pid file is its own, inside its data directory; an empty one made the server
    // log that it could not write "".
    assert!(data.join("postmaster.external.pid").is_file(), "the copy has no external pid file of its own");
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(!log.contains("external PID file"), "{log}");
    copy.psql("postgres", "INSERT INTO far SELECT 1; CHECKPOINT");
    assert_eq!(cluster.psql("postgres", "SELECT count(*) FROM far"), "5000", "the copy wrote into the cluster");
    copy.amcheck();
}

#[test]
fn export_live_reads_the_running_cluster_15() {
    if can_run("export_live_reads_the_running_cluster_15") {
        export_live_in(&PgVersion::get(15), None, "lz4 -d", "tar.lz4", false);
    }
}

#[test]
fn export_live_from_a_reflink_snapshot_18() {
    if can_run("export_live_from_a_reflink_snapshot_18") && loopfs::available(loopfs::Kind::XfsReflink) {
        let fs = loopfs::LoopFs::new(loopfs::Kind::XfsReflink, 1024);
        export_live_in(&PgVersion::get(18), Some(fs.path()), "zstd -d", "tar.zst", true);
    }
}

/// Runs `age -d` on a terminal (it reads the passphrase only from one) with `pass` typed in.
fn age_decrypt(input: &Path, output: &Path, pass: &str) -> std::process::Output {
    let command = format!("age -d -o '{}' '{}'", output.display(), input.display());
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("{pass}\n").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn encrypted_export_opens_with_age_and_pgfork() {
    if !can_run("encrypted_export_opens_with_age_and_pgfork") {
        return;
    }
    let (cluster, repo) = cluster_with_stanza(1, None);
    repo.backup("full");
    let dir = PgDir::new(None, "export-age-");
    let sealed = dir.path().join("meta.tar.lz4.age");
    let secret = "correct horse battery staple";
    let export = |pass: Option<&str>, to: &Path| {
        let mut cmd = repo.command(&["export", "--encrypt", "--to", to.to_str().unwrap()]);
        match pass {
            Some(p) => cmd.env("PGFORK_EXPORT_PASSPHRASE", p),
            None => cmd.env_remove("PGFORK_EXPORT_PASSPHRASE"),
        };
        cmd.output().unwrap()
    };
    // No passphrase, or a name that hides the encryption: refused, nothing written.
    assert_eq!(export(None, &sealed).status.code(), Some(3));
    let plain_name = dir.path().join("meta.tar.lz4");
    let refused = export(Some(secret), &plain_name);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(".age"), "{}", String::from_utf8_lossy(&refused.stderr));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(export(Some(secret), &sealed).status.success());
    assert_eq!(&std::fs::read(&sealed).unwrap()[..22], b"age-encryption.org/v1\n");

    // --check decrypts as it reads, with the passphrase from where --decrypt takes it.
    let check = |pass: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgfork"));
        cmd.args(["export", "--check", sealed.to_str().unwrap(), "--json"]);
        match pass {
            Some(p) => cmd.env("PGFORK_EXPORT_PASSPHRASE", p),
            None => cmd.env_remove("PGFORK_EXPORT_PASSPHRASE"),
        };
        cmd.output().unwrap()
    };
    let out = check(Some(secret));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["ok"] == true && report["encrypted"] == true && report["compression"] == "lz4", "{report}");
    assert!(report["files"].as_u64().unwrap() > 900, "{report}");
    let wrong = check(Some("not it"));
    assert_eq!(wrong.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"));
    assert_eq!(check(None).status.code(), Some(3), "no passphrase: refused");

    // age, the tool users have: the passphrase typed on its terminal.
    let by_age = dir.path().join("by-age.tar.lz4");
    let wrong = age_decrypt(&sealed, &by_age, "not it");
    assert!(!wrong.status.success() && !by_age.exists(), "age accepted a wrong passphrase");
    let out = age_decrypt(&sealed, &by_age, secret);
    assert!(out.status.success(), "age -d: {}", String::from_utf8_lossy(&out.stdout));
    // pgfork, for scripts: the passphrase from the environment.
    let by_pgfork = dir.path().join("meta.tar.lz4");
    let decrypt = |pass: &str| {
        Command::new(env!("CARGO_BIN_EXE_pgfork"))
            .args(["export", "--decrypt", sealed.to_str().unwrap()])
            .env("PGFORK_EXPORT_PASSPHRASE", pass)
            .output()
            .unwrap()
    };
    let wrong = decrypt("not it");
    assert_eq!(wrong.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"));
    assert!(decrypt(secret).status.success());
    assert_eq!(std::fs::read(&by_age).unwrap(), std::fs::read(&by_pgfork).unwrap());

    let data = dir.path().join("data");
    unpack("lz4 -d", &by_pgfork, &data);
    // --extract of the encrypted file, the passphrase in a file: the same tree as tar's.
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let extracted = dir.path().join("extracted");
    let args = [
        "export",
        "--extract",
        sealed.to_str().unwrap(),
        "--to",
        extracted.to_str().unwrap(),
        "--passphrase-file",
        key.to_str().unwrap(),
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_pgfork")).args(args).env_remove("PGFORK_EXPORT_PASSPHRASE").output();
    succeeded(&args, out.unwrap());
    owned_by_postgres(&extracted);
    for rel in ["backup_label", "global/pg_control", "postgresql.auto.conf"] {
        assert_eq!(std::fs::read(data.join(rel)).unwrap(), std::fs::read(extracted.join(rel)).unwrap(), "{rel}");
    }
    let copy = start_copy(&cluster, &data);
    assert_eq!(copy.psql("postgres", "SELECT count(*) FROM pgbench_accounts"), "100000");
    drop(copy);

    // A flipped bit is found, not unpacked.
    let mut bytes = std::fs::read(&sealed).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&sealed, &bytes).unwrap();
    std::fs::remove_file(&by_pgfork).unwrap();
    let damaged = decrypt(secret);
    assert!(!damaged.status.success() && !by_pgfork.exists());
    assert!(
        String::from_utf8_lossy(&damaged.stderr).contains("damaged"),
        "{}",
        String::from_utf8_lossy(&damaged.stderr)
    );
    // --check names the file the damaged chunk belongs to (or the entry before it).
    let out = check(Some(secret));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failure = report["failure"].as_str().unwrap();
    assert!(failure.starts_with("damaged: "), "{report}");
    assert!(report["damaged"].is_string() || failure.contains(" after "), "{report}");
    // Whole again, then cut 1 MB short: truncated.
    bytes[at] ^= 0x01;
    std::fs::write(&sealed, &bytes[..bytes.len() - (1 << 20)]).unwrap();
    let out = check(Some(secret));
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["failure"].as_str().unwrap().starts_with("truncated: "), "{report}");
}

/// `pgfork` linked as `pg-basebackup` in a directory of its own.
fn pg_basebackup_binary(dir: &Path) -> PathBuf {
    let link = dir.join("pg-basebackup");
    std::os::unix::fs::symlink(server_side_pgfork(), &link).unwrap();
    link
}

fn set_mtime(path: &Path, hours_ago: u64) {
    let at = std::time::SystemTime::now() - std::time::Duration::from_secs(hours_ago * 3600);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(at).unwrap();
}

#[test]
fn pg_basebackup_name_takes_the_seed_flags() {
    if !can_run("pg_basebackup_name_takes_the_seed_flags") {
        return;
    }
    let mut cluster = Cluster::init(&PgVersion::get(15), None);
    append(&cluster.data.join("postgresql.conf"), "cluster_name = 'pg-meta'\n");
    cluster.start();
    cluster.pgbench_init("postgres", 1);
    let bin_dir = PgDir::new(None, "bin-");
    let pg_basebackup = pg_basebackup_binary(bin_dir.path());
    let dst = PgDir::new(None, "basebackup-");
    let old = dst.path().join("backup_pg-meta_20200101.tar.lz4");
    let recent = dst.path().join("backup_pg-meta_20200102.tar.lz4");
    let foreign = dst.path().join("notes.tar.lz4");
    for (path, hours) in [(&old, 30), (&recent, 2), (&foreign, 30)] {
        std::fs::write(path, b"x").unwrap();
        set_mtime(path, hours);
    }
    let src = format!("postgres:///postgres?host={}&port={}", cluster.socket_dir.path().display(), cluster.port);
    let run = |args: &[&str]| {
        Command::new(&pg_basebackup)
            .args(args)
            .env_remove("PGFORK_EXPORT_PASSPHRASE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // -r 1200 (20 hours, the default): the 30-hour-old backup goes, the rest stays.
    let out = run(&["-s", &src, "-d", dst.path().to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = PathBuf::from(report["file"].as_str().unwrap());
    let today = chrono::Local::now().format("%Y%m%d").to_string();
    assert_eq!(file, dst.path().join(format!("backup_pg-meta_{today}.tar.lz4")));
    assert_eq!(report["removed"], serde_json::json!([old.to_str().unwrap()]));
    assert!(!old.exists() && recent.exists() && foreign.exists());
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), std::fs::metadata(cluster.data.as_path()).unwrap().uid());

    let data = dst.path().join("data");
    unpack("lz4 -d", &file, &data);
    let copy = start_copy(&cluster, &data);
    pgbench_sums(&|sql| copy.psql("postgres", sql));
    assert_eq!(copy.psql("postgres", "SELECT count(*) FROM pgbench_accounts"), "100000");
    drop(copy);

    // -e needs a passphrase; -k names its file, never the secret itself.
    let refused = run(&["-s", &src, "-d", dst.path().to_str().unwrap(), "-e", "-t", "x"]);
    assert_eq!(refused.status.code(), Some(3), "{}", String::from_utf8_lossy(&refused.stderr));
    let refused = run(&["-s", &src, "-d", dst.path().to_str().unwrap(), "-k", "hunter2", "-t", "x"]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not the passphrase itself"));
    let key = bin_dir.path().join("key");
    std::fs::write(&key, "s3cret\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out =
        run(&["-s", &src, "-d", dst.path().to_str().unwrap(), "-k", key.to_str().unwrap(), "-t", "sealed", "-r", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sealed = dst.path().join(format!("backup_sealed_{today}.tar.lz4.age"));
    assert_eq!(&std::fs::read(&sealed).unwrap()[..22], b"age-encryption.org/v1\n");
    assert!(recent.exists(), "-r 0 keeps every backup");
    // -f names the file in the destination directory; zstd by its name.
    let out = run(&["-s", &src, "-d", dst.path().to_str().unwrap(), "-f", "mine.tar.zst"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mine = dst.path().join("mine.tar.zst");
    let listing =
        Command::new("sh").args(["-c", &format!("zstd -d < '{}' | tar -t", mine.display())]).output().unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(names.lines().any(|l| l == "backup_label") && names.lines().any(|l| l == "global/pg_control"), "{names}");
}

#[test]
fn an_interrupted_export_leaves_nothing() {
    if !can_run("an_interrupted_export_leaves_nothing") {
        return;
    }
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    cluster.start();
    cluster.pgbench_init("postgres", 5);
    let repo = RepoSetup::new(&cluster, None, "");
    let dir = PgDir::new(None, "export-int-");
    let file = dir.path().join("x.tar.zst");
    let mut child = repo
        .command(&["export", "--live", "--to", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The temporary exists from just before the backup starts until the file is complete.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_dir(dir.path())
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().contains(".pgfork-tmp."))
    {
        assert!(child.try_wait().unwrap().is_none(), "the export ended before it could be interrupted");
        assert!(std::time::Instant::now() < deadline, "no temporary appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "an interrupted export left a file");
    let beside: Vec<_> = std::fs::read_dir(cluster.data.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("pgfork"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
    assert_eq!(cluster.psql("postgres", "SELECT count(*) FROM pg_replication_slots"), "0");
    // And the next export goes through.
    repo.ok(&["export", "--live", "--to", file.to_str().unwrap()]);
    assert!(file.exists());
}
