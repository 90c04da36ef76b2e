//! `scrub`: read and authenticate every object of the repository, report what is damaged.

use anyhow::Context;

use crate::cli::progress::TerminalProgress;
use crate::cli::repo_args::{Output, RepoArgs};
use crate::ops::scrub::{ScrubOptions, ScrubReport, scrub};
use crate::progress::Silent;
use crate::repo::label::SetLabel;
use crate::util::human_bytes;

/// Arguments of `scrub`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScrubArgs {
    /// Only this set, with every run it reads from earlier sets.
    #[arg(long, conflicts_with = "archive")]
    pub set: Option<SetLabel>,
    /// Only the WAL archive.
    #[arg(long)]
    pub archive: bool,
    /// text or json.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl ScrubArgs {
    /// Scrubs; fails (exit 1) unless everything is intact.
    pub fn run(self) -> anyhow::Result<()> {
        let resolved = self.repo.resolve()?;
        let opts = ScrubOptions { set: self.set.clone(), archive_only: self.archive };
        let report = match self.output {
            Output::Json => scrub(&resolved, &opts, &Silent),
            Output::Text => scrub(&resolved, &opts, &TerminalProgress::default()),
        }
        .with_context(|| format!("scrub of stanza {}", resolved.name))?;
        match self.output {
            Output::Json => super::print_json(&report)?,
            Output::Text => print!("{}", render(&report)),
        }
        anyhow::ensure!(report.intact, "stanza {} has damaged objects", report.stanza);
        Ok(())
    }
}

/// The text form.
pub fn render(r: &ScrubReport) -> String {
    let verdict = if r.intact { "intact" } else { "DAMAGED" };
    let mut out = format!(
        "scrub of stanza {}: {verdict} ({} read in {:.1} s, {:.0} MB/s)\n",
        r.stanza,
        human_bytes(r.bytes),
        r.duration_ms / 1000.0,
        r.mb_per_s
    );
    for set in &r.sets {
        let state = if set.intact { "intact" } else { "DAMAGED" };
        out.push_str(&format!(
            "  backup {}  {state}: {} objects, {}\n",
            set.label,
            set.objects,
            human_bytes(set.bytes)
        ));
        for damage in &set.damaged {
            out.push_str(&format!("      {}: {}\n", damage.what, damage.reason));
        }
    }
    if let Some(archive) = &r.archive {
        let state = if archive.intact { "intact" } else { "DAMAGED" };
        out.push_str(&format!("  archive  {state}: {} files, {}\n", archive.files, human_bytes(archive.bytes)));
        for damage in &archive.damaged {
            out.push_str(&format!("      {}: {}\n", damage.what, damage.reason));
        }
    }
    out
}
