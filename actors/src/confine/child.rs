//! What a confined child does between fork and exec, as root still:
//! join its cgroup, keep the descriptors the daemon opened for it, then
//! drop to its identity for good. Only async-signal-safe calls (raw
//! syscalls on numbers prepared before the fork): no allocation, no locks.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::Identity;

/// Plain numbers, ready before the fork.
#[derive(Debug, Clone)]
pub struct ChildSetup {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    inherit: Vec<RawFd>,
    /// `cgroup.procs` of each controller, opened for writing.
    cgroup_procs: Vec<RawFd>,
    cap_last: libc::c_ulong,
}

impl ChildSetup {
    pub fn new(identity: &Identity, inherited: &[OwnedFd]) -> Self {
        ChildSetup {
            uid: identity.uid,
            gid: identity.gid,
            groups: identity.groups.clone(),
            inherit: inherited.iter().map(AsRawFd::as_raw_fd).collect(),
            cgroup_procs: Vec::new(),
            cap_last: cap_last(),
        }
    }

    /// One more descriptor the child keeps (e.g. its program's).
    pub fn inherit(mut self, fd: RawFd) -> Self {
        self.inherit.push(fd);
        self
    }

    pub fn join_cgroups(mut self, procs: &[OwnedFd]) -> Self {
        self.cgroup_procs = procs.iter().map(AsRawFd::as_raw_fd).collect();
        self
    }

    /// Runs in the forked child. Any failure aborts the spawn (the daemon
    /// sees the error from `spawn`; nothing runs unconfined).
    pub fn apply(&self) -> std::io::Result<()> {
        // "0" moves the writing process itself (v1 and v2).
        for &fd in &self.cgroup_procs {
            // SAFETY: write of a 1-byte static buffer to an open fd.
            check(unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } as libc::c_int)?;
        }
        for &fd in &self.inherit {
            // SAFETY: clears FD_CLOEXEC on a descriptor we own.
            check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
        }
        // The bounding set first: dropping needs CAP_SETPCAP, which the
        // uid change below takes away.
        for cap in 0..=self.cap_last {
            // SAFETY: prctl with integer arguments.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
            // EINVAL: a capability this kernel does not know.
            if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: setgroups reads `groups.len()` gids from a live slice.
        check(unsafe { libc::setgroups(self.groups.len(), self.groups.as_ptr()) })?;
        // SAFETY: plain credential syscalls.
        check(unsafe { libc::setresgid(self.gid, self.gid, self.gid) })?;
        // From root to a non-zero uid in all three: the kernel clears the
        // permitted, effective and ambient sets.
        // SAFETY: as above.
        check(unsafe { libc::setresuid(self.uid, self.uid, self.uid) })?;
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        // Inheritable is usually empty for root already; make sure.
        let header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let data = [CapData::default(); 2];
        // SAFETY: capset reads a v3 header and two data structs.
        check(unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } as libc::c_int)?;
        Ok(())
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The highest capability number the kernel knows (40 on 6.x).
fn cap_last() -> libc::c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63)
}
