//! Custom storage volumes through the real incus CLI, on a btrfs pool (a loop file under
//! the state dir) and on the default dir pool: create with a size, bad input refused,
//! attached live to a running unprivileged container and written by its root, the size
//! enforced inside it, kept over a restart, refused delete while attached, detached live,
//! snapshotted and restored, resized, renamed, copied with its snapshots, attached to a
//! stopped container before its start, deleted.

mod common;

use common::{require_btrfs, MountGuard, TestDaemon};

#[test]
fn custom_volumes_through_the_incus_cli() {
    require_btrfs("storage_volumes");
    let d = TestDaemon::start();
    let _guard = MountGuard(d.state.join("storage-pools/fast"));
    d.incus_ok(&["storage", "create", "fast", "btrfs", "size=1GiB"]);
    d.import_busybox("bb");
    d.incus_ok(&["launch", "bb", "c1", "-s", "fast"]);

    d.incus_ok(&["storage", "volume", "create", "fast", "data", "size=32MiB"]);
    let list = d.incus_ok(&["storage", "volume", "list", "fast", "--format", "csv"]);
    assert!(list.contains("custom,data,"), "{list}");
    let vol = d.state.join("storage-pools/fast/custom/data");
    assert!(vol.is_dir(), "the volume is a subvolume under custom/");

    // Bad input: refused with a reason, nothing made, the daemon keeps serving.
    let e = d.incus_err(&["storage", "volume", "create", "fast", "data"]);
    assert!(e.contains("already exists"), "{e}");
    let e = d.incus_err(&["storage", "volume", "create", "fast", "v2", "bogus=1"]);
    assert!(e.contains("Invalid option \"bogus\""), "{e}");
    let e = d.incus_err(&["storage", "volume", "create", "fast", "v3", "size=lots"]);
    assert!(e.contains("size"), "{e}");
    let e = d.incus_err(&["storage", "volume", "create", "default", "v4", "size=1GiB"]);
    assert!(
        e.contains("quotas"),
        "a dir pool cannot enforce a size: {e}"
    );
    let e = d.incus_err(&["storage", "volume", "create", "fast", "blk", "--type=block"]);
    assert!(e.contains("not supported"), "{e}");
    let e = d.incus_err(&["storage", "volume", "create", "nopool", "v5"]);
    assert!(e.contains("not found"), "{e}");
    let e = d.incus_err(&[
        "config",
        "device",
        "add",
        "c1",
        "x",
        "disk",
        "pool=fast",
        "source=nosuch",
        "path=/x",
    ]);
    assert!(e.contains("doesn't exist"), "{e}");
    for v in ["v2", "v3", "v4", "blk", "v5"] {
        assert!(!d.state.join("storage-pools/fast/custom").join(v).exists());
    }

    // Attached to the running container: mounted now, writable by its (unprivileged) root.
    d.incus_ok(&["storage", "volume", "attach", "fast", "data", "c1", "/data"]);
    d.incus_ok(&["exec", "c1", "--", "sh", "-c", "echo hello > /data/f"]);
    assert_eq!(
        std::fs::read_to_string(vol.join("f")).unwrap().trim(),
        "hello"
    );
    let show = d.incus_ok(&["storage", "volume", "show", "fast", "data"]);
    assert!(show.contains("/1.0/instances/c1"), "used_by: {show}");
    assert!(show.contains("volatile.idmap.last"), "{show}");

    // The size is a qgroup limit, enforced inside the container.
    let out = d.incus(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/data/big bs=1M count=100 conv=fsync 2>&1; sync",
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("quota") || said.contains("space"),
        "a 100 MiB write into a 32 MiB volume must fail: {said}"
    );
    println!(
        "100 MiB dd into a 32 MiB volume: {}",
        said.lines().next().unwrap_or_default()
    );
    d.incus_ok(&["exec", "c1", "--", "rm", "-f", "/data/big"]);

    let e = d.incus_err(&["storage", "volume", "delete", "fast", "data"]);
    assert!(e.contains("still used by"), "{e}");
    let e = d.incus_err(&["storage", "volume", "rename", "fast", "data", "data9"]);
    assert!(e.contains("still used by"), "{e}");

    // A restart mounts it again from the instance's devices.
    d.incus_ok(&["restart", "c1", "--force"]);
    assert_eq!(
        d.incus_ok(&["exec", "c1", "--", "cat", "/data/f"]).trim(),
        "hello"
    );

    // Detached from the running container: gone from inside it now.
    d.incus_ok(&["storage", "volume", "detach", "fast", "data", "c1"]);
    let out = d.incus(&["exec", "c1", "--", "test", "-e", "/data/f"]);
    assert!(!out.status.success(), "the volume is still mounted in c1");

    // Snapshots: taken, listed, restored (the volume is not mounted by a running
    // instance now), renamed; `info` shows usage and snapshots.
    d.incus_ok(&[
        "storage", "volume", "snapshot", "create", "fast", "data", "s1",
    ]);
    std::fs::write(vol.join("f"), "changed\n").unwrap();
    d.incus_ok(&["storage", "volume", "snapshot", "create", "fast", "data"]);
    let snaps = d.incus_ok(&[
        "storage", "volume", "snapshot", "list", "fast", "data", "--format", "csv",
    ]);
    assert!(snaps.contains("s1") && snaps.contains("snap0"), "{snaps}");
    let info = d.incus_ok(&["storage", "volume", "info", "fast", "data"]);
    assert!(info.contains("Usage:") && info.contains("s1"), "{info}");
    d.incus_ok(&[
        "storage", "volume", "snapshot", "restore", "fast", "data", "s1",
    ]);
    assert_eq!(
        std::fs::read_to_string(vol.join("f")).unwrap().trim(),
        "hello"
    );
    let e = d.incus_err(&[
        "storage", "volume", "snapshot", "restore", "fast", "data", "nope",
    ]);
    assert!(e.contains("not found"), "{e}");
    d.incus_ok(&[
        "storage", "volume", "snapshot", "rename", "fast", "data", "snap0", "later",
    ]);
    d.incus_ok(&[
        "storage", "volume", "snapshot", "delete", "fast", "data", "later",
    ]);
    assert!(!d
        .state
        .join("storage-pools/fast/custom-snapshots/data/later")
        .exists());

    // Resize, rename, copy (with its snapshot).
    d.incus_ok(&["storage", "volume", "set", "fast", "data", "size=64MiB"]);
    assert_eq!(
        d.incus_ok(&["storage", "volume", "get", "fast", "data", "size"])
            .trim(),
        "64MiB"
    );
    d.incus_ok(&["storage", "volume", "rename", "fast", "data", "data2"]);
    d.incus_ok(&["storage", "volume", "copy", "fast/data2", "fast/data3"]);
    let copy = d.state.join("storage-pools/fast/custom/data3/f");
    assert_eq!(std::fs::read_to_string(copy).unwrap().trim(), "hello");
    let snaps = d.incus_ok(&[
        "storage", "volume", "snapshot", "list", "fast", "data3", "--format", "csv",
    ]);
    assert!(snaps.contains("s1"), "the copy has the snapshot: {snaps}");
    let state = d.incus_ok(&[
        "query",
        "/1.0/storage-pools/fast/volumes/custom/data2/state",
    ]);
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["usage"]["total"], 64 << 20, "{state}");
    assert!(state["usage"]["used"].as_u64().unwrap() > 0, "{state}");

    // Attached to a stopped container: mounted at its start.
    d.incus_ok(&["init", "bb", "c2", "-s", "fast"]);
    d.incus_ok(&[
        "config",
        "device",
        "add",
        "c2",
        "d",
        "disk",
        "pool=fast",
        "source=data3",
        "path=/mnt/d",
    ]);
    d.incus_ok(&["start", "c2"]);
    assert_eq!(
        d.incus_ok(&["exec", "c2", "--", "cat", "/mnt/d/f"]).trim(),
        "hello"
    );

    // A volume on the dir pool, attached live too.
    d.incus_ok(&["storage", "volume", "create", "default", "plain"]);
    d.incus_ok(&[
        "storage", "volume", "attach", "default", "plain", "c2", "/plain",
    ]);
    d.incus_ok(&["exec", "c2", "--", "sh", "-c", "echo dir > /plain/f"]);
    let e = d.incus_err(&["storage", "delete", "default"]);
    assert!(e.contains("in use"), "{e}");

    d.incus_ok(&["delete", "c1", "c2", "--force"]);
    for (pool, v) in [("fast", "data2"), ("fast", "data3"), ("default", "plain")] {
        d.incus_ok(&["storage", "volume", "delete", pool, v]);
    }
    let list = d.incus_ok(&["storage", "volume", "list", "fast", "--format", "csv"]);
    assert!(!list.contains("custom"), "{list}");
    assert!(!d.state.join("storage-pools/fast/custom/data2").exists());
    d.incus_ok(&["storage", "delete", "fast"]);
}
