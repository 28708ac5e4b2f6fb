//! Instance NICs on managed networks: checked against their network (it exists, is made
//! everywhere, a reserved address is in its subnet), then made known to it before the
//! instance starts (a dnsmasq host line on a bridge; a logical switch port and an OVS
//! binding on OVN), and forgotten when the NIC or the instance goes.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::bridge::Bridge;
use super::{config, NetworkDriver, NetworkError};
use crate::daemon::Daemon;
use crate::db::records::{DeviceMap, NetworkRecord, NetworkStatus};

/// The managed network a NIC is on (`network=`, or `nictype=bridged` with a `parent=` that
/// is one) and its reserved address, checked: the network must exist, and a NIC's
/// `ipv4.address` must be a host address of its subnet. `None`: not on a managed network.
fn check_nic(
    d: &Daemon,
    device: &str,
    nic: &BTreeMap<String, String>,
) -> Result<Option<(NetworkRecord, Option<std::net::Ipv4Addr>)>, NetworkError> {
    let bad = |m: String| NetworkError::Invalid(format!("Device {device:?}: {m}"));
    if nic.get("type").map(String::as_str) != Some("nic") {
        return Ok(None);
    }
    let rec = match nic.get("network").filter(|n| !n.is_empty()) {
        Some(n) => Some(
            d.db.network(n)?
                .ok_or_else(|| bad(format!("network {n:?} not found")))?,
        ),
        None if nic.get("nictype").map(String::as_str) == Some("bridged") => {
            match nic.get("parent").filter(|p| !p.is_empty()) {
                Some(p) => d.db.network(p)?,
                None => None,
            }
        }
        None => None,
    };
    let Some(rec) = rec else {
        return Ok(None);
    };
    if rec.kind == "physical" {
        return Err(bad(format!(
            "network {:?} is a physical uplink: instance NICs go on the OVN networks that use it",
            rec.name
        )));
    }
    if rec.status != NetworkStatus::Created {
        return Err(bad(format!(
            "network {:?} is {}, not created on every member yet",
            rec.name,
            rec.status.as_str().to_lowercase()
        )));
    }
    let Some(v) = nic.get("ipv4.address").filter(|v| !v.is_empty()) else {
        return Ok(Some((rec, None)));
    };
    let ip: std::net::Ipv4Addr = v
        .parse()
        .map_err(|_| bad(format!("ipv4.address {v:?} is not an IPv4 address")))?;
    let subnet = rec
        .config
        .get("ipv4.address")
        .and_then(|g| config::parse_gateway("ipv4.address", g).ok());
    match subnet {
        Some(c) if c.contains(ip) && ![c.addr, c.network(), c.broadcast()].contains(&ip) => {
            Ok(Some((rec, Some(ip))))
        }
        Some(c) => Err(bad(format!(
            "ipv4.address {ip} is not a host address of network {:?} ({c}) other than its gateway",
            rec.name
        ))),
        None => Err(bad(format!(
            "ipv4.address needs network {:?} to have an IPv4 subnet",
            rec.name
        ))),
    }
}

/// Checks every NIC of `devices` that is on a managed network (see [`check_nic`]).
pub fn check_nics(d: &Daemon, devices: &DeviceMap) -> Result<(), NetworkError> {
    for (dev, nic) in devices {
        check_nic(d, dev, nic)?;
    }
    Ok(())
}

