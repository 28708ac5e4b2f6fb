//! Networks in a cluster, made as Incus makes bridges there: the same network (one subnet,
//! one gateway address) on every member, each member's bridge its own segment with its
//! own dnsmasq and NAT. `incus network create N --target M` defines N on member M and
//! leaves it Pending; `incus network create N [keys…]` (no target) makes it on every
//! member and marks it Created. A bridge has no member-specific keys here (Incus's
//! `bridge.external_interfaces` is not offered), so a definition takes no keys, and a
//! network nobody defined is made on every member at once, as Incus does for types
//! without member-specific config.
//!
//! Each member makes its own bridge (`POST /internal/cluster/networks`), since only it
//! sees its interfaces and routes: a subnet free on this member but routed on another is
//! refused by that one. If any member fails, the bridges already made are removed again
//! and the record goes back to what it was, so the same create can be retried.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use super::manage::{apply_here, remove_here};
use super::NetworkError;
use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, NetworkRecord, NetworkStatus};
use crate::db::Command;

pub const MEMBER_PATH: &str = "/internal/cluster/networks";

/// Making a bridge starts dnsmasq and loads a table; well under this even under TCG.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(120);

/// What a member is asked to make (or change its bridge to).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct MemberRequest {
    pub name: String,
    pub config: ConfigMap,
    /// What to do with it: empty or `bridge` (make or change the bridge), `physical` (check
    /// and bring up the parent), `ovn-uplink` (connect uplink `name` to this member's OVS,
    /// or with `remove` disconnect it).
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub remove: bool,
}

/// `--target M`: records that member M has the network; nothing is made yet.
pub async fn define(
    d: &Arc<Daemon>,
    name: &str,
    kind: &str,
    config: &ConfigMap,
    target: &str,
) -> Result<(), NetworkError> {
    if d.db.member(target)?.is_none() {
        return Err(NetworkError::NotFound(format!(
            "Cluster member {target:?} not found"
        )));
    }
    if let Some(k) = config.keys().next() {
        return Err(NetworkError::Invalid(format!(
            "Config key {k:?} may not be used as member-specific key"
        )));
    }
    if let Some(r) = d.db.network(name)? {
        if r.status == NetworkStatus::Created {
            return Err(NetworkError::Conflict(
                "The network is already created".into(),
            ));
        }
        if r.kind != kind {
            return Err(NetworkError::Invalid(format!(
                "Network {name:?} is being defined with type {:?}",
                r.kind
            )));
        }
        if r.members.contains_key(target) {
            return Err(NetworkError::Invalid(format!(
                "The network is already defined on member {target:?}"
            )));
        }
    }
    d.write(vec![Command::DefineNetworkMember {
        network: name.to_string(),
        kind: kind.to_string(),
        member: target.to_string(),
    }])
    .await?;
    Ok(())
}

