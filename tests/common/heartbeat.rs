//! The heartbeat scenario shared by the recovery tests: a table written every 100 ms whose rows
//! say when (time, transaction, LSN) they were written, so a recovered copy shows where it landed.

use std::time::Duration;

use super::{Cluster, PgVersion, RepoSetup};

/// One heartbeat row as written.
#[derive(Debug, Clone)]
pub struct Beat {
    pub id: i32,
    pub ts: String,
    pub epoch: f64,
    pub txid: i64,
    pub lsn: String,
}

/// The row records the WAL insert position as the statement starts (before its own records); the
/// write position (`pg_current_wal_lsn`) can lag behind it.
pub const HEARTBEAT_SQL: &str = "INSERT INTO heartbeat (ts, txid, lsn) VALUES (clock_timestamp(), txid_current(), pg_current_wal_insert_lsn()) \
     RETURNING id, ts::text, extract(epoch FROM ts)::float8, txid, lsn::text";

/// Writes a heartbeat every 100 ms for `count` beats; after beat `restore_point_after` creates the
/// restore point `rp1`.
pub fn heartbeats(cluster: &Cluster, count: usize, restore_point_after: Option<usize>) -> Vec<Beat> {
    let session = cluster.session("postgres");
    let mut beats = Vec::new();
    for i in 1..=count {
        let row = session.query_one(HEARTBEAT_SQL, &[]).unwrap();
        beats.push(Beat { id: row.get(0), ts: row.get(1), epoch: row.get(2), txid: row.get(3), lsn: row.get(4) });
        if restore_point_after == Some(i) {
            session.query_one("SELECT pg_create_restore_point('rp1')::text", &[]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    beats
}

/// An archiving cluster with a heartbeat table, a stanza and a full backup.
pub fn archiving_cluster(version: &PgVersion) -> (Cluster, RepoSetup) {
    let mut cluster = Cluster::init(version, None);
    let repo = RepoSetup::new(&cluster, Some("pitr pass"), "");
    repo.enable_archiving(&cluster);
    cluster.start();
    repo.ok(&["stanza-create"]);
    cluster.psql("postgres", "CREATE TABLE heartbeat (id serial PRIMARY KEY, ts timestamptz, txid bigint, lsn pg_lsn)");
    repo.backup("full");
    (cluster, repo)
}

/// Switches WAL and waits until it is in the repository (pgfork check does exactly that).
pub fn archive_now(repo: &RepoSetup) {
    repo.ok(&["check", "--timeout", "60"]);
}
