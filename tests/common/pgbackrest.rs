//! Real pgBackRest 2.45 repositories for the tests, made by pgBackRest itself from a PostgreSQL 15
//! cluster that archives into them: a full, a diff and an incr set between pgbench runs, then a
//! recorded point-in-time target with the state of the data at that moment, more changes, and
//! the WAL up to the end archived. Also what the tests need around them: pgBackRest and pgfork
//! commands on a repository, a `pgfork mount` process, listings and byte flips.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// The stanza name, pgBackRest's and pgfork's.
pub const STANZA: &str = "demo";

/// pgBackRest's `repo1-cipher-pass` of the encrypted variants.
pub const CIPHER_PASS: &str = "pgfork-test-pgbackrest-pass";

/// What the point-in-time tests compare: pgbench's history and balances and the newest marker.
pub const QUERY: &str = "SELECT (SELECT count(*) FROM pgbench_history) || ':' || (SELECT sum(abalance) FROM \
                         pgbench_accounts) || ':' || (SELECT max(id) FROM marker)";

/// pgbench transactions (two clients) between the sets.
const TRANSACTIONS: &str = "150";

/// How pgBackRest stores the repository.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// `compress-type`: none, gz, lz4, zst, bz2.
    pub compress: &'static str,
    /// `repo1-bundle`.
    pub bundle: bool,
    /// `repo1-bundle-limit` when not pgBackRest's default (files up to this size go into bundles).
    pub bundle_limit: Option<&'static str>,
    /// `repo1-cipher-type=aes-256-cbc`.
    pub cipher: bool,
    /// Block incremental (`beta=y`, `repo1-block=y`).
    pub block: bool,
}

impl Variant {
    /// The extension of a file stored on its own (not bundled, not block incremental).
    pub fn extension(&self) -> &'static str {
        match self.compress {
            "gz" => ".gz",
            "lz4" => ".lz4",
            "zst" => ".zst",
            "bz2" => ".bz2",
            _ => "",
        }
    }
}

/// Where the tests put clusters, repositories and restores: /dev/shm when it has room, else the
/// temporary directory. pgBackRest syncs every file and directory it writes, which on a busy disk
/// makes a restore of a small cluster take ten seconds instead of half a second.
pub fn fast_base() -> Option<PathBuf> {
    let shm = Path::new("/dev/shm");
    let stat = nix::sys::statvfs::statvfs(shm).ok()?;
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    (free >= 4 << 30).then(|| shm.to_path_buf())
}

/// Whether pgBackRest can run here; without it the test is skipped loudly (a failure under CI).
pub fn pgbackrest_available(what: &str) -> bool {
    let found = Command::new("pgbackrest").arg("version").output().is_ok_and(|o| o.status.success());
    if !found {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "{what}: CI=true but pgbackrest is missing (run scripts/install-deps)");
        eprintln!("\n!!! SKIPPED {what}: pgbackrest missing; run scripts/install-deps !!!\n");
    }
    found
}

/// A pgBackRest repository of a stopped PostgreSQL 15 cluster, with the configuration of both tools.
pub struct PgbrRepo {
    pub variant: Variant,
    /// The cluster backed up (stopped once the repository is complete).
    pub cluster: Cluster,
    /// Holds `repo/`, `pgbackrest.conf`, `pgfork.toml`, pgfork's `state/` and the passphrase.
    pub dir: PgDir,
    /// The sets, oldest first: full, diff, incr.
    pub labels: Vec<String>,
    /// The point-in-time target (UTC, `+00`) …
    pub target: String,
    /// … and [`QUERY`] at that time.
    pub at_target: String,
    /// [`QUERY`] at the end.
    pub at_end: String,
}

