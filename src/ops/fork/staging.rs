//! The staging directories a fork is built in, beside its destination: removed when the fork
//! fails, renamed into place when it succeeds. A staging directory left by a crash carries a name
//! only pgfork uses, and the next fork to the same destination removes it.

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::util::fsx;

/// The staging data and tablespace directories of one fork.
pub struct Staging {
    data: PathBuf,
    tablespaces: PathBuf,
    final_data: PathBuf,
    final_tablespaces: PathBuf,
    committed: bool,
}

impl Staging {
    /// Prepares staging names for `dst` and `dst_tablespaces`, clearing leftovers of a crashed run.
    /// The directories themselves are created by the copy.
    pub fn create(dst: &Path, dst_tablespaces: &Path) -> Result<Staging> {
        let parent = dst.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).at("create directory", parent)?;
        let staging = Staging {
            data: staging_name(dst),
            tablespaces: staging_name(dst_tablespaces),
            final_data: dst.to_path_buf(),
            final_tablespaces: dst_tablespaces.to_path_buf(),
            committed: false,
        };
        for leftover in [&staging.data, &staging.tablespaces] {
            if std::fs::symlink_metadata(leftover).is_ok() {
                std::fs::remove_dir_all(leftover).at("remove leftover", leftover)?;
            }
        }
        Ok(staging)
    }

    /// Where the data directory is built.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Where the tablespace copies are built.
    pub fn tablespaces(&self) -> &Path {
        &self.tablespaces
    }

    /// Moves the staging directories to their final names.
    pub fn commit(mut self) -> Result<()> {
        if self.tablespaces.exists() {
            std::fs::rename(&self.tablespaces, &self.final_tablespaces)
                .at("move into place", &self.final_tablespaces)?;
        }
        std::fs::rename(&self.data, &self.final_data).at("move into place", &self.final_data)?;
        self.committed = true;
        fsx::fsync_dir(self.final_data.parent().unwrap_or(Path::new("/")))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.data);
            let _ = std::fs::remove_dir_all(&self.tablespaces);
        }
    }
}

fn staging_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.pgfork-staging"))
}
