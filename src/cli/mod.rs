//! The command line: argument parsing and printing. Each subcommand lives in its own file and only
//! turns arguments into a call of [`crate::ops`] and prints the report.

mod archive;
mod backup;
mod basebackup;
mod clone_db;
mod completions;
mod connect;
mod export;
mod exporter;
mod fork;
mod info;
mod mount;
mod pitr;
mod progress;
mod repo_args;
mod restore;
mod schedule;
mod scrub;
mod snapshot;
mod stanza;
mod verify;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// pgfork: instant forks and database clones of PostgreSQL on copy-on-write file systems.
#[derive(Debug, Parser)]
#[command(name = "pgfork", version, about, long_about = None)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short = 'v', long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    pub verbose: u8,
    /// Run as a scheduled job: when another run still holds the stanza (or this same job is still
    /// running), exit quietly with status 75 instead of failing.
    #[arg(long, global = true, help_heading = "Global options")]
    pub scheduled: bool,
    /// Log level: error, warn, info, debug or trace, or a filter such as "info,pgfork=debug"
    /// [default: $PGFORK_LOG, else warn, or what -v asks for].
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_log_level, help_heading = "Global options")]
    pub log_level: Option<String>,
    /// Configuration and stanza, accepted before the subcommand as after it
    /// (`pgfork --config F --stanza S backup`).
    #[command(flatten)]
    pub repo: repo_args::RepoArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// pgfork's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Clone a cluster on this machine into a new instance (hot or cold), instantly on XFS/Btrfs/ZFS.
    #[command(visible_alias = "pg-fork")]
    Fork(fork::ForkArgs),
    /// Clone a database inside a cluster with CREATE DATABASE … STRATEGY FILE_COPY, safely.
    CloneDb(clone_db::CloneDbArgs),
    /// Create the stanza in the repository (records the cluster; creates the encryption key).
    StanzaCreate(stanza::StanzaArgs),
    /// Record the cluster's new identity after a major upgrade or a new initdb.
    StanzaUpgrade(stanza::StanzaArgs),
    /// Delete the stanza and all its backups (refused while the cluster runs, unless --force).
    StanzaDelete(stanza::StanzaArgs),
    /// Take a full, diff or incr backup into the repository.
    #[command(visible_alias = "pg-backup")]
    Backup(backup::BackupArgs),
    /// Show the stanza and its backup sets.
    Info(info::InfoArgs),
    /// Remove backup sets by retention, or one set with its dependents.
    Expire(backup::ExpireArgs),
    /// Restore a backup set into a data directory, to its consistent point or to a recovery target.
    Restore(restore::RestoreArgs),
    /// Push a WAL file into the archive (archive_command = 'pgfork archive-push %p').
    ArchivePush(archive::PushArgs),
    /// Fetch a WAL file from the archive (restore_command = 'pgfork archive-get %f "%p"').
    ArchiveGet(archive::GetArgs),
    /// Point-in-time recovery onto a fork of the running cluster (production is not touched).
    Pitr(pitr::PitrArgs),
    /// Read and authenticate every object of the repository (or one set, or the archive); name
    /// what is damaged.
    Scrub(scrub::ScrubArgs),
    /// Take a snapshot point of the stanza's cluster now (a reflink clone inside an online backup,
    /// kept beside the cluster as a starting point for forks at any later time), or delete one.
    Snapshot(snapshot::SnapshotArgs),
    /// Check that WAL archiving into the stanza works.
    Check(pitr::CheckArgs),
    /// Show the repository, or one backup set as a data directory, as a read-only file system.
    Mount(mount::MountArgs),
    /// Unmount a pgfork mount.
    Umount(mount::UmountArgs),
    /// Prove a backup set: boot PostgreSQL on a copy-on-write mount of it, recover to the target,
    /// run checks, tear down.
    Verify(verify::VerifyArgs),
    /// Serve Prometheus metrics of every stanza and repository (pgbackrest_exporter's names, on
    /// port 9854), collected in the background.
    Exporter(exporter::ExporterArgs),
    /// Print or install the [schedule] jobs as cron lines or systemd timers.
    Schedule(schedule::ScheduleArgs),
    /// Write one file (tar, LZ4 or Zstandard, optionally age-encrypted) holding a data directory
    /// that starts on its own, from a backup set or the running cluster; or check one against its
    /// manifest, extract one (checked), or decrypt one.
    Export(export::ExportArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Write manual pages for pgfork, its subcommands and the names it is installed under.
    Man(completions::ManArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    quiet_broken_pipe();
    let program = std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // Installed under another name, the binary takes that tool's arguments directly.
    let mut scheduled = false;
    let command = if program == "pg-fork" {
        init_logging(0, None);
        let cli = fork::PgForkCli::parse();
        hide_bars_for_json(cli.fork.json);
        Command::Fork(cli.fork)
    } else if program == "pg-pitr" {
        init_logging(0, None);
        return exit_code(restore::PgPitrCli::parse().run());
    } else if program == "pg-backup" {
        init_logging(0, None);
        let cli = backup::PgBackupCli::parse();
        hide_bars_for_json(cli.json);
        Command::Backup(cli.into_backup())
    } else if program == "pg-basebackup" {
        init_logging(0, None);
        let cli = basebackup::PgBaseBackupCli::parse();
        hide_bars_for_json(cli.json);
        return exit_code(cli.run());
    } else {
        let matches = Cli::command().get_matches();
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        init_logging(cli.verbose, cli.log_level.as_deref());
        hide_bars_for_json(matches.subcommand().is_some_and(|(_, sub)| prints_json(sub)));
        scheduled = cli.scheduled;
        cli.command
    };
    let run = move || match command {
        Command::Fork(args) => args.run(),
        Command::CloneDb(args) => args.run(),
        Command::StanzaCreate(args) => args.run(stanza::StanzaAction::Create),
        Command::StanzaUpgrade(args) => args.run(stanza::StanzaAction::Upgrade),
        Command::StanzaDelete(args) => args.run(stanza::StanzaAction::Delete),
        Command::Backup(args) => args.run(),
        Command::Info(args) => args.run(),
        Command::Expire(args) => args.run(),
        Command::Restore(args) => args.run(),
        Command::ArchivePush(args) => args.run(),
        Command::ArchiveGet(args) => args.run(),
        Command::Pitr(args) => args.run(),
        Command::Scrub(args) => args.run(),
        Command::Snapshot(args) => args.run(),
        Command::Check(args) => args.run(),
        Command::Mount(args) => args.run(),
        Command::Umount(args) => args.run(),
        Command::Verify(args) => args.run(),
        Command::Exporter(args) => args.run(),
        Command::Schedule(args) => args.run(),
        Command::Export(args) => args.run(),
        Command::Completions(args) => args.run(),
        Command::Man(args) => args.run(),
    };
    exit_code(if scheduled { schedule::run_scheduled(run) } else { run() })
}

/// The exit status of an archive-get that could not deliver a file intact: above 125, which
/// PostgreSQL treats like a signal and aborts recovery on (a status of 1 would mean "not archived"
/// and end recovery early).
pub const EXIT_ABORT_RECOVERY: i32 = 126;

/// An error with the exit status it must end the program with.
#[derive(Debug)]
pub struct Exit {
    /// The exit status.
    pub code: i32,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Exit {}

fn exit_code(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(err) => {
            // A scheduled run that another one made unnecessary says nothing (cron mails output).
            if let Some(exit) = err.downcast_ref::<Exit>()
                && exit.code == crate::ops::schedule::EXIT_SKIPPED
            {
                return exit.code;
            }
            // Each cause once: an error that shows its source already must not repeat it.
            let mut text = String::new();
            for cause in err.chain().map(ToString::to_string) {
                if !text.contains(&cause) {
                    if !text.is_empty() {
                        text.push_str(": ");
                    }
                    text.push_str(&cause);
                }
            }
            eprintln!("pgfork: {text}");
            if let Some(exit) = err.downcast_ref::<Exit>() {
                return exit.code;
            }
            err.downcast_ref::<crate::Error>().map(crate::Error::exit_code).unwrap_or(1)
        }
    }
}

/// Accepts a level (error, warn, info, debug, trace, off) or a filter of directives such as
/// "info,pgfork=debug"; a lone word that is no level is refused (a filter would read it as a
/// module name and log nothing).
fn parse_log_level(text: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    if LEVELS.contains(&text.to_ascii_lowercase().as_str()) {
        return Ok(text.to_string());
    }
    if !text.contains(['=', ',']) {
        return Err(format!("expected one of {}, or a filter such as info,pgfork=debug", LEVELS.join(", ")));
    }
    tracing_subscriber::EnvFilter::try_new(text).map(|_| text.to_string()).map_err(|e| e.to_string())
}

/// Whether a subcommand's arguments ask for a report for programs (`--json`, `--output json`).
fn prints_json(sub: &clap::ArgMatches) -> bool {
    let json = sub.try_get_one::<bool>("json").ok().flatten().copied().unwrap_or(false);
    let output = sub.try_get_one::<repo_args::Output>("output").ok().flatten().copied();
    json || output == Some(repo_args::Output::Json)
}

/// Progress bars stay off the terminal of a command printing JSON.
fn hide_bars_for_json(json: bool) {
    if json {
        progress::hide_bars();
    }
}

/// Logs to standard error at `--log-level`, else `$PGFORK_LOG`, else as `-v` asks (warn by default).
fn init_logging(verbose: u8, level: Option<&str>) {
    let default = match verbose {
        // fuser warns about every request it does not implement; those answers are deliberate.
        0 => "warn,fuser=error",
        1 => "info",
        _ => "debug",
    };
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::new(level),
        None => tracing_subscriber::EnvFilter::try_from_env("PGFORK_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
    };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Asks `question` on the terminal; refuses (nothing done) without a terminal or a yes.
fn confirm(question: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(crate::Error::refused(
            format!("{question} (no terminal to ask)"),
            Some("pass -y to confirm".into()),
        )
        .into());
    }
    eprint!("pgfork: {question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(crate::Error::refused("cancelled", None).into())
    }
}

/// Prints `value` as pretty JSON on standard output.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A reader that went away (`pgfork info | head`) ends the program without a panic message:
/// printing to a closed pipe panics in the standard library, and the unwinding still runs every
/// clean-up on the way out.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or_default();
        if !(message.starts_with("failed printing to stdout") && message.contains("Broken pipe")) {
            default(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its definitions only when asked: duplicate names between the global options
    /// and a subcommand's, conflicting short flags, bad defaults.
    #[test]
    fn every_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
        super::fork::PgForkCli::command().debug_assert();
        super::backup::PgBackupCli::command().debug_assert();
        super::restore::PgPitrCli::command().debug_assert();
        super::basebackup::PgBaseBackupCli::command().debug_assert();
    }
}