/// Tells the dnsmasq of the managed network a NIC is on about that NIC: its MAC, its
/// reserved address and the instance's name, which is what makes
/// `<instance>.<dns.domain>` resolve. A NIC on no managed network is left alone.
pub fn attach_nic(
    d: &Daemon,
    instance: &str,
    device: &str,
    nic: &BTreeMap<String, String>,
    hwaddr: &str,
) -> Result<(), NetworkError> {
    let Some((rec, ip)) = check_nic(d, device, nic)? else {
        return Ok(());
    };
    if !crate::validate::is_mac(hwaddr) {
        return Err(NetworkError::Invalid(format!(
            "Device {device:?}: hwaddr {hwaddr:?} is not a MAC address"
        )));
    }
    if rec.kind == "ovn" {
        return super::ovn::attach(d, &rec, instance, device, hwaddr, ip);
    }
    // dns.mode=managed (the default) names the address after the instance; dynamic
    // leaves the name to the client, none gives no name.
    let managed = matches!(
        rec.config.get("dns.mode").map(String::as_str),
        None | Some("") | Some("managed")
    );
    d.networks.driver(&rec.name).set_host(
        &format!("{instance}.{device}"),
        super::dnsmasq::host_line(hwaddr, ip, managed.then_some(instance)),
    )
}

/// After the instance started (its veths made and up): every NIC of `devices` on an OVN
/// network bound on the integration bridge. Blocking.
pub fn plug(d: &Daemon, instance: &str, devices: &DeviceMap) -> Result<(), NetworkError> {
    for (dev, nic) in devices {
        if let Some((rec, _)) = check_nic(d, dev, nic)? {
            if rec.kind == "ovn" {
                super::ovn::plug(d, &rec, instance, dev)?;
            }
        }
    }
    Ok(())
}

/// After the instance stopped: every NIC of `devices` on an OVN network unbound from the
/// integration bridge. Blocking.
pub fn unplug(d: &Daemon, instance: &str, devices: &DeviceMap) -> Result<(), NetworkError> {
    for (dev, nic) in devices {
        if let Some((rec, _)) = check_nic(d, dev, nic)? {
            if rec.kind == "ovn" {
                super::ovn::unplug(d, &rec, instance, dev)?;
            }
        }
    }
    Ok(())
}

/// The host side of a NIC on an OVN network is a port of the integration bridge, bound by
/// [`attach_nic`], not a bridge of the network's name: such NICs lose `network=` for
/// liblxc (no link) and get the overlay's MTU when they set none.
pub fn link_free(d: &Daemon, devices: &mut DeviceMap) -> Result<(), NetworkError> {
    for nic in devices.values_mut() {
        if nic.get("type").map(String::as_str) != Some("nic") {
            continue;
        }
        let Some(net) = nic.get("network").filter(|n| !n.is_empty()) else {
            continue;
        };
        let Some(rec) = d.db.network(net)? else {
            continue;
        };
        if rec.kind == "ovn" {
            nic.remove("network");
            if let (false, Some(m)) = (nic.contains_key("mtu"), super::ovn::nic_mtu(&rec)) {
                nic.insert("mtu".into(), m.to_string());
            }
        }
    }
    Ok(())
}

/// Forgets one NIC of an instance in every managed network's dnsmasq (the NIC is gone).
pub fn detach_nic(d: &Daemon, instance: &str, device: &str) {
    if let Err(e) = super::ovn::forget(d, instance, Some(device)) {
        tracing::warn!("forgetting the OVN port of {instance}.{device}: {e}");
    }
    let drivers: Vec<Arc<Bridge>> = d.networks.drivers();
    for drv in drivers {
        if let Err(e) = drv.set_host(&format!("{instance}.{device}"), None) {
            tracing::warn!("forgetting the DHCP host line of {instance}.{device}: {e}");
        }
    }
}

/// Forgets an instance's NICs in every managed network's dnsmasq (the instance is gone).
pub fn forget_instance(d: &Daemon, instance: &str) {
    if let Err(e) = super::ovn::forget(d, instance, None) {
        tracing::warn!("forgetting the OVN ports of {instance}: {e}");
    }
    let drivers: Vec<Arc<Bridge>> = d.networks.drivers();
    for drv in drivers {
        if let Err(e) = drv.forget_hosts_of(instance) {
            tracing::warn!("forgetting the DHCP host lines of {instance}: {e}");
        }
    }
}
