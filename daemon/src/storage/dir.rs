//! The `dir` driver: volumes are plain directories under the pool's source.
//!
//! Layout: `images/<fingerprint>/`, `containers/<name>/rootfs`,
//! `containers-snapshots/<name>/<snapshot>/`, `custom/<volume>/`. Instances are full copies of the image (ids
//! shifted during the copy), snapshots full copies of the instance.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::tree::{self, Reshift};
use super::{check_known_options, check_source, DriverKind, PoolConfig, PoolPaths};
use super::{StorageDriver, StorageError};
use crate::instance::idmap::IdShift;

pub const KIND: DriverKind = DriverKind {
    name: "dir",
    validate,
    create,
    open,
};

fn validate(config: &PoolConfig) -> Result<(), StorageError> {
    check_known_options(config, &["source"])?;
    check_source(config)
}

fn source_of(config: &PoolConfig, paths: &PoolPaths) -> PathBuf {
    config
        .get("source")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| paths.mount.clone())
}

fn create(pool: &str, config: &PoolConfig, paths: &PoolPaths) -> Result<PoolConfig, StorageError> {
    validate(config)?;
    let source = source_of(config, paths);
    DirPool::open(pool, &source)?;
    let mut out = config.clone();
    out.insert("source".into(), source.display().to_string());
    Ok(out)
}

fn open(
    pool: &str,
    config: &PoolConfig,
    paths: &PoolPaths,
) -> Result<Box<dyn StorageDriver>, StorageError> {
    Ok(Box::new(DirPool::open(pool, &source_of(config, paths))?))
}

pub struct DirPool {
    name: String,
    source: PathBuf,
}

impl DirPool {
    pub fn open(name: &str, source: &Path) -> Result<DirPool, StorageError> {
        let pool = DirPool {
            name: name.to_string(),
            source: source.to_path_buf(),
        };
        for sub in [
            "",
            "images",
            "containers",
            "containers-snapshots",
            "custom",
            "custom-snapshots",
        ] {
            let p = source.join(sub);
            fs::create_dir_all(&p).map_err(|e| pool.io(e, format!("creating {}", p.display())))?;
            // Unprivileged containers must traverse down to their rootfs: x for others, no r.
            fs::set_permissions(&p, fs::Permissions::from_mode(0o711))
                .map_err(|e| pool.io(e, format!("setting mode of {}", p.display())))?;
        }
        Ok(pool)
    }

    fn io(&self, source: std::io::Error, what: String) -> StorageError {
        StorageError::Io {
            pool: self.name.clone(),
            what,
            source,
        }
    }

    fn image_path(&self, fp: &str) -> PathBuf {
        self.source.join("images").join(fp)
    }

    fn snapshot_path(&self, name: &str, snap: &str) -> PathBuf {
        self.source
            .join("containers-snapshots")
            .join(name)
            .join(snap)
    }
}

