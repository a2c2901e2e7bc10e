//! Interface names and MAC addresses of leases: derived from the lease
//! index, never from the VM name, so they fit IFNAMSIZ (15 bytes) and are
//! unique for every live lease.

use crate::MacAddress;

/// Every TAP of ours starts with this; the reaper looks only at these.
pub const TAP_PREFIX: &str = "pdtap";
/// The alias (IFLA_IFALIAS) that marks a TAP as ours: an interface that
/// has the prefix but not this alias belongs to someone else.
pub const OWNER_ALIAS_PREFIX: &str = "paddock:";

pub fn tap_name(index: u32) -> String {
    format!("{TAP_PREFIX}{index}")
}

pub fn owner_alias(vm: &str) -> String {
    format!("{OWNER_ALIAS_PREFIX}{vm}")
}

/// A locally administered unicast MAC unique per lease.
pub fn lease_mac(index: u32) -> MacAddress {
    let i = index.to_be_bytes();
    MacAddress([0x02, 0x50, 0x44, i[1], i[2], i[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_for_every_index() {
        assert_eq!(tap_name(0), "pdtap0");
        assert!(tap_name(u32::MAX).len() <= 15);
        assert_ne!(lease_mac(1), lease_mac(256));
    }
}
