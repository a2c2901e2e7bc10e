//! The NoCloud seed as a disk image: ISO 9660 with volume id `cidata`
//! (the default) or vfat labelled `CIDATA`.
//!
//! Owns: putting rendered [`SeedFiles`] into an image file. The ISO is
//! written with hadris-iso (pure Rust; Rock Ridge and Joliet trees carry
//! the lower-case names `meta-data`, `user-data`, `network-config`), the
//! vfat image with fatfs (through [`crate::fat`]). Both are written under a
//! temporary name and renamed into place when complete.

use std::path::{Path, PathBuf};

use hadris_fs::{Content, Node, Tree};
use hadris_iso::{IsoId, IsoLevel, IsoOptions};

use crate::fat::{self, Entry, FatError, Source};
use crate::seed::SeedFiles;
use crate::tmp::{publish, TempPath};

/// The image format of a seed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SeedFormat {
    /// ISO 9660, volume id `cidata`.
    #[default]
    Iso,
    /// FAT, label `CIDATA`.
    Vfat,
}

/// Errors writing a seed image.
#[derive(Debug, thiserror::Error)]
pub enum SeedImageError {
    #[error("cannot lay out the seed ISO {path:?}: {detail}")]
    Iso { path: PathBuf, detail: String },
    #[error("cannot write the seed image {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fat(#[from] FatError),
}

/// Writes the seed image to `dest` (replacing an old one atomically) and
/// returns its size. Blocking: call from `spawn_blocking` in async code.
pub fn write_seed_image(files: &SeedFiles, format: SeedFormat, dest: &Path) -> Result<u64, SeedImageError> {
    match format {
        SeedFormat::Iso => write_iso(files, dest),
        SeedFormat::Vfat => {
            let entries: Vec<Entry> = files
                .entries()
                .into_iter()
                .map(|(name, content)| Entry::File(name.to_string(), Source::Bytes(content.as_bytes().to_vec())))
                .collect();
            Ok(fat::write_image(dest, "CIDATA", &entries)?)
        }
    }
}

fn write_iso(files: &SeedFiles, dest: &Path) -> Result<u64, SeedImageError> {
    let iso_err = |detail: String| SeedImageError::Iso { path: dest.to_path_buf(), detail };
    let werr = |source| SeedImageError::Write { path: dest.to_path_buf(), source };
    let mut tree = Tree::new();
    for (name, content) in files.entries() {
        tree.insert(name, Node::file(Content::bytes(content.as_bytes().to_vec())))
            .map_err(|e| iso_err(e.to_string()))?;
    }
    // Level 2 keeps the primary names close to the real ones; Rock Ridge
    // (Linux) and Joliet (others) carry them exactly. The writer reads no
    // clock, so the same files give the same bytes.
    let options = IsoOptions::default()
        .with_id(IsoId::Volume, "cidata")
        .with_id(IsoId::Application, "PADDOCK")
        .with_level(IsoLevel::L2)
        .with_joliet()
        .with_rock_ridge();
    let size = hadris_iso::plan(&tree, &options).map_err(|e| iso_err(e.to_string()))?.size();
    let tmp = TempPath::beside(dest).map_err(werr)?;
    let file = std::fs::File::options().read(true).write(true).create_new(true).open(tmp.path()).map_err(werr)?;
    file.set_len(size).map_err(werr)?;
    let device = hadris_storage::host::FileDevice::new(file.try_clone().map_err(werr)?).map_err(werr)?;
    let report = hadris_iso::sync::write(device, &tree, &options).map_err(|e| iso_err(e.to_string()))?;
    if let Some(w) = report.warnings().iter().next() {
        return Err(iso_err(format!("writer warning: {w}")));
    }
    file.sync_all().map_err(werr)?;
    drop(file);
    publish(tmp, dest).map_err(werr)?;
    Ok(size)
}
