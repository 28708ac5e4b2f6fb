//! Storage in a cluster through the real incus CLI, on two cairnd members on loopback:
//! a btrfs pool defined member by member (`--target`, PENDING) then created (CREATED), a
//! dir pool made on every member at once, `incus copy --target` and `incus move --target`
//! of a container with snapshots between members as `btrfs send` streams, and deleting
//! the pool removing every member's loop file. Prints the copy's throughput.

#[path = "common/cluster.rs"]
mod cluster_fixture;
mod common;

use std::time::{Duration, Instant};

use cluster_fixture::*;
use common::{require_btrfs, MountGuard};

#[test]
fn pools_per_member_and_copies_between_members() {
    require_btrfs("cluster_storage");
    let c = Cluster::start(2);
    let _mounts: Vec<MountGuard> =
        c.m.iter()
            .flat_map(|m| {
                ["fast", "plain"].map(|p| MountGuard(m.d.state.join(format!("storage-pools/{p}"))))
            })
            .collect();
    let (n1, n2) = (&c.m[0], &c.m[1]);
    c.form();
    c.wait_all_online(n1, &["node1", "node2"], Duration::from_secs(20));

    // Bad input: nothing is recorded.
    let e = c.err(n1, &["storage", "create", "fast", "btrfs", "size=1GiB"]);
    assert!(e.contains("is cluster member specific"), "{e}");
    let e = c.err(
        n1,
        &[
            "storage",
            "create",
            "fast",
            "btrfs",
            "btrfs.mount_options=noatime",
            "--target",
            "node1",
        ],
    );
    assert!(e.contains("may not be used as member-specific key"), "{e}");
    let e = c.err(
        n1,
        &["storage", "create", "fast", "btrfs", "--target", "node9"],
    );
    assert!(e.contains("node9"), "{e}");
    let list = c.ok(n1, &["storage", "list", "--format", "csv"]);
    assert!(!list.contains("fast"), "{list}");

    // Defined on node1: PENDING, and node2 must be defined too before the create.
    c.ok(
        n1,
        &[
            "storage",
            "create",
            "fast",
            "btrfs",
            "size=1200MiB",
            "--target",
            "node1",
        ],
    );
    let list = c.ok(n2, &["storage", "list", "--format", "csv"]);
    assert!(
        list.contains("fast,btrfs,") && list.contains("PENDING"),
        "{list}"
    );
    let e = c.err(
        n2,
        &["storage", "create", "fast", "zfs", "--target", "node2"],
    );
    assert!(e.contains("driver"), "{e}");
    let e = c.err(
        n2,
        &[
            "storage",
            "create",
            "fast",
            "btrfs",
            "size=1GiB",
            "--target",
            "node1",
        ],
    );
    assert!(e.contains("already defined on member"), "{e}");
    let e = c.err(n1, &["storage", "create", "fast", "btrfs"]);
    assert!(e.contains("Pool not defined on members: node2"), "{e}");
    c.ok(
        n2,
        &[
            "storage",
            "create",
            "fast",
            "btrfs",
            "size=1GiB",
            "--target",
            "node2",
        ],
    );
    c.ok(n2, &["storage", "create", "fast", "btrfs"]);
    let list = c.ok(n1, &["storage", "list", "--format", "csv"]);
    assert!(
        list.contains("fast,btrfs,") && list.contains("CREATED"),
        "{list}"
    );
    let e = c.err(n1, &["storage", "create", "fast", "btrfs"]);
    assert!(e.contains("already created"), "{e}");
    // Each member's own keys, seen with --target; the shared view has none of them.
    let show = c.ok(n1, &["storage", "show", "fast"]);
    assert!(
        !show.contains("size:") && show.contains("node1") && show.contains("node2"),
        "{show}"
    );
    let show2 = c.ok(n1, &["storage", "show", "fast", "--target", "node2"]);
    assert!(show2.contains("size: 1GiB"), "{show2}");
    let show1 = c.ok(n2, &["storage", "get", "fast", "size", "--target", "node1"]);
    assert_eq!(show1.trim(), "1200MiB");
    for m in &c.m {
        assert!(
            m.d.state.join("disks/fast.img").is_file(),
            "{}'s loop file",
            m.name
        );
    }
    let info = c.ok(n1, &["storage", "info", "fast", "--target", "node2"]);
    println!("incus storage info fast --target node2:\n{info}");
    assert!(info.contains("total space:"), "{info}");

    // One member's share grows; the shared view refuses a member key.
    let e = c.err(n1, &["storage", "set", "fast", "size=2GiB"]);
    assert!(e.contains("cluster member specific"), "{e}");
    let total = |m: &str| -> u64 {
        let res = c.ok(
            n1,
            &[
                "query",
                &format!("/1.0/storage-pools/fast/resources?target={m}"),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&res).unwrap();
        v["space"]["total"].as_u64().unwrap_or(0)
    };
    let before = total("node2");
    c.ok(
        n1,
        &[
            "storage",
            "set",
            "fast",
            "size=1500MiB",
            "--target",
            "node2",
        ],
    );
    let after = total("node2");
    println!("node2's share grown from 1GiB to 1500MiB: {before} -> {after} bytes");
    assert!(after >= before + (400 << 20), "{before} -> {after}");
    let size = c.ok(n2, &["storage", "get", "fast", "size", "--target", "node2"]);
    assert_eq!(size.trim(), "1500MiB");
    let size = c.ok(n2, &["storage", "get", "fast", "size", "--target", "node1"]);
    assert_eq!(size.trim(), "1200MiB", "node1's share is unchanged");

    // A dir pool with no member keys is made on every member at once.
    c.ok(n1, &["storage", "create", "plain", "dir"]);
    let img = common::busybox_image().to_string_lossy().into_owned();
    c.ok(n1, &["image", "import", &img, "--alias", "bb"]);
    c.ok(
        n1,
        &[
            "launch",
            "bb",
            "p1",
            "--target",
            "node2",
            "--storage",
            "plain",
        ],
    );
    c.ok(n1, &["delete", "--force", "p1"]);

    // A container on node1's share, with data and a snapshot.
    c.ok(
        n1,
        &[
            "launch",
            "bb",
            "c1",
            "--target",
            "node1",
            "--storage",
            "fast",
        ],
    );
    c.ok(
        n1,
        &["exec", "c1", "--", "sh", "-c", "echo one > /root/mark"],
    );
    c.ok(n1, &["snapshot", "create", "c1", "s1"]);
    c.ok(
        n1,
        &[
            "exec",
            "c1",
            "--",
            "dd",
            "if=/dev/urandom",
            "of=/root/data",
            "bs=1M",
            "count=200",
        ],
    );
    c.ok(
        n1,
        &["exec", "c1", "--", "sh", "-c", "echo two > /root/mark"],
    );

    // Copied to node2 while it runs: the volume and its snapshot, as btrfs send streams.
    let t = Instant::now();
    c.ok(n2, &["copy", "c1", "c2", "--target", "node2"]);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "incus copy --target of a container with 200 MiB of data: {secs:.2} s, {:.0} MB/s",
        (200u64 << 20) as f64 / 1e6 / secs
    );
    let list = c.instances(n1);
    assert!(list.contains(&row("c2", "STOPPED", "node2")), "{list:?}");
    c.ok(n1, &["start", "c2"]);
    let mark = c.ok(n1, &["exec", "c2", "--", "cat", "/root/mark"]);
    assert_eq!(mark.trim(), "two");
    let snaps = c.ok(n1, &["snapshot", "list", "c2", "--format", "csv"]);
    assert!(snaps.contains("s1"), "{snaps}");
    // What arrived is a subvolume with its snapshot: both snapshot and restore work.
    c.ok(n1, &["snapshot", "create", "c2", "s2"]);
    c.ok(n1, &["stop", "--force", "c2"]);
    c.ok(n1, &["snapshot", "restore", "c2", "s1"]);
    c.ok(n1, &["start", "c2"]);
    let mark = c.ok(n1, &["exec", "c2", "--", "cat", "/root/mark"]);
    assert_eq!(mark.trim(), "one", "c2 restored to s1");
    let copy_vol = n2.d.state.join("storage-pools/fast/containers/c2");
    assert!(copy_vol.is_dir(), "{}", copy_vol.display());

    // A custom volume lives on one member's share; requests about it go there.
    c.ok(
        n1,
        &[
            "storage",
            "volume",
            "create",
            "fast",
            "data",
            "size=64MiB",
            "--target",
            "node2",
        ],
    );
    assert!(n2.d.state.join("storage-pools/fast/custom/data").is_dir());
    let vols = c.ok(
        n1,
        &[
            "storage", "volume", "list", "fast", "--format", "csv", "-c", "tnL",
        ],
    );
    assert!(vols.contains("custom,data,node2"), "{vols}");
    let on1 = c.ok(
        n2,
        &[
            "query",
            "/1.0/storage-pools/fast/volumes/custom?target=node1",
        ],
    );
    assert!(!on1.contains("data"), "{on1}");
    let e = c.err(
        n2,
        &[
            "storage", "volume", "create", "fast", "data", "--target", "node1",
        ],
    );
    assert!(e.contains("already exists"), "{e}");
    c.ok(
        n1,
        &[
            "storage", "volume", "snapshot", "create", "fast", "data", "v1",
        ],
    );
    c.ok(
        n1,
        &[
            "config",
            "device",
            "add",
            "c2",
            "data",
            "disk",
            "pool=fast",
            "source=data",
            "path=/data",
        ],
    );
    c.ok(n1, &["exec", "c2", "--", "sh", "-c", "echo vol > /data/f"]);
    // An instance on the other member cannot mount it; one that mounts it stays.
    let e = c.err(
        n1,
        &[
            "config",
            "device",
            "add",
            "c1",
            "data",
            "disk",
            "pool=fast",
            "source=data",
            "path=/data",
        ],
    );
    assert!(e.contains("is on cluster member node2"), "{e}");
    c.ok(n1, &["stop", "--force", "c2"]);
    let e = c.err(n1, &["move", "c2", "--target", "node1"]);
    assert!(e.contains("detach it first"), "{e}");
    let e = c.err(n1, &["storage", "volume", "delete", "fast", "data"]);
    assert!(e.contains("in use") || e.contains("used by"), "{e}");
    c.ok(n1, &["config", "device", "remove", "c2", "data"]);
    let info = c.ok(n1, &["storage", "volume", "info", "fast", "data"]);
    assert!(info.contains("v1"), "{info}");
    c.ok(n1, &["storage", "volume", "delete", "fast", "data"]);
    assert!(!n2.d.state.join("storage-pools/fast/custom/data").exists());
    c.ok(n1, &["start", "c2"]);

    // --instance-only: no snapshots come along.
    c.ok(
        n1,
        &["copy", "c1", "c3", "--target", "node2", "--instance-only"],
    );
    let snaps = c.ok(n1, &["snapshot", "list", "c3", "--format", "csv"]);
    assert!(snaps.trim().is_empty(), "{snaps}");
    // Into a pool of another driver, file by file: from node1's btrfs to node2's dir
    // share, and on node2 from btrfs to dir; the snapshot comes along both times.
    c.ok(
        n1,
        &[
            "copy",
            "c1",
            "c5",
            "--target",
            "node2",
            "--storage",
            "plain",
        ],
    );
    c.ok(n2, &["copy", "c2", "c6", "--storage", "plain"]);
    for (name, want) in [("c5", "two"), ("c6", "one")] {
        let list = c.instances(n1);
        assert!(list.contains(&row(name, "STOPPED", "node2")), "{list:?}");
        let vol =
            n2.d.state
                .join(format!("storage-pools/plain/containers/{name}"));
        assert!(vol.is_dir(), "{}", vol.display());
        c.ok(n1, &["start", name]);
        let mark = c.ok(n1, &["exec", name, "--", "cat", "/root/mark"]);
        assert_eq!(mark.trim(), want, "{name}'s file");
        let snaps = c.ok(n1, &["snapshot", "list", name, "--format", "csv"]);
        assert!(snaps.contains("s1"), "{name}: {snaps}");
        c.ok(n1, &["stop", "--force", name]);
        c.ok(n1, &["snapshot", "restore", name, "s1"]);
        c.ok(n1, &["start", name]);
        let mark = c.ok(n1, &["exec", name, "--", "cat", "/root/mark"]);
        assert_eq!(mark.trim(), "one", "{name} restored to s1");
        c.ok(n1, &["delete", "--force", name]);
    }

    // A snapshot copied to the other member: its content, as a volume of its own.
    c.ok(n1, &["copy", "c1/s1", "c4", "--target", "node2"]);
    c.ok(n1, &["start", "c4"]);
    let mark = c.ok(n1, &["exec", "c4", "--", "cat", "/root/mark"]);
    assert_eq!(mark.trim(), "one", "c4 is c1 as of s1");
    let snaps = c.ok(n1, &["snapshot", "list", "c4", "--format", "csv"]);
    assert!(snaps.trim().is_empty(), "{snaps}");
    assert!(
        !n1.d
            .state
            .join("storage-pools/fast/containers/cairn-send-c1-s1")
            .exists(),
        "the staged copy is gone"
    );

    // Moved cold: node1 keeps nothing of it.
    c.ok(n1, &["stop", "--force", "c1"]);
    c.ok(n1, &["move", "c1", "--target", "node2"]);
    let list = c.instances(n2);
    assert!(list.contains(&row("c1", "STOPPED", "node2")), "{list:?}");
    assert!(!n1.d.state.join("storage-pools/fast/containers/c1").exists());
    c.ok(n2, &["snapshot", "create", "c1", "s3"]);
    let snaps = c.ok(n2, &["snapshot", "list", "c1", "--format", "csv"]);
    assert!(snaps.contains("s1") && snaps.contains("s3"), "{snaps}");

    let e = c.err(n1, &["storage", "delete", "fast"]);
    assert!(e.contains("in use"), "{e}");
    c.ok(n1, &["delete", "--force", "c1", "c2", "c3", "c4"]);
    c.ok(n1, &["storage", "delete", "fast"]);
    c.ok(n1, &["storage", "delete", "plain"]);
    for m in &c.m {
        assert!(
            !m.d.state.join("disks/fast.img").exists(),
            "{}'s loop file after the delete",
            m.name
        );
    }
    let list = c.ok(n2, &["storage", "list", "--format", "csv"]);
    assert!(!list.contains("fast") && !list.contains("plain"), "{list}");
}
