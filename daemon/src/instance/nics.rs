//! NICs added to, removed from or changed on a running container, as Incus hotplugs them:
//! the link made on the host (a veth pair, its host end on the bridge; or a macvlan on
//! its parent), moved into the container's network namespace under a temporary name,
//! then renamed, given its MAC and MTU and brought up there. A removed NIC's link is
//! deleted inside the container (a veth takes its host end with it). A changed NIC is
//! removed, then added.

use std::collections::BTreeMap;

use super::{InstanceError, Result};
use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, DeviceMap};
use crate::network::netlink;

fn nics(devices: &DeviceMap) -> BTreeMap<&String, &BTreeMap<String, String>> {
    devices
        .iter()
        .filter(|(_, d)| d.get("type").map(String::as_str) == Some("nic"))
        .collect()
}

fn ifname<'a>(dev: &'a str, conf: &'a BTreeMap<String, String>) -> &'a str {
    conf.get("name").map(String::as_str).unwrap_or(dev)
}

fn failed(what: String) -> impl FnOnce(std::io::Error) -> InstanceError {
    move |e| InstanceError::Failed(format!("{what}: {e}"))
}

/// Applies `old` → `new` to running container `name`'s NICs. Stops at the first failure
/// (the caller then records nothing); `config` receives the volatile keys new NICs get.
pub async fn hotplug(
    d: &Daemon,
    name: &str,
    old: &DeviceMap,
    new: &DeviceMap,
    config: &mut ConfigMap,
) -> Result<()> {
    let changed = super::nic_changes(old, new);
    if changed.is_empty() {
        return Ok(());
    }
    let Some(pid) = super::lxc::init_pid(&d.paths.lxc, name)? else {
        return Ok(());
    };
    let (before, after) = (nics(old), nics(new));
    for dev in &changed {
        if let Some(conf) = before.get(dev) {
            remove(d, name, pid, dev, conf).await?;
        }
    }
    for dev in &changed {
        if let Some(conf) = after.get(dev) {
            add(d, name, pid, dev, conf, config).await?;
        }
    }
    Ok(())
}

async fn remove(
    d: &Daemon,
    name: &str,
    pid: i32,
    dev: &str,
    conf: &BTreeMap<String, String>,
) -> Result<()> {
    let inside = ifname(dev, conf).to_string();
    let what = format!("removing NIC {dev:?} ({inside}) from {name}");
    tokio::task::spawn_blocking(move || {
        netlink::in_netns_of(pid, move || match netlink::exists(&inside) {
            true => netlink::delete_link(&inside),
            false => Ok(()),
        })
    })
    .await
    .map_err(|e| InstanceError::Failed(e.to_string()))?
    .map_err(failed(what))?;
    crate::network::nics::detach_nic(d, name, dev);
    tracing::info!(instance = %name, "NIC {dev} removed");
    Ok(())
}

async fn add(
    d: &Daemon,
    name: &str,
    pid: i32,
    dev: &str,
    conf: &BTreeMap<String, String>,
    config: &mut ConfigMap,
) -> Result<()> {
    super::lifecycle::prepare_nic(d, name, dev, conf, config).await?;
    let mac = conf
        .get("hwaddr")
        .or_else(|| config.get(&format!("volatile.{dev}.hwaddr")))
        .cloned()
        .unwrap_or_default();
    // The dnsmasq reservation first, so the container's first DHCP request finds it.
    crate::network::nics::attach_nic(d, name, dev, conf, &mac)
        .map_err(|e| InstanceError::Invalid(e.to_string()))?;
    // A NIC on an OVN network was bound to the integration bridge above: no master.
    let mut devs: DeviceMap = [(dev.to_string(), conf.clone())].into_iter().collect();
    crate::network::nics::link_free(d, &mut devs)
        .map_err(|e| InstanceError::Invalid(e.to_string()))?;
    let original = conf.clone();
    let conf = &devs[dev];
    let inside = ifname(dev, conf).to_string();
    let mtu: Option<u32> = conf.get("mtu").and_then(|m| m.parse().ok());
    let macvlan = conf.get("nictype").map(String::as_str) == Some("macvlan");
    let parent = conf.get("parent").cloned();
    let bridge = conf
        .get("network")
        .filter(|n| !n.is_empty())
        .cloned()
        .or_else(|| (!macvlan).then(|| parent.clone()).flatten());
    let host = conf
        .get("host_name")
        .or_else(|| config.get(&format!("volatile.{dev}.host_name")))
        .cloned()
        .unwrap_or_else(super::random_veth_name);
    let temp = format!("cnic{}", hex::encode(rand::random::<[u8; 4]>()));
    let what = format!("adding NIC {dev:?} ({inside}) to {name}");
    let made = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let inside2 = inside.clone();
        let taken = netlink::in_netns_of(pid, move || Ok(netlink::exists(&inside2)))?;
        if taken {
            return Err(std::io::Error::other(format!(
                "the container already has an interface {inside}"
            )));
        }
        let host_end = if macvlan {
            netlink::create_macvlan(&temp, parent.as_deref().unwrap_or(""))?;
            None
        } else {
            netlink::create_veth(&host, &temp)?;
            Some(host.clone())
        };
        let setup = (|| {
            if let Some(h) = &host_end {
                if let Some(m) = mtu {
                    netlink::set_mtu(h, m)?;
                }
                if let Some(b) = &bridge {
                    netlink::set_master(h, b)?;
                }
                netlink::link_up(h)?;
            }
            netlink::move_to_netns_of(&temp, pid)?;
            let (temp, inside, mac) = (temp.clone(), inside.clone(), mac.clone());
            netlink::in_netns_of(pid, move || {
                netlink::rename_with_mac(&temp, &inside, &mac)?;
                if let Some(m) = mtu {
                    netlink::set_mtu(&inside, m)?;
                }
                netlink::link_up(&inside)
            })
        })();
        if setup.is_err() {
            // Whichever end is still here goes (a veth takes its peer with it).
            let _ = netlink::delete_link(host_end.as_deref().unwrap_or(&temp));
        }
        setup
    })
    .await
    .map_err(|e| InstanceError::Failed(e.to_string()))?;
    if let Err(e) = made {
        crate::network::nics::detach_nic(d, name, dev);
        return Err(failed(what)(e));
    }
    let devs: DeviceMap = [(dev.to_string(), original.clone())].into_iter().collect();
    crate::network::nics::plug(d, name, &devs)
        .map_err(|e| InstanceError::Invalid(e.to_string()))?;
    tracing::info!(instance = %name, "NIC {dev} added");
    Ok(())
}
