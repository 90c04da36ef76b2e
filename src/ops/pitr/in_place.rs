//! `pitr --in-place`: point-in-time recovery of the stanza's own cluster. Not under Patroni, the
//! cluster must be stopped and is restored with a delta restore (as `pg-pitr`). Under Patroni it is
//! the seeds' procedure as one command, in two halves with the DBA's look in between:
//!
//! 1. pause automatic failover (`PATCH /config`, until every member says paused); stop Patroni on
//!    this member (paused, it leaves PostgreSQL running); stop PostgreSQL; restore to the target;
//!    start PostgreSQL by hand, paused (or promoted) at the target, for the DBA to check;
//! 2. `--resume`: promote if still paused; start Patroni again with PostgreSQL running (it adopts it
//!    and takes the leader key — starting Patroni with PostgreSQL stopped would let a replica win
//!    the resumed cluster with the data recovery dropped); checkpoint; reinitialise every replica
//!    from it; resume failover.
//!
//! Every step is recorded in a state file beside the data directory as it completes, so a run that
//! stopped (an error, a kill) continues where it stopped when run again, and `--abort` backs out
//! before the restore (PostgreSQL and Patroni started again, failover resumed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Resolved;
use crate::config::secrets::{self, Secrets, SecretsFile};
use crate::error::{Error, IoContext, Result};
use crate::ops::identity::become_owner_of;
use crate::ops::pitr::{Reached, wait_for_target};
use crate::ops::restore::{RestoreOptions, restore, restore_as_caller};
use crate::patroni::rest::{Rest, wait_until};
use crate::patroni::{Launch, Member};
use crate::pg::bins::PgBin;
use crate::pg::datadir::{ClusterState, DataDir, PostmasterPid};
use crate::pg::session::{ConnTarget, Session};
use crate::progress::Progress;
use crate::repo::label::SetLabel;
use crate::stanza::recovery::RecoveryRequest;
use crate::stanza::server_target;
use crate::util::{fsx, ms_since};

/// The steps of the first half, in order.
const FIRST_HALF: [&str; 5] = ["pause", "stop_patroni", "stop_postgres", "restore", "start_postgres"];
/// The steps of the second half, in order.
const SECOND_HALF: [&str; 4] = ["promote", "start_patroni", "reinitialize_replicas", "resume"];

/// What to do.
#[derive(Debug, Clone)]
pub enum InPlace {
    /// Recover to the target (or continue a run that stopped).
    Recover {
        /// The target.
        request: RecoveryRequest,
        /// The set to start from.
        set: Option<SetLabel>,
        /// Go on although this member is a replica.
        replica: bool,
    },
    /// Hand the cluster back to Patroni after the check.
    Resume,
    /// Back out of a run that has not restored yet.
    Abort,
}

/// The state of a run, kept beside the data directory between steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    stanza: String,
    data: PathBuf,
    member: Member,
    request: RecoveryRequest,
    set: Option<SetLabel>,
    done: Vec<String>,
    began: DateTime<Utc>,
}

impl State {
    fn path(data: &Path) -> PathBuf {
        let name = data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        data.with_file_name(format!(".{name}.pgfork-pitr.json"))
    }

    fn load(data: &Path) -> Result<Option<State>> {
        let path = State::path(data);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::invalid(path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Writes the state, owned by the data directory's owner (who continues the run when root
    /// has switched to it).
    fn save(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::invalid("pitr state", e.to_string()))?;
        let path = State::path(&self.data);
        fsx::write_atomic(&path, &json, 0o600)?;
        if nix::unistd::geteuid().is_root() {
            let (uid, gid) = fsx::owner_of(&self.data)?;
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).at("chown", &path)?;
        }
        Ok(())
    }

    fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|d| d == step)
    }
}

/// One step as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The step.
    pub name: String,
    /// What it did.
    pub did: String,
    /// Milliseconds.
    pub ms: f64,
}

/// What a run of `pitr --in-place` did.
#[derive(Debug, Clone, Serialize)]
pub struct InPlaceReport {
    /// The data directory.
    pub data: PathBuf,
    /// The Patroni member, when Patroni manages the cluster.
    pub patroni: Option<String>,
    /// The steps this run took.
    pub steps: Vec<Step>,
    /// Where recovery stopped, once started.
    pub reached: Option<Reached>,
    /// What the DBA does next.
    pub next: String,
}

