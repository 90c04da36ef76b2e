//! A real Patroni cluster for the tests, as Pigsty runs one: etcd (v3) on loopback and two members
//! (a leader and a streaming replica) of PostgreSQL 15, each a `patroni` process of the postgres
//! user, all on free ports in one temporary directory; everything killed and removed on drop.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgfork::patroni::rest::{Rest, wait_until};

use super::{PG_USER, PgDir, PgVersion, chown_postgres, free_port};

/// The venv holding Patroni (scripts/install-deps makes it).
pub fn venv() -> PathBuf {
    PathBuf::from(std::env::var("PATRONI_VENV").unwrap_or_else(|_| "/opt/pgfork/patroni".into()))
}

/// Whether Patroni and etcd are installed; outside CI their absence skips loudly.
pub fn available(what: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let missing: Vec<String> = [venv().join("bin/patroni"), PathBuf::from("/usr/bin/etcd")]
        .into_iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(!ci, "{what}: CI=true but {} missing (run scripts/install-deps)", missing.join(", "));
    eprintln!("\n!!! SKIPPED {what}: {} missing; run scripts/install-deps !!!\n", missing.join(", "));
    false
}

/// One Patroni member.
pub struct Member {
    pub name: String,
    pub data: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub rest_port: u16,
}

impl Member {
    /// Its REST API.
    pub fn rest(&self) -> Rest {
        Rest::new(&format!("http://127.0.0.1:{}", self.rest_port), None).unwrap()
    }
}

/// etcd and two Patroni members.
pub struct PatroniCluster {
    pub scope: String,
    pub version: PgVersion,
    pub root: PgDir,
    pub socket_dir: PgDir,
    pub members: Vec<Member>,
    etcd: Option<Child>,
    etcd_port: u16,
    /// The Patroni processes this harness started (pgfork may start others).
    children: Vec<Child>,
}

impl PatroniCluster {
    /// The cluster's directories and ports, nothing started yet (so that what the cluster's
    /// configuration names, such as a pgfork configuration, can be written first).
    pub fn new(scope: &str) -> PatroniCluster {
        let root = PgDir::new(None, "patroni-");
        let members = (1..=2)
            .map(|n| {
                let dir = root.path().join(format!("n{n}"));
                Member {
                    name: format!("{scope}-{n}"),
                    data: dir.join("data"),
                    config: dir.join("patroni.yml"),
                    port: free_port(),
                    rest_port: free_port(),
                }
            })
            .collect();
        PatroniCluster {
            scope: scope.to_string(),
            version: PgVersion::get(15),
            root,
            socket_dir: PgDir::new(None, "ps-"),
            members,
            etcd: None,
            etcd_port: free_port(),
            children: Vec::new(),
        }
    }

