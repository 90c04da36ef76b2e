//! `pgfork schedule` and `--scheduled`: the cron lines and systemd units it prints and installs,
//! the calendar events checked against systemd's own reading of them (`systemd-analyze
//! calendar`), and a scheduled run that finds the stanza locked, or the same job still running,
//! exiting quietly with status 75.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use common::*;
use pgfork::ops::schedule::calendar::on_calendar;
use pgfork::ops::schedule::cron::CronExpr;

const SCHEDULE: &str = "\n[schedule]\nfull = \"00 01 * * 1\"\nincr = \"00 01 * * 2-7\"\nverify = \"30 3 * * *\"\nscrub = \"0 5 1 * sun\"\n";

/// A configuration with stanza `main` and `extra` (whose cluster does not matter here).
fn config_with(dir: &Path, schedule: &str) -> std::path::PathBuf {
    let path = dir.join("pgfork.toml");
    let text = format!(
        "[repo.main]\npath = \"{0}/repo\"\ncipher = \"none\"\n\n[stanza.main]\ndata = \"{0}/data\"\n{schedule}",
        dir.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn pgfork_in(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgfork")).args(args).stdin(Stdio::null()).output().expect("run pgfork")
}

#[test]
fn cron_lines_are_the_ones_pigsty_puts_in_node_crontab() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), &format!("{SCHEDULE}binary = \"/usr/bin/pgfork\"\n"));
    let config_text = config.canonicalize().unwrap().display().to_string();
    let printed = succeeded(&[], pgfork_in(&["schedule", "--config", config.to_str().unwrap()]));
    let suffix = format!("--stanza main --config {config_text} --scheduled");
    for line in [
        format!("00 01 * * 1 postgres /usr/bin/pgfork backup --type full {suffix}"),
        format!("00 01 * * 2-7 postgres /usr/bin/pgfork backup --type incr {suffix}"),
        format!("30 3 * * * root /usr/bin/pgfork verify {suffix}"),
        format!("0 5 1 * sun postgres /usr/bin/pgfork scrub {suffix}"),
    ] {
        assert!(printed.lines().any(|l| l == line), "missing {line:?} in:\n{printed}");
    }

    // Installed: the same text, atomically, and nothing else in the directory.
    let target = tempfile::tempdir().unwrap();
    let dest = target.path().to_str().unwrap();
    succeeded(&[], pgfork_in(&["schedule", "--config", config.to_str().unwrap(), "--install", "--directory", dest]));
    assert_eq!(std::fs::read_to_string(target.path().join("pgfork")).unwrap(), printed);
    let names: Vec<_> = std::fs::read_dir(target.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec!["pgfork"], "temporaries left behind");

    // A mistake is refused with the key named, and nothing is written.
    let bad = config_with(dir.path(), "\n[schedule]\nfull = \"00 25 * * 1\"\n");
    let out = pgfork_in(&["schedule", "--config", bad.to_str().unwrap(), "--install", "--directory", dest]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("[schedule] full = \"00 25 * * 1\"") && stderr.contains("hour field"), "{stderr}");
    assert_eq!(std::fs::read_to_string(target.path().join("pgfork")).unwrap(), printed, "a refusal changed the file");
}

#[test]
fn systemd_units_are_installed_and_stale_ones_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), SCHEDULE);
    let target = tempfile::tempdir().unwrap();
    let dest = target.path().to_str().unwrap();
    // Someone else's unit with a similar name stays.
    std::fs::write(target.path().join("pgfork-main-custom.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
    let install = |config: &Path| {
        succeeded(
            &[],
            pgfork_in(&[
                "schedule",
                "--format",
                "systemd",
                "--config",
                config.to_str().unwrap(),
                "--install",
                "--directory",
                dest,
            ]),
        )
    };
    install(&config);
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    };
    let expected: BTreeSet<String> = ["full", "incr", "verify", "scrub"]
        .iter()
        .flat_map(|j| [format!("pgfork-main-{j}.service"), format!("pgfork-main-{j}.timer")])
        .chain(["pgfork-main-custom.service".to_string()])
        .collect();
    assert_eq!(names(target.path()), expected);
    // systemd itself reads the units without complaint.
    let ours: Vec<String> = expected.iter().filter(|n| !n.contains("custom")).map(|n| format!("./{n}")).collect();
    match Command::new("systemd-analyze").arg("verify").args(&ours).current_dir(target.path()).output() {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("\n!!! systemd-analyze missing: the units were not verified by systemd !!!\n"),
    }
    let service = std::fs::read_to_string(target.path().join("pgfork-main-verify.service")).unwrap();
    assert!(
        service.contains("\nUser=root\n")
            && service.contains("verify --stanza main")
            && service.contains("--scheduled")
    );
    assert!(service.contains("\nSuccessExitStatus=75\n"), "{service}");
    let timer = std::fs::read_to_string(target.path().join("pgfork-main-scrub.timer")).unwrap();
    // Day of month and day of week both restricted: cron runs on either, so two events.
    assert!(timer.contains("OnCalendar=*-*-01 05:00:00\nOnCalendar=Sun *-*-* 05:00:00\n"), "{timer}");

    // Fewer jobs: the units of the others go; the foreign unit stays.
    let fewer = config_with(dir.path(), "\n[schedule]\nfull = \"00 01 * * 1\"\n");
    install(&fewer);
    let left: BTreeSet<String> = ["pgfork-main-full.service", "pgfork-main-full.timer", "pgfork-main-custom.service"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names(target.path()), left);
}

