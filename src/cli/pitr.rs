//! `pitr --fork` and `check`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::cli::progress::TerminalProgress;
use crate::cli::repo_args::RepoArgs;
use crate::cli::restore::TargetArgs;
use crate::ops::check::check;
use crate::ops::fork::{ForkOptions, ModeRequest, default_destination, default_port};
use crate::ops::pitr::in_place::{InPlace, in_place};
use crate::ops::pitr::{PitrForkOptions, PitrForkReport, pitr_fork};
use crate::repo::label::SetLabel;
use crate::util::human_bytes;

/// Arguments of `pitr`.
#[derive(Debug, Clone, clap::Args)]
pub struct PitrArgs {
    /// Fork the stanza's running cluster as fork <ID> and recover the fork (production is not touched).
    #[arg(long = "fork", value_name = "ID", required_unless_present = "in_place", conflicts_with = "in_place")]
    pub fork: Option<u32>,
    /// Recover the stanza's own cluster in place. Under Patroni: pause failover, stop Patroni and
    /// PostgreSQL, restore, start PostgreSQL by hand at the target for a check; then --resume.
    #[arg(long)]
    pub in_place: bool,
    /// With --in-place: hand the recovered cluster back to Patroni (promote, start Patroni,
    /// reinitialise the replicas, resume failover).
    #[arg(long, requires = "in_place", conflicts_with = "abort")]
    pub resume: bool,
    /// With --in-place: back out of a recovery that has not restored yet.
    #[arg(long, requires = "in_place")]
    pub abort: bool,
    /// With --in-place: recover this member although it is a replica.
    #[arg(long, requires = "in_place")]
    pub replica: bool,
    /// The fork's data directory [default: /pg/data<ID>].
    #[arg(short = 'D', long = "dst")]
    pub dst: Option<PathBuf>,
    /// The fork's port [default: <ID>5432].
    #[arg(short = 'P', long = "dst-port")]
    pub dst_port: Option<u16>,
    /// The set to start from [default: chosen from the target].
    #[arg(long)]
    pub set: Option<SetLabel>,
    /// Start the fork and wait until it reaches the target.
    #[arg(long)]
    pub start: bool,
    /// Replace an existing destination (never one a running server owns), such as what an
    /// interrupted pitr left.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
    /// Recovery target (required).
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl PitrArgs {
    /// Runs PITR onto a fork.
    pub fn run(self) -> anyhow::Result<()> {
        let resolved = self.repo.resolve()?;
        let Some(id) = self.fork else { return self.run_in_place(&resolved) };
        let recovery =
            self.target.request()?.context("pitr needs a target: --type time|name|lsn|xid|immediate|default")?;
        let stanza = &resolved.stanza;
        let fork = ForkOptions {
            id,
            src: stanza.data.clone(),
            dst: self.dst.clone().unwrap_or_else(|| default_destination(id)),
            src_port: stanza.port,
            dst_port: match self.dst_port {
                Some(port) => port,
                None => default_port(id)?,
            },
            host: stanza.socket.clone(),
            user: stanza.user.clone(),
            mode: ModeRequest::Auto,
            force: self.force,
            start: false,
            bindir: stanza.bindir.clone(),
            register: false,
        };
        if self.force && fork.dst.exists() && !self.yes {
            super::confirm(&format!("remove {} and replace it with a recovered fork?", fork.dst.display()))?;
        }
        let opts = PitrForkOptions { fork, recovery, set: self.set.clone(), start: self.start };
        let report = pitr_fork(&resolved, &opts, &TerminalProgress::default()).context("pitr onto a fork")?;
        if self.json {
            return super::print_json(&report);
        }
        print_pitr_report(&report, id);
        Ok(())
    }

    /// `pitr --in-place`: recover, continue, hand back or back out.
    fn run_in_place(&self, resolved: &crate::config::Resolved) -> anyhow::Result<()> {
        let what = if self.resume {
            InPlace::Resume
        } else if self.abort {
            InPlace::Abort
        } else {
            let request =
                self.target.request()?.context("pitr needs a target: --type time|name|lsn|xid|immediate|default")?;
            if !self.yes {
                super::confirm(&format!(
                    "recover {} in place (its PostgreSQL is stopped and its data rewritten; under Patroni, failover is paused)?",
                    resolved.stanza.data.display()
                ))?;
            }
            InPlace::Recover { request, set: self.set.clone(), replica: self.replica }
        };
        let report = in_place(resolved, &what, &TerminalProgress::default()).context("in-place recovery")?;
        if self.json {
            return super::print_json(&report);
        }
        for step in &report.steps {
            println!("  {:<22} {:>8.1} s  {}", step.name, step.ms / 1000.0, step.did);
        }
        if let Some(reached) = &report.reached {
            println!(
                "  reached                {} at {} ({})",
                reached.lsn,
                reached.time.as_deref().unwrap_or("-"),
                reached.state
            );
        }
        println!("next: {}", report.next);
        Ok(())
    }
}

/// Prints what pitr --fork (or fork --at) did.
pub fn print_pitr_report(report: &PitrForkReport, id: u32) {
    println!(
        "fork {id} of {} recovered from {} in {:.1} s ({} files; {} rewritten, {} shared)",
        report.src.display(),
        report.from,
        report.duration_ms / 1000.0,
        report.files,
        human_bytes(report.bytes_written),
        human_bytes(report.bytes_unchanged)
    );
    println!(
        "  wal        {} .. {} ({} segment(s) to replay at most)",
        report.plan.wal_from, report.plan.wal_to, report.wal_segments_to_replay
    );
    let steps: Vec<String> = report.timings.iter().map(|(s, ms)| format!("{s} {ms:.0} ms")).collect();
    println!("  steps      {}", steps.join(", "));
    let host = report.connect_host.as_deref().map(|h| format!("-h {h} ")).unwrap_or_default();
    match &report.reached {
        Some(reached) => {
            println!("  reached    {} at {} ({})", reached.lsn, reached.time.as_deref().unwrap_or("-"), reached.state);
            println!("  connect    psql {host}-p {}", report.port);
            println!(
                "  then       pg_ctl -D {} promote, or drop it: pg_ctl -D {0} stop && rm -rf {0}",
                report.dst.display()
            );
        }
        None => println!("  start      pg_ctl -D {} start && psql {host}-p {}", report.dst.display(), report.port),
    }
}

/// Arguments of `check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Seconds to wait for the switched segment to reach the repository.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl CheckArgs {
    /// Runs the check; problems make the exit code 1.
    pub fn run(self) -> anyhow::Result<()> {
        let targets = self.repo.each_target()?;
        let report = check(&targets, Duration::from_secs(self.timeout))
            .with_context(|| format!("check of stanza {}", targets.first().map_or("", |t| t.name.as_str())))?;
        if self.json {
            super::print_json(&report)?;
        } else {
            println!(
                "stanza {}: archive_mode {}, archive_command {:?}",
                report.stanza, report.archive_mode, report.archive_command
            );
            match report.archived_ms {
                Some(ms) => println!("  {} reached the repository in {:.0} ms", report.switched_segment, ms),
                None => println!("  {} did not reach the repository", report.switched_segment),
            }
            if let Some(patroni) = &report.patroni {
                println!("  {patroni}");
            }
        }
        anyhow::ensure!(report.problems.is_empty(), "archiving is not working:\n  {}", report.problems.join("\n  "));
        Ok(())
    }
}
