//! The `btrfs` driver: every volume is a subvolume, snapshots and copies are btrfs
//! snapshots, so an instance from an image and a snapshot of an instance copy no data.
//!
//! The pool is a btrfs filesystem on a loop file (`disks/<pool>.img`, the default), on a
//! block device (`source=/dev/…`), or a directory already on btrfs (`source=/path`). Layout
//! under its root, as Incus lays it out: `images/<fp>`, `containers/<name>`,
//! `containers-snapshots/<name>/<snapshot>`, `custom/<volume>`.
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

mod send;
mod setup;
mod subvolume;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::backing::run_err;
use super::tree::{self, Reshift};
use super::{Space, StorageDriver, StorageError};
use crate::instance::idmap::IdShift;
use crate::runner;
use subvolume::{is_subvolume, nested_subvolumes, snapshot_ioctl};

pub const KIND: super::DriverKind = super::DriverKind {
    name: "btrfs",
    validate: setup::validate,
    create: setup::create,
    open: setup::open,
};

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
        let reshift = Reshift::from_root(shift);
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

    /// Limits a subvolume (`name` says which, for errors) to `bytes`, or lifts the limit.
    fn set_quota(&self, vol: &Path, name: &str, bytes: Option<u64>) -> Result<(), StorageError> {
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
        let qgroup = self.qgroup(vol)?;
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

    /// Replaces subvolume `live` with a writable snapshot of `snap`, through `staging`, the
    /// old one set aside as `old` until the new one is in place.
    fn swap_in(
        &self,
        snap: &Path,
        live: &Path,
        staging: &Path,
        old: &Path,
    ) -> Result<(), StorageError> {
        self.subvolume_delete(staging)?;
        self.subvolume_delete(old)?;
        self.snapshot(snap, staging, false)?;
        fs::rename(live, old).map_err(|e| self.io(e, "moving the current volume aside".into()))?;
        if let Err(e) = fs::rename(staging, live) {
            let _ = fs::rename(old, live);
            return Err(self.io(e, "installing the restored volume".into()));
        }
        self.subvolume_delete(old)
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
        for sub in [
            "images",
            "containers",
            "containers-snapshots",
            "custom",
            "custom-snapshots",
        ] {
            let d = self.root.join(sub);
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if sub.ends_with("-snapshots") {
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

    fn grow(&self, bytes: u64) -> Result<(), StorageError> {
        let Some(file) = &self.loop_file else {
            return Err(StorageError::NotSupported {
                pool: self.name.clone(),
                driver: "btrfs",
                what: "changing the size of a pool on a device or directory".into(),
            });
        };
        super::backing::grow_loop_file(&self.name, file, bytes)?;
        // The loop device learns the file's new size, then btrfs takes it.
        let dev = runner::run("losetup", ["-j".as_ref(), file.as_os_str()])
            .map_err(run_err(&self.name, "finding the pool's loop device"))?;
        let dev = dev.split(':').next().unwrap_or_default().trim().to_string();
        if dev.is_empty() {
            return Err(StorageError::Invalid(
                self.name.clone(),
                format!("no loop device backs {}", file.display()),
            ));
        }
        runner::run("losetup", ["-c", dev.as_str()])
            .map_err(run_err(&self.name, format!("refreshing the size of {dev}")))?;
        self.btrfs(
            "growing the filesystem".into(),
            &[
                "filesystem".as_ref(),
                "resize".as_ref(),
                "max".as_ref(),
                self.root.as_os_str(),
            ],
        )
        .map(|_| ())
    }

    fn supports_quotas(&self) -> bool {
        true
    }

    fn set_instance_quota(&self, name: &str, bytes: Option<u64>) -> Result<(), StorageError> {
        self.set_quota(&self.instance_path(name), name, bytes)
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

    fn create_empty_instance(&self, name: &str) -> Result<(), StorageError> {
        let p = self.instance_path(name);
        self.subvolume_create(&p)?;
        super::new_volume_root(&self.name, &p)
    }

    fn send_instance(&self, name: &str, out: &mut dyn std::io::Write) -> Result<(), StorageError> {
        self.send_stream(name, out)
    }

    fn receive_instance(
        &self,
        name: &str,
        input: &mut dyn std::io::Read,
    ) -> Result<(), StorageError> {
        self.receive_stream(name, input)
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

    fn create_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        self.snapshots_dir(name)?;
        self.snapshot(
            &self.instance_path(name),
            &self.snapshot_path(name, snap),
            true,
        )
    }

    fn restore_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        let containers = self.root.join("containers");
        self.swap_in(
            &self.snapshot_path(name, snap),
            &self.instance_path(name),
            &containers.join(format!(".{name}.restore")),
            &containers.join(format!(".{name}.old")),
        )
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

    fn create_volume(&self, name: &str) -> Result<(), StorageError> {
        let p = self.volume_path(name);
        self.subvolume_create(&p)?;
        super::new_volume_root(&self.name, &p)
    }

    fn delete_volume(&self, name: &str) -> Result<(), StorageError> {
        let snaps = self.root.join("custom-snapshots").join(name);
        if let Ok(entries) = fs::read_dir(&snaps) {
            for e in entries.flatten() {
                self.subvolume_delete(&e.path())?;
            }
        }
        tree::remove(&snaps).map_err(|e| self.io(e, format!("removing snapshots of {name}")))?;
        self.subvolume_delete(&self.volume_path(name))
    }

    fn create_volume_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        super::volume_snapshots_dir(self, name)?;
        self.snapshot(
            &self.volume_path(name),
            &self.volume_snapshot_path(name, snap),
            true,
        )
    }

    fn delete_volume_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        self.subvolume_delete(&self.volume_snapshot_path(name, snap))
    }

    fn restore_volume_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        let custom = self.root.join("custom");
        self.swap_in(
            &self.volume_snapshot_path(name, snap),
            &self.volume_path(name),
            &custom.join(format!(".{name}.restore")),
            &custom.join(format!(".{name}.old")),
        )
    }

    fn copy_volume_snapshot(&self, from: &str, snap: &str, to: &str) -> Result<(), StorageError> {
        super::volume_snapshots_dir(self, to)?;
        self.snapshot(
            &self.volume_snapshot_path(from, snap),
            &self.volume_snapshot_path(to, snap),
            true,
        )
    }

    fn copy_volume(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.snapshot(&self.volume_path(from), &self.volume_path(to), false)
    }

    fn set_volume_quota(&self, name: &str, bytes: Option<u64>) -> Result<(), StorageError> {
        self.set_quota(&self.volume_path(name), name, bytes)
    }
}
