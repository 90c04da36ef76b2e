//! The text of a schedule: a cron file in `/etc/cron.d` form (with the user column), or one
//! systemd service and one timer per job. Arguments are quoted for whoever reads them: `/bin/sh`
//! after cron (which also turns an unescaped `%` into a newline), or systemd's `ExecStart=` (which
//! expands `%` specifiers and `$` variables).

use serde::Serialize;

use super::calendar::on_calendar;
use super::{EXIT_SKIPPED, Job, Plan};

/// The first line of every file pgfork writes for a schedule: how `--install` knows its own.
pub const MARKER: &str = "# Written by pgfork schedule";

/// A systemd unit file.
#[derive(Debug, Clone, Serialize)]
pub struct Unit {
    /// Its file name: `pgfork-<stanza>-<job>.service` or `.timer`.
    pub name: String,
    /// Its content.
    pub text: String,
}

/// The cron file: environment lines, then one line per job.
pub fn render_cron(plan: &Plan) -> String {
    let mut out = header(plan);
    out.push_str("SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
    for job in &plan.jobs {
        let command: Vec<String> = job.command.iter().map(|a| cron_quote(a)).collect();
        out.push_str(&format!("{} {} {}\n", job.when.text, job.user, command.join(" ")));
    }
    out
}

/// A service and a timer per job.
pub fn render_units(plan: &Plan) -> Vec<Unit> {
    let mut units = Vec::new();
    for job in &plan.jobs {
        let base = unit_base(job);
        let what = job.command.get(1..).unwrap_or_default().join(" ");
        let command: Vec<String> = job.command.iter().map(|a| systemd_quote(a)).collect();
        units.push(Unit {
            name: format!("{base}.service"),
            text: format!(
                "{}[Unit]\nDescription=pgfork {what}\nWants=network-online.target\nAfter=network-online.target\n\n\
                 [Service]\nType=oneshot\nUser={}\nExecStart={}\n# {EXIT_SKIPPED}: another run was still going; this one did nothing.\n\
                 SuccessExitStatus={EXIT_SKIPPED}\n",
                header(plan),
                job.user,
                command.join(" ")
            ),
        });
        let events: String = on_calendar(&job.when).iter().map(|e| format!("OnCalendar={e}\n")).collect();
        units.push(Unit {
            name: format!("{base}.timer"),
            text: format!(
                "{}[Unit]\nDescription=Runs {base}.service ({} in cron)\n\n[Timer]\n{events}Persistent=true\n\n\
                 [Install]\nWantedBy=timers.target\n",
                header(plan),
                job.when.text
            ),
        });
    }
    units
}

/// `pgfork-<stanza>-<job>`, with what a unit name cannot hold escaped as systemd-escape does.
fn unit_base(job: &Job) -> String {
    let mut name = String::from("pgfork-");
    for (i, b) in job.stanza.bytes().enumerate() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b':' => name.push(b as char),
            b'.' if i > 0 => name.push('.'),
            _ => name.push_str(&format!("\\x{b:02x}")),
        }
    }
    format!("{name}-{}", job.name)
}

fn header(plan: &Plan) -> String {
    let source =
        plan.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| crate::config::DEFAULT_CONFIG.into());
    format!("{MARKER} --install from the [schedule] of {source}; edit that and run it again.\n")
}

/// Whether `arg` needs no quoting anywhere.
fn plain(arg: &str) -> bool {
    !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"_./:=@+,-".contains(&b))
}

/// An argument for the shell cron starts, with `%` escaped for cron itself.
fn cron_quote(arg: &str) -> String {
    if plain(arg) {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', "'\\''").replace('%', "\\%"))
}

/// An argument for `ExecStart=`.
fn systemd_quote(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    if plain(arg) {
        return escaped;
    }
    format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::schedule::cron::CronExpr;

    fn plan(stanza: &str, config: &str) -> Plan {
        Plan {
            config: Some(config.into()),
            jobs: vec![Job {
                stanza: stanza.into(),
                name: "full",
                when: CronExpr::parse("00 01 * * 1").unwrap(),
                user: "postgres".into(),
                command: vec![
                    "/usr/bin/pgfork".into(),
                    "backup".into(),
                    "--type".into(),
                    "full".into(),
                    "--stanza".into(),
                    stanza.into(),
                    "--config".into(),
                    config.into(),
                    "--scheduled".into(),
                ],
            }],
        }
    }

    #[test]
    fn cron_lines_look_like_node_crontab() {
        let text = render_cron(&plan("pg-meta", "/etc/pgfork/other.toml"));
        assert!(text.starts_with(MARKER));
        assert!(text.ends_with(
            "00 01 * * 1 postgres /usr/bin/pgfork backup --type full --stanza pg-meta --config /etc/pgfork/other.toml --scheduled\n"
        ));
    }

    #[test]
    fn odd_arguments_are_quoted_for_each_reader() {
        let text = render_cron(&plan("pg-meta", "/etc/my pgfork/100%'s.toml"));
        assert!(text.contains(r"--config '/etc/my pgfork/100\%'\''s.toml'"), "{text}");
        let units = render_units(&plan("pg meta", "/etc/a$b%c.toml"));
        assert_eq!(units[0].name, "pgfork-pg\\x20meta-full.service");
        assert!(units[0].text.contains(r#"--stanza "pg meta" --config "/etc/a$$b%%c.toml""#), "{}", units[0].text);
    }

    #[test]
    fn a_timer_per_job_with_its_calendar() {
        let units = render_units(&plan("pg-meta", "/etc/pgfork/pgfork.toml"));
        assert_eq!(units.len(), 2);
        assert!(units[0].text.contains("User=postgres\nExecStart=/usr/bin/pgfork backup --type full"));
        assert!(units[0].text.contains("SuccessExitStatus=75"));
        assert_eq!(units[1].name, "pgfork-pg-meta-full.timer");
        assert!(units[1].text.contains("OnCalendar=Mon *-*-* 01:00:00\nPersistent=true"), "{}", units[1].text);
    }
}
