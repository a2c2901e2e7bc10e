//! The restart history of one VM (vm/restart.rs decides with it; the
//! store keeps it).

use serde::{Deserialize, Serialize};

/// The restart history of one VM, persisted with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streak {
    /// Consecutive automatic restarts (the backoff exponent).
    pub count: u32,
    /// When the restarts inside the window happened (unix ms).
    pub recent: Vec<u64>,
}

impl Streak {
    /// An operator's start or stop ends the streak.
    pub fn reset(&mut self) {
        self.count = 0;
        self.recent.clear();
    }
}
