//! The `ovn` network type: an overlay whose rows live in OVN's northbound database
//! (`cairn-ovn` lays them out), reached at `network.ovn.northbound_connection`; this host's
//! part is its Open vSwitch (`ovs`): the uplink's OVS bridge mapped for ovn-controller, and
//! each instance NIC's port on the integration bridge bound to its logical switch port.
//!
//! A create writes the record, then the uplink and the northbound rows; when either fails,
//! both are undone and the record deleted, so an unreachable database leaves nothing.

use std::net::Ipv4Addr;
use std::sync::Arc;

use cairn_ovn::{layout, NetworkSpec, Northbound, OvnError, PortSpec, UplinkSpec};

use super::cluster::MemberRequest;
use super::dnsmasq::Lease;
use super::ovn_config::{self, OvnSpec, VOLATILE_UPLINK_IPV4};
use super::physical::{self, PhysicalSpec};
use super::{netlink, ovs, NetworkError, NetworkState, StateAddress};
use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, NetworkRecord, NetworkStatus};
use crate::db::Command;

/// Incus's server key for the northbound database's address.
pub const NB_KEY: &str = "network.ovn.northbound_connection";
/// Incus's default: the database of an OVN central on this host.
const DEFAULT_NB: &str = "unix:/run/ovn/ovnnb_db.sock";
/// ovn-controller's integration bridge (its default name).
pub const INTEGRATION_BRIDGE: &str = "br-int";

impl From<OvnError> for NetworkError {
    fn from(e: OvnError) -> Self {
        match e {
            OvnError::Invalid(m) => NetworkError::Invalid(m),
            e => NetworkError::Ovn(e.to_string()),
        }
    }
}

/// The northbound database this daemon talks to: `network.ovn.northbound_connection`;
/// unset, the cluster's own when cairnd runs the OVN services (the appliance), else
/// Incus's default on this host.
pub fn northbound(d: &Daemon) -> Result<Northbound, NetworkError> {
    let conf = d.db.server_config()?;
    let db = match conf.get(NB_KEY).filter(|v| !v.is_empty()) {
        Some(v) => v.clone(),
        None => match super::ovn_services::enabled(d)
            .then(|| super::ovn_services::plan(d))
            .transpose()?
            .flatten()
        {
            Some(p) => p.nb(),
            None => DEFAULT_NB.to_string(),
        },
    };
    // 20 s: under QEMU's TCG a busy member's ovn-nbctl took over 5 s (SIGALRM) to reach
    // the Raft leader; an unreachable database is still told apart, only later.
    Ok(Northbound::new(&db).with_timeout(std::time::Duration::from_secs(20)))
}

/// Checks a `network.ovn.northbound_connection` value: OVSDB connection strings, comma
/// separated (`tcp:IP:PORT`, `ssl:IP:PORT`, `unix:PATH`).
pub fn check_nb_connection(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    for c in v.split(',') {
        let ok = match c.split_once(':') {
            Some(("unix", p)) => p.starts_with('/'),
            Some(("tcp" | "ssl", rest)) => rest
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "Invalid value for {NB_KEY}: {c:?} (tcp:IP:PORT, ssl:IP:PORT or unix:PATH, comma separated)"
            ));
        }
    }
    Ok(())
}

fn prefix(name: &str) -> String {
    format!("cairn-net-{name}")
}

fn fnv32(s: &str) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in s.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x01000193);
    }
    h
}

/// The OVS bridge an uplink is reached through on this host (an interface name: 12
/// characters, whatever the uplink's name).
fn uplink_bridge(uplink: &str) -> String {
    format!("covn{:08x}", fnv32(uplink))
}

fn physical_of(d: &Daemon, uplink: &str) -> Result<PhysicalSpec, NetworkError> {
    let rec =
        d.db.network(uplink)?
            .ok_or_else(|| NetworkError::Invalid(format!("Uplink network {uplink:?} not found")))?;
    if rec.kind != "physical" {
        return Err(NetworkError::Invalid(format!(
            "Uplink network {uplink:?} is of type {:?}, not physical",
            rec.kind
        )));
    }
    physical::parse(&rec.config)
}

