//! Deciding how to fork a source: hot through the online backup protocol when its server answers
//! on the given port and serves that very directory, cold when it is stopped, refused otherwise.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ops::fork::options::ModeRequest;
use crate::pg::datadir::DataDir;
use crate::pg::session::{ConnTarget, Session};

/// The socket directories tried when neither `--host` nor `postmaster.pid` names one.
pub const DEFAULT_SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/tmp"];

/// How the fork will be taken.
pub enum SourceMode {
    /// The server runs: a session to it, for pg_backup_start/stop.
    Hot(Box<Session>),
    /// The server is stopped. `note` says why cold, when not obvious.
    Cold {
        /// Why the source counts as stopped.
        note: Option<String>,
    },
}

/// Probes the source and decides hot or cold.
pub fn decide(
    src: &DataDir,
    request: ModeRequest,
    host: Option<&str>,
    port: u16,
    user: &str,
) -> Result<(SourceMode, Vec<PathBuf>)> {
    let running = src.running_server()?;
    let mut hosts: Vec<String> = Vec::new();
    if let Some(host) = host {
        hosts.push(host.to_string());
    } else {
        if let Some(dir) = running.as_ref().and_then(|p| p.socket_dir.clone()) {
            hosts.push(dir.display().to_string());
        }
        hosts.extend(DEFAULT_SOCKET_DIRS.iter().map(|d| d.to_string()));
    }
    let socket_dirs: Vec<PathBuf> = hosts.iter().filter(|h| h.starts_with('/')).map(PathBuf::from).collect();

    if request == ModeRequest::Cold {
        if let Some(pid) = running {
            return Err(Error::refused(
                format!(
                    "{} is in use by a running server (pid {}, port {}); a cold copy of a running cluster is not consistent",
                    src.path().display(),
                    pid.pid,
                    pid.port
                ),
                Some("drop -s/--cold to fork it hot through the backup protocol, or stop it first".into()),
            ));
        }
        return Ok((SourceMode::Cold { note: None }, socket_dirs));
    }

    let mut last_error = None;
    for host in &hosts {
        let target = ConnTarget { host: host.clone(), port, user: user.to_string(), dbname: "postgres".into() };
        if target.socket_file().is_some_and(|f| !f.exists()) {
            continue;
        }
        match Session::connect_retry(&target, Duration::from_secs(2)) {
            Ok(session) => {
                let served = PathBuf::from(session.show("data_directory")?);
                let served = std::fs::canonicalize(&served).unwrap_or(served);
                if served == src.path() {
                    return Ok((SourceMode::Hot(Box::new(session)), socket_dirs));
                }
                if let Some(pid) = &running {
                    return Err(Error::refused(
                        format!(
                            "the server on {} serves {}, not {}, which runs on port {}",
                            target.describe(),
                            served.display(),
                            src.path().display(),
                            pid.port
                        ),
                        Some(format!("pass the source's port: -p {}", pid.port)),
                    ));
                }
                let note = format!(
                    "the server on {} serves {}; {} is stopped",
                    target.describe(),
                    served.display(),
                    src.path().display()
                );
                return Ok((SourceMode::Cold { note: Some(note) }, socket_dirs));
            }
            Err(e) => last_error = Some(e),
        }
    }
    if let Some(pid) = running {
        let reason = last_error.map(|e| e.to_string()).unwrap_or_else(|| "no socket found".into());
        return Err(Error::refused(
            format!(
                "{} is in use by a running server (pid {}, port {}), but pgfork could not connect to it on port {port}: {reason}",
                src.path().display(),
                pid.pid,
                pid.port
            ),
            Some(format!("pass the server's port with -p {} and its socket directory with --host", pid.port)),
        ));
    }
    Ok((SourceMode::Cold { note: None }, socket_dirs))
}
