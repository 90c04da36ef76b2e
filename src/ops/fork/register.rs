//! `fork --register`: a fork of a cluster in Debian's layout becomes a Debian cluster of its own,
//! `/etc/postgresql/<version>/<source>-fork<ID>/`, so `pg_lsclusters` lists it and
//! `pg_ctlcluster` and `pg_dropcluster` manage it. Its configuration (the copy the fork was given)
//! moves there with `data_directory`, `hba_file`, `ident_file` and `external_pid_file` pointing at
//! the fork; `start.conf` says `manual` (a fork does not start at boot); `pg_ctl.conf` and
//! `environment` are copied from the source's.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::pg::conf::set_auto_conf;
use crate::pg::external_conf::ExternalConf;
use crate::util::fsx;

/// Where Debian keeps cluster configurations.
const DEBIAN_ETC: &str = "/etc/postgresql";
/// Where Debian's clusters keep their pid files.
const DEBIAN_RUN: &str = "/var/run/postgresql";

/// A registration, decided before the fork is made.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The major version.
    pub version: u32,
    /// The new cluster's name.
    pub name: String,
    /// Its configuration directory.
    pub etc: PathBuf,
    /// The source's configuration directory (for pg_ctl.conf and environment).
    pub origin: PathBuf,
}

impl Registration {
    /// The registration of fork `id` of the source at `src` (PostgreSQL `version`): refused when
    /// the source is not a Debian cluster or the name is taken.
    pub fn plan(src: &Path, version: u32, id: u32) -> Result<Registration> {
        let conf = ExternalConf::find(src)?.ok_or_else(|| {
            Error::refused(
                format!(
                    "--register: {} is not a cluster in Debian's layout (no /etc/postgresql configuration)",
                    src.display()
                ),
                Some("fork without --register; the fork keeps its configuration in its data directory".into()),
            )
        })?;
        let source = conf.origin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = format!("{source}-fork{id}");
        let etc = Path::new(DEBIAN_ETC).join(version.to_string()).join(&name);
        if etc.exists() {
            return Err(Error::refused(
                format!("--register: Debian cluster {version}/{name} already exists ({})", etc.display()),
                Some(format!("drop it first (pg_dropcluster --stop {version} {name}), or use another fork id")),
            ));
        }
        Ok(Registration { version, name, etc, origin: conf.origin })
    }

    /// Moves the fork's configuration (what [`ExternalConf`] wrote into `fork`) into the cluster's
    /// configuration directory and points it at the fork. Written atomically, directory last.
    pub fn register(&self, fork: &Path, port: u16, conf: &ExternalConf) -> Result<()> {
        let staging = self.etc.with_file_name(format!(".{}.pgfork", self.name));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).at("remove", &staging)?;
        }
        fsx::create_dir_mode(&staging, 0o755)?;
        for dir in &conf.dirs {
            std::fs::create_dir_all(staging.join(dir)).at("create directory", staging.join(dir))?;
        }
        for file in &conf.files {
            let mut text = std::fs::read_to_string(fork.join(&file.rel)).at("read", fork.join(&file.rel))?;
            if file.rel == "postgresql.conf" {
                text.push_str(&self.settings(fork, port));
            }
            let path = staging.join(&file.rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).at("create directory", parent)?;
            }
            fsx::write_atomic(&path, text.as_bytes(), 0o644)?;
        }
        fsx::write_atomic(&staging.join("start.conf"), b"manual\n", 0o644)?;
        for name in ["pg_ctl.conf", "environment"] {
            if let Ok(bytes) = std::fs::read(self.origin.join(name)) {
                fsx::write_atomic(&staging.join(name), &bytes, 0o644)?;
            }
        }
        fsx::fsync_dir(&staging)?;
        std::fs::rename(&staging, &self.etc).at("rename into", &self.etc)?;
        fsx::fsync_dir(self.etc.parent().unwrap_or(Path::new("/")))?;
        // The configuration lives in /etc now; the fork's own copies would only mislead.
        for file in &conf.files {
            let _ = std::fs::remove_file(fork.join(&file.rel));
        }
        for dir in conf.dirs.iter().rev() {
            let _ = std::fs::remove_dir(fork.join(dir));
        }
        // The fork's postgresql.auto.conf set no external_pid_file of the source's; a Debian cluster has its own.
        set_auto_conf(fork, "pgfork: registered as a Debian cluster", &[("external_pid_file", self.pid_file())])?;
        Ok(())
    }

    fn pid_file(&self) -> String {
        format!("{DEBIAN_RUN}/{}-{}.pid", self.version, self.name)
    }

    fn settings(&self, fork: &Path, port: u16) -> String {
        format!(
            "\n# pgfork: registered as Debian cluster {version}/{name}\n\
             data_directory = '{data}'\nhba_file = '{etc}/pg_hba.conf'\nident_file = '{etc}/pg_ident.conf'\n\
             external_pid_file = '{pid}'\nport = {port}\n",
            version = self.version,
            name = self.name,
            data = fork.display(),
            etc = self.etc.display(),
            pid = self.pid_file(),
        )
    }
}
