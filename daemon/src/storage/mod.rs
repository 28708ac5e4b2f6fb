//! Storage pools and their drivers. Each driver implements [`StorageDriver`]; the rest of the
//! daemon asks a pool for image, instance and snapshot volumes and never touches the layout
//! underneath. Drivers never see HTTP types, the database or the daemon: what they need
//! comes in as arguments ([`PoolPaths`], the pool's config).

pub mod backing;
pub mod btrfs;
pub mod dir;
pub mod mounts;
pub mod size;
pub mod stream;
pub mod transfer;
pub mod tree;
pub mod wire;
pub mod zfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::instance::idmap::IdShift;
use crate::runner::RunError;

/// A pool's config as the API gives it (`source`, `size`, `btrfs.mount_options`, `user.*`…).
pub type PoolConfig = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage pool {pool}: {what}: {source}")]
    Io {
        pool: String,
        what: String,
        source: std::io::Error,
    },
    #[error("storage pool {pool}: {what}: {source}")]
    Run {
        pool: String,
        what: String,
        source: Box<RunError>,
    },
    #[error("storage pool {0}: {1}")]
    Invalid(String, String),
    /// An option the driver does not know (Incus: `Invalid option "x"`).
    #[error("Invalid option {0:?}")]
    UnknownOption(String),
    #[error("Invalid value for option {key:?}: {reason}")]
    InvalidValue { key: String, reason: String },
    #[error("Unknown storage driver {0:?} (supported: {list})", list = supported().join(", "))]
    UnknownDriver(String),
    /// What a driver cannot do (Incus's `ErrNotSupported`).
    #[error("storage pool {pool}: {what} is not supported by the {driver} driver")]
    NotSupported {
        pool: String,
        driver: &'static str,
        what: String,
    },
    /// The pool's filesystem is full: the write was undone, nothing stored was lost.
    #[error("storage pool {pool}: {what}: the pool is out of space")]
    Full { pool: String, what: String },
}

impl StorageError {
    /// Whether the caller asked for something wrong (a 400), rather than the host failing.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StorageError::Invalid(..)
                | StorageError::UnknownOption(_)
                | StorageError::InvalidValue { .. }
                | StorageError::UnknownDriver(_)
                | StorageError::NotSupported { .. }
        )
    }

    /// An I/O error, or [`StorageError::Full`] when it is ENOSPC/EDQUOT.
    pub fn io(pool: &str, what: String, source: std::io::Error) -> StorageError {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::Full {
                pool: pool.to_string(),
                what,
            },
            _ => StorageError::Io {
                pool: pool.to_string(),
                what,
                source,
            },
        }
    }
}

/// The error of an image volume's `fill`: a full pool is [`StorageError::Full`], not the
/// image's fault.
pub fn fill_error(pool: &str, fingerprint: &str, e: String) -> StorageError {
    if e.contains("No space left on device") || e.contains("Disk quota exceeded") {
        return StorageError::Full {
            pool: pool.to_string(),
            what: format!("unpacking image {fingerprint} ({e})"),
        };
    }
    StorageError::Invalid(pool.to_string(), e)
}

/// Where a pool may keep what it makes on this member, from the daemon's state dir.
#[derive(Debug, Clone)]
pub struct PoolPaths {
    /// `storage-pools/<pool>`: the default `source` of a dir pool, the mount point of a
    /// btrfs one.
    pub mount: PathBuf,
    /// `disks/`: loop files (`disks/<pool>.img`, as Incus names them).
    pub disks: PathBuf,
}

impl PoolPaths {
    pub fn new(state: &Path, pool: &str) -> PoolPaths {
        PoolPaths {
            mount: state.join("storage-pools").join(pool),
            disks: state.join("disks"),
        }
    }
}

/// Used and total bytes (and inodes) of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub used: u64,
    pub total: u64,
    pub inodes_used: u64,
    pub inodes_total: u64,
}

/// statvfs of `path`: what `df` shows.
pub fn statvfs_space(path: &Path) -> std::io::Result<Space> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frag = st.fragment_size();
    let total = st.blocks() * frag;
    let free = st.blocks_available() * frag;
    Ok(Space {
        used: total.saturating_sub(free),
        total,
        inodes_used: st.files().saturating_sub(st.files_free()),
        inodes_total: st.files(),
    })
}

