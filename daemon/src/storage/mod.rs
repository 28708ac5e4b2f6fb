//! Storage pools and their drivers. Each driver implements [`StorageDriver`]; the rest of the
//! daemon asks a pool for image, instance and snapshot volumes and never touches the layout
//! underneath. Drivers never see HTTP types.

pub mod dir;
pub mod tree;

use std::path::{Path, PathBuf};

use crate::instance::idmap::IdShift;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage pool {pool}: {what}: {source}")]
    Io {
        pool: String,
        what: String,
        source: std::io::Error,
    },
    #[error("storage pool {0}: {1}")]
    Invalid(String, String),
    #[error("unknown storage driver {0:?} (supported: dir)")]
    UnknownDriver(String),
}

/// One storage pool's driver. Volumes are named by instance (and snapshot) name; an image
/// volume by fingerprint.
pub trait StorageDriver: Send + Sync {
    fn driver_name(&self) -> &'static str;
    fn pool_name(&self) -> &str;
    /// Where the pool keeps its data (the `source` the API shows).
    fn source(&self) -> &Path;

    fn has_image(&self, fingerprint: &str) -> bool;
    /// Makes the image volume: `fill` writes `metadata.yaml`, `templates/` and `rootfs/` into
    /// the directory it is given. On error nothing is left behind.
    fn create_image(
        &self,
        fingerprint: &str,
        fill: &mut dyn FnMut(&Path) -> Result<(), String>,
    ) -> Result<(), StorageError>;
    fn delete_image(&self, fingerprint: &str) -> Result<(), StorageError>;

    /// A new instance volume from an image volume, owned by `shift`'s ids.
    fn create_instance_from_image(
        &self,
        fingerprint: &str,
        name: &str,
        shift: IdShift,
    ) -> Result<(), StorageError>;
    /// The directory holding the instance's `rootfs/` (and image metadata and templates).
    fn instance_path(&self, name: &str) -> PathBuf;
    /// The directory holding all of an instance's snapshots.
    fn snapshots_path(&self, name: &str) -> PathBuf;
    fn rootfs_path(&self, name: &str) -> PathBuf {
        self.instance_path(name).join("rootfs")
    }
    fn delete_instance(&self, name: &str) -> Result<(), StorageError>;
    fn rename_instance(&self, from: &str, to: &str) -> Result<(), StorageError>;
    /// Re-owns an instance's files when its id map changes.
    fn reshift_instance(&self, name: &str, from: IdShift, to: IdShift) -> Result<(), StorageError>;

    fn create_snapshot(&self, name: &str, snapshot: &str) -> Result<(), StorageError>;
    fn restore_snapshot(&self, name: &str, snapshot: &str) -> Result<(), StorageError>;
    fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<(), StorageError>;
    fn rename_snapshot(&self, name: &str, from: &str, to: &str) -> Result<(), StorageError>;

    /// A new instance volume copied from another instance, or from one of its snapshots.
    fn copy_instance(
        &self,
        from: &str,
        snapshot: Option<&str>,
        to: &str,
    ) -> Result<(), StorageError>;
    /// Copies one snapshot of `from` to the same snapshot name of `to`.
    fn copy_snapshot(&self, from: &str, snapshot: &str, to: &str) -> Result<(), StorageError>;

    fn instance_usage(&self, name: &str) -> u64;
}

/// Opens the driver for a pool record.
pub fn open(
    pool: &str,
    driver: &str,
    source: &Path,
) -> Result<Box<dyn StorageDriver>, StorageError> {
    match driver {
        "dir" => Ok(Box::new(dir::DirPool::open(pool, source)?)),
        other => Err(StorageError::UnknownDriver(other.to_string())),
    }
}
