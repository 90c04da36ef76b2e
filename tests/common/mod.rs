//! Test harness: real PostgreSQL clusters (15 and 18) in temporary directories, run as the
//! `postgres` user on a Unix socket in a short temporary directory, stopped and removed on drop.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use pgfork::pg::session::{ConnTarget, Session};

/// The OS user that runs servers.
pub const PG_USER: &str = "postgres";

/// A PostgreSQL installation.
#[derive(Debug, Clone)]
pub struct PgVersion {
    pub major: u32,
    pub bindir: PathBuf,
}

impl PgVersion {
    /// The installation of `major`: `PG<major>_BINDIR`, else the location scripts/install-deps uses.
    pub fn get(major: u32) -> PgVersion {
        let default = match major {
            15 => "/usr/lib/postgresql/15/bin".to_string(),
            other => format!("/opt/pgfork/pg{other}/bin"),
        };
        let bindir = std::env::var(format!("PG{major}_BINDIR")).unwrap_or(default);
        PgVersion { major, bindir: PathBuf::from(bindir) }
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

/// Whether tests that need root, servers and mounts can run. Outside root they are skipped with a
/// loud message; under CI=true that is a failure instead.
pub fn can_run(what: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if !nix::unistd::Uid::effective().is_root() {
        assert!(!ci, "{what}: CI=true but not running as root");
        eprintln!("\n!!! SKIPPED {what}: needs root (runs servers as postgres, mounts file systems) !!!\n");
        return false;
    }
    for major in [15, 18] {
        let postgres = PgVersion::get(major).bin("postgres");
        if !postgres.exists() {
            assert!(!ci, "{what}: CI=true but {} is missing (run scripts/install-deps)", postgres.display());
            eprintln!("\n!!! SKIPPED {what}: {} missing; run scripts/install-deps !!!\n", postgres.display());
            return false;
        }
    }
    true
}

/// Runs `program args` as the postgres user and returns its output.
pub fn run_as_postgres(program: &Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", PG_USER, "--"])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run runuser")
}

/// Like [`run_as_postgres`] but panics on failure.
pub fn must_run_as_postgres(program: &Path, args: &[&str]) -> String {
    let out = run_as_postgres(program, args);
    assert!(
        out.status.success(),
        "{} {:?} failed: {}\n{}",
        program.display(),
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A port no other test of this process uses and nothing listens on.
pub fn free_port() -> u16 {
    let mut used = PORTS.lock().unwrap();
    loop {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

/// A directory the postgres user owns, removed on drop.
pub struct PgDir {
    path: PathBuf,
}

impl PgDir {
    /// Creates a fresh directory under `base` (or the system temp dir), owned by postgres.
    pub fn new(base: Option<&Path>, prefix: &str) -> PgDir {
        let base = base.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        let path = tempfile::Builder::new().prefix(prefix).tempdir_in(base).unwrap().keep();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_postgres(&path);
        PgDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PgDir {
    fn drop(&mut self) {
        if std::env::var_os("PGFORK_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Gives `path` to the postgres user.
pub fn chown_postgres(path: &Path) {
    let user = nix::unistd::User::from_name(PG_USER).unwrap().expect("postgres user exists");
    nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
}

/// A PostgreSQL cluster for one test.
pub struct Cluster {
    pub version: PgVersion,
    pub root: PgDir,
    pub data: PathBuf,
    pub socket_dir: PgDir,
    pub port: u16,
    running: bool,
}

impl Cluster {
    /// initdb (with data checksums) under `base`, configured to listen only on its own socket.
    pub fn init(version: &PgVersion, base: Option<&Path>) -> Cluster {
        let root = PgDir::new(base, "pgf-");
        let socket_dir = PgDir::new(Some(Path::new("/tmp")), "pgs-");
        let data = root.path().join("data");
        let data_text = data.to_str().unwrap();
        must_run_as_postgres(
            &version.bin("initdb"),
            &["-D", data_text, "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C", "-k", "-N"],
        );
        let port = free_port();
        let conf = format!(
            "\nport = {port}\nunix_socket_directories = '{}'\nlisten_addresses = ''\nmax_wal_size = 256MB\n\
             synchronous_commit = off\nlog_min_messages = warning\n",
            socket_dir.path().display()
        );
        append(&data.join("postgresql.conf"), &conf);
        Cluster { version: version.clone(), root, data, socket_dir, port, running: false }
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) {
        self.start_no_wait_check();
        self.session("postgres");
    }

    /// Starts the server without waiting for a read-write session (it may be in recovery).
    pub fn start_no_wait_check(&mut self) {
        let log = self.root.path().join("server.log");
        must_run_as_postgres(
            &self.version.bin("pg_ctl"),
            &["start", "-w", "-t", "120", "-D", self.data.to_str().unwrap(), "-l", log.to_str().unwrap()],
        );
        self.running = true;
    }

    /// Stops the server cleanly.
    pub fn stop(&mut self) {
        must_run_as_postgres(
            &self.version.bin("pg_ctl"),
            &["stop", "-w", "-m", "fast", "-D", self.data.to_str().unwrap()],
        );
        self.running = false;
    }

    /// The path of `table`'s first segment file in `db`, relative to the data directory.
    pub fn relation_path(&self, db: &str, table: &str) -> String {
        self.psql(db, &format!("SELECT pg_relation_filepath('{table}')"))
    }

    pub fn target(&self, db: &str) -> ConnTarget {
        ConnTarget::socket(self.socket_dir.path(), self.port, PG_USER, db)
    }

    /// A client session to `db`.
    pub fn session(&self, db: &str) -> Session {
        Session::connect_retry(&self.target(db), Duration::from_secs(30)).expect("connect to test cluster")
    }

    /// Runs SQL through psql and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql(&self.version, self.socket_dir.path(), self.port, db, sql)
    }

    /// pgbench -i at `scale` in `db`.
    pub fn pgbench_init(&self, db: &str, scale: u32) {
        let scale = scale.to_string();
        let mut args = self.conn_flags();
        args.extend(["-i", "-q", "-s", &scale, db]);
        must_run_as_postgres(&self.version.bin("pgbench"), &args);
    }

    /// Starts pgbench in the background with extra arguments.
    pub fn pgbench(&self, db: &str, args: &[&str]) -> Child {
        Command::new("runuser")
            .args(["-u", PG_USER, "--"])
            .arg(self.version.bin("pgbench"))
            .args(self.conn_flags())
            .args(args)
            .arg(db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbench")
    }

    fn conn_flags(&self) -> Vec<&str> {
        let host = self.socket_dir.path().to_str().unwrap();
        // Leak the port string: tests are short-lived processes.
        let port: &'static str = Box::leak(self.port.to_string().into_boxed_str());
        vec!["-h", host, "-p", port, "-U", PG_USER]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = run_as_postgres(
                &self.version.bin("pg_ctl"),
                &["stop", "-w", "-m", "immediate", "-D", self.data.to_str().unwrap()],
            );
        }
    }
}

/// Runs SQL through psql on a socket.
pub fn psql(version: &PgVersion, socket_dir: &Path, port: u16, db: &str, sql: &str) -> String {
    let port = port.to_string();
    must_run_as_postgres(
        &version.bin("psql"),
        &[
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            socket_dir.to_str().unwrap(),
            "-p",
            &port,
            "-U",
            PG_USER,
            "-d",
            db,
            "-c",
            sql,
        ],
    )
    .trim()
    .to_string()
}

/// Appends text to a file.
pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// A server started on a fork made by a test; stopped on drop.
pub struct RunningFork {
    pub version: PgVersion,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
}

impl RunningFork {
    /// The server of `data`, started on `port` with its socket beside `source`'s.
    pub fn beside(source: &Cluster, data: &Path, port: u16) -> RunningFork {
        RunningFork {
            version: source.version.clone(),
            data: data.to_path_buf(),
            socket_dir: source.socket_dir.path().to_path_buf(),
            port,
        }
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql(&self.version, &self.socket_dir, self.port, db, sql)
    }

    /// pg_amcheck --heapallindexed on every database; panics with its output on failure.
    pub fn amcheck(&self) {
        let port = self.port.to_string();
        must_run_as_postgres(
            &self.version.bin("pg_amcheck"),
            &[
                "-h",
                self.socket_dir.to_str().unwrap(),
                "-p",
                &port,
                "-U",
                PG_USER,
                "--all",
                "--install-missing",
                "--heapallindexed",
            ],
        );
    }
}

impl Drop for RunningFork {
    fn drop(&mut self) {
        let _ = run_as_postgres(
            &self.version.bin("pg_ctl"),
            &["stop", "-w", "-m", "immediate", "-D", self.data.to_str().unwrap()],
        );
    }
}

/// The pgfork binary at a path the postgres user can run (archive_command and restore_command run
/// as the server's user; the build directory may be out of its reach). One directory per build
/// directory, so that the tests of two checkouts on one machine never run each other's binary.
pub fn server_side_pgfork() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut build = std::collections::hash_map::DefaultHasher::new();
        env!("CARGO_BIN_EXE_pgfork").hash(&mut build);
        let root = PathBuf::from("/tmp/pgfork-test-bin");
        let dir = root.join(format!("{:016x}", build.finish()));
        std::fs::create_dir_all(&dir).unwrap();
        for level in [&root, &dir] {
            std::fs::set_permissions(level, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let target = dir.join("pgfork");
        let tmp = dir.join(format!(".pgfork.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(env!("CARGO_BIN_EXE_pgfork"), &tmp).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_pgfork"), &tmp).unwrap();
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        target
    })
    .clone()
}

/// Runs the pgfork binary with `args` (as root; it switches to the data directory's owner).
pub fn pgfork(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgfork")).args(args).stdin(Stdio::null()).output().expect("run pgfork")
}

/// Runs pgfork and panics unless it succeeds; returns stdout.
pub fn pgfork_ok(args: &[&str]) -> String {
    succeeded(args, pgfork(args))
}

/// Panics with both outputs unless pgfork `args` succeeded; returns stdout.
pub fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "pgfork {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Defines one test per PostgreSQL version calling `body(&PgVersion)`.
#[macro_export]
macro_rules! on_each_version {
    ($name15:ident, $name18:ident, $body:path) => {
        #[test]
        fn $name15() {
            if common::can_run(stringify!($name15)) {
                $body(&common::PgVersion::get(15));
            }
        }
        #[test]
        fn $name18() {
            if common::can_run(stringify!($name18)) {
                $body(&common::PgVersion::get(18));
            }
        }
    };
}

/// A started PostgreSQL 18 cluster with pgbench data at `scale`, and a stanza created for it in a
/// fresh repository (encrypted with `passphrase` when given).
pub fn cluster_with_stanza(scale: u32, passphrase: Option<&str>) -> (Cluster, RepoSetup) {
    let mut cluster = Cluster::init(&PgVersion::get(18), None);
    cluster.start();
    cluster.pgbench_init("postgres", scale);
    let repo = RepoSetup::new(&cluster, passphrase, "");
    repo.ok(&["stanza-create"]);
    (cluster, repo)
}

pub mod heartbeat;
pub mod mount;
pub mod patroni;
pub mod pgbackrest;
pub mod s3;
pub mod scenarios;
pub mod stall_proxy;

/// A repository directory and configuration for a cluster, for the backup commands.
pub struct RepoSetup {
    pub dir: PgDir,
    pub config: PathBuf,
    pub passphrase: Option<String>,
}

impl RepoSetup {
    /// A repository (encrypted when `passphrase` is given) with one stanza `main` for `cluster`.
    pub fn new(cluster: &Cluster, passphrase: Option<&str>, extra_repo: &str) -> RepoSetup {
        let socket = cluster.socket_dir.path().display().to_string();
        RepoSetup::new_for(&cluster.data, cluster.port, &socket, &cluster.version, passphrase, extra_repo)
    }

    /// The same for a cluster in `data` served on `port` at `socket`.
    pub fn new_for(
        data: &Path,
        port: u16,
        socket: &str,
        version: &PgVersion,
        passphrase: Option<&str>,
        extra_repo: &str,
    ) -> RepoSetup {
        let dir = PgDir::new(None, "repo-");
        let repo = dir.path().join("repo");
        let cipher = if passphrase.is_some() { "aes-256-gcm" } else { "none" };
        let pass_line = match passphrase {
            Some(pass) => {
                let file = dir.path().join("passphrase");
                std::fs::write(&file, pass).unwrap();
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
                chown_postgres(&file);
                format!("passphrase_file = \"{}\"\n", file.display())
            }
            None => String::new(),
        };
        let text = format!(
            "[repo.main]\npath = \"{}\"\ncipher = \"{cipher}\"\nretention_full = 3\n{pass_line}{extra_repo}\n\n[stanza.main]\ndata = \"{}\"\nport = {}\nsocket = \"{}\"\nbindir = \"{}\"\n",
            repo.display(),
            data.display(),
            port,
            socket,
            version.bindir.display()
        );
        let config = dir.path().join("pgfork.toml");
        std::fs::write(&config, text).unwrap();
        RepoSetup { dir, config, passphrase: passphrase.map(str::to_string) }
    }

    /// From now on, commands read a copy of the configuration without `passphrase_file` and
    /// `credentials_file`: the passphrase reaches pgfork only through `PGFORK_PASSPHRASE` in its
    /// environment (S3 keys through `AWS_*`, which the caller sets). A cluster's archive_command
    /// keeps the configuration it was given.
    pub fn secrets_from_env_only(&mut self) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let secret_file = |l: &str| l.starts_with("passphrase_file") || l.starts_with("credentials_file");
        let kept: String = text.lines().filter(|l| !secret_file(l)).map(|l| format!("{l}\n")).collect();
        let config = self.dir.path().join("pgfork-env-only.toml");
        std::fs::write(&config, kept).unwrap();
        self.config = config;
    }

    /// Appends `text` to the configuration: lines of the stanza (its table is the last), then any
    /// further tables.
    pub fn append_config(&self, text: &str) {
        append(&self.config, text);
    }

    /// Turns archiving into this repository on in `cluster`'s configuration (before it starts).
    pub fn enable_archiving(&self, cluster: &Cluster) {
        let conf = format!(
            "archive_mode = on\narchive_command = '{} archive-push %p --config {}'\n",
            server_side_pgfork().display(),
            self.config.display()
        );
        append(&cluster.data.join("postgresql.conf"), &conf);
    }

    pub fn repo_path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// `pgfork <args> --config <config>` with the passphrase in the environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(server_side_pgfork());
        cmd.args(args).arg("--config").arg(&self.config).stdin(Stdio::null());
        match &self.passphrase {
            Some(p) => cmd.env("PGFORK_PASSPHRASE", p),
            None => cmd.env_remove("PGFORK_PASSPHRASE"),
        };
        cmd
    }

    /// `pgfork --config pgfork.toml <args>` run from the configuration's directory: the path is
    /// relative, as a user in that directory would give it.
    pub fn command_relative(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(server_side_pgfork());
        cmd.current_dir(self.dir.path()).arg("--config").arg(self.config.file_name().unwrap()).args(args);
        cmd.stdin(Stdio::null());
        match &self.passphrase {
            Some(p) => cmd.env("PGFORK_PASSPHRASE", p),
            None => cmd.env_remove("PGFORK_PASSPHRASE"),
        };
        cmd
    }

    /// Runs [`RepoSetup::command`] to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run pgfork")
    }

    /// `pgfork info --output json`, parsed.
    pub fn info(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["info", "--output", "json"])).unwrap()
    }

    /// Like [`RepoSetup::run`], panicking on failure; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.run(args))
    }

    /// Runs a backup and returns its JSON report.
    pub fn backup(&self, kind: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["backup", "--type", kind, "--json"])).unwrap()
    }
}

