//! `export`: one file holding a data directory that starts on its own, from a backup set or from
//! the running cluster; `export --check` reads one against its manifest, `export --extract`
//! unpacks one once it matched, `export --decrypt` opens an encrypted one.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::progress::TerminalProgress;
use crate::cli::repo_args::RepoArgs;
use crate::ops::export::crypt::{Plaintext, decrypt, passphrase};
use crate::ops::export::{
    AGE_SUFFIX, CheckReport, Compression, ExportOptions, ExportReport, LiveSource, Source, Target, check, export,
    extract,
};
use crate::repo::label::SetLabel;
use crate::util::human_bytes;
use crate::util::signals::termination_channel;

/// Arguments of `export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Export this backup set [default: the newest].
    #[arg(long, conflicts_with_all = ["live", "decrypt", "check", "extract"])]
    pub set: Option<SetLabel>,
    /// Export the running cluster (an online backup) instead of a set: the stanza's, or the one
    /// --src names.
    #[arg(long, conflicts_with_all = ["decrypt", "check", "extract"])]
    pub live: bool,
    /// With --live: the server as a connection URI (postgres:///?host=/tmp&port=5433) instead of
    /// the stanza's; its data directory is read on this machine.
    #[arg(long, requires = "live", value_name = "URI")]
    pub src: Option<String>,
    /// The file to write: NAME.tar.lz4 or NAME.tar.zst, with .age after it when encrypted. With
    /// --extract: the new (or empty) directory to unpack into. With --decrypt: where the
    /// plaintext goes ("-" for standard output) [default: the input without .age].
    #[arg(long, value_name = "FILE|DIR")]
    pub to: Option<PathBuf>,
    /// Encrypt (age format, passphrase from --passphrase-file or $PGFORK_EXPORT_PASSPHRASE);
    /// `age -d FILE` or `pgfork export --decrypt FILE` opens it.
    #[arg(long, conflicts_with_all = ["decrypt", "check", "extract"])]
    pub encrypt: bool,
    /// A file holding the passphrase (mode 0600) [default: $PGFORK_EXPORT_PASSPHRASE].
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Decrypt this encrypted export instead of exporting.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["check", "extract"])]
    pub decrypt: Option<PathBuf>,
    /// Check this export (LZ4 or Zstandard, age-encrypted or not) against the manifest at its
    /// end, without unpacking it: every file's SHA-256, and that the file is whole. Fails naming
    /// the first damaged file, or saying the file is truncated.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["extract", "force", "to"])]
    pub check: Option<PathBuf>,
    /// Unpack this export into --to DIR (new, or an empty directory): into a staging directory
    /// beside DIR, checked against the manifest, then renamed to DIR; damage, truncation or
    /// Ctrl-C leave nothing. As root, the files belong to the user the export names.
    #[arg(long, value_name = "FILE", requires = "to", conflicts_with = "force")]
    pub extract: Option<PathBuf>,
    /// Replace an existing file (the old one stays until the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// With --live: spread the backup's checkpoint instead of asking for an immediate one.
    #[arg(long, requires = "live")]
    pub spread_checkpoint: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl ExportArgs {
    /// Runs the export (or the check, extraction or decryption).
    pub fn run(self) -> anyhow::Result<()> {
        if let Some(input) = &self.decrypt {
            return self.run_decrypt(input);
        }
        if let Some(input) = &self.check {
            return self.run_check(input);
        }
        if let Some(input) = &self.extract {
            return self.run_extract(input);
        }
        let Some(to) = self.to.clone() else {
            anyhow::bail!(crate::Error::refused(
                "export needs a file to write",
                Some("pass --to FILE.tar.lz4 (or .tar.zst)".into())
            ));
        };
        let passphrase = if self.encrypt { Some(passphrase(self.passphrase_file.as_deref())?) } else { None };
        let source = if self.live {
            let mut live = match &self.src {
                Some(uri) => LiveSource::from_conninfo(uri)?,
                None => {
                    let resolved = self.repo.resolve()?;
                    let stanza = &resolved.stanza;
                    LiveSource {
                        data: Some(stanza.data.clone()),
                        host: stanza.socket.clone(),
                        port: stanza.port,
                        user: stanza.user.clone(),
                        fast: true,
                    }
                }
            };
            live.fast = !self.spread_checkpoint;
            Source::Live(live)
        } else {
            Source::Set { resolved: Box::new(self.repo.resolve()?), label: self.set.clone() }
        };
        let opts =
            ExportOptions { source, target: Target::File(std::path::absolute(&to)?), passphrase, replace: self.force };
        let report = run_export(&opts)?;
        print_export(&report, self.json)
    }

    fn run_check(&self, input: &std::path::Path) -> anyhow::Result<()> {
        let signals = termination_channel()?;
        let interrupted = || match signals.try_recv() {
            Ok(signal) => Err(crate::Error::refused(format!("interrupted by {signal}"), None)),
            Err(_) => Ok(()),
        };
        let pass = || passphrase(self.passphrase_file.as_deref());
        let report = check(input, &pass, &TerminalProgress::default(), &interrupted)
            .with_context(|| format!("check of {}", input.display()))?;
        if self.json {
            super::print_json(&report)?;
        } else {
            print!("{}", render_check(&report));
        }
        match &report.failure {
            None => Ok(()),
            Some(failure) => anyhow::bail!("check of {}: {failure}", input.display()),
        }
    }

    fn run_extract(&self, input: &std::path::Path) -> anyhow::Result<()> {
        let signals = termination_channel()?;
        let interrupted = || match signals.try_recv() {
            Ok(signal) => Err(crate::Error::refused(format!("interrupted by {signal}"), None)),
            Err(_) => Ok(()),
        };
        let Some(dir) = &self.to else { anyhow::bail!("--extract needs --to DIR") };
        let dir = std::path::absolute(dir)?;
        let pass = || passphrase(self.passphrase_file.as_deref());
        let report = extract(input, &dir, &pass, &TerminalProgress::default(), &interrupted)
            .with_context(|| format!("extraction of {}", input.display()))?;
        if self.json {
            return super::print_json(&report);
        }
        print!("{}", render_check(&report));
        Ok(())
    }

    fn run_decrypt(&self, input: &std::path::Path) -> anyhow::Result<()> {
        let pass = passphrase(self.passphrase_file.as_deref())?;
        let output = match &self.to {
            Some(path) if path.as_os_str() == "-" => None,
            Some(path) => Some(path.clone()),
            None => {
                let name = input.to_string_lossy();
                let Some(plain) = name.strip_suffix(AGE_SUFFIX) else {
                    anyhow::bail!(crate::Error::refused(
                        format!("{} does not end in {AGE_SUFFIX}", input.display()),
                        Some("name the output with --to FILE (or - for standard output)".into())
                    ));
                };
                Some(PathBuf::from(plain))
            }
        };
        if let Some(out) = output.as_ref().filter(|o| o.exists() && !self.force) {
            anyhow::bail!(crate::Error::refused(
                format!("{} exists", out.display()),
                Some("pass --force to replace it".into())
            ));
        }
        let plaintext = match &output {
            Some(path) => Plaintext::File(path),
            None => Plaintext::Stdout,
        };
        let bytes = decrypt(input, plaintext, &pass).with_context(|| format!("decrypt {}", input.display()))?;
        if let Some(path) = output {
            if self.json {
                return super::print_json(&serde_json::json!({ "file": path, "bytes": bytes }));
            }
            println!("decrypted {} into {} ({})", input.display(), path.display(), human_bytes(bytes));
        }
        Ok(())
    }
}

