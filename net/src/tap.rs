//! Persistent TAP devices through /dev/net/tun.
//!
//! The device is created with TUNSETIFF and made persistent with
//! TUNSETPERSIST, then our file descriptor is closed: QEMU opens it again by
//! name (`-netdev tap,ifname=...`), and the device outlives both us and
//! QEMU until the lease is released. Shell equivalent:
//! `ip tuntap add dev NAME mode tap`.
//!
//! [`create_pending`] splits the two steps so that the caller can mark the
//! device as its own (owner alias) before it becomes persistent: if the
//! caller dies in between, the kernel removes the device with the closed
//! descriptor, so no unmarked TAP is ever left behind.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use crate::Error;

const IFNAMSIZ: usize = 16;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
// _IOW('T', 202, int) and _IOW('T', 203, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
// _IOW('T', 204, int) and _IOW('T', 206, int)
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates the persistent TAP `name`. Fails (EBUSY/EINVAL) if an interface
/// of that name exists and is not a free TAP: the caller has checked that
/// names it reuses are its own.
pub fn create_persistent(name: &str) -> Result<(), Error> {
    create_pending(name)?.persist()
}

/// Lets `uid`/`gid` attach to the persistent TAP `name` without
/// CAP_NET_ADMIN (an unprivileged hypervisor opens it by name).
pub fn set_owner(name: &str, uid: u32, gid: u32) -> Result<(), Error> {
    let tap = create_pending(name)?;
    for (req, id) in [(TUNSETOWNER, uid), (TUNSETGROUP, gid)] {
        // SAFETY: TUNSETOWNER/TUNSETGROUP take an integer argument by value.
        let r = unsafe { libc::ioctl(tap.tun.as_raw_fd(), req as _, id as libc::c_ulong) };
        if r < 0 {
            return Err(Error::Tap { name: name.into(), source: std::io::Error::last_os_error() });
        }
    }
    // Attaching to a persistent device leaves it persistent when we close.
    Ok(())
}

/// A TAP that exists only while this value lives, until [`PendingTap::persist`].
#[derive(Debug)]
pub struct PendingTap {
    name: String,
    tun: std::fs::File,
}

impl PendingTap {
    /// Makes the device outlive this process (TUNSETPERSIST).
    pub fn persist(self) -> Result<(), Error> {
        // SAFETY: TUNSETPERSIST takes an integer argument by value.
        let r = unsafe { libc::ioctl(self.tun.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong) };
        if r < 0 {
            return Err(Error::Tap { name: self.name, source: std::io::Error::last_os_error() });
        }
        Ok(())
    }
}

/// Creates the TAP `name`, not yet persistent: it vanishes when the
/// returned value is dropped (or the process dies) unless persisted.
pub fn create_pending(name: &str) -> Result<PendingTap, Error> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(Error::Tap { name: name.into(), source: std::io::Error::from(std::io::ErrorKind::InvalidInput) });
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|source| Error::Tap { name: name.into(), source })?;
    let mut req = IfReq { name: [0; IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReq
    // mirrors (16-byte name, short flags, padded to 40 bytes); `req`
    // lives across the call.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if r < 0 {
        return Err(Error::Tap { name: name.into(), source: std::io::Error::last_os_error() });
    }
    Ok(PendingTap { name: name.into(), tun })
}
