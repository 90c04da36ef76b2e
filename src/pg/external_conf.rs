//! Configuration that lives outside the data directory. Debian and Ubuntu keep postgresql.conf,
//! pg_hba.conf and pg_ident.conf in `/etc/postgresql/<version>/<cluster>/` (`pg_createcluster`),
//! the data directory holding none: a copy of the data directory alone cannot start. This module
//! finds such a configuration and turns it into files that go inside a copy (a fork, a backup
//! set), rewritten so the copy starts on its own: `data_directory`, `hba_file`, `ident_file` and
//! `external_pid_file` dropped (the copy's own files and defaults apply), included files and
//! directories copied along and their directives pointed at the copies. An include that cannot be
//! read is refused, naming the file.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Where Debian's packaging keeps cluster configurations.
const DEBIAN_ETC: &str = "/etc/postgresql";
/// Where copies of includes that lived elsewhere go, inside the copy.
const INCLUDES: &str = "pgfork-include";
/// Largest configuration file accepted.
const MAX_FILE: u64 = 16 << 20;

/// A configuration file for the copy: its path inside the data directory and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfFile {
    /// Path relative to the data directory (`postgresql.conf`, `conf.d/extra.conf`).
    pub rel: String,
    /// Its (rewritten) text.
    pub text: String,
}

/// A data directory's configuration from outside it, ready to go inside a copy.
#[derive(Debug, Clone)]
pub struct ExternalConf {
    /// The configuration directory it came from.
    pub origin: PathBuf,
    /// The files, postgresql.conf first.
    pub files: Vec<ConfFile>,
    /// Directories the copy needs besides the files' (an included directory, even empty).
    pub dirs: Vec<String>,
}

impl ExternalConf {
    /// The configuration of `data_dir` when it lives outside it (a postgresql.conf under
    /// `/etc/postgresql` whose `data_directory` is `data_dir`); `None` when the data directory has
    /// its own postgresql.conf.
    pub fn find(data_dir: &Path) -> Result<Option<ExternalConf>> {
        if data_dir.join("postgresql.conf").exists() {
            return Ok(None);
        }
        let Some(conf) = debian_conf_of(data_dir)? else { return Ok(None) };
        ExternalConf::load(&conf).map(Some)
    }

    /// The directory holding `data_dir`'s configuration when it lives outside it (Debian's
    /// `/etc/postgresql/<version>/<cluster>`); `None` when the data directory has its own.
    pub fn outside_dir_of(data_dir: &Path) -> Result<Option<PathBuf>> {
        if data_dir.join("postgresql.conf").exists() {
            return Ok(None);
        }
        Ok(debian_conf_of(data_dir)?.and_then(|conf| conf.parent().map(Path::to_path_buf)))
    }

    /// Reads `conf` (a postgresql.conf outside the data directory) and everything it refers to.
    pub fn load(conf: &Path) -> Result<ExternalConf> {
        let origin = conf.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut files = Vec::new();
        let mut extra = Vec::new();
        let mut dirs = Vec::new();
        let text = read_conf(conf)?;
        let mut out = String::new();
        for line in text.lines() {
            match Directive::parse(line) {
                Some(Directive::Setting(name, value)) if matches!(name.as_str(), "hba_file" | "ident_file") => {
                    let path = absolute(&origin, &value);
                    let rel = if name == "hba_file" { "pg_hba.conf" } else { "pg_ident.conf" };
                    extra.push(ConfFile { rel: rel.into(), text: read_conf(&path)? });
                    out.push_str(&format!("# pgfork: {name} was {value}; the copy's own {rel} is used\n"));
                }
                Some(Directive::Setting(name, value))
                    if matches!(name.as_str(), "data_directory" | "external_pid_file") =>
                {
                    out.push_str(&format!("# pgfork: {name} was {value}; dropped in the copy\n"));
                }
                Some(Directive::Include { keyword, value }) => {
                    let path = absolute(&origin, &value);
                    let rel = match path.strip_prefix(&origin) {
                        Ok(inside) => inside.to_string_lossy().into_owned(),
                        Err(_) => {
                            format!("{INCLUDES}/{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())
                        }
                    };
                    let found = include(&keyword, &path, &rel, &mut extra)?;
                    if found && keyword == "include_dir" {
                        dirs.push(rel.clone());
                    }
                    if found {
                        out.push_str(&format!("{keyword} = '{rel}'\t# pgfork: was {value}\n"));
                    } else {
                        out.push_str(&format!("# pgfork: {keyword} {value} did not exist\n"));
                    }
                }
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        files.push(ConfFile { rel: "postgresql.conf".into(), text: out });
        files.extend(extra);
        Ok(ExternalConf { origin, files, dirs })
    }

    /// Writes the files into `data_dir` (a copy being made), mode 0600.
    pub fn write_into(&self, data_dir: &Path) -> Result<()> {
        for dir in &self.dirs {
            let path = data_dir.join(dir);
            std::fs::create_dir_all(&path).at("create directory", &path)?;
        }
        for file in &self.files {
            let path = data_dir.join(&file.rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).at("create directory", parent)?;
            }
            crate::util::fsx::write_atomic(&path, file.text.as_bytes(), 0o600)?;
        }
        Ok(())
    }
}

/// Copies an included file or directory; `false` for a missing `include_if_exists`/directory.
fn include(keyword: &str, path: &Path, rel: &str, extra: &mut Vec<ConfFile>) -> Result<bool> {
    if keyword == "include_dir" {
        let Ok(entries) = std::fs::read_dir(path) else { return Ok(false) };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".conf") && !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            extra.push(ConfFile { rel: format!("{rel}/{name}"), text: read_conf(&path.join(&name))? });
        }
        return Ok(true);
    }
    if keyword == "include_if_exists" && !path.exists() {
        return Ok(false);
    }
    extra.push(ConfFile { rel: rel.to_string(), text: read_conf(path)? });
    Ok(true)
}

