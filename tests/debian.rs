//! A cluster in Debian's packaging layout (`pg_createcluster`: data in /var/lib/postgresql, its
//! configuration in /etc/postgresql): a fork starts with a copy of the configuration, a backup
//! carries it, verify boots the set, and a restored copy starts on its own.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// A `pg_createcluster` cluster of PostgreSQL 15 on a free port; dropped (stopped) on drop.
struct DebianCluster {
    name: String,
    port: u16,
    data: PathBuf,
}

impl DebianCluster {
    fn create() -> DebianCluster {
        let name = format!("pgfork{}", std::process::id());
        let port = free_port();
        let out = Command::new("pg_createcluster")
            .args(["15", &name, "-p", &port.to_string(), "--", "--data-checksums"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_createcluster: {}", String::from_utf8_lossy(&out.stderr));
        let cluster = DebianCluster { data: PathBuf::from(format!("/var/lib/postgresql/15/{name}")), name, port };
        let out = Command::new("pg_ctlcluster").args(["15", &cluster.name, "start"]).output().unwrap();
        assert!(out.status.success(), "pg_ctlcluster start: {}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    fn psql(&self, sql: &str) -> String {
        psql(&PgVersion::get(15), std::path::Path::new("/var/run/postgresql"), self.port, "postgres", sql)
    }

    /// Runs `pgfork fork ID` of this cluster into `dst` with port `port`, answering yes, plus `extra`.
    fn fork(&self, id: &str, dst: &std::path::Path, port: u16, extra: &str) -> std::process::Output {
        let (src, src_port, dst_port) = (self.data.to_str().unwrap(), self.port.to_string(), port.to_string());
        let dst = dst.to_str().unwrap();
        let fixed =
            ["fork", id, "-d", src, "-D", dst, "-p", &src_port, "-P", &dst_port, "--host", "/var/run/postgresql"];
        pgfork(&[&fixed[..], &["-y", extra]].concat())
    }
}

impl Drop for DebianCluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster").args(["--stop", "15", &self.name]).output();
    }
}

/// Drops the named Debian cluster of version 15 when it goes out of scope.
struct DroppedOnExit(String);

impl Drop for DroppedOnExit {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster").args(["--stop", "15", &self.0]).output();
    }
}

