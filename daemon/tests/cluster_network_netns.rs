//! Bridge networks in a cluster through the real incus CLI: three cairnd members, each in
//! a network namespace of its own plugged into a hub bridge in another, form a cluster.
//! A network defined member by member (`--target`, PENDING) then created (CREATED) is a
//! bridge with the same subnet on every member; one nobody defined is made on every member
//! at once; a subnet routed on one member only is refused by that member and leaves
//! nothing on the others; containers on two members get leases from their own member's
//! dnsmasq, listed together; a change reaches every bridge; delete removes them all.
//! Needs root, `ip`, `nft` and `dnsmasq`; fails loudly without them.

#[path = "common/cluster.rs"]
mod cluster_fixture;
mod common;
#[path = "common/netns.rs"]
mod netns;

use std::time::Duration;

use cluster_fixture::*;
use netns::{in_ns, in_ns_fails, ip, DnsmasqReaper, Namespaces};

fn tools_present() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cluster_network_netns needs root (network namespaces, bridges, nftables)"
    );
    for t in ["ip", "nft", "dnsmasq"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "cluster_network_netns needs {t}: bash scripts/install-deps.sh"
        );
    }
}

/// Whether `bridge` in namespace `ns` has `addr` (as `ip -br addr` shows it).
fn has_addr(ns: &str, bridge: &str, addr: &str) -> bool {
    !in_ns_fails(ns, &["ip", "link", "show", bridge])
        && in_ns(ns, &["ip", "-br", "addr", "show", bridge]).contains(addr)
}

