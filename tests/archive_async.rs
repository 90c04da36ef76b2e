//! Asynchronous archiving on real clusters: a pusher killed with SIGKILL again and again loses no
//! WAL (the archive is continuous and PITR reaches the last heartbeat); a local repository made
//! unwritable fills the queue to its limit, then archive-push fails and PostgreSQL keeps the WAL,
//! and everything is archived once it is writable again; an S3 repository that is down (one of
//! two) holds the queue the same way; a refused file stops archive-push until it leaves the queue.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::heartbeat::*;
use common::s3::Seaweed;
use common::*;
use pgfork::repo::storage::Storage;

/// An archiving cluster with `archive_async = true` (and `stanza_extra`) in its stanza, a stanza
/// in an encrypted local repository when `passphrase` is given, a heartbeat table and a full backup.
fn async_cluster(version: &PgVersion, passphrase: Option<&str>, stanza_extra: &str) -> (Cluster, RepoSetup) {
    let mut cluster = Cluster::init(version, None);
    let repo = RepoSetup::new(&cluster, passphrase, "");
    repo.append_config(&format!("archive_async = true\n{stanza_extra}"));
    repo.enable_archiving(&cluster);
    cluster.start();
    repo.ok(&["stanza-create"]);
    cluster.psql("postgres", "CREATE TABLE heartbeat (id serial PRIMARY KEY, ts timestamptz, txid bigint, lsn pg_lsn)");
    (cluster, repo)
}

fn spool_dir(cluster: &Cluster) -> PathBuf {
    cluster.data.join("pg_wal/.pgfork-archive-main")
}

/// The WAL files in the queue.
fn queued(cluster: &Cluster) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(spool_dir(cluster)) else { return BTreeSet::new() };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// pg_stat_archiver: (last archived WAL, failed count, last failed WAL).
fn archiver(cluster: &Cluster) -> (String, i64, String) {
    let row = cluster.psql(
        "postgres",
        "SELECT coalesce(last_archived_wal, '') || ' ' || failed_count || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver",
    );
    let mut fields = row.split(' ');
    let archived = fields.next().unwrap_or_default().to_string();
    let failed = fields.next().unwrap_or("0").parse().unwrap();
    (archived, failed, fields.next().unwrap_or_default().to_string())
}

/// The segment being written now.
fn current_segment(cluster: &Cluster) -> String {
    cluster.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
}

/// Writes a heartbeat and switches to a new segment, `n` times; returns the finished segments.
fn switch_segments(cluster: &Cluster, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            cluster.psql("postgres", "INSERT INTO heartbeat (ts, txid, lsn) VALUES (clock_timestamp(), txid_current(), pg_current_wal_insert_lsn())");
            cluster.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        })
        .collect()
}

/// Waits until `done` holds, failing with `what` after `secs` seconds; `tick` runs between looks.
fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool, mut tick: impl FnMut()) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tick();
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The names of the files archived in a local repository's stanza `main`, on timeline 1.
fn archived_locally(repo: &RepoSetup) -> BTreeSet<String> {
    let dir = repo.repo_path().join("main/archive/00000001");
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeSet::new() };
    entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

/// Every segment of timeline 1 from `first` to `last` (16 MiB segments).
fn segments_between(first: &str, last: &str) -> Vec<String> {
    let number = |name: &str| {
        u64::from_str_radix(&name[8..16], 16).unwrap() * 256 + u64::from_str_radix(&name[16..24], 16).unwrap()
    };
    (number(first)..=number(last)).map(|n| format!("00000001{:08X}{:08X}", n / 256, n % 256)).collect()
}

fn assert_holds_every_segment(archived: &BTreeSet<String>, first: &str, last: &str, what: &str) {
    let missing: Vec<String> = segments_between(first, last).into_iter().filter(|s| !archived.contains(s)).collect();
    assert!(missing.is_empty(), "{what} lacks {missing:?} of {first}..={last}");
    assert!(!archived.iter().any(|n| n.contains("pgfork-tmp")), "{what} holds temporaries: {archived:?}");
}

fn server_log(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.root.path().join("server.log")).unwrap_or_default()
}

/// Waits until PostgreSQL counts `segment` archived and the queue is empty, writing WAL now and
/// then so an archiver that gave up for a while tries again.
fn wait_drained(cluster: &Cluster, segment: &str, secs: u64) {
    let mut ticks = 0;
    wait_until(
        "PostgreSQL archived everything and the queue drained",
        secs,
        || archiver(cluster).0.as_str() >= segment && queued(cluster).is_empty(),
        || {
            ticks += 1;
            if ticks % 10 == 0 {
                switch_segments(cluster, 1);
            }
        },
    );
}

