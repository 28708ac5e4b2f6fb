//! The networks service: what the API asks of managed networks. Records change only through
//! `Daemon::write` (Commands); the host side (bridge, dnsmasq, nft table) through the
//! driver, on a blocking thread. A create whose host side fails is undone (driver torn
//! down, record deleted), so nothing half-made is left behind.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::bridge::Bridge;
use super::config::{self, Ipv4Cidr};
use super::{netlink, NetworkDriver, NetworkError, NetworkState};
use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, DeviceMap, NetworkRecord, NetworkStatus};
use crate::db::Command;

/// The drivers of the managed networks that are up on this host.
pub struct Networks {
    dir: PathBuf,
    running: Mutex<BTreeMap<String, Arc<Bridge>>>,
    /// One change at a time: a subnet check and the write it guards must not interleave
    /// with another create choosing the same subnet.
    pub(super) changes: tokio::sync::Mutex<()>,
    /// One change of this host's bridges at a time, whoever asked (this member's API or
    /// another member making a cluster network here).
    host: Mutex<()>,
}

impl Networks {
    pub fn new(dir: &Path) -> Networks {
        Networks {
            dir: dir.to_path_buf(),
            running: Mutex::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
            host: Mutex::new(()),
        }
    }

    fn host_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.host.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this daemon runs network `name` here (its bridge is the daemon's own).
    pub fn is_up(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Bridge>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bridges up here now.
    pub(super) fn drivers(&self) -> Vec<Arc<Bridge>> {
        self.lock().values().cloned().collect()
    }

    pub(super) fn driver(&self, name: &str) -> Arc<Bridge> {
        self.lock()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Bridge::new(name, &self.dir.join(name))))
            .clone()
    }

    fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// What `GET /1.0/networks/{name}/state` shows, measured on the host.
    pub fn state(&self, name: &str) -> Result<NetworkState, NetworkError> {
        let d = self.lock().get(name).cloned();
        match d {
            Some(d) => d.state(),
            None => Err(NetworkError::NotFound("Network not found".into())),
        }
    }

    pub fn leases(&self, name: &str) -> Result<Vec<super::dnsmasq::Lease>, NetworkError> {
        let d = self.lock().get(name).cloned();
        match d {
            Some(d) => d.leases(),
            None => Err(NetworkError::NotFound("Network not found".into())),
        }
    }
}

/// `GET /1.0/networks/{name}/state` of a managed network, measured (blocking).
pub fn state(d: &Daemon, name: &str) -> Result<NetworkState, NetworkError> {
    let rec = get(d, name)?;
    match rec.kind.as_str() {
        "ovn" => super::ovn::state(&rec),
        "physical" => super::uplink::state(&rec),
        _ => d.networks.state(name),
    }
}

/// A managed network's leases here (blocking).
pub fn leases(d: &Daemon, name: &str) -> Result<Vec<super::dnsmasq::Lease>, NetworkError> {
    let rec = get(d, name)?;
    match rec.kind.as_str() {
        "ovn" => super::ovn::leases(d, &rec),
        "physical" => Ok(vec![]),
        _ => d.networks.leases(name),
    }
}

/// A network as `GET /1.0/networks/{name}` shows it (Incus's `api.Network`).
#[derive(Debug, Clone, Serialize)]
pub struct NetworkView {
    pub name: String,
    pub description: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub managed: bool,
    pub status: String,
    pub config: ConfigMap,
    pub used_by: Vec<String>,
    pub locations: Vec<String>,
    pub project: String,
}

fn nic_uses(dev: &BTreeMap<String, String>, network: &str) -> bool {
    dev.get("type").map(String::as_str) == Some("nic")
        && (dev.get("network").map(String::as_str) == Some(network)
            || dev.get("parent").map(String::as_str) == Some(network))
}

fn devices_use(devices: &DeviceMap, network: &str) -> bool {
    devices.values().any(|d| nic_uses(d, network))
}