impl RepoSetup {
    /// Restores `label` (the newest when `None`) into a fresh directory under `base`, starts it on
    /// a free port next to `source`'s socket, and returns it running (stopped on drop).
    pub fn restore_started(&self, source: &Cluster, label: Option<&str>, base: Option<&Path>) -> (PgDir, RunningFork) {
        let dir = PgDir::new(base, "restore-");
        let data = dir.path().join("data");
        let mut args = vec!["restore", "--data", data.to_str().unwrap()];
        if let Some(label) = label {
            args.extend(["--set", label]);
        }
        self.ok(&args);
        let fork = start_copy(source, &data);
        (dir, fork)
    }
}

/// Starts `data`, a restored or forked copy of `source`, on a free port beside `source`'s socket
/// (log in `<data>.log`); stopped on drop.
pub fn start_copy(source: &Cluster, data: &Path) -> RunningFork {
    let port = free_port();
    append(&data.join("postgresql.auto.conf"), &format!("port = {port}\n"));
    let log = data.with_extension("log");
    let out = run_as_postgres(
        &source.version.bin("pg_ctl"),
        &["start", "-w", "-t", "120", "-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()],
    );
    if !out.status.success() {
        let server_log = std::fs::read_to_string(&log).unwrap_or_default();
        panic!(
            "pg_ctl start -D {} failed: {}\nserver log:\n{server_log}",
            data.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    RunningFork::beside(source, data, port)
}

/// `pgfork fork <id>` of `source` into `dst` on `dst_port` (with -y and the source's binaries),
/// followed by `extra`.
pub fn fork_args(id: u32, source: &Cluster, dst: &Path, dst_port: u16, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "fork".into(),
        id.to_string(),
        "-d".into(),
        source.data.display().to_string(),
        "-D".into(),
        dst.display().to_string(),
        "-p".into(),
        source.port.to_string(),
        "-P".into(),
        dst_port.to_string(),
        "--bindir".into(),
        source.version.bindir.display().to_string(),
        "-y".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The manifest of a repository kept with `compression = "none"` and `cipher = "none"`: JSON after
/// the 32-byte object header.
pub fn plain_manifest(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"PGFO", "{} is not a pgfork object", path.display());
    serde_json::from_slice(&bytes[32..]).unwrap()
}

/// Borrows a list of owned arguments.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `pgfork clone-db meta meta_dev` against `cluster` (as the postgres user, JSON report), then `extra`.
pub fn clone_db_args(cluster: &Cluster, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["clone-db", "meta", "meta_dev", "--host"].iter().map(|s| s.to_string()).collect();
    args.push(cluster.socket_dir.path().display().to_string());
    args.extend([
        "-p".to_string(),
        cluster.port.to_string(),
        "-U".to_string(),
        PG_USER.to_string(),
        "--json".to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}