/// Runs `pitr --in-place`.
pub fn in_place(resolved: &Resolved, what: &InPlace, progress: &dyn Progress) -> Result<InPlaceReport> {
    let data = resolved.stanza.data.clone();
    check_caller(&data)?;
    // PostgreSQL, started or promoted by pgfork, has a clean environment: its archive-get reads what
    // pgfork has only in its own from a file beside the data directory, there for those steps only.
    let secrets = Secrets::from_environment(resolved);
    let resolved = &secrets::naming_file(resolved, &secrets, secrets::file_beside(&data));
    let mut run = Run { resolved, progress, steps: Vec::new(), reached: None, secrets };
    match (what, State::load(&data)?) {
        (InPlace::Recover { request, set, replica }, None) => {
            let member = Member::detect(resolved)?.ok_or_else(|| not_patroni(&data))?;
            let state = State {
                stanza: resolved.name.clone(),
                data: data.clone(),
                member,
                request: request.clone(),
                set: set.clone(),
                done: Vec::new(),
                began: Utc::now(),
            };
            run.preflight(&state, *replica)?;
            run.first_half(state)
        }
        (InPlace::Recover { .. }, Some(state)) if !state.is_done("start_postgres") => {
            progress.note("continuing the in-place recovery that stopped before it was done");
            run.first_half(state)
        }
        (InPlace::Recover { .. }, Some(_)) => Err(Error::refused(
            "this cluster was already recovered in place and waits to be handed back to Patroni",
            Some("check it, then run: pgfork pitr --in-place --resume".into()),
        )),
        (InPlace::Resume, Some(state)) if state.is_done("start_postgres") => run.second_half(state),
        (InPlace::Resume, Some(_)) => Err(Error::refused(
            "the in-place recovery stopped before the cluster was recovered",
            Some("run the same pgfork pitr --in-place command again to continue, or --abort to back out".into()),
        )),
        (InPlace::Abort, Some(state)) => run.abort(state),
        (InPlace::Resume | InPlace::Abort, None) => {
            Err(Error::refused(format!("no in-place recovery of {} is under way", data.display()), None))
        }
    }
    .map(|next| InPlaceReport {
        data: data.clone(),
        patroni: State::load(&data)
            .ok()
            .flatten()
            .map(|s| s.member.rest)
            .or_else(|| Member::detect(resolved).ok().flatten().map(|m| m.rest)),
        steps: run.steps,
        reached: run.reached,
        next,
    })
}

/// Root (who can stop and start Patroni's service) or the data directory's owner (who can when
/// Patroni runs as a plain process of theirs) may drive the run; each step acts as whom it must.
fn check_caller(data: &Path) -> Result<()> {
    let (uid, _) = fsx::owner_of(data)?;
    let me = nix::unistd::geteuid();
    if me.is_root() || me.as_raw() == uid {
        return Ok(());
    }
    Err(Error::refused(
        format!("{} belongs to uid {uid}, and pgfork runs as uid {me}", data.display()),
        Some("run pgfork pitr --in-place as root (or as the cluster's owner when Patroni runs as that user)".into()),
    ))
}

/// `command` run as the data directory's owner (PostgreSQL refuses root).
fn as_owner(mut command: std::process::Command, data: &Path) -> Result<std::process::Command> {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = fsx::owner_of(data)?;
    command.uid(uid).gid(gid);
    Ok(command)
}

fn not_patroni(data: &Path) -> Error {
    Error::refused(
        format!("no Patroni manages {}", data.display()),
        Some("for a cluster Patroni does not run, stop it and use pgfork restore --delta (or pg-pitr)".into()),
    )
}

struct Run<'a> {
    resolved: &'a Resolved,
    progress: &'a dyn Progress,
    steps: Vec<Step>,
    reached: Option<Reached>,
    secrets: Secrets,
}

