//! `snapshot`: take a snapshot point of the stanza's cluster now, or delete one.

use anyhow::Context;

use crate::cli::progress::TerminalProgress;
use crate::cli::repo_args::RepoArgs;
use crate::ops::snapshot::{delete, take};

/// Arguments of `snapshot`.
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotArgs {
    /// Delete this snapshot point instead of taking one.
    #[arg(long, value_name = "ID")]
    pub delete: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl SnapshotArgs {
    /// Takes or deletes a snapshot point.
    pub fn run(self) -> anyhow::Result<()> {
        let resolved = self.repo.resolve()?;
        if let Some(id) = &self.delete {
            let removed = delete(&resolved, id).with_context(|| format!("delete snapshot point {id}"))?;
            if self.json {
                return super::print_json(&removed);
            }
            println!("deleted snapshot point {id}");
            return Ok(());
        }
        let report = take(&resolved, &TerminalProgress::default())
            .with_context(|| format!("snapshot of stanza {}", resolved.name))?;
        if self.json {
            return super::print_json(&report);
        }
        let p = &report.point;
        println!(
            "snapshot point {} of stanza {} taken in {:.2} s: {}",
            p.id,
            report.stanza,
            report.duration_ms / 1000.0,
            report.dir.display()
        );
        println!("  lsn start/stop  {} / {} (timeline {})", p.start_lsn, p.stop_lsn, p.timeline);
        println!("  files           {} cloned, {} WAL segment(s)", report.files, p.wal.len());
        let steps: Vec<String> = report.timings.iter().map(|(s, ms)| format!("{s} {ms:.0} ms")).collect();
        println!("  steps           {}", steps.join(", "));
        for id in &report.expired {
            println!("  retention       removed snapshot point {id}");
        }
        for used in &report.kept_in_use {
            println!("  retention       kept snapshot point {used}");
        }
        Ok(())
    }
}
