//! The restart policy as a pure decision: given the policy, how the VM
//! ended, how long it ran and the recent restarts, restart after a delay or
//! give up.
//!
//! Backoff is exponential with full jitter: the n-th consecutive restart
//! waits a uniformly random time in [0, min(cap, base * 2^n)]. At most
//! `max_restarts` restarts fit in `window_secs`; one more and the VM is
//! Failed. An uptime of `stable_secs` forgets the streak.
//!
//! The streak is plain data in wall-clock milliseconds so the store can
//! keep it: a daemon restart does not forgive a crash loop.

use crate::spec::{RestartPolicy, RestartSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The policy does not restart this kind of end.
    Stay,
    Restart { delay_ms: u64, attempt: u32, bound_ms: u64 },
    GiveUp { reason: String },
}

pub use crate::state::streak::Streak;

/// `failure`: crash, panic, signal or non-zero exit (as opposed to the
/// guest powering itself off). `uptime_ms`: how long the run lasted.
/// `random` is a value in [0, 1) (injected so the rule is testable).
pub fn decide(spec: &RestartSpec, streak: &mut Streak, failure: bool, uptime_ms: u64, now_ms: u64, random: f64) -> Decision {
    let wanted = match spec.policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => failure,
        RestartPolicy::Always => true,
    };
    if !wanted {
        return Decision::Stay;
    }
    // Validation keeps both at least 1 s; a stored spec from before that
    // rule is read as 1 s, never as "forget everything".
    if uptime_ms >= spec.stable_secs.max(1).saturating_mul(1000) {
        streak.reset();
    }
    let window_ms = spec.window_secs.max(1).saturating_mul(1000);
    streak.recent.retain(|t| now_ms.saturating_sub(*t) <= window_ms);
    if streak.recent.len() as u32 >= spec.max_restarts {
        return Decision::GiveUp {
            reason: format!(
                "ended {} times within {} s (restart.max_restarts = {}); fix the guest, then `paddock start`",
                streak.recent.len() + 1,
                spec.window_secs,
                spec.max_restarts
            ),
        };
    }
    let exp = 2u64.saturating_pow(streak.count.min(32));
    let bound_ms = spec.backoff_base_ms.saturating_mul(exp).min(spec.backoff_cap_ms);
    let delay_ms = (bound_ms as f64 * random.clamp(0.0, 1.0)) as u64;
    streak.count += 1;
    streak.recent.push(now_ms);
    Decision::Restart { delay_ms, attempt: streak.count, bound_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: RestartPolicy) -> RestartSpec {
        RestartSpec { policy, max_restarts: 3, window_secs: 600, backoff_base_ms: 1000, backoff_cap_ms: 5000, stable_secs: 300 }
    }

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn never_and_on_failure_and_always() {
        let d = |p, failure| decide(&spec(p), &mut Streak::default(), failure, 1000, NOW, 0.5);
        assert_eq!(d(RestartPolicy::Never, true), Decision::Stay);
        assert_eq!(d(RestartPolicy::OnFailure, false), Decision::Stay);
        assert!(matches!(d(RestartPolicy::OnFailure, true), Decision::Restart { .. }));
        assert!(matches!(d(RestartPolicy::Always, false), Decision::Restart { .. }));
    }

    #[test]
    fn bounds_double_up_to_the_cap_and_delays_stay_within_them() {
        let mut t = Streak::default();
        let mut s = spec(RestartPolicy::OnFailure);
        s.max_restarts = 10;
        let mut bounds = Vec::new();
        for _ in 0..5 {
            match decide(&s, &mut t, true, 1000, NOW, 0.999) {
                Decision::Restart { delay_ms, bound_ms, .. } => {
                    assert!(delay_ms <= bound_ms);
                    bounds.push(bound_ms);
                }
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(bounds, vec![1000, 2000, 4000, 5000, 5000]);
        // Full jitter: a random draw of 0 means no wait at all.
        assert!(matches!(decide(&s, &mut Streak::default(), true, 0, NOW, 0.0), Decision::Restart { delay_ms: 0, .. }));
    }

    #[test]
    fn gives_up_after_max_restarts_in_the_window() {
        let mut t = Streak::default();
        let s = spec(RestartPolicy::OnFailure);
        for _ in 0..3 {
            assert!(matches!(decide(&s, &mut t, true, 0, NOW, 0.5), Decision::Restart { .. }));
        }
        assert!(matches!(decide(&s, &mut t, true, 0, NOW, 0.5), Decision::GiveUp { .. }));
        // Outside the window the old restarts no longer count.
        assert!(matches!(decide(&s, &mut t, true, 0, NOW + 601_000, 0.5), Decision::Restart { .. }));
    }

    #[test]
    fn stable_uptime_resets_the_streak() {
        let mut t = Streak::default();
        let s = spec(RestartPolicy::OnFailure);
        for _ in 0..3 {
            decide(&s, &mut t, true, 0, NOW, 0.999);
        }
        match decide(&s, &mut t, true, 301_000, NOW, 0.999) {
            Decision::Restart { attempt, bound_ms, .. } => assert_eq!((attempt, bound_ms), (1, 1000)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn zero_limits_from_an_old_store_still_bind() {
        let mut s = spec(RestartPolicy::OnFailure);
        (s.stable_secs, s.window_secs, s.max_restarts) = (0, 0, 2);
        let mut t = Streak::default();
        let mut restarts = 0;
        for i in 0..50 {
            if matches!(decide(&s, &mut t, true, 10, NOW + i * 10, 0.0), Decision::Restart { .. }) {
                restarts += 1;
            }
        }
        assert_eq!(restarts, 2);
    }

    #[test]
    fn the_streak_round_trips_through_json() {
        let mut t = Streak::default();
        decide(&spec(RestartPolicy::Always), &mut t, true, 0, NOW, 0.5);
        let back: Streak = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }
}