impl Run<'_> {
    /// Writes the secrets file the recovery's restore_command names, the data directory owner's;
    /// removed when the returned handle is dropped.
    fn hand_secrets(&self, state: &State) -> Result<Option<SecretsFile>> {
        SecretsFile::write(&secrets::file_beside(&state.data), &self.secrets, Some(fsx::owner_of(&state.data)?))
    }

    fn rest(&self, member: &Member) -> Result<Rest> {
        let auth = member.auth.clone().or_else(|| member.config.as_deref().and_then(auth_from_config));
        Rest::new(&member.rest, auth)
    }

    /// Times `step`, says what it did, records it as done.
    fn step(
        &mut self,
        state: &mut State,
        name: &str,
        body: impl FnOnce(&mut Self, &State) -> Result<String>,
    ) -> Result<()> {
        if state.is_done(name) {
            return Ok(());
        }
        let started = Instant::now();
        let did = body(self, state).map_err(|e| interrupted(name, e))?;
        self.progress.note(&format!("{name}: {did}"));
        self.steps.push(Step { name: name.into(), did, ms: ms_since(started) });
        state.done.push(name.into());
        state.save()
    }

    /// Refusals before anything changes: this member must be the leader (unless `replica`), the
    /// cluster steady (no switchover scheduled, no member in transition), the WAL to the target
    /// archived.
    fn preflight(&mut self, state: &State, replica: bool) -> Result<()> {
        let rest = self.rest(&state.member)?;
        let me = rest.status()?;
        if me.role != "primary" && !replica {
            return Err(Error::refused(
                format!("this member ({}) is a {} in Patroni's cluster, not its leader", state.member.rest, me.role),
                Some("recover the leader in place, or pass --replica to recover this member on purpose".into()),
            ));
        }
        let cluster = rest.cluster()?;
        if cluster.scheduled_switchover.is_some() {
            return Err(Error::refused(
                "a switchover is scheduled in Patroni's cluster",
                Some("wait for it, or cancel it (DELETE /switchover)".into()),
            ));
        }
        if let Some(busy) = cluster.members.iter().find(|m| !matches!(m.state.as_str(), "running" | "streaming")) {
            return Err(Error::refused(
                format!("member {} is {}: a failover, switchover or rebuild may be under way", busy.name, busy.state),
                Some("wait until every member runs, then try again".into()),
            ));
        }
        let opts = self.restore_options(state, true);
        restore_as_caller(self.resolved, &opts, self.progress)?;
        let parent = state.data.parent().unwrap_or(Path::new("/"));
        let (uid, _) = fsx::owner_of(&state.data)?;
        let (parent_uid, _) = fsx::owner_of(parent)?;
        if parent_uid != uid {
            return Err(Error::refused(
                format!("{} does not belong to the owner of {}", parent.display(), state.data.display()),
                Some(
                    "the run keeps its state beside the data directory: give that directory to the cluster's owner"
                        .into(),
                ),
            ));
        }
        Ok(())
    }

    fn restore_options(&self, state: &State, dry_run: bool) -> RestoreOptions {
        RestoreOptions {
            set: state.set.clone(),
            data: state.data.clone(),
            delta: true,
            recovery: Some(state.request.clone()),
            dry_run,
            tablespace_locations: Default::default(),
            live_source: None,
            in_place: true,
            config_dir: None,
        }
    }

    fn first_half(&mut self, mut state: State) -> Result<String> {
        state.save()?;
        self.step(&mut state, FIRST_HALF[0], |run, state| {
            let rest = run.rest(&state.member)?;
            rest.set_pause(true)?;
            wait_paused(&rest, true)?;
            Ok("automatic failover paused on every member".into())
        })?;
        self.step(&mut state, FIRST_HALF[1], |_, state| stop_patroni(&state.member))?;
        // Root is needed no more in this half: the rest writes the cluster's files as its owner.
        become_owner_of(&state.data)?;
        self.step(&mut state, FIRST_HALF[2], |run, state| {
            let bins = run.bins(state)?;
            if PostmasterPid::running(&state.data).is_some() {
                let stop = bins.ctl_command("stop", &state.data, &["-m", "fast"]);
                bins.run_ctl(stop, "stop", &state.data)?;
                Ok("PostgreSQL stopped (fast)".into())
            } else {
                Ok("PostgreSQL was not running".into())
            }
        })?;
        self.step(&mut state, FIRST_HALF[3], |run, state| {
            let report = restore(run.resolved, &run.restore_options(state, false), run.progress)?;
            Ok(format!(
                "restored {} in place ({} written, {} unchanged)",
                report.label,
                crate::util::human_bytes(report.bytes_written),
                crate::util::human_bytes(report.bytes_unchanged)
            ))
        })?;
        let mut reached = None;
        self.step(&mut state, FIRST_HALF[4], |run, state| {
            let bins = run.bins(state)?;
            let log = state.data.with_extension("pgfork-pitr.log");
            let _handed = run.hand_secrets(state)?;
            bins.start(&state.data, &log, 3600)?;
            let at = wait_for_target(&run.target(state)?, &state.data, state.request.action)?;
            let did = format!("PostgreSQL started by hand, {} at {}", at.state, at.lsn);
            reached = Some(at);
            Ok(did)
        })?;
        self.reached = reached;
        Ok(format!(
            "check the recovered data (PostgreSQL runs outside Patroni, failover paused), then hand it back: \
             pgfork pitr --in-place --resume{}",
            self.stanza_arg()
        ))
    }

    fn second_half(&mut self, mut state: State) -> Result<String> {
        self.step(&mut state, SECOND_HALF[0], |run, state| {
            let data = DataDir::open(&state.data)?;
            if data.control()?.state == ClusterState::InProduction {
                return Ok("already promoted".into());
            }
            let bins = run.bins(state)?;
            // Promotion asks restore_command for the timeline history files after the target's.
            let _handed = run.hand_secrets(state)?;
            let promote = as_owner(bins.ctl_command("promote", &state.data, &["-t", "120"]), &state.data)?;
            bins.run_ctl(promote, "promote", &state.data)?;
            Ok("promoted: a new timeline starts at the target".into())
        })?;
        self.step(&mut state, SECOND_HALF[1], |run, state| {
            let launch = state.member.launch.as_ref().ok_or_else(|| {
                Error::refused(
                    "pgfork does not know how this member's Patroni was started",
                    Some("start Patroni yourself, then run --resume again".into()),
                )
            })?;
            start_patroni(launch, &state.data.with_extension("pgfork-patroni.log"))?;
            let rest = run.rest(&state.member)?;
            wait_until("this member holding Patroni's leader key", Duration::from_secs(180), || Ok(rest.is_primary()))?;
            Ok("Patroni started with PostgreSQL running; it holds the leader key".into())
        })?;
        // What is left talks to PostgreSQL and Patroni's REST API, as the cluster's owner.
        become_owner_of(&state.data)?;
        self.step(&mut state, SECOND_HALF[2], |run, state| {
            let session = Session::connect_retry(&run.target(state)?, Duration::from_secs(30))?;
            session.query("CHECKPOINT", &[])?;
            let rest = run.rest(&state.member)?;
            let cluster = rest.cluster()?;
            let me = rest.status()?;
            let replicas: Vec<_> = cluster.members.iter().filter(|m| m.role != "leader").collect();
            for replica in &replicas {
                let theirs = rest.member(&replica.rest())?;
                theirs.reinitialize()?;
                wait_until(
                    &format!("replica {} streaming on the new timeline", replica.name),
                    Duration::from_secs(600),
                    || {
                        let status = theirs.status()?;
                        Ok(status.state == "running"
                            && status.replication_state.as_deref() == Some("streaming")
                            && status.timeline == me.timeline)
                    },
                )?;
            }
            Ok(format!("{} replica(s) reinitialised from the recovered leader and streaming", replicas.len()))
        })?;
        self.step(&mut state, SECOND_HALF[3], |run, state| {
            let rest = run.rest(&state.member)?;
            rest.set_pause(false)?;
            wait_paused(&rest, false)?;
            Ok("automatic failover resumed".into())
        })?;
        let _ = std::fs::remove_file(State::path(&state.data));
        Ok("done: the cluster runs under Patroni again, recovered to the target; take a full backup".into())
    }

    fn abort(&mut self, mut state: State) -> Result<String> {
        if state.is_done("restore") {
            return Err(Error::refused(
                "the data directory was already recovered to the target: there is nothing to go back to",
                Some("finish with pgfork pitr --in-place --resume, or restore another target in place".into()),
            ));
        }
        let bins = self.bins(&state)?;
        if PostmasterPid::running(&state.data).is_none() {
            let log = state.data.with_extension("pgfork-pitr.log");
            let mut start = as_owner(bins.start_command(&state.data, &log, 600), &state.data)?;
            let output = start.output().at("run", "pg_ctl")?;
            crate::pg::bins::check_started(&state.data, &log, &output)?;
            self.steps.push(Step {
                name: "start_postgres".into(),
                did: "PostgreSQL started again as it was".into(),
                ms: 0.0,
            });
        }
        if state.is_done("stop_patroni")
            && let Some(launch) = &state.member.launch
        {
            start_patroni(launch, &state.data.with_extension("pgfork-patroni.log"))?;
            let rest = self.rest(&state.member)?;
            wait_until("this member back under Patroni", Duration::from_secs(180), || {
                Ok(rest.status()?.state == "running")
            })?;
            self.steps.push(Step { name: "start_patroni".into(), did: "Patroni started again".into(), ms: 0.0 });
        }
        let rest = self.rest(&state.member)?;
        rest.set_pause(false)?;
        wait_paused(&rest, false)?;
        self.steps.push(Step { name: "resume".into(), did: "automatic failover resumed".into(), ms: 0.0 });
        state.done.clear();
        let _ = std::fs::remove_file(State::path(&state.data));
        Ok("backed out: the cluster runs under Patroni as before".into())
    }

    fn bins(&self, state: &State) -> Result<PgBin> {
        let data = DataDir::open(&state.data)?;
        PgBin::locate(data.major(), self.resolved.stanza.bindir.as_deref(), Some(&state.data))
    }

    fn target(&self, state: &State) -> Result<ConnTarget> {
        let user = crate::ops::pitr::owner_name(&state.data);
        Ok(server_target(self.resolved, &state.data, &user))
    }

    fn stanza_arg(&self) -> String {
        format!(" --stanza {}", self.resolved.name)
    }
}

