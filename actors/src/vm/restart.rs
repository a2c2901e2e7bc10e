//! The restart policy as a pure decision: given the policy, how the VM
//! ended, how long it ran and the recent restarts, restart after a delay or
//! give up.
//!
//! Backoff is exponential with full jitter: the n-th consecutive restart
//! waits a uniformly random time in [0, min(cap, base * 2^n)]. At most
//! `max_restarts` restarts fit in `window_secs`; one more and the VM is
//! Failed. An uptime of `stable_secs` forgets the streak.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::spec::{RestartPolicy, RestartSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The policy does not restart this kind of end.
    Stay,
    Restart { delay: Duration, attempt: u32, bound: Duration },
    GiveUp { reason: String },
}

/// The restart history of one VM (in memory: after a supervisor restart
/// the streak starts over, which errs on the side of restarting).
#[derive(Debug, Default)]
pub struct RestartTracker {
    recent: VecDeque<Instant>,
    streak: u32,
}

impl RestartTracker {
    /// `failure`: crash, panic, signal or non-zero exit (as opposed to the
    /// guest powering itself off). `uptime`: how long the run lasted.
    /// `random` is a value in [0, 1) (injected so the rule is testable).
    pub fn decide(&mut self, spec: &RestartSpec, failure: bool, uptime: Duration, now: Instant, random: f64) -> Decision {
        let wanted = match spec.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => failure,
            RestartPolicy::Always => true,
        };
        if !wanted {
            return Decision::Stay;
        }
        if uptime >= Duration::from_secs(spec.stable_secs) {
            self.streak = 0;
            self.recent.clear();
        }
        let window = Duration::from_secs(spec.window_secs);
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= spec.max_restarts {
            return Decision::GiveUp {
                reason: format!(
                    "ended {} times within {} s (restart.max_restarts = {}); fix the guest, then `paddock start`",
                    self.recent.len() + 1,
                    spec.window_secs,
                    spec.max_restarts
                ),
            };
        }
        let exp = 2u64.saturating_pow(self.streak.min(32));
        let bound_ms = spec.backoff_base_ms.saturating_mul(exp).min(spec.backoff_cap_ms);
        let delay = Duration::from_millis((bound_ms as f64 * random.clamp(0.0, 1.0)) as u64);
        self.streak += 1;
        self.recent.push_back(now);
        Decision::Restart { delay, attempt: self.streak, bound: Duration::from_millis(bound_ms) }
    }

    /// An operator's start or stop ends the streak.
    pub fn reset(&mut self) {
        self.streak = 0;
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: RestartPolicy) -> RestartSpec {
        RestartSpec { policy, max_restarts: 3, window_secs: 600, backoff_base_ms: 1000, backoff_cap_ms: 5000, stable_secs: 300 }
    }

    #[test]
    fn never_and_on_failure_and_always() {
        let now = Instant::now();
        let short = Duration::from_secs(1);
        assert_eq!(RestartTracker::default().decide(&spec(RestartPolicy::Never), true, short, now, 0.5), Decision::Stay);
        assert_eq!(RestartTracker::default().decide(&spec(RestartPolicy::OnFailure), false, short, now, 0.5), Decision::Stay);
        assert!(matches!(RestartTracker::default().decide(&spec(RestartPolicy::OnFailure), true, short, now, 0.5), Decision::Restart { .. }));
        assert!(matches!(RestartTracker::default().decide(&spec(RestartPolicy::Always), false, short, now, 0.5), Decision::Restart { .. }));
    }

    #[test]
    fn bounds_double_up_to_the_cap_and_delays_stay_within_them() {
        let mut t = RestartTracker::default();
        let mut s = spec(RestartPolicy::OnFailure);
        s.max_restarts = 10;
        let now = Instant::now();
        let mut bounds = Vec::new();
        for _ in 0..5 {
            match t.decide(&s, true, Duration::from_secs(1), now, 0.999) {
                Decision::Restart { delay, bound, .. } => {
                    assert!(delay <= bound);
                    bounds.push(bound.as_millis());
                }
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(bounds, vec![1000, 2000, 4000, 5000, 5000]);
        // Full jitter: a random draw of 0 means no wait at all.
        let mut t = RestartTracker::default();
        assert!(matches!(t.decide(&s, true, Duration::ZERO, now, 0.0), Decision::Restart { delay, .. } if delay.is_zero()));
    }

    #[test]
    fn gives_up_after_max_restarts_in_the_window() {
        let mut t = RestartTracker::default();
        let s = spec(RestartPolicy::OnFailure);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(matches!(t.decide(&s, true, Duration::ZERO, now, 0.5), Decision::Restart { .. }));
        }
        assert!(matches!(t.decide(&s, true, Duration::ZERO, now, 0.5), Decision::GiveUp { .. }));
        // Outside the window the old restarts no longer count.
        let later = now + Duration::from_secs(601);
        assert!(matches!(t.decide(&s, true, Duration::ZERO, later, 0.5), Decision::Restart { .. }));
    }

    #[test]
    fn stable_uptime_resets_the_streak() {
        let mut t = RestartTracker::default();
        let s = spec(RestartPolicy::OnFailure);
        let now = Instant::now();
        for _ in 0..3 {
            t.decide(&s, true, Duration::ZERO, now, 0.999);
        }
        match t.decide(&s, true, Duration::from_secs(301), now, 0.999) {
            Decision::Restart { attempt, bound, .. } => assert_eq!((attempt, bound.as_millis()), (1, 1000)),
            d => panic!("{d:?}"),
        }
    }
}
