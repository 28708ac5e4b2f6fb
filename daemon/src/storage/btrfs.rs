//! The `btrfs` driver: every volume is a subvolume, snapshots and copies are btrfs
//! snapshots, so an instance from an image and a snapshot of an instance copy no data.
//!
//! The pool is a btrfs filesystem on a loop file (`disks/<pool>.img`, the default), on a
//! block device (`source=/dev/…`), or a directory already on btrfs (`source=/path`). Layout
//! under its root, as Incus lays it out: `images/<fp>`, `containers/<name>`,
//! `containers-snapshots/<name>/<snapshot>`.
//!
//! Unprivileged containers: image subvolumes stay owned by root; the first instance of an
//! image for an id map makes `images/<fp>.shift-<uid>-<gid>`, a snapshot of the image
//! re-owned once, and every later instance with that map is a snapshot of it. Launch cost
//! therefore does not grow with the image's size (only the first launch per map pays).
//!
//! Snapshots, the hot path of launch, copy and snapshot, are one ioctl
//! (`BTRFS_IOC_SNAP_CREATE_V2`), which saves a process per launch. Everything else goes
//! through the `btrfs` CLI via the runner: those operations are rare, their errors are
//! what an operator would see running them by hand, and btrfs-progs is the interface the
//! kernel developers keep stable. (There is no maintained Rust btrfs library to prefer.)

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::mounts;
use super::size::parse_bytes;
use super::tree::{self, Reshift};
use super::{
    check_known_options, check_source, is_true, DriverKind, PoolConfig, PoolPaths, Space,
    StorageDriver, StorageError,
};
use crate::instance::idmap::IdShift;
use crate::runner;

pub const KIND: DriverKind = DriverKind {
    name: "btrfs",
    validate,
    create,
    open,
};

const OPTIONS: &[&str] = &["source", "size", "btrfs.mount_options", "source.wipe"];
const DEFAULT_MOUNT_OPTIONS: &str = "user_subvol_rm_allowed";
const GIB: u64 = 1 << 30;
/// mkfs.btrfs refuses smaller devices (its minimum is about 114 MiB).
const MIN_SIZE: u64 = 256 << 20;

