//! Managed bridge networks end to end, with the real incus CLI: cairnd runs inside a network
//! namespace this test makes (`ip netns exec`), so the bridges, addresses, routes, nftables
//! tables and dnsmasq it creates exist only there; the host's own are never touched. Covers
//! create (explicit and `auto` subnet), list/show/set/delete, bad input (unknown key, bad
//! CIDR, overlapping subnet, duplicate name, delete while used), restore after a daemon
//! restart, busybox containers on the bridge getting a DHCP lease (one a reservation) and
//! resolving each other under `dns.domain`, one reaching an "outside" namespace through
//! the NAT, and file modes. Needs root, `ip`,
//! `nft`, `dnsmasq`, `curl` and `setpriv`; fails loudly without them.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestDaemon;

#[path = "common/netns.rs"]
mod netns;
use netns::{in_ns, in_ns_fails, ip, tools_present, wait_for, DnsmasqReaper, Namespaces};

fn dnsmasq_pid(d: &TestDaemon, net: &str) -> Option<i32> {
    let text =
        std::fs::read_to_string(d.state.join("networks").join(net).join("dnsmasq.pid")).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // A zombie has an empty cmdline: only a live dnsmasq counts.
    String::from_utf8_lossy(&cmdline)
        .contains("dnsmasq")
        .then_some(pid)
}

/// No file of a network (config, leases, log, hosts lines) can be read by another user.
fn assert_nothing_readable_by_nobody(dir: &Path) {
    fn walk(p: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut files = vec![];
    walk(dir, &mut files);
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        let st = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(&f)
            .output()
            .expect("running setpriv");
        assert!(!st.status.success(), "{f:?} is readable by nobody");
    }
}

fn post_network(d: &TestDaemon, body: &str) -> (u16, String) {
    d.http("POST", "/1.0/networks", Some(body.as_bytes()))
}