/// Connects uplink `name` to this host's OVS: a parent that is a Linux bridge gets a veth
/// pair into it (Incus's way, leaving the bridge's other ports alone); any other parent is
/// itself made a port of the OVS bridge.
fn connect_uplink(name: &str, p: &PhysicalSpec) -> Result<(), NetworkError> {
    physical::apply(p)?;
    let br = uplink_bridge(name);
    let io = |e: std::io::Error| NetworkError::Io(format!("uplink {name}: {e}"));
    let port = if std::path::Path::new("/sys/class/net")
        .join(&p.parent)
        .join("bridge")
        .exists()
    {
        let (outer, inner) = (format!("{br}a"), format!("{br}b"));
        if !netlink::exists(&outer) {
            netlink::create_veth(&outer, &inner).map_err(io)?;
        }
        netlink::set_master(&outer, &p.parent).map_err(io)?;
        netlink::link_up(&outer).map_err(io)?;
        netlink::link_up(&inner).map_err(io)?;
        inner
    } else {
        p.parent.clone()
    };
    ovs::connect_uplink(&br, &port, name)
}

fn disconnect_uplink(name: &str) -> Result<(), NetworkError> {
    let br = uplink_bridge(name);
    ovs::disconnect_uplink(&br, name)?;
    let outer = format!("{br}a");
    if netlink::exists(&outer) {
        netlink::delete_link(&outer)
            .map_err(|e| NetworkError::Io(format!("uplink {name}: {e}")))?;
    }
    Ok(())
}

/// Whether another OVN network than `except` uses uplink `uplink`.
pub(super) fn uplink_shared(d: &Daemon, uplink: &str, except: &str) -> Result<bool, NetworkError> {
    Ok(d.db.networks()?.iter().any(|r| {
        r.kind == "ovn"
            && r.name != except
            && r.config.get("network").map(String::as_str) == Some(uplink)
    }))
}

/// The rows' names and the internal side of network `name`: all a delete or a port needs
/// (no uplink lookup).
fn layout_spec_names(name: &str, spec: &OvnSpec) -> NetworkSpec {
    NetworkSpec {
        prefix: prefix(name),
        gateway: spec.ipv4.addr,
        prefix_len: spec.ipv4.prefix,
        mac: spec
            .hwaddr
            .clone()
            .unwrap_or_else(|| ovn_config::derived_mac(name, "int")),
        mtu: spec.mtu,
        dns_domain: spec.domain.clone(),
        dns_servers: vec![],
        uplink: None,
    }
}

/// The northbound layout of network `name` as `spec` wants it.
fn layout_spec(
    d: &Daemon,
    name: &str,
    spec: &OvnSpec,
    chassis: Vec<(String, u16)>,
) -> Result<NetworkSpec, NetworkError> {
    let uplink = match &spec.uplink {
        None => None,
        Some(u) => {
            let p = physical_of(d, u)?;
            let gw = p.gateway.ok_or_else(|| {
                NetworkError::Invalid(format!("Uplink network {u:?} has no ipv4.gateway"))
            })?;
            let address = spec.uplink_ipv4.ok_or_else(|| {
                NetworkError::Invalid(format!("Network {name:?} has no uplink address yet"))
            })?;
            Some(UplinkSpec {
                physnet: u.clone(),
                address,
                prefix_len: gw.prefix,
                gateway: gw.addr,
                mac: ovn_config::derived_mac(name, "ext"),
                gateway_chassis: chassis,
                snat: spec.nat,
            })
        }
    };
    let dns_servers = match &spec.uplink {
        Some(u) => {
            let p = physical_of(d, u)?;
            if p.nameservers.is_empty() {
                p.gateway.map(|g| vec![g.addr]).unwrap_or_default()
            } else {
                p.nameservers
            }
        }
        None => vec![],
    };
    Ok(NetworkSpec {
        dns_servers,
        uplink,
        ..layout_spec_names(name, spec)
    })
}

