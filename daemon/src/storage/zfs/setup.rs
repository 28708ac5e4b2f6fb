//! Making and opening a zfs pool: checking its options, creating the zpool on a loop file or
//! a device (or using an existing pool or dataset), importing it again at start.
//!
//! zpools are created with `cachefile=none`: the appliance's /etc is read-only and nothing
//! imports pools at boot but cairnd, which imports each pool it knows from the vdev the
//! pool's config records (`zpool import -d <file or device>`), so no cache can go stale.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::super::backing::{self, run_err};
use super::super::size::parse_bytes;
use super::super::{check_known_options, PoolConfig, PoolPaths, StorageDriver, StorageError};
use super::{disk, ZfsPool, LAYOUT};
use crate::runner;

const OPTIONS: &[&str] = &[
    "source",
    "size",
    "zfs.pool_name",
    "zfs.clone_copy",
    "source.wipe",
];
/// zpool refuses vdevs under 64 MiB.
const MIN_SIZE: u64 = 128 << 20;

/// Whether this kernel has zfs: `/dev/zfs` is there, after loading the module once if it
/// was not (on the appliance cairn-init loads it in parallel with the first start; a second
/// modprobe waits for that one).
pub(super) fn available() -> bool {
    static TRIED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let dev = Path::new("/dev/zfs");
    if !dev.exists() {
        TRIED.get_or_init(|| {
            if let Err(e) = runner::run("modprobe", ["-b", "-q", "zfs"]) {
                tracing::debug!("loading the zfs module: {e}");
            }
        });
    }
    dev.exists()
}

/// A zfs dataset name: `pool[/child…]`, each part of `[A-Za-z0-9_.:-]`, the pool's
/// starting with a letter (zfs's own rules, which also keep the name safe as an argument).
pub(super) fn check_dataset_name(name: &str) -> Result<(), String> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 200
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
    };
    let mut parts = name.split('/');
    let first = parts.next().unwrap_or_default();
    if !ok_part(first) || !first.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!(
            "{name:?} is not a zfs pool or dataset name (a letter first, then letters, digits, \
             '_', '.', ':' or '-')"
        ));
    }
    if name.len() > 240 || parts.any(|p| !ok_part(p) || p == "." || p == "..") {
        return Err(format!("{name:?} is not a zfs dataset name"));
    }
    Ok(())
}

pub(super) fn validate(config: &PoolConfig) -> Result<(), StorageError> {
    check_known_options(config, OPTIONS)?;
    let invalid = |key: &str, reason: String| StorageError::InvalidValue {
        key: key.into(),
        reason,
    };
    if let Some(s) = config.get("source").filter(|s| !s.is_empty()) {
        if s.starts_with('/') {
            if s.split('/').any(|c| c == "..") {
                return Err(invalid("source", "must be an absolute path".into()));
            }
        } else {
            check_dataset_name(s).map_err(|r| invalid("source", r))?;
        }
    }
    if let Some(n) = config.get("zfs.pool_name").filter(|s| !s.is_empty()) {
        check_dataset_name(n).map_err(|r| invalid("zfs.pool_name", r))?;
    }
    if let Some(s) = config.get("size").filter(|s| !s.is_empty()) {
        let bytes = parse_bytes(s).map_err(|r| invalid("size", r))?;
        if bytes < MIN_SIZE {
            return Err(invalid(
                "size",
                format!("a zfs pool needs at least {} MiB", MIN_SIZE >> 20),
            ));
        }
    }
    if let Some(v) = config.get("zfs.clone_copy") {
        // Copies are full `zfs send | zfs receive` streams, independent of their source:
        // what Incus does with zfs.clone_copy=false. Lightweight clones are not offered.
        if !super::super::is_false(v) {
            return Err(invalid(
                "zfs.clone_copy",
                "only \"false\" is supported: copies are full send/receive streams".into(),
            ));
        }
    }
    Ok(())
}

