//! One Debian dnsmasq per bridge network: DHCPv4 from the network's ranges, with its own
//! leases file and a hosts dir (one file per instance NIC: its MAC, its reserved address
//! if any, and the instance's name, which is what makes `<instance>.<dns.domain>` resolve),
//! and DNS for those names on the bridge's address only. cairnd supervises it: a dnsmasq
//! that exits is started again after a pause, until the network is stopped.
//!
//! Layout under `<state>/networks/<name>/`: `dnsmasq.conf`, `dnsmasq.leases`,
//! `dnsmasq.hosts/<instance>.<device>`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::config::{BridgeSpec, DnsMode};
use super::NetworkError;

pub const PROGRAM: &str = "dnsmasq";

/// The config file for `spec`, whose files live in `dir`. Pure, so it is unit-tested.
pub fn render(spec: &BridgeSpec, dir: &Path) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("# Written by cairnd; rewritten at every change of the network.".into());
    line("keep-in-foreground".into());
    // No pid file: dnsmasq's default, /var/run/dnsmasq.pid, is one file for every network,
    // and two dnsmasqs starting at once made one of them exit ("File exists"). cairnd
    // records the pid itself (dnsmasq.pid in the network's dir).
    line("pid-file=".into());
    line("strict-order".into());
    // Only the bridge: never answer on the host's other links.
    line("bind-interfaces".into());
    line("except-interface=lo".into());
    line(format!("interface={}", spec.name));
    line("no-ping".into());
    // Upstream servers come from the host's resolv.conf; names under the domain are ours.
    line("no-hosts".into());
    if let Some(c) = spec.ipv4 {
        line(format!("listen-address={}", c.addr));
    }
    if let Some(c) = spec.ipv6 {
        line(format!("listen-address={}", c.addr));
    }
    if spec.dns_mode != DnsMode::None {
        line(format!("domain={}", spec.domain));
        line(format!("local=/{}/", spec.domain));
        line("expand-hosts".into());
    }
    if spec.dhcp {
        if let Some(c) = spec.ipv4 {
            line("dhcp-authoritative".into());
            line("dhcp-no-override".into());
            line("dhcp-rapid-commit".into());
            line(format!(
                "dhcp-leasefile={}",
                dir.join("dnsmasq.leases").display()
            ));
            line(format!(
                "dhcp-hostsdir={}",
                dir.join("dnsmasq.hosts").display()
            ));
            line(format!("dhcp-option=option:router,{}", c.addr));
            line(format!("dhcp-option=option:dns-server,{}", c.addr));
            if let Some(m) = spec.mtu {
                line(format!("dhcp-option-force=26,{m}"));
            }
            for (a, b) in spec.ranges() {
                line(format!(
                    "dhcp-range={a},{b},{},{}",
                    c.netmask(),
                    spec.dhcp_expiry
                ));
            }
        }
    }
    if spec.ipv6.is_some() {
        // Router advertisements: instances make SLAAC addresses in the /64; stateless
        // DHCPv6 adds the DNS server and domain. ra-names: dnsmasq learns the SLAAC
        // addresses of the DHCPv4 clients' names (it pings them, on this bridge only).
        line("enable-ra".into());
        let mode = if spec.dhcp6 {
            "ra-stateless,ra-names"
        } else {
            "ra-only"
        };
        line(format!(
            "dhcp-range=::,constructor:{},{mode},64,1h",
            spec.name
        ));
        if spec.dhcp6 {
            if let Some(c) = spec.ipv6 {
                line(format!("dhcp-option=option6:dns-server,[{}]", c.addr));
            }
        }
    }
    out
}

/// One instance NIC's hosts-dir line: `mac[,ip][,name]` (dnsmasq's `dhcp-host` syntax);
/// none when there is neither an address nor a name to give (`dns.mode` other than
/// managed and no reservation), as Incus writes it.
pub fn host_line(hwaddr: &str, ipv4: Option<Ipv4Addr>, hostname: Option<&str>) -> Option<String> {
    let mut l = hwaddr.to_string();
    if let Some(ip) = ipv4 {
        l.push_str(&format!(",{ip}"));
    }
    if let Some(h) = hostname {
        l.push_str(&format!(",{h}"));
    }
    (l != hwaddr).then(|| l + "\n")
}

