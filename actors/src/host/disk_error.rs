//! The errors of making a VM's disks (host/disks.rs): the images crate's
//! own errors, each with the disk it was making.

use paddock_images::{CacheError, FatError, Qcow2Error, SeedError, SeedImageError};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("image cache")]
    Cache(#[from] CacheError),
    #[error("boot.image overlay")]
    Overlay(#[source] Qcow2Error),
    #[error("data_disk")]
    DataDisk(#[source] Qcow2Error),
    #[error("cloud_init")]
    Seed(#[source] SeedError),
    #[error("cloud_init seed")]
    SeedImage(#[from] SeedImageError),
    #[error("service_disk")]
    ServiceDisk(#[from] FatError),
}
