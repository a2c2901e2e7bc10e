//! Human-readable output.

use crate::{Event, EventKind, VmInfo, VmPhase};

pub fn vms(vms: &[VmInfo]) -> String {
    let mut rows = vec![["NAME".to_string(), "STATE".into(), "READY".into(), "PID".into(), "ACCEL".into(), "REACH".into()]];
    for v in vms {
        rows.push([
            v.name.clone(),
            phase(&v.phase),
            if v.ready { "yes".into() } else { "-".into() },
            v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            v.accel.clone().unwrap_or_else(|| "-".into()),
            if v.addresses.is_empty() { "-".into() } else { v.addresses.join(", ") },
        ]);
    }
    grid(rows.into_iter().map(Vec::from).collect())
}

/// Rows as left-aligned columns two spaces apart.
pub fn grid(rows: Vec<Vec<String>>) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn phase(p: &VmPhase) -> String {
    match p {
        VmPhase::Stopping { rung } => format!("stopping ({})", rung.as_str()),
        VmPhase::Stopped { rung: Some(r), .. } => format!("stopped ({})", r.as_str()),
        VmPhase::Stopped { rung: None, .. } => "stopped".into(),
        VmPhase::Crashed { exit } => format!("crashed ({exit})"),
        VmPhase::Failed { reason } => format!("failed ({reason})"),
        other => other.name().into(),
    }
}

pub fn event(ev: &Event) -> String {
    let what = match &ev.kind {
        EventKind::Phase { phase: p } => format!("phase {}", phase(p)),
        EventKind::Rung { rung } => format!("ladder rung {}", rung.as_str()),
        EventKind::ChildRestarted { child } => format!("{child} actor restarted"),
        other => serde_json::to_value(other).ok().and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string)).unwrap_or_default(),
    };
    let msg = ev.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
    format!("#{:<6} {:<20} gen {:<4} {what}{msg}", ev.seq, ev.vm, ev.generation)
}
