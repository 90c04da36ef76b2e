//! `schedule`: the recurring jobs of the `[schedule]` section as a cron file (the lines Pigsty puts
//! in `node_crontab`: `00 01 * * 1 postgres pgfork backup --type full …`) or as systemd service
//! and timer units, validated before anything is written, and installed atomically.
//!
//! Every job runs with `--scheduled`: a run that finds another still running (the stanza's lock,
//! or the same job) exits quietly with [`EXIT_SKIPPED`] instead of piling up or mailing an error.

pub mod calendar;
pub mod cron;
mod install;
mod units;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use install::{Format, InstallReport, check_calendars, install};
pub use units::{Unit, render_cron, render_units};

use crate::config::{Config, DEFAULT_CONFIG, ScheduleConfig};
use crate::error::{Error, Result};
use cron::CronExpr;

/// The exit status of a scheduled run that did not start because another run holds what it
/// needs (sysexits' EX_TEMPFAIL: try again later). Generated service units count it as success.
pub const EXIT_SKIPPED: i32 = 75;

/// One recurring job of one stanza.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// The stanza.
    pub stanza: String,
    /// The job's name in `[schedule]`: full, diff, incr, verify, expire, scrub, snapshot.
    pub name: &'static str,
    /// When it runs.
    #[serde(serialize_with = "expr_text")]
    pub when: CronExpr,
    /// The user it runs as.
    pub user: String,
    /// The command line: the binary, then its arguments.
    pub command: Vec<String>,
}

fn expr_text<S: serde::Serializer>(expr: &CronExpr, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&expr.text)
}

/// Every job of the configuration, validated: expressions parse and run some day, users exist,
/// stanzas are configured, the binary is an absolute path.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The configuration file the jobs read.
    pub config: Option<PathBuf>,
    /// The jobs, by stanza then in the section's order.
    pub jobs: Vec<Job>,
}

/// The pgfork arguments of job `name`.
fn job_args(name: &str) -> &'static [&'static str] {
    match name {
        "full" => &["backup", "--type", "full"],
        "diff" => &["backup", "--type", "diff"],
        "incr" => &["backup", "--type", "incr"],
        "verify" => &["verify"],
        "expire" => &["expire"],
        "scrub" => &["scrub"],
        _ => &["snapshot"],
    }
}

/// Builds the plan of `config`; `binary` is the pgfork the jobs run when the section names none.
pub fn plan(config: &Config, binary: &Path) -> Result<Plan> {
    let file = config.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the configuration".into());
    let Some(schedule) = &config.schedule else {
        return Err(Error::refused(
            format!("{file} has no [schedule] section"),
            Some("add one, e.g. [schedule] with full = \"00 01 * * 1\" and incr = \"00 01 * * 2-7\"".into()),
        ));
    };
    let binary = schedule.binary.clone().unwrap_or_else(|| binary.to_path_buf());
    if !binary.is_absolute() {
        return Err(Error::refused(
            format!("[schedule] binary = {:?} in {file} is not an absolute path", binary.display().to_string()),
            Some("cron and systemd run jobs with a minimal PATH: name the binary by its full path".into()),
        ));
    }
    let stanzas = stanzas(config, schedule, &file)?;
    let user = checked_user(schedule.user.as_deref().unwrap_or("postgres"), "user", &file)?;
    let verify_user = checked_user(schedule.verify_user.as_deref().unwrap_or("root"), "verify_user", &file)?;
    // The jobs must read the configuration this plan came from, wherever it was found.
    let config_arg = config.source.as_ref().filter(|p| p.as_path() != Path::new(DEFAULT_CONFIG)).map(|p| absolute(p));
    let mut expressions = Vec::new();
    for (name, text) in schedule.entries() {
        let when = CronExpr::parse(text).map_err(|reason| {
            Error::refused(
                format!("[schedule] {name} = {text:?} in {file}: {reason}"),
                Some("write five fields, minute hour day-of-month month day-of-week, as in \"00 01 * * 1\"".into()),
            )
        })?;
        expressions.push((name, when));
    }
    let mut jobs = Vec::new();
    for stanza in &stanzas {
        for (name, when) in &expressions {
            let mut command = vec![binary.display().to_string()];
            command.extend(job_args(name).iter().map(|a| a.to_string()));
            command.extend(["--stanza".to_string(), stanza.clone()]);
            if let Some(path) = &config_arg {
                command.extend(["--config".to_string(), path.display().to_string()]);
            }
            command.push("--scheduled".into());
            let user = if *name == "verify" { verify_user.clone() } else { user.clone() };
            jobs.push(Job { stanza: stanza.clone(), name, when: when.clone(), user, command });
        }
    }
    Ok(Plan { config: config_arg, jobs })
}