impl PgbrRepo {
    /// Makes the cluster and its repository (20-30 s).
    pub fn build(variant: Variant) -> PgbrRepo {
        let version = PgVersion::get(15);
        let cluster = Cluster::init(&version, fast_base().as_deref());
        let dir = PgDir::new(fast_base().as_deref(), "pgbr-");
        for sub in ["repo", "log", "lock", "spool", "state"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            chown_postgres(&dir.path().join(sub));
        }
        let conf = dir.path().join("pgbackrest.conf");
        let mut text = format!(
            "[global]\nrepo1-path={}\nrepo1-retention-full=10\nlog-path={}\nlock-path={}\nspool-path={}\n\
             log-level-console=warn\nlog-level-file=info\nstart-fast=y\ncompress-type={}\nrepo1-bundle={}\n",
            dir.path().join("repo").display(),
            dir.path().join("log").display(),
            dir.path().join("lock").display(),
            dir.path().join("spool").display(),
            variant.compress,
            if variant.bundle { "y" } else { "n" },
        );
        if let Some(limit) = variant.bundle_limit {
            text.push_str(&format!("repo1-bundle-limit={limit}\n"));
        }
        if variant.cipher {
            text.push_str(&format!("repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={CIPHER_PASS}\n"));
        }
        if variant.block {
            text.push_str("beta=y\nrepo1-block=y\n");
        }
        text.push_str(&format!(
            "\n[{STANZA}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\n",
            cluster.data.display(),
            cluster.port,
            cluster.socket_dir.path().display()
        ));
        std::fs::write(&conf, text).unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).unwrap();
        chown_postgres(&conf);
        append(
            &cluster.data.join("postgresql.conf"),
            &format!(
                "archive_mode = on\narchive_command = 'pgbackrest --config={} --stanza={STANZA} archive-push %p'\n\
                 autovacuum = off\n",
                conf.display()
            ),
        );
        let passphrase_file = variant.cipher.then(|| {
            let file = dir.path().join("passphrase");
            write_private(&file, CIPHER_PASS);
            file
        });
        let mut repo = PgbrRepo {
            variant,
            cluster,
            dir,
            labels: Vec::new(),
            target: String::new(),
            at_target: String::new(),
            at_end: String::new(),
        };
        repo.write_config(&repo.config(), &repo.repo_path(), passphrase_file.as_deref(), &repo.state_path());

        repo.cluster.start();
        repo.pgbackrest_ok(&["stanza-create"]);
        repo.cluster.pgbench_init("postgres", 1);
        let c = &repo.cluster;
        c.psql(
            "postgres",
            "CREATE TABLE marker(id serial PRIMARY KEY, tag text, at timestamptz DEFAULT clock_timestamp())",
        );
        c.psql("postgres", "INSERT INTO marker(tag) VALUES ('before-full')");
        repo.pgbackrest_ok(&["--type=full", "backup"]);
        c.pgbench("postgres", &["-n", "-c", "2", "-t", TRANSACTIONS]).wait().unwrap();
        c.psql("postgres", "CREATE TABLE after_full AS SELECT g FROM generate_series(1, 1000) g");
        c.psql("postgres", "INSERT INTO marker(tag) VALUES ('before-diff')");
        repo.pgbackrest_ok(&["--type=diff", "backup"]);
        c.pgbench("postgres", &["-n", "-c", "2", "-t", TRANSACTIONS]).wait().unwrap();
        c.psql("postgres", "DROP TABLE after_full");
        c.psql("postgres", "INSERT INTO marker(tag) VALUES ('before-incr')");
        repo.pgbackrest_ok(&["--type=incr", "backup"]);

        // The target: after the marker's commit, before anything that follows.
        c.psql("postgres", "INSERT INTO marker(tag) VALUES ('target')");
        let target = c.psql(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
        );
        let at_target = c.psql("postgres", QUERY);
        std::thread::sleep(Duration::from_millis(1200));
        c.pgbench("postgres", &["-n", "-c", "2", "-t", TRANSACTIONS]).wait().unwrap();
        c.psql("postgres", "INSERT INTO marker(tag) VALUES ('after-target')");
        let at_end = c.psql("postgres", QUERY);
        assert_ne!(at_target, at_end, "nothing changed after the target");
        c.psql("postgres", "SELECT pg_switch_wal()");
        repo.pgbackrest_ok(&["check"]);
        repo.cluster.stop();

