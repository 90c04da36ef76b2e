//! Where a restore puts a set's configuration that lived outside the cluster's data directory
//! (Debian's `/etc/postgresql/<version>/<cluster>`, stored in the set as data directory files so
//! the set boots on its own). By default, with the data, so the restored copy starts with
//! `pg_ctl -D`. Not at all when the restore goes into a data directory whose configuration still
//! lives outside it: that configuration stays in charge, and a stale copy inside would shadow it
//! from every later backup and fork. Or, with `--config-dir DIR`, into a directory of its own
//! that points at the data directory, as the cluster had it.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::pg::external_conf::ExternalConf;
use crate::repo::manifest::{Manifest, OutsideConfig};
use crate::util::fsx;

/// Where the set's outside configuration goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// With the data, as the set holds it (also every set without an outside configuration).
    InData,
    /// Nowhere: the configuration in `live` belongs to the data directory restored into and stays.
    LeftAsIs {
        /// The cluster's own configuration directory.
        live: PathBuf,
    },
    /// Into this directory, after the data is written, pointing at the data directory.
    Dir(PathBuf),
}

impl Placement {
    /// Decides before anything is written. Refuses `--config-dir` for a set that holds no outside
    /// configuration, a directory that already has a postgresql.conf, one inside the data
    /// directory, and one whose parent is missing or not writable.
    pub fn decide(manifest: &Manifest, data: &Path, dir: Option<&Path>) -> Result<Placement> {
        let Some(dir) = dir else {
            if manifest.config.is_none() {
                return Ok(Placement::InData);
            }
            return Ok(match ExternalConf::outside_dir_of(data)? {
                Some(live) => Placement::LeftAsIs { live },
                None => Placement::InData,
            });
        };
        let refuse = |why: String, hint: &str| Err(Error::refused(why, Some(hint.into())));
        if manifest.config.is_none() {
            return refuse(
                format!("set {} holds no configuration from outside its data directory", manifest.label),
                "restore without --config-dir: the set's postgresql.conf, if any, is in its data directory",
            );
        }
        if !dir.is_absolute() || dir.starts_with(data) {
            return refuse(
                format!("--config-dir {} must be an absolute path outside the data directory", dir.display()),
                "name a directory such as /etc/postgresql/<version>/<cluster>",
            );
        }
        if dir.join("postgresql.conf").exists() {
            return refuse(
                format!("{} already holds a postgresql.conf", dir.display()),
                "move that configuration aside first (it is not replaced), or name an empty directory",
            );
        }
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let existing = if dir.is_dir() { dir } else { parent };
        if nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).is_err() {
            return refuse(
                format!("{} cannot be written by the restoring user", existing.display()),
                "create the directory for the repository's owner (Debian: postgres) first",
            );
        }
        Ok(Placement::Dir(dir.to_path_buf()))
    }

    /// The set as it is written into the data directory: without its outside configuration when
    /// the cluster's own stays in charge.
    pub fn exclude_from(&self, manifest: &mut Manifest) {
        if let (Placement::LeftAsIs { .. }, Some(config)) = (self, &manifest.config) {
            let OutsideConfig { files, dirs, .. } = config.clone();
            manifest.files.retain(|f| !files.contains(&f.path));
            manifest.dirs.retain(|d| !dirs.contains(&d.path));
        }
    }

    /// After the data is written: moves the configuration into its directory (for `Dir`), and
    /// says where the configuration is.
    pub fn finish(&self, manifest: &Manifest, data: &Path) -> Result<Option<String>> {
        let Some(config) = &manifest.config else { return Ok(None) };
        match self {
            Placement::InData => Ok(Some(format!(
                "the configuration the cluster kept in {} is in the data directory, standing alone",
                config.origin
            ))),
            Placement::LeftAsIs { live } => Ok(Some(format!(
                "the configuration in {} is left as it is; the set's copy of it (from {}) was not written \
                 (restore with --config-dir DIR to have it)",
                live.display(),
                config.origin
            ))),
            Placement::Dir(dir) => {
                move_config(config, data, dir)?;
                Ok(Some(format!(
                    "the configuration (from {}) is in {}, pointing at the data directory: pg_ctl -D {} start",
                    config.origin,
                    dir.display(),
                    dir.display()
                )))
            }
        }
    }
}

