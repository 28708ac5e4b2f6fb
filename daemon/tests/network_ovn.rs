//! OVN networks end to end with the real incus CLI, and a real OVN: the test runs the
//! northbound and southbound databases, ovn-northd, Open vSwitch (userspace datapath) and
//! ovn-controller inside a network namespace of its own (`common/ovn.rs`), and cairnd in
//! the same namespace, pointed at that northbound database with
//! `network.ovn.northbound_connection`. The host's links, routes and nftables are never
//! touched. Covers: a `physical` uplink on a Linux bridge, an OVN network on it (auto
//! subnet, router address from `ipv4.ovn.ranges`), busybox containers getting their
//! addresses from OVN's DHCP, resolving each other by name from OVN's DNS, one static
//! address, the uplink gateway reached through the router's SNAT, a second OVN network
//! isolated from the first, list/show/info/list-leases, bad input (unknown uplink, an
//! uplink that is no physical network, IPv6, a NIC on the uplink itself, deletes while in
//! use, an unreachable database leaving nothing behind), and delete leaving no
//! northbound row and no OVS bridge. Needs root and Debian's ovn-central, ovn-host and
//! openvswitch-switch (scripts/install-deps.sh); fails loudly without them.

mod common;

use std::time::Instant;

use common::TestDaemon;

#[path = "common/netns.rs"]
mod netns;
use netns::{in_ns, ip, tools_present, wait_for, Namespaces};

#[path = "common/ovn.rs"]
mod ovn;
use ovn::OvnStack;

/// What a container's `udhcpc` does with its lease (busybox has no default script here).
const DHCP: &str = "printf '#!/bin/sh\\n[ \"$1\" = bound ] || exit 0\\nifconfig $interface $ip netmask $subnet\\nroute add default gw $router\\nexit 0\\n' > /tmp/dhcp.sh && chmod +x /tmp/dhcp.sh && udhcpc -i eth0 -n -q -t 10 -s /tmp/dhcp.sh";

fn exec_ok(d: &TestDaemon, c: &str, args: &[&str]) -> bool {
    let mut a = vec!["exec", c, "--"];
    a.extend(args);
    d.incus_cmd_timeout(60, &a)
        .output()
        .unwrap()
        .status
        .success()
}

fn dhcp(d: &TestDaemon, stack: &OvnStack, c: &str) {
    let out = d
        .incus_cmd_timeout(60, &["exec", c, "--", "sh", "-c", DHCP])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "udhcpc in {c}: {}{}\n--- cairnd log ---\n{}\n--- nb ---\n{}\n--- ovs ---\n{}\n--- ports ---\n{}\n--- controller ---\n{}\n--- vswitchd ---\n{}\n--- instance ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log(),
        stack.nbctl(&["show"]),
        stack.vsctl(&["show"]),
        stack.vsctl(&["--columns=name,external_ids,ofport,error", "list", "interface"]),
        stack.log("controller"),
        stack.log("vswitchd"),
        d.incus_ok(&["config", "show", c, "--expanded"]),
    );
}

/// The IPv4 address on `c`'s eth0 in its state, once it has one in `prefix`.
fn address_of(d: &TestDaemon, c: &str, prefix: &str) -> String {
    let mut state = String::new();
    wait_for(&format!("{c}'s address in its state"), 15, || {
        state = d.http("GET", &format!("/1.0/instances/{c}/state"), None).1;
        state.contains(&format!("\"{prefix}"))
    });
    state
        .split("\"address\":\"")
        .filter_map(|t| t.split('"').next())
        .find(|a| a.starts_with(prefix))
        .unwrap()
        .to_string()
}

