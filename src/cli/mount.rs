//! `mount` and `umount`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::cli::repo_args::RepoArgs;
use crate::cli::restore::TargetArgs;
use crate::config::Config;
use crate::mount::fs::Owner;
use crate::mount::{DEFAULT_CACHE, DataDirRequest, MountReport, Scope, prepare, serve};
use crate::repo::label::SetLabel;
use crate::util::signals::termination_channel;

/// Arguments of `mount`.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// Where to mount (an empty directory).
    pub mountpoint: PathBuf,
    /// Show this set as a data directory at the mount point (instead of the whole repository).
    #[arg(long)]
    pub set: Option<SetLabel>,
    /// Recovery target: show a data directory prepared to recover to it, with the WAL it needs.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Show the files as owned by this user [default: the repository's owner, or postgres].
    #[arg(long)]
    pub owner: Option<String>,
    /// Memory for decoded pages, in MiB.
    #[arg(long, default_value_t = DEFAULT_CACHE / (1024 * 1024))]
    pub cache_mib: usize,
    /// Print the mount report as JSON once mounted.
    #[arg(long)]
    pub json: bool,
    /// Configuration and stanza (all configured stanzas when browsing without --stanza).
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl MountArgs {
    /// Mounts and serves until unmounted or interrupted.
    pub fn run(self) -> anyhow::Result<()> {
        let started = Instant::now();
        if !nix::unistd::Uid::effective().is_root() {
            return Err(crate::Error::refused(
                format!(
                    "mount at {} needs root: it mounts a FUSE file system other users can read",
                    self.mountpoint.display()
                ),
                Some("run it as root (sudo pgfork mount …)".into()),
            )
            .into());
        }
        // Before any thread exists: every thread must inherit the blocked signals.
        let signals = termination_channel()?;
        let recovery = self.target.request()?;
        let config = Config::load(self.repo.config.as_deref())?;
        let scope = if self.set.is_some() || recovery.is_some() {
            Scope::DataDir(Box::new(DataDirRequest {
                resolved: config.resolve(self.repo.stanza.as_deref())?.with_repo(self.repo.repo.as_deref())?,
                set: self.set.clone(),
                recovery,
                extra_settings: Vec::new(),
                command: "mount".into(),
            }))
        } else {
            let names: Vec<String> = match &self.repo.stanza {
                Some(name) => vec![name.clone()],
                None => config.stanza.keys().cloned().collect(),
            };
            anyhow::ensure!(!names.is_empty(), "the configuration has no stanza");
            let repo = self.repo.repo.as_deref();
            Scope::Repository(
                names.iter().map(|n| config.resolve(Some(n))?.with_repo(repo)).collect::<crate::Result<Vec<_>>>()?,
            )
        };
        let owner = self.owner.as_deref().map(lookup_owner).transpose()?;
        let prepared = prepare(&scope, owner, self.cache_mib * 1024 * 1024)
            .with_context(|| format!("mount at {}", self.mountpoint.display()))?;
        let json = self.json;
        let stats = serve(prepared, &self.mountpoint, &signals, started, |report| print_mounted(report, json))
            .with_context(|| format!("mount at {}", self.mountpoint.display()))?;
        if json {
            super::print_json(&stats)?;
        } else {
            println!(
                "unmounted {} after {:.0} s: {} fetched from the repository",
                stats.mountpoint.display(),
                stats.seconds,
                crate::util::human_bytes(stats.bytes_fetched)
            );
        }
        Ok(())
    }
}

fn print_mounted(report: &MountReport, json: bool) {
    if json {
        let _ = super::print_json(report);
    } else {
        let what = match &report.set {
            Some(set) => format!("backup {set} as a data directory"),
            None => "the repository".to_string(),
        };
        println!(
            "mounted {what} at {} in {:.0} ms (pid {}); stop with Ctrl-C or: pgfork umount {}",
            report.mountpoint.display(),
            report.mount_ms,
            report.pid,
            report.mountpoint.display()
        );
        if let Some(plan) = &report.plan {
            println!(
                "  recovery to the target: WAL {} .. {} in pg_wal, recovery.signal present",
                plan.wal_from, plan.wal_to
            );
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// The uid and gid of user `name`.
pub fn lookup_owner(name: &str) -> anyhow::Result<Owner> {
    let user = nix::unistd::User::from_name(name)?.with_context(|| format!("no user named {name}"))?;
    Ok(Owner { uid: user.uid.as_raw(), gid: user.gid.as_raw() })
}

/// Arguments of `umount`.
#[derive(Debug, Clone, clap::Args)]
pub struct UmountArgs {
    /// The mount point.
    pub mountpoint: PathBuf,
}

impl UmountArgs {
    /// Unmounts a pgfork mount (a stale one too); the serving process then exits.
    pub fn run(self) -> anyhow::Result<()> {
        use crate::mount::session::{mount_type, unmount_path};
        match mount_type(&self.mountpoint) {
            Some(kind) if kind.is_pgfork() => {}
            Some(kind) => anyhow::bail!("{} is a {} mount, not a pgfork one", self.mountpoint.display(), kind.fs_type),
            None => anyhow::bail!("{} is not mounted", self.mountpoint.display()),
        }
        if unmount_path(&self.mountpoint)? {
            println!(
                "{} was busy: detached; it goes away when the last open file is closed",
                self.mountpoint.display()
            );
        } else {
            println!("unmounted {}", self.mountpoint.display());
        }
        Ok(())
    }
}
