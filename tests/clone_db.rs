//! `pgfork clone-db` on PostgreSQL 15 and 18: with and without sessions on the template.

mod common;

use common::*;

fn setup(version: &PgVersion) -> Cluster {
    let mut cluster = Cluster::init(version, None);
    cluster.start();
    cluster.psql("postgres", "CREATE DATABASE meta");
    cluster.pgbench_init("meta", 1);
    cluster
}

fn clone_without_connections(version: &PgVersion) {
    let cluster = setup(version);
    let out = pgfork_ok(&strs(&clone_db_args(&cluster, &[])));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["database"], "meta_dev");
    assert!(report["create_ms"].as_f64().unwrap() > 0.0);
    if version.major < 18 {
        assert_eq!(report["cloned"], false);
        assert!(report["notes"][0].as_str().unwrap().contains("full copy"));
    } else if report["cloned"] == false {
        // The temporary directory's file system cannot clone (ext4): the fallback must say so.
        assert!(report["notes"][0].as_str().unwrap().contains("fell back to a full copy"), "{report}");
    }
    assert_eq!(cluster.psql("meta_dev", "SELECT count(*) FROM pgbench_accounts"), "100000");
    // A second clone to the same name is refused.
    let out = pgfork(&strs(&clone_db_args(&cluster, &[])));
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
on_each_version!(clone_db_15, clone_db_18, clone_without_connections);

fn clone_with_connections(version: &PgVersion) {
    let cluster = setup(version);
    let holder = cluster.session("meta");
    let holder_pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);

    let out = pgfork(&strs(&clone_db_args(&cluster, &[])));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("pid {holder_pid}")), "the refusal must list the session: {stderr}");
    assert!(stderr.contains("--terminate"), "{stderr}");
    assert_eq!(cluster.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'meta_dev'"), "0");

    let out = pgfork_ok(&strs(&clone_db_args(&cluster, &["--terminate"])));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["terminated"][0]["pid"], holder_pid);
    assert!(holder.query_one("SELECT 1", &[]).is_err(), "the template's session survived");
    assert_eq!(cluster.psql("postgres", "SELECT datallowconn FROM pg_database WHERE datname = 'meta'"), "t");
    assert_eq!(cluster.psql("meta_dev", "SELECT count(*) FROM pgbench_branches"), "1");
}
on_each_version!(clone_db_terminate_15, clone_db_terminate_18, clone_with_connections);

#[test]
fn connections_are_allowed_again_when_the_clone_fails() {
    if !can_run("connections_are_allowed_again_when_the_clone_fails") {
        return;
    }
    let cluster = setup(&PgVersion::get(18));
    let port = cluster.port.to_string();
    let _holder = cluster.session("meta");
    // An invalid name makes CREATE DATABASE fail after the template was closed and its session ended.
    let long_name = "x".repeat(70);
    let args = vec![
        "clone-db",
        "meta",
        &long_name,
        "--host",
        cluster.socket_dir.path().to_str().unwrap(),
        "-p",
        &port,
        "-U",
        PG_USER,
        "--terminate",
    ];
    cluster.psql("postgres", &format!("CREATE DATABASE {}", "x".repeat(63)));
    let out = pgfork(&args);
    assert!(!out.status.success(), "cloning onto an existing (truncated) name must fail");
    assert_eq!(cluster.psql("postgres", "SELECT datallowconn FROM pg_database WHERE datname = 'meta'"), "t");
}
