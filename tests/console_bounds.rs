//! A real guest (the test guest under QEMU) printing as fast as its serial
//! port goes for a minute: its console files stay under the cap, `logs`
//! shows the latest output, and the daemon's CPU time over the flood is
//! printed (target: under 5% of a core).

mod common;

use common::*;
use http_body_util::BodyExt as _;
use paddock::{ConsoleLogSpec, WaitFor};
use std::path::Path;
use std::time::{Duration, Instant};

const CAP: u64 = 128 * 1024;
/// The live file is rotated after each wake-up (at most ~50 ms apart), so
/// it may pass the cap by what the guest writes in that time; the rotated
/// copy by what the guest writes while it is made.
const SLACK: u64 = 32 * 1024;
const FLOOD_SECS: u64 = 60;

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit_once(')').expect("comm").1;
    let f: Vec<u64> = after.split_whitespace().skip(11).take(2).map(|v| v.parse().expect("ticks")).collect();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[0] + f[1]) as f64 / hz
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_flooding_guest_keeps_its_console_files_under_the_cap() {
    // The daemon's default is overridden by the spec's (smaller) bound.
    let d = Daemon::start_with(&["--console-log-max-bytes", "1048576", "--console-log-files", "3"], &[]);
    let mut spec = guest_spec("flood", &format!("paddock.flood={FLOOD_SECS}"));
    spec.console_log = Some(ConsoleLogSpec { max_bytes: Some(CAP), files: Some(2) });
    let pid = d.child.as_ref().expect("daemon").id();
    let dir = d.run_dir().join("flood");
    let (live, rotated) = (dir.join("console.log"), dir.join("console.log.1"));
    block_on(async {
        d.client.up(&spec, WaitFor::Ready, 120).await.expect("up");
        let (cpu0, t0) = (cpu_secs(pid), Instant::now());
        let mut body = d.client.console("flood", true).await.expect("console");
        let (mut tail, mut max_live, mut max_rotated, mut received) = (Vec::<u8>::new(), 0, 0, 0usize);
        let deadline = Instant::now() + Duration::from_secs(FLOOD_SECS + 120);
        let done = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, body.frame()).await.expect("flood did not end in time").expect("console ended").expect("frame");
            let Some(data) = frame.data_ref() else { continue };
            received += data.len();
            tail.extend_from_slice(data);
            if tail.len() > 8192 {
                tail.drain(..tail.len() - 8192);
            }
            max_live = max_live.max(size(&live));
            max_rotated = max_rotated.max(size(&rotated));
            assert!(!dir.join("console.log.2").exists(), "more files than the spec keeps");
            let text = String::from_utf8_lossy(&tail);
            if let Some(i) = text.find("PADDOCK-FLOOD-DONE ") {
                let n: u64 = text[i + 19..].split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
                if text[i..].contains('\n') {
                    break n;
                }
            }
        };
        let (cpu, wall) = (cpu_secs(pid) - cpu0, t0.elapsed().as_secs_f64());
        println!(
            "console flood: {done} lines, {received} bytes in {wall:.1} s ({:.1} KB/s); console.log peaked at {max_live} B, console.log.1 at {max_rotated} B (cap {CAP}); daemon CPU {cpu:.2} s = {:.1}% of a core (with one follower)",
            received as f64 / wall / 1000.0,
            100.0 * cpu / wall
        );
        assert!(received as u64 > 4 * CAP, "the flood was too small to exercise rotation ({received} bytes)");
        assert!(max_live <= CAP + SLACK, "console.log reached {max_live} bytes (cap {CAP})");
        assert!(max_rotated <= CAP + SLACK, "console.log.1 reached {max_rotated} bytes (cap {CAP})");
        // `paddock logs`: the newest output, ending with the flood's end.
        let logs = d.client.console("flood", false).await.expect("logs").collect().await.expect("body").to_bytes();
        let logs = String::from_utf8_lossy(&logs);
        assert!(logs.contains(&format!("PADDOCK-FLOOD-DONE {done}")), "logs lack the latest output");
        // The guest's tty turns "\n" into "\r\n".
        let n = done - 1;
        assert!(logs.contains(&format!("flood {n}\r\n")) || logs.contains(&format!("flood {n}\n")), "logs lack the last flood round");
        d.client.remove("flood", true).await.expect("rm");
    });
}
