//! The checks a verification runs on its server: pg_amcheck over every database, and the user's
//! SQL files through psql (ON_ERROR_STOP, so any error fails the check).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::ops::verify::server::{Interrupt, Server};
use crate::pg::session::Session;
use crate::util::ms_since;

/// How one check went.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    /// `amcheck` or the SQL file.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Milliseconds it took.
    pub ms: f64,
    /// The end of its output (all of it when it failed).
    pub detail: String,
}

/// Runs pg_amcheck (heap and B-tree checks, every index entry matched against the heap) on every
/// database, one job per core. amcheck cannot be installed on a server in recovery: when a database lacks it, the
/// throwaway server is promoted first and the extension installed (said in the outcome).
pub fn amcheck(server: &Server, interrupt: &Interrupt<'_>) -> Result<CheckOutcome> {
    let started = Instant::now();
    let session = Session::connect(&server.target)?;
    let databases: Vec<String> = session
        .query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut missing = Vec::new();
    for db in &databases {
        let s = Session::connect(&server.target.with_dbname(db))?;
        let n: i64 = s.query_one("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'", &[])?.get(0);
        if n == 0 {
            missing.push(db.clone());
        }
    }
    let mut note = String::new();
    if !missing.is_empty() {
        let promoted: bool = session.query_one("SELECT pg_promote(true, 120)", &[])?.get(0);
        note = format!(
            "amcheck was not installed in {}: the throwaway server was promoted (promoted: {promoted}) to install it\n",
            missing.join(", ")
        );
    }
    let mut command = server.client("pg_amcheck");
    command
        .args(["--all", "--heapallindexed", "--no-strict-names", "--jobs"])
        .arg(std::thread::available_parallelism().map_or(2, |n| n.get()).to_string());
    if !missing.is_empty() {
        command.arg("--install-missing");
    }
    let output = interrupt.output(command, "pg_amcheck")?;
    let text = format!("{note}{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok(CheckOutcome {
        name: "amcheck".into(),
        passed: output.status.success(),
        ms: ms_since(started),
        detail: summarize(&text, output.status.success()),
    })
}

/// Runs a SQL file (a copy the server's owner can read) through psql; any error fails it.
pub fn sql_file(server: &Server, name: &Path, file: &Path, interrupt: &Interrupt<'_>) -> Result<CheckOutcome> {
    let started = Instant::now();
    let mut command = server.client("psql");
    command.args(["-X", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f"]).arg(file);
    let output = interrupt.output(command, "psql")?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok(CheckOutcome {
        name: format!("sql {}", name.display()),
        passed: output.status.success(),
        ms: ms_since(started),
        detail: summarize(&text, output.status.success()),
    })
}

fn summarize(text: &str, passed: bool) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let keep = if passed { 10 } else { 60 };
    let from = lines.len().saturating_sub(keep);
    lines[from..].join("\n")
}
