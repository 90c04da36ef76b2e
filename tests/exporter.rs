//! The metrics exporter against a real cluster and repository: scraped over HTTP, parsed with a
//! Prometheus text-format parser, and every value checked against `info --output json` and the
//! cluster's own `pg_stat_archiver`. Collection runs on its interval whatever the scrapes, goes on
//! while another process holds the stanza's lock, and a stanza whose repository cannot be read
//! shows as status values in a page that still serves.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Scrape, Value};

/// The exporter process; killed on drop.
struct Exporter {
    child: Child,
    port: u16,
}

impl Exporter {
    fn start(repo: &RepoSetup) -> Exporter {
        let port = free_port();
        let child = Command::new(server_side_pgfork())
            .args(["exporter", "--listen", &format!("127.0.0.1:{port}"), "--interval", "2s", "--config"])
            .arg(&repo.config)
            .env_remove("PGFORK_PASSPHRASE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the exporter");
        Exporter { child, port }
    }

    /// GET `path`: the status code and the body.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// The page once a collection has finished, parsed.
    fn scrape(&self) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some((200, body)) = self.get("/metrics")
                && body.contains("pgbackrest_exporter_status")
            {
                return Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("a Prometheus text page");
            }
            assert!(Instant::now() < deadline, "the exporter served no collection within two minutes");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the one sample of `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {} samples", found.len());
    found[0]
}

fn absent(scrape: &Scrape, name: &str, stanza: &str) -> bool {
    !scrape.samples.iter().any(|s| s.metric == name && s.labels.get("stanza") == Some(stanza))
}

fn u64_at(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as f64
}

fn time_at(v: &serde_json::Value, key: &str) -> chrono::DateTime<chrono::Utc> {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}")).parse().unwrap()
}

fn close(got: f64, expected: f64, slack: f64, what: &str) {
    assert!((got - expected).abs() <= slack, "{what}: exported {got}, expected {expected} (± {slack})");
}

#[test]
fn metrics_match_info_and_survive_a_held_lock_and_a_missing_repository() {
    if !can_run("metrics_match_info_and_survive_a_held_lock_and_a_missing_repository") {
        return;
    }
    let version = PgVersion::get(18);
    let mut cluster = Cluster::init(&version, None);
    let repo = RepoSetup::new(&cluster, Some("exporter pass"), "");
    repo.enable_archiving(&cluster);
    cluster.start();
    cluster.pgbench_init("postgres", 1);
    repo.ok(&["stanza-create"]);
    repo.backup("full");
    cluster.psql("postgres", "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0");
    repo.backup("incr");
    repo.ok(&["verify"]);
    repo.ok(&["scrub"]);
    let info = repo.info();
    let failed_count: f64 = cluster.psql("postgres", "SELECT failed_count FROM pg_stat_archiver").parse().unwrap();

    // A second stanza whose repository does not exist, and whose cluster does not run.
    repo.append_config(&format!(
        "repo = \"main\"\n\n[repo.gone]\npath = \"{}/gone\"\ncipher = \"none\"\n\n[stanza.lost]\ndata = \"{}/lost\"\nrepo = \"gone\"\n",
        repo.dir.path().display(),
        repo.dir.path().display()
    ));
    let exporter = Exporter::start(&repo);
    let scrape = exporter.scrape();
    let now = chrono::Utc::now();

    // pgbackrest_exporter's names and labels.
    assert_eq!(value(&scrape, "pgbackrest_stanza_status", &[("stanza", "main")]), 0.0);
    assert_eq!(value(&scrape, "pgbackrest_stanza_status", &[("stanza", "lost")]), 1.0, "missing stanza path");
    let repo_labels = [("cipher", "aes-256-gcm"), ("repo_key", "1"), ("stanza", "main")];
    assert_eq!(value(&scrape, "pgbackrest_repo_status", &repo_labels), 0.0);
    assert_eq!(
        value(&scrape, "pgbackrest_exporter_status", &[("stanza", "all-stanzas")]),
        0.0,
        "one stanza unreadable"
    );
    let wal = [
        ("database_id", "1"),
        ("pg_version", "18"),
        ("repo_key", "1"),
        ("stanza", "main"),
        ("wal_max", ""),
        ("wal_min", ""),
    ];
    assert_eq!(value(&scrape, "pgbackrest_wal_archive_status", &wal), 1.0);

    let sets = info["sets"].as_array().unwrap();
    let (full, incr) = (&sets[0], &sets[1]);
    assert_eq!((full["kind"].as_str(), incr["kind"].as_str()), (Some("full"), Some("incr")));
    // No diff was taken: its "last" is the full, as pgbackrest_exporter reports it.
    for (kind, set) in [("full", full), ("diff", full), ("incr", incr)] {
        let labels = [("backup_type", kind), ("block_incr", "n"), ("stanza", "main")];
        let last = |name: &str| value(&scrape, name, &labels);
        assert_eq!(last("pgbackrest_backup_last_size_bytes"), u64_at(set, "database_size"), "{kind} size");
        assert_eq!(last("pgbackrest_backup_last_delta_bytes"), u64_at(set, "backup_size"), "{kind} delta");
        assert_eq!(last("pgbackrest_backup_last_repo_size_bytes"), u64_at(set, "repo_set_size"), "{kind} repo size");
        assert_eq!(last("pgbackrest_backup_last_repo_delta_bytes"), u64_at(set, "repo_size"), "{kind} repo delta");
        assert_eq!(last("pgbackrest_backup_last_error_status"), 0.0);
        let (start, stop) = (time_at(set, "start_time"), time_at(set, "stop_time"));
        close(
            last("pgbackrest_backup_last_duration_seconds"),
            (stop - start).num_milliseconds() as f64 / 1000.0,
            0.01,
            kind,
        );
        let since = (now - stop).num_milliseconds() as f64 / 1000.0;
        close(last("pgbackrest_backup_since_last_completion_seconds"), since, 5.0, kind);
        let pages = value(&scrape, "pgfork_backup_last_pages_changed", &[("backup_type", kind), ("stanza", "main")]);
        assert_eq!(pages, u64_at(set, "pages_changed"));
    }
    assert!(u64_at(incr, "pages_changed") < u64_at(full, "pages_changed"));

    // pgfork's own: verify and scrub records, the archiver.
    let mine = [("repo", "main"), ("stanza", "main")];
    let verification = &incr["verification"];
    assert_eq!(verification["proven"], true);
    assert_eq!(value(&scrape, "pgfork_verify_last_success", &mine), 1.0);
    close(
        value(&scrape, "pgfork_verify_last_duration_seconds", &mine),
        verification["duration_ms"].as_f64().unwrap() / 1000.0,
        0.001,
        "verify duration",
    );
    let since_verify = (now - time_at(verification, "at")).num_milliseconds() as f64 / 1000.0;
    close(value(&scrape, "pgfork_verify_since_last_seconds", &mine), since_verify, 5.0, "since verify");
    assert_eq!(value(&scrape, "pgfork_scrub_last_success", &mine), 1.0);
    assert_eq!(value(&scrape, "pgfork_scrub_damaged_objects", &mine), 0.0);
    assert_eq!(value(&scrape, "pgfork_scrub_unscrubbed_sets", &mine), 0.0);
    let since_scrub = (now - time_at(&info["archive_scrub"], "at")).num_milliseconds() as f64 / 1000.0;
    close(value(&scrape, "pgfork_scrub_since_last_seconds", &mine), since_scrub, 5.0, "since scrub");
    assert_eq!(
        value(&scrape, "pgfork_snapshot_points", &[("stanza", "main")]),
        info["snapshot_points"].as_array().unwrap().len() as f64
    );
    assert_eq!(value(&scrape, "pgfork_cluster_up", &[("stanza", "main")]), 1.0);
    assert_eq!(value(&scrape, "pgfork_archive_failed_count", &[("stanza", "main")]), failed_count);
    assert!(value(&scrape, "pgfork_archive_lag_seconds", &[("stanza", "main")]) >= 0.0);
    assert_eq!(value(&scrape, "pgfork_cluster_up", &[("stanza", "lost")]), 0.0);
    assert!(
        absent(&scrape, "pgbackrest_backup_last_size_bytes", "lost"),
        "no backups are invented for a missing repository"
    );

    // Scrapes are served from the cache: twenty of them do not make twenty collections.
    let before = value(&scrape, "pgfork_exporter_collections_total", &[]);
    let started = Instant::now();
    let mut last = scrape;
    for _ in 0..20 {
        last = exporter.scrape();
    }
    let made = value(&last, "pgfork_exporter_collections_total", &[]) - before;
    let allowed = (started.elapsed().as_secs_f64() / 2.0).ceil() + 1.0;
    assert!(made <= allowed, "{made} collections during 20 scrapes in {:?}", started.elapsed());

    // Another process holds the stanza's lock: collections go on and still read everything.
    let lock = std::fs::File::open(repo.repo_path().join("main/lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    let refused = repo.run(&["backup", "--type", "incr", "--stanza", "main"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(refused.status.code() == Some(3) && stderr.contains("is locked by"), "the lock is held: {stderr}");
    let target = value(&last, "pgfork_exporter_collections_total", &[]) + 2.0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let during = loop {
        let page = exporter.scrape();
        if value(&page, "pgfork_exporter_collections_total", &[]) >= target {
            break page;
        }
        assert!(Instant::now() < deadline, "collections stopped while the lock was held");
        std::thread::sleep(Duration::from_millis(300));
    };
    drop(held);
    assert_eq!(value(&during, "pgbackrest_stanza_status", &[("stanza", "main")]), 0.0);
    let size = value(&during, "pgbackrest_backup_last_size_bytes", &[("backup_type", "incr"), ("stanza", "main")]);
    assert_eq!(size, u64_at(incr, "database_size"));

    // Anything but /metrics is not the page.
    assert_eq!(exporter.get("/nothing-here").map(|(status, _)| status), Some(404));
}