fn validate(config: &PoolConfig) -> Result<(), StorageError> {
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
        return Ok(Backing::Loop(paths.disks.join(format!("{pool}.img"))));
    };
    let p = PathBuf::from(source);
    match fs::metadata(&p) {
        Ok(md) if md.file_type().is_block_device() => Ok(Backing::Device(p)),
        Ok(md) if md.is_dir() => Ok(Backing::Directory(p)),
        // A loop file recorded by an earlier create.
        Ok(md) if md.is_file() && p.starts_with(&paths.disks) => Ok(Backing::Loop(p)),
        Ok(_) => Err(StorageError::InvalidValue {
            key: "source".into(),
            reason: format!("{source} is neither a block device nor a directory"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::InvalidValue {
            key: "source".into(),
            reason: format!("{source} does not exist"),
        }),
        Err(e) => Err(StorageError::io(pool, format!("reading {source}"), e)),
    }
}

fn run_err(pool: &str, what: impl Into<String>) -> impl FnOnce(runner::RunError) -> StorageError {
    let pool = pool.to_string();
    let what = what.into();
    move |source| StorageError::Run {
        pool,
        what,
        source: Box::new(source),
    }
}

/// Incus's default loop size: a fifth of the free space, within 5 GiB..30 GiB.
fn default_loop_size(disks: &Path) -> u64 {
    let free = nix::sys::statvfs::statvfs(disks)
        .map(|st| st.blocks_available() * st.fragment_size())
        .unwrap_or(0);
    (free / 5 / GIB).clamp(5, 30) * GIB
}

fn create(pool: &str, config: &PoolConfig, paths: &PoolPaths) -> Result<PoolConfig, StorageError> {
    validate(config)?;
    let mut out = config.clone();
    out.entry("btrfs.mount_options".into())
        .or_insert_with(|| DEFAULT_MOUNT_OPTIONS.into());
    out.remove("source.wipe");
    match backing(pool, config, paths)? {
        Backing::Loop(file) => {
            fs::create_dir_all(&paths.disks)
                .map_err(|e| StorageError::io(pool, "creating the disks dir".into(), e))?;
            fs::set_permissions(&paths.disks, fs::Permissions::from_mode(0o700))
                .map_err(|e| StorageError::io(pool, "setting the disks dir mode".into(), e))?;
            let bytes = match config.get("size").filter(|s| !s.is_empty()) {
                Some(s) => parse_bytes(s).map_err(|reason| StorageError::InvalidValue {
                    key: "size".into(),
                    reason,
                })?,
                None => default_loop_size(&paths.disks),
            };
            // create_new: never format over a file something else made.
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)
                .map_err(|e| StorageError::io(pool, format!("creating {}", file.display()), e))?;
            let made = f
                .set_len(bytes)
                .and_then(|_| fs::set_permissions(&file, fs::Permissions::from_mode(0o600)));
            drop(f);
            let made = made
                .map_err(|e| StorageError::io(pool, format!("sizing {}", file.display()), e))
                .and_then(|_| mkfs(pool, &file, false));
            if let Err(e) = made {
                let _ = fs::remove_file(&file);
                return Err(e);
            }
            out.insert("source".into(), file.display().to_string());
            out.insert("size".into(), format_size(bytes));
        }
        Backing::Device(dev) => {
            if out.contains_key("size") {
                return Err(StorageError::InvalidValue {
                    key: "size".into(),
                    reason: "a pool on a block device takes the whole device".into(),
                });
            }
            if let Some(at) = mounts::mounted_at(&dev)
                .map_err(|e| StorageError::io(pool, format!("reading {}", dev.display()), e))?
            {
                return Err(StorageError::InvalidValue {
                    key: "source".into(),
                    reason: format!("{} is mounted on {}", dev.display(), at.display()),
                });
            }
            let found = mounts::probe_signature(&dev)
                .map_err(run_err(pool, format!("probing {}", dev.display())))?;
            let wipe = is_true(config.get("source.wipe"));
            if let (Some(fs_type), false) = (&found, wipe) {
                return Err(StorageError::InvalidValue {
                    key: "source".into(),
                    reason: format!(
                        "{} already holds a {fs_type} filesystem (set source.wipe=true to \
                         erase it)",
                        dev.display()
                    ),
                });
            }
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

fn format_size(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{}GiB", bytes / GIB)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else {
        bytes.to_string()
    }
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

fn open(
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
    for sub in ["", "images", "containers", "containers-snapshots"] {
        let d = p.root.join(sub);
        fs::create_dir_all(&d).map_err(|e| p.io(e, format!("creating {}", d.display())))?;
        // Unprivileged containers must traverse down to their rootfs: x for others, no r.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o711))
            .map_err(|e| p.io(e, format!("setting mode of {}", d.display())))?;
    }
    Ok(Box::new(p))
}

pub struct BtrfsPool {
    name: String,
    root: PathBuf,
    loop_file: Option<PathBuf>,
    /// The pool owns a mount (loop file or device) rather than a directory of another fs.
    mounted: bool,
    /// Held while spare clones are made or images deleted, so a spare never outlives its
    /// image.
    spares: std::sync::Arc<std::sync::Mutex<()>>,
}

impl BtrfsPool {
    fn io(&self, source: std::io::Error, what: String) -> StorageError {
        StorageError::io(&self.name, what, source)
    }

    fn btrfs(&self, what: String, args: &[&std::ffi::OsStr]) -> Result<String, StorageError> {
        runner::run("btrfs", args).map_err(|source| {
            // btrfs-progs reports a full filesystem as text; keep the error recognisable.
            if let runner::RunError::Failed { stderr, .. } = &source {
                if stderr.contains("No space left") || stderr.contains("Disk quota exceeded") {
                    return StorageError::Full {
                        pool: self.name.clone(),
                        what: what.clone(),
                    };
                }
            }
            StorageError::Run {
                pool: self.name.clone(),
                what,
                source: Box::new(source),
            }
        })
    }

    fn subvolume_create(&self, p: &Path) -> Result<(), StorageError> {
        self.btrfs(
            format!("creating subvolume {}", p.display()),
            &["subvolume".as_ref(), "create".as_ref(), p.as_os_str()],
        )
        .map(|_| ())
    }

    fn snapshot(&self, src: &Path, dst: &Path, readonly: bool) -> Result<(), StorageError> {
        snapshot_ioctl(src, dst, readonly).map_err(|e| {
            self.io(
                e,
                format!("snapshotting {} as {}", src.display(), dst.display()),
            )
        })
    }

    fn set_readonly(&self, p: &Path, ro: bool) -> Result<(), StorageError> {
        self.btrfs(
            format!("making {} read-only", p.display()),
            &[
                "property".as_ref(),
                "set".as_ref(),
                "-ts".as_ref(),
                p.as_os_str(),
                "ro".as_ref(),
                if ro { "true" } else { "false" }.as_ref(),
            ],
        )
        .map(|_| ())
    }

    /// Deletes a subvolume and the subvolumes a container made inside it (a subvolume
    /// with children cannot be deleted). A path that does not exist is already gone.
    fn subvolume_delete(&self, p: &Path) -> Result<(), StorageError> {
        let md = match fs::symlink_metadata(p) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io(e, format!("reading {}", p.display()))),
        };
        if !is_subvolume(&md) {
            return tree::remove(p).map_err(|e| self.io(e, format!("removing {}", p.display())));
        }
        // A read-only snapshot's nested subvolumes cannot be unlinked; the snapshot itself
        // holds none (btrfs snapshots do not recurse), so only writable ones are searched.
        let ro = self
            .btrfs(
                format!("reading properties of {}", p.display()),
                &[
                    "property".as_ref(),
                    "get".as_ref(),
                    "-ts".as_ref(),
                    p.as_os_str(),
                    "ro".as_ref(),
                ],
            )?
            .contains("ro=true");
        if !ro {
            let mut nested = Vec::new();
            nested_subvolumes(p, md.dev(), &mut nested)
                .map_err(|e| self.io(e, format!("listing {}", p.display())))?;
            for n in nested.iter().rev() {
                self.subvolume_delete(n)?;
            }
        }
        self.btrfs(
            format!("deleting subvolume {}", p.display()),
            &["subvolume".as_ref(), "delete".as_ref(), p.as_os_str()],
        )
        .map(|_| ())
    }

    fn image_path(&self, fp: &str) -> PathBuf {
        self.root.join("images").join(fp)
    }

    fn shifted_image_path(&self, fp: &str, shift: IdShift) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{fp}.shift-{}-{}", shift.uid_base, shift.gid_base))
    }

    fn snapshot_path(&self, name: &str, snap: &str) -> PathBuf {
        self.snapshots_path(name).join(snap)
    }

    fn snapshots_dir(&self, name: &str) -> Result<PathBuf, StorageError> {
        let parent = self.snapshots_path(name);
        fs::create_dir_all(&parent).map_err(|e| self.io(e, "creating snapshot dir".into()))?;
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o700))
            .map_err(|e| self.io(e, "setting snapshot dir mode".into()))?;
        Ok(parent)
    }

    /// The image's subvolume re-owned for `shift`, made once.
    fn shifted_image(&self, fp: &str, shift: IdShift) -> Result<PathBuf, StorageError> {
        let src = self.image_path(fp);
        if shift.is_identity() {
            return Ok(src);
        }
        let dst = self.shifted_image_path(fp, shift);
        if dst.join("rootfs").is_dir() {
            return Ok(dst);
        }
        let staging = self.root.join("images").join(format!(
            ".{fp}.shift-{}-{}.{}",
            shift.uid_base,
            shift.gid_base,
            std::process::id()
        ));
        self.subvolume_delete(&staging)?;
        self.snapshot(&src, &staging, false)?;
        let reshift = Reshift {
            from_uid: 0,
            from_gid: 0,
            to_uid: shift.uid_base,
            to_gid: shift.gid_base,
        };
        let made = tree::reshift(&staging.join("rootfs"), reshift)
            .map_err(|e| self.io(e, format!("re-owning image {fp}")))
            .and_then(|_| self.set_readonly(&staging, true));
        if let Err(e) = made {
            let _ = self.subvolume_delete(&staging);
            return Err(e);
        }
        if fs::rename(&staging, &dst).is_err() {
            // Another launch made it first: theirs is as good as ours.
            let _ = self.subvolume_delete(&staging);
            if !dst.join("rootfs").is_dir() {
                return Err(StorageError::Invalid(
                    self.name.clone(),
                    format!("could not install the shifted copy of image {fp}"),
                ));
            }
        }
        Ok(dst)
    }

    /// Where the next instance of image `fp` with id map `shift` waits, already cloned.
    fn spare_path(&self, fp: &str, shift: IdShift) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{fp}.spare-{}-{}", shift.uid_base, shift.gid_base))
    }

    /// Clones `src` as `spare` in the background: a btrfs snapshot costs a transaction
    /// commit (tens of ms on a loop file), which the next launch then does not wait for.
    fn make_spare(&self, src: PathBuf, spare: PathBuf) {
        let lock = self.spares.clone();
        let pool = self.name.clone();
        std::thread::spawn(move || {
            let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
            if spare.exists() || !src.join("rootfs").is_dir() {
                return;
            }
            let made = snapshot_ioctl(&src, &spare, false)
                .and_then(|_| fs::set_permissions(&spare, fs::Permissions::from_mode(0o711)));
            if let Err(e) = made {
                tracing::warn!(pool = %pool, "making a spare clone of {}: {e}", src.display());
            }
        });
    }

    /// The subvolume's qgroup id (`0/<subvolume id>`).
    fn qgroup(&self, p: &Path) -> Result<String, StorageError> {
        let out = self.btrfs(
            format!("reading subvolume {}", p.display()),
            &["subvolume".as_ref(), "show".as_ref(), p.as_os_str()],
        )?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Subvolume ID:"))
            .map(|id| format!("0/{}", id.trim()))
            .ok_or_else(|| {
                StorageError::Invalid(
                    self.name.clone(),
                    format!("btrfs subvolume show {} names no id", p.display()),
                )
            })
    }
}

