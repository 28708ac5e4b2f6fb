//! A btrfs pool through the real incus CLI: create (a loop file under the state dir),
//! launch, root disk quota enforced inside the container, snapshot and restore, copy,
//! space reported, bad input refused, and delete removing the loop file.

mod common;

use std::process::Command;

use common::{require_btrfs, MountGuard, TestDaemon};

#[test]
fn a_btrfs_pool_through_the_incus_cli() {
    require_btrfs("storage_btrfs");
    let d = TestDaemon::start();
    let _guard = MountGuard(d.state.join("storage-pools/fast"));

    // Bad input first: nothing is made, the daemon keeps serving.
    let e = d.incus_err(&["storage", "create", "bad", "btrfs", "bogus=1"]);
    assert!(e.contains("Invalid option \"bogus\""), "{e}");
    let e = d.incus_err(&["storage", "create", "bad", "btrfs", "size=lots"]);
    assert!(e.contains("size"), "{e}");
    let e = d.incus_err(&["storage", "create", "bad", "zfz"]);
    assert!(
        e.contains("Unknown storage driver") && e.contains("btrfs"),
        "{e}"
    );
    let e = d.incus_err(&[
        "storage",
        "create",
        "bad",
        "btrfs",
        "source=/dev/cairn-none",
    ]);
    assert!(e.contains("does not exist"), "{e}");
    assert!(!d.state.join("disks/bad.img").exists());

    d.incus_ok(&["storage", "create", "fast", "btrfs", "size=2GiB"]);
    let img = d.state.join("disks/fast.img");
    assert!(img.is_file(), "the loop file is under the state dir");
    let list = d.incus_ok(&["storage", "list", "--format", "csv"]);
    assert!(list.contains("fast,btrfs,"), "{list}");
    let show = d.incus_ok(&["storage", "show", "fast"]);
    assert!(show.contains("size: 2GiB"), "{show}");
    assert!(
        show.contains("btrfs.mount_options: user_subvol_rm_allowed"),
        "{show}"
    );
    let e = d.incus_err(&["storage", "create", "fast", "btrfs"]);
    assert!(e.contains("already exists"), "{e}");
    let e = d.incus_err(&["storage", "set", "fast", "size=1GiB"]);
    assert!(e.contains("cannot shrink"), "{e}");
    let e = d.incus_err(&["storage", "set", "fast", "size=lots"]);
    assert!(e.contains("Invalid value"), "{e}");
    d.incus_ok(&["storage", "set", "fast", "user.note=kept"]);

    // The pool's resources endpoint (what `incus storage info` shows) is measured.
    let res = d.incus_ok(&["query", "/1.0/storage-pools/fast/resources"]);
    let res: serde_json::Value = serde_json::from_str(&res).unwrap();
    let total = res["space"]["total"].as_u64().unwrap();
    let used = res["space"]["used"].as_u64().unwrap();
    assert!(total > 1900 << 20 && total <= 2 << 30, "{res}");
    assert!(used < total, "{res}");
    println!("pool fast: {used} of {total} bytes used");
    // A loop-backed pool grows: the file, the loop device, then the filesystem.
    d.incus_ok(&["storage", "set", "fast", "size=3GiB"]);
    let res = d.incus_ok(&["query", "/1.0/storage-pools/fast/resources"]);
    let res: serde_json::Value = serde_json::from_str(&res).unwrap();
    let grown = res["space"]["total"].as_u64().unwrap();
    assert!(grown > 2900 << 20, "after growing to 3GiB: {res}");
    assert!(d
        .incus_ok(&["storage", "show", "fast"])
        .contains("size: 3GiB"));
    println!("pool fast grown: {total} -> {grown} bytes");

    d.import_busybox("bb");
    d.incus_ok(&["launch", "bb", "c1", "-s", "fast"]);
    assert_eq!(d.incus_ok(&["exec", "c1", "--", "hostname"]).trim(), "c1");
    let vols = d.incus_ok(&["storage", "volume", "list", "fast", "--format", "csv"]);
    assert!(vols.contains("container,c1"), "{vols}");
    assert!(vols.contains("image,"), "{vols}");

    // The root disk's size is a btrfs qgroup limit, enforced inside the container.
    d.incus_ok(&["config", "device", "set", "c1", "root", "size=64MiB"]);
    let out = d.incus(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=200 conv=fsync 2>&1; sync",
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || said.contains("quota") || said.contains("No space"),
        "a 200 MiB write under a 64 MiB root must fail: {said}"
    );
    assert!(said.contains("quota") || said.contains("space"), "{said}");
    println!(
        "200 MiB dd under a 64 MiB root: {}",
        said.lines().next().unwrap_or_default()
    );
    d.incus_ok(&["exec", "c1", "--", "rm", "-f", "/big"]);
    // A dir pool refuses the size rather than ignore it.
    d.incus_ok(&["init", "bb", "onDir"]);
    let e = d.incus_err(&["config", "device", "override", "onDir", "root", "size=1GiB"]);
    assert!(e.contains("quotas"), "{e}");
    let e = d.incus_err(&["profile", "device", "set", "default", "root", "size=1GiB"]);
    assert!(
        e.contains("quotas"),
        "a profile size reaching a dir instance: {e}"
    );
    d.incus_ok(&["delete", "onDir"]);

    // A profile's root size reaches the instances using it, now and when it changes.
    d.incus_ok(&["profile", "create", "small"]);
    d.incus_ok(&[
        "profile",
        "device",
        "add",
        "small",
        "root",
        "disk",
        "path=/",
        "pool=fast",
        "size=32MiB",
    ]);
    d.incus_ok(&["init", "bb", "c3", "-p", "default", "-p", "small"]);
    let limit = |name: &str| {
        let vol = d.state.join("storage-pools/fast/containers").join(name);
        let show = Command::new("btrfs")
            .args(["subvolume", "show"])
            .arg(&vol)
            .output()
            .unwrap();
        let id = String::from_utf8_lossy(&show.stdout)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Subvolume ID:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap();
        let q = Command::new("btrfs")
            .args(["qgroup", "show", "-r", "--raw"])
            .arg(d.state.join("storage-pools/fast"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&q.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&format!("0/{id}")))
            .and_then(|l| l.split_whitespace().nth(3).map(String::from))
            .unwrap_or_default()
    };
    assert_eq!(limit("c3"), (32u64 << 20).to_string());
    d.incus_ok(&["profile", "device", "set", "small", "root", "size=48MiB"]);
    assert_eq!(limit("c3"), (48u64 << 20).to_string());
    d.incus_ok(&["delete", "c3"]);

    // Snapshot and restore: a snapshot is a read-only btrfs snapshot.
    d.incus_ok(&["exec", "c1", "--", "sh", "-c", "echo before > /marker"]);
    d.incus_ok(&["snapshot", "create", "c1", "s1"]);
    assert!(d
        .state
        .join("storage-pools/fast/containers-snapshots/c1/s1/rootfs/marker")
        .is_file());
    d.incus_ok(&["exec", "c1", "--", "sh", "-c", "echo after > /marker"]);
    d.incus_ok(&["snapshot", "restore", "c1", "s1"]);
    assert_eq!(
        d.incus_ok(&["exec", "c1", "--", "cat", "/marker"]).trim(),
        "before"
    );

    // Copy: a snapshot of the volume, with the instance's snapshots.
    d.incus_ok(&["copy", "c1", "c2"]);
    d.incus_ok(&["start", "c2"]);
    assert_eq!(
        d.incus_ok(&["exec", "c2", "--", "cat", "/marker"]).trim(),
        "before"
    );
    let snaps = d.incus_ok(&["snapshot", "list", "c2", "--format", "csv"]);
    assert!(snaps.contains("s1"), "{snaps}");

    // A pool in use is not deleted.
    let e = d.incus_err(&["storage", "delete", "fast"]);
    assert!(e.contains("in use"), "{e}");

    // After a reboot (daemon killed, pool unmounted) the pool is mounted again from its
    // record and its instances start.
    d.incus_ok(&["stop", "c1", "c2", "--force"]);
    let mut d = d;
    d.kill9();
    let st = Command::new("umount")
        .arg(d.state.join("storage-pools/fast"))
        .status()
        .unwrap();
    assert!(st.success());
    d.spawn();
    d.incus_ok(&["start", "c1"]);
    assert_eq!(
        d.incus_ok(&["exec", "c1", "--", "cat", "/marker"]).trim(),
        "before"
    );

    d.incus_ok(&["delete", "c1", "c2", "--force"]);
    let e = d.incus_err(&["storage", "delete", "fast"]);
    assert!(e.contains("in use"), "a profile still names the pool: {e}");
    d.incus_ok(&["profile", "delete", "small"]);
    d.incus_ok(&["storage", "delete", "fast"]);
    assert!(!img.exists(), "deleting the pool removes its loop file");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(d.state.join("storage-pools/fast").to_str().unwrap()),
        "deleting the pool unmounts it"
    );
    let list = d.incus_ok(&["storage", "list", "--format", "csv"]);
    assert!(!list.contains("fast"), "{list}");
}
