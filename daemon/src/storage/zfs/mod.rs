//! The `zfs` driver: every volume is a dataset, an instance is a clone of its image's
//! `@readonly` snapshot, snapshots are zfs snapshots and copies are `zfs send | zfs
//! receive` streams, so a launch and a snapshot copy no data.
//!
//! Layout under the pool's top dataset (`zfs.pool_name`), as Incus lays it out:
//! `images/<fp>` (+ `@readonly`), `containers/<name>` (+ `@snapshot-<s>`),
//! `custom/<volume>` (+ `@snapshot-<s>`), and `deleted/images/…`, where an image deleted
//! while instances are still clones of it waits, unmounted, until its last clone goes.
//! Each mounted layout dataset has its mountpoint under `storage-pools/<pool>/`, and the
//! volumes inherit it, so `containers/c1` is mounted at `storage-pools/<pool>/containers/c1`.
//!
//! Unprivileged containers: as on btrfs, the first instance of an image for an id map makes
//! `images/<fp>.shift-<uid>-<gid>`, a clone of the image re-owned once and snapshotted, and
//! every later instance with that map is a clone of that. Launch cost does not grow with
//! the image's size.
//!
//! Everything goes through the `zfs` and `zpool` CLIs via the runner, not libzfs: libzfs has
//! no stable ABI (it changes between OpenZFS releases and must match the kernel module),
//! while the CLI is the interface OpenZFS keeps stable and its errors are what an operator
//! would see running the command by hand. A launch costs one `zfs clone`.

mod disk;
mod send;
mod setup;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::tree::{self, Reshift};
use super::{Space, StorageDriver, StorageError};
use crate::instance::idmap::IdShift;
use crate::runner;

pub const KIND: super::DriverKind = super::DriverKind {
    name: "zfs",
    validate: setup::validate,
    create: setup::create,
    open: setup::open,
};

/// Whether zfs can be used on this server (for `/1.0`'s supported drivers).
pub fn available() -> bool {
    setup::available()
}

/// The layout datasets, and whether each is mounted (under the pool's mount dir).
const LAYOUT: &[(&str, bool)] = &[
    ("containers", true),
    ("images", true),
    ("custom", true),
    ("deleted", false),
    ("deleted/images", false),
];

const READONLY: &str = "readonly";
/// The snapshot an instance is sent to another member from.
const MIGRATE: &str = "migrate";

pub struct ZfsPool {
    name: String,
    /// The top dataset: `zfs.pool_name`.
    dataset: String,
    /// `storage-pools/<pool>`: where the layout datasets are mounted.
    mount: PathBuf,
    /// The zpool is cairnd's (a loop file or a device it formatted): destroyed with the pool.
    owned_zpool: bool,
    loop_file: Option<PathBuf>,
    /// Held while images (and their shifted copies) are made or deleted, so a launch never
    /// clones an image being moved to `deleted/`. Holds the shifted copies known to be
    /// complete, so a launch asks zfs nothing before its one `zfs clone`.
    images: std::sync::Mutex<std::collections::HashSet<String>>,
}

fn snap(name: &str) -> String {
    format!("snapshot-{name}")
}

impl ZfsPool {
    fn io(&self, source: std::io::Error, what: String) -> StorageError {
        StorageError::io(&self.name, what, source)
    }

    fn run_error(&self, what: String, source: runner::RunError) -> StorageError {
        if let runner::RunError::Failed { stderr, .. } = &source {
            if stderr.contains("out of space") || stderr.contains("quota exceeded") {
                return StorageError::Full {
                    pool: self.name.clone(),
                    what,
                };
            }
        }
        StorageError::Run {
            pool: self.name.clone(),
            what,
            source: Box::new(source),
        }
    }

    fn zfs(&self, what: impl Into<String>, args: &[&str]) -> Result<String, StorageError> {
        runner::run("zfs", args).map_err(|e| self.run_error(what.into(), e))
    }