/// The first address of the uplink's `ipv4.ovn.ranges` no other OVN network's router has.
fn allocate_uplink_ip(d: &Daemon, name: &str, uplink: &str) -> Result<Ipv4Addr, NetworkError> {
    let p = physical_of(d, uplink)?;
    if p.ovn_ranges.is_empty() {
        return Err(NetworkError::Invalid(format!(
            "Uplink network {uplink:?} has no ipv4.ovn.ranges for the routers' addresses"
        )));
    }
    let taken: Vec<Ipv4Addr> =
        d.db.networks()?
            .iter()
            .filter(|r| r.kind == "ovn" && r.name != name)
            .filter(|r| r.config.get("network").map(String::as_str) == Some(uplink))
            .filter_map(|r| r.config.get(VOLATILE_UPLINK_IPV4)?.parse().ok())
            .collect();
    let free = p.ovn_addresses().find(|a| !taken.contains(a));
    free.ok_or_else(|| {
        NetworkError::Invalid(format!(
            "Uplink network {uplink:?}: every address of ipv4.ovn.ranges is taken"
        ))
    })
}

/// Settles `auto`, allocates the router's uplink address and checks the result: the config
/// to record.
pub(super) fn settle(
    d: &Daemon,
    name: &str,
    mut config: ConfigMap,
) -> Result<ConfigMap, NetworkError> {
    // Incus's default uplink: with `network` unset, the only one there is.
    if config.get("network").is_none_or(|v| v.is_empty()) {
        let uplinks: Vec<String> =
            d.db.networks()?
                .into_iter()
                .filter(|r| r.kind == "physical")
                .map(|r| r.name)
                .collect();
        match uplinks.as_slice() {
            [one] => {
                config.insert("network".into(), one.clone());
            }
            [] => {
                return Err(NetworkError::Invalid(
                    "Invalid value for network config key \"network\": no uplink network exists (make a physical one, or give network=none)".into(),
                ))
            }
            _ => {
                return Err(NetworkError::Invalid(format!(
                    "Invalid value for network config key \"network\": required, there are several uplinks ({})",
                    uplinks.join(", ")
                )))
            }
        }
    }
    // Keys first, so a bad key is named before any subnet is chosen.
    let mut probe = config.clone();
    if probe.get("ipv4.address").is_none_or(|v| v == "auto") {
        probe.insert("ipv4.address".into(), "10.0.0.1/24".into());
    }
    let first = ovn_config::parse(&probe)?;
    config
        .entry("ipv4.address".into())
        .or_insert_with(|| "auto".into());
    super::manage::settle_subnet(d, name, &mut config)?;
    if let Some(u) = &first.uplink {
        let p = physical_of(d, u)?;
        if !config.contains_key(VOLATILE_UPLINK_IPV4) {
            let ip = allocate_uplink_ip(d, name, u)?;
            config.insert(VOLATILE_UPLINK_IPV4.into(), ip.to_string());
        }
        let spec = ovn_config::parse(&config)?;
        if let (Some(g), Some(ip)) = (p.gateway, spec.uplink_ipv4) {
            if !g.contains(ip) {
                return Err(NetworkError::Invalid(format!(
                    "{VOLATILE_UPLINK_IPV4} {ip} is outside uplink {u:?}'s subnet"
                )));
            }
        }
    }
    ovn_config::parse(&config)?;
    Ok(config)
}

/// The chassis that may hold the routers' gateway ports, with priorities: every member
/// (its chassis is named after it), the first by id preferred; standalone, this host's.
pub(super) fn gateway_chassis(d: &Daemon) -> Result<Vec<(String, u16)>, NetworkError> {
    if d.cluster().is_none() {
        return Ok(ovs::system_id()?.into_iter().map(|c| (c, 1)).collect());
    }
    let mut members = d.db.members()?;
    members.sort_by_key(|m| m.id);
    Ok(members
        .into_iter()
        .enumerate()
        .map(|(i, m)| (m.name, 100u16.saturating_sub(i as u16).max(1)))
        .collect())
}

