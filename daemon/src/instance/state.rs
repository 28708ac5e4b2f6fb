//! The live state of an instance (`/1.0/instances/{name}/state`): status, init pid,
//! process count, memory and network counters, read from /proc and sysfs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::lxc::LxcState;
use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, DeviceMap, InstanceRecord};

#[derive(Debug, Clone, Serialize, Default)]
pub struct MemoryView {
    pub usage: u64,
    pub usage_peak: u64,
    pub total: u64,
    pub swap_usage: u64,
    pub swap_usage_peak: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AddressView {
    pub family: String,
    pub address: String,
    pub netmask: String,
    pub scope: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct CountersView {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub errors_received: u64,
    pub errors_sent: u64,
    pub packets_dropped_outbound: u64,
    pub packets_dropped_inbound: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkView {
    pub addresses: Vec<AddressView>,
    pub counters: CountersView,
    pub hwaddr: String,
    pub host_name: String,
    pub mtu: u32,
    pub state: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateView {
    pub status: String,
    pub status_code: u16,
    pub disk: BTreeMap<String, serde_json::Value>,
    pub memory: MemoryView,
    pub network: Option<BTreeMap<String, NetworkView>>,
    pub pid: i64,
    pub processes: i64,
    pub cpu: serde_json::Value,
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Counts the processes in the container's pid namespace by walking /proc for tasks that
/// share init's pid namespace.
fn count_processes(init: i32) -> i64 {
    let Ok(ns) = std::fs::read_link(format!("/proc/{init}/ns/pid")) else {
        return 0;
    };
    std::fs::read_dir("/proc")
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .filter(|e| std::fs::read_link(e.path().join("ns/pid")).ok().as_ref() == Some(&ns))
                .count() as i64
        })
        .unwrap_or(0)
}

fn memory_of(init: i32) -> MemoryView {
    // The container's cgroup, as seen from its init: the unified line on cgroup2, or the
    // memory controller's line on a hybrid host.
    let cg = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap_or_default();
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        if ctrl.split(',').any(|c| c == "memory") {
            let base = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
            return MemoryView {
                usage: read_u64(&base.join("memory.usage_in_bytes")),
                usage_peak: read_u64(&base.join("memory.max_usage_in_bytes")),
                ..Default::default()
            };
        }
        if ctrl.is_empty() {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                let base = Path::new(root).join(path.trim_start_matches('/'));
                if base.join("memory.current").exists() {
                    return MemoryView {
                        usage: read_u64(&base.join("memory.current")),
                        usage_peak: read_u64(&base.join("memory.peak")),
                        swap_usage: read_u64(&base.join("memory.swap.current")),
                        ..Default::default()
                    };
                }
            }
        }
    }
    MemoryView::default()
}

/// The container's interfaces `ifnames` as its network namespace has them: addresses
/// (what DHCP gave it, not what the config asked for), MTU, MAC, state and counters. A
/// container whose namespace cannot be entered shows none rather than failing the whole
/// state.
fn measured_nics(
    pid: i32,
    ifnames: Vec<String>,
) -> BTreeMap<String, (crate::network::netlink::Link, Vec<AddressView>)> {
    let r = crate::network::netlink::in_netns_of(pid, move || {
        let all = crate::network::netlink::addresses()?;
        let links = crate::network::netlink::links()?;
        let mut out = BTreeMap::new();
        for n in ifnames {
            let Some(link) = links.iter().find(|l| l.name == n) else {
                continue;
            };
            let v: Vec<AddressView> = all
                .iter()
                .filter(|a| a.index == link.index)
                .map(|a| AddressView {
                    family: if a.addr.is_ipv4() { "inet" } else { "inet6" }.into(),
                    address: a.addr.to_string(),
                    netmask: a.prefix.to_string(),
                    scope: a.scope.into(),
                })
                .collect();
            out.insert(n, (link.clone(), v));
        }
        Ok(out)
    });
    r.unwrap_or_else(|e| {
        tracing::debug!("reading the interfaces in the netns of {pid}: {e}");
        BTreeMap::new()
    })
}

fn nic_views(ec: &ConfigMap, ed: &DeviceMap, pid: i32) -> BTreeMap<String, NetworkView> {
    let ifnames: Vec<String> = ed
        .iter()
        .filter(|(_, c)| c.get("type").map(String::as_str) == Some("nic"))
        .map(|(dev, c)| c.get("name").cloned().unwrap_or_else(|| dev.clone()))
        .collect();
    let mut measured = measured_nics(pid, ifnames);
    let mut out = BTreeMap::new();
    for (dev, conf) in ed {
        if conf.get("type").map(String::as_str) != Some("nic") {
            continue;
        }
        let ifname = conf.get("name").cloned().unwrap_or_else(|| dev.clone());
        let Some((link, addresses)) = measured.remove(&ifname) else {
            continue;
        };
        let host_name = ec
            .get(&format!("volatile.{dev}.host_name"))
            .cloned()
            .unwrap_or_default();
        out.insert(
            ifname,
            NetworkView {
                addresses,
                counters: CountersView {
                    bytes_received: link.rx_bytes,
                    bytes_sent: link.tx_bytes,
                    packets_received: link.rx_packets,
                    packets_sent: link.tx_packets,
                    ..Default::default()
                },
                hwaddr: link.hwaddr,
                host_name,
                mtu: link.mtu,
                state: if link.up { "up" } else { "down" }.into(),
                kind: "broadcast".into(),
            },
        );
    }
    out
}

pub fn view(d: &Daemon, rec: &InstanceRecord, ls: LxcState) -> StateView {
    match super::expand(d, rec) {
        Ok((ec, ed)) => view_expanded(d, rec, ls, &ec, &ed),
        Err(_) => view_expanded(d, rec, ls, &rec.config, &rec.devices),
    }
}

pub fn view_expanded(
    d: &Daemon,
    rec: &InstanceRecord,
    ls: LxcState,
    ec: &ConfigMap,
    ed: &DeviceMap,
) -> StateView {
    let (status, status_code) = super::status_of(ls);
    let pid = if ls == LxcState::Stopped {
        None
    } else {
        super::lxc::init_pid(&d.paths.lxc, &rec.name).ok().flatten()
    };
    StateView {
        status: status.into(),
        status_code,
        disk: BTreeMap::new(),
        memory: pid.map(memory_of).unwrap_or_default(),
        network: pid.map(|p| nic_views(ec, ed, p)),
        pid: pid.map(i64::from).unwrap_or(0),
        processes: pid.map(count_processes).unwrap_or(0),
        cpu: serde_json::json!({"usage": 0}),
    }
}
