//! Failpoints for fault-injection tests (the `fail` crate, compiled in only
//! with the `failpoints` feature). `crash_point!("up.after-insert")` makes
//! the daemon die on the spot, like `kill -9`, when it is configured with
//! `FAILPOINTS=up.after-insert=return`; the test then restarts the daemon
//! and checks that nothing was lost or leaked.
//!
//! The points, in order of the operation they interrupt:
//!   up:    up.before-insert, up.after-insert, lease.after-row
//!   start: start.after-dir, start.after-spawn, start.after-run-recorded,
//!          start.before-running
//!   stop:  stop.after-intent
//!   rm:    rm.after-intent, rm.after-dir, rm.after-rows
//!   adopt: adopt.after-verify
//!   cloud-hypervisor quit: ch.quit.after-vm-shutdown (not in CRASH_POINTS:
//!          only a CH VM reaches it)
//! and one that fails an actor instead of the daemon: console.output.

#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if fail::eval($name, |_| ()).is_some() {
                eprintln!("failpoint {} reached: aborting", $name);
                std::process::abort();
            }
        }
    };
}

/// All crash points, for tests that walk through them.
pub const CRASH_POINTS: &[&str] = &[
    "up.before-insert",
    "up.after-insert",
    "lease.after-row",
    "start.after-dir",
    "start.after-spawn",
    "start.after-run-recorded",
    "start.before-running",
    "stop.after-intent",
    "rm.after-intent",
    "rm.after-dir",
    "rm.after-rows",
    "adopt.after-verify",
];