/// Runs an export with a progress bar, stopping cleanly (nothing left under the file's name) on
/// SIGINT, SIGTERM or SIGHUP.
pub fn run_export(opts: &ExportOptions) -> anyhow::Result<ExportReport> {
    let signals = termination_channel()?;
    let check = || match signals.try_recv() {
        Ok(signal) => Err(crate::Error::refused(format!("interrupted by {signal}"), None)),
        Err(_) => Ok(()),
    };
    let what = match &opts.source {
        Source::Set { resolved, .. } => format!("export of stanza {}", resolved.name),
        Source::Live(_) => "export of the running cluster".to_string(),
    };
    export(opts, &TerminalProgress::default(), &check).context(what)
}

/// The text form of a check or an extraction.
pub fn render_check(r: &CheckReport) -> String {
    let format = format!(
        "{}{}",
        match r.compression {
            Compression::Lz4 => "LZ4",
            Compression::Zstd => "Zstandard",
        },
        if r.encrypted { ", age-encrypted" } else { "" }
    );
    let mut out = match (&r.dir, &r.failure) {
        (Some(dir), _) => format!("extracted {} ({format}) into {}\n", r.file.display(), dir.display()),
        (None, None) => format!("{} ({format}): OK\n", r.file.display()),
        (None, Some(failure)) => {
            let verdict = if r.truncated {
                "TRUNCATED"
            } else if failure.starts_with("no manifest") {
                "UNCHECKED"
            } else {
                "DAMAGED"
            };
            format!("{} ({format}): {verdict}\n", r.file.display())
        }
    };
    out.push_str(&format!(
        "  checked        {} files and {} directories, {} ({} file) in {:.1} s\n",
        r.files,
        r.dirs,
        human_bytes(r.bytes),
        human_bytes(r.file_bytes),
        r.duration_ms / 1000.0
    ));
    match &r.failure {
        None => out.push_str(&format!("  manifest       every file matches its {} digest\n", r.digest)),
        Some(failure) => out.push_str(&format!("  failure        {failure}\n")),
    }
    if let Some(damaged) = &r.damaged {
        out.push_str(&format!("  first damaged  {damaged}\n"));
    }
    if let Some(owner) = &r.owner {
        out.push_str(&format!("  owner          {owner}\n"));
    }
    out
}

/// Prints an export report.
pub fn print_export(report: &ExportReport, json: bool) -> anyhow::Result<()> {
    if json {
        return super::print_json(report);
    }
    let from = match (&report.set, &report.data) {
        (Some(set), _) => format!("backup {set}"),
        (None, Some(data)) => format!("{} (online backup)", data.display()),
        _ => "the cluster".to_string(),
    };
    println!(
        "exported {from} into {} in {:.1} s: {} files and {} WAL segments, {} → {}{}",
        report.file.display(),
        report.duration_ms / 1000.0,
        report.files,
        report.wal_segments,
        human_bytes(report.data_bytes),
        human_bytes(report.file_bytes),
        if report.encrypted { " (age-encrypted)" } else { "" },
    );
    if let (Some(start), Some(stop)) = (report.start_lsn, report.stop_lsn) {
        println!("  wal            {start} .. {stop}: consistent once recovered to {stop}");
    }
    for note in &report.notes {
        println!("  note: {note}");
    }
    for path in &report.cleaned {
        println!("  removed {} (left by a killed export)", path.display());
    }
    let file = report.file.display();
    let unpack = match report.compression {
        Compression::Lz4 => "lz4 -d",
        Compression::Zstd => "zstd -d",
    };
    let open = if report.encrypted { format!("age -d {file} | {unpack}") } else { format!("{unpack} < {file}") };
    println!("  check with:    pgfork export --check {file}");
    println!("  unpack with:   pgfork export --extract {file} --to DIR");
    println!("  or with tar:   set -o pipefail; mkdir -m 700 DIR && {open} | tar -x -C DIR");
    Ok(())
}
