//! Small helpers shared across modules: durable file writes, termination signals, timings,
//! byte-size formatting.

pub mod fsx;
pub mod runtime;
pub mod signals;

/// Milliseconds since `started`, to a tenth: the unit of every timing in reports.
pub fn ms_since(started: std::time::Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0
}

/// Times consecutive steps of an operation: each lap records the milliseconds since the last.
#[derive(Debug)]
pub struct Laps {
    step: std::time::Instant,
    /// (step, milliseconds) in order.
    pub timings: Vec<(&'static str, f64)>,
}

impl Laps {
    /// Starts timing now.
    pub fn start() -> Laps {
        Laps { step: std::time::Instant::now(), timings: Vec::new() }
    }

    /// Ends step `name` and starts the next.
    pub fn lap(&mut self, name: &'static str) {
        self.timings.push((name, ms_since(self.step)));
        self.step = std::time::Instant::now();
    }
}

/// Formats a byte count for people: `1.5 GiB`, `832 KiB`, `12 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(super::human_bytes(12), "12 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