#[test]
fn ovn_networks_on_a_physical_uplink() {
    tools_present();
    let ns_name = format!("cairnovn{}", std::process::id());
    let mut ns = Namespaces(vec![]);
    ns.add(&ns_name);
    ip(&["-n", &ns_name, "link", "set", "lo", "up"]);
    // The uplink: a Linux bridge in cairnd's namespace holding the uplink's gateway.
    ip(&["-n", &ns_name, "link", "add", "upbr0", "type", "bridge"]);
    ip(&[
        "-n",
        &ns_name,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "upbr0",
    ]);
    ip(&["-n", &ns_name, "link", "set", "upbr0", "up"]);
    let stack = OvnStack::start(&ns_name, "chassis1");
    // cairnd's ovs-vsctl finds this stack's OVS through OVS_RUNDIR (one test in this file).
    std::env::set_var("OVS_RUNDIR", &stack.dir);
    let d = TestDaemon::start_in_netns(&ns_name);
    let nb = stack.nb_socket();

    // No uplink yet: network= unset has nothing to default to.
    let e = d.incus_err(&["network", "create", "ovn0", "--type=ovn"]);
    assert!(e.contains("no uplink network exists"), "{e}");

    // An unreachable northbound database: a clear error and nothing left behind.
    d.incus_ok(&[
        "network",
        "create",
        "UPLINK",
        "--type=physical",
        "parent=upbr0",
        "ipv4.gateway=192.0.2.1/24",
        "ipv4.ovn.ranges=192.0.2.10-192.0.2.19",
        "dns.nameservers=192.0.2.1",
    ]);
    let dead = format!("unix:{}", stack.dir.join("nothing.sock").display());
    d.incus_ok(&["config", "set", "network.ovn.northbound_connection", &dead]);
    let e = d.incus_err(&["network", "create", "ovn0", "--type=ovn", "network=UPLINK"]);
    assert!(
        e.contains("unreachable") && e.contains("nothing.sock"),
        "{e}"
    );
    let list = d.incus_ok(&["network", "list", "--format", "csv"]);
    assert!(!list.contains("ovn0"), "{list}");
    let e = d.incus_err(&[
        "config",
        "set",
        "network.ovn.northbound_connection",
        "http://x",
    ]);
    assert!(e.contains("northbound_connection"), "{e}");
    d.incus_ok(&["config", "set", "network.ovn.northbound_connection", &nb]);

    // Bad input.
    let e = d.incus_err(&["network", "create", "bad0", "--type=ovn", "network=nosuch"]);
    assert!(e.contains("nosuch") && e.contains("not found"), "{e}");
    d.incus_ok(&[
        "network",
        "create",
        "br9",
        "ipv4.address=10.231.0.1/24",
        "ipv6.address=none",
    ]);
    let e = d.incus_err(&["network", "create", "bad0", "--type=ovn", "network=br9"]);
    assert!(e.contains("not physical"), "{e}");
    d.incus_ok(&["network", "delete", "br9"]);
    let e = d.incus_err(&[
        "network",
        "create",
        "bad0",
        "--type=ovn",
        "network=UPLINK",
        "ipv6.address=auto",
    ]);
    assert!(e.contains("IPv6"), "{e}");
    // network= unset: the only uplink, as Incus does.
    d.incus_ok(&["network", "create", "dflt0", "--type=ovn"]);
    assert_eq!(
        d.incus_ok(&["network", "get", "dflt0", "network"]).trim(),
        "UPLINK"
    );
    d.incus_ok(&["network", "delete", "dflt0"]);
    let e = d.incus_err(&[
        "network",
        "create",
        "bad1",
        "--type=physical",
        "parent=nosuch0",
    ]);
    assert!(e.contains("nosuch0"), "{e}");
    let e = d.incus_err(&[
        "network",
        "create",
        "bad1",
        "--type=physical",
        "parent=upbr0",
        "vlan=10",
    ]);
    assert!(e.contains("vlan"), "{e}");

    // The network: auto subnet, the router's uplink address from the ranges.
    let t = Instant::now();
    d.incus_ok(&["network", "create", "ovn0", "--type=ovn", "network=UPLINK"]);
    eprintln!(
        "incus network create --type=ovn (one chassis, userspace OVS): {} ms",
        t.elapsed().as_millis()
    );
    let subnet = d.incus_ok(&["network", "get", "ovn0", "ipv4.address"]);
    let subnet = subnet.trim().to_string();
    assert!(
        subnet.starts_with("10.") && subnet.ends_with(".1/24"),
        "{subnet}"
    );
    let prefix = subnet.trim_end_matches("1/24").to_string();
    let uplink_ip = d.incus_ok(&["network", "get", "ovn0", "volatile.network.ipv4.address"]);
    assert_eq!(uplink_ip.trim(), "192.0.2.10");
    let show = stack.nbctl(&["show"]);
    assert!(
        show.contains("cairn-net-ovn0-lr") && show.contains("cairn-net-ovn0-ls-int"),
        "{show}"
    );
    let bridges = stack.vsctl(&["list-br"]);
    assert!(bridges.lines().any(|b| b.starts_with("covn")), "{bridges}");
    let list = d.incus_ok(&["network", "list", "--format", "csv"]);
    assert!(
        list.lines().any(|l| l.starts_with("ovn0,ovn,YES")),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l.starts_with("UPLINK,physical,YES")),
        "{list}"
    );
    let show = d.incus_ok(&["network", "show", "UPLINK"]);
    assert!(show.contains("/1.0/networks/ovn0"), "{show}");
    let e = d.incus_err(&["network", "delete", "UPLINK"]);
    assert!(e.contains("in use"), "{e}");

    // Containers get their addresses from OVN's DHCP and resolve each other from its DNS.
    d.import_busybox("bb");
    d.incus_ok(&["launch", "bb", "c1", "--network", "ovn0"]);
    d.incus_ok(&["launch", "bb", "c2", "--network", "ovn0"]);
    dhcp(&d, &stack, "c1");
    dhcp(&d, &stack, "c2");
    let c1 = address_of(&d, "c1", &prefix);
    let c2 = address_of(&d, "c2", &prefix);
    assert_ne!(c1, c2);
    assert!(
        exec_ok(&d, "c1", &["ping", "-c1", "-W2", &c2]),
        "c1 cannot ping c2"
    );
    let gw = subnet.trim_end_matches("/24");
    assert!(
        exec_ok(&d, "c1", &["ping", "-c1", "-W2", gw]),
        "c1 cannot ping its router"
    );
    let out = d
        .incus_cmd_timeout(
            30,
            &["exec", "c1", "--", "nslookup", "c2.incus", "192.0.2.1"],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(&c2), "c2.incus from c1: {text}");
    // The uplink's gateway answers: only through the router's SNAT (no route back to the
    // OVN subnet exists in this namespace).
    let routes = in_ns(&ns_name, &["ip", "route"]);
    assert!(!routes.contains(&prefix), "{routes}");
    assert!(
        exec_ok(&d, "c1", &["ping", "-c1", "-W3", "192.0.2.1"]),
        "c1 cannot reach the uplink gateway through SNAT\n{}",
        stack.nbctl(&["show"])
    );

    // A static address is OVN's too.
    d.incus_ok(&["init", "bb", "c3", "--network", "ovn0"]);
    let fixed = format!("{prefix}50");
    d.incus_ok(&[
        "config",
        "device",
        "set",
        "c3",
        "eth0",
        &format!("ipv4.address={fixed}"),
    ]);
    d.incus_ok(&["start", "c3"]);
    dhcp(&d, &stack, "c3");
    assert_eq!(address_of(&d, "c3", &prefix), fixed);
    let leases = d.incus_ok(&["network", "list-leases", "ovn0", "--format", "csv"]);
    for (c, ip) in [("c1", &c1), ("c2", &c2), ("c3", &fixed)] {
        assert!(
            leases
                .lines()
                .any(|l| l.starts_with(c) && l.contains(ip.as_str())),
            "{leases}"
        );
    }
    assert!(leases.contains("STATIC"), "{leases}");
    let info = d.incus_ok(&["network", "info", "ovn0"]);
    assert!(
        info.contains("cairn-net-ovn0-lr") && info.contains(gw) && info.contains("chassis1"),
        "{info}"
    );
    let e = d.incus_err(&["network", "delete", "ovn0"]);
    assert!(e.contains("in use"), "{e}");

    // A NIC on the uplink itself is refused, with the device named.
    d.incus_ok(&["init", "bb", "c9"]);
    let e = d.incus_err(&[
        "config",
        "device",
        "add",
        "c9",
        "eth1",
        "nic",
        "network=UPLINK",
    ]);
    assert!(e.contains("physical"), "{e}");
    d.incus_ok(&["delete", "c9"]);

    // A second network is isolated from the first.
    d.incus_ok(&[
        "network",
        "create",
        "tenant2",
        "--type=ovn",
        "network=UPLINK",
    ]);
    let up2 = d.incus_ok(&["network", "get", "tenant2", "volatile.network.ipv4.address"]);
    assert_eq!(up2.trim(), "192.0.2.11");
    let sub2 = d.incus_ok(&["network", "get", "tenant2", "ipv4.address"]);
    let prefix2 = sub2.trim().trim_end_matches("1/24").to_string();
    assert_ne!(prefix2, prefix);
    d.incus_ok(&["launch", "bb", "t1", "--network", "tenant2"]);
    dhcp(&d, &stack, "t1");
    address_of(&d, "t1", &prefix2);
    assert!(
        exec_ok(&d, "t1", &["ping", "-c1", "-W3", "192.0.2.1"]),
        "t1 has no uplink"
    );
    assert!(
        !exec_ok(&d, "t1", &["ping", "-c1", "-W2", &c1]),
        "tenant2 reaches ovn0's c1"
    );

    // Deletes leave no northbound row and no OVS bridge.
    for c in ["c1", "c2", "c3", "t1"] {
        d.incus_ok(&["delete", "--force", c]);
    }
    let ports = stack.nbctl(&["--bare", "--columns=name", "find", "logical_switch_port"]);
    assert!(!ports.contains("instance"), "{ports}");
    d.incus_ok(&["network", "delete", "ovn0"]);
    d.incus_ok(&["network", "delete", "tenant2"]);
    d.incus_ok(&["network", "delete", "UPLINK"]);
    let show = stack.nbctl(&["show"]);
    assert!(show.trim().is_empty(), "rows left: {show}");
    assert!(stack.nbctl(&["list", "dhcp_options"]).trim().is_empty());
    assert!(stack.nbctl(&["list", "dns"]).trim().is_empty());
    let bridges = stack.vsctl(&["list-br"]);
    assert!(!bridges.contains("covn"), "{bridges}");
    drop(d);
}