/// Restores to the time `target`, starts the copy, and returns its newest heartbeat id.
fn pitr_to(cluster: &Cluster, repo: &RepoSetup, target: &str) -> i32 {
    let dir = PgDir::new(None, "async-pitr-");
    let data = dir.path().join("data");
    repo.ok(&["restore", "--data", data.to_str().unwrap(), "--type", "time", "--target", target]);
    let restored = start_copy(cluster, &data);
    let deadline = Instant::now() + Duration::from_secs(60);
    while restored.psql("postgres", "SELECT pg_get_wal_replay_pause_state()") != "paused" {
        assert!(Instant::now() < deadline, "recovery never paused at its target");
        std::thread::sleep(Duration::from_millis(100));
    }
    restored.psql("postgres", "SELECT max(id) FROM heartbeat").parse().unwrap()
}

/// Holds the pusher's lock for the test (waiting for a pusher that runs to leave), so no pusher
/// runs while it is held.
fn hold_pusher_lock(cluster: &Cluster) -> nix::fcntl::Flock<std::fs::File> {
    let path = spool_dir(cluster).join("pusher.lock");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return lock,
            Err(_) => assert!(Instant::now() < deadline, "the pusher never left"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn a_killed_pusher_loses_nothing(version: &PgVersion) {
    let (cluster, repo) = async_cluster(version, Some("async pass"), "archive_async_parallel = 1\n");
    repo.backup("full");
    let first = current_segment(&cluster);
    archive_now(&repo);
    let mut killed_with_files_queued = 0;
    for round in 0..6u64 {
        // No pusher while the lock is held: archive-push queues and PostgreSQL moves on.
        let held = hold_pusher_lock(&cluster);
        let names = switch_segments(&cluster, 3);
        let last = names.last().unwrap().clone();
        wait_until("PostgreSQL counts the files archived", 60, || archiver(&cluster).0 >= last, || {});
        let in_queue = queued(&cluster);
        assert!(names.iter().all(|n| in_queue.contains(n)), "round {round}: {names:?} not all queued: {in_queue:?}");
        drop(held);

        // A pusher, killed before it pushes anything or right after its first file left the queue.
        let mut pusher = repo.command(&["archive-push", "--push-queue", "--background"]).spawn().unwrap();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(round * 40));
        } else {
            let before = queued(&cluster).len();
            wait_until("the pusher pushes a file", 60, || queued(&cluster).len() < before, || {});
        }
        pusher.kill().unwrap();
        pusher.wait().unwrap();
        if !queued(&cluster).is_empty() {
            killed_with_files_queued += 1;
        }
    }
    assert!(killed_with_files_queued >= 3, "only {killed_with_files_queued} kills left files queued");

    // The next archive-push starts a pusher, which pushes what the killed ones left.
    let beats = heartbeats(&cluster, 10, None);
    let target = cluster.psql("postgres", "SELECT clock_timestamp()::text");
    std::thread::sleep(Duration::from_millis(200));
    heartbeats(&cluster, 1, None);
    archive_now(&repo);
    let last = switch_segments(&cluster, 1).pop().unwrap();
    wait_drained(&cluster, &last, 120);
    let (last_archived, failed, _) = archiver(&cluster);
    assert_eq!(failed, 0, "archive-push never failed");
    assert_holds_every_segment(&archived_locally(&repo), &first, &last_archived, "the repository");
    let spool_rest: Vec<String> = std::fs::read_dir(spool_dir(&cluster))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("pgfork-tmp"))
        .collect();
    assert!(spool_rest.is_empty(), "temporaries left in the queue: {spool_rest:?}");
    // Recovery through the archive reaches the target: every heartbeat before it, none after.
    assert_eq!(pitr_to(&cluster, &repo, &target), beats.last().unwrap().id);
}

#[test]
fn a_killed_pusher_loses_nothing_15() {
    if can_run("a_killed_pusher_loses_nothing_15") {
        a_killed_pusher_loses_nothing(&PgVersion::get(15));
    }
}

#[test]
fn an_unwritable_repository_fills_the_queue_then_archive_push_fails_and_catches_up() {
    if !can_run("an_unwritable_repository_fills_the_queue_then_archive_push_fails_and_catches_up") {
        return;
    }
    let (cluster, repo) = async_cluster(&PgVersion::get(18), None, "archive_async_queue_max_mb = 48\n");
    repo.backup("full");
    let first = current_segment(&cluster);
    archive_now(&repo);
    let timeline = repo.repo_path().join("main/archive/00000001");
    let writable = std::fs::metadata(&timeline).unwrap().permissions();
    std::fs::set_permissions(&timeline, std::fs::Permissions::from_mode(0o555)).unwrap();

    wait_until("archive-push fails", 90, || archiver(&cluster).1 > 0, || drop(switch_segments(&cluster, 1)));
    let (_, _, refused) = archiver(&cluster);
    let in_queue = queued(&cluster);
    assert_eq!(in_queue.len(), 3, "the queue holds 48 MiB: {in_queue:?}");
    assert!(!in_queue.contains(&refused), "{refused} was refused, not queued");
    assert!(cluster.data.join("pg_wal").join(&refused).exists(), "PostgreSQL keeps {refused}");
    assert!(cluster.data.join("pg_wal/archive_status").join(format!("{refused}.ready")).exists());
    let log = server_log(&cluster);
    assert!(log.contains("asynchronous archive queue of stanza main is full"), "{log}");
    assert!(log.contains("repository main") && log.contains("Permission denied"), "{log}");
    assert!(log.contains("nothing is dropped"), "{log}");
    assert!(!archived_locally(&repo).iter().any(|n| in_queue.contains(n)));

    std::fs::set_permissions(&timeline, writable).unwrap();
    wait_drained(&cluster, &refused, 150);
    let (last_archived, _, _) = archiver(&cluster);
    assert_holds_every_segment(&archived_locally(&repo), &first, &last_archived, "the repository");
}

