//! `check`: is WAL archiving working for this stanza? archive_mode and archive_command set, a WAL
//! switch reaching the repository in time, no recent archiver failures, the right cluster.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Resolved;
use crate::error::Result;
use crate::ops::identity::become_owner_of;
use crate::pg::datadir::DataDir;
use crate::pg::session::Session;
use crate::stanza::{Stanza, check_server, server_target};
use crate::util::ms_since;

/// What check found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Stanza.
    pub stanza: String,
    /// archive_mode of the server.
    pub archive_mode: String,
    /// archive_command of the server.
    pub archive_command: String,
    /// The segment switched to test archiving.
    pub switched_segment: String,
    /// How long it took to reach the repository, milliseconds (`None`: it did not in time).
    pub archived_ms: Option<f64>,
    /// pg_stat_archiver.failed_count.
    pub failed_count: i64,
    /// What is wrong; empty when everything is fine.
    pub problems: Vec<String>,
    /// The Patroni member managing the cluster, when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patroni: Option<String>,
}

/// Checks archiving of the stanza's running cluster, waiting up to `timeout` for a switched segment
/// to reach every repository of `targets`.
pub fn check(targets: &[Resolved], timeout: Duration) -> Result<CheckReport> {
    let Some(resolved) = targets.first() else { return Err(crate::Error::refused("no repository to check", None)) };
    let data = DataDir::open(&resolved.stanza.data)?;
    let identity = become_owner_of(data.path())?;
    let repos = targets.iter().map(Stanza::open).collect::<Result<Vec<_>>>()?;
    let repo = &repos[0];
    let target = server_target(resolved, data.path(), &identity.name);
    let session = Session::connect_retry(&target, Duration::from_secs(5))?;
    let mut problems = Vec::new();
    check_server(&session, &data, repo.record().current.system_identifier)?;
    let archive_mode = session.show("archive_mode")?;
    let archive_command = session.show("archive_command")?;
    if archive_mode == "off" {
        problems.push("archive_mode is off: set it to on (needs a restart)".to_string());
    }
    if !archive_command.contains("archive-push") {
        problems.push(format!("archive_command is {archive_command:?}, not pgfork archive-push"));
    }
    // A record first: a switch with nothing written since the last one does nothing.
    session.query_one("SELECT pg_create_restore_point('pgfork check')::text", &[])?;
    let row = session.query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])?;
    let segment: String = row.get(0);
    let key = repo.archive().key(&segment)?;
    let started = Instant::now();
    let mut archived_ms = None;
    if problems.is_empty() {
        let mut waiting: Vec<&Stanza> = repos.iter().collect();
        while started.elapsed() < timeout && !waiting.is_empty() {
            let mut still = Vec::new();
            for stanza in waiting {
                if stanza.storage().stat(&key)?.is_none() {
                    still.push(stanza);
                }
            }
            waiting = still;
            if waiting.is_empty() {
                archived_ms = Some(ms_since(started));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for stanza in waiting {
            problems.push(format!(
                "segment {segment} did not reach the repository {} within {} s",
                stanza.storage().location(),
                timeout.as_secs()
            ));
        }
    }
    let row = session.query_one(
        "SELECT failed_count, coalesce(last_failed_wal, ''), coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) \
         FROM pg_stat_archiver",
        &[],
    )?;
    let (failed_count, last_failed, failing): (i64, String, bool) = (row.get(0), row.get(1), row.get(2));
    if failing {
        problems.push(format!("the archiver's last attempt failed (on {last_failed}); see the server log"));
    }
    Ok(CheckReport {
        stanza: repo.name().to_string(),
        archive_mode,
        archive_command,
        switched_segment: segment,
        archived_ms,
        failed_count,
        problems,
        patroni: crate::patroni::describe(resolved),
    })
}