/// The northbound rows, made (or converged) to `rec`'s config. Blocking.
pub(super) fn apply_nb(d: &Daemon, rec: &NetworkRecord) -> Result<(), NetworkError> {
    let spec = ovn_config::parse(&rec.config)?;
    let chassis = gateway_chassis(d)?;
    let nb = northbound(d)?;
    layout::create(&nb, &layout_spec(d, &rec.name, &spec, chassis)?)?;
    Ok(())
}

/// The northbound rows of `rec` removed. Blocking.
fn teardown_nb(d: &Daemon, rec: &NetworkRecord) -> Result<(), NetworkError> {
    let nb = northbound(d)?;
    let spec = ovn_config::parse(&rec.config)?;
    // The delete needs only the names: no uplink lookup (the uplink may be half-made).
    layout::delete(&nb, &layout_spec_names(&rec.name, &spec))?;
    Ok(())
}

/// What one member does for a network it does not make alone (`MemberRequest.kind`):
/// `physical` checks and brings up an uplink's parent, `ovn-uplink` connects the uplink
/// to this member's OVS (or with `remove` disconnects it).
pub async fn member_request(req: MemberRequest) -> Result<(), NetworkError> {
    super::manage::blocking(move || match (req.kind.as_str(), req.remove) {
        ("physical", _) => physical::apply(&physical::parse(&req.config)?),
        ("ovn-uplink", false) => {
            if !ovs::available() {
                return Err(NetworkError::Invalid(
                    "Open vSwitch is not running on this host: OVN networks need it".into(),
                ));
            }
            connect_uplink(&req.name, &physical::parse(&req.config)?)
        }
        ("ovn-uplink", true) => match ovs::available() {
            true => disconnect_uplink(&req.name),
            false => Ok(()),
        },
        (k, _) => Err(NetworkError::Invalid(format!(
            "Unknown network member request {k:?}"
        ))),
    })
    .await
}

/// Runs `req` here and on every other member, in turn; the first failure names its member.
pub(super) async fn on_every_member(
    d: &Arc<Daemon>,
    req: MemberRequest,
) -> Result<(), NetworkError> {
    if d.cluster().is_none() {
        return member_request(req).await;
    }
    let me = d.server_name();
    let mut members = d.db.members()?;
    members.sort_by_key(|m| m.name != me);
    for m in members {
        let r = if m.name == me {
            member_request(req.clone()).await
        } else {
            super::cluster::member_call(d, &m.address, &req).await
        };
        r.map_err(|e| match e {
            NetworkError::Invalid(msg) => {
                NetworkError::Invalid(format!("Failed on member {}: {msg}", m.name))
            }
            e => NetworkError::Io(format!("Failed on member {}: {e}", m.name)),
        })?;
    }
    Ok(())
}

fn uplink_request(d: &Daemon, uplink: &str, remove: bool) -> Result<MemberRequest, NetworkError> {
    let rec =
        d.db.network(uplink)?
            .ok_or_else(|| NetworkError::Invalid(format!("Uplink network {uplink:?} not found")))?;
    Ok(MemberRequest {
        name: uplink.to_string(),
        config: rec.config,
        kind: "ovn-uplink".into(),
        remove,
    })
}

/// The uplink connected on every member, then the northbound rows.
async fn make(d: &Arc<Daemon>, rec: &NetworkRecord) -> Result<(), NetworkError> {
    let spec = ovn_config::parse(&rec.config)?;
    if let Some(u) = &spec.uplink {
        on_every_member(d, uplink_request(d, u, false)?).await?;
    }
    let (d2, r2) = (d.clone(), rec.clone());
    super::manage::blocking(move || apply_nb(&d2, &r2)).await
}

