//! cloud-init's NoCloud seed, written into a container's rootfs before each start.
//!
//! Incus delivers `cloud-init.*` (and the legacy `user.*`) data to containers through the
//! image's templates: distrobuilder's cloud images render
//! `/var/lib/cloud/seed/nocloud-net/{meta-data,user-data,vendor-data,network-config}` with
//! `config_get`, which trims trailing line breaks, and each template ends with one newline.
//! Cairn does not run image templates, so it renders the same four files itself, with the
//! same contents and defaults, whenever the instance has any cloud-init key. The data never
//! goes near the LXC config, where a multi-line value could not be written.
//!
//! The files are written through [`RootfsAccess`], so symlinks the container planted in
//! `/var/lib/cloud` resolve inside the container, and each file is replaced by a rename so
//! a symlink at a seed file's own name is replaced rather than followed.

use std::io::Write;

use super::rootfs_access::{FsError, NewAttrs, OpenOptions, RootfsAccess};
use crate::db::records::ConfigMap;

/// Where cloud-init's NoCloud datasource looks for its seed inside the container.
pub const SEED_DIR: &str = "/var/lib/cloud/seed/nocloud-net";

/// The keys Incus 6.0.4 feeds into the seed (its `cloud-init.*` keys and their legacy
/// `user.*` forms, as distrobuilder's templates read them).
pub const KEYS: &[&str] = &[
    "cloud-init.user-data",
    "cloud-init.vendor-data",
    "cloud-init.network-config",
    "user.user-data",
    "user.vendor-data",
    "user.network-config",
    "user.meta-data",
];

/// distrobuilder's default for user-data and vendor-data.
const DEFAULT_CLOUD_CONFIG: &str = "#cloud-config\n{}";

/// distrobuilder's default network-config for containers: DHCP on eth0.
const DEFAULT_NETWORK_CONFIG: &str = "version: 1
config:
  - type: physical
    name: eth0
    subnets:
      - type: dhcp
        control: auto";

/// The four seed files' contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub meta_data: String,
    pub user_data: String,
    pub vendor_data: String,
    pub network_config: String,
}

/// Incus's template `config_get`: the value without trailing line breaks; an empty value
/// counts as unset (the CLI's `config set k ""` removes a key in Incus).
fn config_get<'a>(config: &'a ConfigMap, key: &str) -> Option<&'a str> {
    config
        .get(key)
        .map(|v| v.trim_end_matches(['\r', '\n']))
        .filter(|v| !v.is_empty())
}