/// No target: every member makes its bridge, then the network is Created. `existing` is
/// the pending record from `--target` definitions, if any; `rec` the checked new one.
pub async fn create(
    d: &Arc<Daemon>,
    existing: Option<NetworkRecord>,
    mut rec: NetworkRecord,
) -> Result<(), NetworkError> {
    let members = d.db.members()?;
    if let Some(p) = &existing {
        if p.status == NetworkStatus::Created {
            return Err(NetworkError::Conflict(format!(
                "Network {:?} already exists",
                rec.name
            )));
        }
        if p.kind != rec.kind {
            return Err(NetworkError::Invalid(format!(
                "Requested network type {:?} doesn't match type in existing database record {:?}",
                rec.kind, p.kind
            )));
        }
        let missing: Vec<&str> = members
            .iter()
            .filter(|m| !p.members.contains_key(&m.name))
            .map(|m| m.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(NetworkError::Invalid(format!(
                "Network not defined on members: {} (use --target <member> first)",
                missing.join(", ")
            )));
        }
        if rec.description.is_empty() {
            rec.description = p.description.clone();
        }
    }
    rec.members = members.iter().map(|m| (m.name.clone(), false)).collect();
    // Written before anything is made, so that no other create of the name starts.
    rec.status = NetworkStatus::Pending;
    d.write(vec![match existing {
        Some(_) => Command::UpdateNetwork(rec.clone()),
        None => Command::CreateNetwork(rec.clone()),
    }])
    .await?;

    let me = d.server_name();
    // This member first: a subnet this host routes fails here before any other is asked.
    let mut order: Vec<_> = members.iter().collect();
    order.sort_by_key(|m| m.name != me);
    let mut made: Vec<(String, String)> = Vec::new();
    let mut failure = None;
    for m in order {
        let result = if m.name == me {
            apply_here(d, &rec.name, rec.config.clone()).await
        } else {
            apply_remote(d, &m.address, &rec.name, &rec.config).await
        };
        match result {
            Ok(()) => {
                rec.members.insert(m.name.clone(), true);
                made.push((m.name.clone(), m.address.clone()));
            }
            Err(e) => {
                failure = Some((m.name.clone(), e));
                break;
            }
        }
    }
    if let Some((member, e)) = failure {
        for (name, addr) in made.iter().rev() {
            let undone = if *name == me {
                remove_here(d, &rec.name).await
            } else {
                remove_remote(d, addr, &rec.name).await
            };
            if let Err(u) = undone {
                tracing::error!(network = %rec.name, member = %name, "removing a bridge after a failed create: {u}");
            }
        }
        let back = match existing {
            Some(p) => Command::UpdateNetwork(p),
            None => Command::DeleteNetwork {
                name: rec.name.clone(),
            },
        };
        if let Err(w) = d.write(vec![back]).await {
            tracing::error!(network = %rec.name, "restoring the network record after a failed create: {w}");
        }
        return Err(on_member(&member, e));
    }
    rec.status = NetworkStatus::Created;
    let name = rec.name.clone();
    d.write(vec![Command::UpdateNetwork(rec)]).await?;
    tracing::info!("network {name} created on every member");
    Ok(())
}

/// A change (already written) made on every member; if one fails, those that took it go
/// back to `old`. The caller writes `old` back.
pub async fn apply_all(
    d: &Arc<Daemon>,
    rec: &NetworkRecord,
    old: &NetworkRecord,
) -> Result<(), NetworkError> {
    let me = d.server_name();
    let mut members = d.db.members()?;
    members.sort_by_key(|m| m.name != me);
    let mut done = Vec::new();
    for m in &members {
        let result = if m.name == me {
            apply_here(d, &rec.name, rec.config.clone()).await
        } else {
            apply_remote(d, &m.address, &rec.name, &rec.config).await
        };
        if let Err(e) = result {
            for m in done {
                let back = if m == me.as_str() {
                    apply_here(d, &old.name, old.config.clone()).await
                } else {
                    let addr = members.iter().find(|x| x.name == m).map(|x| &x.address);
                    match addr {
                        Some(a) => apply_remote(d, a, &old.name, &old.config).await,
                        None => Ok(()),
                    }
                };
                if let Err(b) = back {
                    tracing::error!(network = %rec.name, member = %m, "re-applying the old config: {b}");
                }
            }
            return Err(on_member(&m.name, e));
        }
        done.push(m.name.as_str());
    }
    Ok(())
}

/// The record goes first, then every member that made its bridge removes it; a member
/// that cannot is reported (its bridge stays behind, no network the API lists).
pub async fn delete(d: &Arc<Daemon>, rec: NetworkRecord) -> Result<(), NetworkError> {
    d.write(vec![Command::DeleteNetwork {
        name: rec.name.clone(),
    }])
    .await?;
    let me = d.server_name();
    let mut failed = Vec::new();
    for m in d.db.members()? {
        let made = rec.status == NetworkStatus::Created
            || rec.members.get(&m.name).copied().unwrap_or(false);
        if !made {
            continue;
        }
        let removed = if m.name == me {
            remove_here(d, &rec.name).await
        } else {
            remove_remote(d, &m.address, &rec.name).await
        };
        if let Err(e) = removed {
            tracing::error!(network = %rec.name, member = %m.name, "removing the bridge: {e}");
            failed.push(format!("{}: {e}", m.name));
        }
    }
    if !failed.is_empty() {
        return Err(NetworkError::Io(format!(
            "Network {:?} was deleted, but its bridge was not removed on {}",
            rec.name,
            failed.join("; ")
        )));
    }
    Ok(())
}

