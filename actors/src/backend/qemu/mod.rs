//! The QEMU backend: argv (pure, golden-tested), the QMP client, and the
//! `Backend` implementation that ties them to a spec.

pub mod argv;
mod backend;
pub mod migrate;
pub mod qmp;

pub use backend::{quit_orphan, QemuBackend};
