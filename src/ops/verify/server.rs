//! The throwaway server of a verification: started as the data's owner, watched until recovery
//! pauses at its target (or the server gives up), stopped immediately at the end. Child programs
//! run under [`Interrupt`], so a termination signal stops them and unwinds to the teardown.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::mount::fs::Owner;
use crate::pg::bins::{PgBin, check_started, log_tail};
use crate::pg::datadir::PostmasterPid;
use crate::pg::session::{ConnTarget, Session};

/// Turns a termination signal into an error at the next check.
pub struct Interrupt<'a> {
    signals: &'a Receiver<Signal>,
}

impl<'a> Interrupt<'a> {
    /// Watches `signals`.
    pub fn new(signals: &'a Receiver<Signal>) -> Interrupt<'a> {
        Interrupt { signals }
    }

    /// An error when a signal arrived.
    pub fn check(&self) -> Result<()> {
        match self.signals.try_recv() {
            Ok(signal) => Err(Error::refused(format!("interrupted by {signal}"), None)),
            Err(_) => Ok(()),
        }
    }

    /// Runs `command` to completion, capturing its output; kills it when a signal arrives.
    pub fn output(&self, mut command: Command, what: &str) -> Result<Output> {
        let program = PathBuf::from(command.get_program());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("run", &program, e))?;
        // Drain the pipes on threads so a chatty program cannot block on a full pipe.
        let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| Error::io("wait for", what, e))? {
                break status;
            }
            if let Err(e) = self.check() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
    }
}

/// A running verification server.
pub struct Server {
    /// Its binaries.
    pub bin: PgBin,
    /// Its data directory.
    pub data: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// How to connect.
    pub target: ConnTarget,
    /// Who runs it.
    pub owner: Owner,
}

/// Where recovery stopped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reached {
    /// Last replayed LSN.
    pub lsn: String,
    /// Commit time of the last replayed transaction.
    pub time: Option<String>,
}

impl Server {
    /// A command run as the server's owner.
    pub fn command(&self, program: &str) -> Command {
        let mut command = self.bin.command(program);
        command.uid(self.owner.uid).gid(self.owner.gid);
        command
    }

    /// A client program run as the server's owner, connecting to the server (`-h -p -U`).
    pub fn client(&self, program: &str) -> Command {
        let mut command = self.command(program);
        command
            .arg("-h")
            .arg(&self.target.host)
            .arg("-p")
            .arg(self.target.port.to_string())
            .arg("-U")
            .arg(&self.target.user);
        command
    }

    /// Starts the server and waits until it accepts connections (hot standby: recovery reached a
    /// consistent state).
    pub fn start(&self, interrupt: &Interrupt<'_>) -> Result<()> {
        let mut command = self.bin.start_command(&self.data, &self.log, 3600);
        command.uid(self.owner.uid).gid(self.owner.gid);
        let output = interrupt.output(command, "pg_ctl start")?;
        check_started(&self.data, &self.log, &output)
    }

    /// Waits until recovery pauses at its target. Fails with the server log as soon as the server
    /// stops instead (recovery ended before the target, missing WAL, corrupt data).
    pub fn wait_for_target(&self, interrupt: &Interrupt<'_>) -> Result<Reached> {
        let started = Instant::now();
        let mut session: Option<Session> = None;
        loop {
            interrupt.check()?;
            if !self.is_alive() {
                return Err(Error::invalid(
                    "the verification server",
                    format!("stopped before reaching the target\n{}", log_tail(&self.log, 12)),
                ));
            }
            if started.elapsed() > Duration::from_secs(3600) {
                return Err(Error::invalid("the verification server", "did not reach the target within an hour"));
            }
            if session.is_none() {
                session = Session::connect(&self.target).ok();
            }
            let Some(open) = &session else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let row = open.query_one(
                "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END, \
                 coalesce(pg_last_wal_replay_lsn()::text, ''), pg_last_xact_replay_timestamp()::text",
                &[],
            );
            let Ok(row) = row else {
                session = None;
                continue;
            };
            let (in_recovery, pause, lsn, time): (bool, String, String, Option<String>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if !in_recovery {
                return Err(Error::invalid(
                    "the verification server",
                    "left recovery instead of pausing at the target",
                ));
            }
            if pause == "paused" {
                return Ok(Reached { lsn, time });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the postmaster is running.
    pub fn is_alive(&self) -> bool {
        PostmasterPid::running(&self.data).is_some()
    }

    /// Stops the server at once (nothing it holds is kept); kills it if pg_ctl cannot.
    pub fn stop(self) -> Result<()> {
        let output = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-t", "60", "-D"])
            .arg(&self.data)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io("run", "pg_ctl stop", e))?;
        if output.status.success() {
            return Ok(());
        }
        if let Some(pid) = PostmasterPid::running(&self.data) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.pid), Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }
}
