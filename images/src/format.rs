//! Disk format detection from the image header.

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Reads the first bytes of the file: qcow2 has a magic number, anything
/// else is raw. We never let QEMU probe formats itself (probing a raw image
/// a guest wrote a qcow2 header into is a known escape).
pub fn detect_format(field: &str, path: &Path) -> Result<DiskFormat> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|source| Error::Unreadable {
        field: field.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    match file.read_exact(&mut magic) {
        Ok(()) if magic == QCOW2_MAGIC => Ok(DiskFormat::Qcow2),
        _ => Ok(DiskFormat::Raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn detects_qcow2_magic_and_raw() {
        let dir = std::env::temp_dir().join(format!("paddock-fmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let q = dir.join("a.qcow2");
        std::fs::File::create(&q).unwrap().write_all(b"QFI\xfb\0\0\0\x03").unwrap();
        let r = dir.join("b.img");
        std::fs::File::create(&r).unwrap().write_all(&[0u8; 512]).unwrap();
        assert_eq!(detect_format("disks[0].path", &q).unwrap(), DiskFormat::Qcow2);
        assert_eq!(detect_format("disks[0].path", &r).unwrap(), DiskFormat::Raw);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