/// One line of dnsmasq's leases file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub hostname: String,
    pub hwaddr: String,
    pub address: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub location: String,
    pub project: String,
}

/// Parses a leases file (`expiry mac ip hostname clientid` per line); `static_macs` are the
/// NICs with a reservation, whose leases Incus shows as `static`.
pub fn parse_leases(text: &str, static_macs: &[String]) -> Vec<Lease> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 || f[0] == "duid" {
                return None;
            }
            let mac = f[1].to_ascii_lowercase();
            Some(Lease {
                hostname: if f[3] == "*" {
                    String::new()
                } else {
                    f[3].to_string()
                },
                kind: if static_macs.contains(&mac) {
                    "static"
                } else {
                    "dynamic"
                }
                .into(),
                hwaddr: mac,
                address: f[2].to_string(),
                location: String::new(),
                project: "default".into(),
            })
        })
        .collect()
}

#[derive(Default)]
struct Shared {
    stopping: bool,
    child: Option<Child>,
}

/// A supervised dnsmasq: started by [`Dnsmasq::start`], restarted when it exits, killed by
/// [`Dnsmasq::stop`] (also on drop).
pub struct Dnsmasq {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn dir_of(networks: &Path, name: &str) -> PathBuf {
    networks.join(name)
}

impl Dnsmasq {
    /// Writes the config for `spec` into `dir` and starts dnsmasq on it. Waits briefly so a
    /// dnsmasq that refuses its config (a port taken, a bad option) is an error here.
    pub fn start(spec: &BridgeSpec, dir: &Path) -> Result<Dnsmasq, NetworkError> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            NetworkError::Io(format!("{what} {}: {e}", p.display()))
        };
        let hosts = dir.join("dnsmasq.hosts");
        std::fs::create_dir_all(&hosts).map_err(|e| io("creating", &hosts, e))?;
        // dnsmasq drops root (for Debian's `dnsmasq` user, else `nobody`) and reads the
        // hosts dir after that, through inotify: the way there is traversable and the dir
        // is that user's, owner-only. Everything else it opens as root, so it stays ours.
        let (user, uid) = unprivileged_user();
        use std::os::unix::fs::PermissionsExt;
        for (p, mode) in [(dir, 0o711), (hosts.as_path(), 0o700)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io("setting the mode of", p, e))?;
        }
        nix::unistd::chown(&hosts, Some(uid), None)
            .map_err(|e| NetworkError::Io(format!("giving {} to {user}: {e}", hosts.display())))?;
        let conf = dir.join("dnsmasq.conf");
        let text = format!("{}user={user}\n", render(spec, dir));
        crate::owner_only::write(&conf, text.as_bytes()).map_err(|e| io("writing", &conf, e))?;
        let leases = dir.join("dnsmasq.leases");
        if !leases.exists() {
            crate::owner_only::write(&leases, b"").map_err(|e| io("creating", &leases, e))?;
        }
        let log = dir.join("dnsmasq.log");
        kill_stale(dir, &conf);
        let mut first = spawn(&conf, &log)?;
        std::thread::sleep(Duration::from_millis(150));
        if let Ok(Some(status)) = first.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(NetworkError::Dnsmasq(format!(
                "dnsmasq for {} exited with {status}: {}",
                spec.name,
                tail.lines().rev().take(3).collect::<Vec<_>>().join("; ")
            )));
        }
        let shared = Arc::new((
            Mutex::new(Shared {
                stopping: false,
                child: Some(first),
            }),
            Condvar::new(),
        ));
        let s2 = shared.clone();
        let name = spec.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dnsmasq-{name}"))
            .spawn(move || supervise(&s2, &conf, &log, &name))
            .map_err(|e| NetworkError::Io(format!("starting the dnsmasq supervisor: {e}")))?;
        Ok(Dnsmasq {
            shared,
            thread: Some(thread),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        let g = self.shared.0.lock().unwrap_or_else(|p| p.into_inner());
        g.child.as_ref().map(Child::id)
    }

    pub fn stop(&mut self) {
        {
            let mut g = self.shared.0.lock().unwrap_or_else(|p| p.into_inner());
            g.stopping = true;
            if let Some(c) = g.child.as_mut() {
                let _ = c.kill();
            }
            self.shared.1.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The user dnsmasq runs as once it has its sockets: Debian's `dnsmasq` (made by
/// dnsmasq-base) if there is one, else `nobody`, as Incus chooses.
fn unprivileged_user() -> (String, nix::unistd::Uid) {
    for name in ["dnsmasq", "nobody"] {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            return (name.to_string(), u.uid);
        }
    }
    ("nobody".into(), nix::unistd::Uid::from_raw(65534))
}

/// A dnsmasq left by the cairnd before this one (it outlives the daemon, so containers keep
/// their leases across a daemon restart) holds the bridge's port: end it before starting
/// ours. Its pid is only trusted if that process still runs our config file.
fn kill_stale(dir: &Path, conf: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("dnsmasq.pid")) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let want = format!("--conf-file={}", conf.display());
    if !cmdline.split(|b| *b == 0).any(|a| a == want.as_bytes()) {
        return;
    }
    tracing::info!("stopping the dnsmasq {pid} a previous cairnd left running");
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..50 {
        if nix::sys::signal::kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(50));
}

fn spawn(conf: &Path, log: &Path) -> Result<Child, NetworkError> {
    use std::os::unix::fs::OpenOptionsExt;
    let logf = std::fs::OpenOptions::new()
        .mode(0o600)
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| NetworkError::Io(format!("opening {}: {e}", log.display())))?;
    let child = Command::new(PROGRAM)
        .arg(format!("--conf-file={}", conf.display()))
        .arg("--log-facility=-")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .map_err(|e| NetworkError::Dnsmasq(format!("running {PROGRAM}: {e}")))?;
    if let Some(dir) = conf.parent() {
        let _ =
            crate::owner_only::write(&dir.join("dnsmasq.pid"), child.id().to_string().as_bytes());
    }
    Ok(child)
}

