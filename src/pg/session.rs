//! A blocking PostgreSQL client session over `tokio-postgres`, for the short, sequential
//! conversations pgfork has with a server (backup start/stop, CREATE DATABASE, checks).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

use crate::error::{Error, Result};

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnTarget {
    /// A Unix socket directory (absolute path) or a host name.
    pub host: String,
    /// The server port.
    pub port: u16,
    /// The database user.
    pub user: String,
    /// The database to connect to.
    pub dbname: String,
}

impl ConnTarget {
    /// A target on the Unix socket directory `socket_dir`.
    pub fn socket(socket_dir: &Path, port: u16, user: &str, dbname: &str) -> ConnTarget {
        ConnTarget { host: socket_dir.display().to_string(), port, user: user.to_string(), dbname: dbname.to_string() }
    }

    /// The same server, another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnTarget {
        ConnTarget { dbname: dbname.to_string(), ..self.clone() }
    }

    /// The server's address as a user would write it: `/tmp:5432` or `db1:5432`.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Whether the host is a Unix socket directory.
    pub fn is_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The socket file a server on this target listens on, for socket targets.
    pub fn socket_file(&self) -> Option<PathBuf> {
        self.is_socket().then(|| PathBuf::from(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }
}

/// An open connection driven by its own single-threaded runtime.
pub struct Session {
    runtime: tokio::runtime::Runtime,
    client: Client,
    target: ConnTarget,
}

impl Session {
    /// Connects once, failing fast.
    pub fn connect(target: &ConnTarget) -> Result<Session> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("start runtime for", target.describe(), e))?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&target.host)
            .port(target.port)
            .user(&target.user)
            .dbname(&target.dbname)
            .application_name("pgfork")
            .connect_timeout(Duration::from_secs(10));
        let connected = runtime.block_on(async {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                // The connection ends when the client is dropped; errors surface on the next query.
                let _ = connection.await;
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = connected.map_err(|e| Error::pg(format!("connect to {}", target.describe()), e))?;
        Ok(Session { runtime, client, target: target.clone() })
    }

    /// Connects, retrying transient failures (a server still starting) until `timeout`.
    pub fn connect_retry(target: &ConnTarget, timeout: Duration) -> Result<Session> {
        let deadline = Instant::now() + timeout;
        loop {
            match Session::connect(target) {
                Ok(session) => return Ok(session),
                Err(e) if Instant::now() < deadline && (e.is_retryable() || is_starting_up(&e)) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The target this session is connected to.
    pub fn target(&self) -> &ConnTarget {
        &self.target
    }

    /// Runs a query and returns all rows.
    pub fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.runtime
            .block_on(self.client.query(sql, params))
            .map_err(|e| Error::pg(format!("run {:?} on {}", first_words(sql), self.target.describe()), e))
    }

    /// Runs a query that returns exactly one row.
    pub fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        self.runtime
            .block_on(self.client.query_one(sql, params))
            .map_err(|e| Error::pg(format!("run {:?} on {}", first_words(sql), self.target.describe()), e))
    }

    /// Runs one or more statements without parameters (simple protocol; allowed outside a transaction
    /// block, as CREATE DATABASE requires).
    pub fn execute(&self, sql: &str) -> Result<()> {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| Error::pg(format!("run {:?} on {}", first_words(sql), self.target.describe()), e))
    }

    /// `SHOW name` as text.
    pub fn show(&self, name: &str) -> Result<String> {
        let row = self.query_one("SELECT current_setting($1)", &[&name])?;
        Ok(row.get(0))
    }

    /// The server's `server_version_num` (e.g. 180006).
    pub fn version_num(&self) -> Result<u32> {
        let text = self.show("server_version_num")?;
        text.trim()
            .parse()
            .map_err(|_| Error::invalid(format!("server_version_num of {}", self.target.describe()), text))
    }
}

fn is_starting_up(err: &Error) -> bool {
    match err {
        Error::Postgres { source, .. } => {
            source.as_db_error().is_some_and(|db| db.code() == &tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW)
        }
        _ => false,
    }
}

fn first_words(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().take(4).collect();
    words.join(" ")
}

/// Quotes an SQL identifier (`quote_ident`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("meta"), "\"meta\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn socket_targets_know_their_socket_file() {
        let target = ConnTarget::socket(Path::new("/tmp"), 5432, "postgres", "postgres");
        assert_eq!(target.socket_file(), Some(PathBuf::from("/tmp/.s.PGSQL.5432")));
        assert_eq!(target.describe(), "/tmp:5432");
    }
}
