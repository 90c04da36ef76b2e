//! The settings that make a fork safe to start beside its source: its own port and name, no
//! archiving into the source's repository, no replication or recovery settings inherited, its own
//! copies of configuration files the source names by absolute path inside its data directory (as
//! Patroni's generated postgresql.conf does).

use std::path::Path;

use crate::pg::layout::COPY_EXTERNAL_PID_FILE;
use crate::stanza::recovery::RECOVERY_TARGETS;

/// The source settings the fork's configuration depends on.
#[derive(Debug, Clone, Default)]
pub struct SourceSettings {
    /// `cluster_name` of the source (may be empty).
    pub cluster_name: String,
    /// `log_directory` of the source.
    pub log_directory: String,
    /// `hba_file` of the source.
    pub hba_file: String,
    /// `ident_file` of the source.
    pub ident_file: String,
    /// `external_pid_file` of the source (empty: none).
    pub external_pid_file: String,
}

impl SourceSettings {
    /// Reads the settings with `show` (a running server's `SHOW`, or `postgres -C`).
    pub fn read(mut show: impl FnMut(&str) -> crate::error::Result<String>) -> crate::error::Result<SourceSettings> {
        Ok(SourceSettings {
            cluster_name: show("cluster_name")?,
            log_directory: show("log_directory")?,
            hba_file: show("hba_file")?,
            ident_file: show("ident_file")?,
            external_pid_file: show("external_pid_file")?,
        })
    }
}

/// The `cluster_name` a fork gets: `<source name>-fork<ID>`, the source directory's name standing
/// in for an empty cluster_name.
pub fn fork_cluster_name(source: &SourceSettings, src_dir: &Path, id: u32) -> String {
    let base = if source.cluster_name.is_empty() {
        src_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "pg".into())
    } else {
        source.cluster_name.clone()
    };
    format!("{base}-fork{id}")
}

/// The settings that detach a copy from the cluster it came from: no archiving into its archive,
/// no replication settings (a copy has no standbys: waiting for synchronous ones would hang every
/// commit), an external pid file only inside its own data directory (never the original's; an
/// empty one is no way out, PostgreSQL tries to write "" and logs that it cannot), and no old
/// recovery target that could stop the copy's replay.
pub fn detached_settings() -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("archive_mode", "off".to_string()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("synchronous_standby_names", String::new()),
        ("external_pid_file", COPY_EXTERNAL_PID_FILE.to_string()),
    ];
    settings.extend(RECOVERY_TARGETS.iter().map(|name| (*name, String::new())));
    settings
}

/// The parameters written into the fork's `postgresql.auto.conf`.
pub fn fork_settings(
    source: &SourceSettings,
    src_dir: &Path,
    dst_dir: &Path,
    port: u16,
    cluster_name: &str,
) -> Vec<(&'static str, String)> {
    let mut settings = vec![("port", port.to_string()), ("cluster_name", cluster_name.to_string())];
    // The source's pid file is not the fork's: a fork of a source that has one gets its own in its
    // data directory, a fork of one without none.
    settings.extend(detached_settings().into_iter().filter(|(name, _)| *name != "external_pid_file"));
    if !source.external_pid_file.is_empty() {
        settings.push(("external_pid_file", dst_dir.join(COPY_EXTERNAL_PID_FILE).display().to_string()));
    }
    // Two servers writing logs into one absolute directory outside the source would interleave
    // their files; the fork logs inside its own data directory instead.
    let log_dir = Path::new(&source.log_directory);
    if log_dir.is_absolute() && !log_dir.starts_with(src_dir) {
        settings.push(("log_directory", "log".to_string()));
    }
    // A file named by an absolute path inside the source is the source's, not the fork's copy: the
    // source's manager may rewrite it, and the fork would take that on its next reload.
    for (name, value) in [("hba_file", &source.hba_file), ("ident_file", &source.ident_file)] {
        if let Ok(rel) = Path::new(value).strip_prefix(src_dir) {
            settings.push((name, dst_dir.join(rel).display().to_string()));
        }
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_fork_after_its_source() {
        let named = SourceSettings { cluster_name: "pg-meta".into(), ..Default::default() };
        assert_eq!(fork_cluster_name(&named, Path::new("/pg/data"), 1), "pg-meta-fork1");
        assert_eq!(fork_cluster_name(&SourceSettings::default(), Path::new("/pg/data"), 2), "data-fork2");
    }

    #[test]
    fn settings_cut_every_tie_to_the_source() {
        let source = SourceSettings {
            cluster_name: "x".into(),
            log_directory: "/pg/log/postgres".into(),
            hba_file: "/pg/data/pg_hba.conf".into(),
            ident_file: "/etc/postgresql/15/main/pg_ident.conf".into(),
            external_pid_file: String::new(),
        };
        let settings = fork_settings(&source, Path::new("/pg/data"), Path::new("/pg/fork1"), 15432, "x-fork1");
        let get = |name: &str| settings.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("port"), Some("15432"));
        assert_eq!(get("archive_mode"), Some("off"));
        assert_eq!(get("primary_conninfo"), Some(""));
        assert_eq!(get("recovery_target_time"), Some(""));
        assert_eq!(get("log_directory"), Some("log"));
        assert_eq!(get("hba_file"), Some("/pg/fork1/pg_hba.conf"));
        assert_eq!(get("ident_file"), None, "a file outside the source is left as it is");
        assert_eq!(get("external_pid_file"), None, "no pid file for the fork of a source without one");
        let with_pid_file = SourceSettings { external_pid_file: "/run/postgresql/x.pid".into(), ..source.clone() };
        let settings = fork_settings(&with_pid_file, Path::new("/pg/data"), Path::new("/pg/fork1"), 15432, "x-fork1");
        let pid_file = settings.iter().find(|(n, _)| *n == "external_pid_file").map(|(_, v)| v.as_str());
        assert_eq!(pid_file, Some("/pg/fork1/postmaster.external.pid"));
        let relative = SourceSettings { log_directory: "log".into(), ..Default::default() };
        assert!(
            !fork_settings(&relative, Path::new("/pg/data"), Path::new("/f"), 1, "n")
                .iter()
                .any(|(n, _)| *n == "log_directory")
        );
    }
}