#[test]
fn an_s3_repository_that_is_down_holds_the_queue_until_it_is_back() {
    if !can_run("an_s3_repository_that_is_down_holds_the_queue_until_it_is_back") {
        return;
    }
    let mut server = Seaweed::start("pgfork-async");
    let (cluster, repo) = async_cluster(
        &PgVersion::get(18),
        None,
        &format!(
            "archive_async_queue_max_mb = 48\nrepos = [\"main\", \"s3\"]\n\n[repo.s3]\n{}",
            server.repo_lines("async", &server.credentials_file())
        ),
    );
    repo.ok(&["stanza-create", "--repo", "s3"]);
    repo.backup("full");
    let first = current_segment(&cluster);
    archive_now(&repo);

    server.kill();
    wait_until("archive-push fails", 120, || archiver(&cluster).1 > 0, || drop(switch_segments(&cluster, 1)));
    let (_, _, refused) = archiver(&cluster);
    let in_queue = queued(&cluster);
    assert_eq!(in_queue.len(), 3, "the queue holds 48 MiB: {in_queue:?}");
    assert!(server_log(&cluster).contains("asynchronous archive queue of stanza main is full"));
    // The directory takes them; they stay queued until the bucket has them too.
    wait_until("the local repository holds the queue", 120, || in_queue.is_subset(&archived_locally(&repo)), || {});
    assert!(in_queue.is_subset(&queued(&cluster)));

    server.restart();
    wait_drained(&cluster, &refused, 240);
    let (last_archived, _, _) = archiver(&cluster);
    assert_holds_every_segment(&archived_locally(&repo), &first, &last_archived, "the local repository");
    let in_bucket: BTreeSet<String> = server
        .storage("async")
        .list("main/archive/00000001/")
        .unwrap()
        .into_iter()
        .filter_map(|o| o.key.rsplit('/').next().map(str::to_string))
        .collect();
    assert_holds_every_segment(&in_bucket, &first, &last_archived, "the bucket");
}

/// Copies a segment of `cluster` to `dir/name` with another system identifier in its header.
fn foreign_segment(cluster: &Cluster, dir: &Path, name: &str) -> PathBuf {
    let wal = cluster.data.join("pg_wal");
    let from = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("a segment in pg_wal");
    let mut bytes = std::fs::read(wal.join(from)).unwrap();
    let sysid = u64::from_ne_bytes(bytes[24..32].try_into().unwrap());
    bytes[24..32].copy_from_slice(&(sysid ^ 1).to_ne_bytes());
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_refused_file_stops_archive_push_until_it_leaves_the_queue() {
    if !can_run("a_refused_file_stops_archive_push_until_it_leaves_the_queue") {
        return;
    }
    let (cluster, repo) = async_cluster(&PgVersion::get(18), None, "");
    archive_now(&repo);
    let dir = PgDir::new(None, "foreign-");
    let foreign_name = "0000000100000000000000F0";
    let foreign = foreign_segment(&cluster, dir.path(), foreign_name);
    // Queued without a look at the repository; the pusher refuses it.
    repo.ok(&["archive-push", foreign.to_str().unwrap()]);
    let error_file = spool_dir(&cluster).join("pusher.error");
    wait_until(
        "the pusher records its refusal",
        60,
        || std::fs::read_to_string(&error_file).is_ok_and(|t| t.contains("\"permanent\": true")),
        || {},
    );
    // From then on archive-push fails with it (before it looks at the file it is given).
    let out = repo.run(&["archive-push", foreign.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("asynchronous archiving of stanza main is stopped"), "{stderr}");
    assert!(stderr.contains(foreign_name) && stderr.contains("system identifier"), "{stderr}");
    assert!(stderr.contains("repository main") && stderr.contains("waits in"), "{stderr}");
    // PostgreSQL's archive-push fails too, and keeps its WAL.
    let segment = switch_segments(&cluster, 1).pop().unwrap();
    wait_until("PostgreSQL's archive-push fails", 60, || archiver(&cluster).1 > 0, || {});
    assert!(server_log(&cluster).contains(foreign_name));

    // Given up as the hint says: archiving goes on, and the foreign file is nowhere.
    std::fs::remove_file(spool_dir(&cluster).join(foreign_name)).unwrap();
    wait_drained(&cluster, &segment, 120);
    assert!(!archived_locally(&repo).contains(foreign_name));
}