/// The northbound rows removed, then the uplink disconnected everywhere when no other OVN
/// network uses it. A failure to disconnect is logged: the rows are what matters.
async fn unmake(d: &Arc<Daemon>, rec: &NetworkRecord) -> Result<(), NetworkError> {
    let (d2, r2) = (d.clone(), rec.clone());
    super::manage::blocking(move || teardown_nb(&d2, &r2)).await?;
    let spec = ovn_config::parse(&rec.config)?;
    if let Some(u) = &spec.uplink {
        if !uplink_shared(d, u, &rec.name)? {
            if let Err(e) = on_every_member(d, uplink_request(d, u, true)?).await {
                tracing::warn!("network {}: disconnecting uplink {u}: {e}", rec.name);
            }
        }
    }
    Ok(())
}

/// `POST /1.0/networks` with `type=ovn`: one record for the whole cluster.
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
    let (d2, n) = (d.clone(), name.clone());
    let config = super::manage::blocking(move || settle(&d2, &n, config)).await?;
    let rec = NetworkRecord {
        name: name.clone(),
        kind: "ovn".into(),
        description,
        config,
        status: NetworkStatus::Created,
        ..NetworkRecord::default()
    };
    d.write(vec![Command::CreateNetwork(rec.clone())]).await?;
    if let Err(e) = make(d, &rec).await {
        tracing::error!("network {name}: creating it failed, undoing: {e}");
        if let Err(e2) = unmake(d, &rec).await {
            tracing::error!("network {name}: undoing: {e2}");
        }
        d.write(vec![Command::DeleteNetwork { name }]).await?;
        return Err(e);
    }
    tracing::info!("network {name} (ovn) created");
    Ok(())
}

/// `PUT`/`PATCH`: the uplink is fixed once made; its router address is kept.
pub async fn update(
    d: &Arc<Daemon>,
    old: NetworkRecord,
    description: String,
    mut config: ConfigMap,
) -> Result<(), NetworkError> {
    if config.get("network") != old.config.get("network") {
        return Err(NetworkError::Invalid(
            "The uplink (network) of an OVN network cannot be changed".into(),
        ));
    }
    if let Some(v) = old.config.get(VOLATILE_UPLINK_IPV4) {
        config
            .entry(VOLATILE_UPLINK_IPV4.into())
            .or_insert_with(|| v.clone());
    }
    let (d2, n) = (d.clone(), old.name.clone());
    let config = super::manage::blocking(move || {
        if !config.contains_key("ipv4.address") {
            return Err(NetworkError::Invalid(
                "Invalid value for network config key \"ipv4.address\": an OVN network needs an IPv4 subnet".into(),
            ));
        }
        settle(&d2, &n, config)
    })
    .await?;
    let rec = NetworkRecord {
        description,
        config,
        ..old.clone()
    };
    d.write(vec![Command::UpdateNetwork(rec.clone())]).await?;
    if let Err(e) = make(d, &rec).await {
        tracing::error!(
            "network {}: applying the new config failed, going back: {e}",
            old.name
        );
        d.write(vec![Command::UpdateNetwork(old.clone())]).await?;
        if let Err(e2) = make(d, &old).await {
            tracing::error!("re-applying the old config: {e2}");
        }
        return Err(e);
    }
    Ok(())
}

/// `DELETE` (the caller checked it is unused). An unreachable database refuses it, so no
/// rows are left without a record.
pub async fn delete(d: &Arc<Daemon>, rec: NetworkRecord) -> Result<(), NetworkError> {
    unmake(d, &rec).await?;
    d.write(vec![Command::DeleteNetwork {
        name: rec.name.clone(),
    }])
    .await?;
    tracing::info!("network {} (ovn) deleted", rec.name);
    Ok(())
}

