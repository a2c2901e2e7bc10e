//! The optional VNC display (QEMU only): a VGA device and QEMU's VNC
//! server. `display = "vnc"` serves it on a Unix socket in the VM's run
//! directory (`RUN_DIR/NAME/vnc.sock`, 0600 like the directory), which no
//! other user of the host can reach. `display = "vnc-tcp"` serves it on
//! 127.0.0.1 at a free port QEMU picks itself (no port is chosen and then
//! released, so nothing can take it in between); the port is read back
//! over QMP (`query-vnc`) at every connect, re-adoption included. Pure:
//! paths, argv and the parse of QEMU's answer.

use std::path::PathBuf;

use crate::backend::RunPaths;
use crate::spec::{Display, VmSpec};

/// Where the VNC server of `display = "vnc"` listens.
pub fn vnc_socket(paths: &RunPaths) -> PathBuf {
    paths.dir.join("vnc.sock")
}

/// The first and last VNC display numbers (port - 5900) QEMU may take for
/// `vnc-tcp`: it binds the first free one of ports 5900-5999, VNC's own
/// range, so it never takes a port a user may forward (8080).
const TCP_DISPLAYS: (u32, u32) = (0, 99);

/// The display's line in `addresses` (shown by `ps` and `inspect`) known
/// before the launch; a TCP port is only known once QEMU answers.
pub fn address(spec: &VmSpec, paths: &RunPaths) -> Option<String> {
    match spec.display? {
        Display::Vnc => Some(format!("vnc unix:{}", vnc_socket(paths).display())),
        Display::VncTcp => None,
    }
}

/// Whether the address must be asked of the hypervisor after it started.
pub fn reported_by_hypervisor(spec: &VmSpec) -> bool {
    spec.display == Some(Display::VncTcp)
}

/// The `addresses` line from QMP's `query-vnc` answer, for a server on TCP.
pub fn tcp_address(query_vnc: &serde_json::Value) -> Option<String> {
    let enabled = query_vnc.get("enabled").and_then(serde_json::Value::as_bool) == Some(true);
    let family = query_vnc.get("family").and_then(serde_json::Value::as_str)?;
    let host = query_vnc.get("host").and_then(serde_json::Value::as_str)?;
    let port: u16 = query_vnc.get("service").and_then(serde_json::Value::as_str)?.parse().ok()?;
    match family {
        "ipv4" if enabled => Some(format!("vnc tcp:{host}:{port}")),
        "ipv6" if enabled => Some(format!("vnc tcp:[{host}]:{port}")),
        _ => None,
    }
}

/// QEMU's arguments for the display: `-nodefaults` leaves the guest
/// without a graphics card, so one is added with the server.
pub fn qemu_args(display: Option<Display>, paths: &RunPaths) -> Vec<(&'static str, String)> {
    let server = match display {
        None => return Vec::new(),
        Some(Display::Vnc) => format!("unix:{}", vnc_socket(paths).to_string_lossy().replace(',', ",,")),
        Some(Display::VncTcp) => format!("127.0.0.1:{},to={}", TCP_DISPLAYS.0, TCP_DISPLAYS.1),
    };
    vec![("-device", "VGA".to_string()), ("-vnc", server)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_tcp_address_comes_from_query_vnc() {
        let v = json!({"enabled": true, "host": "127.0.0.1", "family": "ipv4", "service": "5903", "auth": "none", "clients": []});
        assert_eq!(tcp_address(&v).as_deref(), Some("vnc tcp:127.0.0.1:5903"));
        // A Unix socket server, a disabled one, and garbage give nothing.
        assert_eq!(tcp_address(&json!({"enabled": true, "host": "", "family": "unix", "service": "/run/x/vnc.sock"})), None);
        assert_eq!(tcp_address(&json!({"enabled": false})), None);
        assert_eq!(tcp_address(&json!({"enabled": true, "host": "127.0.0.1", "family": "ipv4", "service": "vnc"})), None);
    }
}
