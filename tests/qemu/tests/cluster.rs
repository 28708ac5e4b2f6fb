//! The QEMU tier's cluster scenario: three appliance nodes from one seed form a cluster,
//! then share a zfs pool and an OVN overlay. `#[ignore]`d like the other QEMU tests; run
//! by tests/qemu/run-tier.sh after the image is built.

mod common;

use cairn_lab::image;
use cairn_lab::node::{Node, NodeConfig};
use cairn_lab::{accel, api};
use common::{lab, wait_for_ipv4, BOOT};
use std::time::Duration;

/// Three appliance nodes whose seeds share a `cluster:` section form a cluster by
/// themselves on their management network (a hub only they share); the real incus CLI,
/// through one node, sees all three Online and places a container on another node.
#[test]
#[ignore = "QEMU tier: needs the built image"]
fn three_nodes_with_one_seed_form_a_cluster() {
    let lab = lab("cluster");
    assert!(
        lab.api,
        "the image has no cairnd: build it with a cairnd binary"
    );
    let hub = cairn_lab::hub::spawn_in_thread(&lab.dir.join("hub")).expect("hub");
    let secret = image::new_cluster_secret().expect("secret");
    let mut nodes: Vec<Node> = (1..=3u8)
        .map(|i| {
            let name = format!("cnode{i}");
            let mut cfg = NodeConfig::new(&name, &lab.image, accel::detect());
            cfg.index = i;
            cfg.mgmt_hub = Some(hub.clone());
            cfg.seed = image::with_cluster(
                &image::seed_for_node(&cfg, &lab.cert).expect("seed"),
                &secret,
                3,
                cfg.accel,
            );
            Node::create(cfg, &lab.dir).expect("create node")
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start().expect("start QEMU");
    }
    for n in nodes.iter_mut() {
        n.wait_for("cairn: API ready", BOOT)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let first = nodes[0].api_url();
    api::wait_trusted(&lab.cert, &first, Duration::from_secs(60)).expect("trusted");
    let members =
        api::wait_cluster(&lab.cert, &first, 3, Duration::from_secs(180)).unwrap_or_else(|e| {
            panic!(
                "{e}\n{}",
                nodes
                    .iter()
                    .map(|n| format!("--- {}\n{}", n.name(), n.tail(40)))
                    .collect::<String>()
            )
        });
    assert_eq!(members, ["cnode1", "cnode2", "cnode3"]);

    let token = api::trust_token_retrying(&lab.cert, &first, "cli", Duration::from_secs(90))
        .expect("trust token");
    let run = lab.incus();
    run(&[
        "remote",
        "add",
        "rack",
        &first,
        "--token",
        &token,
        "--accept-certificate",
    ]);
    let list = run(&["cluster", "list", "rack:", "--format", "csv", "-c", "ns"]);
    for name in ["cnode1", "cnode2", "cnode3"] {
        assert!(list.contains(&format!("{name},ONLINE")), "{list}");
    }
    let tarball = lab.busybox_image();
    run(&[
        "image",
        "import",
        tarball.to_str().unwrap(),
        "rack:",
        "--alias",
        "busybox",
    ]);
    run(&["launch", "rack:busybox", "rack:c1", "--target", "cnode2"]);
    let where_ = run(&["list", "rack:", "--format", "csv", "-c", "nsL"]);
    assert!(where_.contains("c1,RUNNING,cnode2"), "{where_}");
    let host = run(&["exec", "rack:c1", "--", "hostname"]);
    assert_eq!(host.trim(), "c1");
    // Every member made the cluster's cairnbr0 (a joiner's own first-boot bridge took the
    // cluster's config): the container on cnode2 gets an address from it.
    let nets = run(&["network", "list", "rack:", "--format", "csv"]);
    assert!(nets.contains("cairnbr0,bridge,YES"), "network list: {nets}");
    let addr = wait_for_ipv4(&run, "rack:c1", Duration::from_secs(90));
    println!("c1 on cnode2 has {addr}");

    // The cluster's own OVN (every member a chassis, the databases on the three): an
    // overlay made through the API serves containers on cnode1 and cnode3, which ping
    // each other across Geneve on the management hub, by address and by name.
    let creating = std::time::Instant::now();
    loop {
        let (ok, out) = lab.incus_status(&[
            "network",
            "create",
            "rack:ovn0",
            "--type=ovn",
            "network=none",
        ]);
        if ok {
            break;
        }
        assert!(
            creating.elapsed() < Duration::from_secs(180),
            "the cluster's OVN never took a network: {out}\n{}",
            nodes
                .iter()
                .map(|n| format!("--- {}\n{}", n.name(), n.tail(30)))
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    println!(
        "OVN ready for a network {:.1} s after the cluster listed 3 members",
        creating.elapsed().as_secs_f64()
    );
    let t = std::time::Instant::now();
    run(&["network", "delete", "rack:ovn0"]);
    run(&[
        "network",
        "create",
        "rack:ovn0",
        "--type=ovn",
        "network=none",
    ]);
    println!(
        "incus network delete + create --type=ovn on 3 TCG members: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let launching = std::time::Instant::now();
    run(&[
        "launch",
        "rack:busybox",
        "rack:o1",
        "--target",
        "cnode1",
        "--network",
        "ovn0",
    ]);
    run(&[
        "launch",
        "rack:busybox",
        "rack:o3",
        "--target",
        "cnode3",
        "--network",
        "ovn0",
    ]);
    let a1 = wait_for_ipv4(&run, "rack:o1", Duration::from_secs(120));
    let a3 = wait_for_ipv4(&run, "rack:o3", Duration::from_secs(120));
    println!(
        "two launches -> both IPv4 from OVN: {:.1} s ({a1}; {a3})",
        launching.elapsed().as_secs_f64()
    );
    let ip3 = a3
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let mut pinged = false;
    for _ in 0..20 {
        if lab
            .incus_status(&["exec", "rack:o1", "--", "ping", "-c1", "-W3", &ip3])
            .0
        {
            pinged = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(pinged, "o1 (cnode1) cannot ping o3 (cnode3) at {ip3}");
    let rtt = run(&["exec", "rack:o1", "--", "ping", "-c5", "-q", &ip3]);
    println!(
        "o1 -> o3 across Geneve: {}",
        rtt.lines().last().unwrap_or_default()
    );
    let gw = run(&["network", "get", "rack:ovn0", "ipv4.address"]);
    let gw = gw.trim().split('/').next().unwrap_or_default().to_string();
    let ns = run(&["exec", "rack:o3", "--", "nslookup", "o1.incus", &gw]);
    let ip1 = a1
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    assert!(ns.contains(&ip1), "o1.incus from o3: {ns}");
    let leases = run(&["network", "list-leases", "rack:ovn0", "--format", "csv"]);
    assert!(leases.contains("o1") && leases.contains("o3"), "{leases}");
    run(&["delete", "--force", "rack:o1"]);
    run(&["delete", "--force", "rack:o3"]);
    run(&["network", "delete", "rack:ovn0"]);

    // Every member made its share of the zfs default pool on its own data disk; a stopped
    // container moves between members as a zfs send stream, snapshots and all.
    let pools = run(&["storage", "list", "rack:", "--format", "csv"]);
    assert!(pools.contains("default,zfs"), "storage list: {pools}");
    let info = run(&["storage", "info", "rack:default", "--target", "cnode3"]);
    println!("storage info on cnode3:\n{info}");
    run(&[
        "exec",
        "rack:c1",
        "--",
        "sh",
        "-c",
        "echo moved > /root/mark",
    ]);
    run(&["snapshot", "create", "rack:c1", "s1"]);
    // 32 MiB of random data (compression=on: zeros would travel as nothing), so the
    // copy's throughput says something.
    run(&[
        "exec",
        "rack:c1",
        "--",
        "dd",
        "if=/dev/urandom",
        "of=/root/data",
        "bs=1M",
        "count=32",
    ]);
    // Each member recorded the share it made from its preseed.
    let share = run(&[
        "storage",
        "get",
        "rack:default",
        "source",
        "--target",
        "cnode3",
    ]);
    assert!(
        share.trim().starts_with("/dev/"),
        "cnode3's source: {share}"
    );
    // Copied while it runs, to the third member: zfs send of a snapshot of it.
    let copying = std::time::Instant::now();
    run(&["copy", "rack:c1", "rack:c1b", "--target", "cnode1"]);
    let secs = copying.elapsed().as_secs_f64();
    println!(
        "zfs copy cnode2 -> cnode1 of a container with 32 MiB of random data: {secs:.1} s, {:.1} MB/s",
        (32u64 << 20) as f64 / 1e6 / secs
    );
    run(&["start", "rack:c1b"]);
    let mark = run(&["exec", "rack:c1b", "--", "cat", "/root/mark"]);
    assert_eq!(mark.trim(), "moved", "the copy's file");
    let snaps = run(&["snapshot", "list", "rack:c1b", "--format", "csv"]);
    assert!(snaps.contains("s1"), "snapshots of the copy: {snaps}");
    run(&["delete", "--force", "rack:c1b"]);
    // A snapshot to another member: a local clone of it, sent as a volume of its own.
    run(&["copy", "rack:c1/s1", "rack:c1s", "--target", "cnode3"]);
    run(&["start", "rack:c1s"]);
    let mark = run(&["exec", "rack:c1s", "--", "cat", "/root/mark"]);
    assert_eq!(mark.trim(), "moved", "the snapshot copy's file");
    run(&["delete", "--force", "rack:c1s"]);
    run(&["stop", "--force", "rack:c1"]);
    let moving = std::time::Instant::now();
    run(&["move", "rack:c1", "--target", "cnode3"]);
    let secs = moving.elapsed().as_secs_f64();
    println!(
        "zfs move cnode2 -> cnode3: {secs:.1} s, {:.1} MB/s",
        (32u64 << 20) as f64 / 1e6 / secs
    );
    run(&["start", "rack:c1"]);
    let where_ = run(&["list", "rack:", "--format", "csv", "-c", "nsL"]);
    assert!(where_.contains("c1,RUNNING,cnode3"), "{where_}");
    let mark = run(&["exec", "rack:c1", "--", "cat", "/root/mark"]);
    assert_eq!(mark.trim(), "moved");
    let snaps = run(&["snapshot", "list", "rack:c1", "--format", "csv"]);
    assert!(snaps.contains("s1"), "snapshots after the move: {snaps}");
    for n in nodes.iter_mut() {
        n.shutdown(Duration::from_secs(120)).expect("power off");
    }
}