/// At daemon start: the uplink's OVS side here again (the northbound rows are the
/// database's).
pub fn restore(d: &Daemon, rec: &NetworkRecord) -> Result<(), NetworkError> {
    let spec = ovn_config::parse(&rec.config)?;
    if let Some(u) = &spec.uplink {
        connect_uplink(u, &physical_of(d, u)?)?;
    }
    Ok(())
}

/// `GET /1.0/networks/{name}/state` of an OVN network, as Incus shows it: the router's
/// gateway address, its MAC and MTU, and the `ovn` part with the active chassis (read from
/// the southbound database ovn-controller reaches, `external_ids:ovn-remote`).
pub fn state(rec: &NetworkRecord) -> Result<NetworkState, NetworkError> {
    let spec = ovn_config::parse(&rec.config)?;
    let net = layout_spec_names(&rec.name, &spec);
    let chassis = match (&spec.uplink, ovs::ovn_remote()?) {
        (Some(_), Some(sb)) => cairn_ovn::southbound::active_chassis(&sb, &net.router_port("ext"))?,
        _ => None,
    };
    Ok(NetworkState {
        addresses: vec![StateAddress {
            family: "inet".into(),
            address: spec.ipv4.addr.to_string(),
            netmask: spec.ipv4.prefix.to_string(),
            scope: "link".into(),
        }],
        counters: None,
        hwaddr: net.mac.clone(),
        mtu: spec.mtu,
        state: "up".into(),
        kind: "broadcast".into(),
        dnsmasq_pid: None,
        ovn: Some(super::OvnState {
            chassis: chassis.unwrap_or_default(),
            logical_router: net.router(),
            logical_switch: net.int_switch(),
            uplink_ipv4: spec.uplink_ipv4.map(|a| a.to_string()).unwrap_or_default(),
            uplink_ipv6: String::new(),
        }),
    })
}

/// The instance ports' addresses, as Incus lists an OVN network's leases (static for a
/// NIC with `ipv4.address`, dynamic for one OVN's IPAM chose).
pub fn leases(d: &Daemon, rec: &NetworkRecord) -> Result<Vec<Lease>, NetworkError> {
    let nb = northbound(d)?;
    let ports = layout::ports(&nb, Some(&prefix(&rec.name)), None)?;
    Ok(ports
        .into_iter()
        .filter_map(|p| {
            Some(Lease {
                hostname: p.hostname,
                hwaddr: p.mac,
                address: p.address?.to_string(),
                kind: if p.dynamic { "dynamic" } else { "static" }.into(),
                location: String::new(),
                project: "default".into(),
            })
        })
        .collect())
}

/// Instance `name`'s record and the UUID its ports are named after.
fn instance_of(
    d: &Daemon,
    name: &str,
) -> Result<(crate::db::records::InstanceRecord, String), NetworkError> {
    let inst =
        d.db.instance(name)?
            .ok_or_else(|| NetworkError::NotFound(format!("Instance {name:?} not found")))?;
    let uuid = inst
        .config
        .get("volatile.uuid")
        .cloned()
        .unwrap_or_else(|| name.to_string());
    Ok((inst, uuid))
}

/// The instance NIC `device` of `instance` on OVN network `rec`, before the instance
/// starts: its logical switch port (MAC, static or dynamic address, DHCP options) and its
/// DNS name. [`plug`] binds the veth once it is up.
pub fn attach(
    d: &Daemon,
    rec: &NetworkRecord,
    instance: &str,
    device: &str,
    hwaddr: &str,
    address: Option<Ipv4Addr>,
) -> Result<(), NetworkError> {
    // `address` was checked against the subnet with the NIC (`nics::check_nic`).
    let spec = ovn_config::parse(&rec.config)?;
    let (_, uuid) = instance_of(d, instance)?;
    let nb = northbound(d)?;
    let net = layout_spec_names(&rec.name, &spec);
    let port = layout::add_port(
        &nb,
        &net,
        &PortSpec {
            instance_uuid: uuid,
            device: device.to_string(),
            mac: hwaddr.to_lowercase(),
            address,
            hostname: instance.to_string(),
        },
    )?;
    // The name resolves once the port has its address (ovn-northd's IPAM picks a dynamic
    // one within milliseconds of the port's creation).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let ip = loop {
        match layout::port_address(&nb, &port)? {
            Some(ip) => break Some(ip),
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            None => break None,
        }
    };
    match ip {
        Some(ip) => layout::set_dns_record(&nb, &net, instance, Some(ip))?,
        None => tracing::warn!("{instance}.{device}: no address from OVN yet, no DNS name"),
    }
    Ok(())
}

