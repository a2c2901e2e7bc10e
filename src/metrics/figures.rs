//! What one VM uses, read from the kernel without asking its actor: the
//! hypervisor process's CPU time, memory, uptime and storage I/O
//! (`/proc/PID/{stat,statm,io}`), and its TAP's counters
//! (`/sys/class/net/TAP/statistics`). The same figures feed `/metrics`,
//! `GET /v1/stats` and `paddock stats`.
//!
//! Figures a VM does not have (no process, no TAP, a file that vanished
//! with an exiting process) are absent, never zero.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::VmInfo;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmFigures {
    pub name: String,
    pub phase: String,
    pub ready: bool,
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Seconds since the hypervisor process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<f64>,
    /// User + system CPU time of the hypervisor process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// Resident memory of the hypervisor process (guest RAM it touched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<IoFigures>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetFigures>,
}

/// Storage I/O of the hypervisor process (`/proc/PID/io`): the guest's
/// disk traffic as it reaches the host's block layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IoFigures {
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// read/write system calls of the process.
    pub read_ops: u64,
    pub write_ops: u64,
}

/// The TAP's counters, seen from the host: `rx` is what the guest sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetFigures {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

pub fn of(info: &VmInfo) -> VmFigures {
    let mut f = VmFigures {
        name: info.name.clone(),
        phase: info.phase.name().to_string(),
        ready: info.ready,
        generation: info.generation,
        pid: info.pid,
        ..VmFigures::default()
    };
    if let Some(pid) = info.pid.filter(|_| info.phase.is_active()) {
        let proc_dir = Path::new("/proc").join(pid.to_string());
        if let Some((cpu, started)) = stat(&proc_dir) {
            f.cpu_seconds = Some(cpu);
            f.uptime_seconds = system_uptime().map(|up| (up - started).max(0.0));
        }
        f.memory_rss_bytes = rss(&proc_dir);
        f.io = io(&proc_dir);
    }
    if let Some(tap) = info.network.as_ref().and_then(|n| n.tap.as_deref()).filter(|_| info.phase.is_active()) {
        f.net = net(tap);
    }
    f
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => p as u64,
        _ => 4096,
    }
}

/// (utime + stime, start time after boot), in seconds.
fn stat(proc_dir: &Path) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields
    // are counted after its closing one (field 3, `state`, comes first).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let ticks = clock_ticks();
    // utime = field 14, stime = 15, starttime = 22; `state` is field 3 = index 0.
    Some(((num(11)? + num(12)?) / ticks, num(19)? / ticks))
}

fn system_uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()
}

fn rss(proc_dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc_dir.join("statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn io(proc_dir: &Path) -> Option<IoFigures> {
    let text = std::fs::read_to_string(proc_dir.join("io")).ok()?;
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok());
    Some(IoFigures {
        read_bytes: field("read_bytes:")?,
        write_bytes: field("write_bytes:")?,
        read_ops: field("syscr:")?,
        write_ops: field("syscw:")?,
    })
}

fn net(tap: &str) -> Option<NetFigures> {
    // TAP names come from the daemon's own lease table, never from a user;
    // still, a name with a slash would leave the directory.
    if tap.contains('/') || tap.contains("..") {
        return None;
    }
    let dir = Path::new("/sys/class/net").join(tap).join("statistics");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok()?.trim().parse::<u64>().ok();
    Some(NetFigures { rx_bytes: read("rx_bytes")?, rx_packets: read("rx_packets")?, tx_bytes: read("tx_bytes")?, tx_packets: read("tx_packets")? })
}

/// The resident memory of this process.
pub fn own_rss() -> Option<u64> {
    rss(Path::new("/proc/self"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn own_process_figures_are_read() {
        let me = Path::new("/proc/self");
        let (cpu, started) = stat(me).unwrap();
        assert!(cpu >= 0.0 && started > 0.0);
        assert!(rss(me).unwrap() > 0);
        assert!(io(me).is_some());
        assert!(net("lo").is_some());
        assert!(net("../x").is_none());
    }
}
