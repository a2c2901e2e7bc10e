//! One cgroup per VM, holding its hypervisor (and vsock device), with the
//! spec's `[limits]`. cgroup v2 (production hosts): one directory with
//! the memory, cpu, pids and io controllers. cgroup v1 (this development
//! host): one directory per controller (memory, cpu, cpuacct, pids,
//! blkio). The path is `paddock/<instance>/<vm>` under each hierarchy, so
//! a restarted daemon finds a VM's cgroup again from its name.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::limits::Limits;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy at {root:?} (neither cgroup.controllers nor a memory controller); mount cgroup2 (or v1 memory, cpu, pids), or serve with --no-confine")]
    NoHierarchy { root: PathBuf },
    #[error("cannot create the cgroup {path:?}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set {file:?} to {value:?}{hint}")]
    Write {
        file: PathBuf,
        value: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V1 { root: PathBuf },
    V2 { root: PathBuf },
}

impl Layout {
    /// What `root` (normally /sys/fs/cgroup) holds.
    pub fn detect(root: &Path) -> Result<Layout, CgroupError> {
        if root.join("cgroup.controllers").exists() {
            Ok(Layout::V2 { root: root.to_path_buf() })
        } else if root.join("memory").is_dir() {
            Ok(Layout::V1 { root: root.to_path_buf() })
        } else {
            Err(CgroupError::NoHierarchy { root: root.to_path_buf() })
        }
    }
}

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where the host's hierarchy is seen from here, found once. `ip netns
/// exec` mounts a fresh sysfs over /sys, hiding /sys/fs/cgroup: then the
/// same hierarchy is reached through init's root.
pub fn host_layout() -> Option<Layout> {
    static LAYOUT: std::sync::OnceLock<Option<Layout>> = std::sync::OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let found = Layout::detect(Path::new(CGROUP_ROOT)).ok().or_else(mount_private);
            match &found {
                Some(l) => tracing::info!(layout = ?l, "cgroup hierarchy"),
                None => tracing::warn!("no cgroup hierarchy at {CGROUP_ROOT} and none could be mounted; confined VMs cannot start"),
            }
            found
        })
        .clone()
}

/// Where the daemon mounts the hierarchy when /sys/fs/cgroup is hidden.
const PRIVATE_CGROUP_ROOT: &str = "/run/paddock-cgroup";

/// Mounts the host's hierarchy (the same one: v1 hierarchies are shared
/// by their controller set) in our mount namespace. Which version: v1
/// when /proc/self/cgroup names controllers, else v2.
fn mount_private() -> Option<Layout> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = Path::new(PRIVATE_CGROUP_ROOT);
    let v1: Vec<&str> = own.lines().filter_map(|l| l.split(':').nth(1)).filter(|c| !c.is_empty() && !c.starts_with("name=")).collect();
    let mounted = if v1.is_empty() {
        mount_one(root, "cgroup2", "")
    } else {
        // A joint hierarchy (cpu,cpuacct) is mounted once per name.
        let mut ok = true;
        for set in v1 {
            let dir = root.join(set);
            ok &= mount_one(&dir, "cgroup", set);
            for c in set.split(',').filter(|c| *c != set) {
                let _ = std::os::unix::fs::symlink(set, root.join(c));
            }
        }
        ok
    };
    if !mounted {
        return None;
    }
    tracing::info!(root = PRIVATE_CGROUP_ROOT, "mounted the cgroup hierarchy (hidden at {CGROUP_ROOT}, e.g. under `ip netns exec`)");
    Layout::detect(root).ok()
}

fn mount_one(dir: &Path, fstype: &str, options: &str) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    if dir.join("cgroup.procs").exists() {
        return true; // mounted by an earlier start in this namespace
    }
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let (Ok(src), Ok(target), Ok(fs), Ok(opts)) = (
        std::ffi::CString::new(fstype),
        std::ffi::CString::new(dir.as_os_str().as_bytes()),
        std::ffi::CString::new(fstype),
        std::ffi::CString::new(options),
    ) else {
        return false;
    };
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, opts.as_ptr().cast()) };
    if r != 0 {
        tracing::warn!(dir = ?dir, fstype, options, error = %std::io::Error::last_os_error(), "cannot mount the cgroup hierarchy");
    }
    r == 0
}

