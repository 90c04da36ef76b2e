//! `exporter`: serve Prometheus metrics until stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::ops::exporter::{ExporterOptions, start};

/// A duration written as seconds with an optional unit: `90`, `60s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

impl FromStr for Interval {
    type Err = String;

    fn from_str(text: &str) -> Result<Interval, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 60s, 5m or 1h"))?;
        let seconds = match unit {
            "" | "s" => n,
            "m" => n.saturating_mul(60),
            "h" => n.saturating_mul(3600),
            other => return Err(format!("{other:?} is not a unit: use s, m or h")),
        };
        Ok(Interval(Duration::from_secs(seconds)))
    }
}

/// Arguments of `exporter`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExporterArgs {
    /// Address and port to serve /metrics on.
    #[arg(long, default_value = "0.0.0.0:9854")]
    pub listen: SocketAddr,
    /// How often to read the repositories and clusters (scrapes are served from the last reading).
    #[arg(long, default_value = "60s")]
    pub interval: Interval,
    /// Configuration file [default: $PGFORK_CONFIG or /etc/pgfork/pgfork.toml]; every stanza in it
    /// is exported.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ExporterArgs {
    /// Serves until the process is stopped (SIGTERM or Ctrl-C end it: it holds nothing to undo).
    pub fn run(self) -> anyhow::Result<()> {
        let options = ExporterOptions { listen: self.listen, interval: self.interval.0, config: self.config };
        let running = start(&options)?;
        eprintln!(
            "pgfork: exporter serving http://{}/metrics, collecting every {} s",
            running.address,
            options.interval.as_secs()
        );
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units() {
        assert_eq!("60s".parse::<Interval>().unwrap().0, Duration::from_secs(60));
        assert_eq!("90".parse::<Interval>().unwrap().0, Duration::from_secs(90));
        assert_eq!("5m".parse::<Interval>().unwrap().0, Duration::from_secs(300));
        assert_eq!("1h".parse::<Interval>().unwrap().0, Duration::from_secs(3600));
        assert!("1d".parse::<Interval>().is_err());
        assert!("s".parse::<Interval>().is_err());
        assert!("".parse::<Interval>().is_err());
    }
}
