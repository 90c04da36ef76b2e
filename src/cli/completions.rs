//! `completions` and `man`: shell completions and manual pages generated from the same argument
//! definitions the program parses, for `pgfork` and each name it is installed under.

use std::path::PathBuf;

use clap::CommandFactory;

use crate::util::fsx;

/// The names pgfork is installed under; each takes its own arguments (`pb` is `pgfork`).
pub const NAMES: &[&str] = &["pgfork", "pb", "pg-fork", "pg-pitr", "pg-backup", "pg-basebackup"];

/// The argument definitions of the command installed as `name`.
pub fn command_named(name: &str) -> clap::Command {
    let cmd = match name {
        "pg-fork" => super::fork::PgForkCli::command(),
        "pg-pitr" => super::restore::PgPitrCli::command(),
        "pg-backup" => super::backup::PgBackupCli::command(),
        "pg-basebackup" => super::basebackup::PgBaseBackupCli::command(),
        _ => super::Cli::command(),
    };
    cmd.name(name.to_string()).bin_name(name.to_string())
}

/// Arguments of `completions`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
    /// The command name to complete.
    #[arg(long, default_value = "pgfork", value_parser = clap::builder::PossibleValuesParser::new(NAMES))]
    pub name: String,
}

impl CompletionsArgs {
    /// Prints the completion script on standard output.
    pub fn run(self) -> anyhow::Result<()> {
        let mut cmd = command_named(&self.name);
        clap_complete::generate(self.shell, &mut cmd, self.name.clone(), &mut std::io::stdout());
        Ok(())
    }
}

/// Arguments of `man`.
#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages into (section 1: pgfork.1, pgfork-backup.1, …, pg-fork.1, …).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

impl ManArgs {
    /// Writes a page for pgfork, each of its subcommands and each other name; prints their paths.
    pub fn run(self) -> anyhow::Result<()> {
        for path in write_pages(&self.dir)? {
            println!("{}", path.display());
        }
        Ok(())
    }
}

/// Writes the manual pages into `dir` (each atomically); returns their paths.
pub fn write_pages(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io("create directory", dir, e))?;
    let mut written = Vec::new();
    let mut write = |name: String, page: Vec<u8>| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        fsx::write_atomic(&path, &page, 0o644)?;
        written.push(path);
        Ok(())
    };
    for name in NAMES {
        if *name == "pb" {
            // The same program as pgfork: point at its page.
            write(name.to_string(), b".so man1/pgfork.1\n".to_vec())?;
            continue;
        }
        let mut cmd = command_named(name).disable_help_subcommand(true);
        cmd.build();
        if *name == "pgfork" {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let page_name = format!("pgfork-{}", sub.get_name());
                write(page_name.clone(), render(sub.clone().name(page_name))?)?;
            }
        }
        write(name.to_string(), render(cmd)?)?;
    }
    Ok(written)
}

fn render(cmd: clap::Command) -> anyhow::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).source(format!("pgfork {}", env!("CARGO_PKG_VERSION"))).render(&mut page)?;
    Ok(page)
}
