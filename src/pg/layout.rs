//! Which files of a data directory a copy takes: the exclusions PostgreSQL's own base backup makes
//! (transient directories, lock and signal files, temporary and unlogged relations), and Patroni's
//! cache of its cluster's configuration.

use std::collections::HashSet;

/// Directories whose contents are never copied; the directories themselves are kept.
pub const EXCLUDED_DIR_CONTENTS: &[&str] =
    &["pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans", "pg_wal"];

/// Files never copied, wherever they are.
pub const EXCLUDED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "recovery.signal",
    "standby.signal",
    // Patroni's cache of its cluster's dynamic configuration ("pause": true among it): a copy
    // started under another Patroni must take that cluster's, not this one's.
    "patroni.dynamic.json",
    // The external pid file a copy is given inside its own data directory: the running server's.
    COPY_EXTERNAL_PID_FILE,
    // The manifest of the export a data directory was unpacked from with tar: it describes that
    // export, not this cluster (and an export of it writes its own).
    EXPORT_MANIFEST,
];

/// The `external_pid_file` of a copy of a cluster that has one (a fork, an export): relative, so
/// inside the copy's data directory wherever it goes, and never the original's.
pub const COPY_EXTERNAL_PID_FILE: &str = "postmaster.external.pid";

/// The name of the manifest an export carries at the top of its data directory.
pub const EXPORT_MANIFEST: &str = "pgfork-export.manifest";

/// What to do with one entry, judged by its path relative to the data directory root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Copy it (a directory: descend into it).
    Copy,
    /// A directory to create empty, without its contents.
    EmptyDir,
    /// Leave it out.
    Skip,
}

/// Classifies `rel` (a path relative to the data directory, `/`-separated) for a copy.
pub fn classify(rel: &str, is_dir: bool) -> Disposition {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name.starts_with("pgsql_tmp") {
        return Disposition::Skip;
    }
    // A symlinked pg_wal (initdb -X) becomes a real, empty directory in the copy.
    if EXCLUDED_DIR_CONTENTS.contains(&rel) {
        return Disposition::EmptyDir;
    }
    if is_dir {
        return Disposition::Copy;
    }
    if EXCLUDED_FILES.contains(&rel) || name.starts_with("pg_internal.init") || is_temp_relation(name) {
        return Disposition::Skip;
    }
    Disposition::Copy
}

/// Whether `name` is a temporary relation file: `t<backend>_<relfilenode>[_fork][.seg]`.
pub fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else { return false };
    let Some((backend, node)) = rest.split_once('_') else { return false };
    let node = node.split(['_', '.']).next().unwrap_or("");
    !backend.is_empty()
        && backend.bytes().all(|b| b.is_ascii_digit())
        && !node.is_empty()
        && node.bytes().all(|b| b.is_ascii_digit())
}

/// A relation file name split into relfilenode, fork and segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelFileName<'a> {
    /// The relfilenode number as written.
    pub node: &'a str,
    /// The fork suffix (`fsm`, `vm`, `init`), `None` for the main fork.
    pub fork: Option<&'a str>,
    /// The segment number (0 for the first 1 GiB).
    pub segment: u32,
}

/// Parses `<relfilenode>[_fsm|_vm|_init][.<segno>]`.
pub fn parse_relation_file(name: &str) -> Option<RelFileName<'_>> {
    let (base, segment) = match name.split_once('.') {
        Some((base, seg)) => (base, seg.parse().ok()?),
        None => (name, 0),
    };
    let (node, fork) = match base.split_once('_') {
        Some((node, fork @ ("fsm" | "vm" | "init"))) => (node, Some(fork)),
        Some(_) => return None,
        None => (base, None),
    };
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(RelFileName { node, fork, segment })
}

/// Given the file names of one database directory, those that belong to unlogged relations and are
/// not their `_init` fork: PostgreSQL rebuilds them from the init fork, so copies leave them out.
pub fn unlogged_non_init_forks<'a>(names: &[&'a str]) -> HashSet<&'a str> {
    let unlogged: HashSet<&str> = names
        .iter()
        .filter_map(|n| parse_relation_file(n))
        .filter(|r| r.fork == Some("init"))
        .map(|r| r.node)
        .collect();
    names
        .iter()
        .copied()
        .filter(|n| parse_relation_file(n).is_some_and(|r| r.fork != Some("init") && unlogged.contains(r.node)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_base_backup() {
        assert_eq!(classify("pg_wal", true), Disposition::EmptyDir);
        assert_eq!(classify("pg_wal", false), Disposition::EmptyDir, "a symlinked pg_wal");
        assert_eq!(classify("pg_replslot", true), Disposition::EmptyDir);
        assert_eq!(classify("base", true), Disposition::Copy);
        assert_eq!(classify("base/5/pgsql_tmp", true), Disposition::Skip);
        assert_eq!(classify("postmaster.pid", false), Disposition::Skip);
        assert_eq!(classify("global/pg_internal.init", false), Disposition::Skip);
        assert_eq!(classify("base/5/pg_internal.init.1234", false), Disposition::Skip);
        assert_eq!(classify("base/5/t3_16384", false), Disposition::Skip);
        assert_eq!(classify("base/5/16384", false), Disposition::Copy);
        assert_eq!(classify("base/5/postmaster.pid", false), Disposition::Copy);
        assert_eq!(classify("pgfork-export.manifest", false), Disposition::Skip);
        assert_eq!(classify("global/pg_control", false), Disposition::Copy);
    }

    #[test]
    fn parses_relation_file_names() {
        assert_eq!(parse_relation_file("16384"), Some(RelFileName { node: "16384", fork: None, segment: 0 }));
        assert_eq!(parse_relation_file("16384_vm"), Some(RelFileName { node: "16384", fork: Some("vm"), segment: 0 }));
        assert_eq!(parse_relation_file("16384.3"), Some(RelFileName { node: "16384", fork: None, segment: 3 }));
        assert_eq!(parse_relation_file("16384_fsm.1").unwrap().fork, Some("fsm"));
        for bad in ["PG_VERSION", "pg_filenode.map", "16384_x", "t3_16384", "12.a", ""] {
            assert_eq!(parse_relation_file(bad), None, "{bad}");
        }
    }

    #[test]
    fn finds_unlogged_forks() {
        let names = ["100", "100_init", "100_fsm", "100.1", "200", "200_vm"];
        let skip = unlogged_non_init_forks(&names);
        assert_eq!(skip, ["100", "100_fsm", "100.1"].into_iter().collect());
    }

    #[test]
    fn recognises_temp_relations() {
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t12_16384_fsm"));
        assert!(is_temp_relation("t3_16384.1"));
        assert!(!is_temp_relation("t_1"));
        assert!(!is_temp_relation("tablespace_map"));
        assert!(!is_temp_relation("16384"));
    }
}
