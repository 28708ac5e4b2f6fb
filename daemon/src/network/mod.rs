//! Managed networks. `bridge`: a Linux bridge made over rtnetlink (`netlink`), its own
//! dnsmasq (`dnsmasq`) and nftables table (`nft`), its keys checked once (`config`).
//! `ovn`: an overlay in OVN's northbound database (the `cairn-ovn` crate) with this host's
//! Open vSwitch side (`ovs`), on a `physical` uplink. `manage` is the service the API
//! calls: records through the db, the host side through the drivers, restore at start.
//! Drivers never import `crate::api` or HTTP types.

pub mod bridge;
pub mod cluster;
pub mod config;
pub mod dnsmasq;
pub mod iface;
pub mod manage;
pub mod netlink;
pub mod nft;
pub mod nics;
pub mod ovn;
pub mod ovn_config;
pub mod ovn_services;
pub mod ovs;
pub mod physical;
pub mod uplink;

use serde::Serialize;

use crate::db::records::ConfigMap;
use dnsmasq::Lease;

/// Why a network operation failed. `Invalid`, `Conflict`, `NotFound` and `InUse` are the
/// caller's (400, 409, 404, 400); the rest are the host's.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InUse(String),
    #[error("network I/O: {0}")]
    Io(String),
    #[error("dnsmasq: {0}")]
    Dnsmasq(String),
    #[error("nftables: {0}")]
    Firewall(String),
    #[error("{0}")]
    Ovn(String),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// What one network type does on the host. `apply` converges: it works on a fresh host,
/// after a restart (the bridge still there) and for a live change of config.
pub trait NetworkDriver: Send + Sync {
    fn kind(&self) -> &'static str;
    fn validate(&self, config: &ConfigMap) -> Result<(), NetworkError>;
    fn apply(&self, config: &ConfigMap) -> Result<(), NetworkError>;
    fn delete(&self) -> Result<(), NetworkError>;
    /// Writes (or with `None` removes) one NIC's line in dnsmasq's hosts dir.
    fn set_host(&self, key: &str, line: Option<String>) -> Result<(), NetworkError>;
    /// Removes every hosts-dir line of `instance` (keys `<instance>.<device>`).
    fn forget_hosts_of(&self, instance: &str) -> Result<(), NetworkError>;
    fn leases(&self) -> Result<Vec<Lease>, NetworkError>;
    fn state(&self) -> Result<NetworkState, NetworkError>;
}

/// `GET /1.0/networks/{name}/state`, as Incus's `api.NetworkState`.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkState {
    pub addresses: Vec<StateAddress>,
    /// Measured on a host interface; `None` for an overlay, which has none here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
    pub hwaddr: String,
    pub mtu: u32,
    pub state: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip)]
    pub dnsmasq_pid: Option<u32>,
    /// OVN networks only (Incus's `api.NetworkStateOVN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovn: Option<OvnState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OvnState {
    pub chassis: String,
    pub logical_router: String,
    pub logical_switch: String,
    pub uplink_ipv4: String,
    pub uplink_ipv6: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateAddress {
    pub family: String,
    pub address: String,
    pub netmask: String,
    pub scope: String,
}

impl From<&netlink::IfAddress> for StateAddress {
    fn from(a: &netlink::IfAddress) -> Self {
        StateAddress {
            family: if a.addr.is_ipv4() { "inet" } else { "inet6" }.into(),
            address: a.addr.to_string(),
            netmask: a.prefix.to_string(),
            scope: a.scope.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub packets_sent: u64,
}
