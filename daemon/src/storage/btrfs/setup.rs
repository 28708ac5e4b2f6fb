//! Making and opening a btrfs pool: checking its options, formatting a loop file or a
//! device, mounting it again at start.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::super::backing::{self, run_err};
use super::super::mounts;
use super::super::size::parse_bytes;
use super::super::{
    check_known_options, check_source, PoolConfig, PoolPaths, StorageDriver, StorageError,
};
use super::BtrfsPool;
use crate::runner;

const OPTIONS: &[&str] = &["source", "size", "btrfs.mount_options", "source.wipe"];
const DEFAULT_MOUNT_OPTIONS: &str = "user_subvol_rm_allowed";
/// mkfs.btrfs refuses smaller devices (its minimum is about 114 MiB).
const MIN_SIZE: u64 = 256 << 20;

pub(super) fn validate(config: &PoolConfig) -> Result<(), StorageError> {
    check_known_options(config, OPTIONS)?;
    check_source(config)?;
    if let Some(s) = config.get("size").filter(|s| !s.is_empty()) {
        let bytes = parse_bytes(s).map_err(|reason| StorageError::InvalidValue {
            key: "size".into(),
            reason,
        })?;
        if bytes < MIN_SIZE {
            return Err(StorageError::InvalidValue {
                key: "size".into(),
                reason: format!("a btrfs pool needs at least {} MiB", MIN_SIZE >> 20),
            });
        }
    }
    if let Some(o) = config.get("btrfs.mount_options") {
        if o.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StorageError::InvalidValue {
                key: "btrfs.mount_options".into(),
                reason: "mount options are a comma-separated list without spaces".into(),
            });
        }
    }
    Ok(())
}

/// Where the pool's filesystem comes from.
enum Backing {
    Loop(PathBuf),
    Device(PathBuf),
    Directory(PathBuf),
}

fn backing(pool: &str, config: &PoolConfig, paths: &PoolPaths) -> Result<Backing, StorageError> {
    let source = config.get("source").filter(|s| !s.is_empty());
    let Some(source) = source else {
        return Ok(Backing::Loop(backing::default_loop_file(paths, pool)));
    };
    let p = PathBuf::from(source);
    let md = backing::source_metadata(pool, source)?;
    if md.file_type().is_block_device() {
        Ok(Backing::Device(p))
    } else if md.is_dir() {
        Ok(Backing::Directory(p))
    } else if md.is_file() && p.starts_with(&paths.disks) {
        // A loop file recorded by an earlier create.
        Ok(Backing::Loop(p))
    } else {
        Err(StorageError::InvalidValue {
            key: "source".into(),
            reason: format!("{source} is neither a block device nor a directory"),
        })
    }
}

pub(super) fn create(
    pool: &str,
    config: &PoolConfig,
    paths: &PoolPaths,
) -> Result<PoolConfig, StorageError> {
    validate(config)?;
    let mut out = config.clone();
    out.entry("btrfs.mount_options".into())
        .or_insert_with(|| DEFAULT_MOUNT_OPTIONS.into());
    out.remove("source.wipe");
    match backing(pool, config, paths)? {
        Backing::Loop(file) => {
            let bytes = backing::loop_size(config, &paths.disks)?;
            backing::make_loop_file(pool, paths, &file, bytes)?;
            if let Err(e) = mkfs(pool, &file, false) {
                let _ = fs::remove_file(&file);
                return Err(e);
            }
            out.insert("source".into(), file.display().to_string());
            out.insert("size".into(), backing::format_size(bytes));
        }
        Backing::Device(dev) => {
            let found = backing::check_device(pool, config, &dev)?;
            mkfs(pool, &dev, found.is_some())?;
        }
        Backing::Directory(dir) => {
            if mounts::fs_magic(&dir)
                .map_err(|e| StorageError::io(pool, format!("reading {}", dir.display()), e))?
                != mounts::BTRFS_MAGIC
            {
                return Err(StorageError::InvalidValue {
                    key: "source".into(),
                    reason: format!("{} is not on a btrfs filesystem", dir.display()),
                });
            }
            let nonempty = fs::read_dir(&dir)
                .map_err(|e| StorageError::io(pool, format!("listing {}", dir.display()), e))?
                .next()
                .is_some();
            if nonempty {
                return Err(StorageError::InvalidValue {
                    key: "source".into(),
                    reason: format!("{} is not empty", dir.display()),
                });
            }
            if out.contains_key("size") {
                return Err(StorageError::InvalidValue {
                    key: "size".into(),
                    reason: "a pool in an existing directory shares its filesystem".into(),
                });
            }
            out.remove("btrfs.mount_options");
        }
    }
    // Opening mounts it and lays out the directories; a pool that cannot be opened is not
    // created.
    if let Err(e) = open(pool, &out, paths).and_then(|p| p.space().map(|_| ())) {
        if let Ok(Backing::Loop(file)) = backing(pool, &out, paths) {
            let _ = runner::run("umount", [paths.mount.as_os_str()]);
            let _ = fs::remove_file(file);
        }
        return Err(e);
    }
    Ok(out)
}

fn mkfs(pool: &str, target: &Path, force: bool) -> Result<(), StorageError> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["-q".as_ref(), "-L".as_ref(), pool.as_ref()];
    if force {
        args.push("-f".as_ref());
    }
    args.push(target.as_os_str());
    runner::run("mkfs.btrfs", args)
        .map(|_| ())
        .map_err(run_err(pool, format!("formatting {}", target.display())))
}

pub(super) fn open(
    pool: &str,
    config: &PoolConfig,
    paths: &PoolPaths,
) -> Result<Box<dyn StorageDriver>, StorageError> {
    let backing = backing(pool, config, paths)?;
    let loop_file = match &backing {
        Backing::Loop(f) => Some(f.clone()),
        _ => None,
    };
    let mounted = !matches!(backing, Backing::Directory(_));
    let root = match backing {
        Backing::Directory(dir) => dir,
        Backing::Loop(dev) | Backing::Device(dev) => {
            fs::create_dir_all(&paths.mount)
                .map_err(|e| StorageError::io(pool, "creating the mount point".into(), e))?;
            let mounted = mounts::is_mount_point(&paths.mount)
                .map_err(|e| StorageError::io(pool, "reading mountinfo".into(), e))?;
            if !mounted {
                let opts = config
                    .get("btrfs.mount_options")
                    .map(String::as_str)
                    .unwrap_or(DEFAULT_MOUNT_OPTIONS);
                let opts = if dev.starts_with(&paths.disks) {
                    format!("loop,{opts}")
                } else {
                    opts.to_string()
                };
                runner::run(
                    "mount",
                    [
                        "-t".as_ref(),
                        "btrfs".as_ref(),
                        "-o".as_ref(),
                        opts.as_ref(),
                        dev.as_os_str(),
                        paths.mount.as_os_str(),
                    ],
                )
                .map_err(run_err(pool, format!("mounting {}", dev.display())))?;
            }
            paths.mount.clone()
        }
    };
    let p = BtrfsPool {
        name: pool.to_string(),
        root,
        loop_file,
        mounted,
        spares: Default::default(),
    };
    for sub in [
        "",
        "images",
        "containers",
        "containers-snapshots",
        "custom",
        "custom-snapshots",
    ] {
        let d = p.root.join(sub);
        fs::create_dir_all(&d).map_err(|e| p.io(e, format!("creating {}", d.display())))?;
        // Unprivileged containers must traverse down to their rootfs: x for others, no r.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o711))
            .map_err(|e| p.io(e, format!("setting mode of {}", d.display())))?;
    }
    Ok(Box::new(p))
}
