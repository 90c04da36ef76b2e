//! Stanza commands and the pg-backup / pb command names.

mod common;

use common::*;

#[test]
fn stanza_lifecycle() {
    if !can_run("stanza_lifecycle") {
        return;
    }
    let mut cluster = Cluster::init(&PgVersion::get(15), None);
    cluster.start();
    let repo = RepoSetup::new(&cluster, Some("pw"), "");
    assert!(repo.ok(&["stanza-create"]).contains("created"));
    assert!(repo.ok(&["stanza-create"]).contains("exists"), "stanza-create is idempotent");
    assert!(repo.ok(&["stanza-upgrade"]).contains("unchanged"));

    let out = repo.run(&["stanza-delete"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is running"));
    cluster.stop();
    assert!(repo.ok(&["stanza-delete"]).contains("deleted"));
    assert!(!repo.repo_path().join("main/stanza.json").exists());
    let out = repo.run(&["info"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stanza main does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pg_backup_and_pb_names() {
    if !can_run("pg_backup_and_pb_names") {
        return;
    }
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    cluster.start();
    let repo = RepoSetup::new(&cluster, None, "");
    repo.ok(&["stanza-create"]);
    let bin_dir = PgDir::new(None, "bin-");
    for name in ["pg-backup", "pb"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pgfork"), bin_dir.path().join(name)).unwrap();
    }
    let run = |name: &str, args: &[&str]| {
        let out = std::process::Command::new(bin_dir.path().join(name))
            .args(args)
            .env("PGFORK_CONFIG", &repo.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run("pg-backup", &["full"]).starts_with("full backup "));
    assert!(run("pg-backup", &[]).starts_with("incr backup "));
    let info = run("pb", &["info"]);
    assert!(info.contains("full backup: ") && info.contains("incr backup: "), "{info}");
}
