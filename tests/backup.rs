//! Backups against real PostgreSQL 15 and 18: full, then pgbench, then incr, then pgbench, then
//! diff; every set restored, started and compared table by table with the source at that set's
//! stop point; page checksums and amcheck on the restored clusters.

mod common;

use std::collections::BTreeMap;

use common::*;

/// md5 of every table's content in `public`, by name.
fn digests(psql: &dyn Fn(&str) -> String) -> BTreeMap<String, String> {
    let tables =
        psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'");
    tables
        .split(',')
        .map(|t| {
            (
                t.to_string(),
                psql(&format!("SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {t} x")),
            )
        })
        .collect()
}

/// Restores `label` into a new directory, starts it, and checks it against `expected`.
fn restore_and_compare(cluster: &Cluster, repo: &RepoSetup, label: &str, expected: &BTreeMap<String, String>) {
    let (_dir, restored) = repo.restore_started(cluster, Some(label), None);
    let got = digests(&|sql| restored.psql("postgres", sql));
    assert_eq!(&got, expected, "restored {label} differs from the source at its stop point");
    assert_eq!(restored.psql("postgres", "SHOW archive_mode"), "off");
    restored.amcheck();
    let data = restored.data.to_str().unwrap().to_string();
    must_run_as_postgres(&cluster.version.bin("pg_ctl"), &["stop", "-w", "-m", "fast", "-D", &data]);
    must_run_as_postgres(&cluster.version.bin("pg_checksums"), &["--check", "-D", &data]);
}

fn full_incr_diff_round_trip(version: &PgVersion) {
    round_trip_in(version, None);
}
on_each_version!(backup_round_trip_15, backup_round_trip_18, full_incr_diff_round_trip);

/// The same round trip with the repository in a bucket of a real S3 server.
fn full_incr_diff_round_trip_in_s3(version: &PgVersion) {
    let server = s3::Seaweed::start("pgfork-round-trip");
    round_trip_in(version, Some(&server));
}
on_each_version!(backup_round_trip_s3_15, backup_round_trip_s3_18, full_incr_diff_round_trip_in_s3);

/// full, incr after pgbench, diff after more: each restored set equals the source at its stop
/// point, passes amcheck and pg_checksums; the repository in a local directory, or in `s3`.
fn round_trip_in(version: &PgVersion, s3: Option<&s3::Seaweed>) {
    let mut cluster = Cluster::init(version, None);
    cluster.start();
    cluster.pgbench_init("postgres", 2);
    cluster.psql(
        "postgres",
        "CREATE TABLE noise AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 20000) g",
    );
    // PostgreSQL 15 gets an encrypted, compressed repository; 18 a plain one (stored pages as they are).
    let (pass, extra) = if version.major == 15 { (Some("s3cret pass"), "") } else { (None, "compression = \"none\"") };
    let place = s3.map(|server| server.repo_lines(&format!("rt{}", version.major), &server.credentials_file()));
    let repo = RepoSetup::new(&cluster, pass, &format!("{extra}\n{}", place.unwrap_or_default()));
    repo.ok(&["stanza-create"]);
    let psql = |sql: &str| cluster.psql("postgres", sql);
    let bench = |n: &str| {
        must_run_as_postgres(
            &version.bin("pgbench"),
            &[
                "-h",
                cluster.socket_dir.path().to_str().unwrap(),
                "-p",
                &cluster.port.to_string(),
                "-U",
                PG_USER,
                "-t",
                n,
                "-c",
                "2",
                "postgres",
            ],
        )
    };

    let full = repo.backup("full");
    let at_full = digests(&psql);
    bench("500");
    psql("UPDATE noise SET payload = md5(payload) WHERE id % 97 = 0; CREATE TABLE later AS SELECT 1 AS one");
    let incr = repo.backup("incr");
    let at_incr = digests(&psql);
    bench("500");
    psql("DROP TABLE later");
    let diff = repo.backup("diff");
    let at_diff = digests(&psql);

    assert_eq!(full["kind"], "full");
    assert_eq!(incr["kind"], "incr");
    assert_eq!(incr["prior"], full["label"]);
    assert_eq!(diff["kind"], "diff");
    assert_eq!(diff["prior"], full["label"], "a diff is based on the full");
    let changed = incr["stats"]["pages_changed"].as_u64().unwrap();
    let total = incr["stats"]["pages_total"].as_u64().unwrap();
    assert!(changed > 0 && changed * 2 < total, "incr stored {changed} of {total} pages");
    assert!(incr["stats"]["backup_size"].as_u64().unwrap() * 2 < full["stats"]["backup_size"].as_u64().unwrap());
    assert_eq!(full["bad_pages"], 0);

    let info: serde_json::Value = repo.info();
    assert_eq!(info["status"], "ok");
    assert_eq!(info["sets"].as_array().unwrap().len(), 3);
    assert_eq!(info["cipher"], if pass.is_some() { "aes-256-gcm" } else { "none" });
    assert_eq!(info["sets"][1]["references"][0], full["label"]);

    for (report, expected) in [(&full, &at_full), (&incr, &at_incr), (&diff, &at_diff)] {
        restore_and_compare(&cluster, &repo, report["label"].as_str().unwrap(), expected);
    }
}

