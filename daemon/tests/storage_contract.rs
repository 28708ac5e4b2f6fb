//! The storage driver contract, run against every driver this host can make: `dir` in a
//! temporary directory, `btrfs` on a loop file and on a loop device the test attaches (and
//! detaches after). Root and btrfs-progs are required; the test says so instead of passing.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairnd::instance::idmap::IdShift;
use cairnd::storage::{self, PoolConfig, PoolPaths, StorageDriver};
use common::TempDir;

fn require_root_and_btrfs() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "storage_contract needs root (loop devices, mounts); scripts/test.sh runs as root"
    );
    for tool in ["mkfs.btrfs", "btrfs", "losetup", "blkid"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: run scripts/install-deps.sh (btrfs-progs)"
        );
    }
}

fn fill_image(d: &Path) -> Result<(), String> {
    let e = |e: std::io::Error| e.to_string();
    fs::create_dir_all(d.join("rootfs/etc")).map_err(e)?;
    fs::create_dir_all(d.join("templates")).map_err(e)?;
    fs::write(d.join("rootfs/etc/hostname"), "img").map_err(e)?;
    fs::write(d.join("templates/hostname.tpl"), "{{ name }}").map_err(e)?;
    fs::write(d.join("metadata.yaml"), "architecture: x86_64\n").map_err(e)
}

/// What every driver must do, in the order the daemon does it.
fn contract(pool: &dyn StorageDriver) {
    let shift = IdShift::from_subid("root:100000:65536\n", "root:100000:65536\n");
    pool.create_image("abc", &mut |d: &Path| fill_image(d))
        .unwrap();
    assert!(pool.has_image("abc"));
    assert!(pool
        .create_image("bad", &mut |_d: &Path| Err("hostile".into()))
        .is_err());
    assert!(!pool.has_image("bad"));

    pool.create_instance_from_image("abc", "c1", shift).unwrap();
    let f = pool.rootfs_path("c1").join("etc/hostname");
    assert_eq!(
        fs::metadata(&f).unwrap().uid(),
        shift.uid_base,
        "rootfs re-owned"
    );
    assert_eq!(
        fs::metadata(pool.instance_path("c1").join("templates/hostname.tpl"))
            .unwrap()
            .uid(),
        0,
        "templates stay root's"
    );
    // A second instance of the same image and map.
    pool.create_instance_from_image("abc", "c2", shift).unwrap();
    let f2 = pool.rootfs_path("c2").join("etc/hostname");
    assert_eq!(fs::read_to_string(&f2).unwrap(), "img");
    assert_eq!(fs::metadata(&f2).unwrap().uid(), shift.uid_base);
    assert!(pool.create_instance_from_image("abc", "c2", shift).is_err());
    // The image itself is untouched by its instances.
    fs::write(&f, "changed-before-snapshot").unwrap();
    pool.create_instance_from_image("abc", "c9", IdShift::IDENTITY)
        .unwrap();
    assert_eq!(
        fs::read_to_string(pool.rootfs_path("c9").join("etc/hostname")).unwrap(),
        "img"
    );
    assert_eq!(
        fs::metadata(pool.rootfs_path("c9").join("etc/hostname"))
            .unwrap()
            .uid(),
        0
    );
    pool.delete_instance("c9").unwrap();

    pool.create_snapshot("c1", "s0").unwrap();
    fs::write(&f, "changed-after-snapshot").unwrap();
    pool.restore_snapshot("c1", "s0").unwrap();
    assert_eq!(fs::read_to_string(&f).unwrap(), "changed-before-snapshot");
    // Restoring twice works (the staging names are cleaned up).
    pool.restore_snapshot("c1", "s0").unwrap();

    pool.copy_instance("c1", None, "c3").unwrap();
    pool.copy_instance("c1", Some("s0"), "c4").unwrap();
    pool.copy_snapshot("c1", "s0", "c3").unwrap();
    fs::write(pool.rootfs_path("c3").join("etc/hostname"), "c3").unwrap();
    assert_eq!(fs::read_to_string(&f).unwrap(), "changed-before-snapshot");
    assert!(pool.snapshots_path("c3").join("s0").is_dir());
    assert!(pool.instance_usage("c3") > 0);

    pool.rename_instance("c3", "c5").unwrap();
    assert!(pool.snapshots_path("c5").join("s0").is_dir());
    pool.rename_snapshot("c5", "s0", "s1").unwrap();
    pool.delete_snapshot("c5", "s1").unwrap();
    assert!(!pool.snapshots_path("c5").join("s1").exists());

    let back = IdShift::IDENTITY;
    pool.reshift_instance("c4", shift, back).unwrap();
    assert_eq!(
        fs::metadata(pool.rootfs_path("c4").join("etc/hostname"))
            .unwrap()
            .uid(),
        0
    );

    for c in ["c1", "c2", "c4", "c5"] {
        pool.delete_instance(c).unwrap();
        assert!(!pool.instance_path(c).exists(), "{c}");
        assert!(!pool.snapshots_path(c).exists(), "{c}");
    }
    pool.delete_image("abc").unwrap();
    assert!(!pool.has_image("abc"));
    let space = pool.space().unwrap();
    assert!(space.total > 0 && space.used <= space.total, "{space:?}");

    volumes(pool, shift);
}

