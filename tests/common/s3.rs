//! A real S3 server for the tests: SeaweedFS (`weed mini`) on loopback, with its own block of
//! ports and a fresh data directory, a bucket, and keys; killed and removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgfork::config::S3Credentials;
use pgfork::repo::storage::{S3Settings, S3Storage, Storage};

use super::{PgDir, chown_postgres};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "pgfork-test-key";
/// Its secret.
pub const SECRET_KEY: &str = "pgfork-test-secret";

static BASES: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// The weed binary: `$WEED`, else the one scripts/install-deps links.
fn weed() -> PathBuf {
    std::env::var_os("WEED").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/local/bin/weed"))
}

/// Whether every port weed mini takes for `base` is free: base..=base+8 and the admin's gRPC port.
fn block_free(base: u16) -> bool {
    (base..=base + 8).chain([base + 8 + 10000]).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A running SeaweedFS with one bucket.
pub struct Seaweed {
    pub endpoint: String,
    pub bucket: String,
    base: u16,
    dir: PgDir,
    child: Option<Child>,
}

impl Seaweed {
    /// Starts a server with bucket `bucket` and waits until the bucket answers.
    pub fn start(bucket: &str) -> Seaweed {
        let base = {
            let mut used = BASES.lock().unwrap();
            let mut base = 20000 + (std::process::id() % 40) as u16 * 200;
            while used.contains(&base) || !block_free(base) {
                base = if base >= 29600 { 20000 } else { base + 200 };
            }
            used.push(base);
            base
        };
        let dir = PgDir::new(None, "weed-");
        let mut server = Seaweed {
            endpoint: format!("http://127.0.0.1:{base}"),
            bucket: bucket.to_string(),
            base,
            dir,
            child: None,
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let data = self.dir.path().join("data");
        let _ = std::fs::remove_file(data.join("mini.options"));
        std::fs::create_dir_all(&data).unwrap();
        let b = self.base;
        let log = std::fs::File::create(self.dir.path().join("weed.log")).unwrap();
        let child = Command::new(weed())
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-master.telemetry=false"])
            .args(["-s3.autoCreateBucket=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-bucket={}", self.bucket))
            .arg(format!("-s3.port={b}"))
            .arg(format!("-s3.port.grpc={}", b + 1))
            .arg(format!("-master.port={}", b + 2))
            .arg(format!("-master.port.grpc={}", b + 3))
            .arg(format!("-volume.port={}", b + 4))
            .arg(format!("-volume.port.grpc={}", b + 5))
            .arg(format!("-filer.port={}", b + 6))
            .arg(format!("-filer.port.grpc={}", b + 7))
            .arg(format!("-admin.port={}", b + 8))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e} (run scripts/install-deps)", weed().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let storage = self.storage("");
        // Ready once an object can be written and read back (the bucket answers listings earlier).
        let ready = || -> bool {
            std::net::TcpStream::connect(("127.0.0.1", b)).is_ok()
                && storage.exists().unwrap_or(false)
                && storage.put(".ready", b"ready").is_ok()
                && storage.get(".ready").ok().flatten().is_some()
        };
        loop {
            if ready() {
                return;
            }
            assert!(Instant::now() < deadline, "SeaweedFS did not serve its bucket within 60 s: {}", self.log_tail());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A pgfork storage client of the bucket under `prefix`.
    pub fn storage(&self, prefix: &str) -> S3Storage {
        S3Storage::new(&S3Settings {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: "us-east-1".into(),
            prefix: prefix.into(),
            host_style: false,
            verify_tls: true,
            ca_file: None,
            credentials: S3Credentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
                session_token: None,
            },
            deadlines: Default::default(),
        })
        .unwrap()
    }

    /// Kills the server outright (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// A credentials file for the server's keys, readable by the postgres user only.
    pub fn credentials_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("s3-credentials");
        std::fs::write(
            &path,
            format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        chown_postgres(&path);
        path
    }

    /// The `[repo.NAME]` lines of a repository in this bucket under `prefix`.
    pub fn repo_lines(&self, prefix: &str, credentials: &Path) -> String {
        format!(
            "type = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\ncredentials_file = \"{}\"\n",
            self.endpoint,
            self.bucket,
            credentials.display()
        )
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        BASES.lock().unwrap().retain(|b| *b != self.base);
    }
}
