//! `restore` (to a backup's consistent point or, with `--type`, to a recovery target) and the
//! `pg-pitr` command name with the flags of Pigsty's script.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::progress::TerminalProgress;
use crate::cli::repo_args::RepoArgs;
use crate::ops::restore::{RestoreOptions, RestoreReport, restore};
use crate::repo::label::SetLabel;
use crate::stanza::recovery::{RecoveryRequest, Target, TargetAction, TargetTimeline, parse_time};
use crate::util::human_bytes;

/// Kinds of recovery target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetType {
    /// The end of the archived WAL.
    Default,
    /// The backup's consistent point.
    Immediate,
    /// A time (--target "2025-01-01 12:00:00+08").
    Time,
    /// A restore point name.
    Name,
    /// An LSN (--target 0/7C82CB8).
    Lsn,
    /// A transaction id.
    Xid,
}

/// Recovery target arguments, shared by `restore` and `pitr`.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Recover through the WAL archive to this kind of target (without it: the set's consistent point).
    #[arg(long = "type", value_enum)]
    pub kind: Option<TargetType>,
    /// The target value for time, name, lsn and xid.
    #[arg(long)]
    pub target: Option<String>,
    /// Stop just before the target.
    #[arg(long)]
    pub target_exclusive: bool,
    /// What the server does at the target.
    #[arg(long, value_enum, default_value = "pause")]
    pub target_action: TargetAction,
    /// latest, current, or a timeline id.
    #[arg(long, default_value = "latest")]
    pub target_timeline: TargetTimeline,
}

impl TargetArgs {
    /// The recovery request, or `None` for a restore to the consistent point.
    pub fn request(&self) -> anyhow::Result<Option<RecoveryRequest>> {
        let Some(kind) = self.kind else {
            anyhow::ensure!(self.target.is_none(), "--target needs --type");
            return Ok(None);
        };
        let value =
            || self.target.clone().ok_or_else(|| anyhow::anyhow!("--type {kind:?} needs --target").context("restore"));
        let target = match kind {
            TargetType::Default => Target::Default,
            TargetType::Immediate => Target::Immediate,
            TargetType::Time => parse_time(&value()?)?,
            TargetType::Name => Target::Name(value()?),
            TargetType::Lsn => Target::Lsn(value()?.parse()?),
            TargetType::Xid => Target::Xid(value()?.parse().context("read --target as a transaction id")?),
        };
        Ok(Some(RecoveryRequest {
            target,
            exclusive: self.target_exclusive,
            action: self.target_action,
            timeline: self.target_timeline,
        }))
    }
}

/// Arguments of `restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The set to restore [default: the newest; for time and LSN targets the newest that ends before the target].
    #[arg(long)]
    pub set: Option<SetLabel>,
    /// The data directory to restore into (empty, or existing with --delta).
    #[arg(long = "data", short = 'D')]
    pub data: PathBuf,
    /// Rewrite only the files and pages that differ in an existing directory.
    #[arg(long)]
    pub delta: bool,
    /// Check everything and print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Put the configuration the cluster kept outside its data directory (Debian's
    /// /etc/postgresql/<version>/<cluster>) into DIR, pointing at the data directory, instead of
    /// into the data directory. DIR must not hold a postgresql.conf.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Recovery target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl RestoreArgs {
    /// Runs the restore.
    pub fn run(self) -> anyhow::Result<()> {
        let resolved = self.repo.resolve()?;
        let opts = RestoreOptions {
            set: self.set.clone(),
            data: std::path::absolute(&self.data)?,
            delta: self.delta,
            recovery: self.target.request()?,
            dry_run: self.dry_run,
            tablespace_locations: Default::default(),
            live_source: None,
            in_place: false,
            config_dir: self.config_dir.as_deref().map(std::path::absolute).transpose()?,
        };
        let report = restore(&resolved, &opts, &TerminalProgress::default())
            .with_context(|| format!("restore of stanza {}", resolved.name))?;
        print_restore(&report, self.json)
    }
}

