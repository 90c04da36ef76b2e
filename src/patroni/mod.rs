//! Patroni, the HA manager the seeds' clusters run under: finding the member that manages a data
//! directory — a running `patroni` process whose configuration names it, or the REST address the
//! stanza configures — with what pgfork needs to drive it: its REST address and credentials, its
//! scope and name, and how to start it again (its systemd unit, or its command line, directory,
//! environment and user).

pub mod rest;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use yaml_rust2::{Yaml, YamlLoader};

use crate::config::Resolved;
use crate::error::{Error, IoContext, Result};

/// The default REST address of a Patroni member.
pub const DEFAULT_REST: &str = "http://127.0.0.1:8008";

/// How a Patroni process was started, to start it again after stopping it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Launch {
    /// A systemd unit: `systemctl start <unit>`.
    Unit(String),
    /// A plain process: its command line, working directory, environment and owner.
    Process {
        /// argv.
        argv: Vec<String>,
        /// Working directory.
        cwd: PathBuf,
        /// Environment, `KEY=value`.
        env: Vec<String>,
        /// Owner's uid and gid.
        uid: u32,
        /// Group.
        gid: u32,
    },
}

/// The Patroni member that manages a stanza's data directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// Its REST API, `http://host:port`.
    pub rest: String,
    /// Basic authentication for the REST API's unsafe calls, from its configuration.
    #[serde(skip)]
    pub auth: Option<(String, String)>,
    /// The cluster's scope.
    pub scope: Option<String>,
    /// The member's name.
    pub name: Option<String>,
    /// The running Patroni process, when found.
    pub pid: Option<u32>,
    /// Its configuration file.
    pub config: Option<PathBuf>,
    /// How to start it again.
    pub launch: Option<Launch>,
}

impl Member {
    /// The member managing the stanza's data directory: found among running processes (whose
    /// configuration's `postgresql.data_dir` is it), with the REST address the stanza configures
    /// (`patroni = "…"`) taking precedence; `None` when nothing says Patroni manages it.
    pub fn detect(resolved: &Resolved) -> Result<Option<Member>> {
        let found = find_process(&resolved.stanza.data)?;
        match (&resolved.stanza.patroni, found) {
            (Some(rest), Some(mut member)) => {
                member.rest = normalize(rest);
                Ok(Some(member))
            }
            (Some(rest), None) => Ok(Some(Member {
                rest: normalize(rest),
                auth: None,
                scope: None,
                name: None,
                pid: None,
                config: None,
                launch: None,
            })),
            (None, found) => Ok(found),
        }
    }
}

fn normalize(rest: &str) -> String {
    let rest = rest.trim_end_matches('/');
    if rest.starts_with("http://") || rest.starts_with("https://") {
        rest.to_string()
    } else {
        format!("http://{rest}")
    }
}