/// Custom volumes: made empty and 0711, re-owned, copied with their files, renamed,
/// deleted; a size only where the driver enforces quotas.
fn volumes(pool: &dyn StorageDriver, shift: IdShift) {
    pool.create_volume("v1").unwrap();
    let root = pool.volume_path("v1");
    assert_eq!(fs::metadata(&root).unwrap().mode() & 0o7777, 0o711);
    assert!(pool.create_volume("v1").is_err(), "a volume is made once");
    fs::write(root.join("f"), "data").unwrap();
    pool.reshift_volume("v1", IdShift::IDENTITY, shift).unwrap();
    assert_eq!(fs::metadata(root.join("f")).unwrap().uid(), shift.uid_base);
    assert!(pool.volume_usage("v1") > 0);
    pool.copy_volume("v1", "v2").unwrap();
    assert_eq!(
        fs::read_to_string(pool.volume_path("v2").join("f")).unwrap(),
        "data"
    );
    assert_eq!(
        fs::metadata(pool.volume_path("v2").join("f"))
            .unwrap()
            .uid(),
        shift.uid_base
    );
    pool.create_volume_snapshot("v2", "s1").unwrap();
    fs::write(pool.volume_path("v2").join("f"), "changed").unwrap();
    pool.restore_volume_snapshot("v2", "s1").unwrap();
    assert_eq!(
        fs::read_to_string(pool.volume_path("v2").join("f")).unwrap(),
        "data"
    );
    pool.rename_volume("v2", "v3").unwrap();
    assert!(!pool.volume_path("v2").exists());
    assert!(
        pool.volume_snapshot_path("v3", "s1").is_dir(),
        "snapshots follow a rename"
    );
    pool.copy_volume("v3", "v4").unwrap();
    pool.copy_volume_snapshot("v3", "s1", "v4").unwrap();
    pool.rename_volume_snapshot("v4", "s1", "s2").unwrap();
    pool.delete_volume_snapshot("v4", "s2").unwrap();
    assert!(!pool.volume_snapshot_path("v4", "s2").exists());
    pool.delete_volume("v4").unwrap();
    let limited = pool.set_volume_quota("v3", Some(16 << 20));
    assert_eq!(limited.is_ok(), pool.supports_quotas(), "{limited:?}");
    pool.set_volume_quota("v3", None).unwrap();
    for v in ["v1", "v3"] {
        pool.delete_volume(v).unwrap();
        assert!(!pool.volume_path(v).exists(), "{v}");
        assert!(!pool.volume_snapshot_path(v, "s1").exists(), "{v}");
    }
}

