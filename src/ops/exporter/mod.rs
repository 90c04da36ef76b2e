//! `exporter`: Prometheus metrics of every configured stanza and repository on `/metrics` (port
//! 9854, where Pigsty runs pgbackrest_exporter). A background thread collects on an interval —
//! `info` of each repository, the archiver of each cluster — and keeps the result; a scrape only
//! renders it. Collection never takes a stanza's lock and never writes: a backup or expire runs
//! undisturbed, and a repository that cannot be read shows up as status values, not as a failed
//! scrape.

mod cluster;
mod collect;
mod metrics;
mod server;
mod text;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use cluster::Archiver;
pub use collect::{Collected, RepoState, StanzaState, collect, status};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::identity::become_repository_user;

/// How to run the exporter.
#[derive(Debug, Clone)]
pub struct ExporterOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// How often to collect.
    pub interval: Duration,
    /// The configuration file [default: `$PGFORK_CONFIG` or the usual place]; read again at each
    /// collection, so changes show without a restart.
    pub config: Option<PathBuf>,
}

/// The latest collection and how many there were, shared by the collector and the server.
#[derive(Debug, Default)]
pub struct Cache {
    state: Mutex<(Option<Arc<Collected>>, u64)>,
}

impl Cache {
    fn store(&self, collected: Collected) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = Some(Arc::new(collected));
            state.1 += 1;
        }
    }

    /// The metrics page as of now.
    pub fn render(&self) -> String {
        let (collected, count) = match self.state.lock() {
            Ok(state) => (state.0.clone(), state.1),
            Err(_) => (None, 0),
        };
        metrics::exposition(collected.as_deref(), count, chrono::Utc::now()).render()
    }
}

/// A running exporter.
#[derive(Debug)]
pub struct Running {
    /// The address it serves on.
    pub address: SocketAddr,
}

/// Starts the exporter: checks the configuration, acts as the repositories' user when started as
/// root, binds the address, and starts the collector and the server threads. Call before any
/// other thread is started (switching user must happen first).
pub fn start(options: &ExporterOptions) -> Result<Running> {
    let config = Config::load(options.config.as_deref())?;
    if let Some(name) = config.stanza.keys().next() {
        become_repository_user(&config.resolve(Some(name))?)?;
    }
    if options.interval < Duration::from_secs(1) {
        return Err(Error::refused("the collection interval is below a second", Some("pass --interval 60s".into())));
    }
    let listener = TcpListener::bind(options.listen).map_err(|e| {
        Error::refused(
            format!("cannot listen on {}: {e}", options.listen),
            Some("is another exporter (pgbackrest_exporter?) on that port? pass --listen ADDRESS:PORT".into()),
        )
    })?;
    let address = listener.local_addr().map_err(|e| Error::io("read the address of", options.listen.to_string(), e))?;
    let cache = Arc::new(Cache::default());
    let (collector_cache, config_path, interval) = (Arc::clone(&cache), options.config.clone(), options.interval);
    std::thread::Builder::new()
        .name("pgfork-exporter-collect".into())
        .spawn(move || {
            let mut known: Vec<String> = Vec::new();
            loop {
                let started = Instant::now();
                let collected = collect(config_path.as_deref());
                // Each problem is logged when it appears, not at every collection.
                let problems = collected.problems();
                for problem in problems.iter().filter(|p| !known.contains(p)) {
                    tracing::warn!("exporter: {problem}");
                }
                known = problems;
                collector_cache.store(collected);
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
        })
        .map_err(|e| Error::io("start the collector of", address.to_string(), e))?;
    server::spawn(listener, cache)?;
    Ok(Running { address })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_that_cannot_be_read_gives_status_values() {
        let collected = collect(Some(std::path::Path::new("/nonexistent/pgfork.toml")));
        assert!(collected.config_error.is_some());
        let page = metrics::exposition(Some(&collected), 1, chrono::Utc::now()).render();
        assert!(page.contains("pgbackrest_exporter_status{stanza=\"all-stanzas\"} 0"), "{page}");
        assert!(page.contains("pgfork_exporter_collections_total 1"), "{page}");
    }
}