/// What uses `network`, as URLs: profiles and instances with a NIC on it (`network=` or
/// `parent=`), OVN networks it is the uplink of, physical networks on it as their parent
/// (the appliance's `UPLINK` on `cairnbr0`).
pub fn used_by(d: &Daemon, network: &str) -> Result<Vec<String>, NetworkError> {
    let mut out = Vec::new();
    for n in d.db.networks()? {
        let on = match n.kind.as_str() {
            "ovn" => n.config.get("network"),
            "physical" => n.config.get("parent"),
            _ => None,
        };
        if on.is_some_and(|v| v == network) && n.name != network {
            out.push(format!("/1.0/networks/{}", n.name));
        }
    }
    for p in d.db.profiles()? {
        if devices_use(&p.devices, network) {
            out.push(format!("/1.0/profiles/{}", p.name));
        }
    }
    for i in d.db.instances()? {
        let uses = match crate::instance::expand(d, &i) {
            Ok((_, ed)) => devices_use(&ed, network),
            Err(_) => devices_use(&i.devices, network),
        };
        if uses {
            out.push(crate::instance::url(&i.name));
        }
    }
    Ok(out)
}

pub fn view(d: &Daemon, r: &NetworkRecord) -> Result<NetworkView, NetworkError> {
    Ok(NetworkView {
        name: r.name.clone(),
        description: r.description.clone(),
        kind: r.kind.clone(),
        managed: true,
        status: r.status.as_str().into(),
        config: r.config.clone(),
        used_by: used_by(d, &r.name)?,
        locations: locations(d, r)?,
        project: "default".into(),
    })
}

/// The members a network is on: every member once Created, the defined ones before.
fn locations(d: &Daemon, r: &NetworkRecord) -> Result<Vec<String>, NetworkError> {
    if d.cluster().is_none() {
        return Ok(vec![]);
    }
    Ok(match r.status {
        NetworkStatus::Created => d.db.members()?.into_iter().map(|m| m.name).collect(),
        _ => r.members.keys().cloned().collect(),
    })
}

pub fn get(d: &Daemon, name: &str) -> Result<NetworkRecord, NetworkError> {
    d.db.network(name)?
        .ok_or_else(|| NetworkError::NotFound("Network not found".into()))
}

fn invalid_addr(msg: String) -> NetworkError {
    NetworkError::Invalid(format!(
        "Invalid value for network config key \"ipv4.address\": {msg}"
    ))
}

/// The IPv4 subnets in use here, each with what uses it: the host's addresses and routes
/// (read over netlink, never probed for on the wire) and the other managed networks'
/// subnets. `except` is the network being changed: its own bridge and record do not count.
fn subnets_in_use(d: &Daemon, except: &str) -> Result<Vec<(Ipv4Cidr, String)>, NetworkError> {
    let io = |e: std::io::Error| NetworkError::Io(format!("reading the host's addresses: {e}"));
    let own = netlink::index(except).ok();
    let mut used = Vec::new();
    // Managed networks first: an overlap with one is named by the network, not its route.
    for r in d.db.networks()? {
        if r.name == except {
            continue;
        }
        // A physical uplink's subnet is its gateway's.
        for key in ["ipv4.address", "ipv4.gateway"] {
            if let Some(c) = r
                .config
                .get(key)
                .and_then(|v| config::parse_gateway(key, v).ok())
            {
                used.push((c, format!("network {:?} ({c})", r.name)));
            }
        }
    }
    for a in netlink::addresses().map_err(io)? {
        if let (IpAddr::V4(v4), false) = (a.addr, Some(a.index) == own) {
            if !v4.is_loopback() {
                used.push((
                    Ipv4Cidr {
                        addr: v4,
                        prefix: a.prefix,
                    },
                    format!("an address of the host ({v4}/{})", a.prefix),
                ));
            }
        }
    }
    // The network's own bridge's routes are its old subnet, free to be changed.
    for r in netlink::ipv4_routes().map_err(io)? {
        if (own.is_none() || r.oif != own) && !r.dest.is_loopback() {
            used.push((
                Ipv4Cidr {
                    addr: r.dest,
                    prefix: r.prefix,
                },
                format!("a route of the host ({}/{})", r.dest, r.prefix),
            ));
        }
    }
    Ok(used)
}