#[test]
fn delta_restore_rewrites_only_what_differs() {
    if !can_run("delta_restore_rewrites_only_what_differs") {
        return;
    }
    let version = PgVersion::get(18);
    let mut cluster = Cluster::init(&version, None);
    cluster.start();
    cluster.pgbench_init("postgres", 1);
    let repo = RepoSetup::new(&cluster, Some("pw"), "");
    repo.ok(&["stanza-create"]);
    let label = repo.backup("full")["label"].as_str().unwrap().to_string();
    let expected = digests(&|sql| cluster.psql("postgres", sql));

    let dir = PgDir::new(None, "delta-");
    let data = dir.path().join("data");
    restore_durable_before_report(&repo, &data);
    // Damage the restored copy: change a relation, remove a file, add a stray one.
    let rel = cluster.relation_path("postgres", "pgbench_accounts");
    let file = data.join(&rel);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8192 * 3 + 500] ^= 0xFF;
    std::fs::write(&file, &bytes).unwrap();
    std::fs::remove_file(data.join("PG_VERSION")).unwrap();
    std::fs::write(data.join("base/stray"), b"x").unwrap();

    let refused = repo.run(&["restore", "--data", data.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(3), "a non-empty directory needs --delta");
    let out = repo.ok(&["restore", "--data", data.to_str().unwrap(), "--delta", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["bytes_unchanged"].as_u64().unwrap() > 10 * report["bytes_written"].as_u64().unwrap(), "{report}");
    assert_eq!(report["files_removed"], 1);
    assert!(!data.join("base/stray").exists() && data.join("PG_VERSION").exists());
    let _ = label;
    restore_and_compare_in_place(&cluster, &data, &expected);
}

/// Restores into `data` under strace and checks that every file the restore left there was flushed
/// (`fdatasync` or `fsync` returned) before the first byte of the report reached standard output:
/// a restore interrupted after it printed its report cannot have lost a file.
fn restore_durable_before_report(repo: &RepoSetup, data: &std::path::Path) {
    let trace = data.with_file_name("restore.strace");
    let mut command = std::process::Command::new("strace");
    command.args(["-f", "-qq", "-y", "-e", "trace=fdatasync,fsync,write", "-e", "signal=none", "-o"]).arg(&trace);
    let restore = repo.command(&["restore", "--data", data.to_str().unwrap(), "--json"]);
    command
        .arg(restore.get_program())
        .args(restore.get_args())
        .envs(restore.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let out = command.output().expect("run strace (scripts/install-deps installs it)");
    succeeded(&["restore under strace"], out);
    let trace = std::fs::read_to_string(&trace).unwrap();
    // Calls in the order they returned; an interrupted call's path is on its "unfinished" line.
    let mut pending: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut flushed = std::collections::BTreeSet::new();
    let mut report_at = None;
    for line in trace.lines() {
        let Some((pid, call)) = line.split_once(' ') else { continue };
        let call = call.trim_start();
        if call.starts_with("write(1<") {
            report_at = Some(line);
            break;
        }
        let path_of = |call: &'static str, text: &str| {
            text.strip_prefix(call)
                .and_then(|t| t.split_once('<'))
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(path, _)| path.to_string())
        };
        for name in ["fdatasync(", "fsync("] {
            if let Some(path) = path_of(name, call) {
                if call.ends_with("<unfinished ...>") {
                    pending.insert(pid, call);
                } else if call.ends_with("= 0") {
                    flushed.insert(path);
                }
            }
        }
        let resumed = call.starts_with("<... fdatasync resumed>") || call.starts_with("<... fsync resumed>");
        if resumed
            && call.ends_with("= 0")
            && let Some(started) = pending.remove(pid)
        {
            let name = if started.starts_with("fdatasync(") { "fdatasync(" } else { "fsync(" };
            flushed.extend(path_of(name, started));
        }
    }
    assert!(report_at.is_some(), "the restore printed no report:\n{trace}");
    // A file written whole is flushed under its temporary name, then renamed into place.
    let flushed: std::collections::BTreeSet<String> = flushed
        .into_iter()
        .map(|path| match path.rsplit_once('/') {
            Some((dir, name)) if name.starts_with('.') && name.contains(".pgfork-tmp.") => {
                let final_name = name[1..].split(".pgfork-tmp.").next().unwrap_or_default();
                format!("{dir}/{final_name}")
            }
            _ => path,
        })
        .collect();
    // strace names descriptors by their resolved paths.
    let resolved = |path: &std::path::Path| std::fs::canonicalize(path).unwrap().display().to_string();
    let mut unflushed = Vec::new();
    for entry in walkdir::WalkDir::new(data) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() && !flushed.contains(&resolved(entry.path())) {
            unflushed.push(entry.path().display().to_string());
        }
    }
    assert!(unflushed.is_empty(), "not flushed before the report was written: {unflushed:?}");
    assert!(flushed.contains(&resolved(data)), "the data directory itself was not flushed before the report");
}

