//! `stanza-create`, `stanza-upgrade`, `stanza-delete`.

use anyhow::Context;

use crate::cli::repo_args::RepoArgs;
use crate::ops::stanza::{self, StanzaReport};

/// Arguments of the stanza commands.
#[derive(Debug, Clone, clap::Args)]
pub struct StanzaArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// stanza-delete only: delete even while the cluster runs.
    #[arg(long)]
    pub force: bool,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Which stanza command.
#[derive(Debug, Clone, Copy)]
pub enum StanzaAction {
    /// stanza-create.
    Create,
    /// stanza-upgrade.
    Upgrade,
    /// stanza-delete.
    Delete,
}

impl StanzaArgs {
    /// Runs the command.
    pub fn run(self, action: StanzaAction) -> anyhow::Result<()> {
        let resolved = self.repo.resolve()?;
        let report: StanzaReport = match action {
            StanzaAction::Create => stanza::create(&resolved),
            StanzaAction::Upgrade => stanza::upgrade(&resolved),
            StanzaAction::Delete => stanza::delete(&resolved, self.force),
        }
        .with_context(|| format!("stanza {}", resolved.name))?;
        if self.json {
            return super::print_json(&report);
        }
        println!(
            "stanza {}: {} (system identifier {}, PostgreSQL {}, cipher {})",
            report.stanza, report.action, report.system_identifier, report.pg_version, report.cipher
        );
        if report.exclusive_create == Some(false) {
            println!(
                "  note: the object store ignores conditional create (If-None-Match); archive pushes stay \
                 exclusive through pgfork's own protocol (a few more requests each)"
            );
        }
        Ok(())
    }
}
