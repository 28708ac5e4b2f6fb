//! The layout against the real OVN databases: a northbound and a southbound ovsdb-server
//! (Debian's ovn-central schemas) and ovn-northd between them, all on unix sockets in a
//! temporary directory (no kernel module, no host interface involved). A network with an
//! uplink is made twice (converges), a port gets an address from OVN's IPAM through
//! northd, northd compiles the router into a southbound datapath, and delete leaves no
//! row behind. Prints what one change costs through ovn-nbctl. Needs ovn-central's
//! programs (scripts/install-deps.sh); fails loudly without them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_ovn::{layout, NetworkSpec, Northbound, PortSpec, UplinkSpec};

struct Daemons {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn need(tool: &str) {
    let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists());
    assert!(
        found,
        "nb_layout needs {tool} (ovn-central: bash scripts/install-deps.sh)"
    );
}

fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().expect(prog);
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_socket(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start() -> Daemons {
    for t in [
        "ovsdb-server",
        "ovsdb-tool",
        "ovn-northd",
        "ovn-nbctl",
        "ovn-sbctl",
    ] {
        need(t);
    }
    let dir = std::env::temp_dir().join(format!("cairn-ovn-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = Daemons {
        dir: dir.clone(),
        children: vec![],
    };
    for (db, schema) in [("nb", "ovn-nb"), ("sb", "ovn-sb")] {
        let file = dir.join(format!("{db}.db"));
        run(
            "ovsdb-tool",
            &[
                "create",
                file.to_str().unwrap(),
                &format!("/usr/share/ovn/{schema}.ovsschema"),
            ],
        );
        let sock = dir.join(format!("{db}.sock"));
        let child = Command::new("ovsdb-server")
            .arg(&file)
            .arg(format!("--remote=punix:{}", sock.display()))
            .arg(format!(
                "--unixctl={}",
                dir.join(format!("{db}.ctl")).display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.join(format!("{db}.log")).display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovsdb-server");
        d.children.push(child);
        wait_socket(&sock);
    }
    let northd = Command::new("ovn-northd")
        .arg(format!("--ovnnb-db=unix:{}", dir.join("nb.sock").display()))
        .arg(format!("--ovnsb-db=unix:{}", dir.join("sb.sock").display()))
        .arg(format!("--unixctl={}", dir.join("northd.ctl").display()))
        .arg(format!("--log-file={}", dir.join("northd.log").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ovn-northd");
    d.children.push(northd);
    d
}

fn spec() -> NetworkSpec {
    NetworkSpec {
        prefix: "cairn-net3".into(),
        gateway: "10.50.0.1".parse().unwrap(),
        prefix_len: 24,
        mac: "10:66:6a:00:00:03".into(),
        mtu: 1442,
        dns_domain: "incus".into(),
        dns_servers: vec!["10.50.0.1".parse().unwrap()],
        uplink: Some(UplinkSpec {
            physnet: "UPLINK".into(),
            address: "192.0.2.10".parse().unwrap(),
            prefix_len: 24,
            gateway: "192.0.2.1".parse().unwrap(),
            mac: "10:66:6a:00:01:03".into(),
            gateway_chassis: vec![],
            snat: true,
        }),
    }
}

#[test]
fn a_network_and_a_port_through_northd() {
    let d = start();
    let nb = Northbound::new(&format!("unix:{}", d.dir.join("nb.sock").display()));
    let sb = format!("--db=unix:{}", d.dir.join("sb.sock").display());
    let n = spec();

    let t = Instant::now();
    layout::create(&nb, &n).expect("create");
    let create = t.elapsed();
    layout::create(&nb, &n).expect("create again (converges)");
    let show = nb.one(&["show"]).unwrap();
    for name in [
        "cairn-net3-lr",
        "cairn-net3-ls-int",
        "cairn-net3-ls-ext",
        "cairn-net3-lr-lrp-int",
        "cairn-net3-lr-lrp-ext",
        "cairn-net3-ls-ext-lsp-provider",
    ] {
        // A row is shown once as `switch … (name)`, `router … (name)` or `port name`.
        let count = show
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with(&format!("({name})")) || *l == format!("port {name}"))
            .count();
        assert_eq!(count, 1, "{name} once in:\n{show}");
    }
    let nat = nb.one(&["lr-nat-list", "cairn-net3-lr"]).unwrap();
    assert!(
        nat.contains("192.0.2.10") && nat.contains("10.50.0.0/24"),
        "{nat}"
    );
    let routes = nb.one(&["lr-route-list", "cairn-net3-lr"]).unwrap();
    assert!(routes.contains("192.0.2.1"), "{routes}");
    let dhcp = nb.one(&["dhcp-options-list"]).unwrap();
    assert_eq!(dhcp.lines().count(), 1, "{dhcp}");

    let port = PortSpec {
        instance_uuid: "0b5b6a3e".into(),
        device: "eth0".into(),
        mac: "10:66:6a:aa:bb:01".into(),
        address: None,
        hostname: "c1".into(),
    };
    let t = Instant::now();
    let name = layout::add_port(&nb, &n, &port).expect("port");
    let add_port = t.elapsed();
    assert_eq!(name, "cairn-net3-instance-0b5b6a3e-eth0");
    // ovn-northd's IPAM gives the port an address from the subnet, never the gateway.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ip = loop {
        if let Some(ip) = layout::port_address(&nb, &name).unwrap() {
            break ip;
        }
        assert!(Instant::now() < deadline, "no dynamic address from northd");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        ip.octets()[..3] == [10, 50, 0] && ip.octets()[3] > 1,
        "{ip}"
    );
    let fixed = PortSpec {
        device: "eth1".into(),
        mac: "10:66:6a:aa:bb:02".into(),
        address: Some("10.50.0.77".parse().unwrap()),
        ..port.clone()
    };
    let fixed_name = layout::add_port(&nb, &n, &fixed).unwrap();
    assert_eq!(
        layout::port_address(&nb, &fixed_name).unwrap(),
        Some("10.50.0.77".parse().unwrap())
    );
    // northd compiled the router into a southbound datapath.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dp = run("ovn-sbctl", &[&sb, "list", "datapath_binding"]);
        if dp.contains("cairn-net3-lr") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no datapath for the router:\n{dp}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bad input is refused before ovn-nbctl runs; an unreachable database is named.
    let mut bad = n.clone();
    bad.mac = "zz".into();
    assert!(layout::create(&nb, &bad).is_err());
    let gone = Northbound::new(&format!("unix:{}", d.dir.join("none.sock").display()))
        .with_timeout(Duration::from_secs(1));
    let e = layout::create(&gone, &n).unwrap_err().to_string();
    assert!(e.contains("unreachable"), "{e}");

    layout::remove_port(&nb, &fixed_name).unwrap();
    layout::remove_port(&nb, &name).unwrap();
    let t = Instant::now();
    layout::delete(&nb, &n).unwrap();
    let delete = t.elapsed();
    layout::delete(&nb, &n).expect("delete again (converges)");
    let show = nb.one(&["show"]).unwrap();
    assert!(show.trim().is_empty(), "{show}");
    assert!(nb.one(&["dhcp-options-list"]).unwrap().trim().is_empty());
    println!(
        "ovn-nbctl costs: network create {:.1} ms (2 transactions + a lookup), port add {:.1} ms, network delete {:.1} ms",
        create.as_secs_f64() * 1e3,
        add_port.as_secs_f64() * 1e3,
        delete.as_secs_f64() * 1e3
    );
}