/// `struct btrfs_ioctl_vol_args_v2` (linux/btrfs.h): 4096 bytes.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

nix::ioctl_write_ptr!(btrfs_snap_create_v2, 0x94, 23, VolArgsV2);

/// Snapshots subvolume `src` as `dst` (whose parent must exist on the same filesystem).
fn snapshot_ioctl(src: &Path, dst: &Path, readonly: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    let (Some(parent), Some(name)) = (dst.parent(), dst.file_name()) else {
        return Err(invalid("a snapshot needs a parent directory and a name"));
    };
    let name = name.as_bytes();
    if name.len() >= 4040 || name.contains(&0) {
        return Err(invalid("snapshot name too long or holding a NUL"));
    }
    let dir = |p: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(p)
    };
    let src_fd = dir(src)?;
    let parent_fd = dir(parent)?;
    let mut args = VolArgsV2 {
        fd: src_fd.as_raw_fd() as i64,
        transid: 0,
        flags: if readonly { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; 4040],
    };
    args.name[..name.len()].copy_from_slice(name);
    // SAFETY: args is a valid, fully initialised vol_args_v2 that outlives the call; both
    // fds are open directories.
    unsafe { btrfs_snap_create_v2(parent_fd.as_raw_fd(), &args) }
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// A btrfs subvolume's root directory has inode 256.
fn is_subvolume(md: &fs::Metadata) -> bool {
    md.is_dir() && md.ino() == 256
}

