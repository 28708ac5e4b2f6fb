//! The `physical` network type's service: an uplink for OVN networks, one record for the
//! whole cluster (its parent checked and brought up on every member). Nothing of its own
//! is made on the host: the OVN networks that use it connect it to OVS (`ovn`).

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

/// Whether OVN networks use uplink `name` (then it cannot be deleted).
pub fn uplink_users(d: &Daemon, name: &str) -> Result<bool, NetworkError> {
    uplink_shared(d, name, "")
}

pub async fn delete(d: &Arc<Daemon>, rec: NetworkRecord) -> Result<(), NetworkError> {
    let users: Vec<String> =
        d.db.networks()?
            .into_iter()
            .filter(|r| {
                r.kind == "ovn" && r.config.get("network").map(String::as_str) == Some(&rec.name)
            })
            .map(|r| format!("/1.0/networks/{}", r.name))
            .collect();
    if !users.is_empty() {
        return Err(NetworkError::InUse(format!(
            "The network is currently in use (by {})",
            users.join(", ")
        )));
    }
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