#[test]
fn bridge_networks_inside_a_namespace_of_their_own() {
    tools_present();
    let ns_name = format!("cairnbr{}", std::process::id());
    let mut ns = Namespaces(vec![]);
    ns.add(&ns_name);
    ip(&["-n", &ns_name, "link", "set", "lo", "up"]);
    // An "outside" namespace behind cairnd's, with no route back to the bridges' subnets:
    // a container reaches it only through the masquerade.
    let out_ns = format!("cairnout{}", std::process::id());
    ns.add(&out_ns);
    ip(&[
        "-n", &ns_name, "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns",
        &out_ns,
    ]);
    ip(&["-n", &ns_name, "addr", "add", "192.0.2.1/24", "dev", "up0"]);
    ip(&["-n", &ns_name, "link", "set", "up0", "up"]);
    ip(&[
        "-n",
        &ns_name,
        "route",
        "add",
        "default",
        "via",
        "192.0.2.2",
    ]);
    ip(&["-n", &out_ns, "addr", "add", "192.0.2.2/24", "dev", "out0"]);
    ip(&["-n", &out_ns, "link", "set", "out0", "up"]);
    ip(&["-n", &out_ns, "link", "set", "lo", "up"]);
    let mut d = TestDaemon::start_in_netns(&ns_name);
    let _reap = DnsmasqReaper(d.state.join("networks"));

    // Create with an explicit subnet and NAT.
    let out = d.incus_ok(&[
        "network",
        "create",
        "br1",
        "ipv4.address=10.99.0.1/24",
        "ipv4.nat=true",
    ]);
    assert!(out.contains("Network br1 created"), "{out}");
    let addr = in_ns(&ns_name, &["ip", "-br", "addr", "show", "dev", "br1"]);
    assert!(addr.contains("10.99.0.1/24"), "{addr}");
    let link = in_ns(&ns_name, &["ip", "-o", "link", "show", "dev", "br1"]);
    assert!(link.contains(",UP") || link.contains("<UP"), "{link}");
    let table = in_ns(&ns_name, &["nft", "list", "table", "inet", "cairn_br1"]);
    assert!(
        table.contains("masquerade") && table.contains("10.99.0.0/24"),
        "{table}"
    );
    let pid1 = dnsmasq_pid(&d, "br1").expect("dnsmasq runs for br1");
    let conf = std::fs::read_to_string(d.state.join("networks/br1/dnsmasq.conf")).unwrap();
    assert!(conf.contains("interface=br1") && conf.contains("dhcp-range=10.99.0.2,10.99.0.254"));

    // List and show through the real CLI: managed, Created, alongside host interfaces.
    let list = d.incus_ok(&["network", "list", "--format", "csv"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("br1,bridge,YES,10.99.0.1/24")),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l.starts_with("lo,loopback,NO")),
        "{list}"
    );
    let show = d.incus_ok(&["network", "show", "br1"]);
    assert!(
        show.contains("managed: true") && show.contains("status: Created"),
        "{show}"
    );

    // ipv4.address unset means auto: a free /24 chosen from the routes read here.
    d.incus_ok(&["network", "create", "br2", "--type=bridge"]);
    let got = d.incus_ok(&["network", "get", "br2", "ipv4.address"]);
    let got = got.trim();
    assert!(
        got.starts_with("10.") && got.ends_with(".1/24") && got != "10.99.0.1/24",
        "auto chose {got:?}"
    );
    assert!(in_ns(&ns_name, &["ip", "-br", "addr", "show", "dev", "br2"]).contains(got));

    // Bad input: a clear 400/409, nothing made, and the daemon keeps serving.
    let e = d.incus_err(&["network", "create", "br3", "bogus.key=1"]);
    assert!(
        e.contains("Invalid network configuration key \"bogus.key\""),
        "{e}"
    );
    let (code, body) = post_network(&d, r#"{"name":"br3","config":{"bogus.key":"1"}}"#);
    assert_eq!(code, 400, "{body}");
    let (code, body) = post_network(
        &d,
        r#"{"name":"br3","config":{"ipv4.address":"10.99.300.1/24"}}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("ipv4.address"), "{body}");
    let (code, body) = post_network(
        &d,
        r#"{"name":"br3","config":{"ipv4.address":"10.99.0.0/24"}}"#,
    );
    assert_eq!(code, 400, "network address as gateway: {body}");
    let (code, body) = post_network(
        &d,
        r#"{"name":"br3","config":{"ipv4.address":"10.99.0.7/16"}}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("overlaps") && body.contains("br1"), "{body}");
    let (code, body) = post_network(
        &d,
        r#"{"name":"br1","config":{"ipv4.address":"10.98.0.1/24"}}"#,
    );
    assert_eq!(code, 409, "{body}");
    let e = d.incus_err(&["network", "create", "br1", "ipv4.address=10.98.0.1/24"]);
    assert!(e.contains("already exists"), "{e}");
    let (code, body) = post_network(&d, r#"{"name":"lo"}"#);
    assert_eq!(code, 409, "name of a host interface: {body}");
    let (code, body) = post_network(&d, r#"{"name":"br3","type":"ovn"}"#);
    assert_eq!(code, 400, "{body}");
    let (code, body) = post_network(&d, r#"{"name":"bad/name"}"#);
    assert_eq!(code, 400, "{body}");
    assert!(in_ns_fails(&ns_name, &["ip", "link", "show", "br3"]));
    assert!(d.is_alive(), "cairnd died on bad input:\n{}", d.log());

    // A NAT source address and a lease time reach the table and dnsmasq's config.
    d.incus_ok(&[
        "network",
        "set",
        "br1",
        "ipv4.nat.address=10.99.0.1",
        "ipv4.dhcp.expiry=30m",
    ]);
    let table = in_ns(&ns_name, &["nft", "list", "table", "inet", "cairn_br1"]);
    assert!(table.contains("snat ip to 10.99.0.1"), "{table}");
    let conf = std::fs::read_to_string(d.state.join("networks/br1/dnsmasq.conf")).unwrap();
    assert!(conf.contains(",30m\n"), "{conf}");
    let e = d.incus_err(&["network", "set", "br1", "ipv4.dhcp.expiry=soon"]);
    assert!(e.contains("ipv4.dhcp.expiry"), "{e}");
    d.incus_ok(&["network", "unset", "br1", "ipv4.nat.address"]);

    // dns.mode=none: no local domain in dnsmasq; a bad mode is refused.
    d.incus_ok(&["network", "set", "br1", "dns.mode=none"]);
    let conf = std::fs::read_to_string(d.state.join("networks/br1/dnsmasq.conf")).unwrap();
    assert!(!conf.contains("local=/"), "{conf}");
    let e = d.incus_err(&["network", "set", "br1", "dns.mode=loud"]);
    assert!(e.contains("dns.mode"), "{e}");
    d.incus_ok(&["network", "unset", "br1", "dns.mode"]);

    // bridge.external_interfaces: an unconfigured interface becomes a port and is let go
    // again; a missing or addressed one is refused and the bridge keeps its ports.
    ip(&[
        "-n", &ns_name, "link", "add", "ext0", "type", "veth", "peer", "name", "ext0p",
    ]);
    d.incus_ok(&["network", "set", "br1", "bridge.external_interfaces=ext0"]);
    let ext = in_ns(&ns_name, &["ip", "-o", "link", "show", "dev", "ext0"]);
    assert!(ext.contains("master br1"), "{ext}");
    let e = d.incus_err(&[
        "network",
        "set",
        "br1",
        "bridge.external_interfaces=nosuch0",
    ]);
    assert!(e.contains("does not exist"), "{e}");
    let e = d.incus_err(&["network", "set", "br1", "bridge.external_interfaces=up0"]);
    assert!(e.contains("has addresses"), "{e}");
    let ext = in_ns(&ns_name, &["ip", "-o", "link", "show", "dev", "ext0"]);
    assert!(
        ext.contains("master br1"),
        "a refused change let ext0 go: {ext}"
    );
    let up0 = in_ns(&ns_name, &["ip", "-br", "addr", "show", "dev", "up0"]);
    assert!(up0.contains("192.0.2.1/24"), "{up0}");
    d.incus_ok(&["network", "unset", "br1", "bridge.external_interfaces"]);
    let ext = in_ns(&ns_name, &["ip", "-o", "link", "show", "dev", "ext0"]);
    assert!(!ext.contains("master"), "{ext}");
    ip(&["-n", &ns_name, "link", "del", "ext0"]);

    // Set: re-applied live (NAT off drops the masquerade rule; a new address replaces the old).
    d.incus_ok(&["network", "set", "br1", "ipv4.nat=false"]);
    let table = in_ns(&ns_name, &["nft", "list", "table", "inet", "cairn_br1"]);
    assert!(!table.contains("masquerade"), "{table}");
    d.incus_ok(&["network", "set", "br1", "ipv4.address=10.97.0.1/24"]);
    let addr = in_ns(&ns_name, &["ip", "-br", "addr", "show", "dev", "br1"]);
    assert!(
        addr.contains("10.97.0.1/24") && !addr.contains("10.99.0.1"),
        "{addr}"
    );
    let e = d.incus_err(&["network", "set", "br1", "ipv4.dhcp=maybe"]);
    assert!(e.contains("ipv4.dhcp"), "{e}");
    let e = d.incus_err(&["network", "set", "lo", "ipv4.nat=true"]);
    assert!(e.contains("Only managed networks can be modified"), "{e}");
    d.incus_ok(&[
        "network",
        "set",
        "br1",
        "ipv4.address=10.99.0.1/24",
        "ipv4.nat=true",
    ]);

    // State and leases.
    let info = d.incus_ok(&["network", "info", "br1"]);
    assert!(info.contains("10.99.0.1/24"), "{info}");
    d.incus_ok(&["network", "list-leases", "br1"]);
    // A host interface cairnd does not manage has a measured state too (as in Incus).
    let info = d.incus_ok(&["network", "info", "up0"]);
    assert!(
        info.contains("192.0.2.1/24") && info.contains("broadcast"),
        "{info}"
    );
    let (code, body) = d.http("GET", "/1.0/networks/lo/state", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"type\":\"loopback\""), "{body}");
    let (code, _) = d.http("GET", "/1.0/networks/nosuch0/state", None);
    assert_eq!(code, 404);

    // In use by a profile: delete refused.
    d.incus_ok(&["profile", "create", "onbr1"]);
    d.incus_ok(&[
        "profile",
        "device",
        "add",
        "onbr1",
        "eth0",
        "nic",
        "network=br1",
        "name=eth0",
    ]);
    let show = d.incus_ok(&["network", "show", "br1"]);
    assert!(show.contains("/1.0/profiles/onbr1"), "{show}");
    let e = d.incus_err(&["network", "delete", "br1"]);
    assert!(e.contains("in use"), "{e}");
    let (code, _) = d.http("DELETE", "/1.0/networks/br1", None);
    assert_eq!(code, 400);
    assert!(in_ns(&ns_name, &["ip", "link", "show", "br1"]).contains("br1"));

    // A container on br1 gets a DHCP lease from dnsmasq; its state shows the address.
    d.import_busybox("bb");
    d.incus_ok(&["launch", "bb", "c1", "--network", "br1"]);
    let script = "printf '#!/bin/sh\\n[ \"$1\" = bound ] || exit 0\\nifconfig $interface $ip netmask $subnet\\nroute add default gw $router\\nexit 0\\n' > /tmp/dhcp.sh && chmod +x /tmp/dhcp.sh && udhcpc -i eth0 -n -q -t 10 -s /tmp/dhcp.sh";
    let out = d
        .incus_cmd_timeout(60, &["exec", "c1", "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "udhcpc in c1: {}{}\n--- cairnd log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let mut state = String::new();
    wait_for("c1's address in its state", 10, || {
        state = d.http("GET", "/1.0/instances/c1/state", None).1;
        state.contains("\"10.99.0.")
    });
    let leases = d.incus_ok(&["network", "list-leases", "br1", "--format", "csv"]);
    assert!(leases.contains("10.99.0."), "{leases}");
    let ping = d
        .incus_cmd_timeout(30, &["exec", "c1", "--", "ping", "-c1", "-W2", "10.99.0.1"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "c1 cannot ping its gateway");
    let ping = d
        .incus_cmd_timeout(30, &["exec", "c1", "--", "ping", "-c1", "-W2", "192.0.2.2"])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "c1 cannot reach the outside through NAT: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // ipv4.routing=false: the gateway still answers, nothing beyond it does.
    d.incus_ok(&["network", "set", "br1", "ipv4.routing=false"]);
    let table = in_ns(&ns_name, &["nft", "list", "table", "inet", "cairn_br1"]);
    assert!(table.contains("reject"), "{table}");
    let out_ping = |d: &TestDaemon, to: &str| {
        d.incus_cmd_timeout(30, &["exec", "c1", "--", "ping", "-c1", "-W2", to])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        !out_ping(&d, "192.0.2.2"),
        "forwarded with ipv4.routing=false"
    );
    assert!(out_ping(&d, "10.99.0.1"), "the gateway stopped answering");
    d.incus_ok(&["network", "unset", "br1", "ipv4.routing"]);
    assert!(out_ping(&d, "192.0.2.2"), "not forwarded again after unset");
    let show = d.incus_ok(&["network", "show", "br1"]);
    assert!(show.contains("/1.0/instances/c1"), "{show}");
    assert_nothing_readable_by_nobody(&d.state.join("networks"));

    // A static address on the NIC is a DHCP reservation; names resolve under dns.domain.
    d.incus_ok(&["init", "bb", "c3", "--network", "br1"]);
    d.incus_ok(&[
        "config",
        "device",
        "set",
        "c3",
        "eth0",
        "ipv4.address=10.99.0.50",
    ]);
    d.incus_ok(&["start", "c3"]);
    let out = d
        .incus_cmd_timeout(60, &["exec", "c3", "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "udhcpc in c3");
    wait_for("c3's reserved address in its state", 10, || {
        d.http("GET", "/1.0/instances/c3/state", None)
            .1
            .contains("\"10.99.0.50\"")
    });
    let ns = d
        .incus_cmd_timeout(
            30,
            &["exec", "c3", "--", "nslookup", "c1.incus", "10.99.0.1"],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ns.stdout).into_owned();
    let c1_ip = state
        .split("\"address\":\"")
        .filter_map(|t| t.split('"').next())
        .find(|a| a.starts_with("10.99.0."))
        .expect("c1's address in its state")
        .to_string();
    assert!(text.contains(&c1_ip), "c1.incus from c3: {text}");
    let e = d.incus_err(&[
        "config",
        "device",
        "set",
        "c3",
        "eth0",
        "ipv4.address=10.98.0.5",
    ]);
    assert!(e.contains("10.98.0.5"), "{e}");
    d.incus_ok(&["delete", "--force", "c1"]);
    d.incus_ok(&["delete", "--force", "c3"]);
    assert!(
        std::fs::read_dir(d.state.join("networks/br1/dnsmasq.hosts"))
            .unwrap()
            .next()
            .is_none(),
        "host lines of deleted instances stay behind"
    );

    // A NIC on a network that does not exist: the start says which one.
    d.incus_ok(&["profile", "create", "nonet"]);
    d.incus_ok(&[
        "profile",
        "device",
        "add",
        "nonet",
        "eth0",
        "nic",
        "network=nosuch",
        "name=eth0",
    ]);
    let e = d.incus_err(&["launch", "bb", "c2", "-p", "default", "-p", "nonet"]);
    assert!(e.contains("network \"nosuch\" not found"), "{e}");
    let _ = d.incus(&["delete", "--force", "c2"]);
    d.incus_ok(&["profile", "delete", "nonet"]);

    // Restart: the bridge stays, a fresh dnsmasq replaces the old one, the table is back.
    d.kill9();
    in_ns(&ns_name, &["nft", "delete", "table", "inet", "cairn_br1"]);
    d.spawn();
    // The API answers before the networks are restored: give the restore its moment.
    wait_for("br1's dnsmasq after a restart", 10, || {
        dnsmasq_pid(&d, "br1").is_some_and(|p| p != pid1)
    });
    let pid2 = dnsmasq_pid(&d, "br1")
        .unwrap_or_else(|| panic!("no dnsmasq for br1 after a restart; log:\n{}", d.log()));
    assert_ne!(pid1, pid2, "dnsmasq was restarted");
    wait_for("the old dnsmasq to be ended", 5, || {
        std::fs::read(format!("/proc/{pid1}/cmdline")).map_or(true, |c| c.is_empty())
    });
    in_ns(&ns_name, &["nft", "list", "table", "inet", "cairn_br1"]);
    assert!(in_ns(&ns_name, &["ip", "-br", "addr", "show", "dev", "br1"]).contains("10.99.0.1/24"));

    // Delete tears everything down.
    d.incus_ok(&["profile", "delete", "onbr1"]);
    d.incus_ok(&["network", "delete", "br1"]);
    assert!(in_ns_fails(&ns_name, &["ip", "link", "show", "br1"]));
    assert!(in_ns_fails(
        &ns_name,
        &["nft", "list", "table", "inet", "cairn_br1"]
    ));
    wait_for("br1's dnsmasq to end", 5, || {
        std::fs::read(format!("/proc/{pid2}/cmdline")).map_or(true, |c| c.is_empty())
    });
    let (code, _) = d.http("GET", "/1.0/networks/br1", None);
    assert_eq!(code, 404);
    d.incus_ok(&["network", "delete", "br2"]);
    let list = d.incus_ok(&["network", "list", "--format", "csv"]);
    assert!(!list.contains("br1") && !list.contains("br2"), "{list}");
}

/// The appliance's first start: cairn-init's preseed names a NAT bridge, cairnd makes it
/// before anything else and the default profile's eth0 goes on it, so a container
/// launched with no network option gets an address. A restart does not make it again
/// once deleted. Also prints launch → IPv4 (the issue's figure; not asserted).
#[test]
fn the_preseed_network_is_made_at_the_first_start_and_eth0_is_on_it() {
    tools_present();
    let ns_name = format!("cairnfs{}", std::process::id());
    let mut ns = Namespaces(vec![]);
    ns.add(&ns_name);
    ip(&["-n", &ns_name, "link", "set", "lo", "up"]);
    let preseed = "networks:\n- name: cairnbr0\n  type: bridge\n  config: {ipv4.address: auto, ipv4.nat: \"true\", ipv6.address: none}\n";
    let mut d = TestDaemon::start_in_netns_with_preseed(&ns_name, preseed);
    let _reap = DnsmasqReaper(d.state.join("networks"));

    let list = d.incus_ok(&["network", "list", "--format", "csv"]);
    assert!(list.contains("cairnbr0,bridge,YES"), "{list}");
    let addr = d.incus_ok(&["network", "get", "cairnbr0", "ipv4.address"]);
    assert!(
        addr.trim().starts_with("10.") && addr.trim().ends_with(".1/24"),
        "{addr}"
    );
    let profile = d.incus_ok(&["profile", "device", "show", "default"]);
    assert!(profile.contains("network: cairnbr0"), "{profile}");
    assert!(dnsmasq_pid(&d, "cairnbr0").is_some(), "dnsmasq runs");

    d.import_busybox("bb");
    let mut waits = Vec::new();
    for name in ["c1", "c2", "c3"] {
        let t = Instant::now();
        d.incus_ok(&["launch", "bb", name]);
        let mut got = String::new();
        wait_for(&format!("{name}'s IPv4 in incus list"), 30, || {
            got = d.incus_ok(&["list", name, "-c", "4", "--format", "csv"]);
            got.contains("(eth0)")
        });
        waits.push(t.elapsed().as_millis());
        let prefix = addr.trim().rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        assert!(got.starts_with(prefix), "{name}: {got} not in {addr}");
    }
    waits.sort();
    println!(
        "launch -> IPv4 shown by incus list, on the preseed bridge: {:?} ms (p50 {} ms)",
        waits,
        waits[waits.len() / 2]
    );
    let ping = d.incus_ok(&["exec", "c1", "--", "ping", "-c1", "-W5", "c2.incus"]);
    assert!(ping.contains("1 packets received"), "{ping}");
    d.incus_ok(&["delete", "--force", "c1", "c2", "c3"]);

    // Deleted by the operator, it stays deleted across a restart.
    d.incus_ok(&["profile", "device", "remove", "default", "eth0"]);
    d.incus_ok(&["network", "delete", "cairnbr0"]);
    d.kill9();
    d.spawn();
    let list = d.incus_ok(&["network", "list", "--format", "csv"]);
    assert!(!list.contains("cairnbr0"), "{list}");
}

/// Benchmark, not a test (`bash scripts/bench-network.sh` runs it): TCP throughput and
/// ping RTT container↔container on one managed bridge, against host↔host over a veth
/// pair between two namespaces in the same run; prints the figures, asserts nothing.
#[test]
#[ignore = "benchmark: bash scripts/bench-network.sh"]
fn bench_bridge_against_veth() {
    tools_present();
    let pid = std::process::id();
    let (ns_d, ns_a, ns_b) = (
        format!("cairnbd{pid}"),
        format!("cairnba{pid}"),
        format!("cairnbb{pid}"),
    );
    let mut ns = Namespaces(vec![]);
    for n in [&ns_d, &ns_a, &ns_b] {
        ns.add(n);
        ip(&["-n", n, "link", "set", "lo", "up"]);
    }
    // The baseline: two namespaces joined by a veth pair.
    ip(&[
        "-n", &ns_a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &ns_b,
    ]);
    ip(&["-n", &ns_a, "addr", "add", "192.0.2.1/24", "dev", "va"]);
    ip(&["-n", &ns_b, "addr", "add", "192.0.2.2/24", "dev", "vb"]);
    ip(&["-n", &ns_a, "link", "set", "va", "up"]);
    ip(&["-n", &ns_b, "link", "set", "vb", "up"]);
    // A listener's stdin stays open (`sleep |`): busybox nc closes on its stdin's end. Its
    // output goes nowhere: a leftover `sleep` must not hold the test's stdout open.
    let mb = 256;
    let dd = format!("dd if=/dev/zero bs=64k count={}", mb * 16);
    let run_pair = |listen: &mut dyn FnMut() -> std::process::Child,
                    sender: &dyn Fn(&str) -> std::process::Output,
                    peer: &str| {
        let mut l = listen();
        std::thread::sleep(Duration::from_millis(500));
        // Timed here, the same way for both: busybox dd prints no rate.
        let t = Instant::now();
        let out = sender(&format!("{dd} | busybox nc -w1 {peer} 5001"));
        let secs = t.elapsed().as_secs_f64();
        let _ = l.kill();
        let _ = l.wait();
        if !out.status.success() {
            println!(
                "sending to {peer}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        format!(
            "{:.0} MB/s ({secs:.2} s, the sender's last 1 s wait included)",
            (mb << 20) as f64 / 1e6 / secs
        )
    };
    let host_rate = run_pair(
        &mut || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns_b,
                    "sh",
                    "-c",
                    "sleep 60 | busybox nc -l -p 5001 >/dev/null",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        },
        &|script| {
            Command::new("ip")
                .args(["netns", "exec", &ns_a, "sh", "-c", script])
                .output()
                .unwrap()
        },
        "192.0.2.2",
    );
    let host_ping = in_ns(
        &ns_a,
        &[
            "busybox",
            "ping",
            "-c",
            "20",
            "-i",
            "0.05",
            "-q",
            "192.0.2.2",
        ],
    );

    let d = TestDaemon::start_in_netns(&ns_d);
    let _reap = DnsmasqReaper(d.state.join("networks"));
    d.incus_ok(&["network", "create", "brb", "ipv4.address=10.96.0.1/24"]);
    d.import_busybox("bb");
    for c in ["b1", "b2"] {
        d.incus_ok(&["launch", "bb", c, "--network", "brb"]);
    }
    let mut peer = String::new();
    wait_for("b2's IPv4", 30, || {
        peer = d.incus_ok(&["list", "b2", "-c", "4", "--format", "csv"]);
        peer.contains("(eth0)")
    });
    let peer = peer.split_whitespace().next().unwrap_or("").to_string();
    wait_for("b1's IPv4", 30, || {
        d.incus_ok(&["list", "b1", "-c", "4", "--format", "csv"])
            .contains("(eth0)")
    });
    let bridge_rate = run_pair(
        &mut || {
            d.incus_cmd(&[
                "exec",
                "b2",
                "--",
                "sh",
                "-c",
                "sleep 60 | nc -l -p 5001 >/dev/null",
            ])
            .spawn()
            .unwrap()
        },
        &|script| {
            let script = script.replace("busybox nc", "nc");
            d.incus_cmd(&["exec", "b1", "--", "sh", "-c", &script])
                .output()
                .unwrap()
        },
        &peer,
    );
    let bridge_ping = d.incus_ok(&[
        "exec", "b1", "--", "ping", "-c", "20", "-i", "0.05", "-q", &peer,
    ]);
    let rtt = |s: &str| {
        s.lines()
            .find(|l| l.contains("min/avg/max"))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    println!("TCP, {mb} MiB through busybox nc:");
    println!("  host<->host over a veth pair     : {host_rate}");
    println!("  container<->container on a bridge: {bridge_rate}");
    println!("ping RTT:");
    println!("  host<->host over a veth pair     : {}", rtt(&host_ping));
    println!("  container<->container on a bridge: {}", rtt(&bridge_ping));
    d.incus_ok(&["delete", "--force", "b1", "b2"]);
    d.incus_ok(&["network", "delete", "brb"]);
}