/// One storage pool's driver. Volumes are named by instance (and snapshot) name; an image
/// volume by fingerprint.
pub trait StorageDriver: Send + Sync {
    fn driver_name(&self) -> &'static str;
    fn pool_name(&self) -> &str;
    /// The directory the pool's layout lives in: a dir pool's source, a btrfs pool's mount.
    fn source(&self) -> &Path;

    /// Used and total space of the pool.
    fn space(&self) -> Result<Space, StorageError> {
        statvfs_space(self.source())
            .map_err(|e| StorageError::io(self.pool_name(), "reading its usage".into(), e))
    }
    /// Removes the pool from this member: what the driver made for it (a loop file is
    /// deleted, a mount undone). Called only for a pool no instance uses.
    fn destroy(&self) -> Result<(), StorageError>;
    /// Grows the pool to `bytes` (a new `size`). Only pools on a loop file can: a device's
    /// size is the device's. Shrinking is refused.
    fn grow(&self, bytes: u64) -> Result<(), StorageError> {
        let _ = bytes;
        Err(StorageError::NotSupported {
            pool: self.pool_name().to_string(),
            driver: self.driver_name(),
            what: "changing the size of this pool (only a pool on a loop file grows)".into(),
        })
    }
    /// Whether [`StorageDriver::set_instance_quota`] enforces a limit.
    fn supports_quotas(&self) -> bool {
        false
    }
    /// Limits an instance volume to `bytes` (the root disk's `size`), or lifts the limit.
    fn set_instance_quota(&self, name: &str, bytes: Option<u64>) -> Result<(), StorageError> {
        let _ = name;
        match bytes {
            None => Ok(()),
            Some(_) => Err(StorageError::NotSupported {
                pool: self.pool_name().to_string(),
                driver: self.driver_name(),
                what: "a root disk size".into(),
            }),
        }
    }

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
    /// The files of one snapshot, read-only (what a file-level copy reads).
    fn snapshot_files(&self, name: &str, snapshot: &str) -> PathBuf {
        self.snapshots_path(name).join(snapshot)
    }
    /// A new, empty instance volume (a file-level copy from another pool fills it).
    fn create_empty_instance(&self, name: &str) -> Result<(), StorageError>;
    fn rootfs_path(&self, name: &str) -> PathBuf {
        self.instance_path(name).join("rootfs")
    }
    fn delete_instance(&self, name: &str) -> Result<(), StorageError>;
    fn rename_instance(&self, from: &str, to: &str) -> Result<(), StorageError>;
    /// Re-owns an instance's files when its id map changes.
    fn reshift_instance(&self, name: &str, from: IdShift, to: IdShift) -> Result<(), StorageError> {
        tree::reshift(&self.rootfs_path(name), tree::Reshift::between(from, to)).map_err(|e| {
            StorageError::io(self.pool_name(), format!("re-owning instance {name}"), e)
        })
    }

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
    /// [`StorageDriver::copy_instance`], then `snapshots` of `from` copied along (zfs sends
    /// them in one stream: a snapshot cannot be added to a dataset afterwards).
    fn copy_instance_with_snapshots(
        &self,
        from: &str,
        snapshot: Option<&str>,
        to: &str,
        snapshots: &[String],
    ) -> Result<(), StorageError> {
        self.copy_instance(from, snapshot, to)?;
        for s in snapshots {
            self.copy_snapshot(from, s, to)?;
        }
        Ok(())
    }

    fn instance_usage(&self, name: &str) -> u64;

    // Custom volumes (`incus storage volume create`): a filesystem of their own under
    // `custom/<name>`, which instances mount as `disk` devices. Empty and owned by root when
    // made; re-owned for the id map of the instances that mount it (see `instance::volumes`).