impl Seed {
    /// The seed of an instance with this expanded config, or `None` when it sets no
    /// cloud-init key (its image may ship a seed of its own, which is left alone).
    pub fn for_instance(name: &str, config: &ConfigMap) -> Option<Seed> {
        if !KEYS.iter().any(|k| config_get(config, k).is_some()) {
            return None;
        }
        let pick = |new: &str, legacy: &str, default: &'static str| {
            let v = config_get(config, new)
                .or_else(|| config_get(config, legacy))
                .unwrap_or(default);
            format!("{v}\n")
        };
        Some(Seed {
            meta_data: format!(
                "instance-id: {name}\nlocal-hostname: {name}\n{}\n",
                config_get(config, "user.meta-data").unwrap_or("")
            ),
            user_data: pick(
                "cloud-init.user-data",
                "user.user-data",
                DEFAULT_CLOUD_CONFIG,
            ),
            vendor_data: pick(
                "cloud-init.vendor-data",
                "user.vendor-data",
                DEFAULT_CLOUD_CONFIG,
            ),
            network_config: pick(
                "cloud-init.network-config",
                "user.network-config",
                DEFAULT_NETWORK_CONFIG,
            ),
        })
    }

    fn files(&self) -> [(&'static str, &str); 4] {
        [
            ("meta-data", &self.meta_data),
            ("user-data", &self.user_data),
            ("vendor-data", &self.vendor_data),
            ("network-config", &self.network_config),
        ]
    }

    /// Writes the seed into the rootfs: missing directories are made (container root,
    /// 0755) and each file (container root, 0644) replaces what was there.
    pub fn write(&self, root: &RootfsAccess) -> Result<(), FsError> {
        let mut dir = String::new();
        for part in SEED_DIR.trim_start_matches('/').split('/') {
            dir.push('/');
            dir.push_str(part);
            match root.mkdir(&dir, &NewAttrs::default()) {
                Ok(()) | Err(FsError::Exists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for (name, content) in self.files() {
            let path = format!("{SEED_DIR}/{name}");
            let tmp = format!("{SEED_DIR}/.{name}.cairn-new");
            match root.remove_file(&tmp) {
                Ok(()) | Err(FsError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            // O_EXCL: never opens through a symlink planted at the temporary name.
            let opts = OpenOptions {
                write: true,
                create: true,
                exclusive: true,
                ..Default::default()
            };
            let (mut file, _) = root.open_file(&tmp, &opts, &NewAttrs::default())?;
            file.write_all(content.as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(|e| FsError::Io {
                    op: "write",
                    path: tmp.clone(),
                    source: e,
                })?;
            root.rename(&tmp, &path, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::idmap::IdShift;

    /// Container root mapped to whoever runs the test, so it needs no privileges.
    fn own_ids() -> IdShift {
        IdShift {
            uid_base: nix::unistd::geteuid().as_raw(),
            gid_base: nix::unistd::getegid().as_raw(),
            range: 1,
        }
    }

    fn config(pairs: &[(&str, &str)]) -> ConfigMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_cloud_init_key_means_no_seed() {
        assert_eq!(
            Seed::for_instance("c1", &config(&[("user.foo", "x")])),
            None
        );
        assert_eq!(
            Seed::for_instance("c1", &config(&[("cloud-init.user-data", "")])),
            None
        );
    }

    #[test]
    fn contents_follow_the_image_templates() {
        let s = Seed::for_instance(
            "c1",
            &config(&[("cloud-init.user-data", "#cloud-config\nfoo: bar\n\n")]),
        )
        .unwrap();
        assert_eq!(s.user_data, "#cloud-config\nfoo: bar\n");
        assert_eq!(s.vendor_data, "#cloud-config\n{}\n");
        assert_eq!(s.meta_data, "instance-id: c1\nlocal-hostname: c1\n\n");
        assert!(s.network_config.starts_with("version: 1\n"));
        assert!(s.network_config.ends_with("control: auto\n"));
    }

    #[test]
    fn new_keys_win_over_legacy_ones() {
        let s = Seed::for_instance(
            "web",
            &config(&[
                ("user.user-data", "#!/bin/sh\necho legacy"),
                ("user.vendor-data", "legacy vendor"),
                ("cloud-init.vendor-data", "new vendor"),
                ("user.network-config", "version: 2"),
                ("user.meta-data", "foo: bar"),
            ]),
        )
        .unwrap();
        assert_eq!(s.user_data, "#!/bin/sh\necho legacy\n");
        assert_eq!(s.vendor_data, "new vendor\n");
        assert_eq!(s.network_config, "version: 2\n");
        assert_eq!(
            s.meta_data,
            "instance-id: web\nlocal-hostname: web\nfoo: bar\n"
        );
    }

    #[test]
    fn writing_replaces_planted_symlinks_instead_of_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(rootfs.join("var/lib/cloud/seed/nocloud-net")).unwrap();
        std::fs::write(&outside, "host file\n").unwrap();
        // The container points its seed file, and the temporary name, at a host path.
        for name in ["user-data", ".user-data.cairn-new"] {
            std::os::unix::fs::symlink(
                &outside,
                rootfs.join("var/lib/cloud/seed/nocloud-net").join(name),
            )
            .unwrap();
        }
        let root = RootfsAccess::open(&rootfs, own_ids()).unwrap();
        let seed = Seed::for_instance(
            "c1",
            &config(&[("cloud-init.user-data", "#cloud-config\na: 1")]),
        )
        .unwrap();
        seed.write(&root).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "host file\n");
        let seed_dir = rootfs.join("var/lib/cloud/seed/nocloud-net");
        let written = seed_dir.join("user-data");
        assert!(!written.symlink_metadata().unwrap().is_symlink());
        assert_eq!(
            std::fs::read_to_string(&written).unwrap(),
            "#cloud-config\na: 1\n"
        );
        for name in ["meta-data", "vendor-data", "network-config"] {
            assert!(seed_dir.join(name).is_file(), "{name}");
        }
        assert!(!seed_dir.join(".user-data.cairn-new").exists());
    }

    #[test]
    fn a_planted_symlinked_directory_stays_inside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(rootfs.join("var/lib")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // An absolute symlink resolves against the container's root, not the host's.
        std::os::unix::fs::symlink(&outside, rootfs.join("var/lib/cloud")).unwrap();
        let root = RootfsAccess::open(&rootfs, own_ids()).unwrap();
        let seed = Seed::for_instance("c1", &config(&[("user.meta-data", "a: b")])).unwrap();
        // Dangling inside the container: refused, nothing made on the host.
        assert!(matches!(seed.write(&root), Err(FsError::NotFound { .. })));
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let inside = rootfs.join(outside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        seed.write(&root).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(inside.join("seed/nocloud-net/meta-data").is_file());
    }
}
