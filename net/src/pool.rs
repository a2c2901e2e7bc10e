//! The address pool: a private IPv4 network cut into /30 subnets, one per
//! lease. Subnet i gives the host side (gateway) .1 and the guest .2 of its
//! four addresses, so two leases never share or overlap addresses.

use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::Error;

/// Per-lease subnet size: network, gateway, guest, broadcast.
pub const LEASE_PREFIX: u8 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    network: Ipv4Addr,
    prefix: u8,
}

/// The addresses of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseAddrs {
    pub gateway: Ipv4Addr,
    pub guest: Ipv4Addr,
    pub prefix: u8,
}

impl LeaseAddrs {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix)))
    }
}

impl Pool {
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Pool, Error> {
        if !(8..=LEASE_PREFIX).contains(&prefix) {
            return Err(Error::Pool(format!("prefix /{prefix} must be between /8 and /{LEASE_PREFIX}")));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        if u32::from(network) & !mask != 0 {
            return Err(Error::Pool(format!("{network}/{prefix} has host bits set; use {}/{prefix}", Ipv4Addr::from(u32::from(network) & mask))));
        }
        Ok(Pool { network, prefix })
    }

    /// How many leases fit.
    pub fn capacity(&self) -> u32 {
        1u32 << (LEASE_PREFIX - self.prefix)
    }

    pub fn addrs(&self, index: u32) -> Option<LeaseAddrs> {
        if index >= self.capacity() {
            return None;
        }
        let base = u32::from(self.network) + index * 4;
        Some(LeaseAddrs { gateway: Ipv4Addr::from(base + 1), guest: Ipv4Addr::from(base + 2), prefix: LEASE_PREFIX })
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Pool {
    type Err = Error;
    fn from_str(s: &str) -> Result<Pool, Error> {
        let (ip, prefix) = s.split_once('/').ok_or_else(|| Error::Pool(format!("{s:?} is not a CIDR like 10.88.0.0/16")))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| Error::Pool(format!("{ip:?} is not an IPv4 address")))?;
        let prefix: u8 = prefix.parse().map_err(|_| Error::Pool(format!("{prefix:?} is not a prefix length")))?;
        Pool::new(ip, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_never_overlap() {
        let p: Pool = "10.88.0.0/16".parse().unwrap();
        assert_eq!(p.capacity(), 16384);
        let a = p.addrs(0).unwrap();
        let b = p.addrs(1).unwrap();
        assert_eq!((a.gateway, a.guest), ("10.88.0.1".parse().unwrap(), "10.88.0.2".parse().unwrap()));
        assert_eq!((b.gateway, b.guest), ("10.88.0.5".parse().unwrap(), "10.88.0.6".parse().unwrap()));
        assert_eq!(a.netmask(), Ipv4Addr::new(255, 255, 255, 252));
        assert!(p.addrs(16384).is_none());
        assert_eq!(p.addrs(16383).unwrap().guest, Ipv4Addr::new(10, 88, 255, 254));
    }

    #[test]
    fn bad_pools_are_refused() {
        assert!("10.88.0.1/16".parse::<Pool>().is_err());
        assert!("10.88.0.0/31".parse::<Pool>().is_err());
        assert!("nonsense".parse::<Pool>().is_err());
        assert_eq!("10.77.0.0/29".parse::<Pool>().unwrap().capacity(), 2);
    }
}
