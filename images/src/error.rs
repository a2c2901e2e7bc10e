//! Errors of the boot-file checks in `lib.rs` (`check_file`,
//! `detect_format`). The other modules have their own error enums.

use std::path::PathBuf;

/// Errors about image files; each names the spec field it came from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: path {path:?} must be absolute")]
    NotAbsolute { field: String, path: PathBuf },
    #[error("{field}: cannot read {path:?}; check that the file exists and is readable")]
    Unreadable {
        field: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{field}: {path:?} is not a regular file")]
    NotAFile { field: String, path: PathBuf },
}

impl Error {
    /// The spec field the file came from.
    pub fn field(&self) -> &str {
        match self {
            Error::NotAbsolute { field, .. } | Error::Unreadable { field, .. } | Error::NotAFile { field, .. } => field,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
