//! Host -> guest port forwards for user-mode networking.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// Publish guest port `guest` on the host's loopback port `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl PortForward {
    /// The QEMU `hostfwd=` value. Bound to 127.0.0.1 only: publishing on
    /// every interface is a decision the operator makes with a firewall,
    /// not a default.
    pub fn hostfwd(&self) -> String {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        format!("{proto}:127.0.0.1:{}-:{}", self.host, self.guest)
    }
}

/// Rejects port 0 and a host port listed twice.
pub fn check_forwards(forwards: &[PortForward]) -> Result<()> {
    let mut seen = HashSet::new();
    for (index, f) in forwards.iter().enumerate() {
        if f.host == 0 || f.guest == 0 {
            return Err(Error::Forward {
                index,
                message: "ports must be between 1 and 65535".into(),
            });
        }
        if !seen.insert((f.host, f.protocol)) {
            return Err(Error::Forward {
                index,
                message: format!("host port {} is listed twice; give each forward its own host port", f.host),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfwd_binds_loopback() {
        let f = PortForward { host: 8022, guest: 22, protocol: Protocol::Tcp };
        assert_eq!(f.hostfwd(), "tcp:127.0.0.1:8022-:22");
    }

    #[test]
    fn duplicate_host_port_is_rejected_with_its_index() {
        let f = PortForward { host: 8022, guest: 22, protocol: Protocol::Tcp };
        let err = check_forwards(&[f.clone(), f]).unwrap_err();
        assert!(matches!(err, Error::Forward { index: 1, .. }), "{err}");
    }

    #[test]
    fn port_zero_is_rejected() {
        let f = PortForward { host: 0, guest: 22, protocol: Protocol::Tcp };
        assert!(check_forwards(&[f]).is_err());
    }
}