/// The stanzas scheduled: those `[schedule] stanzas` names (each configured), else all.
fn stanzas(config: &Config, schedule: &ScheduleConfig, file: &str) -> Result<Vec<String>> {
    let Some(names) = &schedule.stanzas else { return Ok(config.stanza.keys().cloned().collect()) };
    for name in names {
        if !config.stanza.contains_key(name) {
            let known: Vec<&str> = config.stanza.keys().map(String::as_str).collect();
            return Err(Error::refused(
                format!("[schedule] stanzas in {file} names {name}, which is not configured"),
                Some(format!("configured stanzas: {}", known.join(", "))),
            ));
        }
    }
    Ok(names.clone())
}

/// `name` when an account of that name exists.
fn checked_user(name: &str, key: &str, file: &str) -> Result<String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(_)) => Ok(name.to_string()),
        _ => Err(Error::refused(
            format!("[schedule] {key} = {name:?} in {file}: no such user on this machine"),
            Some("name the account that runs the cluster (postgres on Pigsty)".into()),
        )),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(schedule: &str) -> Config {
        let mut config = Config::parse(&format!(
            "[repo.main]\npath = \"/pg/backup\"\n[stanza.pg-meta]\ndata = \"/pg/data\"\n[stanza.pg-test]\ndata = \"/pg/data2\"\n{schedule}"
        ))
        .unwrap();
        config.source = Some(PathBuf::from(DEFAULT_CONFIG));
        config
    }

    #[test]
    fn jobs_run_pgfork_for_each_stanza() {
        let plan = plan(
            &config("[schedule]\nfull = \"00 01 * * 1\"\nverify = \"@daily\"\nstanzas = [\"pg-meta\"]\n"),
            Path::new("/usr/bin/pgfork"),
        )
        .unwrap();
        assert_eq!(plan.jobs.len(), 2);
        assert_eq!(plan.jobs[0].command.join(" "), "/usr/bin/pgfork backup --type full --stanza pg-meta --scheduled");
        assert_eq!(plan.jobs[0].user, "postgres");
        assert_eq!(plan.jobs[1].user, "root", "verify mounts the set, as root");
        let all = super::plan(&config("[schedule]\nincr = \"0 * * * *\"\n"), Path::new("/usr/bin/pgfork")).unwrap();
        let stanzas: Vec<&str> = all.jobs.iter().map(|j| j.stanza.as_str()).collect();
        assert_eq!(stanzas, vec!["pg-meta", "pg-test"]);
    }

    #[test]
    fn mistakes_are_refused_with_the_key_named() {
        for (section, expected) in [
            ("", "has no [schedule] section"),
            ("[schedule]\nfull = \"00 01 * *\"\n", "[schedule] full = \"00 01 * *\""),
            ("[schedule]\nfull = \"0 1 * * 1\"\nuser = \"nobody-here\"\n", "no such user"),
            ("[schedule]\nfull = \"0 1 * * 1\"\nstanzas = [\"other\"]\n", "not configured"),
            ("[schedule]\nfull = \"0 1 * * 1\"\nbinary = \"pgfork\"\n", "not an absolute path"),
        ] {
            let err = plan(&config(section), Path::new("/usr/bin/pgfork")).unwrap_err().to_string();
            assert!(err.contains(expected), "{section:?}: {err}");
        }
        assert!(Config::parse("[schedule]\nfortnightly = \"0 1 * * 1\"\n").is_err(), "unknown keys are errors");
    }
}