/// The IPv6 subnets in use here (the other managed networks', the host's global
/// addresses and routes), each with what uses it.
fn subnets6_in_use(
    d: &Daemon,
    except: &str,
) -> Result<Vec<(config::Ipv6Cidr, String)>, NetworkError> {
    let io = |e: std::io::Error| NetworkError::Io(format!("reading the host's addresses: {e}"));
    let own = netlink::index(except).ok();
    let mut used = Vec::new();
    for r in d.db.networks()? {
        let c = r
            .config
            .get("ipv6.address")
            .and_then(|v| config::parse_gateway6("ipv6.address", v).ok());
        if let (Some(c), false) = (c, r.name == except) {
            used.push((c, format!("network {:?} ({c})", r.name)));
        }
    }
    for a in netlink::addresses().map_err(io)? {
        if let (IpAddr::V6(v6), false) = (a.addr, Some(a.index) == own) {
            if a.scope == "global" && !v6.is_loopback() {
                let c = config::Ipv6Cidr {
                    addr: v6,
                    prefix: a.prefix,
                };
                used.push((c, format!("an address of the host ({c})")));
            }
        }
    }
    for r in netlink::ipv6_routes().map_err(io)? {
        if own.is_none() || r.oif != own {
            let c = config::Ipv6Cidr {
                addr: r.dest,
                prefix: r.prefix,
            };
            used.push((c, format!("a route of the host ({c})")));
        }
    }
    Ok(used)
}

