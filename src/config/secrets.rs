//! The repository's secrets handed to `archive-get` through a file instead of an environment.
//!
//! A server pgfork starts gets a clean environment (see `pg::bins`): otherwise its
//! `restore_command` would find the passphrase and the S3 keys there, and so would every session
//! that runs `COPY … FROM PROGRAM` and every extension, for as long as the server runs. When those
//! secrets reach pgfork only through its own environment (no `passphrase_file` or
//! `credentials_file` the server's user can read anyway), pgfork writes them to a file of the
//! server's user, mode 0600, names it in `restore_command` (`archive-get --secrets FILE`), and
//! removes it when its operation ends. archive-get finds in it what it would look for in its
//! environment; a file that is gone (the operation ended, the server runs on) leaves the
//! configuration's files and the environment, as without `--secrets`.
//!
//! The file is a first line `pgfork-secrets 1`, then one `NAME=value` line per variable, every line
//! ending in a newline: NAME one of [`NAMES`], at most once each; a value neither empty nor holding
//! a line break.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::{CipherKind, PASSPHRASE_ENV, RepoConfig, RepoKind, Resolved};
use crate::error::{Error, IoContext, Result};
use crate::util::fsx;

/// The variables a secrets file may hold, named as in the environment: the repository's
/// passphrase and the S3 keys.
pub const NAMES: [&str; 4] = [PASSPHRASE_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// The first line of a secrets file.
const HEADER: &str = "pgfork-secrets 1";

/// More than a secrets file ever holds.
const MAX_BYTES: u64 = 64 * 1024;

/// Secrets by variable name; never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    vars: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.vars.iter().map(|(name, _)| *name).collect();
        write!(f, "Secrets({names:?}, values hidden)")
    }
}

impl Secrets {
    /// What archive-get needs for `resolved`'s repository that this process has only in its
    /// environment: the passphrase unless a `passphrase_file` is set, the S3 keys unless a
    /// `credentials_file` is. A server pgfork starts must be handed these some other way.
    pub fn from_environment(resolved: &Resolved) -> Secrets {
        Secrets::wanted(&resolved.repo, |name| std::env::var(name).ok())
    }

    /// What of `lookup` archive-get needs for `repo`.
    fn wanted(repo: &RepoConfig, lookup: impl Fn(&str) -> Option<String>) -> Secrets {
        let mut wanted: Vec<&str> = Vec::new();
        // A pgBackRest repository says itself whether it is encrypted.
        let may_be_encrypted = repo.cipher != CipherKind::None || repo.kind == RepoKind::Pgbackrest;
        if may_be_encrypted && repo.passphrase_file.is_none() {
            wanted.push(PASSPHRASE_ENV);
        }
        if repo.in_bucket() && repo.credentials_file.is_none() {
            wanted.extend(&NAMES[1..]);
        }
        let vars = NAMES
            .iter()
            .filter(|name| wanted.contains(name))
            .filter_map(|name| lookup(name).filter(|v| !v.is_empty()).map(|v| (*name, v)))
            .collect();
        Secrets { vars }
    }

    /// Whether there is nothing to hand.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The file's text; refused for a value the format cannot hold (a line break).
    fn render(&self) -> Result<String> {
        let mut text = format!("{HEADER}\n");
        for (name, value) in &self.vars {
            if value.contains(['\n', '\r']) {
                return Err(Error::refused(
                    format!("{name} holds a line break, which pgfork cannot hand to archive-get"),
                    Some("keep the passphrase in a passphrase_file (or the S3 keys in a credentials_file)".into()),
                ));
            }
            text.push_str(&format!("{name}={value}\n"));
        }
        Ok(text)
    }