    /// The directory a custom volume's files live in: what a disk device mounts.
    fn volume_path(&self, name: &str) -> PathBuf {
        self.source().join("custom").join(name)
    }
    fn create_volume(&self, name: &str) -> Result<(), StorageError>;
    fn delete_volume(&self, name: &str) -> Result<(), StorageError>;
    /// A new custom volume `to` with the files of `from` (owners and modes kept).
    fn copy_volume(&self, from: &str, to: &str) -> Result<(), StorageError>;
    /// [`StorageDriver::copy_volume`] with `snapshots` of `from` copied along.
    fn copy_volume_with_snapshots(
        &self,
        from: &str,
        to: &str,
        snapshots: &[String],
    ) -> Result<(), StorageError> {
        self.copy_volume(from, to)?;
        for s in snapshots {
            self.copy_volume_snapshot(from, s, to)?;
        }
        Ok(())
    }
    /// Writes instance `name` (its volume and snapshots) into `out`, as the same driver's
    /// [`StorageDriver::receive_instance`] on another member reads it: a tar of the files
    /// by default.
    fn send_instance(&self, name: &str, out: &mut dyn std::io::Write) -> Result<(), StorageError> {
        stream::write_tar(&self.instance_path(name), &self.snapshots_path(name), out)
            .map_err(|e| StorageError::io(self.pool_name(), format!("sending instance {name}"), e))
    }
    /// Makes instance `name` from a [`StorageDriver::send_instance`] stream; on error
    /// nothing is left behind.
    fn receive_instance(
        &self,
        name: &str,
        input: &mut dyn std::io::Read,
    ) -> Result<(), StorageError> {
        let volume = self.instance_path(name);
        let err = |e| StorageError::io(self.pool_name(), format!("receiving instance {name}"), e);
        if let Some(p) = volume.parent() {
            std::fs::create_dir_all(p).map_err(err)?;
        }
        stream::receive_tar(input, &volume, &self.snapshots_path(name)).map_err(err)
    }
    fn rename_volume(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let err = |e| {
            StorageError::io(
                self.pool_name(),
                format!("renaming volume {from} to {to}"),
                e,
            )
        };
        std::fs::rename(self.volume_path(from), self.volume_path(to)).map_err(err)?;
        let snaps = self.source().join("custom-snapshots");
        if snaps.join(from).exists() {
            std::fs::rename(snaps.join(from), snaps.join(to)).map_err(err)?;
        }
        Ok(())
    }
    /// Limits a custom volume to `bytes` (its `size`), or lifts the limit.
    fn set_volume_quota(&self, name: &str, bytes: Option<u64>) -> Result<(), StorageError> {
        let _ = name;
        match bytes {
            None => Ok(()),
            Some(_) => Err(StorageError::NotSupported {
                pool: self.pool_name().to_string(),
                driver: self.driver_name(),
                what: "a volume size".into(),
            }),
        }
    }
    /// Where a custom volume's snapshot lives: `custom-snapshots/<volume>/<snapshot>`.
    fn volume_snapshot_path(&self, name: &str, snap: &str) -> PathBuf {
        self.source().join("custom-snapshots").join(name).join(snap)
    }
    /// A read-only copy of the volume as it is now (a btrfs snapshot, a dir copy).
    fn create_volume_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError>;
    fn delete_volume_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError>;
    /// Makes the volume what the snapshot holds. The volume's quota is the caller's to set
    /// again: a restored btrfs subvolume is a new one.
    fn restore_volume_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError>;
    /// Copies one snapshot of `from` to the same snapshot name of `to`.
    fn copy_volume_snapshot(&self, from: &str, snap: &str, to: &str) -> Result<(), StorageError>;
    fn rename_volume_snapshot(&self, name: &str, from: &str, to: &str) -> Result<(), StorageError> {
        std::fs::rename(
            self.volume_snapshot_path(name, from),
            self.volume_snapshot_path(name, to),
        )
        .map_err(|e| {
            StorageError::io(
                self.pool_name(),
                format!("renaming snapshot {name}/{from}"),
                e,
            )
        })
    }
    fn volume_usage(&self, name: &str) -> u64 {
        tree::usage(&self.volume_path(name))
    }
    /// Re-owns a custom volume's files from one id map to another.
    fn reshift_volume(&self, name: &str, from: IdShift, to: IdShift) -> Result<(), StorageError> {
        let shift = tree::Reshift::between(from, to);
        tree::reshift(&self.volume_path(name), shift)
            .map_err(|e| StorageError::io(self.pool_name(), format!("re-owning volume {name}"), e))
    }
}

/// Makes `custom-snapshots/<volume>`, owner-only like the instances' snapshot dirs.
pub fn volume_snapshots_dir(pool: &dyn StorageDriver, name: &str) -> Result<PathBuf, StorageError> {
    use std::os::unix::fs::PermissionsExt;
    let p = pool.source().join("custom-snapshots").join(name);
    std::fs::create_dir_all(&p)
        .and_then(|_| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| StorageError::io(pool.pool_name(), format!("creating {}", p.display()), e))?;
    Ok(p)
}