/// Binds NIC `device` of running `instance` on `rec`: the veth's host end, up, becomes the
/// integration bridge's port for its logical switch port. After the veth is made and up:
/// OVS's userspace datapath keeps a socket it opened on a link still down unusable.
pub fn plug(
    d: &Daemon,
    rec: &NetworkRecord,
    instance: &str,
    device: &str,
) -> Result<(), NetworkError> {
    let spec = ovn_config::parse(&rec.config)?;
    let (inst, uuid) = instance_of(d, instance)?;
    let host_name = inst
        .devices
        .get(device)
        .and_then(|c| c.get("host_name"))
        .or_else(|| inst.config.get(&format!("volatile.{device}.host_name")))
        .cloned()
        .ok_or_else(|| {
            NetworkError::Invalid(format!("Device {device:?} has no host-side name yet"))
        })?;
    let port = port_name(&rec.name, &spec, uuid, instance, device);
    ovs::bind_port(INTEGRATION_BRIDGE, &host_name, &port)
}

fn port_name(
    network: &str,
    spec: &ovn_config::OvnSpec,
    instance_uuid: String,
    instance: &str,
    device: &str,
) -> String {
    layout_spec_names(network, spec).port_name(&PortSpec {
        instance_uuid,
        device: device.to_string(),
        mac: String::new(),
        address: None,
        hostname: instance.to_string(),
    })
}

/// Unbinds NIC `device` of `instance`, which stopped, from the integration bridge: its
/// veth went with the container, and a port left on it keeps the logical port claimed by
/// this chassis (and OVS retrying a device that is gone). Its logical switch port stays
/// for the next start. Blocking.
pub fn unplug(
    d: &Daemon,
    rec: &NetworkRecord,
    instance: &str,
    device: &str,
) -> Result<(), NetworkError> {
    if !ovs::available() {
        return Ok(());
    }
    let spec = ovn_config::parse(&rec.config)?;
    let (_, uuid) = instance_of(d, instance)?;
    ovs::unbind(&port_name(&rec.name, &spec, uuid, instance, device))
}

/// Forgets the ports of `instance` (every NIC of it with `device: None`) on every OVN
/// network: logical switch ports and their OVS bindings.
pub fn forget(d: &Daemon, instance: &str, device: Option<&str>) -> Result<(), NetworkError> {
    if !d.db.networks()?.iter().any(|r| r.kind == "ovn") {
        return Ok(());
    }
    let nb = northbound(d)?;
    for p in layout::ports(&nb, None, Some(instance))? {
        if device.is_some_and(|dev| !p.name.ends_with(&format!("-{dev}"))) {
            continue;
        }
        layout::remove_port(&nb, &p.name)?;
        if ovs::available() {
            ovs::unbind(&p.name)?;
        }
        let net = p.network.strip_prefix("cairn-net-").unwrap_or_default();
        if let Some(rec) = d.db.network(net)?.filter(|r| r.kind == "ovn") {
            let spec = ovn_config::parse(&rec.config)?;
            layout::set_dns_record(&nb, &layout_spec_names(&rec.name, &spec), instance, None)?;
        }
    }
    Ok(())
}

/// The MTU NICs on `rec` get when they set none (the overlay's).
pub fn nic_mtu(rec: &NetworkRecord) -> Option<u32> {
    ovn_config::parse(&rec.config).ok().map(|s| s.mtu)
}
