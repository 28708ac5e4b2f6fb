//! What a pool's filesystem sits on, shared by the drivers that make their own (btrfs,
//! zfs): a loop file under `disks/`, or a whole block device that must be free.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::mounts;
use super::size::parse_bytes;
use super::{is_true, PoolConfig, PoolPaths, StorageError};
use crate::runner;

const GIB: u64 = 1 << 30;

/// Maps a runner failure to the pool's error, saying what was being done.
pub fn run_err(
    pool: &str,
    what: impl Into<String>,
) -> impl FnOnce(runner::RunError) -> StorageError {
    let pool = pool.to_string();
    let what = what.into();
    move |source| StorageError::Run {
        pool,
        what,
        source: Box::new(source),
    }
}

/// Incus's default loop size: a fifth of the free space, within 5 GiB..30 GiB.
pub fn default_loop_size(disks: &Path) -> u64 {
    let free = nix::sys::statvfs::statvfs(disks)
        .map(|st| st.blocks_available() * st.fragment_size())
        .unwrap_or(0);
    (free / 5 / GIB).clamp(5, 30) * GIB
}

/// A size as the pool's config records it (`5GiB`, `300MiB`).
pub fn format_size(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{}GiB", bytes / GIB)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else {
        bytes.to_string()
    }
}

/// The loop file's size: `size` from the config, or [`default_loop_size`].
pub fn loop_size(config: &PoolConfig, disks: &Path) -> Result<u64, StorageError> {
    match config.get("size").filter(|s| !s.is_empty()) {
        Some(s) => parse_bytes(s).map_err(|reason| StorageError::InvalidValue {
            key: "size".into(),
            reason,
        }),
        None => Ok(default_loop_size(disks)),
    }
}

/// Makes the sparse loop file `file` of `bytes`, owner-only, never over an existing file.
pub fn make_loop_file(
    pool: &str,
    paths: &PoolPaths,
    file: &Path,
    bytes: u64,
) -> Result<(), StorageError> {
    fs::create_dir_all(&paths.disks)
        .map_err(|e| StorageError::io(pool, "creating the disks dir".into(), e))?;
    fs::set_permissions(&paths.disks, fs::Permissions::from_mode(0o700))
        .map_err(|e| StorageError::io(pool, "setting the disks dir mode".into(), e))?;
    // create_new: never format over a file something else made.
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| StorageError::io(pool, format!("creating {}", file.display()), e))?;
    let made = f
        .set_len(bytes)
        .and_then(|_| fs::set_permissions(file, fs::Permissions::from_mode(0o600)));
    drop(f);
    if let Err(e) = made {
        let _ = fs::remove_file(file);
        return Err(StorageError::io(
            pool,
            format!("sizing {}", file.display()),
            e,
        ));
    }
    Ok(())
}

/// Checks that a whole device may be given to a pool: not mounted, and holding nothing
/// unless `source.wipe` says to erase it. Returns what it holds (a filesystem or pool type).
pub fn check_device(
    pool: &str,
    config: &PoolConfig,
    dev: &Path,
) -> Result<Option<String>, StorageError> {
    if config.get("size").is_some_and(|s| !s.is_empty()) {
        return Err(StorageError::InvalidValue {
            key: "size".into(),
            reason: "a pool on a block device takes the whole device".into(),
        });
    }
    if let Some(at) = mounts::mounted_at(dev)
        .map_err(|e| StorageError::io(pool, format!("reading {}", dev.display()), e))?
    {
        return Err(StorageError::InvalidValue {
            key: "source".into(),
            reason: format!("{} is mounted on {}", dev.display(), at.display()),
        });
    }
    let found = mounts::probe_signature(dev)
        .map_err(run_err(pool, format!("probing {}", dev.display())))?;
    if let (Some(fs_type), false) = (&found, is_true(config.get("source.wipe"))) {
        return Err(StorageError::InvalidValue {
            key: "source".into(),
            reason: format!(
                "{} is not empty: it holds {} (set source.wipe=true to erase it)",
                dev.display(),
                match fs_type.as_str() {
                    "gpt" | "dos" => format!("a {fs_type} partition table"),
                    "zfs_member" => "a zfs pool".to_string(),
                    t => format!("a {t} filesystem"),
                }
            ),
        });
    }
    Ok(found)
}

/// The loop file a pool named `pool` gets by default: `disks/<pool>.img`.
pub fn default_loop_file(paths: &PoolPaths, pool: &str) -> PathBuf {
    paths.disks.join(format!("{pool}.img"))
}

/// Grows loop file `file` to `bytes`; a smaller size is refused (nothing shrinks a pool).
pub fn grow_loop_file(pool: &str, file: &Path, bytes: u64) -> Result<(), StorageError> {
    let now = fs::metadata(file)
        .map_err(|e| StorageError::io(pool, format!("reading {}", file.display()), e))?
        .len();
    if bytes < now {
        return Err(StorageError::InvalidValue {
            key: "size".into(),
            reason: format!(
                "a pool cannot shrink (it is {}, asked for {})",
                format_size(now),
                format_size(bytes)
            ),
        });
    }
    fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| f.set_len(bytes))
        .map_err(|e| StorageError::io(pool, format!("growing {}", file.display()), e))
}

/// The metadata of a pool's `source` path; a missing one is the caller's mistake (a 400).
pub fn source_metadata(pool: &str, source: &str) -> Result<fs::Metadata, StorageError> {
    fs::metadata(source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StorageError::InvalidValue {
                key: "source".into(),
                reason: format!("{source} does not exist"),
            }
        } else {
            StorageError::io(pool, format!("reading {source}"), e)
        }
    })
}
