//! `schedule`: prints or installs the `[schedule]` jobs, and `--scheduled`, the flag those jobs run
//! with: a run that finds another still running exits quietly with status 75.

use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::Flock;

use super::Exit;
use crate::config::Config;
use crate::ops::schedule::{EXIT_SKIPPED, Format, Plan, check_calendars, install, plan, render_cron, render_units};

/// How to express the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum FormatArg {
    /// Lines for /etc/cron.d or Pigsty's node_crontab (with the user column).
    #[default]
    Cron,
    /// systemd service and timer units.
    Systemd,
}

/// Arguments of `schedule`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    /// cron or systemd.
    #[arg(long, value_enum, default_value_t)]
    pub format: FormatArg,
    /// Write /etc/cron.d/pgfork, or the units into /etc/systemd/system and enable their timers
    /// (units of jobs no longer scheduled are disabled and removed).
    #[arg(long)]
    pub install: bool,
    /// With --install: write into this directory instead, and leave systemd alone.
    #[arg(long, requires = "install")]
    pub directory: Option<PathBuf>,
    /// Configuration file [default: $PGFORK_CONFIG or /etc/pgfork/pgfork.toml].
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ScheduleArgs {
    /// Prints or installs the schedule.
    pub fn run(self) -> anyhow::Result<()> {
        let config = Config::load(self.config.as_deref())?;
        let binary = std::env::current_exe().context("find this pgfork's path")?;
        let binary = std::fs::canonicalize(&binary).unwrap_or(binary);
        let plan = plan(&config, &binary)?;
        let format = match self.format {
            FormatArg::Cron => Format::Cron,
            FormatArg::Systemd => Format::Systemd,
        };
        if !self.install {
            print!("{}", render(&plan, format)?);
            return Ok(());
        }
        let report = install(&plan, format, self.directory.as_deref())?;
        for path in &report.written {
            println!("wrote {}", path.display());
        }
        for path in &report.removed {
            println!("removed {}", path.display());
        }
        for note in &report.notes {
            eprintln!("pgfork: note: {note}");
        }
        Ok(())
    }
}

/// The schedule as text: the cron file, or each unit under a comment naming its file.
fn render(plan: &Plan, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Cron => render_cron(plan),
        Format::Systemd => {
            check_calendars(plan)?;
            let dir = format.default_dir();
            render_units(plan).iter().map(|u| format!("# {}\n{}\n", dir.join(&u.name).display(), u.text)).collect()
        }
    })
}

/// Runs a command as a scheduled job: when the same job is still running, or the command is
/// refused because another process holds the stanza's lock, it ends with [`EXIT_SKIPPED`] and
/// prints nothing (`-v` logs why).
pub fn run_scheduled(run: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let _same_job = match same_job_lock() {
        Ok(Some(held)) => Some(held),
        Ok(None) => return Err(skipped(anyhow::anyhow!("the same job is still running"))),
        Err(e) => {
            tracing::warn!("running without the scheduled-job lock: {e:#}");
            None
        }
    };
    match run() {
        Err(e) if is_busy(&e) => Err(skipped(e)),
        other => other,
    }
}

fn skipped(error: anyhow::Error) -> anyhow::Error {
    tracing::info!("scheduled run skipped: {error:#}");
    Exit { code: EXIT_SKIPPED, error }.into()
}

/// Whether `err` is a refusal because another process holds a lock.
fn is_busy(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| matches!(cause.downcast_ref::<crate::Error>(), Some(crate::Error::Busy { .. })))
}

/// Takes the lock of this job (this user, these arguments) in /run/lock; `None` when another run
/// holds it. The kernel releases it when the process ends, however it ends.
fn same_job_lock() -> anyhow::Result<Option<Flock<std::fs::File>>> {
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let key = xxhash_rust::xxh3::xxh3_64(args.join("\0").as_bytes());
    let dir = if Path::new("/run/lock").is_dir() { PathBuf::from("/run/lock") } else { std::env::temp_dir() };
    let path = dir.join(format!("pgfork-{}-{key:016x}.lock", nix::unistd::Uid::effective()));
    Ok(crate::util::fsx::lock_exclusive(&path, 0o600, false)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lock_refusals_are_skipped() {
        let busy = anyhow::Error::from(crate::Error::busy("stanza main is locked by backup", None)).context("backup");
        assert!(is_busy(&busy));
        let refused = anyhow::Error::from(crate::Error::refused("no such stanza", None)).context("backup");
        assert!(!is_busy(&refused));
        let out = run_scheduled(|| Err(busy));
        assert_eq!(out.unwrap_err().downcast_ref::<Exit>().map(|e| e.code), Some(EXIT_SKIPPED));
        assert!(run_scheduled(|| Err(refused)).unwrap_err().downcast_ref::<Exit>().is_none());
    }
}
