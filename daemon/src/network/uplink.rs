//! The `physical` network type's service: an uplink for OVN networks, one record for the
//! whole cluster (its parent checked and brought up on every member). Nothing of its own
//! is made on the host: the OVN networks that use it connect it to OVS (`ovn`).

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::cluster::MemberRequest;
use super::config::Ipv4Cidr;
use super::ovn::{on_every_member, uplink_shared};
use super::{physical, NetworkError, NetworkState};
use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, NetworkRecord, NetworkStatus};
use crate::db::Command;

pub async fn create(
    d: &Arc<Daemon>,
    name: String,
    description: String,
    config: ConfigMap,
) -> Result<(), NetworkError> {
    if d.db.network(&name)?.is_some() {
        return Err(NetworkError::Conflict(format!(
            "Network {name:?} already exists"
        )));
    }
    let spec = physical::parse(&config)?;
    if let Some(g) = spec.gateway {
        // A host route to the gateway's subnet is the uplink's own: only managed
        // networks may not overlap it.
        overlaps_managed(d, &name, g)?;
    }
    // The parent must exist on every member (one name for all of them, so far).
    on_every_member(d, physical_request(&name, &config)).await?;
    d.write(vec![Command::CreateNetwork(NetworkRecord {
        name: name.clone(),
        kind: "physical".into(),
        description,
        config,
        status: NetworkStatus::Created,
        ..NetworkRecord::default()
    })])
    .await?;
    tracing::info!("network {name} (physical, on {}) created", spec.parent);
    Ok(())
}

fn physical_request(name: &str, config: &ConfigMap) -> MemberRequest {
    MemberRequest {
        name: name.to_string(),
        config: config.clone(),
        kind: "physical".into(),
        remove: false,
    }
}

fn overlaps_managed(d: &Daemon, name: &str, g: Ipv4Cidr) -> Result<(), NetworkError> {
    for r in d.db.networks()? {
        if r.name == name {
            continue;
        }
        for key in ["ipv4.address", "ipv4.gateway"] {
            if let Some(c) = r
                .config
                .get(key)
                .and_then(|v| super::config::parse_gateway(key, v).ok())
            {
                if c.overlaps(g) {
                    return Err(NetworkError::Invalid(format!(
                        "Invalid value for network config key \"ipv4.gateway\": {g} overlaps with network {:?} ({c})",
                        r.name
                    )));
                }
            }
        }
    }
    Ok(())
}

pub async fn update(
    d: &Arc<Daemon>,
    old: NetworkRecord,
    description: String,
    config: ConfigMap,
) -> Result<(), NetworkError> {
    physical::parse(&config)?;
    if uplink_users(d, &old.name)? && config.get("parent") != old.config.get("parent") {
        return Err(NetworkError::InUse(format!(
            "The parent of uplink {:?} cannot change while OVN networks use it",
            old.name
        )));
    }
    on_every_member(d, physical_request(&old.name, &config)).await?;
    d.write(vec![Command::UpdateNetwork(NetworkRecord {
        description,
        config,
        ..old
    })])
    .await?;
    Ok(())
}

