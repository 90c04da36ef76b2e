//! Torture: SIGKILL at random points of backup, archive-push, expire, restore and pitr --fork while
//! pgbench writes, and after every kill check that the repository lists only complete sets, that
//! they read back intact (scrub), that the newest restores and passes pg_checksums, that the
//! archive holds no torn segment, and that production never stopped.
//!
//! The suite runs `PGFORK_TORTURE_TRIALS` trials of each (2 by default); `scripts/torture` runs 20
//! and prints the counts.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::heartbeat::archive_now;
use common::*;

fn trials() -> usize {
    std::env::var("PGFORK_TORTURE_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(2)
}

/// A small random number (the test only needs spread, not quality).
fn random_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    (u64::from(nanos) ^ u64::from(std::process::id()).rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15) % n.max(1)
}

/// Starts `command` and SIGKILLs it after a random delay below `within` (if it is still running);
/// returns whether it was killed before finishing.
fn kill_at_random(mut command: std::process::Command, within: Duration) -> bool {
    let mut child = command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let delay = Duration::from_millis(random_below(within.as_millis() as u64));
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    !status.success()
}

/// The world a torture runs in: production under pgbench, archiving into an encrypted repository.
struct Torture {
    cluster: Cluster,
    repo: RepoSetup,
    bench: Child,
    killed: usize,
}

impl Torture {
    fn new() -> Torture {
        let mut cluster = Cluster::init(&PgVersion::get(18), None);
        let repo = RepoSetup::new(&cluster, Some("torture"), "");
        repo.enable_archiving(&cluster);
        cluster.start();
        repo.ok(&["stanza-create"]);
        cluster.pgbench_init("postgres", 2);
        repo.backup("full");
        let bench = cluster.pgbench("postgres", &["-c", "2", "-T", "3600", "-R", "200"]);
        Torture { cluster, repo, bench, killed: 0 }
    }

    /// After a kill: production runs, every listed set and the archive read back intact, the
    /// newest set restores and passes pg_checksums.
    fn check(&self, what: &str) {
        assert!(self.cluster.data.join("postmaster.pid").exists(), "{what}: production stopped");
        assert_eq!(self.cluster.psql("postgres", "SELECT 1"), "1", "{what}: production does not answer");
        let out = self.repo.run(&["scrub", "--output", "json"]);
        assert!(out.status.success(), "{what}: scrub failed: {}", String::from_utf8_lossy(&out.stdout));
        let (_dir, data) = self.restore(None);
        self.boots_with_valid_checksums(&data);
    }

    /// Starts a restored directory, checks it answers, stops it cleanly and runs pg_checksums.
    fn boots_with_valid_checksums(&self, data: &Path) {
        let server = start_copy(&self.cluster, data);
        assert_eq!(server.psql("postgres", "SELECT count(*) > 0 FROM pgbench_accounts"), "t");
        let data = data.to_str().unwrap();
        must_run_as_postgres(&self.cluster.version.bin("pg_ctl"), &["stop", "-w", "-m", "fast", "-D", data]);
        must_run_as_postgres(&self.cluster.version.bin("pg_checksums"), &["--check", "-D", data]);
    }

    /// Restores `label` (the newest when `None`) into a fresh directory.
    fn restore(&self, label: Option<&str>) -> (PgDir, std::path::PathBuf) {
        let dir = PgDir::new(None, "torture-restore-");
        let data = dir.path().join("data");
        let mut args = vec!["restore", "--data", data.to_str().unwrap()];
        if let Some(label) = label {
            args.extend(["--set", label]);
        }
        self.repo.ok(&args);
        (dir, data)
    }

    fn labels(&self) -> Vec<String> {
        let info = self.repo.info();
        info["sets"].as_array().unwrap().iter().map(|s| s["label"].as_str().unwrap().to_string()).collect()
    }
}

impl Drop for Torture {
    fn drop(&mut self) {
        let _ = self.bench.kill();
        let _ = self.bench.wait();
    }
}

fn backups(t: &mut Torture) {
    for trial in 0..trials() {
        let kind = if trial % 3 == 0 { "full" } else { "incr" };
        t.killed += kill_at_random(t.repo.command(&["backup", "--type", kind]), Duration::from_secs(4)) as usize;
        t.check(&format!("backup trial {trial}"));
    }
    // The next backup removes what the killed ones left, and succeeds.
    let report = t.repo.backup("incr");
    assert!(report["label"].is_string());
}