/// A step that failed: what to do about it.
fn interrupted(step: &str, error: Error) -> Error {
    Error::refused(
        format!("in-place recovery stopped at step {step}: {error}"),
        Some("fix the cause and run the same command again to continue from there, or pgfork pitr --in-place --abort to back out (before the restore)".into()),
    )
}

/// Waits until every member says paused (or, with `paused` false, none does).
fn wait_paused(rest: &Rest, paused: bool) -> Result<()> {
    let what = if paused { "every member paused" } else { "no member paused" };
    wait_until(what, Duration::from_secs(60), || {
        let cluster = rest.cluster()?;
        for member in &cluster.members {
            if rest.member(&member.rest())?.status()?.pause.unwrap_or(false) != paused {
                return Ok(false);
            }
        }
        Ok(true)
    })
}

/// Stops this member's Patroni (paused, it leaves PostgreSQL running) and waits until it is gone.
fn stop_patroni(member: &Member) -> Result<String> {
    match (&member.launch, member.pid) {
        (Some(Launch::Unit(unit)), _) => {
            let status = std::process::Command::new("systemctl").args(["stop", unit]).status().at("run", "systemctl")?;
            if !status.success() {
                return Err(Error::invalid(format!("systemctl stop {unit}"), status.to_string()));
            }
            Ok(format!("Patroni stopped (systemctl stop {unit}); PostgreSQL left running"))
        }
        (_, Some(pid)) => {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            wait_until("Patroni to exit", Duration::from_secs(90), || Ok(has_exited(pid.as_raw())))?;
            Ok(format!("Patroni (pid {pid}) stopped; PostgreSQL left running"))
        }
        _ => Err(Error::refused(
            "no running Patroni process was found for this member",
            Some("stop Patroni on this member yourself (its PostgreSQL stays up while paused), then run the same command again".into()),
        )),
    }
}