/// Where the pool's datasets live.
pub(super) enum Backing {
    /// A zpool of our own on `disks/<pool>.img`.
    Loop(PathBuf),
    /// A zpool of our own on a whole block device.
    Device(PathBuf),
    /// A dataset (or whole zpool) that exists outside cairnd: it is used, never destroyed.
    Dataset(String),
}

pub(super) fn backing(
    pool: &str,
    config: &PoolConfig,
    paths: &PoolPaths,
) -> Result<Backing, StorageError> {
    let source = config.get("source").filter(|s| !s.is_empty());
    let Some(source) = source else {
        return Ok(Backing::Loop(backing::default_loop_file(paths, pool)));
    };
    if !source.starts_with('/') {
        return Ok(Backing::Dataset(source.clone()));
    }
    let p = PathBuf::from(source);
    let md = backing::source_metadata(pool, source)?;
    if md.file_type().is_block_device() {
        Ok(Backing::Device(p))
    } else if md.is_file() && p.starts_with(&paths.disks) {
        Ok(Backing::Loop(p))
    } else {
        Err(StorageError::InvalidValue {
            key: "source".into(),
            reason: format!(
                "{source} is not a block device (a zfs pool's source is a device or an \
                 existing dataset)"
            ),
        })
    }
}

/// The top dataset of the pool: `zfs.pool_name`, the dataset named by `source`, or the
/// pool's name.
fn dataset(pool: &str, config: &PoolConfig, backing: &Backing) -> String {
    match backing {
        Backing::Dataset(d) => d.clone(),
        _ => config
            .get("zfs.pool_name")
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| pool.to_string()),
    }
}

fn not_available(pool: &str) -> StorageError {
    StorageError::Invalid(
        pool.to_string(),
        "the zfs kernel module is not loaded on this server (zfs is not available)".into(),
    )
}

fn zpool_create(pool: &str, zpool: &str, vdev: &Path, force: bool) -> Result<(), StorageError> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["create".as_ref()];
    if force {
        args.push("-f".as_ref());
    }
    for o in [
        "-o",
        "cachefile=none",
        "-m",
        "none",
        "-O",
        "compression=on",
        "-O",
        "atime=off",
        "-O",
        "xattr=sa",
        "-O",
        "acltype=posixacl",
    ] {
        args.push(o.as_ref());
    }
    args.push(zpool.as_ref());
    args.push(vdev.as_os_str());
    runner::run("zpool", &args).map(|_| ()).map_err(run_err(
        pool,
        format!("creating zpool {zpool} on {}", vdev.display()),
    ))
}

fn exists(dataset: &str) -> bool {
    runner::run("zfs", ["list", "-H", "-o", "name", dataset]).is_ok()
}

