//! Stable, locally administered MAC addresses.

use std::fmt;

/// A unicast, locally administered MAC (52:54:00 is QEMU's OUI; we set the
/// local bit instead so we never collide with a vendor's address space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// Derived from the VM name with FNV-1a, so a VM keeps its MAC across
    /// restarts (guests key network config on it) without storing it.
    pub fn for_vm(name: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let h = hash.to_be_bytes();
        // 0x02: locally administered, unicast.
        MacAddress([0x02, 0x50, h[2], h[3], h[4], h[5]])
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_stable_local_and_unicast() {
        let a = MacAddress::for_vm("web");
        assert_eq!(a, MacAddress::for_vm("web"));
        assert_ne!(a, MacAddress::for_vm("web2"));
        assert_eq!(a.0[0] & 0x03, 0x02);
        assert_eq!(a.to_string().len(), 17);
    }
}
