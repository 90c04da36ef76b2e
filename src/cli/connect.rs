//! Connection arguments shared by subcommands that talk to a server.

use std::path::Path;

use crate::pg::session::ConnTarget;

/// Where the server is.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Server port.
    #[arg(short = 'p', long = "port", env = "PGPORT", default_value_t = 5432)]
    pub port: u16,
    /// Unix socket directory or host name [default: the first of /var/run/postgresql, /tmp with a socket for the port].
    #[arg(long = "host", env = "PGHOST")]
    pub host: Option<String>,
    /// Database user [default: the OS user].
    #[arg(short = 'U', long = "user", env = "PGUSER")]
    pub user: Option<String>,
    /// Maintenance database to connect to.
    #[arg(long = "dbname", default_value = "postgres")]
    pub dbname: String,
}

impl ConnArgs {
    /// Resolves the target: the given host, or the first default socket directory holding a socket
    /// for the port.
    pub fn target(&self) -> ConnTarget {
        let host = self.host.clone().unwrap_or_else(|| {
            crate::ops::fork::source::DEFAULT_SOCKET_DIRS
                .iter()
                .find(|dir| Path::new(dir).join(format!(".s.PGSQL.{}", self.port)).exists())
                .unwrap_or(&"/var/run/postgresql")
                .to_string()
        });
        ConnTarget {
            host,
            port: self.port,
            user: self.user.clone().unwrap_or_else(os_user),
            dbname: self.dbname.clone(),
        }
    }
}

/// The effective OS user's name.
pub fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".into())
}