/// A first start's uplink whose parent is a bridge already recorded (the appliance's
/// `UPLINK` on `cairnbr0`: the routers' gateway ports reach the outside through the NAT
/// bridge of whichever member holds them, each member's bridge having the same subnet).
/// With no `ipv4.gateway` given, the bridge's address is the gateway and the DNS server,
/// the top quarter of its subnet (at most 64 addresses) the routers' `ipv4.ovn.ranges`,
/// and the bridge's DHCP, unless set, keeps below them. Returns the bridge's record when
/// that changed it.
pub fn on_bridge(
    d: &Daemon,
    config: &mut ConfigMap,
) -> Result<Option<NetworkRecord>, NetworkError> {
    let Some(parent) = config.get("parent").cloned() else {
        return Ok(None);
    };
    let Some(mut bridge) = d.db.network(&parent)?.filter(|r| r.kind == "bridge") else {
        return Ok(None);
    };
    if config.contains_key("ipv4.gateway") {
        return Ok(None);
    }
    let Some(g) = bridge
        .config
        .get("ipv4.address")
        .and_then(|v| super::config::parse_gateway("ipv4.address", v).ok())
    else {
        return Err(NetworkError::Invalid(format!(
            "Uplink on bridge {parent:?}: the bridge has no IPv4 address to be the gateway"
        )));
    };
    let (ovn, dhcp) = split_for_ovn(g).ok_or_else(|| {
        NetworkError::Invalid(format!(
            "Uplink on bridge {parent:?}: its subnet {g} is too small to share with OVN routers"
        ))
    })?;
    config.insert("ipv4.gateway".into(), g.to_string());
    config.insert("ipv4.ovn.ranges".into(), format!("{}-{}", ovn.0, ovn.1));
    config
        .entry("dns.nameservers".into())
        .or_insert_with(|| g.addr.to_string());
    if bridge.config.contains_key("ipv4.dhcp.ranges") {
        return Ok(None);
    }
    bridge
        .config
        .insert("ipv4.dhcp.ranges".into(), format!("{}-{}", dhcp.0, dhcp.1));
    Ok(Some(bridge))
}

/// Subnet `g` split in two ranges of hosts, neither holding the gateway: the routers' (the
/// top quarter, at most 64) and the DHCP's (the rest). `None` below 8 hosts.
fn split_for_ovn(g: Ipv4Cidr) -> Option<((Ipv4Addr, Ipv4Addr), (Ipv4Addr, Ipv4Addr))> {
    let first = u32::from(g.network()) + 1;
    let last = u32::from(g.broadcast()).checked_sub(1)?;
    let hosts = last.checked_sub(first)? + 1;
    if g.prefix > 29 || hosts < 8 {
        return None;
    }
    let k = (hosts / 4).min(64);
    let gw = u32::from(g.addr);
    let ip = Ipv4Addr::from;
    if gw < last - k + 1 {
        // The gateway low (the usual .1): routers at the top, DHCP from after the gateway.
        let low = if gw == first { first + 1 } else { first };
        Some(((ip(last - k + 1), ip(last)), (ip(low), ip(last - k))))
    } else {
        // The gateway high: routers at the bottom.
        Some(((ip(first), ip(first + k - 1)), (ip(first + k), ip(last))))
    }
}

/// Whether OVN networks use uplink `name` (then it cannot be deleted).
pub fn uplink_users(d: &Daemon, name: &str) -> Result<bool, NetworkError> {
    uplink_shared(d, name, "")
}

/// `DELETE` (the caller checked that no OVN network uses it).
pub async fn delete(d: &Arc<Daemon>, rec: NetworkRecord) -> Result<(), NetworkError> {
    d.write(vec![Command::DeleteNetwork {
        name: rec.name.clone(),
    }])
    .await?;
    tracing::info!("network {} (physical) deleted", rec.name);
    Ok(())
}

/// `GET …/state` of a physical network: its parent's, measured.
pub fn state(rec: &NetworkRecord) -> Result<NetworkState, NetworkError> {
    let p = physical::parse(&rec.config)?;
    super::iface::state(&p.parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_subnet_is_shared_with_the_routers() {
        let g = |s: &str| super::super::config::parse_gateway("k", s).unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            split_for_ovn(g("10.7.0.1/24")),
            Some((
                (ip("10.7.0.192"), ip("10.7.0.254")),
                (ip("10.7.0.2"), ip("10.7.0.191"))
            ))
        );
        assert_eq!(
            split_for_ovn(g("10.7.0.254/24")),
            Some((
                (ip("10.7.0.1"), ip("10.7.0.63")),
                (ip("10.7.0.64"), ip("10.7.0.254"))
            ))
        );
        assert_eq!(
            split_for_ovn(g("10.7.0.1/28")),
            Some((
                (ip("10.7.0.12"), ip("10.7.0.14")),
                (ip("10.7.0.2"), ip("10.7.0.11"))
            ))
        );
        assert_eq!(split_for_ovn(g("10.7.0.1/30")), None);
    }
}
