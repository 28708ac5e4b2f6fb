//! The `bridge` network type: a Linux bridge made and addressed over rtnetlink, its own
//! dnsmasq, and its own nftables table. `apply` makes the host match a spec whether the
//! bridge is new, already there from before a restart, or being changed live.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::config::{self, BridgeSpec};
use super::dnsmasq::{self, Dnsmasq, Lease};
use super::{netlink, nft, NetworkDriver, NetworkError, NetworkState};
use crate::db::records::ConfigMap;

pub struct Bridge {
    name: String,
    /// `<state>/networks/<name>`: dnsmasq's config, leases and hosts dir.
    dir: PathBuf,
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    spec: Option<BridgeSpec>,
    dnsmasq: Option<Dnsmasq>,
}

impl Bridge {
    pub fn new(name: &str, dir: &Path) -> Bridge {
        Bridge {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            running: Mutex::new(Running::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn io(e: std::io::Error) -> NetworkError {
    NetworkError::Io(e.to_string())
}

/// The interfaces that accept router advertisements now (`accept_ra` = 1), whose
/// acceptance IPv6 forwarding would end.
fn netlink_accepting_ra() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/proc/sys/net/ipv6/conf") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "all" && n != "default" && n != "lo")
        .filter(|n| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{n}/accept_ra"))
                .is_ok_and(|v| v.trim() == "1")
        })
        .collect()
}

/// Makes the spec's `bridge.external_interfaces` ports of the bridge, and releases those
/// an earlier spec listed and this one does not. Like Incus, only an unconfigured
/// interface is taken: an address on it would be cut off by the bridge.
fn attach_external(spec: &BridgeSpec, before: Option<&BridgeSpec>) -> Result<(), NetworkError> {
    let key = "bridge.external_interfaces";
    let bridge = netlink::index(&spec.name).map_err(io)?;
    let links = netlink::links().map_err(io)?;
    let addrs = netlink::addresses().map_err(io)?;
    for e in &spec.external {
        let l = links.iter().find(|l| l.name == *e).ok_or_else(|| {
            NetworkError::Invalid(format!(
                "{key}: interface {e:?} does not exist on this server"
            ))
        })?;
        if l.master == Some(bridge) {
            continue;
        }
        if l.master.is_some() {
            return Err(NetworkError::Invalid(format!(
                "{key}: interface {e:?} is already a port of another bridge or bond"
            )));
        }
        let configured = addrs.iter().any(|a| {
            a.index == l.index
                && !matches!(a.addr, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
        });
        if configured {
            return Err(NetworkError::Invalid(format!(
                "{key}: interface {e:?} has addresses: only unconfigured interfaces can be bridged"
            )));
        }
        netlink::set_master(e, &spec.name).map_err(io)?;
        netlink::link_up(e).map_err(io)?;
    }
    for old in before.map(|b| b.external.as_slice()).unwrap_or_default() {
        if !spec.external.contains(old) && netlink::exists(old) {
            netlink::set_nomaster(old).map_err(io)?;
        }
    }
    Ok(())
}

impl NetworkDriver for Bridge {
    fn kind(&self) -> &'static str {
        "bridge"
    }

    fn validate(&self, config: &ConfigMap) -> Result<(), NetworkError> {
        config::parse(&self.name, config).map(drop)
    }

    fn apply(&self, config: &ConfigMap) -> Result<(), NetworkError> {
        let spec = config::parse(&self.name, config)?;
        let mut run = self.lock();
        let name = &self.name;
        if !netlink::exists(name) {
            netlink::create_bridge(name).map_err(io)?;
        }
        if let Some(mtu) = spec.mtu {
            netlink::set_mtu(name, mtu).map_err(io)?;
        }
        let index = netlink::index(name).map_err(io)?;
        if spec.ipv6.is_some() {
            // No duplicate address detection on our own bridge: the address is usable at
            // once (dnsmasq binds it), rather than tentative until a port comes up.
            let sys = format!("/proc/sys/net/ipv6/conf/{name}/accept_dad");
            std::fs::write(&sys, "0")
                .map_err(|e| NetworkError::Io(format!("writing {sys}: {e}")))?;
        }
        for a in netlink::addresses().map_err(io)? {
            let wanted = match a.addr {
                IpAddr::V4(v4) => spec
                    .ipv4
                    .is_some_and(|c| v4 == c.addr && a.prefix == c.prefix),
                // The kernel's link-local address stays.
                IpAddr::V6(v6) => {
                    (v6.segments()[0] & 0xffc0) == 0xfe80
                        || spec
                            .ipv6
                            .is_some_and(|c| v6 == c.addr && a.prefix == c.prefix)
                }
            };
            if a.index == index && !wanted {
                netlink::delete_address(name, a.addr, a.prefix).map_err(io)?;
            }
        }
        if let Some(c) = spec.ipv4 {
            netlink::replace_address(name, c.addr, c.prefix).map_err(io)?;
        }
        if let Some(c) = spec.ipv6 {
            netlink::replace_address6(name, c.addr, c.prefix).map_err(io)?;
        }
        netlink::link_up(name).map_err(io)?;
        attach_external(&spec, run.spec.as_ref())?;
        if spec.ipv4.is_some() && spec.routing4 {
            // Per network namespace: what routing between the bridge and the uplink needs.
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(|e| NetworkError::Io(format!("enabling IPv4 forwarding: {e}")))?;
        }
        if spec.ipv6.is_some() && spec.routing6 {
            // The bridge routes for its /64 (dnsmasq advertises it as a router). Forwarding
            // turns off router advertisements being accepted on interfaces set to 1; the
            // ones that take them (the uplink's SLAAC) are set to 2, which keeps them.
            for iface in netlink_accepting_ra() {
                let sys = format!("/proc/sys/net/ipv6/conf/{iface}/accept_ra");
                let _ = std::fs::write(&sys, "2");
            }
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
                .map_err(|e| NetworkError::Io(format!("enabling IPv6 forwarding: {e}")))?;
        }
        nft::apply(&spec)?;
        // dnsmasq reads its config once: a change of address, range or domain restarts it.
        if run.spec.as_ref() != Some(&spec) || run.dnsmasq.is_none() {
            if let Some(mut old) = run.dnsmasq.take() {
                old.stop();
            }
            if spec.wants_dnsmasq() {
                run.dnsmasq = Some(Dnsmasq::start(&spec, &self.dir)?);
            }
        }
        tracing::info!(
            "network {name}: bridge up, ipv4 {}, nat {}, dhcp {}, ipv6 {}",
            spec.ipv4
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none".into()),
            spec.nat,
            spec.dhcp,
            spec.ipv6
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none".into()),
        );
        run.spec = Some(spec);
        Ok(())
    }

    fn delete(&self) -> Result<(), NetworkError> {
        let mut run = self.lock();
        if let Some(mut d) = run.dnsmasq.take() {
            d.stop();
        }
        run.spec = None;
        nft::remove(&self.name)?;
        if netlink::exists(&self.name) {
            netlink::delete_link(&self.name).map_err(io)?;
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetworkError::Io(format!(
                "removing {}: {e}",
                self.dir.display()
            ))),
            _ => Ok(()),
        }
    }

    fn set_host(&self, key: &str, line: Option<String>) -> Result<(), NetworkError> {
        let hosts = self.dir.join("dnsmasq.hosts");
        std::fs::create_dir_all(&hosts).map_err(io)?;
        let p = hosts.join(key);
        // dnsmasq watches the dir with inotify: a file written whole and renamed into
        // place is never read half-written.
        match line {
            Some(l) => {
                let tmp = hosts.join(format!(".{key}.tmp"));
                std::fs::write(&tmp, l).map_err(io)?;
                std::fs::rename(&tmp, &p).map_err(io)
            }
            None => match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
                _ => Ok(()),
            },
        }
    }

