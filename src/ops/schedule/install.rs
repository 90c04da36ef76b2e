//! Installing a schedule: `/etc/cron.d/pgfork`, or the units in `/etc/systemd/system` (their
//! timers enabled, units of jobs no longer scheduled disabled and removed). Every file is written
//! atomically; only files that carry pgfork's marker are ever removed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::calendar::on_calendar;
use super::units::MARKER;
use super::{Plan, render_cron, render_units};
use crate::error::{Error, IoContext, Result};
use crate::util::fsx::write_atomic;

/// How the schedule is expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A cron file with a user column (`/etc/cron.d`, Pigsty's `node_crontab`).
    Cron,
    /// systemd service and timer units.
    Systemd,
}

impl Format {
    /// Where `--install` writes by default.
    pub fn default_dir(self) -> &'static Path {
        match self {
            Format::Cron => Path::new("/etc/cron.d"),
            Format::Systemd => Path::new("/etc/systemd/system"),
        }
    }
}

/// What `--install` did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// The files written.
    pub written: Vec<PathBuf>,
    /// pgfork's files removed (jobs no longer scheduled).
    pub removed: Vec<PathBuf>,
    /// What the user still has to do, or what systemctl said.
    pub notes: Vec<String>,
}

/// Checks every calendar event of `plan` with `systemd-analyze calendar` where it is installed, so
/// a unit systemd would reject is never written.
pub fn check_calendars(plan: &Plan) -> Result<()> {
    let events: Vec<String> = plan.jobs.iter().flat_map(|j| on_calendar(&j.when)).collect();
    if events.is_empty() {
        return Ok(());
    }
    let output = match Command::new("systemd-analyze").arg("calendar").args(&events).output() {
        Ok(output) => output,
        // Not installed: the conversion is the only check.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("run", "systemd-analyze", e)),
    };
    if !output.status.success() {
        return Err(Error::Command {
            program: format!("systemd-analyze calendar {}", events.join(" | ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Writes the schedule into `dir` (or the format's usual directory). In the usual systemd
/// directory, systemd is told: daemon-reload, timers enabled and started, removed ones disabled.
pub fn install(plan: &Plan, format: Format, dir: Option<&Path>) -> Result<InstallReport> {
    let usual = dir.is_none();
    let dir = dir.unwrap_or(format.default_dir());
    if !dir.is_dir() {
        return Err(Error::refused(
            format!("{} does not exist", dir.display()),
            Some(match format {
                Format::Cron => "install cron, or use --format systemd".into(),
                Format::Systemd => "is this a systemd machine? use --format cron otherwise".into(),
            }),
        ));
    }
    let mut report = InstallReport { written: Vec::new(), removed: Vec::new(), notes: Vec::new() };
    match format {
        Format::Cron => {
            let path = dir.join("pgfork");
            write_atomic(&path, render_cron(plan).as_bytes(), 0o644)?;
            report.written.push(path);
        }
        Format::Systemd => {
            check_calendars(plan)?;
            let units = render_units(plan);
            for unit in &units {
                let path = dir.join(&unit.name);
                write_atomic(&path, unit.text.as_bytes(), 0o644)?;
                report.written.push(path);
            }
            let stale = ours(dir)?.into_iter().filter(|p| !report.written.contains(p)).collect::<Vec<_>>();
            let timers = |paths: &[PathBuf]| -> Vec<String> {
                paths
                    .iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "timer"))
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect()
            };
            if usual {
                let gone = timers(&stale);
                if !gone.is_empty() {
                    systemctl(&["disable", "--now"], &gone, &mut report.notes);
                }
            }
            for path in stale {
                std::fs::remove_file(&path).at("remove", &path)?;
                report.removed.push(path);
            }
            if usual {
                systemctl(&["daemon-reload"], &[], &mut report.notes);
                let enable = timers(&report.written);
                if !enable.is_empty() {
                    systemctl(&["enable", "--now"], &enable, &mut report.notes);
                }
            } else {
                report.notes.push(format!(
                    "units written to {}: link or copy them into /etc/systemd/system, then systemctl daemon-reload and enable the timers",
                    dir.display()
                ));
            }
        }
    }
    Ok(report)
}

/// pgfork's unit files in `dir`: `pgfork-*.service` and `.timer` files that start with the marker.
fn ours(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).at("list", dir)? {
        let path = entry.at("list", dir)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let unit = name.starts_with("pgfork-") && (name.ends_with(".service") || name.ends_with(".timer"));
        if unit && std::fs::read_to_string(&path).is_ok_and(|text| text.starts_with(MARKER)) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Runs `systemctl ARGS UNITS`; a failure (no systemd running, say) becomes a note, since the
/// files are in place and the command can be run again.
fn systemctl(args: &[&str], units: &[String], notes: &mut Vec<String>) {
    let line = format!("systemctl {} {}", args.join(" "), units.join(" ")).trim_end().to_string();
    match Command::new("systemctl").args(args).args(units).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => notes
            .push(format!("{line} failed: {}; run it once systemd is up", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => notes.push(format!("{line} could not run: {e}")),
    }
}
