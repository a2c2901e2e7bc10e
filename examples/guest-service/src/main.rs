//! A stand-in Blueprint service that runs inside the guest: it reports
//! exactly what its launcher gave it and answers over vsock.
//!
//! On start it listens on vsock port `$SERVICE_VSOCK_PORT` (any CID) and
//! prints `SERVICE-READY vsock=<port>` on stdout (the readiness pattern).
//! Each connection is a sequence of request lines, each answered by one
//! JSON line:
//!
//! ```text
//! args        -> ["arg1", "arg 2", ...]       argv after the program
//! env NAME    -> "value" or null
//! cwd         -> "/mnt/run/keystore"
//! tree        -> ["a.pem 120", "sub/b.key 64"] files under the cwd, with sizes
//! echo TEXT   -> "TEXT"
//! dial P TEXT -> "ok"   after sending TEXT and a newline to host port P
//!                       (CID 2; the host sees it on `vsock.sock_P`)
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(","))
}

fn walk(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        match e.metadata() {
            Ok(m) if m.is_dir() => walk(&e.path(), &format!("{name}/"), out),
            Ok(m) => out.push(format!("{name} {}", m.len())),
            Err(_) => {}
        }
    }
}

fn answer(line: &str) -> String {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "args" => json_list(&std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>()),
        "env" => match std::env::var_os(rest) {
            Some(v) => json_str(&v.to_string_lossy()),
            None => "null".into(),
        },
        "cwd" => json_str(&std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()),
        "tree" => {
            let mut out = Vec::new();
            walk(std::path::Path::new("."), "", &mut out);
            json_list(&out)
        }
        "echo" => json_str(rest),
        "dial" => {
            let (port, text) = rest.split_once(' ').unwrap_or((rest, ""));
            match port.parse().map_err(|e| format!("port {port:?}: {e}")).and_then(|p| dial(p, text).map_err(|e| e.to_string())) {
                Ok(()) => json_str("ok"),
                Err(e) => json_str(&format!("dial failed: {e}")),
            }
        }
        _ => json_str(&format!("unknown request {cmd:?}")),
    }
}

fn serve(fd: OwnedFd) {
    let stream = std::fs::File::from(fd);
    let Ok(mut writer) = stream.try_clone() else { return };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if writeln!(writer, "{}", answer(line.trim_end_matches('\r'))).is_err() {
            return;
        }
    }
}

/// A vsock socket address: `cid`, `port`.
fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; zero is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn vsock_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// Guest -> host: connects to the host (CID 2) on `port` and sends `text`.
fn dial(port: u32, text: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_HOST, port);
    // SAFETY: addr is a valid sockaddr_vm of ADDR_LEN bytes.
    if unsafe { libc::connect(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), ADDR_LEN) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut f = std::fs::File::from(fd);
    writeln!(f, "{text}")
}

fn listen(port: u32) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let fd = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: addr is a valid sockaddr_vm of ADDR_LEN bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), ADDR_LEN) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a bound socket fd.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn main() {
    let port: u32 = match std::env::var("SERVICE_VSOCK_PORT").ok().and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => {
            eprintln!("SERVICE-FAILED: set SERVICE_VSOCK_PORT to a port number");
            std::process::exit(2);
        }
    };
    let listener = match listen(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SERVICE-FAILED: vsock port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("SERVICE-READY vsock={port}");
    let _ = std::io::stdout().flush();
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: accept on our listening fd; null address is allowed.
        let c = unsafe { libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if c < 0 {
            continue;
        }
        // SAFETY: accept returned a fresh fd.
        let conn = unsafe { OwnedFd::from_raw_fd(c) };
        std::thread::spawn(move || serve(conn));
    }
}
