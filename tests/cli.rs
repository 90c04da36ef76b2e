//! Command-line conventions: options before the subcommand as after it, shell completions and
//! manual pages from the argument definitions, the install script, progress bars on a terminal
//! only (coloured unless NO_COLOR, never with --json), and --log-level.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn pgfork_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgfork"));
    cmd.stdin(Stdio::null()).env_remove("PGFORK_CONFIG").env_remove("PGFORK_STANZA");
    cmd
}

fn stderr_of(args: &[&str]) -> (Option<i32>, String) {
    let out = pgfork_bin().args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn repository_options_reach_the_subcommand_from_either_side() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgfork.toml");
    std::fs::write(
        &config,
        "[repo.main]\npath = \"/nonexistent/repo\"\ncipher = \"none\"\n\n[stanza.one]\ndata = \"/x\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    for args in [
        vec!["--config", config, "--stanza", "nosuch", "info"],
        vec!["info", "--config", config, "--stanza", "nosuch"],
        vec!["--config", config, "info", "--stanza", "nosuch"],
        vec!["--stanza", "nosuch", "backup", "--config", config],
    ] {
        let (code, err) = stderr_of(&args);
        assert_ne!(code, Some(0), "{args:?}");
        assert_ne!(code, Some(2), "{args:?} was not parsed: {err}");
        assert!(err.contains("nosuch"), "{args:?}: the stanza did not reach the command: {err}");
    }
    let (_, err) = stderr_of(&["--config", "/nonexistent/pgfork.toml", "info"]);
    assert!(err.contains("/nonexistent/pgfork.toml"), "{err}");
    // Unknown options are still refused, before or after.
    assert_eq!(stderr_of(&["--no-such-option", "info"]).0, Some(2));
}

#[test]
fn global_options_before_the_subcommand_run_a_backup() {
    if !can_run("global_options_before_the_subcommand_run_a_backup") {
        return;
    }
    let mut cluster = Cluster::init(&PgVersion::get(15), None);
    cluster.start();
    let repo = RepoSetup::new(&cluster, None, "");
    let config = repo.config.to_str().unwrap();
    let run = |args: &[&str]| {
        succeeded(args, Command::new(server_side_pgfork()).args(args).stdin(Stdio::null()).output().unwrap())
    };
    run(&["--config", config, "--stanza", "main", "stanza-create"]);
    run(&["--config", config, "--stanza", "main", "--log-level", "info", "backup", "--type", "full"]);
    let info: serde_json::Value =
        serde_json::from_str(&run(&["--config", config, "info", "--output", "json"])).unwrap();
    assert_eq!(info["sets"].as_array().unwrap().len(), 1, "{info}");
}

#[test]
fn completions_generate_for_each_shell_and_name() {
    for name in ["pgfork", "pb", "pg-fork", "pg-pitr", "pg-backup", "pg-basebackup"] {
        for shell in ["bash", "zsh", "fish"] {
            let out = pgfork_bin().args(["completions", shell, "--name", name]).output().unwrap();
            assert!(out.status.success(), "{shell} {name}: {}", String::from_utf8_lossy(&out.stderr));
            let script = String::from_utf8(out.stdout).unwrap();
            let expected = match shell {
                "bash" => format!("complete -F _{} ", name.replace('-', "__")),
                "zsh" => format!("#compdef {name}"),
                _ => format!("complete -c {name} "),
            };
            assert!(script.contains(&expected), "{shell} completion of {name} lacks {expected:?}");
            if shell == "bash" {
                let file = tempfile::NamedTempFile::new().unwrap();
                std::fs::write(file.path(), &script).unwrap();
                let check = Command::new("bash").arg("-n").arg(file.path()).output().unwrap();
                assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
            }
        }
    }
    let bash = String::from_utf8(pgfork_bin().args(["completions", "bash"]).output().unwrap().stdout).unwrap();
    for word in ["export", "completions", "--config", "--stanza", "--log-level"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let basebackup = pgfork_bin().args(["completions", "bash", "--name", "pg-basebackup"]).output().unwrap();
    assert!(String::from_utf8_lossy(&basebackup.stdout).contains("--remove"));
    assert_eq!(pgfork_bin().args(["completions", "tcsh"]).output().unwrap().status.code(), Some(2));
}

/// `nroff -man` renders `page` into plain text.
fn render_man(page: &Path) -> String {
    let out = Command::new("nroff").args(["-man"]).arg(page).output().expect("nroff (groff-base)");
    assert!(out.status.success(), "nroff {}: {}", page.display(), String::from_utf8_lossy(&out.stderr));
    // Strip overstrike bold and underline.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if chars.peek() == Some(&'\u{8}') {
            chars.next();
            continue;
        }
        plain.push(c);
    }
    plain
}