/// A member's error, named by the member; the caller's mistakes stay the caller's.
fn on_member(member: &str, e: NetworkError) -> NetworkError {
    match e {
        NetworkError::Invalid(m) => {
            NetworkError::Invalid(format!("Creating the network on member {member}: {m}"))
        }
        NetworkError::Conflict(m) => {
            NetworkError::Conflict(format!("Creating the network on member {member}: {m}"))
        }
        e => NetworkError::Io(format!("Creating the network on member {member}: {e}")),
    }
}

async fn apply_remote(
    d: &Daemon,
    addr: &str,
    name: &str,
    config: &ConfigMap,
) -> Result<(), NetworkError> {
    member_call(
        d,
        addr,
        &MemberRequest {
            name: name.to_string(),
            config: config.clone(),
            kind: String::new(),
            remove: false,
        },
    )
    .await
}

/// Sends `req` to the member at `addr` (`POST /internal/cluster/networks`).
pub async fn member_call(d: &Daemon, addr: &str, req: &MemberRequest) -> Result<(), NetworkError> {
    let rt = d
        .cluster()
        .ok_or_else(|| NetworkError::Io("This server is not clustered".into()))?;
    let body = serde_json::to_value(req).map_err(|e| NetworkError::Io(e.to_string()))?;
    let (status, answer) = crate::cluster::member_api::call(
        &rt,
        addr,
        Method::POST,
        MEMBER_PATH,
        Some(&body),
        MEMBER_TIMEOUT,
    )
    .await
    .map_err(NetworkError::Io)?;
    if status.is_success() {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    let msg = v["error"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| format!("answered {status}"));
    Err(match status {
        StatusCode::BAD_REQUEST => NetworkError::Invalid(msg),
        StatusCode::CONFLICT => NetworkError::Conflict(msg),
        _ => NetworkError::Io(msg),
    })
}

async fn remove_remote(d: &Daemon, addr: &str, name: &str) -> Result<(), NetworkError> {
    let rt = d
        .cluster()
        .ok_or_else(|| NetworkError::Io("This server is not clustered".into()))?;
    crate::cluster::member_api::call_json(
        &rt,
        addr,
        Method::DELETE,
        &format!("{MEMBER_PATH}/{name}"),
        None,
        MEMBER_TIMEOUT,
    )
    .await
    .map(drop)
    .map_err(NetworkError::Io)
}

/// Every member's leases of network `name`, each marked with its member: this member's
/// from its dnsmasq, the others' asked for (`?target=`). A member that does not answer
/// is logged and left out, as Incus leaves out an offline member.
pub async fn leases(
    d: &Arc<Daemon>,
    name: &str,
) -> Result<Vec<super::dnsmasq::Lease>, NetworkError> {
    let me = d.server_name();
    let mut out = Vec::new();
    for m in d.db.members()? {
        if m.name == me {
            let mut mine = d.networks.leases(name)?;
            for l in &mut mine {
                l.location = me.clone();
            }
            out.extend(mine);
            continue;
        }
        let Some(rt) = d.cluster() else { break };
        let path = format!("/1.0/networks/{name}/leases?target={}", m.name);
        match crate::cluster::member_api::call_json(
            &rt,
            &m.address,
            Method::GET,
            &path,
            None,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(v) => {
                match serde_json::from_value::<Vec<super::dnsmasq::Lease>>(v["metadata"].clone()) {
                    Ok(theirs) => out.extend(theirs),
                    Err(e) => tracing::warn!(member = %m.name, "leases of {name}: {e}"),
                }
            }
            Err(e) => tracing::warn!(member = %m.name, "leases of {name}: {e}"),
        }
    }
    Ok(out)
}

/// A member leaving the cluster: it leaves the networks' records.
pub fn drop_member(d: &Daemon, member: &str) -> Result<Vec<Command>, NetworkError> {
    Ok(d.db
        .networks()?
        .into_iter()
        .filter(|r| r.members.contains_key(member))
        .map(|mut r| {
            r.members.remove(member);
            Command::UpdateNetwork(r)
        })
        .collect())
}
