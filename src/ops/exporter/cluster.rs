//! The archiver of a stanza's cluster, when it answers: failures from `pg_stat_archiver`, and the
//! segments still waiting to be archived (`.ready` files in `pg_wal/archive_status`) with the age
//! of the oldest, which is how far the archive lags behind the cluster.

use std::time::Duration;

use crate::config::Resolved;
use crate::error::{Error, Result};
use crate::pg::session::Session;
use crate::stanza::server_target;

/// What the archiver of a running cluster reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Archiver {
    /// `pg_stat_archiver.failed_count`: failed attempts since the statistics were reset.
    pub failed_count: i64,
    /// Segments waiting to be archived; `None` when the user may not list `archive_status`.
    pub ready: Option<i64>,
    /// Seconds since the oldest waiting segment was completed (0 when none waits). Without the
    /// listing: since the last success, while the last attempt failed.
    pub lag_seconds: f64,
}

/// With the `.ready` files (superuser or pg_monitor).
const WITH_STATUS_DIR: &str = "SELECT a.failed_count, r.ready, \
     coalesce(extract(epoch FROM now() - r.oldest), 0)::float8 \
     FROM pg_stat_archiver a, \
     (SELECT count(*) AS ready, min(modification) AS oldest FROM pg_ls_archive_statusdir() \
      WHERE name LIKE '%.ready') r";

/// From the archiver's statistics alone.
const STATS_ONLY: &str = "SELECT failed_count, NULL::bigint, \
     CASE WHEN last_failed_time > coalesce(last_archived_time, '-infinity') \
     THEN extract(epoch FROM now() - coalesce(last_archived_time, stats_reset)) ELSE 0 END::float8 \
     FROM pg_stat_archiver";

/// Asks the stanza's cluster (as `user`, unless the stanza names one) about its archiver; an
/// error when it does not answer or serves another data directory.
pub fn archiver(resolved: &Resolved, user: &str) -> Result<Archiver> {
    let data = &resolved.stanza.data;
    let target = server_target(resolved, data, user);
    let session = Session::connect(&target)?;
    let served = session.show("data_directory")?;
    let same = |a: &std::path::Path| std::fs::canonicalize(a).unwrap_or_else(|_| a.to_path_buf());
    if same(std::path::Path::new(&served)) != same(data) {
        return Err(Error::refused(
            format!(
                "the server on {} serves {served}, not stanza {}'s {}",
                target.describe(),
                resolved.name,
                data.display()
            ),
            Some("set port and socket of the stanza to its own server".into()),
        ));
    }
    let _ = session.execute(&format!("SET statement_timeout = {}", Duration::from_secs(10).as_millis()));
    let row = match session.query_one(WITH_STATUS_DIR, &[]) {
        Ok(row) => row,
        Err(_) => session.query_one(STATS_ONLY, &[])?,
    };
    let bad =
        |e: tokio_postgres::Error| Error::invalid(format!("pg_stat_archiver of {}", target.describe()), e.to_string());
    Ok(Archiver {
        failed_count: row.try_get(0).map_err(bad)?,
        ready: row.try_get(1).map_err(bad)?,
        lag_seconds: row.try_get::<_, f64>(2).map_err(bad)?.max(0.0),
    })
}