    /// Starts etcd and member 1, waits until it is the leader, then member 2 until it streams.
    /// `archive_command` goes into the cluster's dynamic configuration.
    pub fn start(&mut self, archive_command: &str) {
        let peer_port = free_port();
        let etcd_dir = self.root.path().join("etcd");
        std::fs::create_dir_all(&etcd_dir).unwrap();
        let url = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{peer_port}");
        let etcd = Command::new("etcd")
            .args(["--name", "default", "--data-dir"])
            .arg(etcd_dir.join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(etcd_dir.join("etcd.log")).unwrap())
            .process_group(0)
            .spawn()
            .expect("start etcd");
        self.etcd = Some(etcd);
        wait_until("etcd to answer", Duration::from_secs(60), || Ok(self.etcdctl(&["endpoint", "health"]).is_some()))
            .unwrap();
        let mut children = Vec::new();
        for member in &self.members {
            self.write_member(member, archive_command);
            children.push(self.spawn_patroni(member));
            let rest = member.rest();
            if member.name.ends_with("-1") {
                wait_until("member 1 to lead", Duration::from_secs(120), || Ok(rest.is_primary()))
                    .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail(member)));
            } else {
                wait_until("member 2 to stream", Duration::from_secs(180), || {
                    let status = rest.status()?;
                    Ok(status.role == "replica" && status.replication_state.as_deref() == Some("streaming"))
                })
                .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail(member)));
            }
        }
        self.children = children;
    }

    fn write_member(&self, member: &Member, archive_command: &str) {
        let dir = member.config.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(dir.join("pglog")).unwrap();
        let quoted = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let yaml = format!(
            "scope: {scope}\nnamespace: /service/\nname: {name}\n\
             restapi:\n  listen: 127.0.0.1:{rest}\n  connect_address: 127.0.0.1:{rest}\n\
             etcd3:\n  hosts: 127.0.0.1:{etcd}\n\
             bootstrap:\n  dcs:\n    ttl: 20\n    loop_wait: 2\n    retry_timeout: 5\n    maximum_lag_on_failover: 1048576\n\
             \x20   postgresql:\n      use_pg_rewind: true\n      use_slots: true\n      parameters:\n\
             \x20       wal_level: replica\n        hot_standby: 'on'\n        wal_log_hints: 'on'\n\
             \x20       max_wal_senders: 10\n        max_replication_slots: 10\n        wal_keep_size: 128MB\n\
             \x20       archive_mode: 'on'\n        archive_command: {archive}\n\
             \x20 initdb:\n    - data-checksums\n    - encoding: UTF8\n    - locale: C.UTF-8\n\
             postgresql:\n  listen: 127.0.0.1:{port}\n  connect_address: 127.0.0.1:{port}\n\
             \x20 data_dir: {data}\n  bin_dir: {bin}\n  pgpass: {dir}/pgpass\n  use_pg_rewind: true\n\
             \x20 basebackup:\n    - checkpoint: fast\n\
             \x20 authentication:\n    superuser:\n      username: postgres\n      password: postgres\n\
             \x20   replication:\n      username: replicator\n      password: replicator\n\
             \x20   rewind:\n      username: postgres\n      password: postgres\n\
             \x20 parameters:\n    unix_socket_directories: {socket}\n    logging_collector: 'on'\n\
             \x20   log_directory: {log}\n    log_filename: postgresql.log\n\
             \x20 pg_hba:\n    - local all all trust\n    - local replication all trust\n\
             \x20   - host all all 127.0.0.1/32 trust\n    - host replication all 127.0.0.1/32 trust\n",
            scope = self.scope,
            name = member.name,
            rest = member.rest_port,
            etcd = self.etcd_port,
            archive = quoted(archive_command),
            port = member.port,
            data = member.data.display(),
            bin = self.version.bindir.display(),
            dir = dir.display(),
            socket = quoted(&self.socket_dir.path().display().to_string()),
            log = quoted(&dir.join("pglog").display().to_string()),
        );
        std::fs::write(&member.config, yaml).unwrap();
        for path in [&dir, &dir.join("pglog"), &member.config] {
            chown_postgres(path);
        }
    }

    /// Starts `member`'s Patroni as the postgres user, logging to `patroni.log` beside its data.
    fn spawn_patroni(&self, member: &Member) -> Child {
        let user = nix::unistd::User::from_name(PG_USER).unwrap().unwrap();
        let log = std::fs::File::create(member.config.with_file_name("patroni.log")).unwrap();
        Command::new(venv().join("bin/patroni"))
            .arg(&member.config)
            .current_dir(member.config.parent().unwrap())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", member.config.parent().unwrap())
            .uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start patroni")
    }

    /// `etcdctl <args>` against this cluster's etcd; stdout when it succeeded.
    pub fn etcdctl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=127.0.0.1:{}", self.etcd_port))
            .args(args)
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The keys etcd holds for this cluster.
    pub fn keys(&self) -> Vec<String> {
        let out = self.etcdctl(&["get", "--prefix", "--keys-only", &format!("/service/{}/", self.scope)]).unwrap();
        out.lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
    }

    /// The end of a member's Patroni log and PostgreSQL log.
    pub fn log_tail(&self, member: &Member) -> String {
        let dir = member.config.parent().unwrap();
        [dir.join("patroni.log"), dir.join("pglog/postgresql.log")]
            .iter()
            .map(|p| pgfork::pg::bins::log_tail(p, 30))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `psql` on member `n` (1-based).
    pub fn psql(&self, n: usize, sql: &str) -> String {
        super::psql(&self.version, self.socket_dir.path(), self.members[n - 1].port, "postgres", sql)
    }

    /// The pids of every Patroni process of this cluster (found by their configuration's path).
    pub fn patroni_pids(&self) -> Vec<i32> {
        let root = self.root.path().display().to_string();
        let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
        procs
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let text = String::from_utf8_lossy(&cmdline);
                (text.contains("patroni") && text.contains(&root)).then_some(pid)
            })
            .collect()
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for pid in self.patroni_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        for member in &self.members {
            if member.data.join("postmaster.pid").exists() {
                let pg_ctl = self.version.bin("pg_ctl");
                let data = member.data.display().to_string();
                super::run_as_postgres(&pg_ctl, &["stop", "-m", "immediate", "-D", &data]);
            }
        }
        if let Some(etcd) = &mut self.etcd {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
    }
}
