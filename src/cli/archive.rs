//! `archive-push` and `archive-get`: archive_command and restore_command.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::repo_args::RepoArgs;
use crate::cli::{EXIT_ABORT_RECOVERY, Exit};
use crate::config::secrets::{self, Secrets};
use crate::ops::archive::{Fetched, archive_get, archive_push, prefetch};
use crate::ops::archive_async::{Mode, push_queue, queue};

/// Arguments of `archive-push`.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// The WAL file (%p).
    #[arg(required_unless_present = "push_queue")]
    pub path: Option<PathBuf>,
    /// Push the stanza's asynchronous archive queue in the foreground (after any pusher that
    /// runs), and return once it is empty.
    #[arg(long, conflicts_with = "path")]
    pub push_queue: bool,
    /// Internal: run as the background pusher (nothing to do when another runs).
    #[arg(long, hide = true, requires = "push_queue")]
    pub background: bool,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl PushArgs {
    /// Pushes the file; exit 0 only once it is durable in every repository, or, with
    /// `archive_async`, in the stanza's queue. `--repo` pushes synchronously to that repository.
    pub fn run(self) -> anyhow::Result<()> {
        if self.push_queue {
            let mode = if self.background { Mode::Background } else { Mode::Foreground };
            push_queue(&self.repo.resolve()?, mode).context("push the asynchronous archive queue")?;
            return Ok(());
        }
        let Some(path) = self.path else { anyhow::bail!("archive-push needs the WAL file (%p)") };
        let resolved = self.repo.resolve()?;
        if resolved.stanza.archive_async && self.repo.repo.is_none() {
            let report = queue(&resolved, &path).with_context(|| format!("archive-push {}", path.display()))?;
            if let Some(failure) = report.pusher_error {
                eprintln!("pgfork: warning: {} is queued, but {failure}", report.name);
            }
            return Ok(());
        }
        let targets = self.repo.each_target()?;
        let report = archive_push(&targets, &path).with_context(|| format!("archive-push {}", path.display()))?;
        if report.already_archived {
            eprintln!("pgfork: {} was already archived with the same content", report.name);
        }
        Ok(())
    }
}

/// Arguments of `archive-get`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// The file PostgreSQL asks for (%f).
    #[arg(required_unless_present = "prefetch_after")]
    pub name: Option<String>,
    /// Where to put it (%p).
    #[arg(required_unless_present = "prefetch_after")]
    pub dest: Option<PathBuf>,
    /// Do not fetch the following segments in the background.
    #[arg(long)]
    pub no_prefetch: bool,
    /// Internal: run as the prefetcher for the segments after this one.
    #[arg(long, hide = true, requires = "spool")]
    pub prefetch_after: Option<String>,
    /// Internal: the prefetcher's spool directory.
    #[arg(long, hide = true)]
    pub spool: Option<PathBuf>,
    /// Internal: read the passphrase and S3 keys from this file (mode 0600, the caller's own)
    /// where they would be read from the environment; pgfork writes it for a server it starts.
    #[arg(long, hide = true, value_name = "FILE")]
    pub secrets: Option<PathBuf>,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl GetArgs {
    /// Fetches the file. A file the archive does not have is exit code 1, which PostgreSQL reads
    /// as "not archived"; any other failure (a damaged or unreadable file, a wrong passphrase, an
    /// unreachable repository) is [`EXIT_ABORT_RECOVERY`], which makes PostgreSQL abort recovery
    /// rather than end it early and promote without the rest of the WAL.
    pub fn run(self) -> anyhow::Result<()> {
        let abort = |error: anyhow::Error| Exit { code: EXIT_ABORT_RECOVERY, error };
        if let Some(file) = &self.secrets {
            take_secrets(file).map_err(|e| abort(e.into()))?;
        }
        if let (Some(after), Some(spool)) = (&self.prefetch_after, &self.spool) {
            return Ok(prefetch(&self.repo.resolve()?, after, spool)?);
        }
        let targets = self.repo.each_target().map_err(abort)?;
        let (Some(name), Some(dest)) = (self.name, self.dest) else {
            anyhow::bail!("archive-get needs the file name (%f) and the destination (%p)");
        };
        let fetched = archive_get(&targets, &name, &dest, !self.no_prefetch)
            .with_context(|| format!("archive-get {name}"))
            .map_err(abort)?;
        anyhow::ensure!(fetched == Fetched::Found, "{name} is not in the archive");
        Ok(())
    }
}

/// Makes the secrets in `file` what this process finds where it would look in its environment.
/// A file that is gone — removed when the pgfork operation that started this server ended — leaves
/// the configuration's files and the environment, with a warning in the server's log.
fn take_secrets(file: &std::path::Path) -> crate::error::Result<()> {
    match Secrets::read(file)? {
        Some(secrets) => secrets::hand(file, secrets),
        None => tracing::warn!(
            "{} is gone (pgfork removes it when the operation that started this server ends): \
             the passphrase and S3 keys come from the configuration's files or the environment",
            file.display()
        ),
    }
    Ok(())
}
