//! What a fork is asked to do, with the defaults of the pg-fork script it replaces.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The port a fork gets unless told otherwise: the fork id followed by 5432 (1 → 15432). Ids whose
/// port would pass 65535 (7, 8, 9, 10, …) have no default: the caller must pass one.
pub fn default_port(id: u32) -> Result<u16> {
    let text = format!("{id}5432");
    match text.parse::<u16>() {
        Ok(port) if id > 0 => Ok(port),
        _ => Err(Error::refused(
            format!("fork {id} has no default port: {text} is not a valid TCP port"),
            Some("pass the destination port with -P/--dst-port".into()),
        )),
    }
}

/// The data directory a fork gets unless told otherwise: `/pg/data<ID>`.
pub fn default_destination(id: u32) -> PathBuf {
    PathBuf::from(format!("/pg/data{id}"))
}

/// Whether to ask the server about a hot fork or copy a stopped cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRequest {
    /// Hot when a server runs on the source, cold when it is stopped.
    Auto,
    /// The source must be stopped; refuse otherwise.
    Cold,
}

/// A fork request, fully resolved.
#[derive(Debug, Clone)]
pub struct ForkOptions {
    /// The fork number (names the fork and its default port).
    pub id: u32,
    /// The source data directory.
    pub src: PathBuf,
    /// The destination data directory (must not exist unless `force`).
    pub dst: PathBuf,
    /// The source server's port.
    pub src_port: u16,
    /// The fork's port.
    pub dst_port: u16,
    /// Socket directory or host of the source server; from `postmaster.pid` when `None`.
    pub host: Option<String>,
    /// Database user for the backup session; the acting OS user when `None`.
    pub user: Option<String>,
    /// Hot or cold.
    pub mode: ModeRequest,
    /// Replace an existing, stopped destination.
    pub force: bool,
    /// Start the fork and wait until it accepts connections.
    pub start: bool,
    /// PostgreSQL binaries; found automatically when `None`.
    pub bindir: Option<PathBuf>,
    /// Make the fork of a Debian cluster a Debian cluster of its own (`/etc/postgresql`).
    pub register: bool,
}

impl ForkOptions {
    /// Where the fork's copies of the source's tablespaces go: `<dst>_tblspc/<oid>`.
    pub fn tablespace_root(dst: &Path) -> PathBuf {
        let mut name = dst.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push("_tblspc");
        dst.with_file_name(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_follow_pg_fork() {
        assert_eq!(default_port(1).unwrap(), 15432);
        assert_eq!(default_port(6).unwrap(), 65432);
        for id in [0, 7, 9, 10, 99] {
            assert!(default_port(id).is_err(), "{id}");
        }
    }

    #[test]
    fn tablespace_root_is_beside_the_destination() {
        assert_eq!(ForkOptions::tablespace_root(Path::new("/pg/data1")), PathBuf::from("/pg/data1_tblspc"));
    }
}
