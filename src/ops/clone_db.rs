//! `clone-db`: CREATE DATABASE … STRATEGY FILE_COPY done safely. Connections to the template are
//! refused and listed, or (when asked) blocked, terminated and allowed again afterwards whatever
//! happens; on PostgreSQL 18 the files are cloned (`file_copy_method = clone`).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::pg::session::{ConnTarget, Session, quote_ident};
use crate::util::ms_since;

/// A clone-db request.
#[derive(Debug, Clone)]
pub struct CloneDbOptions {
    /// The server (the database name is a maintenance database; another is used if it is the template).
    pub server: ConnTarget,
    /// The database to copy.
    pub template: String,
    /// The new database.
    pub name: String,
    /// Terminate the template's sessions instead of refusing.
    pub terminate: bool,
    /// How long to wait for terminated sessions to end.
    pub terminate_wait: Duration,
}

/// A session connected to the template.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TemplateSession {
    /// Backend pid.
    pub pid: i32,
    /// Database user.
    pub user: String,
    /// application_name.
    pub application: String,
    /// Client address, or "local".
    pub client: String,
    /// State (active, idle, …).
    pub state: String,
}

/// The outcome of a clone.
#[derive(Debug, Clone, Serialize)]
pub struct CloneDbReport {
    /// The template.
    pub template: String,
    /// The new database.
    pub database: String,
    /// server_version_num.
    pub server_version: u32,
    /// Whether the files were cloned (shared extents) rather than copied.
    pub cloned: bool,
    /// Sessions that were terminated.
    pub terminated: Vec<TemplateSession>,
    /// Time of the CREATE DATABASE itself, milliseconds.
    pub create_ms: f64,
    /// Time with the template closed to new connections, milliseconds (with terminate).
    pub blocked_ms: f64,
    /// Remarks (a full copy, a fallback).
    pub notes: Vec<String>,
}

/// Clones `template` into `name`.
pub fn clone_db(opts: &CloneDbOptions) -> Result<CloneDbReport> {
    let maintenance = if opts.server.dbname == opts.template {
        if opts.template == "postgres" { "template1" } else { "postgres" }
    } else {
        opts.server.dbname.as_str()
    };
    let session = Session::connect(&opts.server.with_dbname(maintenance))?;
    let server_version = session.version_num()?;
    if server_version < 150000 {
        return Err(Error::refused(
            format!("server version {server_version} has no STRATEGY option; pgfork needs 15 or later"),
            None,
        ));
    }
    let rows = session.query("SELECT datallowconn FROM pg_database WHERE datname = $1", &[&opts.template])?;
    let Some(allow_conn) = rows.first().map(|r| r.get::<_, bool>(0)) else {
        return Err(Error::refused(format!("database {} does not exist", opts.template), None));
    };
    if !session.query("SELECT 1 FROM pg_database WHERE datname = $1", &[&opts.name])?.is_empty() {
        return Err(Error::refused(format!("database {} already exists", opts.name), None));
    }

    let mut notes = Vec::new();
    let sessions = template_sessions(&session, &opts.template)?;
    if !sessions.is_empty() && !opts.terminate {
        let list: Vec<String> = sessions
            .iter()
            .map(|s| {
                format!(
                    "  pid {} user {} application {:?} from {} ({})",
                    s.pid, s.user, s.application, s.client, s.state
                )
            })
            .collect();
        return Err(Error::refused(
            format!("database {} has {} other session(s):\n{}", opts.template, sessions.len(), list.join("\n")),
            Some("close them, or pass --terminate to block new connections and terminate these for the clone".into()),
        ));
    }

    let mut terminated = Vec::new();
    let blocked_at = Instant::now();
    let blocked = opts.terminate && allow_conn;
    if blocked {
        session.execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", quote_ident(&opts.template)))?;
    }
    let outcome = (|| {
        if opts.terminate {
            terminated = terminate_sessions(&session, &opts.template, opts.terminate_wait)?;
        }
        create(&session, opts, server_version, &mut notes)
    })();
    let mut blocked_ms = 0.0;
    if blocked {
        let reopen = session.execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", quote_ident(&opts.template)));
        blocked_ms = ms_since(blocked_at);
        if let Err(e) = reopen {
            return Err(Error::refused(
                format!("database {} still refuses connections: {e}", opts.template),
                Some(format!("run: ALTER DATABASE {} ALLOW_CONNECTIONS true", quote_ident(&opts.template))),
            ));
        }
    }
    let (cloned, create_ms) = outcome?;
    Ok(CloneDbReport {
        template: opts.template.clone(),
        database: opts.name.clone(),
        server_version,
        cloned,
        terminated,
        create_ms,
        blocked_ms,
        notes,
    })
}

fn create(session: &Session, opts: &CloneDbOptions, version: u32, notes: &mut Vec<String>) -> Result<(bool, f64)> {
    let sql = format!(
        "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY",
        quote_ident(&opts.name),
        quote_ident(&opts.template)
    );
    if version < 180000 {
        notes.push(format!(
            "PostgreSQL {} has no file_copy_method: FILE_COPY copies every file (a full copy)",
            version / 10000
        ));
        let start = Instant::now();
        session.execute(&sql)?;
        return Ok((false, ms_since(start)));
    }
    session.execute("SET file_copy_method = clone")?;
    let start = Instant::now();
    match session.execute(&sql) {
        Ok(()) => Ok((true, ms_since(start))),
        Err(Error::Postgres { source, .. }) if is_clone_unsupported(&source) => {
            notes.push("the file system cannot clone files: FILE_COPY fell back to a full copy".into());
            session.execute("SET file_copy_method = copy")?;
            let start = Instant::now();
            session.execute(&sql)?;
            Ok((false, ms_since(start)))
        }
        Err(e) => Err(e),
    }
}

fn is_clone_unsupported(err: &tokio_postgres::Error) -> bool {
    err.as_db_error().is_some_and(|db| db.message().contains("clone") && db.message().contains("not supported"))
}

/// The sessions connected to `database`, other than this one.
pub fn template_sessions(session: &Session, database: &str) -> Result<Vec<TemplateSession>> {
    let rows = session.query(
        "SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), \
         coalesce(host(client_addr), 'local'), coalesce(state, '') \
         FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() ORDER BY pid",
        &[&database],
    )?;
    Ok(rows
        .iter()
        .map(|r| TemplateSession {
            pid: r.get(0),
            user: r.get(1),
            application: r.get(2),
            client: r.get(3),
            state: r.get(4),
        })
        .collect())
}

fn terminate_sessions(session: &Session, database: &str, wait: Duration) -> Result<Vec<TemplateSession>> {
    let victims = template_sessions(session, database)?;
    for victim in &victims {
        session.query("SELECT pg_terminate_backend($1)", &[&victim.pid])?;
    }
    let deadline = Instant::now() + wait;
    while !template_sessions(session, database)?.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::refused(
                format!("sessions on {database} did not end within {} s of pg_terminate_backend", wait.as_secs()),
                None,
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(victims)
}
