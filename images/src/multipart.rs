//! cloud-init MIME multipart user-data: Paddock's generated cloud-config
//! and the user's own user-data in one file.
//!
//! cloud-init runs every part by its Content-Type; cloud-config parts are
//! merged in order. The user's part carries a `Merge-Type` header so that
//! its lists (users, write_files, runcmd, ...) are appended to Paddock's
//! instead of replacing them, dictionaries are merged key by key and its
//! scalars win (cloud-init's documented `list(append)+dict(recurse_array)+str()`).

use sha2::{Digest, Sha256};

/// How the user's cloud-config part merges into Paddock's.
pub const USER_MERGE_TYPE: &str = "list(append)+dict(recurse_array)+str()";

/// Errors combining user-data.
#[derive(Debug, thiserror::Error)]
pub enum MultipartError {
    #[error(
        "cannot tell its type from the first line {first_line:?}; start it with #cloud-config, #!, #cloud-boothook or #include (a MIME message cannot be combined with the typed fields)"
    )]
    UnknownType { first_line: String },
}

/// The MIME type cloud-init gives a user-data part, from its first line.
pub fn part_type(user_data: &str) -> Result<&'static str, MultipartError> {
    let first = user_data.lines().next().unwrap_or("").trim_end();
    let t = if first.starts_with("#cloud-config-archive") {
        "text/cloud-config-archive"
    } else if first.starts_with("#cloud-config") {
        "text/cloud-config"
    } else if first.starts_with("#!") {
        "text/x-shellscript"
    } else if first.starts_with("#cloud-boothook") {
        "text/cloud-boothook"
    } else if first.starts_with("#include") {
        "text/x-include-url"
    } else {
        return Err(MultipartError::UnknownType { first_line: first.chars().take(60).collect() });
    };
    Ok(t)
}

/// A boundary found in neither part (derived from their hash, so the
/// output is reproducible).
fn boundary(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let mut n = 0u32;
    loop {
        let b = format!("==paddock-{hex}-{n}==");
        if !parts.iter().any(|p| p.contains(&b)) {
            return b;
        }
        n += 1;
    }
}

/// `generated` (a `#cloud-config` document) first, then the user's part.
pub fn combine(generated: &str, user: &str) -> Result<String, MultipartError> {
    let user_type = part_type(user)?;
    let b = boundary(&[generated, user]);
    let mut out = format!("Content-Type: multipart/mixed; boundary=\"{b}\"\nMIME-Version: 1.0\n\n");
    out.push_str(&format!(
        "--{b}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nContent-Disposition: attachment; filename=\"paddock.cfg\"\n\n{generated}"
    ));
    if !generated.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "--{b}\nContent-Type: {user_type}; charset=\"utf-8\"\nMerge-Type: {USER_MERGE_TYPE}\nContent-Disposition: attachment; filename=\"user-data\"\n\n{user}"
    ));
    if !user.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("--{b}--\n"));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_typed_and_the_boundary_is_in_neither() {
        let gen = "#cloud-config\nhostname: a\n";
        let user = "#!/bin/sh\necho --==paddock-x==\n";
        let m = combine(gen, user).unwrap();
        let b = m.split("boundary=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
        assert!(!gen.contains(&b) && !user.contains(&b));
        assert_eq!(m.matches(&format!("--{b}\n")).count(), 2, "{m}");
        assert!(m.ends_with(&format!("--{b}--\n")));
        assert!(m.contains("Content-Type: text/x-shellscript"));
        assert!(m.contains(&format!("Merge-Type: {USER_MERGE_TYPE}")));
    }

    #[test]
    fn unknown_user_data_is_refused_with_the_fix() {
        let e = combine("#cloud-config\n", "hello\n").unwrap_err();
        assert!(e.to_string().contains("#cloud-config"), "says how to fix it: {e}");
        assert_eq!(part_type("#cloud-config-archive\n- a").unwrap(), "text/cloud-config-archive");
    }
}
