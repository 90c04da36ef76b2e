//! `verify`: boot a backup set through a mount and report whether it is proven.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::repo_args::{Output, RepoArgs};
use crate::cli::restore::TargetArgs;
use crate::ops::verify::{VerifyOptions, VerifyReport, verify};
use crate::repo::label::SetLabel;
use crate::util::human_bytes;
use crate::util::signals::termination_channel;

/// Arguments of `verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The set [default: the newest; for time and LSN targets the newest that ends before the target].
    #[arg(long)]
    pub set: Option<SetLabel>,
    /// Recovery target [default: the set's consistent point]; recovery always pauses there.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Run pg_amcheck (heap and B-tree, every index entry checked against the heap) on every database.
    #[arg(long)]
    pub amcheck: bool,
    /// A SQL file to run (psql, ON_ERROR_STOP) once recovery paused; repeatable; each must succeed.
    #[arg(long = "sql", value_name = "FILE")]
    pub sql: Vec<PathBuf>,
    /// Keep the server running after the checks, until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub keep: bool,
    /// Work directory for the mount, the overlay and the server [default: /var/tmp/pgfork-verify-STANZA-PID].
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// PostgreSQL binaries [default: found by the set's version].
    #[arg(long)]
    pub bindir: Option<PathBuf>,
    /// Boot on a kernel overlay above a read-only mount instead of the copy-on-write mount (the
    /// overlay copies every file the server opens for writing whole: slower, and as much disk as
    /// a restore when amcheck reads everything).
    #[arg(long)]
    pub overlay: bool,
    /// text or json.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl VerifyArgs {
    /// Verifies; fails (exit 1) when the set is not proven.
    pub fn run(self) -> anyhow::Result<()> {
        // Before any thread exists: every thread must inherit the blocked signals.
        let signals = termination_channel()?;
        let resolved = self.repo.resolve()?;
        let opts = VerifyOptions {
            set: self.set.clone(),
            recovery: self.target.request()?,
            amcheck: self.amcheck,
            sql: self.sql.clone(),
            keep: self.keep,
            work: self.work.as_ref().map(std::path::absolute).transpose()?,
            bindir: self.bindir.clone(),
            overlay: self.overlay,
        };
        let output = self.output;
        let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let say = |step: &str| {
            if interactive {
                eprintln!("pgfork: verify: {step}");
            }
        };
        let report = verify(&resolved, &opts, &signals, &say, |report| print_kept(report, output))
            .with_context(|| format!("verify of stanza {}", resolved.name))?;
        match output {
            Output::Json => super::print_json(&report)?,
            Output::Text => print!("{}", render(&report)),
        }
        if report.proven {
            Ok(())
        } else {
            anyhow::bail!("backup {} is NOT proven: {}", report.set, report.failure.as_deref().unwrap_or("unknown"))
        }
    }
}

fn print_kept(report: &VerifyReport, output: Output) {
    if output == Output::Text {
        print!("{}", render(report));
    }
    if let Some(kept) = &report.kept {
        eprintln!(
            "pgfork: server kept running on {} (psql -h {} -p {}); Ctrl-C or kill {} tears it down",
            kept.data.display(),
            kept.socket_dir.display(),
            kept.port,
            kept.pid
        );
    }
}

/// The text form.
pub fn render(r: &VerifyReport) -> String {
    let verdict = if r.proven { "PROVEN" } else { "NOT PROVEN" };
    let mut out = format!("backup {} of stanza {}: {verdict}\n", r.set, r.stanza);
    out.push_str(&format!("  target         {}\n", r.target));
    if let Some(reached) = &r.reached {
        out.push_str(&format!(
            "  reached        lsn {}{}\n",
            reached.lsn,
            reached.time.as_ref().map(|t| format!(", last transaction {t}")).unwrap_or_default()
        ));
    }
    for check in &r.checks {
        let state = if check.passed { "passed" } else { "FAILED" };
        out.push_str(&format!("  check          {} {state} in {:.1} s\n", check.name, check.ms / 1000.0));
        if !check.passed {
            for line in check.detail.lines() {
                out.push_str(&format!("      {line}\n"));
            }
        }
    }
    for failure in &r.read_failures {
        out.push_str(&format!("  read failed    {}: {}\n", failure.path, failure.reason));
    }
    if let Some(failure) = &r.failure {
        out.push_str(&format!("  failure        {}\n", failure.replace('\n', "\n      ")));
    }
    out.push_str(&format!("  local disk     {} written by the server\n", human_bytes(r.local_disk_bytes)));
    out.push_str(&format!(
        "  repository     {} fetched of the set's {}\n",
        human_bytes(r.repository_bytes_fetched),
        human_bytes(r.repository_set_bytes)
    ));
    let steps: Vec<String> = r.steps.iter().map(|s| format!("{} {:.2} s", s.name, s.ms / 1000.0)).collect();
    out.push_str(&format!("  steps          {}\n", steps.join(", ")));
    out.push_str(&format!("  total          {:.2} s\n", r.duration_ms / 1000.0));
    out
}
