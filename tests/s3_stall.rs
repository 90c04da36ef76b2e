//! Stalled connections to the object store (SeaweedFS behind a proxy that stops forwarding a
//! response midway without closing): a restore abandons them and reads again on new connections,
//! well within the time the HTTP client's own timeout (120 s) took; with every connection stalled
//! it fails as soon as its few requests are spent, naming the object, the range and what arrived.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::s3::Seaweed;
use common::stall_proxy::StallProxy;
use common::*;
use pgfork::repo::storage::Storage;

/// Runs `args`, killed (and the test failed) when it takes longer than `bound`.
fn run_within(repo: &RepoSetup, args: &[&str], bound: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child =
        repo.command(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{args:?} still ran after {bound:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (child.wait_with_output().unwrap(), started.elapsed())
}

#[test]
fn a_restore_through_stalled_connections_reads_again_and_gives_up_in_bounded_time() {
    if !can_run("a_restore_through_stalled_connections_reads_again_and_gives_up_in_bounded_time") {
        return;
    }
    let server = Seaweed::start("pgfork-stall");
    let proxy = StallProxy::start(&server.endpoint);
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    cluster.start();
    cluster.pgbench_init("postgres", 1);
    let lines = server.repo_lines("stall", &server.credentials_file()).replace(&server.endpoint, &proxy.endpoint());
    let repo = RepoSetup::new(&cluster, None, &format!("{lines}stall_timeout = 2\nrequest_timeout = 5\n"));
    repo.ok(&["stanza-create"]);
    repo.backup("full");
    // Stall only where data flows (packs, then the set's WAL): past what the restore reads first.
    let bucket = server.storage("stall");
    let data = |key: &str| key.contains("/pack/") || key.contains("/wal/");
    let others: u64 = bucket.list("main/").unwrap().iter().filter(|o| !data(&o.key)).map(|o| o.size).sum();
    let after = others + (64 << 10);
    let bound = Duration::from_secs(60);
    let dir = PgDir::new(None, "stall-");

    // The first three connections to carry that much stall: the restore reads again.
    proxy.stall(after, 3);
    let data = dir.path().join("data");
    let (out, took) = run_within(&repo, &["restore", "--data", data.to_str().unwrap()], bound);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the restore failed after {took:?}: {stderr}");
    assert_eq!(proxy.stalled(), 3, "no stall happened ({} connections)", proxy.accepted());
    eprintln!("through three stalled connections the restore took {took:?}");
    proxy.pass();
    let copy = start_copy(&cluster, &data);
    assert_eq!(copy.psql("postgres", "SELECT count(*) FROM pgbench_accounts"), "100000");
    drop(copy);

    // Every connection stalls: the restore fails within the bound, naming the pack, the range,
    // the bytes that arrived and how long it waited.
    proxy.stall(after, u32::MAX);
    let data = dir.path().join("data2");
    let (out, took) = run_within(&repo, &["restore", "--data", data.to_str().unwrap()], bound);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the restore succeeded through stalled connections");
    for expected in
        ["main/backup/", "/pack/", "(bytes ", "gave up after 4 requests in", "bytes received", "stall_timeout"]
    {
        assert!(stderr.contains(expected), "{expected:?} is not in: {stderr}");
    }
    assert!(stderr.contains(&proxy.addr.to_string()), "the endpoint is not named: {stderr}");
    eprintln!("with every connection stalled the restore failed after {took:?}: {stderr}");
}