/// `ipv6.address=auto` resolved to a free unique local /64; a given one checked.
fn settle_subnet6(d: &Daemon, name: &str, config: &mut ConfigMap) -> Result<(), NetworkError> {
    let wanted = config.get("ipv6.address").cloned();
    match wanted.as_deref() {
        Some("auto") => {
            let used = subnets6_in_use(d, name)?;
            let cidrs: Vec<config::Ipv6Cidr> = used.iter().map(|(c, _)| *c).collect();
            let chosen = config::choose_auto6(&cidrs, rand::random()).ok_or_else(|| {
                NetworkError::Invalid(
                    "Invalid value for network config key \"ipv6.address\": no free unique local /64 for \"auto\"".into(),
                )
            })?;
            tracing::info!("network {name}: ipv6.address=auto chose {chosen}");
            config.insert("ipv6.address".into(), chosen.to_string());
        }
        Some(v) if v != "none" && !v.is_empty() => {
            let c = config::parse_gateway6("ipv6.address", v)?;
            let used = subnets6_in_use(d, name)?;
            if let Some((_, what)) = used.iter().find(|(u, _)| u.overlaps(c)) {
                return Err(NetworkError::Invalid(format!(
                    "Invalid value for network config key \"ipv6.address\": {v} overlaps with {what}"
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Resolves `ipv4.address=auto` to a free /24 and refuses a subnet that overlaps one in use.
/// Reads the host, so it runs on a blocking thread.
pub(super) fn settle_subnet(
    d: &Daemon,
    name: &str,
    config: &mut ConfigMap,
) -> Result<(), NetworkError> {
    settle_subnet6(d, name, config)?;
    let used = subnets_in_use(d, name)?;
    match config.get("ipv4.address").map(String::as_str) {
        Some("auto") => {
            let cidrs: Vec<Ipv4Cidr> = used.iter().map(|(c, _)| *c).collect();
            let chosen = config::choose_auto(&cidrs, rand::random()).ok_or_else(|| {
                invalid_addr("no free /24 left in 10.0.0.0/8 for \"auto\"".into())
            })?;
            tracing::info!("network {name}: ipv4.address=auto chose {chosen}");
            config.insert("ipv4.address".into(), chosen.to_string());
        }
        Some(v) if v != "none" && !v.is_empty() => {
            let c = config::parse_gateway("ipv4.address", v)?;
            if let Some((_, what)) = used.iter().find(|(u, _)| u.overlaps(c)) {
                return Err(invalid_addr(format!("{v} overlaps with {what}")));
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_kind(kind: &str) -> Result<&'static str, NetworkError> {
    match kind {
        "" | "bridge" => Ok("bridge"),
        "ovn" => Ok("ovn"),
        "physical" => Ok("physical"),
        other => Err(NetworkError::Invalid(format!(
            "Network type {other:?} is not supported (bridge, ovn and physical are)"
        ))),
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetworkError::Io(format!("network task: {e}")))?
}

/// A preseed's network, checked without the host: name, type and keys. A physical one
/// whose parent is a bridge of the same preseed may leave its gateway out: it is taken from
/// that bridge at the first start ([`super::uplink::on_bridge`]).
pub fn check_preseed(name: &str, kind: &str, config: &ConfigMap) -> Result<(), NetworkError> {
    config::valid_name(name)?;
    match check_kind(kind)? {
        "physical" => super::physical::parse(config).map(drop),
        "ovn" => {
            let mut probe = config.clone();
            if probe.get("ipv4.address").is_none_or(|v| v == "auto") {
                probe.insert("ipv4.address".into(), "10.0.0.1/24".into());
            }
            super::ovn_config::parse(&probe).map(drop)
        }
        _ => {
            let mut probe = config.clone();
            if probe.get("ipv4.address").is_none_or(|v| v == "auto") {
                probe.insert("ipv4.address".into(), "none".into());
            }
            if probe.get("ipv6.address").is_some_and(|v| v == "auto") {
                probe.insert("ipv6.address".into(), "fd00::1/64".into());
            }
            config::parse(name, &probe).map(drop)
        }
    }
}

/// The writes that record a network made at the first start (from the preseed), `auto`
/// settled on a subnet from this host's routes; [`restore`] then makes it on the host (an
/// OVN network's northbound rows come from `ovn_services` once the databases run). The
/// networks before it in the preseed must already be recorded: an uplink's bridge, an OVN
/// network's uplink.
pub fn first_start_record(
    d: &Daemon,
    name: &str,
    kind: &str,
    description: &str,
    mut config: ConfigMap,
) -> Result<Vec<Command>, NetworkError> {
    check_preseed(name, kind, &config)?;
    let kind = check_kind(kind)?;
    if kind != "ovn" && netlink::exists(name) {
        return Err(NetworkError::Conflict(format!(
            "Network {name:?} clashes with an existing interface of the host"
        )));
    }
    let mut writes = Vec::new();
    match kind {
        "ovn" => {
            config = super::ovn::settle(d, name, config)?;
        }
        "physical" => {
            if let Some(bridge) = super::uplink::on_bridge(d, &mut config)? {
                writes.push(Command::UpdateNetwork(bridge));
            }
            super::physical::parse(&config)?;
        }
        _ => {
            config
                .entry("ipv4.address".into())
                .or_insert_with(|| "auto".into());
            settle_subnet(d, name, &mut config)?;
            config::parse(name, &config)?;
        }
    }
    writes.push(Command::CreateNetwork(NetworkRecord {
        name: name.to_string(),
        kind: kind.into(),
        description: description.to_string(),
        config,
        status: NetworkStatus::Created,
        ..NetworkRecord::default()
    }));
    Ok(writes)
}

/// After joining a cluster (its database replaced this member's): the cluster's networks
/// are made here as recorded (a bridge this member made at its first start takes the
/// cluster's config), and one the cluster does not have is taken down.
pub fn resync(d: &Daemon) {
    let names: Vec<String> = match d.db.networks() {
        Ok(r) => r.into_iter().map(|r| r.name).collect(),
        Err(e) => {
            tracing::error!("listing networks after joining: {e}");
            return;
        }
    };
    let stale: Vec<(String, Arc<Bridge>)> = d
        .networks
        .lock()
        .iter()
        .filter(|(n, _)| !names.contains(n))
        .map(|(n, b)| (n.clone(), b.clone()))
        .collect();
    for (name, drv) in stale {
        match drv.delete() {
            Ok(()) => tracing::info!("network {name} is not the cluster's: removed"),
            Err(e) => tracing::error!("removing network {name}: {e}"),
        }
        d.networks.forget(&name);
    }
    restore(d);
}

/// `POST /1.0/networks`. An unset `ipv4.address` means `auto`, as in Incus. In a cluster,
/// `target` defines the network on one member (see [`super::cluster`]); without it the
/// network is made on every member.
pub async fn create(
    d: &Arc<Daemon>,
    name: String,
    kind: String,
    description: String,
    mut config: ConfigMap,
    target: Option<&str>,
) -> Result<(), NetworkError> {
    config::valid_name(&name)?;
    let kind = check_kind(&kind)?;
    let _one = d.networks.changes.lock().await;
    if kind != "bridge" && target.is_some() {
        return Err(NetworkError::Invalid(format!(
            "A {kind} network is not defined per member: create it without --target"
        )));
    }
    match kind {
        "ovn" => return super::ovn::create(d, name, description, config).await,
        "physical" => return super::uplink::create(d, name, description, config).await,
        _ => {}
    }
    if d.cluster().is_some() {
        if let Some(t) = target {
            return super::cluster::define(d, &name, kind, &config, t).await;
        }
    } else if let Some(t) = target {
        return Err(NetworkError::Invalid(format!(
            "Cannot target member {t:?}: this server is not clustered"
        )));
    }
    let existing = d.db.network(&name)?;
    if existing.is_some() && d.cluster().is_none() {
        return Err(NetworkError::Conflict(format!(
            "Network {name:?} already exists"
        )));
    }
    if netlink::exists(&name) && !d.networks.is_up(&name) {
        return Err(NetworkError::Conflict(format!(
            "Network {name:?} clashes with an existing interface of the host"
        )));
    }
    config
        .entry("ipv4.address".into())
        .or_insert_with(|| "auto".into());
    let config = checked_config(d, &name, config).await?;
    let rec = NetworkRecord {
        name: name.clone(),
        kind: kind.into(),
        description,
        config,
        ..NetworkRecord::default()
    };
    if d.cluster().is_some() {
        return super::cluster::create(d, existing, rec).await;
    }
    d.write(vec![Command::CreateNetwork(rec.clone())]).await?;
    if let Err(e) = apply_here(d, &name, rec.config.clone()).await {
        tracing::error!("network {name}: creating it on the host failed, undoing: {e}");
        d.write(vec![Command::DeleteNetwork { name: name.clone() }])
            .await?;
        return Err(e);
    }
    tracing::info!("network {name} created");
    Ok(())
}

/// This member's bridge made, or changed, to `config`: first what only this host can
/// check (no other interface of that name, no subnet overlapping this host's routes),
/// then the driver. A bridge this call made is taken down again when it fails.
pub async fn apply_here(
    d: &Arc<Daemon>,
    name: &str,
    config: ConfigMap,
) -> Result<(), NetworkError> {
    let (d, name) = (d.clone(), name.to_string());
    blocking(move || {
        let _host = d.networks.host_lock();
        let fresh = !d.networks.is_up(&name);
        if fresh && netlink::exists(&name) {
            return Err(NetworkError::Conflict(format!(
                "Network {name:?} clashes with an existing interface of the host"
            )));
        }
        let mut checked = config.clone();
        settle_subnet(&d, &name, &mut checked)?;
        config::parse(&name, &checked)?;
        let drv = d.networks.driver(&name);
        if let Err(e) = drv.apply(&config) {
            if fresh {
                if let Err(e2) = drv.delete() {
                    tracing::error!("network {name}: undoing: {e2}");
                }
                d.networks.forget(&name);
            }
            return Err(e);
        }
        Ok(())
    })
    .await
}

/// This member's bridge, dnsmasq and nft table removed (nothing to do when not up here).
pub async fn remove_here(d: &Arc<Daemon>, name: &str) -> Result<(), NetworkError> {
    let (d, name) = (d.clone(), name.to_string());
    blocking(move || {
        let _host = d.networks.host_lock();
        d.networks.driver(&name).delete()?;
        d.networks.forget(&name);
        Ok(())
    })
    .await
}

/// Checks `config`, then settles `ipv4.address=auto` on a subnet. Bad keys are refused
/// before a subnet is chosen, so the message names the bad key.
async fn checked_config(
    d: &Arc<Daemon>,
    name: &str,
    mut config: ConfigMap,
) -> Result<ConfigMap, NetworkError> {
    let mut probe = config.clone();
    if probe.get("ipv4.address").map(String::as_str) == Some("auto") {
        probe.insert("ipv4.address".into(), "none".into());
    }
    // A placeholder /64 for the key checks; the real one is chosen below.
    if probe.get("ipv6.address").map(String::as_str) == Some("auto") {
        probe.insert("ipv6.address".into(), "fd00::1/64".into());
    }
    config::parse(name, &probe)?;
    let (d2, n) = (d.clone(), name.to_string());
    blocking(move || {
        settle_subnet(&d2, &n, &mut config)?;
        config::parse(&n, &config)?;
        Ok(config)
    })
    .await
}

/// `PUT`/`PATCH`: `config` and `description` are the whole new values. An unset
/// `ipv4.address` now means no IPv4 (only a create defaults it to `auto`).
pub async fn update(
    d: &Arc<Daemon>,
    name: &str,
    description: String,
    config: ConfigMap,
) -> Result<(), NetworkError> {
    let _one = d.networks.changes.lock().await;
    let old = get(d, name)?;
    match old.kind.as_str() {
        "ovn" => return super::ovn::update(d, old, description, config).await,
        "physical" => return super::uplink::update(d, old, description, config).await,
        _ => {}
    }
    if old.status != NetworkStatus::Created {
        return Err(NetworkError::Invalid(format!(
            "Network {name:?} is {}: create it without --target first",
            old.status.as_str().to_lowercase()
        )));
    }
    let config = checked_config(d, name, config).await?;
    let rec = NetworkRecord {
        description,
        config,
        ..old.clone()
    };
    d.write(vec![Command::UpdateNetwork(rec.clone())]).await?;
    let applied = if d.cluster().is_some() {
        super::cluster::apply_all(d, &rec, &old).await
    } else {
        apply_here(d, name, rec.config.clone()).await
    };
    if let Err(e) = applied {
        tracing::error!("network {name}: applying the new config failed, going back: {e}");
        if d.cluster().is_none() {
            if let Err(e2) = apply_here(d, name, old.config.clone()).await {
                tracing::error!("network {name}: re-applying the old config: {e2}");
            }
        }
        d.write(vec![Command::UpdateNetwork(old)]).await?;
        return Err(e);
    }
    Ok(())
}

/// `DELETE`: refused while a profile or instance has a NIC on it.
pub async fn delete(d: &Arc<Daemon>, name: &str) -> Result<(), NetworkError> {
    let _one = d.networks.changes.lock().await;
    let rec = get(d, name)?;
    let users = used_by(d, name)?;
    if !users.is_empty() {
        return Err(NetworkError::InUse(format!(
            "The network is currently in use (by {})",
            users.join(", ")
        )));
    }
    match rec.kind.as_str() {
        "ovn" => return super::ovn::delete(d, rec).await,
        "physical" => return super::uplink::delete(d, rec).await,
        _ => {}
    }
    if d.cluster().is_some() {
        super::cluster::delete(d, rec).await?;
    } else {
        remove_here(d, name).await?;
        d.write(vec![Command::DeleteNetwork {
            name: name.to_string(),
        }])
        .await?;
    }
    tracing::info!("network {name} deleted");
    Ok(())
}

/// At daemon start: every managed network in the db is made to exist on this host again
/// (the bridge may still be there; dnsmasq is not). A failure is logged and the others go
/// on: one broken network must not keep the daemon down.
pub fn restore(d: &Daemon) {
    let recs = match d.db.networks() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("restoring networks: {e}");
            return;
        }
    };
    let me = d.server_name();
    // Bridges first: a physical network's parent may be one (the appliance's UPLINK on
    // cairnbr0), and OVN networks connect to their physical uplink.
    let mut recs = recs;
    recs.sort_by_key(|r| match r.kind.as_str() {
        "physical" => 1,
        "ovn" => 2,
        _ => 0,
    });
    for r in recs {
        // A pending network is made by the create that finishes it, not at a restart.
        if r.status != NetworkStatus::Created && r.members.get(&me) != Some(&true) {
            continue;
        }
        let done = match r.kind.as_str() {
            "ovn" => super::ovn::restore(d, &r),
            "physical" => {
                super::physical::parse(&r.config).and_then(|p| super::physical::apply(&p))
            }
            _ => d.networks.driver(&r.name).apply(&r.config),
        };
        match done {
            Ok(()) => tracing::info!("network {} restored", r.name),
            Err(e) => tracing::error!("restoring network {}: {e}", r.name),
        }
    }
}
