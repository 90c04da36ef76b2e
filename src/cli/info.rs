//! `info`: text like `pgbackrest info`, or JSON.

use anyhow::Context;

use crate::cli::repo_args::{Output, RepoArgs};
use crate::ops::info::{InfoReport, info};
use crate::repo::label::SetLabel;
use crate::repo::scrub::ScrubRecord;
use crate::repo::verification::VerificationRecord;
use crate::util::human_bytes;

/// Arguments of `info`.
#[derive(Debug, Clone, clap::Args)]
pub struct InfoArgs {
    /// Show only this set.
    #[arg(long)]
    pub set: Option<SetLabel>,
    /// text or json.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Configuration and stanza.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl InfoArgs {
    /// Prints the stanza's state.
    pub fn run(self) -> anyhow::Result<()> {
        let targets = self.repo.each_target()?;
        let mut reports = Vec::new();
        for resolved in &targets {
            let report = info(resolved, self.set.as_ref())
                .with_context(|| format!("info of stanza {} in repository {}", resolved.name, resolved.repo_name))?;
            reports.push(report);
        }
        match (self.output, reports.as_slice()) {
            // One repository: its report; several: one report each, in order.
            (Output::Json, [one]) => super::print_json(one)?,
            (Output::Json, all) => super::print_json(&all)?,
            (Output::Text, all) => {
                for report in all {
                    if all.len() > 1 {
                        println!("repository {} ({})", report.repo, report.location);
                    }
                    print!("{}", render(report));
                }
            }
        }
        for report in &reports {
            anyhow::ensure!(
                report.healthy,
                "stanza {} has unreadable objects in repository {}: {}",
                report.stanza,
                report.repo,
                report.errors.join("; ")
            );
        }
        Ok(())
    }
}

/// The text form.
pub fn render(r: &InfoReport) -> String {
    let storage = match &r.foreign {
        Some(foreign) => foreign.clone(),
        None => format!("cipher: {}, compression: {}", r.cipher, r.compression),
    };
    let mut out = format!("stanza: {}\n    status: {}\n    {storage}\n", r.stanza, r.status);
    if let Some(patroni) = &r.patroni {
        out.push_str(&format!("    {patroni}\n"));
    }
    out.push_str(&format!(
        "\n    db (current): PostgreSQL {}, system identifier {}\n",
        r.pg_version, r.system_identifier
    ));
    for s in &r.sets {
        out.push_str(&format!("\n        {} backup: {}\n", s.kind, s.label));
        out.push_str(&format!(
            "            timestamp start/stop: {} / {}\n",
            s.start_time.format("%Y-%m-%d %H:%M:%S%:z"),
            s.stop_time.format("%Y-%m-%d %H:%M:%S%:z")
        ));
        out.push_str(&format!("            wal start/stop: {} / {}\n", s.wal_start, s.wal_stop));
        out.push_str(&format!("            lsn start/stop: {} / {}\n", s.start_lsn, s.stop_lsn));
        out.push_str(&format!(
            "            database size: {}, database backup size: {}\n",
            human_bytes(s.database_size),
            human_bytes(s.backup_size)
        ));
        out.push_str(&format!(
            "            repo backup set size: {}, repo backup size: {}\n",
            human_bytes(s.repo_set_size),
            human_bytes(s.repo_size)
        ));
        let refs: Vec<&str> = s.references.iter().map(SetLabel::as_str).collect();
        if !refs.is_empty() {
            out.push_str(&format!("            backup reference list: {}\n", refs.join(", ")));
        }
        out.push_str(&format!(
            "            pages changed: {} of {}, bad checksums: {}\n",
            s.pages_changed, s.pages_total, s.bad_checksums
        ));
        for bad in &s.bad_pages {
            out.push_str(&format!(
                "              bad page: {} block {} (stored {}, computed {})\n",
                bad.path, bad.block, bad.stored, bad.computed
            ));
        }
        if let Some(damaged) = &s.depends_on_damaged {
            out.push_str(&format!("            UNUSABLE: depends on {damaged}, whose manifest cannot be read\n"));
        }
        out.push_str(&render_verification(s.verification.as_ref()));
        out.push_str(&render_scrub("            ", "scrubbed", s.scrub.as_ref()));
    }
    for a in &r.archive {
        out.push_str(&format!(
            "\n    wal archive timeline {}: {} / {} ({} files)\n",
            a.timeline, a.min, a.max, a.files
        ));
    }
    if !r.archive.is_empty() {
        out.push_str(&render_scrub("    ", "archive scrubbed", r.archive_scrub.as_ref()));
    }
    for p in &r.snapshot_points {
        out.push_str(&format!(
            "\n    snapshot point {}: lsn {} / {} (timeline {}), {} / {}, holds {}{}\n",
            p.id,
            p.start_lsn,
            p.stop_lsn,
            p.timeline,
            p.start_time.format("%Y-%m-%d %H:%M:%S%:z"),
            p.stop_time.format("%Y-%m-%d %H:%M:%S%:z"),
            human_bytes(p.exclusive_bytes),
            p.backup.as_ref().map(|b| format!(", kept by backup {b}")).unwrap_or_default()
        ));
    }
    for note in &r.snapshot_notes {
        out.push_str(&format!("\n    note: {note}\n"));
    }
    for e in &r.errors {
        out.push_str(&format!("\n        error: {e}\n"));
    }
    out
}

/// The `scrubbed:` line of a set (or the archive).
fn render_scrub(indent: &str, what: &str, scrub: Option<&ScrubRecord>) -> String {
    let Some(s) = scrub else { return format!("{indent}{what}: never\n") };
    let verdict = if s.intact { "intact" } else { "DAMAGED" };
    let mut out = format!(
        "{indent}{what}: {verdict} at {} ({} objects, {})\n",
        s.at.format("%Y-%m-%d %H:%M:%S%:z"),
        s.objects,
        human_bytes(s.bytes)
    );
    for damage in s.damaged.iter().take(5) {
        out.push_str(&format!("{indent}  {damage}\n"));
    }
    out
}

/// The `verified:` line of a set.
fn render_verification(verification: Option<&VerificationRecord>) -> String {
    let Some(v) = verification else { return "            verified: never\n".to_string() };
    let verdict = if v.proven { "proven" } else { "NOT PROVEN" };
    let checks: Vec<String> =
        v.checks.iter().map(|(name, ok)| format!("{name} {}", if *ok { "ok" } else { "failed" })).collect();
    let mut out = format!(
        "            verified: {verdict} at {} (target {}{}{})\n",
        v.at.format("%Y-%m-%d %H:%M:%S%:z"),
        v.target,
        v.reached_lsn.as_ref().map(|l| format!(", reached {l}")).unwrap_or_default(),
        if checks.is_empty() { String::new() } else { format!("; {}", checks.join(", ")) }
    );
    if let Some(failure) = &v.failure {
        out.push_str(&format!("              {}\n", failure.lines().next().unwrap_or_default()));
    }
    out
}
