//! Each refusal of `pgfork fork`: exit code 3, a message naming the problem, nothing created.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Runs a fork expected to be refused; checks the exit code, the message, and that neither the
/// destination nor a staging directory appeared.
fn assert_refused(args: &[&str], dst: &Path, expect: &str) {
    let existed = dst.exists();
    let out = pgfork(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "expected a refusal, got {}: {stderr}", out.status);
    assert!(stderr.contains(expect), "message {stderr:?} lacks {expect:?}");
    assert_eq!(dst.exists(), existed, "the refusal touched {}", dst.display());
    let parent = dst.parent().unwrap();
    let staging: Vec<PathBuf> = std::fs::read_dir(parent)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains("pgfork-staging"))
                .collect()
        })
        .unwrap_or_default();
    assert!(staging.is_empty(), "staging left behind: {staging:?}");
}

struct Setup {
    version: PgVersion,
    source: Cluster,
    dir: PgDir,
}

impl Setup {
    fn new() -> Option<Setup> {
        if !can_run("fork refusals") {
            return None;
        }
        let version = PgVersion::get(18);
        let mut source = Cluster::init(&version, None);
        source.start();
        Some(Setup { version, source, dir: PgDir::new(None, "refuse-") })
    }

    fn args(&self, dst: &Path, dst_port: u16, extra: &[&str]) -> Vec<String> {
        fork_args(1, &self.source, dst, dst_port, extra)
    }
}

#[test]
fn refuses_a_destination_owned_by_a_running_server() {
    let Some(setup) = Setup::new() else { return };
    let mut other = Cluster::init(&setup.version, None);
    other.start();
    let args = setup.args(&other.data, free_port(), &["--force"]);
    assert_refused(&strs(&args), &other.data, "belongs to a running server");
    assert!(other.data.join("postmaster.pid").exists(), "the running destination was touched");
}

#[test]
fn refuses_a_destination_port_in_use() {
    let Some(setup) = Setup::new() else { return };
    let dst = setup.dir.path().join("fork");
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let busy = listener.local_addr().unwrap().port();
    assert_refused(&strs(&setup.args(&dst, busy, &[])), &dst, &format!("port {busy} is in use"));
    assert_refused(&strs(&setup.args(&dst, setup.source.port, &[])), &dst, "is the source's port");
}

#[test]
fn refuses_a_source_that_is_not_a_data_directory() {
    let Some(setup) = Setup::new() else { return };
    let dst = setup.dir.path().join("fork");
    let not_data = PgDir::new(None, "notdata-");
    let mut args = setup.args(&dst, free_port(), &[]);
    args[3] = not_data.path().display().to_string();
    assert_refused(&strs(&args), &dst, "is not a PostgreSQL data directory");
}

#[test]
fn refuses_an_existing_destination_without_force() {
    let Some(setup) = Setup::new() else { return };
    let dst = setup.dir.path().join("fork");
    std::fs::create_dir(&dst).unwrap();
    std::fs::write(dst.join("keep.txt"), "mine").unwrap();
    chown_postgres(&dst);
    assert_refused(&strs(&setup.args(&dst, free_port(), &[])), &dst, "already exists");
    assert_eq!(std::fs::read_to_string(dst.join("keep.txt")).unwrap(), "mine");
    // With --force (and -y) the stopped destination is replaced.
    pgfork_ok(&strs(&setup.args(&dst, free_port(), &["--force"])));
    assert!(!dst.join("keep.txt").exists() && dst.join("PG_VERSION").exists());
}

#[test]
fn refuses_force_replacement_without_confirmation() {
    let Some(setup) = Setup::new() else { return };
    let dst = setup.dir.path().join("fork");
    std::fs::create_dir(&dst).unwrap();
    let args: Vec<String> = setup.args(&dst, free_port(), &["--force"]).into_iter().filter(|a| a != "-y").collect();
    assert_refused(&strs(&args), &dst, "pass -y to confirm");
}

#[test]
fn refuses_a_cold_copy_of_a_running_source() {
    let Some(setup) = Setup::new() else { return };
    let dst = setup.dir.path().join("fork");
    assert_refused(&strs(&setup.args(&dst, free_port(), &["-s"])), &dst, "in use by a running server");
}

#[test]
fn refuses_the_wrong_source_port_for_a_running_source() {
    let Some(setup) = Setup::new() else { return };
    let mut other = Cluster::init(&setup.version, None);
    other.start();
    let dst = setup.dir.path().join("fork");
    // The other cluster's port, through its socket directory: a server answers, but for another directory.
    let mut args = setup.args(&dst, free_port(), &["--host", other.socket_dir.path().to_str().unwrap()]);
    args[7] = other.port.to_string();
    assert_refused(&strs(&args), &dst, &format!("pass the source's port: -p {}", setup.source.port));
}

#[test]
fn refuses_as_root_when_the_owner_has_no_account() {
    let Some(setup) = Setup::new() else { return };
    let mut copy = Cluster::init(&setup.version, None);
    copy.start();
    copy.stop();
    let status = std::process::Command::new("chown").args(["-R", "54321:54321"]).arg(&copy.data).status().unwrap();
    assert!(status.success());
    let dst = setup.dir.path().join("fork");
    let mut args = setup.args(&dst, free_port(), &["-s"]);
    args[3] = copy.data.display().to_string();
    assert_refused(&strs(&args), &dst, "has no user account");
}
