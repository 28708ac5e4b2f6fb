//! cairn-init's DHCP client against a real DHCP server: dnsmasq in one network namespace,
//! the client in another, joined by a veth pair. Needs root (namespaces) and dnsmasq
//! (scripts/install-deps.sh installs it).

#[path = "../../daemon/tests/common/netns.rs"]
mod netns;

use cairn_init::{dhcp, lease, netlink};
use netns::{ip, Namespaces};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace file");
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

#[test]
fn gets_an_address_routes_and_dns_from_dnsmasq() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED dhcp_netns: needs root for network namespaces");
        return;
    }
    let dnsmasq = "/usr/sbin/dnsmasq";
    assert!(
        std::path::Path::new(dnsmasq).exists(),
        "dnsmasq is missing: run scripts/install-deps.sh"
    );
    let pid = std::process::id();
    let (srv, cli) = (format!("cairn-dh-{pid}-s"), format!("cairn-dh-{pid}-c"));
    let mut ns = Namespaces(Vec::new());
    ns.add(&srv);
    ns.add(&cli);
    let (vs, vc) = (format!("dhs{pid}"), format!("dhc{pid}"));
    let (vs, vc) = (&vs[..vs.len().min(15)], &vc[..vc.len().min(15)]);
    ip(&[
        "-n", &srv, "link", "add", vs, "type", "veth", "peer", "name", vc, "netns", &cli,
    ]);
    ip(&["-n", &srv, "addr", "add", "10.231.0.1/24", "dev", vs]);
    ip(&["-n", &srv, "link", "set", vs, "up"]);
    let tmp = tempfile::tempdir().unwrap();
    let _server = Server(
        Command::new("ip")
            .args(["netns", "exec", &srv, dnsmasq, "--no-daemon", "--port=0"])
            .arg(format!("--interface={vs}"))
            .args([
                "--bind-interfaces",
                "--conf-file=/dev/null",
                "--dhcp-range=10.231.0.50,10.231.0.60,255.255.255.0,3600",
                "--dhcp-option=option:router,10.231.0.1",
                "--dhcp-option=option:dns-server,10.231.0.53",
                "--dhcp-option=option:domain-name,lab",
                "--dhcp-option=option:mtu,1400",
                // No ping of an address before offering it (a 3 s wait on the first offer).
                "--no-ping",
            ])
            .arg(format!(
                "--dhcp-leasefile={}",
                tmp.path().join("leases").display()
            ))
            .arg(format!("--pid-file={}", tmp.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq"),
    );

    let lease_dir = tmp.path().join("lease");
    let iface = vc.to_string();
    let (ld, name) = (lease_dir.clone(), iface.clone());
    let cli2 = cli.clone();
    let started = Instant::now();
    // The client's thread inherits the namespace of the thread that starts it.
    let seen = std::thread::spawn(move || {
        enter(&cli2);
        netlink::link_up(&name).unwrap();
        dhcp::spawn(name.clone(), Some("node1".into()), ld);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let addrs = netlink::global_ipv4().unwrap();
            if let Some(a) = addrs.iter().find(|a| a.starts_with(&format!("{name}="))) {
                let mtu =
                    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/mtu")).ok();
                let routes = Command::new("ip").args(["-4", "route"]).output().unwrap();
                return Some((
                    a.clone(),
                    String::from_utf8_lossy(&routes.stdout).into_owned(),
                    mtu,
                ));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .join()
    .unwrap();
    let (addr, routes, _) = seen.expect("no DHCP address within 30 s");
    eprintln!(
        "leased {addr} {:.0} ms after the client started",
        started.elapsed().as_secs_f64() * 1e3
    );
    let a = addr.split_once('=').unwrap().1;
    let host: u8 = a
        .strip_prefix("10.231.0.")
        .and_then(|r| r.strip_suffix("/24"))
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("address out of the range: {a}"));
    assert!((50..=60).contains(&host), "{a}");
    assert!(
        routes.contains(&format!("default via 10.231.0.1 dev {iface}")),
        "{routes}"
    );
    // The lease is kept for resolv.conf.
    let text = lease::resolv_conf(&lease_dir, std::slice::from_ref(&iface));
    assert_eq!(text, "search lab\nnameserver 10.231.0.53\n");
    // The link took the lease's MTU; the server recorded the client's name.
    let out = Command::new("ip")
        .args(["-n", &cli, "link", "show", &iface])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("mtu 1400"));
    let leases = std::fs::read_to_string(tmp.path().join("leases")).unwrap();
    assert!(leases.contains(" node1 "), "{leases}");
}