fn restore_and_compare_in_place(cluster: &Cluster, data: &std::path::Path, expected: &BTreeMap<String, String>) {
    let restored = start_copy(cluster, data);
    assert_eq!(&digests(&|sql| restored.psql("postgres", sql)), expected);
    restored.amcheck();
}

#[test]
fn retention_expires_old_fulls_and_their_dependents() {
    if !can_run("retention_expires_old_fulls_and_their_dependents") {
        return;
    }
    let version = PgVersion::get(18);
    let mut cluster = Cluster::init(&version, None);
    cluster.start();
    let repo = RepoSetup::new(&cluster, None, "retention_full = 1");
    // retention_full appears twice in the generated file: the test's value must win, so rewrite.
    let text = std::fs::read_to_string(&repo.config).unwrap().replace("retention_full = 3\n", "");
    std::fs::write(&repo.config, text).unwrap();
    repo.ok(&["stanza-create"]);
    let first = repo.backup("full");
    let first_incr = repo.backup("incr");
    let dry: serde_json::Value =
        serde_json::from_str(&repo.ok(&["expire", "--set", first["label"].as_str().unwrap(), "--dry-run", "--json"]))
            .unwrap();
    assert_eq!(dry["removed"].as_array().unwrap().len(), 2, "a set goes with its dependents: {dry}");
    assert_eq!(dry["dry_run"], true);
    let second = repo.backup("full");
    let removed: Vec<&str> =
        second["expired"]["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(removed, vec![first["label"].as_str().unwrap(), first_incr["label"].as_str().unwrap()]);
    assert!(second["expired"]["freed_bytes"].as_u64().unwrap() > 0);
    let info: serde_json::Value = repo.info();
    assert_eq!(info["sets"].as_array().unwrap().len(), 1);
}