/// Scans running processes for a `patroni` whose configuration manages `data_dir`.
fn find_process(data_dir: &Path) -> Result<Option<Member>> {
    let wanted = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let Ok(procs) = std::fs::read_dir("/proc") else { return Ok(None) };
    for entry in procs.filter_map(|e| e.ok()) {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else { continue };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(at) = argv.iter().position(|a| Path::new(a).file_name().is_some_and(|n| n == "patroni")) else {
            continue;
        };
        let Some(config_arg) = argv.get(at + 1) else { continue };
        let Ok(cwd) = std::fs::read_link(dir.join("cwd")) else { continue };
        let env: Vec<String> = std::fs::read(dir.join("environ"))
            .map(|e| {
                e.split(|b| *b == 0)
                    .filter(|v| !v.is_empty())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let config = cwd.join(config_arg);
        let Ok(text) = std::fs::read_to_string(&config) else { continue };
        let settings = Settings::parse(&text, &env);
        let Some(data) = &settings.data_dir else { continue };
        let data = cwd.join(data);
        if std::fs::canonicalize(&data).unwrap_or(data) != wanted {
            continue;
        }
        let meta = std::fs::metadata(&dir).at("stat", &dir)?;
        let launch = match systemd_unit(pid) {
            Some(unit) => Launch::Unit(unit),
            None => Launch::Process { argv: argv.clone(), cwd: cwd.clone(), env, uid: meta.uid(), gid: meta.gid() },
        };
        return Ok(Some(Member {
            rest: settings.rest.map(|r| normalize(&r)).unwrap_or_else(|| DEFAULT_REST.into()),
            auth: settings.auth,
            scope: settings.scope,
            name: settings.name,
            pid: Some(pid),
            config: Some(config),
            launch: Some(launch),
        }));
    }
    Ok(None)
}

/// The systemd service whose main process `pid` is (`patroni.service`), from its cgroup. A process
/// merely running inside some service (a shell's, a CI runner's) is not one: stopping that unit
/// would stop much more than Patroni.
fn systemd_unit(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let unit = text.lines().find_map(|line| {
        let last = line.rsplit('/').next()?;
        last.ends_with(".service").then(|| last.to_string())
    })?;
    let output =
        std::process::Command::new("systemctl").args(["show", "--property=MainPID", "--value", &unit]).output().ok()?;
    let main_pid = String::from_utf8_lossy(&output.stdout).trim().parse::<u32>().ok()?;
    (main_pid == pid).then_some(unit)
}

/// What pgfork reads of a Patroni configuration (the environment overrides it, as in Patroni).
#[derive(Debug, Default, PartialEq, Eq)]
struct Settings {
    data_dir: Option<String>,
    rest: Option<String>,
    auth: Option<(String, String)>,
    scope: Option<String>,
    name: Option<String>,
}

impl Settings {
    fn parse(text: &str, env: &[String]) -> Settings {
        let doc = YamlLoader::load_from_str(text).ok().and_then(|docs| docs.into_iter().next()).unwrap_or(Yaml::Null);
        let env_value = |key: &str| {
            env.iter().find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('='))).map(str::to_string)
        };
        let text_at = |path: &[&str]| {
            let mut node = &doc;
            for key in path {
                node = &node[*key];
            }
            match node {
                Yaml::String(s) => Some(s.clone()),
                Yaml::Integer(i) => Some(i.to_string()),
                _ => None,
            }
        };
        let user =
            env_value("PATRONI_RESTAPI_USERNAME").or_else(|| text_at(&["restapi", "authentication", "username"]));
        let password =
            env_value("PATRONI_RESTAPI_PASSWORD").or_else(|| text_at(&["restapi", "authentication", "password"]));
        Settings {
            data_dir: env_value("PATRONI_POSTGRESQL_DATA_DIR").or_else(|| text_at(&["postgresql", "data_dir"])),
            rest: env_value("PATRONI_RESTAPI_CONNECT_ADDRESS")
                .or_else(|| text_at(&["restapi", "connect_address"]))
                .or_else(|| text_at(&["restapi", "listen"])),
            auth: user.zip(password),
            scope: env_value("PATRONI_SCOPE").or_else(|| text_at(&["scope"])),
            name: env_value("PATRONI_NAME").or_else(|| text_at(&["name"])),
        }
    }
}

/// What `info` and `check` say of the Patroni member managing the stanza's cluster: `None` when
/// none does; its REST status when it answers, else that it does not.
pub fn describe(resolved: &Resolved) -> Option<String> {
    let member = Member::detect(resolved).ok().flatten()?;
    let who = match (&member.name, &member.scope) {
        (Some(name), Some(scope)) => format!("member {name} of scope {scope}"),
        _ => "a member".to_string(),
    };
    let status = rest::Rest::new(&member.rest, None).and_then(|r| r.status());
    Some(match status {
        Ok(s) => format!(
            "managed by Patroni: {who} ({}), {} {}, timeline {}{}",
            member.rest,
            s.role,
            s.state,
            s.timeline.map_or("-".into(), |t| t.to_string()),
            if s.pause == Some(true) { ", automatic failover PAUSED" } else { "" }
        ),
        Err(e) => format!("managed by Patroni: {who} ({}), REST API not answering: {e}", member.rest),
    })
}

/// Refuses a data directory Patroni manages for an operation that would fight it.
pub fn refuse_managed(member: &Member, what: &str) -> Error {
    Error::refused(
        format!("{what}: the cluster is managed by Patroni ({})", member.rest),
        Some("use pgfork pitr --in-place, which pauses Patroni's failover and hands the cluster back after".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_configuration_and_the_environment() {
        let yaml = "scope: pg-meta\nname: pg-meta-1\nrestapi:\n  listen: 0.0.0.0:8008\n  connect_address: 10.0.0.1:8008\n  \
                    authentication:\n    username: patroni\n    password: 'Patroni.API'\npostgresql:\n  data_dir: /pg/data\n";
        let settings = Settings::parse(yaml, &[]);
        assert_eq!(settings.data_dir.as_deref(), Some("/pg/data"));
        assert_eq!(settings.rest.as_deref(), Some("10.0.0.1:8008"));
        assert_eq!(settings.auth, Some(("patroni".into(), "Patroni.API".into())));
        assert_eq!(settings.scope.as_deref(), Some("pg-meta"));
        let env = vec!["PATRONI_POSTGRESQL_DATA_DIR=/other".to_string()];
        assert_eq!(Settings::parse(yaml, &env).data_dir.as_deref(), Some("/other"));
        assert_eq!(Settings::parse("not: [valid", &[]), Settings::default());
        assert_eq!(normalize("127.0.0.1:8008/"), "http://127.0.0.1:8008");
    }
}