/// Prints a restore report.
pub fn print_restore(report: &RestoreReport, json: bool) -> anyhow::Result<()> {
    if json {
        return super::print_json(report);
    }
    if let Some(plan) = &report.plan {
        println!("recovery plan for {}", report.data.display());
        println!("  starting from  {}", plan.from);
        println!("  wal            {} .. {} (checked: archived and continuous)", plan.wal_from, plan.wal_to);
        for (tli, first, last) in &plan.timelines {
            println!("  timeline {tli:<5} {first} .. {last}");
        }
        for (name, value) in &plan.settings {
            println!("  setting        {name} = '{value}'");
        }
    }
    if report.dry_run {
        println!("dry run: nothing written. Then: start the server, check the data, promote if paused,");
        println!("         turn archive_mode on again, and take a full backup.");
        return Ok(());
    }
    println!(
        "restored {} into {} in {:.1} s: {} files, {} written{}",
        report.label,
        report.data.display(),
        report.duration_ms / 1000.0,
        report.files,
        human_bytes(report.bytes_written),
        if report.bytes_unchanged > 0 || report.files_removed > 0 {
            format!(", {} unchanged, {} removed", human_bytes(report.bytes_unchanged), report.files_removed)
        } else {
            String::new()
        }
    );
    for note in &report.notes {
        println!("  note: {note}");
    }
    println!("  start it with: pg_ctl -D {} start", report.data.display());
    Ok(())
}

/// The `pg-pitr` command name: Pigsty's flags.
#[derive(Debug, clap::Parser)]
#[command(
    name = "pg-pitr",
    version,
    about = "Point-in-time recovery of a stopped instance (pgfork)",
    disable_help_flag = true
)]
pub struct PgPitrCli {
    /// Restore to the end of the WAL archive (latest state).
    #[arg(short = 'd', long = "default")]
    pub default: bool,
    /// Restore to the backup's consistent point.
    #[arg(short = 'i', long = "immediate")]
    pub immediate: bool,
    /// Restore to a time.
    #[arg(short = 't', long = "time")]
    pub time: Option<String>,
    /// Restore to a named restore point.
    #[arg(short = 'n', long = "name")]
    pub name: Option<String>,
    /// Restore to an LSN.
    #[arg(short = 'l', long = "lsn")]
    pub lsn: Option<String>,
    /// Restore to a transaction id.
    #[arg(short = 'x', long = "xid")]
    pub xid: Option<String>,
    /// Restore this backup set (to its consistent point unless another target is given).
    #[arg(short = 'b', long = "backup")]
    pub backup: Option<SetLabel>,
    /// Data directory to recover (it must be stopped).
    #[arg(short = 'D', long = "data", default_value = "/pg/data")]
    pub data: PathBuf,
    /// Stanza [default: the only one configured].
    #[arg(short = 's', long = "stanza")]
    pub stanza: Option<String>,
    /// Stop just before the target.
    #[arg(short = 'X', long = "exclusive")]
    pub exclusive: bool,
    /// Promote at the target (default: pause).
    #[arg(short = 'P', long = "promote")]
    pub promote: bool,
    /// Check and print the plan only.
    #[arg(short = 'c', long = "check")]
    pub check: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
    /// Configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print help.
    #[arg(short = 'h', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl PgPitrCli {
    /// Runs pg-pitr: a delta restore of the data directory to the target.
    pub fn run(self) -> anyhow::Result<()> {
        let (kind, target) = if let Some(t) = &self.time {
            (Some(TargetType::Time), Some(t.clone()))
        } else if let Some(n) = &self.name {
            (Some(TargetType::Name), Some(n.clone()))
        } else if let Some(l) = &self.lsn {
            (Some(TargetType::Lsn), Some(l.clone()))
        } else if let Some(x) = &self.xid {
            (Some(TargetType::Xid), Some(x.clone()))
        } else if self.immediate || (self.backup.is_some() && !self.default) {
            (Some(TargetType::Immediate), None)
        } else {
            (Some(TargetType::Default), None)
        };
        let target_args = TargetArgs {
            kind,
            target,
            target_exclusive: self.exclusive,
            target_action: if self.promote { TargetAction::Promote } else { TargetAction::Pause },
            target_timeline: TargetTimeline::Latest,
        };
        let repo = RepoArgs { config: self.config.clone(), stanza: self.stanza.clone(), repo: None };
        let resolved = repo.resolve()?;
        let data = std::path::absolute(&self.data)?;
        let mut opts = RestoreOptions {
            set: self.backup.clone(),
            data: data.clone(),
            delta: true,
            recovery: target_args.request()?,
            dry_run: true,
            tablespace_locations: Default::default(),
            live_source: None,
            in_place: false,
            config_dir: None,
        };
        let plan = restore(&resolved, &opts, &TerminalProgress::default()).context("pg-pitr")?;
        print_restore(&plan, false)?;
        if self.check {
            return Ok(());
        }
        if !self.yes {
            super::confirm(&format!(
                "overwrite {} with backup {} recovered to this target?",
                data.display(),
                plan.label
            ))?;
        }
        opts.dry_run = false;
        let report = restore(&resolved, &opts, &TerminalProgress::default()).context("pg-pitr")?;
        print_restore(&report, false)
    }
}