        repo.labels = repo.pgbackrest_sets().into_iter().map(|(label, _)| label).collect();
        assert_eq!(repo.labels.len(), 3, "pgBackRest lists {:?}", repo.labels);
        repo.target = target;
        repo.at_target = at_target;
        repo.at_end = at_end;
        repo
    }

    pub fn repo_path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// pgBackRest's configuration.
    pub fn pgbackrest_conf(&self) -> PathBuf {
        self.dir.path().join("pgbackrest.conf")
    }

    /// pgfork's configuration of the repository.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("pgfork.toml")
    }

    pub fn full(&self) -> &str {
        &self.labels[0]
    }

    pub fn newest(&self) -> &str {
        self.labels.last().unwrap()
    }

    /// Writes to `config` a pgfork configuration of the pgBackRest repository in `repo` (this
    /// cluster's stanza), with its passphrase in `passphrase_file` and pgfork's state in `state`.
    pub fn write_config(&self, config: &Path, repo: &Path, passphrase_file: Option<&Path>, state: &Path) {
        let pass = passphrase_file.map(|f| format!("passphrase_file = \"{}\"\n", f.display())).unwrap_or_default();
        let text = format!(
            "[repo.legacy]\ntype = \"pgbackrest\"\npath = \"{}\"\n{pass}state_path = \"{}\"\n\n\
             [stanza.{STANZA}]\ndata = \"{}\"\nport = {}\nsocket = \"{}\"\nbindir = \"{}\"\nrepos = [\"legacy\"]\n",
            repo.display(),
            state.display(),
            self.cluster.data.display(),
            self.cluster.port,
            self.cluster.socket_dir.path().display(),
            self.cluster.version.bindir.display()
        );
        std::fs::write(config, text).unwrap();
    }

    /// `pgbackrest --config … --stanza demo <args>` as the postgres user.
    pub fn pgbackrest(&self, args: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", PG_USER, "--", "pgbackrest"])
            .arg(format!("--config={}", self.pgbackrest_conf().display()))
            .arg(format!("--stanza={STANZA}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pgbackrest")
    }

    /// Like [`PgbrRepo::pgbackrest`], panicking on failure; returns stdout.
    pub fn pgbackrest_ok(&self, args: &[&str]) -> String {
        let out = self.pgbackrest(args);
        assert!(
            out.status.success(),
            "pgbackrest {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The sets `pgbackrest info` lists: label and type, oldest first.
    pub fn pgbackrest_sets(&self) -> Vec<(String, String)> {
        let info: serde_json::Value = serde_json::from_str(&self.pgbackrest_ok(&["info", "--output=json"])).unwrap();
        info[0]["backup"]
            .as_array()
            .expect("pgbackrest info lists backups")
            .iter()
            .map(|b| (b["label"].as_str().unwrap().to_string(), b["type"].as_str().unwrap().to_string()))
            .collect()
    }

    /// `pgbackrest info --output=json` of the stanza.
    pub fn pgbackrest_info(&self) -> serde_json::Value {
        let info: serde_json::Value = serde_json::from_str(&self.pgbackrest_ok(&["info", "--output=json"])).unwrap();
        info[0].clone()
    }

    /// The `[target:file]` entries of `label`'s manifest, decrypted by pgBackRest (`repo-get`).
    pub fn manifest_files(&self, label: &str) -> BTreeMap<String, serde_json::Value> {
        let text = self.pgbackrest_ok(&["repo-get", &format!("backup/{STANZA}/{label}/backup.manifest")]);
        let mut section = "";
        let mut files = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('[') && line.ends_with(']') {
                section = line;
                continue;
            }
            if section != "[target:file]" || line.is_empty() {
                continue;
            }
            // The key ends at the first '=' whose remainder is JSON.
            let parsed = line.match_indices('=').find_map(|(at, _)| {
                serde_json::from_str::<serde_json::Value>(&line[at + 1..]).ok().map(|v| (line[..at].to_string(), v))
            });
            let (name, entry) = parsed.unwrap_or_else(|| panic!("manifest line {line:?}"));
            files.insert(name, entry);
        }
        assert!(!files.is_empty(), "no [target:file] in the manifest of {label}:\n{text}");
        files
    }

    /// `pgfork <args> --config <config>` (the binary the postgres user can run: restore and
    /// verify write it into restore_command).
    pub fn command_with(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(this_builds_pgfork());
        cmd.args(args).arg("--config").arg(config).stdin(Stdio::null()).env_remove("PGFORK_PASSPHRASE");
        cmd
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with(&self.config(), args)
    }

    pub fn run_with(&self, config: &Path, args: &[&str]) -> Output {
        self.command_with(config, args).output().expect("run pgfork")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(&self.config(), args)
    }

    /// Runs pgfork with the repository's configuration, panicking on failure; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.run(args))
    }

    /// A fresh directory for a data directory pgBackRest restores into (it must exist, empty).
    pub fn empty_data_dir(parent: &Path, name: &str) -> PathBuf {
        let data = parent.join(name);
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown_postgres(&data);
        data
    }

    /// Starts the restored `data` beside the cluster's socket on a free port (archiving off: it
    /// must not push into the repository), waits until recovery paused at its target, and
    /// returns [`QUERY`] there with the server.
    pub fn start_paused(&self, data: &Path) -> (RunningFork, String) {
        append(&data.join("postgresql.auto.conf"), "archive_mode = off\n");
        let server = start_copy(&self.cluster, data);
        let deadline = Instant::now() + Duration::from_secs(90);
        while server.psql("postgres", "SELECT pg_get_wal_replay_pause_state()") != "paused" {
            assert!(Instant::now() < deadline, "recovery of {} never paused at its target", data.display());
            std::thread::sleep(Duration::from_millis(100));
        }
        let result = server.psql("postgres", QUERY);
        (server, result)
    }
}

