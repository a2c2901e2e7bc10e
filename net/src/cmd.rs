//! The one way this crate runs a host command: an argv vector (never a
//! shell), optional stdin, and an error that records the argv, the exit
//! status and stderr.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::Error;

pub fn run(argv: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let fail = |status: String, stderr: String| Error::Command { argv: argv.join(" "), status, stderr };
    let (program, args) = argv.split_first().ok_or_else(|| fail("not run".into(), "empty argv".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail("not started".into(), e.to_string()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| fail("stdin".into(), e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail("wait".into(), e.to_string()))?;
    if !out.status.success() {
        return Err(fail(out.status.to_string(), String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
