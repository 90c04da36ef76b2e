//! `backup` (also `pg-backup [full|diff|incr]`) and `expire`.

use anyhow::Context;

use crate::cli::progress::TerminalProgress;
use crate::cli::repo_args::RepoArgs;
use crate::ops::backup::{BackupOptions, backup};
use crate::ops::expire::{ExpireReport, expire};
use crate::repo::label::{BackupType, SetLabel};
use crate::util::human_bytes;

/// Arguments of `backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// full, diff or incr [default: incr; a full when there is none to base it on].
    #[arg(long = "type", value_parser = parse_type)]
    pub kind: Option<BackupType>,
    /// Wait for a spread checkpoint instead of asking for an immediate one.
    #[arg(long)]
    pub spread_checkpoint: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

fn parse_type(text: &str) -> Result<BackupType, String> {
    text.parse().map_err(|e: crate::Error| e.to_string())
}

impl BackupArgs {
    /// Runs the backup.
    pub fn run(self) -> anyhow::Result<()> {
        let resolved = self.repo.resolve()?;
        let opts = BackupOptions { kind: self.kind, fast_checkpoint: !self.spread_checkpoint };
        let report = backup(&resolved, &opts, &TerminalProgress::default())
            .with_context(|| format!("backup of stanza {}", resolved.name))?;
        if self.json {
            return super::print_json(&report);
        }
        for note in &report.notes {
            eprintln!("pgfork: {note}");
        }
        let s = &report.stats;
        println!(
            "{} backup {} of stanza {} done in {:.1} s",
            report.kind,
            report.label,
            report.stanza,
            report.duration_ms / 1000.0
        );
        if let Some(prior) = &report.prior {
            println!("  based on       {prior}");
        }
        println!(
            "  wal start/stop {} / {} ({} segment(s) stored with the set)",
            report.start_lsn, report.stop_lsn, report.wal_segments
        );
        println!(
            "  database size  {} in {} files, {} scanned",
            human_bytes(s.database_size),
            s.files,
            if report.snapshot { "reflink snapshot" } else { "live files" }
        );
        println!("  pages changed  {} of {}", s.pages_changed, s.pages_total);
        println!(
            "  backup size    {} stored, {} in the repository",
            human_bytes(s.backup_size),
            human_bytes(s.repo_size)
        );
        if report.bad_pages > 0 {
            println!("  bad checksums  {} page(s): see pgfork info --set {}", report.bad_pages, report.label);
        }
        if let Some(id) = &report.snapshot_point {
            println!("  snapshot point {id} (the scanned snapshot, kept for forks from this moment)");
        }
        print_expired(&report.expired);
        Ok(())
    }
}

/// The `pg-backup` command name: `pg-backup [full|diff|incr]`.
#[derive(Debug, clap::Parser)]
#[command(name = "pg-backup", version, about = "Take a backup of the configured stanza (pgfork)")]
pub struct PgBackupCli {
    /// full, diff or incr [default: incr].
    #[arg(value_parser = parse_type)]
    pub kind: Option<BackupType>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl PgBackupCli {
    /// The equivalent `backup` arguments.
    pub fn into_backup(self) -> BackupArgs {
        BackupArgs { kind: self.kind, spread_checkpoint: false, json: self.json, repo: self.repo }
    }
}

/// Arguments of `expire`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExpireArgs {
    /// Remove this set (and the sets that depend on it) instead of applying retention.
    #[arg(long)]
    pub set: Option<SetLabel>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl ExpireArgs {
    /// Runs expire.
    pub fn run(self) -> anyhow::Result<()> {
        let resolved = self.repo.resolve()?;
        let report = expire(&resolved, self.set.as_ref(), self.dry_run)
            .with_context(|| format!("expire in stanza {}", resolved.name))?;
        if self.json {
            return super::print_json(&report);
        }
        print_expired(&report);
        if report.removed.is_empty() {
            println!("nothing to expire; {} set(s) kept", report.kept.len());
        }
        Ok(())
    }
}

fn print_expired(report: &ExpireReport) {
    let verb = if report.dry_run { "would remove" } else { "removed" };
    for label in &report.removed {
        println!("  expire         {verb} {label}");
    }
    if !report.removed.is_empty() {
        println!("  expire         {verb} {} set(s), {}", report.removed.len(), human_bytes(report.freed_bytes));
    }
    for damaged in &report.unreadable {
        println!("  expire         kept {damaged} (its manifest cannot be read: check it with pgfork info)");
    }
    for used in &report.in_use {
        println!("  expire         kept {used}");
    }
    for id in &report.snapshot_points_removed {
        println!("  expire         removed snapshot point {id}");
    }
    for used in &report.snapshot_points_in_use {
        println!("  expire         kept snapshot point {used}");
    }
    if report.wal_removed > 0 {
        println!("  expire         {verb} {} archived WAL file(s) no kept set needs", report.wal_removed);
    }
}
