//! The `[schedule]` section: when each recurring job runs (cron expressions, as in the lines
//! Pigsty puts in `node_crontab`) and as whom. The expressions stay text here, so a mistake in them
//! never stops archive-push or a backup from reading the configuration; `pgfork schedule`
//! validates them.
//!
//! ```toml
//! [schedule]
//! full = "00 01 * * 1"            # pgfork backup --type full
//! incr = "00 01 * * 2-7"          # pgfork backup --type incr
//! diff = "…"                      # pgfork backup --type diff
//! verify = "30 03 * * *"          # pgfork verify (runs as root: it mounts the set)
//! expire = "…"                    # pgfork expire
//! scrub = "00 05 * * 0"           # pgfork scrub
//! snapshot = "0 * * * *"          # pgfork snapshot
//! user = "postgres"               # who runs the jobs [default: postgres]
//! verify_user = "root"            # who runs verify [default: root]
//! stanzas = ["pg-meta"]           # [default: every configured stanza]
//! binary = "/usr/bin/pgfork"      # [default: this pgfork's path]
//! ```

use std::path::PathBuf;

use serde::Deserialize;

/// The `[schedule]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// When to take a full backup.
    pub full: Option<String>,
    /// When to take a differential backup.
    pub diff: Option<String>,
    /// When to take an incremental backup.
    pub incr: Option<String>,
    /// When to verify the newest set.
    pub verify: Option<String>,
    /// When to apply retention.
    pub expire: Option<String>,
    /// When to scrub the repository.
    pub scrub: Option<String>,
    /// When to take a snapshot point.
    pub snapshot: Option<String>,
    /// The user the jobs run as [default: postgres].
    pub user: Option<String>,
    /// The user verify runs as [default: root, since it mounts the set].
    pub verify_user: Option<String>,
    /// The stanzas scheduled [default: every configured stanza].
    pub stanzas: Option<Vec<String>>,
    /// The pgfork binary the jobs run [default: the one running `pgfork schedule`].
    pub binary: Option<PathBuf>,
}

impl ScheduleConfig {
    /// Each job's name with its expression, in the order jobs are listed.
    pub fn entries(&self) -> Vec<(&'static str, &str)> {
        [
            ("full", &self.full),
            ("diff", &self.diff),
            ("incr", &self.incr),
            ("verify", &self.verify),
            ("expire", &self.expire),
            ("scrub", &self.scrub),
            ("snapshot", &self.snapshot),
        ]
        .into_iter()
        .filter_map(|(name, expr)| expr.as_deref().map(|e| (name, e)))
        .collect()
    }
}