/// Waits on the child without holding the lock for long, and starts it again (after a
/// pause that grows to 10 s) until told to stop.
fn supervise(shared: &(Mutex<Shared>, Condvar), conf: &Path, log: &Path, name: &str) {
    let mut pause = Duration::from_millis(500);
    loop {
        let exited = {
            let mut g = shared.0.lock().unwrap_or_else(|p| p.into_inner());
            if g.stopping {
                if let Some(mut c) = g.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return;
            }
            match g.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => {
                    g.child = None;
                    Some(status.to_string())
                }
                Some(Err(e)) => Some(e.to_string()),
                Some(Ok(None)) => None,
                None => Some("not running".into()),
            }
        };
        match exited {
            None => {
                let g = shared.0.lock().unwrap_or_else(|p| p.into_inner());
                let _ = shared.1.wait_timeout(g, Duration::from_millis(250));
            }
            Some(why) => {
                tracing::warn!(
                    "dnsmasq for network {name} exited ({why}); restarting in {pause:?}"
                );
                let g = shared.0.lock().unwrap_or_else(|p| p.into_inner());
                let (g, _) = shared
                    .1
                    .wait_timeout_while(g, pause, |s| !s.stopping)
                    .unwrap_or_else(|p| p.into_inner());
                if g.stopping {
                    return;
                }
                drop(g);
                pause = (pause * 2).min(Duration::from_secs(10));
                match spawn(conf, log) {
                    Ok(c) => shared.0.lock().unwrap_or_else(|p| p.into_inner()).child = Some(c),
                    Err(e) => tracing::error!("restarting dnsmasq for network {name}: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::config::Ipv4Cidr;

    fn spec() -> BridgeSpec {
        BridgeSpec {
            name: "br1".into(),
            ipv4: Some(Ipv4Cidr {
                addr: Ipv4Addr::new(10, 123, 0, 1),
                prefix: 24,
            }),
            nat: true,
            dhcp: true,
            dhcp_ranges: vec![],
            dhcp_expiry: "1h".into(),
            nat_address: None,
            domain: "lab".into(),
            mtu: Some(1400),
            ipv6: None,
            nat6: false,
            dhcp6: true,
            firewall4: true,
            firewall6: true,
            routing4: true,
            routing6: true,
            dns_mode: crate::network::config::DnsMode::Managed,
            external: vec![],
        }
    }

    #[test]
    fn config_serves_dhcp_and_the_domain_on_the_bridge_only() {
        let c = render(&spec(), Path::new("/s/networks/br1"));
        for want in [
            "interface=br1\n",
            "bind-interfaces\n",
            "listen-address=10.123.0.1\n",
            "domain=lab\n",
            "local=/lab/\n",
            "dhcp-range=10.123.0.2,10.123.0.254,255.255.255.0,1h\n",
            "dhcp-leasefile=/s/networks/br1/dnsmasq.leases\n",
            "dhcp-hostsdir=/s/networks/br1/dnsmasq.hosts\n",
            "dhcp-option=option:router,10.123.0.1\n",
            "dhcp-option-force=26,1400\n",
        ] {
            assert!(c.contains(want), "{want:?} missing from\n{c}");
        }
        let mut s = spec();
        s.dhcp = false;
        let c = render(&s, Path::new("/x"));
        assert!(!c.contains("dhcp-range") && c.contains("domain=lab"));
        assert!(c.contains("\npid-file=\n"), "a shared pid file: {c}");
        s.dns_mode = DnsMode::None;
        let c = render(&s, Path::new("/x"));
        assert!(!c.contains("domain=") && !c.contains("local="), "{c}");
        s.dns_mode = DnsMode::Managed;
        s.ipv6 = Some(crate::network::config::Ipv6Cidr {
            addr: "fd42:1:2:3::1".parse().unwrap(),
            prefix: 64,
        });
        let c = render(&s, Path::new("/x"));
        for want in [
            "listen-address=fd42:1:2:3::1\n",
            "enable-ra\n",
            "dhcp-range=::,constructor:br1,ra-stateless,ra-names,64,1h\n",
            "dhcp-option=option6:dns-server,[fd42:1:2:3::1]\n",
        ] {
            assert!(c.contains(want), "{want:?} missing from\n{c}");
        }
    }

    #[test]
    fn host_lines_and_leases() {
        assert_eq!(
            host_line("10:66:6a:00:00:01", None, Some("c1")).unwrap(),
            "10:66:6a:00:00:01,c1\n"
        );
        assert_eq!(
            host_line(
                "10:66:6a:00:00:01",
                Some(Ipv4Addr::new(10, 0, 0, 9)),
                Some("c1")
            )
            .unwrap(),
            "10:66:6a:00:00:01,10.0.0.9,c1\n"
        );
        assert_eq!(host_line("10:66:6a:00:00:01", None, None), None);
        let text = "1700000000 10:66:6a:00:00:01 10.123.0.50 c1 01:10:66:6a:00:00:01\n\
                    1700000000 10:66:6a:00:00:02 10.123.0.9 * *\nduid 00:01\ngarbage\n";
        let l = parse_leases(text, &["10:66:6a:00:00:02".into()]);
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].hostname.as_str(), l[0].kind.as_str()),
            ("c1", "dynamic")
        );
        assert_eq!((l[1].hostname.as_str(), l[1].kind.as_str()), ("", "static"));
        assert_eq!(l[1].address, "10.123.0.9");
    }
}