impl StorageDriver for DirPool {
    fn driver_name(&self) -> &'static str {
        "dir"
    }
    fn pool_name(&self) -> &str {
        &self.name
    }
    fn source(&self) -> &Path {
        &self.source
    }

    // The source may be a directory the user pointed us at, with data of theirs beside
    // ours: deleting the pool removes its image volumes (ours, unpacked from the image
    // store) and the layout directories when empty, nothing else.
    fn destroy(&self) -> Result<(), StorageError> {
        tree::remove(&self.source.join("images"))
            .map_err(|e| self.io(e, "removing image volumes".into()))?;
        for sub in [
            "containers",
            "containers-snapshots",
            "custom",
            "custom-snapshots",
        ] {
            let _ = fs::remove_dir(self.source.join(sub));
        }
        let _ = fs::remove_dir(&self.source);
        Ok(())
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
        let tmp = self.source.join("images").join(format!(".{fp}.tmp"));
        tree::remove(&tmp).map_err(|e| self.io(e, "clearing a staging dir".into()))?;
        fs::create_dir(&tmp).map_err(|e| self.io(e, format!("creating {}", tmp.display())))?;
        if let Err(e) = fill(&tmp) {
            let _ = tree::remove(&tmp);
            return Err(super::fill_error(&self.name, fp, e));
        }
        tree::remove(&dst).map_err(|e| self.io(e, "replacing an old image volume".into()))?;
        fs::rename(&tmp, &dst).map_err(|e| self.io(e, format!("installing image {fp}")))?;
        Ok(())
    }

    fn delete_image(&self, fp: &str) -> Result<(), StorageError> {
        tree::remove(&self.image_path(fp)).map_err(|e| self.io(e, format!("deleting image {fp}")))
    }

    fn create_instance_from_image(
        &self,
        fp: &str,
        name: &str,
        shift: IdShift,
    ) -> Result<(), StorageError> {
        let src = self.image_path(fp);
        let dst = self.instance_path(name);
        if dst.exists() {
            return Err(StorageError::Invalid(
                self.name.clone(),
                format!("volume for instance {name} already exists"),
            ));
        }
        let reshift = Reshift::from_root(shift);
        let r = (|| -> std::io::Result<()> {
            fs::create_dir(&dst)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(0o711))?;
            for f in ["metadata.yaml"] {
                if src.join(f).exists() {
                    fs::copy(src.join(f), dst.join(f))?;
                }
            }
            if src.join("templates").is_dir() {
                tree::copy(
                    &src.join("templates"),
                    &dst.join("templates"),
                    Reshift::NONE,
                )?;
            }
            tree::copy(&src.join("rootfs"), &dst.join("rootfs"), reshift)
        })();
        if let Err(e) = r {
            let _ = tree::remove(&dst);
            return Err(self.io(e, format!("creating instance {name} from image {fp}")));
        }
        Ok(())
    }

    fn instance_path(&self, name: &str) -> PathBuf {
        self.source.join("containers").join(name)
    }

    fn create_empty_instance(&self, name: &str) -> Result<(), StorageError> {
        let p = self.instance_path(name);
        fs::create_dir(&p).map_err(|e| self.io(e, format!("creating instance volume {name}")))?;
        super::new_volume_root(&self.name, &p)
    }

    fn snapshots_path(&self, name: &str) -> PathBuf {
        self.source.join("containers-snapshots").join(name)
    }

    fn delete_instance(&self, name: &str) -> Result<(), StorageError> {
        tree::remove(&self.instance_path(name))
            .and_then(|_| tree::remove(&self.source.join("containers-snapshots").join(name)))
            .map_err(|e| self.io(e, format!("deleting instance {name}")))
    }

    fn rename_instance(&self, from: &str, to: &str) -> Result<(), StorageError> {
        fs::rename(self.instance_path(from), self.instance_path(to))
            .map_err(|e| self.io(e, format!("renaming instance {from} to {to}")))?;
        let snaps = self.source.join("containers-snapshots");
        if snaps.join(from).exists() {
            fs::rename(snaps.join(from), snaps.join(to))
                .map_err(|e| self.io(e, format!("renaming snapshots of {from}")))?;
        }
        Ok(())
    }

    fn create_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        let dst = self.snapshot_path(name, snap);
        let parent = self.source.join("containers-snapshots").join(name);
        fs::create_dir_all(&parent).map_err(|e| self.io(e, "creating snapshot dir".into()))?;
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o700))
            .map_err(|e| self.io(e, "setting snapshot dir mode".into()))?;
        tree::copy(&self.instance_path(name), &dst, Reshift::NONE).map_err(|e| {
            let _ = tree::remove(&dst);
            self.io(e, format!("snapshotting {name} as {snap}"))
        })
    }

    fn restore_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        let live = self.instance_path(name);
        let staging = self
            .source
            .join("containers")
            .join(format!(".{name}.restore"));
        tree::remove(&staging).map_err(|e| self.io(e, "clearing restore staging".into()))?;
        tree::copy(&self.snapshot_path(name, snap), &staging, Reshift::NONE)
            .map_err(|e| self.io(e, format!("copying snapshot {name}/{snap}")))?;
        let old = self.source.join("containers").join(format!(".{name}.old"));
        tree::remove(&old).map_err(|e| self.io(e, "clearing old copy".into()))?;
        fs::rename(&live, &old)
            .map_err(|e| self.io(e, "moving the current volume aside".into()))?;
        fs::rename(&staging, &live)
            .map_err(|e| self.io(e, "installing the restored volume".into()))?;
        tree::remove(&old).map_err(|e| self.io(e, "removing the replaced volume".into()))
    }

    fn delete_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        tree::remove(&self.snapshot_path(name, snap))
            .map_err(|e| self.io(e, format!("deleting snapshot {name}/{snap}")))
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
        tree::copy(&src, &dst, Reshift::NONE).map_err(|e| {
            let _ = tree::remove(&dst);
            self.io(e, format!("copying instance {from} to {to}"))
        })
    }

    fn copy_snapshot(&self, from: &str, snapshot: &str, to: &str) -> Result<(), StorageError> {
        let parent = self.source.join("containers-snapshots").join(to);
        fs::create_dir_all(&parent).map_err(|e| self.io(e, "creating snapshot dir".into()))?;
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o700))
            .map_err(|e| self.io(e, "setting snapshot dir mode".into()))?;
        let dst = self.snapshot_path(to, snapshot);
        tree::copy(&self.snapshot_path(from, snapshot), &dst, Reshift::NONE).map_err(|e| {
            let _ = tree::remove(&dst);
            self.io(e, format!("copying snapshot {from}/{snapshot} to {to}"))
        })
    }

    fn instance_usage(&self, name: &str) -> u64 {
        tree::usage(&self.instance_path(name))
    }

    fn create_volume(&self, name: &str) -> Result<(), StorageError> {
        let p = self.volume_path(name);
        fs::create_dir(&p).map_err(|e| self.io(e, format!("creating volume {name}")))?;
        super::new_volume_root(&self.name, &p)
    }

    fn delete_volume(&self, name: &str) -> Result<(), StorageError> {
        tree::remove(&self.volume_path(name))
            .and_then(|_| tree::remove(&self.source.join("custom-snapshots").join(name)))
            .map_err(|e| self.io(e, format!("deleting volume {name}")))
    }

    fn create_volume_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        super::volume_snapshots_dir(self, name)?;
        let dst = self.volume_snapshot_path(name, snap);
        tree::copy(&self.volume_path(name), &dst, Reshift::NONE).map_err(|e| {
            let _ = tree::remove(&dst);
            super::StorageError::io(&self.name, format!("snapshotting volume {name}"), e)
        })
    }

    fn delete_volume_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        tree::remove(&self.volume_snapshot_path(name, snap))
            .map_err(|e| self.io(e, format!("deleting snapshot {name}/{snap}")))
    }

    fn restore_volume_snapshot(&self, name: &str, snap: &str) -> Result<(), StorageError> {
        let custom = self.source.join("custom");
        let (staging, old) = (
            custom.join(format!(".{name}.restore")),
            custom.join(format!(".{name}.old")),
        );
        let live = self.volume_path(name);
        (|| -> std::io::Result<()> {
            tree::remove(&staging)?;
            tree::remove(&old)?;
            tree::copy(
                &self.volume_snapshot_path(name, snap),
                &staging,
                Reshift::NONE,
            )?;
            fs::rename(&live, &old)?;
            if let Err(e) = fs::rename(&staging, &live) {
                let _ = fs::rename(&old, &live);
                return Err(e);
            }
            tree::remove(&old)
        })()
        .map_err(|e| super::StorageError::io(&self.name, format!("restoring {name}/{snap}"), e))
    }

    fn copy_volume_snapshot(&self, from: &str, snap: &str, to: &str) -> Result<(), StorageError> {
        super::volume_snapshots_dir(self, to)?;
        let dst = self.volume_snapshot_path(to, snap);
        tree::copy(&self.volume_snapshot_path(from, snap), &dst, Reshift::NONE).map_err(|e| {
            let _ = tree::remove(&dst);
            super::StorageError::io(&self.name, format!("copying snapshot {from}/{snap}"), e)
        })
    }

    fn copy_volume(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let dst = self.volume_path(to);
        tree::copy(&self.volume_path(from), &dst, Reshift::NONE).map_err(|e| {
            let _ = tree::remove(&dst);
            super::StorageError::io(&self.name, format!("copying volume {from} to {to}"), e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn image_to_instance_to_snapshot_and_back() {
        let t = tempfile::tempdir().unwrap();
        let pool = DirPool::open("default", t.path()).unwrap();
        pool.create_image("abc", &mut |d: &Path| {
            fs::create_dir_all(d.join("rootfs/etc")).map_err(|e| e.to_string())?;
            fs::write(d.join("rootfs/etc/hostname"), "img").map_err(|e| e.to_string())?;
            fs::write(d.join("metadata.yaml"), "architecture: x86_64\n").map_err(|e| e.to_string())
        })
        .unwrap();
        assert!(pool.has_image("abc"));
        let shift = IdShift::from_subid("", "");
        pool.create_instance_from_image("abc", "c1", shift).unwrap();
        let f = pool.rootfs_path("c1").join("etc/hostname");
        assert_eq!(fs::metadata(&f).unwrap().uid(), shift.uid_base);

        pool.create_snapshot("c1", "s0").unwrap();
        fs::write(&f, "changed").unwrap();
        pool.restore_snapshot("c1", "s0").unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "img");

        pool.copy_instance("c1", Some("s0"), "c3").unwrap();
        assert_eq!(
            fs::read_to_string(pool.rootfs_path("c3").join("etc/hostname")).unwrap(),
            "img"
        );
        pool.copy_snapshot("c1", "s0", "c3").unwrap();
        pool.delete_instance("c3").unwrap();

        pool.rename_instance("c1", "c2").unwrap();
        assert!(pool.rootfs_path("c2").join("etc/hostname").exists());
        pool.rename_snapshot("c2", "s0", "s1").unwrap();
        pool.delete_snapshot("c2", "s1").unwrap();
        pool.delete_instance("c2").unwrap();
        assert!(!pool.instance_path("c2").exists());
    }

    #[test]
    fn failed_fill_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let pool = DirPool::open("default", t.path()).unwrap();
        let r = pool.create_image("bad", &mut |_d: &Path| Err("hostile".to_string()));
        assert!(r.is_err());
        assert!(!pool.has_image("bad"));
        assert_eq!(fs::read_dir(t.path().join("images")).unwrap().count(), 0);
    }
}