/// Next elapses of `events` after `base` as systemd computes them (UTC), merged.
fn systemd_elapses(events: &[String], base: &str, count: usize) -> Option<Vec<NaiveDateTime>> {
    let out = Command::new("systemd-analyze")
        .args(["calendar", &format!("--iterations={count}"), &format!("--base-time={base} UTC")])
        .args(events)
        .env("TZ", "UTC")
        .output()
        .ok()?;
    assert!(out.status.success(), "systemd-analyze rejected {events:?}: {}", String::from_utf8_lossy(&out.stderr));
    let mut times: BTreeSet<NaiveDateTime> = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((label, when)) = line.trim().split_once(": ") else { continue };
        if label == "Next elapse" || label.starts_with("Iter. #") {
            // "Mon 2025-01-06 01:00:00 UTC"
            let text = when.split_whitespace().skip(1).take(2).collect::<Vec<_>>().join(" ");
            times.insert(NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S").unwrap());
        }
    }
    Some(times.into_iter().take(count).collect())
}

#[test]
fn calendar_events_fire_when_cron_would() {
    let base = "2025-01-30 23:59:00";
    let start = NaiveDateTime::parse_from_str(base, "%Y-%m-%d %H:%M:%S").unwrap();
    for text in [
        "00 01 * * 1",
        "00 01 * * 2,3,4,5,6,7",
        "*/15 * * * *",
        "5 */6 * * *",
        "0 0 1 1 *",
        "30 2 1,15 * *",
        "0 12 * jan-mar mon-fri",
        "0 1 1 * 1",
        "0 1 */2 * 1",
        "0 1 13 * 5",
        "0 0 29 2 *",
        "45 23 31 * *",
        "0 9-17/2 * * 1-5",
        "@weekly",
        "@monthly",
    ] {
        let expr = CronExpr::parse(text).unwrap();
        let events = on_calendar(&expr);
        let Some(systemd) = systemd_elapses(&events, base, 12) else {
            assert!(std::env::var("CI").is_err(), "CI=true but systemd-analyze is missing");
            eprintln!("\n!!! SKIPPED calendar_events_fire_when_cron_would: no systemd-analyze !!!\n");
            return;
        };
        let mut cron = Vec::new();
        let mut at = start;
        while cron.len() < 12 {
            at = expr.next_after(at).unwrap();
            cron.push(at);
        }
        assert_eq!(systemd, cron, "{text} as {events:?}");
    }
}

#[test]
fn a_scheduled_run_that_finds_another_exits_quietly() {
    if !can_run("a_scheduled_run_that_finds_another_exits_quietly") {
        return;
    }
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    cluster.start();
    let repo = RepoSetup::new(&cluster, None, "");
    repo.ok(&["stanza-create"]);
    repo.backup("full");

    // The stanza is locked by another process: a plain run is refused loudly, a scheduled one
    // says nothing and exits 75.
    let lock = std::fs::File::open(repo.repo_path().join("main/lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
    let plain = repo.run(&["backup", "--type", "incr"]);
    assert_eq!(plain.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&plain.stderr).contains("is locked by"));
    for args in [&["backup", "--type", "incr", "--scheduled"][..], &["expire", "--scheduled"]] {
        let out = repo.run(args);
        assert_eq!(out.status.code(), Some(75), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{args:?} was not quiet: {out:?}");
    }
    drop(held);
    let after = repo.run(&["backup", "--type", "incr", "--scheduled", "--json"]);
    assert!(after.status.success(), "{}", String::from_utf8_lossy(&after.stderr));

    // The same job still running: the second start does nothing (the exporter runs until killed).
    let args = ["exporter", "--listen", "127.0.0.1:0", "--interval", "60s", "--scheduled", "--config"];
    let mut first = Command::new(server_side_pgfork())
        .args(args)
        .arg(&repo.config)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line on stderr says it is serving, so it holds the job's lock.
    let mut first_stderr = std::io::BufReader::new(first.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut first_stderr, &mut line).unwrap();
    assert!(line.contains("serving"), "{line}");
    let started = Instant::now();
    let second = Command::new(server_side_pgfork()).args(args).arg(&repo.config).stdin(Stdio::null()).output().unwrap();
    let _ = first.kill();
    let _ = first.wait();
    drop(first_stderr);
    assert_eq!(second.status.code(), Some(75), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(second.stderr.is_empty() && started.elapsed() < Duration::from_secs(30));
}
