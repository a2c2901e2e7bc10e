//! The README's first command, `scripts/demo.sh` (the main job), end to
//! end with this build's binary: the daemon starts (confined, from a
//! fresh temporary state dir), boots the test guest to ready, shows it
//! and its console, stops it through ACPI, removes it and exits 0.

use std::process::Command;

#[test]
fn the_main_job_runs_end_to_end() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/scripts/demo.sh"))
        .env("PADDOCK_DEMO_BIN", env!("CARGO_BIN_EXE_paddock"))
        .env_remove("PADDOCK_SOCKET")
        .output()
        .expect("run scripts/demo.sh");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo.sh failed ({}):\n{stdout}\n{stderr}", out.status);
    // It booted to ready, was shown running and ready, printed console
    // lines, and stopped through ACPI.
    let section = |title: &str| stdout.split(title).nth(1).and_then(|s| s.split("\n== ").next()).unwrap_or_default().to_string();
    let ps = section("== paddock ps\n");
    assert!(ps.lines().any(|l| l.starts_with("demo ") && l.contains("running") && l.contains(" yes ")), "ps after up:\n{stdout}");
    // The last lines: the ready marker, or the shell's banner after it.
    let logs = section("== paddock logs demo");
    assert!(logs.contains("PADDOCK-GUEST-READY") || logs.contains("BusyBox"), "no console lines:\n{stdout}");
    let stop = stdout.split("== paddock stop demo").nth(1).unwrap_or_default();
    assert!(stop.to_lowercase().contains("acpi"), "the stop did not end at the ACPI rung:\n{stdout}");
    assert!(stdout.trim_end().ends_with("demo: OK"), "{stdout}");
}
