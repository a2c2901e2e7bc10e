//! The host resources a VM uses: its hypervisor process, its network
//! lease, its disks, and the accelerator check.

pub mod accel;
pub mod disks;
pub mod netmgr;
pub mod process;