/// This build's pgfork binary at a path the postgres user can run. [`server_side_pgfork`]'s path is
/// the same for every checkout on the machine, so the tests of another checkout can put their
/// build there while these run; this one is keyed by the build's own path.
pub fn this_builds_pgfork() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let exe = Path::new(env!("CARGO_BIN_EXE_pgfork"));
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        exe.hash(&mut hasher);
        let dir = PathBuf::from(format!("/tmp/pgfork-test-bin-{:016x}", hasher.finish()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let target = dir.join("pgfork");
        let same = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        };
        if same(exe, &target) {
            return target;
        }
        let tmp = dir.join(format!(".pgfork.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(exe, &tmp).is_err() {
            std::fs::copy(exe, &tmp).unwrap();
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
        // rename(2) leaves both names when they are links to one file already.
        let _ = std::fs::remove_file(&tmp);
        target
    })
    .clone()
}

/// Writes `text` to `path`, mode 0600, owned by postgres.
pub fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown_postgres(path);
}

/// Every entry under `root` (relative path → type, size, modification time, mode, link target):
/// what a writer would change.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.path().symlink_metadata().unwrap();
            let link = if meta.file_type().is_symlink() {
                std::fs::read_link(e.path()).unwrap().display().to_string()
            } else {
                String::new()
            };
            let kind = if meta.is_dir() {
                "dir"
            } else if meta.is_file() {
                "file"
            } else {
                "other"
            };
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
            (rel, format!("{kind} {} {}.{} {:o} {link}", meta.len(), meta.mtime(), meta.mtime_nsec(), meta.mode()))
        })
        .collect()
}

/// Panics naming the first entry that differs between two listings.
pub fn assert_same_listing(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, what: &str) {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let (b, a) = (before.get(name), after.get(name));
        assert!(b == a, "{what}: {name} changed: before {b:?}, after {a:?}");
    }
}

/// The regular files under `root`, relative.
pub fn regular_files(root: &Path) -> BTreeSet<String> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// XORs the byte at `at` of `path` with 0x5a (twice restores it).
pub fn flip_byte(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
    f.sync_all().unwrap();
}
