//! Finding the PostgreSQL server binaries (`postgres`, `pg_ctl`) of a given major version, and
//! running them in an environment without pgfork's secrets.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// A directory holding `postgres` and `pg_ctl` of one major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    dir: PathBuf,
    major: u32,
}

impl PgBin {
    /// Finds binaries of `major`: `explicit` if given, else the directory of the server that last
    /// ran `data_dir` (from `postmaster.opts`), `PG_BINDIR`, `pg_ctl` on `PATH`, then the usual
    /// install locations. Each candidate's `postgres --version` must match `major`.
    pub fn locate(major: u32, explicit: Option<&Path>, data_dir: Option<&Path>) -> Result<PgBin> {
        if let Some(dir) = explicit {
            return PgBin::at(dir, major);
        }
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(dir) = data_dir.and_then(bindir_from_postmaster_opts) {
            candidates.push(dir);
        }
        if let Some(dir) = std::env::var_os("PG_BINDIR") {
            candidates.push(PathBuf::from(dir));
        }
        if let Some(path) = std::env::var_os("PATH") {
            // A pg_ctl on PATH is often a link into the real installation (/usr/local/bin/pg_ctl ->
            // /usr/lib/postgresql/15/bin/pg_ctl): use the installation, which has every program.
            candidates.extend(std::env::split_paths(&path).filter(|d| d.join("pg_ctl").is_file()).map(|d| {
                std::fs::canonicalize(d.join("pg_ctl"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .unwrap_or(d)
            }));
        }
        candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
        candidates.push(PathBuf::from(format!("/usr/pgsql-{major}/bin")));
        candidates.push(PathBuf::from(format!("/opt/pgfork/pg{major}/bin")));
        candidates.iter().find_map(|dir| PgBin::at(dir, major).ok()).ok_or_else(|| {
            Error::refused(
                format!("no PostgreSQL {major} binaries found"),
                Some("pass --bindir with the directory holding postgres and pg_ctl".into()),
            )
        })
    }

    /// Uses `dir`, checking that its `postgres` is version `major`.
    pub fn at(dir: &Path, major: u32) -> Result<PgBin> {
        let postgres = dir.join("postgres");
        let output =
            clean(Command::new(&postgres)).arg("--version").output().map_err(|e| Error::io("run", &postgres, e))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let found = parse_version_major(&text)
            .ok_or_else(|| Error::invalid(format!("{} --version", postgres.display()), text.trim().to_string()))?;
        if found != major {
            return Err(Error::refused(
                format!("{} is PostgreSQL {found}, the data directory needs {major}", postgres.display()),
                Some("pass --bindir with binaries of the data directory's version".into()),
            ));
        }
        Ok(PgBin { dir: dir.to_path_buf(), major })
    }

    /// The major version.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// A `Command` for the program `name` in this directory, with the environment of
    /// [`server_environment`]: every server pgfork starts goes through here (`pg_ctl start` hands
    /// its environment to postgres), and so do the clients it runs as the server's owner.
    pub fn command(&self, name: &str) -> Command {
        clean(Command::new(self.dir.join(name)))
    }

    /// Runs `postgres -D data_dir -C name` to read a setting from a stopped cluster's configuration.
    pub fn config_value(&self, data_dir: &Path, name: &str) -> Result<String> {
        let output = self
            .command("postgres")
            .arg("-D")
            .arg(data_dir)
            .arg("-C")
            .arg(name)
            .output()
            .map_err(|e| Error::io("run", self.dir.join("postgres"), e))?;
        if !output.status.success() {
            return Err(Error::Command {
                program: format!("postgres -C {name}"),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim_end_matches('\n').to_string())
    }

    /// `pg_ctl start -w` of `data_dir`, logging to `log_file`, waiting at most `timeout_secs`.
    pub fn start_command(&self, data_dir: &Path, log_file: &Path, timeout_secs: u32) -> Command {
        let mut command = self.command("pg_ctl");
        command
            .arg("start")
            .arg("-w")
            .arg("-t")
            .arg(timeout_secs.to_string())
            .arg("-D")
            .arg(data_dir)
            .arg("-l")
            .arg(log_file)
            .stdin(std::process::Stdio::null());
        command
    }

    /// Starts a server with `pg_ctl start -w`, logging to `log_file`.
    pub fn start(&self, data_dir: &Path, log_file: &Path, timeout_secs: u32) -> Result<()> {
        let output = self
            .start_command(data_dir, log_file, timeout_secs)
            .output()
            .map_err(|e| Error::io("run", self.dir.join("pg_ctl"), e))?;
        check_started(data_dir, log_file, &output)
    }

    /// `pg_ctl <action> -w -D <data_dir>` followed by `extra`: stop with `["-m", "fast"]`,
    /// promote.
    pub fn ctl_command(&self, action: &str, data_dir: &Path, extra: &[&str]) -> Command {
        let mut command = self.command("pg_ctl");
        command.args([action, "-w", "-D"]).arg(data_dir).args(extra).stdin(std::process::Stdio::null());
        command
    }

    /// Runs a `pg_ctl` command built by [`PgBin::ctl_command`], its error naming the data directory.
    pub fn run_ctl(&self, mut command: Command, action: &str, data_dir: &Path) -> Result<()> {
        let output = command.output().map_err(|e| Error::io("run", self.dir.join("pg_ctl"), e))?;
        if output.status.success() {
            return Ok(());
        }
        Err(Error::Command {
            program: format!("pg_ctl {action} -D {}", data_dir.display()),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// `command` with only the variables of [`server_environment`].
fn clean(mut command: Command) -> Command {
    command.env_clear().envs(server_environment());
    command
}

/// The environment of the programs pgfork runs from a PostgreSQL binary directory, above all the
/// servers it starts: a server hands its environment to every process it starts — restore_command,
/// archive_command, `COPY … FROM PROGRAM`, extensions — and any superuser can read it. So never
/// pgfork's secrets (`PGFORK_PASSPHRASE`, `AWS_*`; archive-get gets those through
/// `--secrets FILE`, see `config::secrets`) nor anything else of pgfork's (`PGFORK_*`, `PG*`
/// defaults such as PGPORT, which would change settings the server's files do not set): only
///
/// - `PATH`: restore_command, archive_command and `COPY … FROM PROGRAM` run through the shell;
/// - `LANG`, `LANGUAGE`, `LC_*`: the locale of the server's messages before its configuration is
///   read, and of the programs it runs;
/// - `TZ`, `PGTZ`: the time zone of those programs and of the libpq clients it runs (dblink,
///   postgres_fdw);
/// - `LD_LIBRARY_PATH`: where a server built into its own prefix finds its libraries;
/// - `SSL_CERT_FILE`, `SSL_CERT_DIR`: the certificate authorities archive-get trusts when it
///   fetches from an S3 endpoint;
/// - the proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, either case)
///   archive-get reaches an S3 endpoint through — unless the URL carries credentials (`user:pass@`).
pub fn server_environment() -> Vec<(OsString, OsString)> {
    std::env::vars_os().filter(|(name, value)| server_may_have(name, value)).collect()
}

fn server_may_have(name: &OsStr, value: &OsStr) -> bool {
    let Some(name) = name.to_str() else { return false };
    match name {
        "PATH" | "LANG" | "LANGUAGE" | "TZ" | "PGTZ" | "LD_LIBRARY_PATH" | "SSL_CERT_FILE" | "SSL_CERT_DIR" => true,
        _ if name.starts_with("LC_") => true,
        _ if ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"].contains(&name.to_ascii_uppercase().as_str()) => {
            !value.to_string_lossy().contains('@')
        }
        _ => false,
    }
}

/// The error for a `pg_ctl start` that failed, with the end of the server log.
pub fn check_started(data_dir: &Path, log_file: &Path, output: &std::process::Output) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        program: format!("pg_ctl start -D {}", data_dir.display()),
        status: output.status.to_string(),
        stderr: format!("{}\n{}", String::from_utf8_lossy(&output.stderr).trim(), log_tail(log_file, 15)),
    })
}

/// The last `lines` lines of a server log, headed by its name.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    format!("last lines of {}:\n{}", path.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

/// The major version from `postgres (PostgreSQL) 18.6` or `postgres (PostgreSQL) 15.18 (Debian …)`.
pub fn parse_version_major(text: &str) -> Option<u32> {
    let version = text.split("(PostgreSQL)").nth(1)?.split_whitespace().next()?;
    version.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

/// The directory of the `postgres` binary recorded in `postmaster.opts`.
fn bindir_from_postmaster_opts(data_dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.opts")).ok()?;
    let program = text.split_whitespace().next()?.trim_matches('"');
    Path::new(program).parent().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_get_no_secret_of_pgforks() {
        let may = |name: &str, value: &str| server_may_have(OsStr::new(name), OsStr::new(value));
        for kept in ["PATH", "LANG", "LC_ALL", "LC_MESSAGES", "TZ", "PGTZ", "SSL_CERT_FILE", "LD_LIBRARY_PATH"] {
            assert!(may(kept, "x"), "{kept}");
        }
        for dropped in [
            "PGFORK_PASSPHRASE",
            "PGFORK_EXPORT_PASSPHRASE",
            "PGFORK_CONFIG",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "PGPASSWORD",
            "PGPORT",
            "HOME",
            "TERM",
        ] {
            assert!(!may(dropped, "x"), "{dropped}");
        }
        assert!(may("https_proxy", "http://proxy:3128") && may("NO_PROXY", "localhost"));
        assert!(!may("HTTPS_PROXY", "http://user:password@proxy:3128"), "a proxy URL with credentials is a secret");
    }

    #[test]
    fn parses_server_version_lines() {
        assert_eq!(parse_version_major("postgres (PostgreSQL) 18.6\n"), Some(18));
        assert_eq!(parse_version_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(parse_version_major("postgres (PostgreSQL) 19beta1"), Some(19));
        assert_eq!(parse_version_major("something else"), None);
    }
}