fn cfg(pairs: &[(&str, &str)]) -> PoolConfig {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn make(state: &Path, name: &str, driver: &str, config: &PoolConfig) -> Box<dyn StorageDriver> {
    let kind = storage::kind(driver).unwrap();
    let paths = PoolPaths::new(state, name);
    let recorded = (kind.create)(name, config, &paths).unwrap();
    (kind.open)(name, &recorded, &paths).unwrap()
}

#[test]
fn dir_keeps_the_contract() {
    let t = TempDir::new("cairn-contract-dir");
    let pool = make(t.path(), "d1", "dir", &PoolConfig::new());
    contract(pool.as_ref());
    pool.destroy().unwrap();
}

struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(file: &Path) -> LoopDevice {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        LoopDevice(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn btrfs_on_a_loop_file_keeps_the_contract_and_survives_a_remount() {
    require_root_and_btrfs();
    let t = TempDir::new("cairn-contract-btrfs");
    let state = t.path();
    let kind = storage::kind("btrfs").unwrap();
    let paths = PoolPaths::new(state, "b1");
    let recorded = (kind.create)("b1", &cfg(&[("size", "1GiB")]), &paths).unwrap();
    assert_eq!(
        recorded.get("source").map(String::as_str),
        Some(state.join("disks/b1.img").to_str().unwrap())
    );
    assert_eq!(recorded.get("size").map(String::as_str), Some("1GiB"));
    assert_eq!(
        recorded.get("btrfs.mount_options").map(String::as_str),
        Some("user_subvol_rm_allowed")
    );
    let pool = (kind.open)("b1", &recorded, &paths).unwrap();
    let space = pool.space().unwrap();
    assert!(
        space.total > 900 << 20 && space.total <= 1 << 30,
        "a 1 GiB pool: {space:?}"
    );
    contract(pool.as_ref());

    // After a reboot the pool is mounted again from the record, with its data.
    pool.create_image("keep", &mut |d: &Path| fill_image(d))
        .unwrap();
    let st = Command::new("umount").arg(&paths.mount).status().unwrap();
    assert!(st.success());
    let pool = (kind.open)("b1", &recorded, &paths).unwrap();
    assert!(pool.has_image("keep"), "the image survives a remount");

    // The next launch takes the spare clone made in the background after the last one.
    let shift = IdShift::from_subid("root:100000:65536\n", "root:100000:65536\n");
    pool.create_instance_from_image("keep", "w1", shift)
        .unwrap();
    let spare = paths.mount.join("images/keep.spare-100000-100000");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !spare.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(spare.exists(), "a spare clone is made after a launch");
    pool.create_instance_from_image("keep", "w2", shift)
        .unwrap();
    let f = pool.rootfs_path("w2").join("etc/hostname");
    assert_eq!(fs::read_to_string(&f).unwrap(), "img");
    assert_eq!(fs::metadata(&f).unwrap().uid(), 100000);
    pool.delete_instance("w1").unwrap();
    pool.delete_instance("w2").unwrap();

    // A file written past the pool's end fails with ENOSPC and leaves the pool usable.
    pool.create_instance_from_image("keep", "big", IdShift::IDENTITY)
        .unwrap();
    let r = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = fs::File::create(pool.rootfs_path("big").join("fill"))?;
        let block = vec![0xa5u8; 1 << 20];
        for _ in 0..2048 {
            f.write_all(&block)?;
        }
        f.sync_all()
    })();
    let e = r.expect_err("a 2 GiB write into a 1 GiB pool must fail");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    pool.delete_instance("big").unwrap();
    // An image that does not fit fails as a full pool and leaves nothing behind.
    let e = pool
        .create_image("huge", &mut |d: &Path| {
            fill_image(d)?;
            let mut f = fs::File::create(d.join("rootfs/zeros")).map_err(|e| e.to_string())?;
            let block = vec![0x5au8; 1 << 20];
            for _ in 0..2048 {
                std::io::Write::write_all(&mut f, &block)
                    .map_err(|e| format!("writing rootfs/zeros: {e}"))?;
            }
            Ok(())
        })
        .expect_err("a 2 GiB image in a 1 GiB pool");
    assert!(matches!(e, storage::StorageError::Full { .. }), "{e}");
    assert!(!e.is_bad_input());
    println!("{e}");
    assert!(!pool.has_image("huge"));
    let left: Vec<_> = fs::read_dir(paths.mount.join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("huge"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    pool.create_instance_from_image("keep", "after", IdShift::IDENTITY)
        .unwrap();
    assert!(pool.rootfs_path("after").join("etc/hostname").exists());
    pool.delete_instance("after").unwrap();

    pool.destroy().unwrap();
    assert!(
        !state.join("disks/b1.img").exists(),
        "the loop file is removed"
    );
    assert!(!paths.mount.exists());
}

#[test]
fn btrfs_on_a_block_device_refuses_what_it_must() {
    require_root_and_btrfs();
    let t = TempDir::new("cairn-contract-btrfs-dev");
    let state = t.path();
    let kind = storage::kind("btrfs").unwrap();

    // Bad input, before anything is touched.
    let bad = |config: PoolConfig| {
        let e = (kind.create)("b2", &config, &PoolPaths::new(state, "b2")).expect_err("refused");
        assert!(e.is_bad_input(), "{e}");
        e.to_string()
    };
    assert_eq!(bad(cfg(&[("bogus", "1")])), "Invalid option \"bogus\"");
    assert!(bad(cfg(&[("size", "lots")])).contains("size"));
    assert!(bad(cfg(&[("size", "1MiB")])).contains("at least"));
    assert!(bad(cfg(&[("source", "relative/path")])).contains("absolute"));
    assert!(bad(cfg(&[("source", "/dev/cairn-no-such-disk")])).contains("does not exist"));
    // A directory not on btrfs.
    let plain = state.join("plain");
    fs::create_dir(&plain).unwrap();
    let on = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&plain)
        .output()
        .unwrap();
    if String::from_utf8_lossy(&on.stdout).trim() != "btrfs" {
        assert!(bad(cfg(&[("source", plain.to_str().unwrap())])).contains("not on a btrfs"));
    }

    // A device holding a filesystem is refused unless source.wipe=true.
    let img = state.join("dev.img");
    fs::File::create(&img).unwrap().set_len(512 << 20).unwrap();
    let dev = LoopDevice::attach(&img);
    let st = Command::new("mkfs.ext4")
        .arg("-q")
        .arg(&dev.0)
        .status()
        .unwrap();
    assert!(st.success());
    let with_dev = |extra: &[(&str, &str)]| {
        let mut c = cfg(&[("source", dev.0.to_str().unwrap())]);
        c.extend(cfg(extra));
        c
    };
    let msg = bad(with_dev(&[]));
    assert!(msg.contains("ext4") && msg.contains("source.wipe"), "{msg}");
    assert!(bad(with_dev(&[("size", "1GiB")])).contains("whole device"));

    // Mounted devices are refused even with wipe.
    let mnt = state.join("mnt");
    fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount")
        .arg(&dev.0)
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let msg = bad(with_dev(&[("source.wipe", "true")]));
    assert!(msg.contains("is mounted on"), "{msg}");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());

    let paths = PoolPaths::new(state, "b2");
    let recorded = (kind.create)("b2", &with_dev(&[("source.wipe", "true")]), &paths).unwrap();
    assert!(
        !recorded.contains_key("source.wipe"),
        "wipe is a one-time action"
    );
    let pool = (kind.open)("b2", &recorded, &paths).unwrap();
    contract(pool.as_ref());
    pool.destroy().unwrap();
    assert_eq!(
        String::from_utf8_lossy(
            &Command::new("blkid")
                .args(["-p", "-s", "TYPE", "-o", "value"])
                .arg(&dev.0)
                .output()
                .unwrap()
                .stdout
        )
        .trim(),
        "btrfs"
    );
    drop(dev);
}
