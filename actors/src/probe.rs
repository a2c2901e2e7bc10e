//! The readiness probe: `ready_probe = { tcp = PORT }` is met when the
//! guest's port answers, tried once a second from the host.
//!
//! On a TAP lease the probe connects to the guest's address: an accepted
//! connection is the guest's own TCP stack answering. Through a user-mode
//! forward QEMU accepts every connection itself (and closes it when the
//! guest does not answer), so there the probe waits for the guest's first
//! bytes: SSH's banner, for example.

use ractor::ActorRef;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::spec::{NetworkMode, VmSpec};
use crate::vm::{VmMessage, VmNotice};

const INTERVAL: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a forwarded connection may stay silent before the next try.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the probe connects and what counts as an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTarget {
    pub addr: SocketAddr,
    /// Through a user-mode forward: wait for the guest's first bytes.
    pub needs_first_bytes: bool,
}

/// The probe's target for this spec and lease; None without a probe (or,
/// for a TAP VM, before it has its lease).
pub fn target(spec: &VmSpec, lease: Option<&crate::netmgr::Lease>) -> Option<ProbeTarget> {
    let port = spec.ready_probe.as_ref()?.tcp;
    match (spec.network.mode, lease) {
        (NetworkMode::Tap, Some(l)) => Some(ProbeTarget { addr: SocketAddr::from((l.addrs.guest, port)), needs_first_bytes: false }),
        (NetworkMode::User, _) => spec
            .network
            .forwards
            .iter()
            .find(|f| f.guest == port && f.protocol == paddock_net::Protocol::Tcp)
            .map(|f| ProbeTarget { addr: SocketAddr::from((Ipv4Addr::LOCALHOST, f.host)), needs_first_bytes: true }),
        _ => None,
    }
}

/// A running probe; dropping it stops it (a new boot starts a new one).
pub struct Probe(tokio::task::JoinHandle<()>);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tries until the target answers, then tells the VM actor once, naming
/// the boot it probed so a late answer for an earlier boot is ignored.
pub fn spawn(vm: ActorRef<VmMessage>, vm_name: String, target: ProbeTarget, boot: u64) -> Probe {
    Probe(tokio::spawn(async move {
        let mut tries = 0u64;
        loop {
            tries += 1;
            if answers(target).await {
                tracing::info!(vm = %vm_name, addr = %target.addr, tries, "readiness probe answered");
                let _ = vm.cast(VmNotice::ProbeReady { boot }.into());
                return;
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }))
}

async fn answers(target: ProbeTarget) -> bool {
    let Ok(Ok(mut stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr)).await else {
        return false;
    };
    if !target.needs_first_bytes {
        return true;
    }
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(FIRST_BYTES_TIMEOUT, stream.read(&mut byte)).await, Ok(Ok(n)) if n > 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_forward_counts_only_once_the_guest_speaks() {
        let silent_close = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent_close.local_addr().unwrap();
        // Like QEMU's slirp with no guest behind it: accept, then close.
        tokio::spawn(async move {
            while let Ok((s, _)) = silent_close.accept().await {
                drop(s);
            }
        });
        assert!(!answers(ProbeTarget { addr, needs_first_bytes: true }).await);
        assert!(answers(ProbeTarget { addr, needs_first_bytes: false }).await, "an accepted connection is enough on a TAP");

        let banner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = banner.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = banner.accept().await {
                let _ = s.write_all(b"SSH-2.0-test\r\n").await;
            }
        });
        assert!(answers(ProbeTarget { addr, needs_first_bytes: true }).await);
    }

    #[tokio::test]
    async fn a_closed_port_does_not_answer() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(!answers(ProbeTarget { addr, needs_first_bytes: false }).await);
    }
}