/// v1 controllers, each its own hierarchy.
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "blkio"];

/// A VM's cgroup (it may not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    layout: Layout,
    rel: PathBuf,
}

/// One file to write: (controller, file name, value).
pub type Setting = (&'static str, &'static str, String);

impl VmCgroup {
    pub fn new(layout: Layout, instance: &str, vm: &str) -> Self {
        VmCgroup { layout, rel: Path::new("paddock").join(instance).join(vm) }
    }

    /// The VM's cgroup on this host, if it has a hierarchy.
    pub fn on_host(instance: &str, vm: &str) -> Option<Self> {
        host_layout().map(|l| Self::new(l, instance, vm))
    }

    /// The directory of `controller` (v2: the one directory).
    pub fn dir(&self, controller: &str) -> PathBuf {
        match &self.layout {
            Layout::V1 { root } => root.join(controller).join(&self.rel),
            Layout::V2 { root } => root.join(&self.rel),
        }
    }

    /// Every directory of this cgroup, one per hierarchy (v1 only those
    /// whose controller is mounted).
    fn dirs(&self) -> Vec<(&'static str, PathBuf)> {
        match &self.layout {
            Layout::V1 { root } => V1_CONTROLLERS.iter().filter(|c| root.join(c).is_dir()).map(|c| (*c, self.dir(c))).collect(),
            Layout::V2 { .. } => vec![("", self.dir(""))],
        }
    }

    /// The files that carry `limits` with a memory cap of `memory_max`.
    pub fn settings(&self, limits: &Limits, memory_max: u64) -> Vec<Setting> {
        let mem = memory_max.to_string();
        let mut s: Vec<Setting> = Vec::new();
        match self.layout {
            Layout::V1 { .. } => {
                s.push(("memory", "memory.limit_in_bytes", mem.clone()));
                // With swap accounting, swap counts against the same cap.
                s.push(("memory", "memory.memsw.limit_in_bytes", mem));
                s.push(("pids", "pids.max", limits.pids_max.to_string()));
                if let Some(w) = limits.cpu_weight {
                    // v1 shares: 1024 is the default as 100 is in v2.
                    s.push(("cpu", "cpu.shares", (u64::from(w) * 1024 / 100).max(2).to_string()));
                }
                if let Some(c) = limits.cpu_max {
                    s.push(("cpu", "cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                    s.push(("cpu", "cpu.cfs_quota_us", cpu_quota_us(c).to_string()));
                }
                if let Some(w) = limits.io_weight {
                    // blkio weights run 10..=1000.
                    s.push(("blkio", "blkio.weight", (w / 10).clamp(10, 1000).to_string()));
                }
            }
            Layout::V2 { .. } => {
                s.push(("memory", "memory.max", mem));
                s.push(("memory", "memory.swap.max", "0".into()));
                s.push(("pids", "pids.max", limits.pids_max.to_string()));
                if let Some(w) = limits.cpu_weight {
                    s.push(("cpu", "cpu.weight", w.to_string()));
                }
                if let Some(c) = limits.cpu_max {
                    s.push(("cpu", "cpu.max", format!("{} {CPU_PERIOD_US}", cpu_quota_us(c))));
                }
                if let Some(w) = limits.io_weight {
                    s.push(("io", "io.weight", format!("default {w}")));
                }
            }
        }
        s
    }

    /// Creates the cgroup afresh (a previous run's counters gone when it
    /// is empty), writes the limits and opens each `cgroup.procs` for the
    /// child to join before it execs.
    pub fn create(&self, limits: &Limits, memory_max: u64) -> Result<Vec<OwnedFd>, CgroupError> {
        for (_, dir) in self.dirs() {
            // Empty from the last run: start counters (oom_kill, peak) at 0.
            let _ = std::fs::remove_dir(&dir);
            std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create { path: dir.clone(), source })?;
        }
        if let Layout::V2 { root } = &self.layout {
            enable_v2_controllers(root, &self.rel)?;
        }
        for (controller, file, value) in self.settings(limits, memory_max) {
            let path = self.dir(controller).join(file);
            if file == "memory.memsw.limit_in_bytes" && !path.exists() {
                continue; // no swap accounting on this kernel
            }
            let hint = if controller == "blkio" || controller == "io" { " (limits.io_weight needs the io controller with BFQ; drop it)" } else { "" };
            std::fs::write(&path, &value).map_err(|source| CgroupError::Write { file: path.clone(), value: value.clone(), hint, source })?;
        }
        let mut procs = Vec::new();
        for (_, dir) in self.dirs() {
            let path = dir.join("cgroup.procs");
            let f = std::fs::OpenOptions::new().write(true).open(&path).map_err(|source| CgroupError::Write { file: path, value: "0".into(), hint: "", source })?;
            procs.push(f.into());
        }
        Ok(procs)
    }

    /// Removes the cgroup (only succeeds once it is empty), and its
    /// instance's directory once no VM's is left in it.
    pub fn remove(&self) {
        for (_, dir) in self.dirs() {
            let _ = std::fs::remove_dir(&dir);
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    /// How often the kernel's OOM killer struck inside this cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        let (file, key) = match self.layout {
            Layout::V1 { .. } => ("memory.oom_control", "oom_kill"),
            Layout::V2 { .. } => ("memory.events", "oom_kill"),
        };
        keyed(&std::fs::read_to_string(self.dir("memory").join(file)).ok()?, key)
    }

    /// CPU time and memory now and at peak.
    pub fn stats(&self) -> Option<CgroupStats> {
        let read = |c: &str, f: &str| std::fs::read_to_string(self.dir(c).join(f)).ok();
        let num = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
        match self.layout {
            Layout::V1 { .. } => Some(CgroupStats {
                cpu_usec: num(read("cpuacct", "cpuacct.usage")).map(|ns| ns / 1000),
                memory_bytes: num(read("memory", "memory.usage_in_bytes"))?,
                memory_peak_bytes: num(read("memory", "memory.max_usage_in_bytes")),
                memory_max_bytes: num(read("memory", "memory.limit_in_bytes")),
                pids: num(read("pids", "pids.current")),
                oom_kills: self.oom_kills(),
            }),
            Layout::V2 { .. } => Some(CgroupStats {
                cpu_usec: read("cpu", "cpu.stat").and_then(|s| keyed(&s, "usage_usec")),
                memory_bytes: num(read("memory", "memory.current"))?,
                memory_peak_bytes: num(read("memory", "memory.peak")),
                memory_max_bytes: num(read("memory", "memory.max")),
                pids: num(read("pids", "pids.current")),
                oom_kills: self.oom_kills(),
            }),
        }
    }
}

/// What `inspect` and the API show of a running VM's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CgroupStats {
    pub cpu_usec: Option<u64>,
    pub memory_bytes: u64,
    pub memory_peak_bytes: Option<u64>,
    pub memory_max_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub oom_kills: Option<u64>,
}

