//! The API fuzzed from its own document with schemathesis (PyPI; installed
//! into a venv by scripts/install-fuzzer.sh) against a daemon on the fake
//! hypervisor: no 5xx, no dropped connection, every answer in its
//! documented shape and status, and the daemon still serving afterwards.
//!
//! schemathesis speaks TCP and the API is a Unix socket, so the test
//! bridges 127.0.0.1:PORT to the socket (loopback only). Left out: the
//! routes that would end the run or leave the host (`/v1/shutdown` exits
//! the daemon, `/v1/images` downloads URLs), and `/v1/events` (with
//! `follow=true` it never ends, by design).

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;

/// Generated cases per operation: enough to find shape and status
/// mismatches, bounded so the run takes a minute or two.
const MAX_EXAMPLES: &str = "10";

fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("PADDOCK_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let p = home.join(".cache/paddock/schemathesis-venv/bin/schemathesis");
    assert!(p.exists(), "{p:?} is missing: run scripts/install-fuzzer.sh (or set PADDOCK_SCHEMATHESIS)");
    p
}

/// Accepts on loopback and joins each connection to the daemon's socket.
async fn bridge(socket: PathBuf) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_survives_schemathesis_from_its_own_document() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    // A VM to find: generated names rarely exist, this one lets the
    // fuzzer reach the handlers' work past "not found".
    d.client.up(&fake_spec(&d, "fz"), paddock::WaitFor::Running, 30).await.expect("up");
    let port = bridge(d.client.socket().to_path_buf()).await;
    let base = format!("http://127.0.0.1:{port}");
    let report = tempfile::tempdir().expect("tempdir");
    let st = schemathesis();
    let child = tokio::process::Command::new(&st)
        .args(["run", &format!("{base}/v1/openapi.json"), "--url", &base])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--max-examples", MAX_EXAMPLES, "--workers", "1", "--seed", "19", "--request-timeout", "10"])
        .args(["--exclude-path", "/v1/shutdown", "--exclude-path", "/v1/images", "--exclude-path", "/v1/events"])
        .args(["--generation-allow-x00", "false", "--no-color", "--report-dir"])
        .arg(report.path())
        // Hooks: no header values with control characters (tests/fuzz).
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz"))
        .env("SCHEMATHESIS_HOOKS", "paddock_fuzz_hooks")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {st:?}: {e}"));
    let out = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
    .await
    .expect("schemathesis did not finish within 10 minutes")
    .expect("schemathesis output");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "schemathesis found failures (above)");
    // Still serving, the same process.
    let pid = d.child.as_ref().map(|c| c.id() as i32).expect("daemon child");
    assert!(process_exists(pid), "the daemon died under the fuzzer");
    d.client.health().await.expect("the daemon no longer answers");
    // (The fuzzer may have removed "fz": DELETE is part of the API.)
    d.client.list().await.expect("listing after the fuzzer");
}
