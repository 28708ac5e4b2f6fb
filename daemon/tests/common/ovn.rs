//! A whole OVN on one host for tests, inside a network namespace the test made: the
//! northbound and southbound ovsdb-servers and ovn-northd (Debian's ovn-central), and a
//! chassis: Open vSwitch (its ovsdb-server and ovs-vswitchd with the userspace datapath,
//! since this host has no openvswitch module) with ovn-controller (Debian's ovn-host).
//! Everything lives in a temporary directory (sockets, databases, logs) and is stopped on
//! drop. Included by path by the tests that use it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const TOOLS: &[&str] = &[
    "ovsdb-server",
    "ovsdb-tool",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovn-northd",
    "ovn-controller",
    "ovn-nbctl",
    "ovn-sbctl",
];

pub struct OvnStack {
    pub dir: PathBuf,
    ns: String,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_socket(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn need_tools() {
    for t in TOOLS {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{t} is missing: run scripts/install-deps.sh (ovn-central, ovn-host, openvswitch-switch)"
        );
    }
}

impl OvnStack {
    fn new(ns: &str, tag: &str) -> OvnStack {
        need_tools();
        let dir = std::env::temp_dir().join(format!("cairn-ovn-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        OvnStack {
            dir,
            ns: ns.to_string(),
        }
    }

    /// Only Open vSwitch in namespace `ns` (what cairn-init runs on the appliance), with
    /// the userspace datapath for the bridges ovn-controller makes, and a `br-phy` bridge
    /// that takes over `underlay` (an interface) and its address `cidr`: OVS's userspace
    /// Geneve tunnels route and resolve their underlay through such a bridge.
    pub fn ovs_only(ns: &str, tag: &str, underlay: &str, cidr: &str) -> OvnStack {
        let s = OvnStack::new(ns, tag);
        s.start_ovs();
        s.vsctl(&[
            "set",
            "open_vswitch",
            ".",
            "external_ids:ovn-bridge-datapath-type=netdev",
        ]);
        s.vsctl(&[
            "add-br",
            "br-phy",
            "--",
            "set",
            "bridge",
            "br-phy",
            "datapath_type=netdev",
            "--",
            "add-port",
            "br-phy",
            underlay,
        ]);
        let ipc = |args: &[&str]| {
            run(Command::new("ip").args(["-n", ns]).args(args));
        };
        ipc(&["addr", "flush", "dev", underlay]);
        ipc(&["addr", "add", cidr, "dev", "br-phy"]);
        ipc(&["link", "set", "br-phy", "up"]);
        s
    }

    fn start_ovs(&self) {
        let dir = &self.dir;
        let d = |f: &str| dir.join(f).display().to_string();
        run(Command::new("ovsdb-tool").args([
            "create",
            &d("conf.db"),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ]));
        self.daemon(&[
            "ovsdb-server",
            &d("conf.db"),
            &format!("--remote=punix:{}", d("db.sock")),
            &format!("--pidfile={}", d("conf.pid")),
            &format!("--unixctl={}", d("conf.ctl")),
            &format!("--log-file={}", d("conf.log")),
        ]);
        wait_socket(&dir.join("db.sock"));
        self.vsctl(&["--no-wait", "init"]);
        self.daemon(&[
            "ovs-vswitchd",
            &format!("unix:{}", d("db.sock")),
            &format!("--pidfile={}", d("vswitchd.pid")),
            &format!("--unixctl={}", d("vswitchd.ctl")),
            &format!("--log-file={}", d("vswitchd.log")),
        ]);
    }

    /// Starts it all in namespace `ns`, the chassis named `chassis`.
    pub fn start(ns: &str, chassis: &str) -> OvnStack {
        let s = OvnStack::new(ns, chassis);
        let dir = s.dir.clone();
        let d = |f: &str| dir.join(f).display().to_string();
        for (db, schema) in [
            ("nb", "/usr/share/ovn/ovn-nb.ovsschema"),
            ("sb", "/usr/share/ovn/ovn-sb.ovsschema"),
        ] {
            run(Command::new("ovsdb-tool").args(["create", &d(&format!("{db}.db")), schema]));
        }
        for (db, sock) in [("nb", "nb.sock"), ("sb", "sb.sock")] {
            s.daemon(&[
                "ovsdb-server",
                &d(&format!("{db}.db")),
                &format!("--remote=punix:{}", d(sock)),
                &format!("--pidfile={}", d(&format!("{db}.pid"))),
                &format!("--unixctl={}", d(&format!("{db}.ctl"))),
                &format!("--log-file={}", d(&format!("{db}.log"))),
            ]);
            wait_socket(&dir.join(sock));
        }
        s.daemon(&[
            "ovn-northd",
            &format!("--ovnnb-db=unix:{}", d("nb.sock")),
            &format!("--ovnsb-db=unix:{}", d("sb.sock")),
            &format!("--pidfile={}", d("northd.pid")),
            &format!("--unixctl={}", d("northd.ctl")),
            &format!("--log-file={}", d("northd.log")),
        ]);
        s.start_ovs();
        s.vsctl(&[
            "set",
            "open_vswitch",
            ".",
            &format!("external_ids:system-id={chassis}"),
            &format!("external_ids:hostname={chassis}"),
            &format!("external_ids:ovn-remote=unix:{}", d("sb.sock")),
            "external_ids:ovn-encap-type=geneve",
            "external_ids:ovn-encap-ip=127.0.0.1",
            "external_ids:ovn-bridge-datapath-type=netdev",
        ]);
        s.daemon(&[
            "ovn-controller",
            &format!("unix:{}", d("db.sock")),
            &format!("--pidfile={}", d("controller.pid")),
            &format!("--log-file={}", d("controller.log")),
        ]);
        // ovn-controller makes br-int (userspace) once it has the southbound database.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !s.vsctl_ok(&["br-exists", "br-int"]) {
            assert!(
                Instant::now() < deadline,
                "ovn-controller made no br-int: {}",
                std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn env(&self, c: &mut Command) {
        c.env("OVS_RUNDIR", &self.dir).env("OVN_RUNDIR", &self.dir);
    }

    fn daemon(&self, argv: &[&str]) {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .args(argv)
            .arg("--detach");
        self.env(&mut c);
        run(&mut c);
    }

    pub fn vsctl(&self, args: &[&str]) -> String {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "ovs-vsctl"]).args(args);
        self.env(&mut c);
        run(&mut c)
    }

    fn vsctl_ok(&self, args: &[&str]) -> bool {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "ovs-vsctl"]).args(args);
        self.env(&mut c);
        c.output().is_ok_and(|o| o.status.success())
    }

    pub fn nb_socket(&self) -> String {
        format!("unix:{}", self.dir.join("nb.sock").display())
    }

    pub fn nbctl(&self, args: &[&str]) -> String {
        run(Command::new("ovn-nbctl")
            .arg(format!("--db={}", self.nb_socket()))
            .args(args))
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for OvnStack {
    fn drop(&mut self) {
        for p in ["controller", "vswitchd", "northd", "conf", "sb", "nb"] {
            let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("{p}.pid"))) else {
                continue;
            };
            let _ = Command::new("kill").arg(pid.trim()).output();
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