/// Makes the empty root of a new custom volume: 0711 like Incus's, so an unprivileged
/// container's users can reach what its root makes inside.
pub fn new_volume_root(pool: &str, p: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| StorageError::io(pool, format!("setting mode of {}", p.display()), e))
}

/// How a driver opens a pool: name, config, where its files go.
pub type OpenFn = fn(&str, &PoolConfig, &PoolPaths) -> Result<Box<dyn StorageDriver>, StorageError>;

/// A driver before a pool exists: the name→constructor table (Incus's `load.go`).
pub struct DriverKind {
    pub name: &'static str,
    /// Checks a pool's config: unknown options and bad values are refused.
    pub validate: fn(&PoolConfig) -> Result<(), StorageError>,
    /// Makes the pool on this member (formats a device, makes a loop file) and returns the
    /// config to record, with what was defaulted (`source`, `size`) filled in.
    pub create: fn(&str, &PoolConfig, &PoolPaths) -> Result<PoolConfig, StorageError>,
    /// Opens a pool made before (at daemon start: mounts it again).
    pub open: OpenFn,
}

const DRIVERS: &[DriverKind] = &[dir::KIND, btrfs::KIND, zfs::KIND];

/// The drivers this daemon has, by name.
pub fn supported() -> Vec<&'static str> {
    DRIVERS.iter().map(|k| k.name).collect()
}

pub fn kind(driver: &str) -> Result<&'static DriverKind, StorageError> {
    DRIVERS
        .iter()
        .find(|k| k.name == driver)
        .ok_or_else(|| StorageError::UnknownDriver(driver.to_string()))
}

/// Opens the driver for a pool record.
pub fn open(
    pool: &str,
    driver: &str,
    config: &PoolConfig,
    paths: &PoolPaths,
) -> Result<Box<dyn StorageDriver>, StorageError> {
    (kind(driver)?.open)(pool, config, paths)
}

/// Refuses keys outside `known` (and the `user.*` keys every pool takes), as Incus's
/// `validatePool` does.
pub fn check_known_options(config: &PoolConfig, known: &[&str]) -> Result<(), StorageError> {
    for k in config.keys() {
        if !known.contains(&k.as_str()) && !k.starts_with("user.") {
            return Err(StorageError::UnknownOption(k.clone()));
        }
    }
    Ok(())
}

/// `source` must be an absolute path with no `..` (it may name a device or a directory).
pub fn check_source(config: &PoolConfig) -> Result<(), StorageError> {
    if let Some(v) = config.get("source") {
        if !v.is_empty() && (!v.starts_with('/') || v.split('/').any(|c| c == "..")) {
            return Err(StorageError::InvalidValue {
                key: "source".into(),
                reason: "must be an absolute path".into(),
            });
        }
    }
    Ok(())
}

/// The drivers that can make a pool on this server (zfs needs its kernel module).
pub fn available() -> Vec<&'static str> {
    DRIVERS
        .iter()
        .map(|k| k.name)
        .filter(|n| *n != "zfs" || zfs::available())
        .collect()
}

/// Incus's false values (`util.IsFalse`).
pub fn is_false(v: &str) -> bool {
    ["false", "0", "no", "off"].contains(&v.to_ascii_lowercase().as_str())
}

/// Incus's boolean values (`util.IsTrue`).
pub fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| ["true", "1", "yes", "on"].contains(&v.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_driver_names_the_supported_ones() {
        let paths = PoolPaths::new(Path::new("/nonexistent"), "p");
        let e = open("p", "zfz", &PoolConfig::new(), &paths).err().unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains("zfz") && msg.contains("dir, btrfs, zfs"),
            "{msg}"
        );
        assert!(e.is_bad_input());
    }

    #[test]
    fn unknown_options_are_refused_user_keys_are_not() {
        let mut c: PoolConfig = [("user.x".to_string(), "1".to_string())].into();
        check_known_options(&c, &["source"]).unwrap();
        c.insert("bogus".into(), "1".into());
        let e = check_known_options(&c, &["source"]).unwrap_err();
        assert_eq!(e.to_string(), "Invalid option \"bogus\"");
    }

    #[test]
    fn enospc_is_a_full_pool() {
        let e = StorageError::io(
            "p",
            "writing".into(),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(matches!(e, StorageError::Full { .. }), "{e}");
    }
}
