//! The VNC display: `display = "vnc"` puts QEMU's VNC server on
//! `RUN_DIR/NAME/vnc.sock`; a client completes the RFB handshake (version,
//! security "None", ServerInit with the guest's screen and the VM's name).

mod common;

use common::*;
use paddock::WaitFor;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOOT: u64 = 120;
/// RFB security type "None".
const SECURITY_NONE: u8 = 1;

/// The RFB handshake up to ServerInit: the screen's size and the desktop name.
async fn rfb_handshake(mut s: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin) -> (u16, u16, String) {
    let mut version = [0u8; 12];
    s.read_exact(&mut version).await.expect("server version");
    assert!(version.starts_with(b"RFB 003."), "{version:?}");
    s.write_all(b"RFB 003.008\n").await.expect("client version");
    let n = s.read_u8().await.expect("number of security types");
    assert!(n > 0, "the server refused the connection");
    let mut types = vec![0u8; n as usize];
    s.read_exact(&mut types).await.expect("security types");
    assert!(types.contains(&SECURITY_NONE), "{types:?}");
    s.write_u8(SECURITY_NONE).await.expect("choose None");
    assert_eq!(s.read_u32().await.expect("security result"), 0, "security handshake failed");
    s.write_u8(1).await.expect("ClientInit (shared)");
    let (w, h) = (s.read_u16().await.expect("width"), s.read_u16().await.expect("height"));
    let mut pixel_format = [0u8; 16];
    s.read_exact(&mut pixel_format).await.expect("pixel format");
    let len = s.read_u32().await.expect("name length");
    assert!(len < 4096, "name length {len}");
    let mut name = vec![0u8; len as usize];
    s.read_exact(&mut name).await.expect("name");
    (w, h, String::from_utf8_lossy(&name).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vnc_socket_answers_the_rfb_handshake() {
    let d = Daemon::start();
    let mut spec = guest_spec("screen", "");
    spec.display = Some(paddock::spec::Display::Vnc);
    let info = d.client.up(&spec, WaitFor::Running, BOOT).await.expect("up");
    let socket = d.run_dir().join("screen/vnc.sock");
    assert!(info.addresses.contains(&format!("vnc unix:{}", socket.display())), "{:?}", info.addresses);
    let ps = std::process::Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["--socket", d.client.socket().to_str().expect("utf-8"), "ps"])
        .output()
        .expect("paddock ps");
    assert!(String::from_utf8_lossy(&ps.stdout).contains("vnc unix:"), "{}", String::from_utf8_lossy(&ps.stdout));

    let s = tokio::net::UnixStream::connect(&socket).await.expect("connect to vnc.sock");
    let (w, h, name) = tokio::time::timeout(Duration::from_secs(30), rfb_handshake(s)).await.expect("the handshake stalled");
    assert!(w > 0 && h > 0, "{w}x{h}");
    assert_eq!(name, "QEMU (paddock-screen)", "the desktop is this VM's");

    d.client.remove("screen", true).await.expect("rm");
    assert!(!socket.exists(), "the VNC socket outlived its VM");

    // Cloud Hypervisor has no display: refused naming the field.
    spec.backend = paddock::spec::BackendKind::CloudHypervisor;
    let e = d.client.up(&spec, WaitFor::Running, BOOT).await.expect_err("CH display");
    assert!(e.to_string().contains("display"), "{e}");
}

/// `display = "vnc-tcp"`: QEMU picks a free port on 127.0.0.1 itself; the
/// daemon reads it back and shows it, also after a daemon restart, and
/// two VMs never share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_vnc_display_is_on_loopback_at_a_port_qemu_picked() {
    let mut d = Daemon::start();
    // A port the first VM would otherwise take: QEMU must step past it.
    let squatter = std::net::TcpListener::bind("127.0.0.1:5900").ok();
    let mut ports = Vec::new();
    for vm in ["screen-a", "screen-b"] {
        let mut spec = guest_spec(vm, "");
        spec.display = Some(paddock::spec::Display::VncTcp);
        let info = d.client.up(&spec, WaitFor::Running, BOOT).await.expect("up");
        let addr = vnc_tcp_address(&info.addresses);
        assert!(addr.ip().is_loopback(), "{addr}");
        if squatter.is_some() {
            assert_ne!(addr.port(), 5900, "QEMU took a port in use");
        }
        let s = tokio::net::TcpStream::connect(addr).await.expect("connect to the VNC port");
        let (w, h, name) = tokio::time::timeout(Duration::from_secs(30), rfb_handshake(s)).await.expect("the handshake stalled");
        assert!(w > 0 && h > 0, "{w}x{h}");
        assert_eq!(name, format!("QEMU (paddock-{vm})"));
        ports.push(addr);
    }
    assert_ne!(ports[0], ports[1], "two VMs on one port");
    let ps = std::process::Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["--socket", d.client.socket().to_str().expect("utf-8"), "ps"])
        .output()
        .expect("paddock ps");
    assert!(String::from_utf8_lossy(&ps.stdout).contains(&format!("vnc tcp:{}", ports[0])), "{}", String::from_utf8_lossy(&ps.stdout));

    // Re-adopted after a daemon restart, the VM shows the same port.
    d.kill9();
    d.spawn();
    d.client.wait_ready(Duration::from_secs(30)).await.expect("daemon back");
    let info = d.client.get("screen-a").await.expect("inspect");
    assert_eq!(vnc_tcp_address(&info.addresses), ports[0], "{:?}", info.addresses);

    for vm in ["screen-a", "screen-b"] {
        d.client.remove(vm, true).await.expect("rm");
    }
    for addr in ports {
        assert!(std::net::TcpStream::connect(addr).is_err(), "{addr} still answers after rm");
    }
}

fn vnc_tcp_address(addresses: &[String]) -> std::net::SocketAddr {
    let line = addresses.iter().find_map(|a| a.strip_prefix("vnc tcp:")).unwrap_or_else(|| panic!("no vnc tcp address in {addresses:?}"));
    line.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))
}