#[test]
fn bridges_on_every_member_pending_then_created() {
    tools_present();
    let pid = std::process::id();
    let hub = format!("cairncn{pid}h");
    let mut ns = Namespaces(vec![]);
    ns.add(&hub);
    ip(&["-n", &hub, "link", "add", "hub0", "type", "bridge"]);
    ip(&["-n", &hub, "link", "set", "hub0", "up"]);
    let mut members = Vec::new();
    for i in 1..=3 {
        let m = format!("cairncn{pid}m{i}");
        ns.add(&m);
        let port = format!("h{i}");
        ip(&[
            "-n", &m, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &hub,
        ]);
        ip(&["-n", &hub, "link", "set", &port, "master", "hub0", "up"]);
        let addr = format!("192.0.2.{i}");
        ip(&[
            "-n",
            &m,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &m, "link", "set", "eth0", "up"]);
        ip(&["-n", &m, "link", "set", "lo", "up"]);
        members.push((m, addr));
    }
    let c = Cluster::start_in_netns(&members);
    let _reapers: Vec<DnsmasqReaper> =
        c.m.iter()
            .map(|m| DnsmasqReaper(m.d.state.join("networks")))
            .collect();
    let (n1, n3) = (&c.m[0], &c.m[2]);
    c.form();
    c.wait_all_online(n1, &["node1", "node2", "node3"], Duration::from_secs(30));
    let nsn = |i: usize| members[i].0.as_str();

    // Defined member by member: Pending, nothing made yet.
    c.ok(n1, &["network", "create", "br1", "--target", "node1"]);
    let e = c.err(n1, &["network", "create", "br1", "--target", "node1"]);
    assert!(e.contains("already defined on member"), "{e}");
    let e = c.err(
        n1,
        &[
            "network",
            "create",
            "br1",
            "--target",
            "node2",
            "ipv4.nat=true",
        ],
    );
    assert!(e.contains("member-specific"), "{e}");
    let e = c.err(n1, &["network", "create", "br1", "--target", "node9"]);
    assert!(e.contains("node9"), "{e}");
    let e = c.err(
        n1,
        &["network", "create", "br1", "ipv4.address=10.44.0.1/24"],
    );
    assert!(e.contains("node2, node3") && e.contains("--target"), "{e}");
    let list = c.ok(n3, &["network", "list", "--format", "csv"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("br1,bridge,YES,") && l.ends_with(",PENDING")),
        "{list}"
    );
    assert!(in_ns_fails(nsn(0), &["ip", "link", "show", "br1"]));
    c.ok(n3, &["network", "create", "br1", "--target", "node2"]);
    c.ok(n1, &["network", "create", "br1", "--target", "node3"]);
    c.ok(
        n1,
        &[
            "network",
            "create",
            "br1",
            "ipv4.address=10.44.0.1/24",
            "ipv4.nat=true",
        ],
    );
    let show = c.ok(n3, &["network", "show", "br1"]);
    assert!(show.contains("status: Created"), "{show}");
    for node in ["node1", "node2", "node3"] {
        assert!(show.contains(&format!("- {node}")), "{show}");
    }
    for i in 0..3 {
        assert!(
            has_addr(nsn(i), "br1", "10.44.0.1/24"),
            "br1 on node{}",
            i + 1
        );
        let table = in_ns(nsn(i), &["nft", "list", "table", "inet", "cairn_br1"]);
        assert!(table.contains("masquerade"), "{table}");
    }
    let e = c.err(n1, &["network", "create", "br1", "--target", "node2"]);
    assert!(e.contains("already created"), "{e}");

    // A subnet only node3 routes: node3 refuses it, and nothing stays anywhere.
    // (A veth pair: this kernel has no dummy links.)
    ip(&[
        "-n",
        nsn(2),
        "link",
        "add",
        "side0",
        "type",
        "veth",
        "peer",
        "name",
        "side1",
    ]);
    ip(&["-n", nsn(2), "addr", "add", "10.55.0.9/24", "dev", "side0"]);
    ip(&["-n", nsn(2), "link", "set", "side1", "up"]);
    ip(&["-n", nsn(2), "link", "set", "side0", "up"]);
    let e = c.err(
        n1,
        &["network", "create", "br3", "ipv4.address=10.55.0.1/24"],
    );
    assert!(
        e.contains("node3") && e.contains("overlaps") && e.contains("10.55.0"),
        "{e}"
    );
    for i in 0..3 {
        assert!(
            in_ns_fails(nsn(i), &["ip", "link", "show", "br3"]),
            "br3 left on node{}",
            i + 1
        );
    }
    let list = c.ok(n1, &["network", "list", "--format", "csv"]);
    assert!(!list.contains("br3"), "{list}");

    // Nobody defined it: made on every member at once, as Incus makes such types.
    c.ok(
        n3,
        &["network", "create", "br4", "ipv4.address=10.66.0.1/24"],
    );
    for i in 0..3 {
        assert!(
            has_addr(nsn(i), "br4", "10.66.0.1/24"),
            "br4 on node{}",
            i + 1
        );
    }

    // Containers on node1 and node3: each leased by its own member's dnsmasq.
    let img = common::busybox_image().to_string_lossy().into_owned();
    c.ok(n1, &["image", "import", &img, "--alias", "bb"]);
    for (name, node) in [("c1", "node1"), ("c3", "node3")] {
        c.ok(
            n1,
            &["launch", "bb", name, "--target", node, "--network", "br1"],
        );
    }
    let leases = c.poll("both leases", Duration::from_secs(60), || {
        let out = n1.run(&["network", "list-leases", "br1", "--format", "csv"]);
        let text = text(&out.stdout);
        let both = ["c1", "c3"].iter().all(|n| {
            text.lines()
                .any(|l| l.starts_with(&format!("{n},")) && l.contains(",10.44.0."))
        });
        both.then_some(text.clone()).ok_or(text)
    });
    assert!(
        leases
            .lines()
            .any(|l| l.starts_with("c1,") && l.ends_with(",node1")),
        "{leases}"
    );
    assert!(
        leases
            .lines()
            .any(|l| l.starts_with("c3,") && l.ends_with(",node3")),
        "{leases}"
    );
    let listed = c.ok(n1, &["list", "c3", "-c", "4", "--format", "csv"]);
    assert!(listed.contains("10.44.0."), "{listed}");
    // (The 6.0 CLI's list-leases has no --target; the API has.)
    let own = c.ok(n1, &["query", "/1.0/networks/br1/leases?target=node3"]);
    assert!(
        own.contains("\"c3\"") && !own.contains("\"c1\"") && own.contains("node3"),
        "{own}"
    );
    let info = c.ok(n1, &["network", "info", "br1", "--target", "node3"]);
    assert!(info.contains("10.44.0.1/24"), "{info}");

    // A change reaches every member's bridge; a target does not apply to one.
    c.ok(n3, &["network", "set", "br1", "bridge.mtu=1400"]);
    for i in 0..3 {
        let link = in_ns(nsn(i), &["ip", "link", "show", "br1"]);
        assert!(link.contains("mtu 1400"), "node{}: {link}", i + 1);
    }
    let e = c.err(
        n1,
        &[
            "network",
            "set",
            "br1",
            "bridge.mtu=1300",
            "--target",
            "node2",
        ],
    );
    assert!(e.contains("member-specific"), "{e}");

    // In use: refused; then gone from every member.
    let e = c.err(n1, &["network", "delete", "br1"]);
    assert!(e.contains("in use"), "{e}");
    c.ok(n1, &["delete", "--force", "c1", "c3"]);
    c.ok(n3, &["network", "delete", "br1"]);
    c.ok(n1, &["network", "delete", "br4"]);
    for i in 0..3 {
        for br in ["br1", "br4"] {
            assert!(
                in_ns_fails(nsn(i), &["ip", "link", "show", br]),
                "{br} left on node{}",
                i + 1
            );
        }
        assert!(in_ns_fails(
            nsn(i),
            &["nft", "list", "table", "inet", "cairn_br1"]
        ));
    }
}