#[test]
fn man_pages_are_generated_for_commands_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = pgfork_bin().args(["man", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8(out.stdout).unwrap();
    for page in
        ["pgfork.1", "pgfork-export.1", "pgfork-backup.1", "pgfork-restore.1", "pg-basebackup.1", "pg-fork.1", "pb.1"]
    {
        assert!(dir.path().join(page).is_file(), "{page} missing");
        assert!(listed.contains(page), "{page} not listed");
    }
    let main = render_man(&dir.path().join("pgfork.1"));
    assert!(main.contains("--config") && main.contains("export"), "{main}");
    let export = render_man(&dir.path().join("pgfork-export.1"));
    assert!(export.contains("--encrypt") && export.contains("--live"), "{export}");
    assert!(export.contains("--check") && export.contains("--extract"), "{export}");
    let basebackup = render_man(&dir.path().join("pg-basebackup.1"));
    for flag in ["--src", "--dst", "--file", "--remove", "--tag", "--key", "--encryption"] {
        assert!(basebackup.contains(flag), "pg-basebackup.1 lacks {flag}");
    }
    assert_eq!(std::fs::read_to_string(dir.path().join("pb.1")).unwrap(), ".so man1/pgfork.1\n");
}

#[test]
fn install_script_installs_binary_names_completions_and_pages() {
    let prefix = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install");
    let out = Command::new(&script)
        .args(["--prefix", prefix.path().to_str().unwrap(), "--binary", env!("CARGO_BIN_EXE_pgfork")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let bin = prefix.path().join("bin");
    for name in ["pg-fork", "pg-pitr", "pg-backup", "pg-basebackup", "pb"] {
        assert_eq!(std::fs::read_link(bin.join(name)).unwrap(), Path::new("pgfork"), "{name}");
        assert!(prefix.path().join(format!("share/bash-completion/completions/{name}")).is_file());
        assert!(prefix.path().join(format!("share/zsh/site-functions/_{name}")).is_file());
        assert!(prefix.path().join(format!("share/fish/vendor_completions.d/{name}.fish")).is_file());
        assert!(prefix.path().join(format!("share/man/man1/{name}.1")).is_file());
    }
    assert!(prefix.path().join("share/man/man1/pgfork-export.1").is_file());
    // Each name answers with its own flags.
    let help = Command::new(bin.join("pg-basebackup")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--remove <MINUTES>") && help.contains("--encryption"), "{help}");
    let help = Command::new(bin.join("pb")).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("stanza-create"));
}

#[test]
fn log_level_is_checked_and_accepted_on_either_side() {
    for wrong in ["loud", "info,pgfork=loud"] {
        assert_eq!(stderr_of(&["--log-level", wrong, "info"]).0, Some(2), "{wrong} accepted");
    }
    let (code, err) = stderr_of(&["--log-level", "debug", "info", "--config", "/nonexistent/pgfork.toml"]);
    assert_ne!(code, Some(2), "{err}");
    let (code, err) = stderr_of(&["info", "--log-level", "warn,pgfork=debug", "--config", "/nonexistent/pgfork.toml"]);
    assert_ne!(code, Some(2), "{err}");
}

/// Runs `pgfork args` on a terminal (util-linux `script`) and returns what it drew.
fn on_terminal(args: &[&str], env: &[(&str, &str)]) -> String {
    let line = std::iter::once(env!("CARGO_BIN_EXE_pgfork").to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null()).env_remove("NO_COLOR").env("TERM", "xterm");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn progress_bars_only_on_a_terminal() {
    if !can_run("progress_bars_only_on_a_terminal") {
        return;
    }
    let (_cluster, repo) = cluster_with_stanza(1, None);
    repo.backup("full");
    let dir = PgDir::new(None, "bars-");
    let config = repo.config.to_str().unwrap();
    let to = |name: &str| dir.path().join(name).display().to_string();
    let bar_drawn = |screen: &str| screen.contains(" export [") && screen.contains("eta ") && screen.contains("/s");
    let coloured = |screen: &str| screen.contains("\u{1b}[36m") || screen.contains("\u{1b}[34m");

    let screen = on_terminal(&["--config", config, "export", "--to", &to("a.tar.lz4")], &[]);
    assert!(bar_drawn(&screen) && coloured(&screen), "no coloured bar with rate and ETA on a terminal: {screen:?}");
    let screen = on_terminal(&["--config", config, "export", "--to", &to("b.tar.lz4")], &[("NO_COLOR", "1")]);
    assert!(bar_drawn(&screen) && !coloured(&screen), "NO_COLOR ignored: {screen:?}");
    let screen = on_terminal(&["--config", config, "export", "--json", "--to", &to("c.tar.lz4")], &[]);
    assert!(!bar_drawn(&screen) && screen.contains("\"file\""), "a bar beside --json: {screen:?}");
    // In a pipe: nothing but the report.
    let out = pgfork_bin().args(["--config", config, "export", "--to", &to("d.tar.lz4")]).output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!bar_drawn(&err) && !err.contains('\u{1b}'), "a bar in a pipe: {err:?}");
}
