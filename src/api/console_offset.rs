//! `GET /v1/vms/{name}/console?offset=N`: the console log from byte N of
//! the live file, at most `MAX_READ` bytes, for a reader (a scheduler's log
//! shipper) that resumes where it stopped. The answer's
//! `paddock-console-next` header is the offset to ask for next; when the
//! file was rotated or truncated below N (it shrank), the read starts over
//! at 0 and `paddock-console-restarted: true` says so.

use axum::http::header;
use axum::response::Response;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use super::error::ApiError;

/// Most bytes one offset read returns; the client asks again from `next`.
pub const MAX_READ: u64 = 1 << 20;
pub const NEXT_HEADER: &str = "paddock-console-next";
pub const RESTARTED_HEADER: &str = "paddock-console-restarted";

pub fn read_from(log: &Path, offset: u64) -> Result<Response, ApiError> {
    let io_err = |e: std::io::Error| ApiError::from(crate::Error::Io { context: format!("cannot read the console log {}", log.display()), source: e });
    let (bytes, start, restarted) = match std::fs::File::open(log) {
        // Not written yet (the VM never ran): nothing from anywhere.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0, offset > 0),
        Err(e) => return Err(io_err(e)),
        Ok(mut f) => {
            let len = f.metadata().map_err(io_err)?.len();
            let (start, restarted) = if offset > len { (0, true) } else { (offset, false) };
            f.seek(SeekFrom::Start(start)).map_err(io_err)?;
            let mut buf = Vec::new();
            f.take(MAX_READ.min(len - start)).read_to_end(&mut buf).map_err(io_err)?;
            (buf, start, restarted)
        }
    };
    let next = start + bytes.len() as u64;
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(NEXT_HEADER, next.to_string());
    if restarted {
        resp = resp.header(RESTARTED_HEADER, "true");
    }
    Ok(resp.body(axum::body::Body::from(bytes)).unwrap_or_default())
}