pub(super) fn create(
    pool: &str,
    config: &PoolConfig,
    paths: &PoolPaths,
) -> Result<PoolConfig, StorageError> {
    validate(config)?;
    if !available() {
        return Err(not_available(pool));
    }
    let mut out = config.clone();
    out.remove("source.wipe");
    let b = backing(pool, config, paths)?;
    let ds = dataset(pool, config, &b);
    match &b {
        Backing::Loop(file) => {
            if exists(&ds) {
                return Err(StorageError::InvalidValue {
                    key: "zfs.pool_name".into(),
                    reason: format!("a zfs pool or dataset named {ds} already exists"),
                });
            }
            let bytes = backing::loop_size(config, &paths.disks)?;
            backing::make_loop_file(pool, paths, file, bytes)?;
            if let Err(e) = zpool_create(pool, &ds, file, false) {
                let _ = fs::remove_file(file);
                return Err(e);
            }
            out.insert("source".into(), file.display().to_string());
            out.insert("size".into(), backing::format_size(bytes));
        }
        Backing::Device(dev) => {
            // A disk this pool's cairnd began to prepare and did not finish is taken again.
            let mut checked = config.clone();
            if disk::is_own_empty_label(pool, dev) {
                checked.insert("source.wipe".into(), "true".into());
            }
            let found = backing::check_device(pool, &checked, dev)?;
            if exists(&ds) {
                return Err(StorageError::InvalidValue {
                    key: "zfs.pool_name".into(),
                    reason: format!("a zfs pool named {ds} is already imported"),
                });
            }
            if let Some(held) = found {
                tracing::info!(pool, disk = %dev.display(), held, "erasing the disk");
            }
            // Held until the pool has the partition open (disk.rs says why).
            let locked = disk::lock(dev)
                .map_err(|e| StorageError::io(pool, format!("locking {}", dev.display()), e))?;
            let part = disk::prepare(pool, dev).map_err(run_err(
                pool,
                format!("partitioning {} for the zpool", dev.display()),
            ))?;
            if let Err(e) = zpool_create(pool, &ds, &part, true) {
                drop(locked);
                disk::erase(dev);
                return Err(e);
            }
            drop(locked);
        }
        Backing::Dataset(d) => {
            if out.get("size").is_some_and(|s| !s.is_empty()) {
                return Err(StorageError::InvalidValue {
                    key: "size".into(),
                    reason: "a pool on an existing dataset shares its zpool's space".into(),
                });
            }
            if exists(d) {
                let children = runner::run("zfs", ["list", "-H", "-o", "name", "-d", "1", d])
                    .map_err(run_err(pool, format!("listing {d}")))?;
                if children.lines().count() > 1 {
                    return Err(StorageError::InvalidValue {
                        key: "source".into(),
                        reason: format!("dataset {d} is not empty"),
                    });
                }
                runner::run("zfs", ["set", "mountpoint=none", d.as_str()])
                    .map_err(run_err(pool, format!("setting mountpoint of {d}")))?;
            } else {
                runner::run("zfs", ["create", "-p", "-o", "mountpoint=none", d.as_str()])
                    .map_err(run_err(pool, format!("creating dataset {d}")))?;
            }
        }
    }
    out.insert("zfs.pool_name".into(), ds.clone());
    // Opening lays out the datasets; a pool that cannot be opened is not created.
    if let Err(e) = open(pool, &out, paths).and_then(|p| p.space().map(|_| ())) {
        match &b {
            Backing::Loop(file) => {
                let _ = runner::run("zpool", ["destroy", "-f", ds.as_str()]);
                let _ = fs::remove_file(file);
            }
            Backing::Device(dev) => {
                let _ = runner::run("zpool", ["destroy", "-f", ds.as_str()]);
                disk::erase(dev);
            }
            Backing::Dataset(_) => {}
        }
        return Err(e);
    }
    Ok(out)
}

/// Imports the zpool holding `ds` from `vdev` when it is not imported yet.
fn import(pool: &str, ds: &str, vdev: &Path) -> Result<(), StorageError> {
    let zpool = ds.split('/').next().unwrap_or(ds);
    if runner::run("zpool", ["list", "-H", "-o", "name", zpool]).is_ok() {
        return Ok(());
    }
    runner::run(
        "zpool",
        [
            "import".as_ref(),
            "-o".as_ref(),
            "cachefile=none".as_ref(),
            "-d".as_ref(),
            vdev.as_os_str(),
            zpool.as_ref(),
        ],
    )
    .map(|_| ())
    .map_err(run_err(
        pool,
        format!("importing zpool {zpool} from {}", vdev.display()),
    ))
}

