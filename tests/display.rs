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

    let handshake = async {
        let mut s = tokio::net::UnixStream::connect(&socket).await.expect("connect to vnc.sock");
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
    };
    let (w, h, name) = tokio::time::timeout(Duration::from_secs(30), handshake).await.expect("the handshake stalled");
    assert!(w > 0 && h > 0, "{w}x{h}");
    assert_eq!(name, "QEMU (paddock-screen)", "the desktop is this VM's");

    d.client.remove("screen", true).await.expect("rm");
    assert!(!socket.exists(), "the VNC socket outlived its VM");

    // Cloud Hypervisor has no display: refused naming the field.
    spec.backend = paddock::spec::BackendKind::CloudHypervisor;
    let e = d.client.up(&spec, WaitFor::Running, BOOT).await.expect_err("CH display");
    assert!(e.to_string().contains("display"), "{e}");
}