    /// Parses a secrets file's text. Errors name the line, never a value.
    pub fn parse(text: &str) -> Result<Secrets> {
        let bad = |reason: String| Error::invalid("secrets file", reason);
        let Some(body) = text.strip_suffix('\n') else {
            return Err(bad("it does not end with a newline (cut short?)".into()));
        };
        let mut lines = body.split('\n');
        if lines.next() != Some(HEADER) {
            return Err(bad(format!("its first line is not {HEADER:?}")));
        }
        let mut vars: Vec<(&'static str, String)> = Vec::new();
        for (i, line) in lines.enumerate() {
            let number = i + 2;
            let Some((name, value)) = line.split_once('=') else {
                return Err(bad(format!("line {number} is not NAME=value")));
            };
            // The name is not shown either: a line that is not what pgfork wrote may be anything.
            let Some(name) = NAMES.iter().copied().find(|n| *n == name) else {
                return Err(bad(format!("line {number} sets none of {}", NAMES.join(", "))));
            };
            if value.is_empty() || value.contains('\r') {
                return Err(bad(format!("line {number}: {name} is empty or holds a line break")));
            }
            if vars.iter().any(|(n, _)| *n == name) {
                return Err(bad(format!("line {number}: {name} appears twice")));
            }
            vars.push((name, value.to_string()));
        }
        Ok(Secrets { vars })
    }

    /// Reads the secrets file at `path`, refusing one that is not a regular file of mode 0600
    /// owned by the user this process runs as. `None` when there is no such file.
    pub fn read(path: &Path) -> Result<Option<Secrets>> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let meta = file.metadata().at("stat", path)?;
        let me = nix::unistd::geteuid().as_raw();
        if !meta.is_file() || meta.uid() != me || meta.mode() & 0o777 != 0o600 {
            return Err(Error::refused(
                format!(
                    "{} is not a regular file of mode 0600 owned by uid {me} (it is {} of mode {:o}, uid {})",
                    path.display(),
                    if meta.is_file() { "a file" } else { "not a regular file" },
                    meta.mode() & 0o7777,
                    meta.uid()
                ),
                Some("archive-get reads secrets only from a file no other user could have written or read".into()),
            ));
        }
        let mut text = String::new();
        file.take(MAX_BYTES + 1).read_to_string(&mut text).at("read", path)?;
        if text.len() as u64 > MAX_BYTES {
            return Err(Error::invalid(path.display().to_string(), "too large for a secrets file"));
        }
        Secrets::parse(&text).map(Some).map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))
    }
}

/// The secrets this process was handed, with the file they came from.
static HANDED: OnceLock<(PathBuf, Secrets)> = OnceLock::new();

/// Makes `secrets`, read from `file`, what this process finds where it would look in its
/// environment (the first call wins).
pub fn hand(file: &Path, secrets: Secrets) {
    let _ = HANDED.set((file.to_path_buf(), secrets));
}

/// The file this process's secrets came from, to hand on to the processes it starts.
pub fn handed_file() -> Option<&'static Path> {
    HANDED.get().map(|(file, _)| file.as_path())
}

/// `name` from the secrets handed to this process, else from its environment; `None` when unset
/// or empty.
pub fn var(name: &str) -> Option<String> {
    if let Some((_, secrets)) = HANDED.get()
        && let Some(value) = secrets.get(name)
    {
        return Some(value.to_string());
    }
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where pgfork keeps the secrets file of a server it starts on `data_dir` outside a work
/// directory of its own: a hidden file beside the data directory (whose parent its owner holds).
pub fn file_beside(data_dir: &Path) -> PathBuf {
    let name = data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    data_dir.with_file_name(format!(".{name}.pgfork-secrets"))
}

/// `resolved` with archive-get told (in the restore_command pgfork writes) to read `secrets`
/// from `file`; unchanged when there is nothing to hand.
pub fn naming_file(resolved: &Resolved, secrets: &Secrets, file: PathBuf) -> Resolved {
    let mut resolved = resolved.clone();
    if !secrets.is_empty() {
        resolved.secrets_file = Some(file);
    }
    resolved
}

/// A secrets file pgfork wrote for a server it starts; removed when dropped, also when the
/// operation fails.
#[derive(Debug)]
pub struct SecretsFile {
    path: PathBuf,
}

impl SecretsFile {
    /// Writes `secrets` to `path` (mode 0600, through a temporary name, synced), owned by `owner`
    /// (uid, gid) when this process runs as root. `None` when there is nothing to hand.
    pub fn write(path: &Path, secrets: &Secrets, owner: Option<(u32, u32)>) -> Result<Option<SecretsFile>> {
        if secrets.is_empty() {
            return Ok(None);
        }
        let handed = SecretsFile { path: path.to_path_buf() };
        fsx::write_atomic(path, secrets.render()?.as_bytes(), 0o600)?;
        if let Some((uid, gid)) = owner
            && nix::unistd::geteuid().is_root()
        {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).at("chown", path)?;
        }
        Ok(Some(handed))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file (as dropping it does); nothing to do when it is gone already.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", &self.path, e)),
            _ => Ok(()),
        }
    }
}

