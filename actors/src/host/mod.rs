//! The host resources a VM uses: its hypervisor process, its network
//! lease, its disks, and the accelerator check.

pub mod accel;
mod disk_error;
pub mod disks;
pub mod netmgr;
pub mod process;
pub mod uefi;

pub use disk_error::DiskError;
