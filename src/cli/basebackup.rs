//! The `pg-basebackup` command name: Pigsty's single-file base backup with its flags — an online
//! export of the running cluster into `<dir>/backup_<tag>_<YYYYMMDD>.tar.lz4`, then removal of
//! the backup files in that directory older than `-r` minutes.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::cli::export::{print_export, run_export};
use crate::ops::export::crypt::passphrase;
use crate::ops::export::retention::remove_older_than;
use crate::ops::export::{Compression, ExportOptions, LiveSource, Source, Target};

/// The command line of the `pg-basebackup` name.
#[derive(Debug, clap::Parser)]
#[command(
    name = "pg-basebackup",
    version,
    about = "Make a base backup of a PostgreSQL instance into one file (pgfork)",
    after_help = "Unpack with: mkdir -m 700 DIR && lz4 -d < FILE | tar -x -C DIR (age -d FILE | lz4 -d | … when \
                  encrypted); the directory starts on its own."
)]
pub struct PgBaseBackupCli {
    /// Backup source as a connection URI; the server must run on this machine, whose data
    /// directory is read directly.
    #[arg(short = 's', long = "src", visible_alias = "url", default_value = "postgres:///", value_name = "URI")]
    pub src: String,
    /// Directory to store the backup file in.
    #[arg(short = 'd', long = "dst", visible_alias = "dir", default_value = "/pg/backup", value_name = "DIR")]
    pub dst: PathBuf,
    /// Backup file name, instead of backup_<tag>_<YYYYMMDD>.tar.lz4 (.tar.zst for Zstandard; .age
    /// after either when encrypted).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// After a successful backup, remove backup_* files in the directory older than this many
    /// minutes (0 keeps them all).
    #[arg(short = 'r', long = "remove", default_value_t = 1200, value_name = "MINUTES")]
    pub remove: u64,
    /// Tag of the default file name [default: the server's cluster_name, else the host name].
    #[arg(short = 't', long = "tag")]
    pub tag: Option<String>,
    /// A file holding the encryption passphrase (mode 0600), never the passphrase itself (the
    /// command line is visible to every user); implies -e [default: $PGFORK_EXPORT_PASSPHRASE].
    #[arg(short = 'k', long = "key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Encrypt the backup with a passphrase (age format: `age -d FILE` decrypts it).
    #[arg(short = 'e', long = "encryption", visible_alias = "encrypt")]
    pub encryption: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl PgBaseBackupCli {
    /// Takes the backup, then applies the retention.
    pub fn run(self) -> anyhow::Result<()> {
        let encrypt = self.encryption || self.key.is_some();
        let passphrase = if encrypt { Some(passphrase(self.key.as_deref())?) } else { None };
        let dst = std::path::absolute(&self.dst)?;
        let target = match &self.file {
            Some(file) => Target::File(dst.join(file)),
            None => Target::Named { dir: dst.clone(), tag: self.tag.clone(), compression: Compression::Lz4 },
        };
        let source = Source::Live(LiveSource::from_conninfo(&self.src)?);
        // One file a day by default, as the script it replaces: a second run replaces it (whole).
        let opts = ExportOptions { source, target, passphrase, replace: true };
        let report = run_export(&opts).context("pg-basebackup")?;
        let mut removed = Vec::new();
        if self.remove > 0 {
            let dir = report.file.parent().unwrap_or(&dst).to_path_buf();
            let age = Duration::from_secs(self.remove.saturating_mul(60));
            removed = remove_older_than(&dir, age, SystemTime::now(), &report.file)
                .with_context(|| format!("remove backups older than {} minutes from {}", self.remove, dir.display()))?;
        }
        if self.json {
            let mut value = serde_json::to_value(&report)?;
            value["removed"] = serde_json::json!(removed);
            return super::print_json(&value);
        }
        print_export(&report, false)?;
        for path in &removed {
            println!("  removed {} (older than {} minutes)", path.display(), self.remove);
        }
        Ok(())
    }
}