/// Subvolumes below `dir`, parents before children. A nested subvolume has its own st_dev.
fn nested_subvolumes(dir: &Path, dev: u64, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let md = entry.metadata()?;
        if !md.is_dir() {
            continue;
        }
        let p = entry.path();
        if md.dev() != dev && is_subvolume(&md) {
            out.push(p.clone());
            nested_subvolumes(&p, md.dev(), out)?;
        } else if md.dev() == dev {
            nested_subvolumes(&p, dev, out)?;
        }
    }
    Ok(())
}

impl StorageDriver for BtrfsPool {
    fn driver_name(&self) -> &'static str {
        "btrfs"
    }
    fn pool_name(&self) -> &str {
        &self.name
    }
    fn source(&self) -> &Path {
        &self.root
    }

    fn space(&self) -> Result<Space, StorageError> {
        // statvfs on btrfs counts what the allocator can still hand out, which is what a
        // write runs into.
        super::statvfs_space(&self.root).map_err(|e| self.io(e, "reading its usage".into()))
    }

    fn destroy(&self) -> Result<(), StorageError> {
        let _held = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        for sub in ["images", "containers", "containers-snapshots"] {
            let d = self.root.join(sub);
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if sub == "containers-snapshots" {
                    if let Ok(snaps) = fs::read_dir(&p) {
                        for s in snaps.flatten() {
                            self.subvolume_delete(&s.path())?;
                        }
                    }
                    tree::remove(&p).map_err(|e| self.io(e, "removing snapshot dir".into()))?;
                } else {
                    self.subvolume_delete(&p)?;
                }
            }
            tree::remove(&d).map_err(|e| self.io(e, format!("removing {}", d.display())))?;
        }
        if self.mounted {
            runner::run("umount", [self.root.as_os_str()])
                .map_err(run_err(&self.name, "unmounting the pool"))?;
            let _ = fs::remove_dir(&self.root);
        }
        if let Some(f) = &self.loop_file {
            fs::remove_file(f).map_err(|e| self.io(e, format!("removing {}", f.display())))?;
        }
        Ok(())
    }

    fn supports_quotas(&self) -> bool {
        true
    }

    fn set_instance_quota(&self, name: &str, bytes: Option<u64>) -> Result<(), StorageError> {
        let vol = self.instance_path(name);
        if bytes.is_some() {
            // Quotas cost on every write, so they are switched on with the first limit, as
            // Incus does. Enabling twice is harmless.
            self.btrfs(
                "enabling quotas".into(),
                &["quota".as_ref(), "enable".as_ref(), self.root.as_os_str()],
            )?;
        } else {
            // Nothing to lift on a pool where no limit was ever set (quotas off).
            let status = self.btrfs(
                "reading quota status".into(),
                &["qgroup".as_ref(), "show".as_ref(), self.root.as_os_str()],
            );
            if status.is_err() {
                return Ok(());
            }
        }
        let qgroup = self.qgroup(&vol)?;
        let limit = bytes.map_or("none".to_string(), |b| b.to_string());
        self.btrfs(
            format!("limiting {name} to {limit}"),
            &[
                "qgroup".as_ref(),
                "limit".as_ref(),
                limit.as_ref(),
                qgroup.as_ref(),
                self.root.as_os_str(),
            ],
        )
        .map(|_| ())
    }

    fn has_image(&self, fp: &str) -> bool {
        self.image_path(fp).join("rootfs").is_dir()
    }

    fn create_image(
        &self,
        fp: &str,
        fill: &mut dyn FnMut(&Path) -> Result<(), String>,
    ) -> Result<(), StorageError> {
        let dst = self.image_path(fp);
        let tmp = self.root.join("images").join(format!(".{fp}.tmp"));
        self.subvolume_delete(&tmp)?;
        self.subvolume_create(&tmp)?;
        if let Err(e) = fill(&tmp) {
            let _ = self.subvolume_delete(&tmp);
            return Err(super::fill_error(&self.name, fp, e));
        }
        let installed = self
            .set_readonly(&tmp, true)
            .and_then(|_| self.delete_image(fp))
            .and_then(|_| {
                fs::rename(&tmp, &dst).map_err(|e| self.io(e, format!("installing image {fp}")))
            });
        if let Err(e) = installed {
            let _ = self.subvolume_delete(&tmp);
            return Err(e);
        }
        Ok(())
    }

    fn delete_image(&self, fp: &str) -> Result<(), StorageError> {
        let _held = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.root.join("images");
        let entries = fs::read_dir(&dir).map_err(|e| self.io(e, "listing images".into()))?;
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(&format!("{fp}.shift-")) || n.starts_with(&format!("{fp}.spare-")) {
                self.subvolume_delete(&e.path())?;
            }
        }
        self.subvolume_delete(&self.image_path(fp))
    }

    fn create_instance_from_image(
        &self,
        fp: &str,
        name: &str,
        shift: IdShift,
    ) -> Result<(), StorageError> {
        let dst = self.instance_path(name);
        if dst.exists() {
            return Err(StorageError::Invalid(
                self.name.clone(),
                format!("volume for instance {name} already exists"),
            ));
        }
        let src = self.shifted_image(fp, shift)?;
        let spare = self.spare_path(fp, shift);
        // A spare clone made after the last launch: a rename, no transaction commit. Two
        // launches racing for it: one renames it, the other snapshots.
        if fs::rename(&spare, &dst).is_err() {
            self.snapshot(&src, &dst, false)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(0o711))
                .map_err(|e| self.io(e, format!("setting mode of {}", dst.display())))?;
        }
        self.make_spare(src, spare);
        Ok(())
    }

    fn instance_path(&self, name: &str) -> PathBuf {
        self.root.join("containers").join(name)
    }

    fn snapshots_path(&self, name: &str) -> PathBuf {
        self.root.join("containers-snapshots").join(name)
    }

    fn delete_instance(&self, name: &str) -> Result<(), StorageError> {
        let snaps = self.snapshots_path(name);
        if let Ok(entries) = fs::read_dir(&snaps) {
            for e in entries.flatten() {
                self.subvolume_delete(&e.path())?;
            }
        }
        tree::remove(&snaps).map_err(|e| self.io(e, format!("removing snapshots of {name}")))?;
        self.subvolume_delete(&self.instance_path(name))
    }

    fn rename_instance(&self, from: &str, to: &str) -> Result<(), StorageError> {
        fs::rename(self.instance_path(from), self.instance_path(to))
            .map_err(|e| self.io(e, format!("renaming instance {from} to {to}")))?;
        let snaps = self.snapshots_path(from);
        if snaps.exists() {
            fs::rename(&snaps, self.snapshots_path(to))
                .map_err(|e| self.io(e, format!("renaming snapshots of {from}")))?;
        }
        Ok(())
    }

    fn reshift_instance(&self, name: &str, from: IdShift, to: IdShift) -> Result<(), StorageError> {
        let shift = Reshift {
            from_uid: from.uid_base,
            from_gid: from.gid_base,
            to_uid: to.uid_base,
            to_gid: to.gid_base,
        };
        tree::reshift(&self.rootfs_path(name), shift)
            .map_err(|e| self.io(e, format!("re-owning instance {name}")))
    }

    fn create_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        self.snapshots_dir(name)?;
        self.snapshot(
            &self.instance_path(name),
            &self.snapshot_path(name, snap),
            true,
        )
    }

    fn restore_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        let live = self.instance_path(name);
        let containers = self.root.join("containers");
        let staging = containers.join(format!(".{name}.restore"));
        let old = containers.join(format!(".{name}.old"));
        self.subvolume_delete(&staging)?;
        self.subvolume_delete(&old)?;
        self.snapshot(&self.snapshot_path(name, snap), &staging, false)?;
        fs::rename(&live, &old)
            .map_err(|e| self.io(e, "moving the current volume aside".into()))?;
        if let Err(e) = fs::rename(&staging, &live) {
            let _ = fs::rename(&old, &live);
            return Err(self.io(e, "installing the restored volume".into()));
        }
        self.subvolume_delete(&old)
    }

    fn delete_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        self.subvolume_delete(&self.snapshot_path(name, snap))
    }

    fn rename_snapshot(&self, name: &str, from: &str, to: &str) -> Result<(), StorageError> {
        fs::rename(self.snapshot_path(name, from), self.snapshot_path(name, to))
            .map_err(|e| self.io(e, format!("renaming snapshot {name}/{from}")))
    }

    fn copy_instance(
        &self,
        from: &str,
        snapshot: Option<&str>,
        to: &str,
    ) -> Result<(), StorageError> {
        let src = match snapshot {
            Some(s) => self.snapshot_path(from, s),
            None => self.instance_path(from),
        };
        let dst = self.instance_path(to);
        if dst.exists() {
            return Err(StorageError::Invalid(
                self.name.clone(),
                format!("volume for instance {to} already exists"),
            ));
        }
        self.snapshot(&src, &dst, false)
    }

    fn copy_snapshot(&self, from: &str, snapshot: &str, to: &str) -> Result<(), StorageError> {
        self.snapshots_dir(to)?;
        self.snapshot(
            &self.snapshot_path(from, snapshot),
            &self.snapshot_path(to, snapshot),
            true,
        )
    }

    fn instance_usage(&self, name: &str) -> u64 {
        tree::usage(&self.instance_path(name))
    }
}