    fn forget_hosts_of(&self, instance: &str) -> Result<(), NetworkError> {
        let prefix = format!("{instance}.");
        let Ok(rd) = std::fs::read_dir(self.dir.join("dnsmasq.hosts")) else {
            return Ok(());
        };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                std::fs::remove_file(e.path()).map_err(io)?;
            }
        }
        Ok(())
    }

    fn leases(&self) -> Result<Vec<Lease>, NetworkError> {
        let text = std::fs::read_to_string(self.dir.join("dnsmasq.leases")).unwrap_or_default();
        // A reservation's host line has three fields: mac,ip,name.
        let mut statics = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("dnsmasq.hosts")) {
            for e in rd.flatten() {
                let l = std::fs::read_to_string(e.path()).unwrap_or_default();
                let f: Vec<&str> = l.trim().split(',').collect();
                if f.len() == 3 {
                    statics.push(f[0].to_ascii_lowercase());
                }
            }
        }
        Ok(dnsmasq::parse_leases(&text, &statics))
    }

    fn state(&self) -> Result<NetworkState, NetworkError> {
        let mut st = super::iface::state(&self.name)?;
        st.dnsmasq_pid = self.lock().dnsmasq.as_ref().and_then(Dnsmasq::pid);
        Ok(st)
    }
}
