//! Step times of one operation (the `up` critical path), logged as one
//! line so that where the time goes is read from the daemon's log:
//!   up steps vm=web total_ms=12.3 steps="desired=1.1 lease=0.0 disks=4.2 ..."

use std::fmt::Write as _;
use std::time::Instant;

pub struct Steps {
    start: Instant,
    last: Instant,
    laps: Vec<(&'static str, f64)>,
}

impl Default for Steps {
    fn default() -> Self {
        Self::new()
    }
}

impl Steps {
    pub fn new() -> Steps {
        let now = Instant::now();
        Steps { start: now, last: now, laps: Vec::with_capacity(12) }
    }

    /// Ends the step called `name`.
    pub fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps.push((name, (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
    }

    /// "name=ms name=ms ..." in the order the steps ran.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (name, ms) in &self.laps {
            let _ = write!(s, "{}{name}={ms:.2}", if s.is_empty() { "" } else { " " });
        }
        s
    }

    pub fn total_ms(&self) -> f64 {
        (self.last - self.start).as_secs_f64() * 1e3
    }

    pub fn log(&self, vm: &str, what: &'static str) {
        tracing::info!(vm, total_ms = format!("{:.2}", self.total_ms()), steps = %self.summary(), "{what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_steps_in_order_and_total_covers_them() {
        let mut s = Steps::new();
        s.lap("a");
        s.lap("b");
        let text = s.summary();
        assert!(text.starts_with("a=") && text.contains(" b="), "{text}");
        let sum: f64 = s.laps.iter().map(|(_, ms)| ms).sum();
        assert!((s.total_ms() - sum).abs() < 1e-6);
    }
}