fn read_conf(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::refused(
            format!("the configuration refers to {}, which cannot be read: {e}", path.display()),
            Some("make it readable by the cluster's owner, or remove the reference".into()),
        )
    })?;
    if meta.len() > MAX_FILE {
        return Err(Error::invalid(path.display().to_string(), "larger than a configuration file can be"));
    }
    std::fs::read_to_string(path).at("read", path)
}

fn absolute(base: &Path, value: &str) -> PathBuf {
    let path = Path::new(value);
    if path.is_absolute() { path.to_path_buf() } else { base.join(path) }
}

/// The postgresql.conf under /etc/postgresql whose `data_directory` is `data_dir`.
fn debian_conf_of(data_dir: &Path) -> Result<Option<PathBuf>> {
    let wanted = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let Ok(versions) = std::fs::read_dir(DEBIAN_ETC) else { return Ok(None) };
    for version in versions.filter_map(|e| e.ok()) {
        let Ok(clusters) = std::fs::read_dir(version.path()) else { continue };
        for cluster in clusters.filter_map(|e| e.ok()) {
            let conf = cluster.path().join("postgresql.conf");
            let Ok(text) = std::fs::read_to_string(&conf) else { continue };
            let data = text.lines().find_map(|l| match Directive::parse(l) {
                Some(Directive::Setting(name, value)) if name == "data_directory" => Some(value),
                _ => None,
            });
            if let Some(data) = data
                && std::fs::canonicalize(&data).unwrap_or_else(|_| PathBuf::from(&data)) == wanted
            {
                return Ok(Some(conf));
            }
        }
    }
    Ok(None)
}

/// One meaningful line of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Directive {
    /// `name = 'value'` (quotes removed).
    Setting(String, String),
    /// `include`, `include_if_exists` or `include_dir` of a path.
    Include { keyword: String, value: String },
}

impl Directive {
    fn parse(line: &str) -> Option<Directive> {
        let line = strip_comment(line).trim();
        if line.is_empty() {
            return None;
        }
        let (name, rest) = match line.split_once(['=', ' ', '\t']) {
            Some((name, rest)) => (name.trim(), rest.trim().trim_start_matches('=').trim()),
            None => return None,
        };
        let value = unquote(rest);
        let name = name.to_ascii_lowercase();
        if matches!(name.as_str(), "include" | "include_if_exists" | "include_dir") {
            return Some(Directive::Include { keyword: name, value });
        }
        Some(Directive::Setting(name, value))
    }
}

/// The line without a trailing `#` comment (a `#` inside quotes stays).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '#' if !quoted => return line.get(..i).unwrap_or(line),
            _ => {}
        }
    }
    line
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    match value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debian_configuration_becomes_self_contained() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(etc.join("conf.d")).unwrap();
        std::fs::write(etc.join("pg_hba.conf"), "local all all trust\n").unwrap();
        std::fs::write(etc.join("pg_ident.conf"), "# none\n").unwrap();
        std::fs::write(etc.join("conf.d/tuning.conf"), "work_mem = '8MB'\n").unwrap();
        let outside = dir.path().join("shared.conf");
        std::fs::write(&outside, "log_min_messages = warning\n").unwrap();
        let conf = format!(
            "data_directory = '/var/lib/postgresql/15/main'\t# use data\nhba_file = '{0}/pg_hba.conf'\n\
             ident_file = '{0}/pg_ident.conf'\nexternal_pid_file = '/run/x.pid'\nport = 5433 # the port\n\
             include_dir = 'conf.d'\ninclude '{1}'\ninclude_if_exists = 'missing.conf'\n",
            etc.display(),
            outside.display()
        );
        std::fs::write(etc.join("postgresql.conf"), conf).unwrap();
        let loaded = ExternalConf::load(&etc.join("postgresql.conf")).unwrap();
        let rels: Vec<&str> = loaded.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(
            rels,
            ["postgresql.conf", "pg_hba.conf", "pg_ident.conf", "conf.d/tuning.conf", "pgfork-include/shared.conf"]
        );
        let main = &loaded.files[0].text;
        assert!(!main.lines().any(|l| l.starts_with("data_directory") || l.starts_with("hba_file")), "{main}");
        assert!(main.contains("port = 5433"));
        assert!(main.contains("include_dir = 'conf.d'"), "{main}");
        assert!(main.contains("include = 'pgfork-include/shared.conf'"), "{main}");
        assert!(main.contains("missing.conf did not exist"), "{main}");
        assert_eq!(loaded.dirs, ["conf.d"]);

        std::fs::write(etc.join("postgresql.conf"), "include = '/no/such/file.conf'\n").unwrap();
        let err = ExternalConf::load(&etc.join("postgresql.conf")).unwrap_err();
        assert!(err.to_string().contains("/no/such/file.conf"), "{err}");
    }

    #[test]
    fn directives_parse_with_quotes_and_comments() {
        assert_eq!(
            Directive::parse("hba_file = '/etc/a#b/pg_hba.conf'  # where"),
            Some(Directive::Setting("hba_file".into(), "/etc/a#b/pg_hba.conf".into()))
        );
        assert_eq!(
            Directive::parse("include_dir 'conf.d'"),
            Some(Directive::Include { keyword: "include_dir".into(), value: "conf.d".into() })
        );
        assert_eq!(Directive::parse("   # only a comment"), None);
    }
}
