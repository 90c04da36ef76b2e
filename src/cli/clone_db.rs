//! `pgfork clone-db`: arguments and output.

use std::time::Duration;

use anyhow::Context;

use crate::cli::connect::ConnArgs;
use crate::ops::clone_db::{CloneDbOptions, clone_db};

/// Arguments of `clone-db`.
#[derive(Debug, Clone, clap::Args)]
pub struct CloneDbArgs {
    /// The database to copy.
    pub template: String,
    /// The new database.
    pub name: String,
    /// Block new connections to the template, terminate its sessions, clone, and allow connections again.
    #[arg(long)]
    pub terminate: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The server.
    #[command(flatten)]
    pub conn: ConnArgs,
}

impl CloneDbArgs {
    /// Runs the clone.
    pub fn run(self) -> anyhow::Result<()> {
        let opts = CloneDbOptions {
            server: self.conn.target(),
            template: self.template.clone(),
            name: self.name.clone(),
            terminate: self.terminate,
            terminate_wait: Duration::from_secs(10),
        };
        let report = clone_db(&opts).with_context(|| format!("clone database {} into {}", self.template, self.name))?;
        if self.json {
            return super::print_json(&report);
        }
        for note in &report.notes {
            eprintln!("pgfork: {note}");
        }
        for s in &report.terminated {
            println!("terminated pid {} ({} {:?} from {})", s.pid, s.user, s.application, s.client);
        }
        println!(
            "created {} from {} in {:.0} ms ({}){}",
            report.database,
            report.template,
            report.create_ms,
            if report.cloned { "clone: files share extents" } else { "full copy" },
            if report.blocked_ms > 0.0 {
                format!("; template closed to connections for {:.0} ms", report.blocked_ms)
            } else {
                String::new()
            }
        );
        Ok(())
    }
}