impl Drop for SecretsFile {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secrets(vars: &[(&'static str, &str)]) -> Secrets {
        Secrets { vars: vars.iter().map(|(n, v)| (*n, v.to_string())).collect() }
    }

    #[test]
    fn the_format_round_trips_and_is_parsed_strictly() {
        let s = secrets(&[(PASSPHRASE_ENV, "pass = with 'quotes' and =signs"), ("AWS_ACCESS_KEY_ID", "AK")]);
        let text = s.render().unwrap();
        assert_eq!(text, "pgfork-secrets 1\nPGFORK_PASSPHRASE=pass = with 'quotes' and =signs\nAWS_ACCESS_KEY_ID=AK\n");
        assert_eq!(Secrets::parse(&text).unwrap(), s);
        assert_eq!(Secrets::parse("pgfork-secrets 1\n").unwrap(), Secrets::default());
        for bad in [
            "",
            "\n",
            "pgfork-secrets 1",
            "pgfork-secrets 2\n",
            "PGFORK_PASSPHRASE=x\n",
            "pgfork-secrets 1\nPGFORK_PASSPHRASE=x",
            "pgfork-secrets 1\nPGFORK_PASSPHRASE\n",
            "pgfork-secrets 1\nPGFORK_PASSPHRASE=\n",
            "pgfork-secrets 1\nPGFORK_PASSPHRASE=x\r\n",
            "pgfork-secrets 1\nPGFORK_PASSPHRASE=a\nPGFORK_PASSPHRASE=b\n",
            "pgfork-secrets 1\nPATH=/bin\n",
            "pgfork-secrets 1\n\n",
            "pgfork-secrets 1\n pgfork_passphrase=x\n",
            "pgfork-secrets 1\n=x\n",
            "\u{0}\u{ffff}=\n",
        ] {
            assert!(Secrets::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let broken = secrets(&[(PASSPHRASE_ENV, "two\nlines")]);
        assert!(broken.render().is_err(), "a line break cannot be written");
    }

    #[test]
    fn only_what_archive_get_takes_from_the_environment_is_handed() {
        let env = |name: &str| match name {
            "PGFORK_PASSPHRASE" => Some("p".to_string()),
            "AWS_ACCESS_KEY_ID" => Some("ak".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("sk".to_string()),
            "AWS_SESSION_TOKEN" => Some(String::new()),
            _ => Some("other".to_string()),
        };
        let repo = |text: &str| -> RepoConfig { toml::from_str(text).unwrap() };
        let names = |s: Secrets| s.vars.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        let posix = "path = \"/r\"\n";
        assert_eq!(names(Secrets::wanted(&repo(posix), env)), Vec::<&str>::new(), "nothing to hand");
        let encrypted = format!("{posix}cipher = \"aes-256-gcm\"\n");
        assert_eq!(names(Secrets::wanted(&repo(&encrypted), env)), ["PGFORK_PASSPHRASE"]);
        let in_file = format!("{encrypted}passphrase_file = \"/p\"\n");
        assert!(Secrets::wanted(&repo(&in_file), env).is_empty(), "the server's user reads the file itself");
        let bucket = "type = \"s3\"\nendpoint = \"https://s3\"\nbucket = \"b\"\n";
        let handed = Secrets::wanted(&repo(bucket), env);
        assert_eq!(names(handed.clone()), ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], "an empty token is none");
        assert_eq!((handed.get("AWS_ACCESS_KEY_ID"), handed.get("AWS_SECRET_ACCESS_KEY")), (Some("ak"), Some("sk")));
        let keys_in_file = format!("{bucket}credentials_file = \"/c\"\n");
        assert!(Secrets::wanted(&repo(&keys_in_file), env).is_empty());
        let pgbackrest = "type = \"pgbackrest\"\npath = \"/var/lib/pgbackrest\"\n";
        assert_eq!(names(Secrets::wanted(&repo(pgbackrest), env)), ["PGFORK_PASSPHRASE"]);
        assert!(Secrets::wanted(&repo(pgbackrest), |_| None).is_empty(), "none set, none handed");
    }

    #[test]
    fn values_never_print() {
        let s = secrets(&[(PASSPHRASE_ENV, "hunter2")]);
        assert!(!format!("{s:?}").contains("hunter2"));
        for text in [
            "pgfork-secrets 1\nhunter2\n",
            "pgfork-secrets 1\nhunter2=x\n",
            "pgfork-secrets 1\nAWS_ACCESS_KEY_ID=a\nAWS_ACCESS_KEY_ID=hunter2\n",
        ] {
            let e = Secrets::parse(text).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn files_must_be_private_and_belong_to_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        assert_eq!(Secrets::read(&path).unwrap(), None, "a missing file is no secrets");
        let s = secrets(&[(PASSPHRASE_ENV, "p")]);
        let handed = SecretsFile::write(&path, &s, None).unwrap().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Secrets::read(&path).unwrap(), Some(s.clone()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Secrets::read(&path).unwrap_err().to_string().contains("mode 0600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Secrets::read(&link).is_err(), "a symbolic link is not followed");
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(1), Some(1)).unwrap();
            assert!(Secrets::read(&path).unwrap_err().to_string().contains("owned by uid 0"));
        }
        drop(handed);
        assert!(!path.exists(), "dropping the handle removes the file");
        assert!(SecretsFile::write(&path, &Secrets::default(), None).unwrap().is_none());
        assert!(!path.exists(), "nothing to hand, no file");
    }
}
