//! The errors of the supervision layer. The daemon maps each variant to an
//! API error kind in one place (`src/api/error.rs`).

pub use crate::spec_error::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// A file the spec names (boot, disks) that cannot be used; the
    /// images crate's error names the field.
    #[error("invalid spec: {0}")]
    ImageFile(#[from] paddock_images::Error),
    /// Making the VM's disks (overlay, data disk, seed, service disk).
    #[error(transparent)]
    Disk(#[from] crate::host::DiskError),
    /// The VM's network lease (TAP, rules); `name` is "*" for the table.
    #[error("VM {name:?}: network lease")]
    Network {
        name: String,
        #[source]
        source: paddock_net::Error,
    },
    #[error("no VM named {name:?}")]
    NotFound { name: String },
    #[error("no kept volume named {name:?}; see `paddock volume ls`")]
    NoVolume { name: String },
    #[error("a VM named {name:?} already exists; pick another name or `paddock rm {name}` first")]
    AlreadyExists { name: String },
    #[error("VM {name:?}: {message}")]
    Conflict { name: String, message: String },
    #[error("VM {name:?} has too many requests in flight; retry shortly")]
    Busy { name: String },
    #[error("VM {name:?} failed to start: {reason}")]
    StartFailed { name: String, reason: String },
    #[error("VM {name:?}: hypervisor {backend} is not available on this host: {reason}")]
    BackendUnavailable { name: String, backend: &'static str, reason: String },
    #[error("VM {name:?}: control channel")]
    Control {
        name: String,
        #[source]
        source: crate::backend::ControlError,
    },
    #[error("state store")]
    Store(#[from] crate::store::StoreError),
    /// A change that happened (or was about to) but whose record could not
    /// be written: the request is not answered as a success.
    #[error("VM {name:?}: {what}: the state database cannot record it ({detail}); free space in the state directory and retry")]
    NotRecorded { name: String, what: String, detail: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not answer within {timeout_ms} ms")]
    Timeout { what: String, timeout_ms: u64 },
    #[error("the supervisor is shutting down or an actor is gone: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