    /// `<top>/<kind>/<name>`.
    fn ds(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.dataset)
    }

    fn exists(&self, ds: &str) -> bool {
        runner::run("zfs", ["list", "-H", "-o", "name", ds]).is_ok()
    }

    /// Destroys a dataset and its snapshots; one that does not exist is already gone.
    fn destroy_ds(&self, ds: &str) -> Result<(), StorageError> {
        if !self.exists(ds) {
            return Ok(());
        }
        self.zfs(format!("destroying {ds}"), &["destroy", "-r", ds])
            .map(|_| ())
    }

    /// The clones of `snapshot` (`ds@snap`): what still depends on it.
    fn clones(&self, snapshot: &str) -> Vec<String> {
        runner::run("zfs", ["get", "-H", "-o", "value", "clones", snapshot])
            .map(|out| {
                out.trim()
                    .split(',')
                    .filter(|c| !c.is_empty() && *c != "-")
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The direct children of `ds` (names relative to it).
    fn children(&self, ds: &str) -> Result<Vec<String>, StorageError> {
        let out = self.zfs(
            format!("listing {ds}"),
            &[
                "list",
                "-H",
                "-o",
                "name",
                "-t",
                "filesystem",
                "-d",
                "1",
                ds,
            ],
        )?;
        let prefix = format!("{ds}/");
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
            .collect())
    }

    /// The snapshots of `ds`, oldest first (their names after the `@`).
    fn snapshots_of(&self, ds: &str) -> Result<Vec<String>, StorageError> {
        let out = self.zfs(
            format!("listing snapshots of {ds}"),
            &[
                "list",
                "-H",
                "-o",
                "name",
                "-t",
                "snapshot",
                "-s",
                "createtxg",
                "-d",
                "1",
                ds,
            ],
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('@').map(|(_, s)| s.to_string()))
            .collect())
    }

    /// A zfs number property (`-p`: exact bytes).
    fn number(&self, ds: &str, prop: &str) -> Result<u64, StorageError> {
        let out = self.zfs(
            format!("reading {prop} of {ds}"),
            &["get", "-Hp", "-o", "value", prop, ds],
        )?;
        out.trim().parse().map_err(|_| {
            StorageError::Invalid(
                self.name.clone(),
                format!("zfs get {prop} {ds} gave {:?}", out.trim()),
            )
        })
    }

    fn mountpoint(&self, kind: &str, name: &str) -> PathBuf {
        self.mount.join(kind).join(name)
    }

    fn set_root_mode(&self, p: &Path) -> Result<(), StorageError> {
        fs::set_permissions(p, fs::Permissions::from_mode(0o711))
            .map_err(|e| self.io(e, format!("setting mode of {}", p.display())))
    }

    fn image_name(fp: &str, shift: IdShift) -> String {
        if shift.is_identity() {
            fp.to_string()
        } else {
            format!("{fp}.shift-{}-{}", shift.uid_base, shift.gid_base)
        }
    }

    /// The `@readonly` snapshot instances of image `fp` with id map `shift` are cloned
    /// from: the image's own, or that of its copy re-owned for the map, made once.
    fn image_snapshot(
        &self,
        made: &mut std::collections::HashSet<String>,
        fp: &str,
        shift: IdShift,
    ) -> Result<String, StorageError> {
        let base = format!("{}@{READONLY}", self.ds("images", fp));
        if shift.is_identity() {
            return Ok(base);
        }
        let name = Self::image_name(fp, shift);
        let shifted = self.ds("images", &name);
        let snapshot = format!("{shifted}@{READONLY}");
        if made.contains(&name) {
            return Ok(snapshot);
        }
        if self.exists(&snapshot) {
            made.insert(name);
            return Ok(snapshot);
        }
        // A half-made copy from a crash is made again.
        self.destroy_ds(&shifted)?;
        self.zfs(
            format!("cloning image {fp} for an id map"),
            &["clone", &base, &shifted],
        )?;
        let reshift = Reshift::from_root(shift);
        let done = tree::reshift(&self.mountpoint("images", &name).join("rootfs"), reshift)
            .map_err(|e| self.io(e, format!("re-owning image {fp}")))
            .and_then(|_| self.zfs(format!("snapshotting {shifted}"), &["snapshot", &snapshot]));
        if let Err(e) = done {
            let _ = self.destroy_ds(&shifted);
            return Err(e);
        }
        made.insert(name);
        Ok(snapshot)
    }

    /// Moves image dataset `name` (still cloned by instances) to `deleted/images/`.
    fn set_aside(&self, name: &str) -> Result<(), StorageError> {
        let from = self.ds("images", name);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let to = format!("{}/deleted/images/{name}.{nanos}", self.dataset);
        self.zfs(format!("setting {from} aside"), &["rename", &from, &to])
            .map(|_| ())
    }

    /// Destroys the images in `deleted/` no instance is a clone of any more. Shifted copies
    /// go first: they are clones of their base image.
    fn collect_deleted(&self) {
        let parent = format!("{}/deleted/images", self.dataset);
        loop {
            let Ok(names) = self.children(&parent) else {
                return;
            };
            let mut progress = false;
            for n in names {
                let ds = format!("{parent}/{n}");
                if self.clones(&format!("{ds}@{READONLY}")).is_empty() {
                    match self.destroy_ds(&ds) {
                        Ok(()) => progress = true,
                        Err(e) => tracing::warn!(pool = %self.name, "removing {ds}: {e}"),
                    }
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Rolls `ds` back to `@snapshot-<s>`, refused (as Incus refuses it) when later
    /// snapshots exist: zfs can only roll back to the latest without destroying the others.
    fn rollback(&self, ds: &str, s: &str) -> Result<(), StorageError> {
        let target = snap(s);
        let all = self.snapshots_of(ds)?;
        let Some(at) = all.iter().position(|x| *x == target) else {
            return Err(StorageError::Invalid(
                self.name.clone(),
                format!("snapshot {s} of {ds} does not exist"),
            ));
        };
        let later: Vec<&str> = all[at + 1..]
            .iter()
            .filter_map(|x| x.strip_prefix("snapshot-"))
            .collect();
        if !later.is_empty() {
            return Err(StorageError::NotSupported {
                pool: self.name.clone(),
                driver: "zfs",
                what: format!(
                    "restoring snapshot {s:?} while later snapshots exist ({}; delete them \
                     first: zfs can only roll back to the latest snapshot)",
                    later.join(", ")
                ),
            });
        }
        self.zfs(
            format!("rolling {ds} back to {s}"),
            &["rollback", "-r", &format!("{ds}@{target}")],
        )
        .map(|_| ())
    }

    /// `<kind>/<name>@snapshot-<s>` (an instance's or a custom volume's snapshot).
    fn take_snapshot(&self, kind: &str, name: &str, s: &str) -> Result<(), StorageError> {
        let full = format!("{}@{}", self.ds(kind, name), snap(s));
        self.zfs(format!("snapshotting {name} as {s}"), &["snapshot", &full])
            .map(|_| ())
    }

    /// Destroys `<kind>/<name>@snapshot-<s>`; one that does not exist is already gone.
    fn drop_snapshot(&self, kind: &str, name: &str, s: &str) -> Result<(), StorageError> {
        let full = format!("{}@{}", self.ds(kind, name), snap(s));
        if !self.exists(&full) {
            return Ok(());
        }
        self.zfs(format!("deleting snapshot {name}/{s}"), &["destroy", &full])
            .map(|_| ())
    }

    fn rename_snap(
        &self,
        kind: &str,
        name: &str,
        from: &str,
        to: &str,
    ) -> Result<(), StorageError> {
        let ds = self.ds(kind, name);
        self.zfs(
            format!("renaming snapshot {name}/{from}"),
            &[
                "rename",
                &format!("{ds}@{}", snap(from)),
                &format!("{ds}@{}", snap(to)),
            ],
        )
        .map(|_| ())
    }

    fn set_refquota(&self, ds: &str, bytes: Option<u64>) -> Result<(), StorageError> {
        let v = format!(
            "refquota={}",
            bytes.map_or("none".to_string(), |b| b.to_string())
        );
        self.zfs(format!("setting {v} on {ds}"), &["set", &v, ds])
            .map(|_| ())
    }
}

impl StorageDriver for ZfsPool {
    fn driver_name(&self) -> &'static str {
        "zfs"
    }
    fn pool_name(&self) -> &str {
        &self.name
    }
    fn source(&self) -> &Path {
        &self.mount
    }

    fn space(&self) -> Result<Space, StorageError> {
        let used = self.number(&self.dataset, "used")?;
        let available = self.number(&self.dataset, "available")?;
        // zfs has no fixed inode count; Incus reports none either.
        Ok(Space {
            used,
            total: used + available,
            inodes_used: 0,
            inodes_total: 0,
        })
    }

    fn destroy(&self) -> Result<(), StorageError> {
        let _held = self.images.lock().unwrap_or_else(|p| p.into_inner());
        if self.owned_zpool {
            let zpool = self.dataset.split('/').next().unwrap_or(&self.dataset);
            runner::run("zpool", ["destroy", zpool])
                .map_err(|e| self.run_error(format!("destroying zpool {zpool}"), e))?;
        } else {
            for (sub, _) in LAYOUT.iter().filter(|(s, _)| !s.contains('/')) {
                self.destroy_ds(&format!("{}/{sub}", self.dataset))?;
            }
        }
        if let Some(f) = &self.loop_file {
            fs::remove_file(f).map_err(|e| self.io(e, format!("removing {}", f.display())))?;
        }
        // Only the empty mountpoint directories are left (nothing is mounted any more).
        for (sub, mounted) in LAYOUT {
            if *mounted {
                let _ = fs::remove_dir(self.mount.join(sub));
            }
        }
        let _ = fs::remove_dir(&self.mount);
        Ok(())
    }

    fn grow(&self, bytes: u64) -> Result<(), StorageError> {
        let Some(file) = &self.loop_file else {
            return Err(StorageError::NotSupported {
                pool: self.name.clone(),
                driver: "zfs",
                what: "changing the size of a pool on a device or dataset".into(),
            });
        };
        super::backing::grow_loop_file(&self.name, file, bytes)?;
        // The file is the vdev itself (no loop device): zpool takes the new size.
        let zpool = self.dataset.split('/').next().unwrap_or(&self.dataset);
        runner::run(
            "zpool",
            [
                "online".as_ref(),
                "-e".as_ref(),
                zpool.as_ref(),
                file.as_os_str(),
            ],
        )
        .map(|_| ())
        .map_err(|e| self.run_error(format!("growing zpool {zpool}"), e))
    }

    fn supports_quotas(&self) -> bool {
        true
    }

    fn set_instance_quota(&self, name: &str, bytes: Option<u64>) -> Result<(), StorageError> {
        self.set_refquota(&self.ds("containers", name), bytes)
    }

    fn has_image(&self, fp: &str) -> bool {
        self.mountpoint("images", fp).join("rootfs").is_dir()
    }

    fn create_image(
        &self,
        fp: &str,
        fill: &mut dyn FnMut(&Path) -> Result<(), String>,
    ) -> Result<(), StorageError> {
        let tmp_name = format!("{fp}.tmp");
        let tmp = self.ds("images", &tmp_name);
        self.destroy_ds(&tmp)?;
        self.zfs(format!("creating {tmp}"), &["create", &tmp])?;
        if let Err(e) = fill(&self.mountpoint("images", &tmp_name)) {
            let _ = self.destroy_ds(&tmp);
            return Err(super::fill_error(&self.name, fp, e));
        }
        let installed = self
            .zfs(
                format!("snapshotting image {fp}"),
                &["snapshot", &format!("{tmp}@{READONLY}")],
            )
            .and_then(|_| self.delete_image(fp))
            .and_then(|_| {
                let _held = self.images.lock().unwrap_or_else(|p| p.into_inner());
                self.zfs(
                    format!("installing image {fp}"),
                    &["rename", &tmp, &self.ds("images", fp)],
                )
            });
        if let Err(e) = installed {
            let _ = self.destroy_ds(&tmp);
            return Err(e);
        }
        Ok(())
    }

    fn delete_image(&self, fp: &str) -> Result<(), StorageError> {
        let mut made = self.images.lock().unwrap_or_else(|p| p.into_inner());
        made.retain(|n| !n.starts_with(&format!("{fp}.shift-")));
        let names = self.children(&format!("{}/images", self.dataset))?;
        // Shifted copies first: they are clones of the base image.
        let shifted = names
            .iter()
            .filter(|n| n.starts_with(&format!("{fp}.shift-")));
        for n in shifted.chain(names.iter().filter(|n| *n == fp)) {
            let ds = self.ds("images", n);
            if self.clones(&format!("{ds}@{READONLY}")).is_empty() {
                self.destroy_ds(&ds)?;
            } else {
                self.set_aside(n)?;
            }
        }
        Ok(())
    }

    fn create_instance_from_image(
        &self,
        fp: &str,
        name: &str,
        shift: IdShift,
    ) -> Result<(), StorageError> {
        let dst = self.ds("containers", name);
        {
            let mut made = self.images.lock().unwrap_or_else(|p| p.into_inner());
            let origin = self.image_snapshot(&mut made, fp, shift)?;
            // The one zfs command of a launch; an existing volume is its error to report.
            let cloned = runner::run("zfs", ["clone", origin.as_str(), dst.as_str()]);
            match cloned {
                Err(runner::RunError::Failed { stderr, .. })
                    if stderr.contains("already exists") =>
                {
                    return Err(StorageError::Invalid(
                        self.name.clone(),
                        format!("volume for instance {name} already exists"),
                    ));
                }
                Err(e) => return Err(self.run_error(format!("cloning image {fp} for {name}"), e)),
                Ok(_) => {}
            }
        }
        self.set_root_mode(&self.instance_path(name))
    }

    fn instance_path(&self, name: &str) -> PathBuf {
        self.mountpoint("containers", name)
    }

    fn create_empty_instance(&self, name: &str) -> Result<(), StorageError> {
        let ds = self.ds("containers", name);
        self.zfs(format!("creating instance volume {name}"), &["create", &ds])?;
        self.set_root_mode(&self.instance_path(name))
    }

    fn snapshot_files(&self, name: &str, s: &str) -> PathBuf {
        self.snapshots_path(name).join(snap(s))
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

    fn snapshots_path(&self, name: &str) -> PathBuf {
        // Read-only views of the snapshots, which zfs mounts on access.
        self.instance_path(name).join(".zfs").join("snapshot")
    }

    fn delete_instance(&self, name: &str) -> Result<(), StorageError> {
        self.destroy_ds(&self.ds("containers", name))?;
        self.collect_deleted();
        Ok(())
    }

    fn rename_instance(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.zfs(
            format!("renaming instance {from} to {to}"),
            &[
                "rename",
                &self.ds("containers", from),
                &self.ds("containers", to),
            ],
        )
        .map(|_| ())
    }

    fn create_snapshot(&self, name: &str, s: &str) -> Result<(), StorageError> {
        self.take_snapshot("containers", name, s)
    }

    fn restore_snapshot(&self, name: &str, s: &str) -> Result<(), StorageError> {
        self.rollback(&self.ds("containers", name), s)
    }

    fn delete_snapshot(&self, name: &str, s: &str) -> Result<(), StorageError> {
        self.drop_snapshot("containers", name, s)
    }

    fn rename_snapshot(&self, name: &str, from: &str, to: &str) -> Result<(), StorageError> {
        self.rename_snap("containers", name, from, to)
    }

    fn copy_instance(
        &self,
        from: &str,
        snapshot: Option<&str>,
        to: &str,
    ) -> Result<(), StorageError> {
        self.copy_instance_with_snapshots(from, snapshot, to, &[])
    }

    fn copy_instance_with_snapshots(
        &self,
        from: &str,
        snapshot: Option<&str>,
        to: &str,
        snapshots: &[String],
    ) -> Result<(), StorageError> {
        let (src, dst) = (self.ds("containers", from), self.ds("containers", to));
        match snapshot {
            Some(s) => self.send_snapshot_copy(&format!("{src}@{}", snap(s)), &dst)?,
            None => {
                let names: Vec<String> = snapshots.iter().map(|s| snap(s)).collect();
                self.send_copy(&src, &names, &dst)?
            }
        }
        self.set_root_mode(&self.instance_path(to))
    }

    fn copy_snapshot(&self, from: &str, s: &str, to: &str) -> Result<(), StorageError> {
        // A zfs snapshot cannot be added to a dataset after the fact: copies carry their
        // snapshots in one stream (copy_instance_with_snapshots).
        let _ = (from, to);
        Err(StorageError::NotSupported {
            pool: self.name.clone(),
            driver: "zfs",
            what: format!("copying snapshot {s} on its own"),
        })
    }

    fn instance_usage(&self, name: &str) -> u64 {
        self.number(&self.ds("containers", name), "used")
            .unwrap_or(0)
    }

    fn create_volume(&self, name: &str) -> Result<(), StorageError> {
        let ds = self.ds("custom", name);
        self.zfs(format!("creating volume {name}"), &["create", &ds])?;
        super::new_volume_root(&self.name, &self.volume_path(name))
    }

    fn delete_volume(&self, name: &str) -> Result<(), StorageError> {
        self.destroy_ds(&self.ds("custom", name))
    }

    fn copy_volume(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.copy_volume_with_snapshots(from, to, &[])
    }

    fn copy_volume_with_snapshots(
        &self,
        from: &str,
        to: &str,
        snapshots: &[String],
    ) -> Result<(), StorageError> {
        let names: Vec<String> = snapshots.iter().map(|s| snap(s)).collect();
        self.send_copy(&self.ds("custom", from), &names, &self.ds("custom", to))
    }

    fn rename_volume(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.zfs(
            format!("renaming volume {from} to {to}"),
            &["rename", &self.ds("custom", from), &self.ds("custom", to)],
        )
        .map(|_| ())
    }

    fn set_volume_quota(&self, name: &str, bytes: Option<u64>) -> Result<(), StorageError> {
        self.set_refquota(&self.ds("custom", name), bytes)
    }

    fn volume_snapshot_path(&self, name: &str, s: &str) -> PathBuf {
        self.volume_path(name)
            .join(".zfs")
            .join("snapshot")
            .join(snap(s))
    }

    fn create_volume_snapshot(&self, name: &str, s: &str) -> Result<(), StorageError> {
        self.take_snapshot("custom", name, s)
    }

    fn delete_volume_snapshot(&self, name: &str, s: &str) -> Result<(), StorageError> {
        self.drop_snapshot("custom", name, s)
    }

    fn restore_volume_snapshot(&self, name: &str, s: &str) -> Result<(), StorageError> {
        self.rollback(&self.ds("custom", name), s)
    }

    fn copy_volume_snapshot(&self, from: &str, s: &str, to: &str) -> Result<(), StorageError> {
        let _ = (from, to);
        Err(StorageError::NotSupported {
            pool: self.name.clone(),
            driver: "zfs",
            what: format!("copying volume snapshot {s} on its own"),
        })
    }

    fn rename_volume_snapshot(&self, name: &str, from: &str, to: &str) -> Result<(), StorageError> {
        self.rename_snap("custom", name, from, to)
    }

    fn volume_usage(&self, name: &str) -> u64 {
        self.number(&self.ds("custom", name), "used").unwrap_or(0)
    }
}