pub(super) fn open(
    pool: &str,
    config: &PoolConfig,
    paths: &PoolPaths,
) -> Result<Box<dyn StorageDriver>, StorageError> {
    if !available() {
        return Err(not_available(pool));
    }
    let b = backing(pool, config, paths)?;
    let ds = dataset(pool, config, &b);
    let (owned_zpool, loop_file) = match &b {
        Backing::Loop(file) => {
            import(pool, &ds, file)?;
            (true, Some(file.clone()))
        }
        Backing::Device(dev) => {
            // The vdev is the disk's first partition (disk.rs); a pool made on the whole
            // disk (by zpool itself, or before this layout) is searched for among all
            // devices.
            let vdev = disk::partition(dev, 1).unwrap_or_else(|| dev.clone());
            import(pool, &ds, &vdev).or_else(|_| import(pool, &ds, Path::new("/dev")))?;
            (true, None)
        }
        Backing::Dataset(_) => (false, None),
    };
    let mount = paths.mount.clone();
    fs::create_dir_all(&mount)
        .and_then(|_| fs::set_permissions(&mount, fs::Permissions::from_mode(0o711)))
        .map_err(|e| StorageError::io(pool, "creating the mount point".into(), e))?;
    let p = ZfsPool {
        name: pool.to_string(),
        dataset: ds,
        mount,
        owned_zpool,
        loop_file,
        images: Default::default(),
    };
    for (sub, mounted) in LAYOUT {
        let child = format!("{}/{sub}", p.dataset);
        let mountpoint = if *mounted {
            format!("mountpoint={}", p.mount.join(sub).display())
        } else {
            "mountpoint=none".to_string()
        };
        if !exists(&child) {
            runner::run("zfs", ["create", "-o", mountpoint.as_str(), child.as_str()])
                .map_err(run_err(pool, format!("creating dataset {child}")))?;
        }
        if *mounted {
            let d = p.mount.join(sub);
            // An imported pool mounts its datasets; one made by hand may not be.
            if !super::super::mounts::is_mount_point(&d).unwrap_or(false) {
                runner::run("zfs", ["mount", child.as_str()])
                    .map_err(run_err(pool, format!("mounting {child}")))?;
            }
            // Unprivileged containers must traverse down to their rootfs: x for others.
            fs::set_permissions(&d, fs::Permissions::from_mode(0o711))
                .map_err(|e| p.io(e, format!("setting mode of {}", d.display())))?;
        }
    }
    // Images whose last instance went while the daemon was down.
    p.collect_deleted();
    Ok(Box::new(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> PoolConfig {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_are_checked() {
        validate(&cfg(&[("size", "1GiB"), ("zfs.pool_name", "tank")])).unwrap();
        validate(&cfg(&[("source", "tank/cairn")])).unwrap();
        validate(&cfg(&[("source", "/dev/vdb"), ("zfs.clone_copy", "false")])).unwrap();
        for bad in [
            cfg(&[("bogus", "1")]),
            cfg(&[("size", "12 apples")]),
            cfg(&[("size", "1MiB")]),
            cfg(&[("zfs.pool_name", "9tank")]),
            cfg(&[("zfs.pool_name", "tank/../x")]),
            cfg(&[("source", "tank; rm -rf /")]),
            cfg(&[("source", "/dev/../etc")]),
            cfg(&[("zfs.clone_copy", "true")]),
        ] {
            let e = validate(&bad).unwrap_err();
            assert!(e.is_bad_input(), "{e}");
        }
    }

    #[test]
    fn dataset_names_follow_zfs_rules() {
        assert!(check_dataset_name("tank").is_ok());
        assert!(check_dataset_name("tank/a_b.c:d-e").is_ok());
        assert!(check_dataset_name("-tank").is_err());
        assert!(check_dataset_name("tank//x").is_err());
        assert!(check_dataset_name("tank/x y").is_err());
        assert!(check_dataset_name("").is_err());
    }

    #[test]
    fn the_dataset_comes_from_the_source_or_the_pool_name() {
        let paths = PoolPaths::new(Path::new("/nonexistent"), "p");
        let c = cfg(&[("source", "tank/cairn")]);
        let b = backing("p", &c, &paths).unwrap();
        assert_eq!(dataset("p", &c, &b), "tank/cairn");
        let c = cfg(&[("zfs.pool_name", "fast")]);
        let b = backing("p", &c, &paths).unwrap();
        assert!(matches!(b, Backing::Loop(_)));
        assert_eq!(dataset("p", &c, &b), "fast");
        assert_eq!(dataset("p", &PoolConfig::new(), &b), "p");
    }
}
