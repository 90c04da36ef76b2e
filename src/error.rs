//! The crate's one error type: what went wrong, with the path, cluster or object it concerns, and the
//! exit code the command line maps it to.

use std::path::PathBuf;

/// Every failure pgfork reports. Each variant carries what the user needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operation was refused before anything was touched, because going on could harm a cluster
    /// or produce something unusable.
    #[error("{message}{}", hint.as_ref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Refused {
        /// What was refused and why.
        message: String,
        /// What the user can do about it.
        hint: Option<String>,
    },
    /// Another process holds what the operation needs (a stanza's lock): nothing was changed, and
    /// the same command may succeed once that process is done.
    #[error("{message}{}", hint.as_ref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Busy {
        /// What is held, and by whom.
        message: String,
        /// What the user can do about it.
        hint: Option<String>,
    },
    /// A file system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// A verb phrase: "clone", "read", "create directory".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PostgreSQL server returned an error or could not be reached.
    #[error("{context}: {}", describe_pg_error(source))]
    Postgres {
        /// What pgfork was doing: "connect to port 5432", "pg_backup_stop".
        context: String,
        /// The client library's error.
        source: tokio_postgres::Error,
    },
    /// An external program (pg_ctl, postgres) failed.
    #[error("{program} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {}", stderr.trim()) })]
    Command {
        /// The program and its main argument.
        program: String,
        /// Its exit status.
        status: String,
        /// What it wrote to standard error (or its log).
        stderr: String,
    },
    /// Data read from disk or from a server does not have the expected form.
    #[error("{what}: {reason}")]
    Invalid {
        /// The object: a file path, a setting, a server reply.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A refusal with an optional hint.
    pub fn refused(message: impl Into<String>, hint: Option<String>) -> Self {
        Error::Refused { message: message.into(), hint }
    }

    /// A refusal because another process holds what the operation needs.
    pub fn busy(message: impl Into<String>, hint: Option<String>) -> Self {
        Error::Busy { message: message.into(), hint }
    }

    /// An I/O failure on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }

    /// A PostgreSQL failure while doing `context`.
    pub fn pg(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Error::Postgres { context: context.into(), source }
    }

    /// Malformed data in `what`.
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid { what: what.into(), reason: reason.into() }
    }

    /// The process exit code for this error: 3 for a refusal (nothing was changed, also when
    /// another process holds the lock), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused { .. } | Error::Busy { .. } => 3,
            _ => 1,
        }
    }

    /// Whether trying again later may succeed (a server still starting, a transient I/O error).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Busy { .. } => true,
            Error::Postgres { source, .. } => source.as_db_error().is_none(),
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }
}

/// Formats a client error as the server's message, detail and hint, or the transport error.
fn describe_pg_error(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(inner) = source {
                text.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            text
        }
    }
}

/// Extension to attach a path and a verb to `std::io::Result`.
pub trait IoContext<T> {
    /// Maps the error to [`Error::Io`] naming `path`.
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, std::io::Error::from(e)))
    }
}
