//! macvlan NICs with the real incus CLI: cairnd runs in a network namespace this test
//! makes, whose `up0` is one end of a veth pair to an "outside" namespace. A container with
//! `nictype=macvlan parent=up0` reaches the outside directly (no bridge, no NAT); `incus
//! info` shows the address, MTU and counters measured in the container; NICs changed,
//! added (p2p, on a managed bridge) and removed while it runs are hotplugged. Bad input: a
//! parent that does not exist (the start is refused, the daemon runs on), keys that do not
//! apply to the NIC type. Needs root and `ip`; fails loudly without them.

mod common;

use std::time::{Duration, Instant};

use common::TestDaemon;

#[path = "common/netns.rs"]
mod netns;
use netns::{ip, Namespaces};

#[test]
fn a_macvlan_nic_reaches_the_parent_link() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "nic_macvlan_netns needs root (network namespaces)"
    );
    let pid = std::process::id();
    let (ns_d, ns_out) = (format!("cairnmv{pid}d"), format!("cairnmv{pid}o"));
    let mut ns = Namespaces(vec![]);
    ns.add(&ns_d);
    ns.add(&ns_out);
    ip(&["-n", &ns_d, "link", "set", "lo", "up"]);
    ip(&[
        "-n", &ns_d, "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", &ns_out,
    ]);
    ip(&["-n", &ns_d, "link", "set", "up0", "up"]);
    ip(&["-n", &ns_out, "addr", "add", "10.77.0.2/24", "dev", "out0"]);
    ip(&["-n", &ns_out, "link", "set", "out0", "up"]);
    let d = TestDaemon::start_in_netns(&ns_d);
    d.import_busybox("bb");

    // Keys that do not apply to the NIC's type are refused when the device is added.
    d.incus_ok(&["init", "bb", "c1"]);
    let e = d.incus_err(&[
        "config",
        "device",
        "add",
        "c1",
        "eth0",
        "nic",
        "nictype=macvlan",
        "parent=up0",
        "host_name=mv1",
    ]);
    assert!(e.contains("host_name") && e.contains("macvlan"), "{e}");
    let e = d.incus_err(&[
        "config",
        "device",
        "add",
        "c1",
        "eth0",
        "nic",
        "nictype=p2p",
        "ipv4.address=10.0.0.5",
    ]);
    assert!(e.contains("ipv4.address") && e.contains("p2p"), "{e}");
    let e = d.incus_err(&[
        "config",
        "device",
        "add",
        "c1",
        "eth0",
        "nic",
        "nictype=macvlan",
    ]);
    assert!(e.contains("parent"), "{e}");

    // A parent that is not there: the start is refused with its name, nothing breaks.
    d.incus_ok(&[
        "config",
        "device",
        "add",
        "c1",
        "eth0",
        "nic",
        "nictype=macvlan",
        "parent=nope0",
    ]);
    let e = d.incus_err(&["start", "c1"]);
    assert!(e.contains("nope0") && e.contains("doesn't exist"), "{e}");
    d.incus_ok(&[
        "config",
        "device",
        "set",
        "c1",
        "eth0",
        "parent=up0",
        "mtu=1400",
    ]);
    d.incus_ok(&["start", "c1"]);

    d.incus_ok(&[
        "exec",
        "c1",
        "--",
        "ip",
        "addr",
        "add",
        "10.77.0.5/24",
        "dev",
        "eth0",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = d.incus(&["exec", "c1", "--", "ping", "-c1", "-W2", "10.77.0.2"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no echo from the parent's link: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = d.incus_ok(&["query", "/1.0/instances/c1/state"]);
    let v: serde_json::Value = serde_json::from_str(&state).unwrap();
    let eth0 = &v["network"]["eth0"];
    assert_eq!(eth0["mtu"], 1400, "{eth0}");
    assert_eq!(eth0["state"], "up", "{eth0}");
    assert!(
        eth0["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["address"] == "10.77.0.5"),
        "{eth0}"
    );
    assert!(
        eth0["counters"]["packets_sent"].as_u64().unwrap() > 0
            && eth0["counters"]["bytes_received"].as_u64().unwrap() > 0,
        "{eth0}"
    );
    let mac = d.incus_ok(&["config", "get", "c1", "volatile.eth0.hwaddr"]);
    assert_eq!(eth0["hwaddr"], mac.trim(), "{eth0}");

    // Hotplugged into the running container: a changed macvlan, an added p2p veth, an
    // added NIC on a managed bridge (which gets a DHCP lease), each removed again.
    d.incus_ok(&["config", "device", "set", "c1", "eth0", "mtu=1300"]);
    let link = d.incus_ok(&["exec", "c1", "--", "ip", "link", "show", "eth0"]);
    assert!(
        link.contains("mtu 1300") && link.contains(mac.trim()),
        "{link}"
    );
    d.incus_ok(&[
        "config",
        "device",
        "add",
        "c1",
        "eth1",
        "nic",
        "nictype=p2p",
    ]);
    let host = d.incus_ok(&["config", "get", "c1", "volatile.eth1.host_name"]);
    assert!(
        !netns::in_ns_fails(&ns_d, &["ip", "link", "show", host.trim()]),
        "host end {host}"
    );
    d.incus_ok(&["exec", "c1", "--", "ip", "link", "show", "eth1"]);
    d.incus_ok(&[
        "network",
        "create",
        "br1",
        "ipv4.address=10.78.0.1/24",
        "ipv6.address=none",
    ]);
    let _reap = netns::DnsmasqReaper(d.state.join("networks"));
    d.incus_ok(&[
        "config",
        "device",
        "add",
        "c1",
        "eth2",
        "nic",
        "network=br1",
        "name=eth2",
    ]);
    d.incus_ok(&[
        "exec", "c1", "--", "udhcpc", "-i", "eth2", "-n", "-q", "-t", "10",
    ]);
    let lease = d.incus_ok(&["network", "list-leases", "br1", "--format", "csv"]);
    assert!(
        lease.contains("c1,") && lease.contains("10.78.0."),
        "{lease}"
    );
    let e = d.incus_err(&[
        "config",
        "device",
        "add",
        "c1",
        "eth3",
        "nic",
        "nictype=p2p",
        "name=eth0",
    ]);
    assert!(e.contains("already has an interface eth0"), "{e}");
    d.incus_ok(&["config", "device", "remove", "c1", "eth1"]);
    d.incus_ok(&["config", "device", "remove", "c1", "eth2"]);
    assert!(netns::in_ns_fails(
        &ns_d,
        &["ip", "link", "show", host.trim()]
    ));
    let links = d.incus_ok(&["exec", "c1", "--", "ip", "-o", "link"]);
    assert!(
        !links.contains("eth1") && !links.contains("eth2") && links.contains("eth0"),
        "{links}"
    );
    d.incus_ok(&["delete", "--force", "c1"]);
    d.incus_ok(&["network", "delete", "br1"]);
}