fn archive_pushes(t: &mut Torture) {
    let current = t.cluster.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    // Read once: production's checkpoints recycle the segment while the trials run.
    let bytes = std::fs::read(t.cluster.data.join("pg_wal").join(&current)).unwrap();
    let dir = PgDir::new(None, "torture-push-");
    for trial in 0..trials() {
        // A segment name far past production's, with this cluster's bytes: absent before the push.
        let name = format!("{}{:08X}", &current[..16], 0xF000_0000u32 + trial as u32);
        let path = dir.path().join(&name);
        std::fs::write(&path, &bytes).unwrap();
        chown_postgres(&path);
        t.killed +=
            kill_at_random(t.repo.command(&["archive-push", path.to_str().unwrap()]), Duration::from_millis(300))
                as usize;
        // Whole or absent: fetching gives the segment or "not archived", never a torn one.
        let fetched = dir.path().join(format!("{name}.fetched"));
        let out = t.repo.run(&["archive-get", &name, fetched.to_str().unwrap(), "--no-prefetch"]);
        match out.status.code() {
            Some(0) => assert_eq!(std::fs::read(&fetched).unwrap(), bytes, "trial {trial}: torn segment"),
            Some(1) => {
                t.repo.ok(&["archive-push", path.to_str().unwrap()]);
            }
            other => panic!("trial {trial}: archive-get exited {other:?}: {}", String::from_utf8_lossy(&out.stderr)),
        }
        let out = t.repo.run(&["scrub", "--archive"]);
        assert!(out.status.success(), "trial {trial}: {}", String::from_utf8_lossy(&out.stdout));
    }
    // Nothing a killed push left stays behind once another push ran.
    archive_now(&t.repo);
    let leftovers = walkdir::WalkDir::new(t.repo.repo_path().join("main/archive"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".pgfork-tmp."))
        .count();
    assert!(leftovers <= 1, "{leftovers} temporaries of killed pushes remain");
}

fn expires(t: &mut Torture) {
    for trial in 0..trials() {
        t.repo.backup("full");
        let oldest = t.labels().first().cloned().unwrap();
        t.killed += kill_at_random(t.repo.command(&["expire", "--set", &oldest]), Duration::from_millis(400)) as usize;
        t.check(&format!("expire trial {trial}"));
    }
}

fn restores(t: &mut Torture) {
    let dir = PgDir::new(None, "torture-delta-");
    let data = dir.path().join("data");
    for trial in 0..trials() {
        let mut args = vec!["restore", "--data", data.to_str().unwrap()];
        if data.exists() {
            args.push("--delta");
        }
        t.killed += kill_at_random(t.repo.command(&args), Duration::from_secs(2)) as usize;
        // Whatever the kill left, a delta restore makes it whole.
        if data.exists() {
            t.repo.ok(&["restore", "--data", data.to_str().unwrap(), "--delta"]);
        } else {
            t.repo.ok(&["restore", "--data", data.to_str().unwrap()]);
        }
        t.boots_with_valid_checksums(&data);
        assert!(t.cluster.data.join("postmaster.pid").exists(), "restore trial {trial}: production stopped");
    }
}

fn pitr_forks(t: &mut Torture) {
    archive_now(&t.repo);
    let dir = PgDir::new(None, "torture-pitr-");
    for trial in 0..trials() {
        let dst = dir.path().join(format!("fork{trial}"));
        let port = free_port();
        let args = |extra: &[&str]| {
            let mut args = vec![
                "pitr".to_string(),
                "--fork".into(),
                "3".into(),
                "-D".into(),
                dst.display().to_string(),
                "-P".into(),
                port.to_string(),
                "--type".into(),
                "immediate".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        let killed = kill_at_random(t.repo.command(&strs(&args(&[]))), Duration::from_secs(3));
        t.killed += killed as usize;
        assert!(t.cluster.data.join("postmaster.pid").exists(), "pitr trial {trial}: production stopped");
        // A retry (over what the kill left, with --force) gives a fork that recovers.
        t.repo.ok(&strs(&args(&["--force", "-y", "--start"])));
        let fork = RunningFork::beside(&t.cluster, &dst, port);
        assert_eq!(fork.psql("postgres", "SELECT count(*) > 0 FROM pgbench_accounts"), "t");
        drop(fork);
        cleanup_fork(&dst);
    }
    t.check("pitr --fork");
}

fn cleanup_fork(dst: &Path) {
    let _ = std::fs::remove_dir_all(dst);
}

/// One tortured operation.
type Step = fn(&mut Torture);

#[test]
fn sigkill_at_random_points_loses_nothing() {
    if !can_run("sigkill_at_random_points_loses_nothing") {
        return;
    }
    let mut t = Torture::new();
    let steps: [(&str, Step); 5] = [
        ("backup", backups),
        ("archive-push", archive_pushes),
        ("expire", expires),
        ("restore", restores),
        ("pitr --fork", pitr_forks),
    ];
    let mut summary = Vec::new();
    for (name, step) in steps {
        let before = t.killed;
        let started = Instant::now();
        step(&mut t);
        summary.push(format!(
            "{name:<13} {} trials, {} killed before finishing, {:.0} s: every check passed",
            trials(),
            t.killed - before,
            started.elapsed().as_secs_f64()
        ));
    }
    for label in t.labels() {
        let (_dir, data) = t.restore(Some(&label));
        t.boots_with_valid_checksums(&data);
    }
    eprintln!("torture summary:\n  {}", summary.join("\n  "));
}
