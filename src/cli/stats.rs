//! `paddock stats [NAME]` (one table, or `--json`) and `paddock top` (the
//! same table, refreshed, with CPU use between refreshes).

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use super::{table, CliError};
use crate::client::Client;
use crate::metrics::figures::VmFigures;

pub async fn stats(client: &Client, json: bool, name: Option<&str>) -> Result<(), CliError> {
    let figures = client.stats(name).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&figures).unwrap_or_default());
    } else {
        print!("{}", render(&figures, None));
    }
    Ok(())
}

/// Redraws until interrupted, or `iterations` times.
pub async fn top(client: &Client, interval: Duration, iterations: Option<u64>) -> Result<(), CliError> {
    let mut before: Option<(Instant, HashMap<String, f64>)> = None;
    let mut drawn = 0u64;
    let mut out = std::io::stdout();
    loop {
        let figures = client.stats(None).await?;
        let now = Instant::now();
        let cpu_now: HashMap<String, f64> = figures.iter().filter_map(|f| Some((f.name.clone(), f.cpu_seconds?))).collect();
        let usage = before.as_ref().map(|(then, cpu_then)| {
            let wall = now.duration_since(*then).as_secs_f64().max(1e-3);
            cpu_now
                .iter()
                .filter_map(|(n, c)| Some((n.clone(), 100.0 * (c - cpu_then.get(n)?) / wall)))
                .collect::<HashMap<String, f64>>()
        });
        // Home and clear, then the table: a terminal shows one frame.
        let _ = write!(out, "\x1b[H\x1b[2J{}", render(&figures, usage.as_ref()));
        let _ = out.flush();
        before = Some((now, cpu_now));
        drawn += 1;
        if iterations.is_some_and(|n| drawn >= n) {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

fn render(figures: &[VmFigures], cpu_percent: Option<&HashMap<String, f64>>) -> String {
    let dash = || "-".to_string();
    let mut rows = vec![["NAME", "STATE", "READY", "UPTIME", "CPU", "MEM", "DISK READ/WRITTEN", "NET RX/TX"].map(String::from).to_vec()];
    for f in figures {
        let cpu = match (cpu_percent.and_then(|m| m.get(&f.name)), f.cpu_seconds) {
            (Some(p), _) => format!("{p:.1}%"),
            (None, Some(s)) => format!("{s:.2}s"),
            (None, None) => dash(),
        };
        rows.push(vec![
            f.name.clone(),
            f.phase.clone(),
            if f.ready { "yes".into() } else { dash() },
            f.uptime_seconds.map_or_else(dash, duration),
            cpu,
            f.memory_rss_bytes.map_or_else(dash, bytes),
            f.io.map_or_else(dash, |i| format!("{}/{}", bytes(i.read_bytes), bytes(i.write_bytes))),
            // The TAP's rx is what the guest sent.
            f.net.map_or_else(dash, |n| format!("{}/{}", bytes(n.tx_bytes), bytes(n.rx_bytes))),
        ]);
    }
    table::grid(rows)
}

fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(3 << 30), "3.0GiB");
        assert_eq!(duration(5.9), "5s");
        assert_eq!(duration(125.0), "2m05s");
        assert_eq!(duration(7260.0), "2h01m");
    }
}