/// Moves the configuration's files from `data` into `dir` (0640, directories 0750), adding to
/// its postgresql.conf the settings that tie it to `data`.
fn move_config(config: &OutsideConfig, data: &Path, dir: &Path) -> Result<()> {
    create_dir(dir)?;
    for rel in &config.dirs {
        create_dir(&dir.join(rel))?;
    }
    let quoted = |path: &Path| path.display().to_string().replace('\'', "''");
    for rel in &config.files {
        let from = data.join(rel);
        let mut text = std::fs::read_to_string(&from).at("read", &from)?;
        if rel == "postgresql.conf" {
            text.push_str(&format!(
                "\n# pgfork restore: this configuration belongs to the data directory below\n\
                 data_directory = '{}'\n",
                quoted(data)
            ));
            for (setting, file) in [("hba_file", "pg_hba.conf"), ("ident_file", "pg_ident.conf")] {
                if config.files.iter().any(|f| f == file) {
                    text.push_str(&format!("{setting} = '{}'\n", quoted(&dir.join(file))));
                }
            }
        }
        let to = dir.join(rel);
        if let Some(parent) = to.parent() {
            create_dir(parent)?;
        }
        fsx::write_atomic(&to, text.as_bytes(), 0o640)?;
        std::fs::remove_file(&from).at("remove", &from)?;
    }
    for rel in config.dirs.iter().rev() {
        let _ = std::fs::remove_dir(data.join(rel));
    }
    fsx::fsync_dir(data)
}

fn create_dir(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o750).create(path).at("create directory", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with_config(files: &[&str]) -> Manifest {
        let mut manifest = crate::fuzz::sample_manifest();
        manifest.config = Some(OutsideConfig {
            origin: "/etc/postgresql/15/main".into(),
            files: files.iter().map(|f| f.to_string()).collect(),
            dirs: vec!["conf.d".into()],
        });
        manifest
    }

    #[test]
    fn config_dir_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut plain = set_with_config(&[]);
        plain.config = None;
        let refused = |m: &Manifest, dir: &Path| Placement::decide(m, &data, Some(dir)).unwrap_err().to_string();
        assert!(refused(&plain, &tmp.path().join("etc")).contains("holds no configuration"));
        let set = set_with_config(&["postgresql.conf"]);
        assert!(refused(&set, Path::new("etc")).contains("absolute"));
        assert!(refused(&set, &data.join("etc")).contains("outside the data directory"));
        let taken = tmp.path().join("taken");
        std::fs::create_dir(&taken).unwrap();
        std::fs::write(taken.join("postgresql.conf"), "port = 5432\n").unwrap();
        assert!(refused(&set, &taken).contains("already holds a postgresql.conf"));
        assert_eq!(
            Placement::decide(&set, &data, Some(&tmp.path().join("etc"))).unwrap(),
            Placement::Dir(tmp.path().join("etc"))
        );
        assert_eq!(Placement::decide(&plain, &data, None).unwrap(), Placement::InData);
    }

    #[test]
    fn the_configuration_moves_out_and_points_at_the_data() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, dir) = (tmp.path().join("da'ta"), tmp.path().join("etc/main"));
        std::fs::create_dir_all(data.join("conf.d")).unwrap();
        std::fs::write(data.join("postgresql.conf"), "include_dir = 'conf.d'\n").unwrap();
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\n").unwrap();
        std::fs::write(data.join("conf.d/extra.conf"), "work_mem = '8MB'\n").unwrap();
        let set = set_with_config(&["postgresql.conf", "pg_hba.conf", "conf.d/extra.conf"]);
        let note = Placement::Dir(dir.clone()).finish(&set, &data).unwrap().unwrap();
        assert!(note.contains(&dir.display().to_string()), "{note}");
        let conf = std::fs::read_to_string(dir.join("postgresql.conf")).unwrap();
        assert!(conf.starts_with("include_dir = 'conf.d'\n"), "{conf}");
        assert!(conf.contains(&format!("data_directory = '{}'", data.display().to_string().replace('\'', "''"))));
        assert!(conf.contains(&format!("hba_file = '{}'", dir.join("pg_hba.conf").display())));
        assert!(!conf.contains("ident_file"), "no pg_ident.conf in the set: {conf}");
        assert_eq!(std::fs::read_to_string(dir.join("conf.d/extra.conf")).unwrap(), "work_mem = '8MB'\n");
        assert!(!data.join("postgresql.conf").exists() && !data.join("pg_hba.conf").exists());
        assert!(!data.join("conf.d").exists());
    }

    #[test]
    fn left_as_is_keeps_the_configuration_out_of_the_data_directory() {
        let mut set = set_with_config(&["postgresql.conf", "pg_hba.conf"]);
        for path in ["postgresql.conf", "pg_hba.conf"] {
            let mut entry = set.files[0].clone();
            entry.path = path.into();
            set.files.push(entry);
        }
        set.dirs.push(crate::repo::manifest::DirEntry { path: "conf.d".into(), mode: 0o700 });
        let before = set.files.len();
        Placement::LeftAsIs { live: "/etc/postgresql/15/main".into() }.exclude_from(&mut set);
        assert_eq!(set.files.len(), before - 2);
        assert!(set.files.iter().all(|f| f.path != "postgresql.conf" && f.path != "pg_hba.conf"));
        assert!(set.dirs.iter().all(|d| d.path != "conf.d"));
    }
}
