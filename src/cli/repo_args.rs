//! Arguments shared by the repository commands: the configuration file and the stanza.

use std::path::PathBuf;

use crate::config::{Config, Resolved};

/// Which configuration and stanza.
#[derive(Debug, Clone, clap::Args)]
pub struct RepoArgs {
    /// Configuration file [default: $PGFORK_CONFIG or /etc/pgfork/pgfork.toml].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Stanza [default: the only one configured].
    #[arg(long, env = "PGFORK_STANZA", global = true)]
    pub stanza: Option<String>,
    /// Repository, when the stanza has several [default: the first].
    #[arg(long, global = true)]
    pub repo: Option<String>,
}

impl RepoArgs {
    /// Loads the configuration and resolves the stanza.
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        Ok(Config::load(self.config.as_deref())?.resolve(self.stanza.as_deref())?.with_repo(self.repo.as_deref())?)
    }

    /// The repositories an operation on every repository works on: the one `--repo` names, else
    /// each of the stanza's, in order.
    pub fn each_target(&self) -> anyhow::Result<Vec<Resolved>> {
        let resolved = self.resolve()?;
        Ok(if self.repo.is_some() { vec![resolved] } else { resolved.each_repo() })
    }
}

/// Output format of reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For scripts.
    Json,
}