const CPU_PERIOD_US: u64 = 100_000;

fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// `key N` from a flat keyed file (memory.events, cpu.stat, oom_control).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next().and_then(|v| v.parse().ok())).flatten()
    })
}

/// v2: controllers reach a cgroup only when every ancestor enables them
/// for its children (`+memory +cpu +pids` in cgroup.subtree_control; io
/// where available).
fn enable_v2_controllers(root: &Path, rel: &Path) -> Result<(), CgroupError> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let want: Vec<String> = ["memory", "cpu", "pids", "io"].iter().filter(|c| available.split_whitespace().any(|a| a == **c)).map(|c| format!("+{c}")).collect();
    let mut dir = root.to_path_buf();
    // Every ancestor of the VM's cgroup, not the VM's own.
    let parents: Vec<_> = rel.components().collect();
    for comp in parents.iter().take(parents.len().saturating_sub(1)) {
        dir = dir.join(comp);
        for c in &want {
            let file = dir.join("cgroup.subtree_control");
            std::fs::write(&file, c).map_err(|source| CgroupError::Write { file, value: c.clone(), hint: "", source })?;
        }
    }
    Ok(())
}

/// The reason a hypervisor ended, when its cgroup's OOM killer did it.
pub fn oom_fault(cg: &VmCgroup) -> Option<String> {
    match cg.oom_kills() {
        Some(n) if n > 0 => Some(format!(
            "OOM: the kernel killed the hypervisor at its memory cap ({} MiB, memory_mib + limits.memory_overhead_mib)",
            std::fs::read_to_string(cg.dir("memory").join(match cg.layout {
                Layout::V1 { .. } => "memory.limit_in_bytes",
                Layout::V2 { .. } => "memory.max",
            }))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|b| b >> 20)
            .unwrap_or(0)
        )),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { memory_overhead_mib: Some(64), cpu_weight: Some(200), cpu_max: Some(1.5), pids_max: 100, io_weight: Some(500) }
    }

    #[test]
    fn v1_paths_and_files() {
        let cg = VmCgroup::new(Layout::V1 { root: "/cg".into() }, "inst", "web");
        assert_eq!(cg.dir("memory"), Path::new("/cg/memory/paddock/inst/web"));
        assert_eq!(cg.dir("pids"), Path::new("/cg/pids/paddock/inst/web"));
        let s = cg.settings(&limits(), limits().memory_max_bytes(128, false));
        let get = |f: &str| s.iter().find(|(_, n, _)| *n == f).map(|(_, _, v)| v.clone()).unwrap();
        assert_eq!(get("memory.limit_in_bytes"), (192u64 << 20).to_string());
        assert_eq!(get("pids.max"), "100");
        assert_eq!(get("cpu.shares"), "2048");
        assert_eq!((get("cpu.cfs_quota_us"), get("cpu.cfs_period_us")), ("150000".into(), "100000".into()));
        assert_eq!(get("blkio.weight"), "50");
    }

    #[test]
    fn v2_paths_and_files() {
        let cg = VmCgroup::new(Layout::V2 { root: "/cg".into() }, "inst", "web");
        assert_eq!(cg.dir("memory"), Path::new("/cg/paddock/inst/web"));
        assert_eq!(cg.dir("cpu"), cg.dir("pids"), "one directory in v2");
        let s = cg.settings(&limits(), limits().memory_max_bytes(128, false));
        let get = |f: &str| s.iter().find(|(_, n, _)| *n == f).map(|(_, _, v)| v.clone()).unwrap();
        assert_eq!(get("memory.max"), (192u64 << 20).to_string());
        assert_eq!(get("memory.swap.max"), "0");
        assert_eq!(get("cpu.weight"), "200");
        assert_eq!(get("cpu.max"), "150000 100000");
        assert_eq!(get("io.weight"), "default 500");
        let defaults = cg.settings(&Limits::default(), 1 << 30);
        assert!(!defaults.iter().any(|(_, f, _)| f.starts_with("cpu.") || f.starts_with("io.")), "unset limits are not written");
    }

    #[test]
    fn v2_creation_enables_controllers_in_every_ancestor() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        assert_eq!(Layout::detect(root.path()).unwrap(), Layout::V2 { root: root.path().into() });
        let cg = VmCgroup::new(Layout::V2 { root: root.path().into() }, "inst", "web");
        // A plain directory stands in for cgroupfs: each write replaces the
        // file, so the last controller enabled is what remains; the kernel
        // would make cgroup.procs.
        std::fs::create_dir_all(cg.dir("")).unwrap();
        std::fs::write(cg.dir("").join("cgroup.procs"), "").unwrap();
        cg.create(&limits(), limits().memory_max_bytes(128, false)).unwrap();
        assert_eq!(std::fs::read_to_string(root.path().join("paddock/cgroup.subtree_control")).unwrap(), "+io");
        assert_eq!(std::fs::read_to_string(root.path().join("paddock/inst/cgroup.subtree_control")).unwrap(), "+io");
        assert!(!root.path().join("paddock/inst/web/cgroup.subtree_control").exists(), "not the leaf");
        assert_eq!(std::fs::read_to_string(cg.dir("").join("memory.max")).unwrap(), (192u64 << 20).to_string());
        std::fs::write(cg.dir("").join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert!(oom_fault(&cg).unwrap().starts_with("OOM"));
        std::fs::write(cg.dir("").join("memory.current"), "4096\n").unwrap();
        std::fs::write(cg.dir("").join("cpu.stat"), "usage_usec 77\nuser_usec 1\n").unwrap();
        let st = cg.stats().unwrap();
        assert_eq!((st.memory_bytes, st.cpu_usec, st.oom_kills), (4096, Some(77), Some(1)));
    }

    #[test]
    fn keyed_files_are_parsed_by_key() {
        assert_eq!(keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(keyed("usage_usec 5", "user_usec"), None);
    }
}
