//! The API's bounds against slow, greedy and malformed clients, on a real
//! daemon over its real socket: half-open connections are closed after the
//! header timeout, a connection over the cap gets a clear JSON error and
//! the API answers again once others go, and every bad query parameter is
//! a 400 in the documented JSON shape naming it, with nothing created.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// One request with `Connection: close`; the status and the JSON body.
fn raw(socket: &Path, method: &str, target: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write head");
    // The server may answer (413) before taking the whole body.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"));
    let (headers, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if status >= 400 {
        assert!(headers.to_ascii_lowercase().contains("content-type: application/json"), "error not JSON: {text}");
    }
    (status, serde_json::from_str(payload).unwrap_or(serde_json::Value::Null))
}

fn field(v: &serde_json::Value) -> &str {
    v["error"]["field"].as_str().unwrap_or("")
}

#[test]
fn overflowing_and_malformed_query_params_are_400_naming_the_field_and_create_nothing() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu()], &[]);
    let sock = d.client.socket().to_path_buf();
    let spec = serde_json::to_vec(&fake_spec(&d, "q1")).expect("json");
    let cases = [
        ("POST", "/v1/vms?timeout_secs=18446744073709551615", "timeout_secs"),
        ("POST", "/v1/vms?timeout_secs=18446744073709551616", "timeout_secs"),
        ("POST", "/v1/vms?timeout_secs=-5", "timeout_secs"),
        ("POST", "/v1/vms?wait=ready&timeout_secs=86401", "timeout_secs"),
        ("POST", "/v1/vms?wait=eventually", "wait"),
        ("POST", "/v1/vms?tiemout_secs=3", "tiemout_secs"),
        ("POST", "/v1/vms/q1/stop?timeout_secs=99999999999", "timeout_secs"),
        ("POST", "/v1/shutdown?stop_vms=perhaps", "stop_vms"),
        ("DELETE", "/v1/vms/q1?force=yes", "force"),
        ("GET", "/v1/events?since=9223372036854775808", "since"),
        ("GET", "/v1/events?since=18446744073709551616", "since"),
        ("GET", "/v1/events?follow=true&since=x", "since"),
        ("GET", "/v1/events?follow=1", "follow"),
    ];
    for (method, target, want) in cases {
        let (status, body) = raw(&sock, method, target, if target.starts_with("/v1/vms?") { &spec } else { b"" });
        assert_eq!(status, 400, "{method} {target}: {body}");
        assert_eq!(body["error"]["kind"], "invalid_request", "{target}: {body}");
        assert_eq!(field(&body), want, "{target}: {body}");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains(want), "{target}: {body}");
    }
    // Too large a body: 413, in the same JSON shape.
    let (status, body) = raw(&sock, "POST", "/v1/vms", &vec![b' '; 3 << 20]);
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["kind"], "too_large");
    // An unknown route and a wrong method are JSON too.
    assert_eq!(raw(&sock, "GET", "/v2/nothing", b"").1["error"]["kind"], "not_found");
    assert_eq!(raw(&sock, "PUT", "/v1/vms", b"").0, 405);
    // Nothing was created, and the daemon still serves.
    assert!(d.db_vm_names().is_empty(), "{:?}", d.db_vm_names());
    assert!(d.run_dir_entries().is_empty(), "{:?}", d.run_dir_entries());
    assert!(d.hypervisor_pids().is_empty());
    assert_eq!(raw(&sock, "GET", "/v1/health", b"").0, 200);
    // The biggest allowed values are taken.
    let (status, body) = raw(&sock, "GET", &format!("/v1/events?since={}", i64::MAX), b"");
    assert_eq!(status, 200, "{body}");
}

/// Reads until the server closes the connection; panics at the deadline.
fn wait_closed(s: &mut UnixStream, deadline: Instant) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "connection still open at the deadline");
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("connection still open ({e})"),
        }
    }
}

#[test]
fn half_open_connections_are_closed_after_the_header_timeout() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu(), "--api-header-timeout-ms", "500"], &[]);
    let sock = d.client.socket().to_path_buf();
    let started = Instant::now();
    let mut conns: Vec<UnixStream> = (0..50)
        .map(|i| {
            let mut s = UnixStream::connect(&sock).expect("connect");
            // Half the clients send half a header, half send nothing.
            if i % 2 == 0 {
                s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n").expect("write");
            }
            s
        })
        .collect();
    let deadline = started + Duration::from_secs(10);
    for s in &mut conns {
        let got = wait_closed(s, deadline);
        assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "a half request was answered");
    }
    println!("50 half-open connections closed after {:?} (header timeout 500 ms)", started.elapsed());
    // A kept-alive connection that goes idle after its answer is closed too.
    let mut s = UnixStream::connect(&sock).expect("connect");
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let got = wait_closed(&mut s, Instant::now() + Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&got).contains("200 OK"));
    assert_eq!(raw(&sock, "GET", "/v1/health", b"").0, 200, "the daemon still serves");
}

#[test]
fn over_the_connection_cap_a_request_gets_a_clear_error_and_the_api_recovers() {
    let d = Daemon::start_with(&["--qemu-binary", fake_qemu(), "--api-max-connections", "4", "--api-header-timeout-ms", "60000"], &[]);
    let sock = d.client.socket().to_path_buf();
    // Four clients that connect and say nothing hold every slot. One
    // answered request on each proves it was accepted (and holds a slot).
    // The connection of the start-up health check may still hold one
    // until the server has seen it close: a refused client tries again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut idle: Vec<UnixStream> = Vec::new();
    while idle.len() < 4 {
        let mut s = UnixStream::connect(&sock).expect("connect");
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("health answer");
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        if answer.contains("200 OK") {
            idle.push(s);
            continue;
        }
        assert!(answer.contains("503") && Instant::now() < deadline, "client {} was not served: {answer}", idle.len() + 1);
        std::thread::yield_now();
    }
    let (status, body) = raw(&sock, "GET", "/v1/health", b"");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["kind"], "unavailable");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("too many connections"), "{body}");
    assert!(d.log().contains("too many connections"));
    idle.clear();
    // The slots come back as the server sees the clients go.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = raw(&sock, "GET", "/v1/health", b"");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the API did not answer again after the idle clients left");
        std::thread::yield_now();
    }
}