#[test]
fn a_debian_cluster_forks_backs_up_verifies_and_restores() {
    if !can_run("a_debian_cluster_forks_backs_up_verifies_and_restores") {
        return;
    }
    let cluster = DebianCluster::create();
    assert!(!cluster.data.join("postgresql.conf").exists(), "not the Debian layout");
    cluster.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n");
    let version = PgVersion::get(15);

    // A fork starts on its own: the configuration came along, rewritten.
    let dir = PgDir::new(None, "debian-");
    let fork = dir.path().join("fork");
    let port = free_port();
    let out = cluster.fork("1", &fork, port, "--start");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let conf = std::fs::read_to_string(fork.join("postgresql.conf")).unwrap();
    assert!(!conf.lines().any(|l| l.starts_with("data_directory")), "{conf}");
    assert!(fork.join("pg_hba.conf").exists() && fork.join("pg_ident.conf").exists());
    let forked =
        psql(&version, std::path::Path::new("/var/run/postgresql"), port, "postgres", "SELECT count(*) FROM t");
    assert_eq!(forked, "1000");
    assert_eq!(
        psql(&version, std::path::Path::new("/var/run/postgresql"), port, "postgres", "SHOW hba_file"),
        fork.join("pg_hba.conf").display().to_string()
    );
    let _ = run_as_postgres(&version.bin("pg_ctl"), &["stop", "-m", "immediate", "-D", fork.to_str().unwrap()]);

    // --register: the fork becomes a Debian cluster of its own, run by pg_ctlcluster.
    let registered = dir.path().join("registered");
    let port = free_port();
    let name = format!("{}-fork2", cluster.name);
    let out = cluster.fork("2", &registered, port, "--register");
    let _drop = DroppedOnExit(name.clone());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!registered.join("postgresql.conf").exists(), "the configuration moved to /etc");
    let listed =
        String::from_utf8_lossy(&Command::new("pg_lsclusters").arg("-h").output().unwrap().stdout).into_owned();
    assert!(listed.lines().any(|l| l.contains(&name) && l.contains(&port.to_string())), "{listed}");
    let out = Command::new("pg_ctlcluster").args(["15", &name, "start"]).output().unwrap();
    assert!(out.status.success(), "pg_ctlcluster start: {}", String::from_utf8_lossy(&out.stderr));
    let forked =
        psql(&version, std::path::Path::new("/var/run/postgresql"), port, "postgres", "SELECT count(*) FROM t");
    assert_eq!(forked, "1000");
    let again = cluster.fork("2", &dir.path().join("again"), free_port(), "--register");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already exists") && !dir.path().join("again").exists(), "{stderr}");

    // A backup carries the configuration; verify boots the set; a restore starts on its own.
    let repo = RepoSetup::new_for(&cluster.data, cluster.port, "/var/run/postgresql", &version, None, "");
    repo.ok(&["stanza-create"]);
    repo.backup("full");
    let report: serde_json::Value = serde_json::from_str(&repo.ok(&["verify", "--output", "json"])).unwrap();
    assert_eq!(report["proven"], true, "{report}");
    let restored = dir.path().join("restored");
    repo.ok(&["restore", "--data", restored.to_str().unwrap()]);
    assert!(restored.join("postgresql.conf").exists() && restored.join("pg_hba.conf").exists());
    let port = free_port();
    append(&restored.join("postgresql.auto.conf"), &format!("port = {port}\n"));
    must_run_as_postgres(
        &version.bin("pg_ctl"),
        &["start", "-w", "-D", restored.to_str().unwrap(), "-l", restored.with_extension("log").to_str().unwrap()],
    );
    let count = psql(&version, std::path::Path::new("/var/run/postgresql"), port, "postgres", "SELECT count(*) FROM t");
    let _ = run_as_postgres(&version.bin("pg_ctl"), &["stop", "-m", "immediate", "-D", restored.to_str().unwrap()]);
    assert_eq!(count, "1000");

    // --config-dir puts the configuration back outside the data directory, pointing at it.
    let (restored, etc) = (dir.path().join("restored2"), dir.path().join("etc-restored"));
    let out = repo.ok(&["restore", "--data", restored.to_str().unwrap(), "--config-dir", etc.to_str().unwrap()]);
    assert!(out.contains(&etc.display().to_string()), "{out}");
    assert!(!restored.join("postgresql.conf").exists() && !restored.join("pg_hba.conf").exists());
    let conf = std::fs::read_to_string(etc.join("postgresql.conf")).unwrap();
    assert!(conf.contains(&format!("data_directory = '{}'", restored.display())), "{conf}");
    let refused = repo.run(&[
        "restore",
        "--data",
        dir.path().join("r3").to_str().unwrap(),
        "--config-dir",
        etc.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(3), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(!dir.path().join("r3").exists(), "a refused restore wrote its data directory");
    let port = free_port();
    append(&restored.join("postgresql.auto.conf"), &format!("port = {port}\n"));
    must_run_as_postgres(
        &version.bin("pg_ctl"),
        &["start", "-w", "-D", etc.to_str().unwrap(), "-l", restored.with_extension("log").to_str().unwrap()],
    );
    let count = psql(&version, std::path::Path::new("/var/run/postgresql"), port, "postgres", "SELECT count(*) FROM t");
    let _ = run_as_postgres(&version.bin("pg_ctl"), &["stop", "-m", "immediate", "-D", etc.to_str().unwrap()]);
    assert_eq!(count, "1000");

    // A restore into the cluster's own data directory leaves /etc/postgresql in charge: no copy of
    // the configuration inside, which would shadow it from later backups and forks.
    let out = Command::new("pg_ctlcluster").args(["15", &cluster.name, "stop"]).output().unwrap();
    assert!(out.status.success(), "pg_ctlcluster stop: {}", String::from_utf8_lossy(&out.stderr));
    let out = repo.ok(&["restore", "--delta", "--data", cluster.data.to_str().unwrap()]);
    assert!(out.contains("left as it is"), "{out}");
    assert!(!cluster.data.join("postgresql.conf").exists() && !cluster.data.join("pg_hba.conf").exists());
    let out = Command::new("pg_ctlcluster").args(["15", &cluster.name, "start"]).output().unwrap();
    assert!(out.status.success(), "pg_ctlcluster start: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(cluster.psql("SELECT count(*) FROM t"), "1000");
}