/// Whether process `pid` is gone or a zombie (exited, its parent not having reaped it yet).
fn has_exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain any byte.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// Starts Patroni again as it was started (a plain process logging to `log`).
fn start_patroni(launch: &Launch, log: &Path) -> Result<()> {
    match launch {
        Launch::Unit(unit) => {
            let status =
                std::process::Command::new("systemctl").args(["start", unit]).status().at("run", "systemctl")?;
            if !status.success() {
                return Err(Error::invalid(format!("systemctl start {unit}"), status.to_string()));
            }
            Ok(())
        }
        Launch::Process { argv, cwd, env, uid, gid } => {
            use std::os::unix::process::CommandExt;
            let Some((program, args)) = argv.split_first() else {
                return Err(Error::invalid("Patroni's command line", "empty"));
            };
            let log = log.to_path_buf();
            let out = std::fs::File::create(&log).at("create", &log)?;
            if nix::unistd::geteuid().is_root() {
                std::os::unix::fs::chown(&log, Some(*uid), Some(*gid)).at("chown", &log)?;
            }
            let mut command = std::process::Command::new(program);
            command
                .args(args)
                .current_dir(cwd)
                .env_clear()
                .envs(env.iter().filter_map(|kv| kv.split_once('=')))
                .uid(*uid)
                .gid(*gid)
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone().at("open", &log)?)
                .stderr(out);
            command.spawn().at("start", program)?;
            Ok(())
        }
    }
}

/// The REST credentials in a Patroni configuration.
fn auth_from_config(config: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(config).ok()?;
    let doc = yaml_rust2::YamlLoader::load_from_str(&text).ok()?.into_iter().next()?;
    let auth = &doc["restapi"]["authentication"];
    Some((auth["username"].as_str()?.to_string(), auth["password"].as_str()?.to_string()))
}
