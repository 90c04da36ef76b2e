//! `pgfork fork` (also installed as `pg-fork`): arguments, confirmation, output.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::progress::TerminalProgress;
use crate::cli::repo_args::RepoArgs;
use crate::ops::fork::{
    ForkMode, ForkOptions, ForkReport, ModeRequest, PreparedFork, default_destination, default_port,
};
use crate::ops::pitr::{PitrForkOptions, pitr_fork};
use crate::pg::lsn::Lsn;
use crate::stanza::recovery::{RecoveryRequest, Target, TargetAction, TargetTimeline, parse_time};
use crate::util::human_bytes;

/// Arguments of `fork`; the flags are those of Pigsty's pg-fork.
#[derive(Debug, Clone, clap::Args)]
pub struct ForkArgs {
    /// Fork number: names the default destination /pg/data<ID> and port <ID>5432 (1-6; pass -P for others).
    pub id: u32,
    /// Source data directory.
    #[arg(short = 'd', long = "data", env = "PG_DATA", default_value = "/pg/data")]
    pub data: PathBuf,
    /// Destination data directory [default: /pg/data<ID>].
    #[arg(short = 'D', long = "dst")]
    pub dst: Option<PathBuf>,
    /// Source server port.
    #[arg(short = 'p', long = "port", env = "PG_PORT", default_value_t = 5432)]
    pub port: u16,
    /// The fork's port [default: <ID>5432].
    #[arg(short = 'P', long = "dst-port")]
    pub dst_port: Option<u16>,
    /// Cold copy: the source must be stopped (refused while it runs).
    #[arg(short = 's', long = "cold", visible_alias = "skip")]
    pub cold: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
    /// Replace an existing destination (never one a running server owns).
    #[arg(long)]
    pub force: bool,
    /// Start the fork and wait until it accepts connections.
    #[arg(long)]
    pub start: bool,
    /// Socket directory (or host) of the source server [default: from postmaster.pid].
    #[arg(long = "host")]
    pub host: Option<String>,
    /// Database user for the backup session [default: the data directory's owner].
    #[arg(short = 'U', long = "user")]
    pub user: Option<String>,
    /// Directory holding postgres and pg_ctl [default: found from the source].
    #[arg(long)]
    pub bindir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Fork the stanza's cluster as it was at this time ("2025-07-15 01:36:57+00") or LSN
    /// (0/7C82CB8): from the newest snapshot point before it, else a backup set, with the WAL
    /// replayed to it (as pitr --fork; the source is the stanza's cluster).
    #[arg(long, value_name = "TIME|LSN")]
    pub at: Option<String>,
    /// Of a cluster in Debian's layout: make the fork a Debian cluster of its own
    /// (/etc/postgresql/<version>/<source>-fork<ID>, listed by pg_lsclusters, run by pg_ctlcluster).
    #[arg(long, conflicts_with = "at")]
    pub register: bool,
    /// Configuration and stanza (with --at).
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl ForkArgs {
    /// `fork ID --at TARGET`: PITR onto a fork of the stanza's cluster, paused at the target.
    fn run_at(&self, at: &str, dst_port: u16) -> anyhow::Result<()> {
        let resolved = self.repo.resolve()?;
        let target = match at.parse::<Lsn>() {
            Ok(lsn) => Target::Lsn(lsn),
            Err(_) => parse_time(at)?,
        };
        let stanza = &resolved.stanza;
        let fork = ForkOptions {
            id: self.id,
            src: stanza.data.clone(),
            dst: self.dst.clone().unwrap_or_else(|| default_destination(self.id)),
            src_port: stanza.port,
            dst_port,
            host: self.host.clone().or_else(|| stanza.socket.clone()),
            user: self.user.clone().or_else(|| stanza.user.clone()),
            mode: ModeRequest::Auto,
            force: self.force,
            start: false,
            bindir: self.bindir.clone().or_else(|| stanza.bindir.clone()),
            register: false,
        };
        if self.force && fork.dst.exists() && !self.yes {
            super::confirm(&format!("remove {} and replace it with a recovered fork?", fork.dst.display()))?;
        }
        let recovery =
            RecoveryRequest { target, exclusive: false, action: TargetAction::Pause, timeline: TargetTimeline::Latest };
        let opts = PitrForkOptions { fork, recovery, set: None, start: self.start };
        let report = pitr_fork(&resolved, &opts, &TerminalProgress::default()).context("fork at a point in time")?;
        if self.json {
            return super::print_json(&report);
        }
        super::pitr::print_pitr_report(&report, self.id);
        Ok(())
    }
}

/// The command line of the `pg-fork` name.
#[derive(Debug, clap::Parser)]
#[command(name = "pg-fork", version, about = "Fork a PostgreSQL instance on this machine (pgfork)")]
pub struct PgForkCli {
    /// pg-fork's arguments.
    #[command(flatten)]
    pub fork: ForkArgs,
}

impl ForkArgs {
    /// Runs the fork.
    pub fn run(self) -> anyhow::Result<()> {
        let dst_port = match self.dst_port {
            Some(port) => port,
            None => default_port(self.id)?,
        };
        if let Some(at) = &self.at {
            return self.run_at(at, dst_port);
        }
        let opts = ForkOptions {
            id: self.id,
            src: self.data.clone(),
            dst: self.dst.clone().unwrap_or_else(|| default_destination(self.id)),
            src_port: self.port,
            dst_port,
            host: self.host.clone(),
            user: self.user.clone(),
            mode: if self.cold { ModeRequest::Cold } else { ModeRequest::Auto },
            force: self.force,
            start: self.start,
            bindir: self.bindir.clone(),
            register: self.register,
        };
        let prepared = PreparedFork::prepare(opts).context("prepare fork")?;
        let plan = prepared.plan();
        if !plan.replaces.is_empty() && !self.yes {
            let list: Vec<String> = plan.replaces.iter().map(|p| p.display().to_string()).collect();
            super::confirm(&format!(
                "remove {} and replace it with a fork of {}?",
                list.join(" and "),
                plan.src.display()
            ))?;
        }
        let report = prepared.run(&TerminalProgress::default()).context("fork")?;
        if self.json {
            return super::print_json(&report);
        }
        print_report(&report);
        Ok(())
    }
}

fn print_report(r: &ForkReport) {
    let p = &r.plan;
    let mode = match p.mode {
        ForkMode::Hot => "hot",
        ForkMode::Cold => "cold",
    };
    println!("forked {} -> {} ({mode}, {} on {}, as {})", p.src.display(), p.dst.display(), p.method, p.dst_fs, p.user);
    if let (Some(start), Some(stop)) = (&r.start_lsn, &r.stop_lsn) {
        println!("  backup   {start} .. {stop}, {} WAL segment(s), backup_label written", r.wal_segments);
    } else {
        println!("  wal      {} segment(s) from the last checkpoint", r.wal_segments);
    }
    println!(
        "  files    {} ({} cloned, {} copied), {}",
        r.files.files,
        r.files.cloned_files,
        human_bytes(r.files.copied_bytes),
        human_bytes(r.files.logical_bytes)
    );
    for (oid, path) in &r.tablespaces {
        println!("  tblspc   {oid} -> {}", path.display());
    }
    println!("  settings port {}, cluster_name {}, archive_mode off", p.dst_port, r.cluster_name);
    if let Some(cluster) = &r.registered {
        println!("  debian   registered as cluster {cluster} (pg_lsclusters; pg_dropcluster --stop to remove it)");
    }
    let t = &r.timings;
    println!(
        "  time     {:.0} ms: backup start {:.0} (checkpoint), copy {:.0}, backup stop {:.0}, wal {:.0}, finish {:.0}{}",
        t.total_ms,
        t.backup_start_ms,
        t.copy_ms,
        t.backup_stop_ms,
        t.wal_ms,
        t.finish_ms,
        if r.started { format!(", start {:.0}", t.start_ms) } else { String::new() }
    );
    if r.crash_recovery {
        println!("  note     the fork will run crash recovery when it starts");
    }
    let host = r.connect_host.as_deref().map(|h| format!("-h {h} ")).unwrap_or_default();
    if r.started {
        println!("  running  psql {host}-p {}", p.dst_port);
    } else {
        println!("  start    pg_ctl -D {} start && psql {host}-p {}", p.dst.display(), p.dst_port);
    }
}
