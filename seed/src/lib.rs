//! The seed: the small YAML file on the install medium or the data partition that configures
//! a node with no console. This crate only defines and validates the schema; it does no I/O
//! beyond parsing what it is given.
//!
//! ```yaml
//! hostname: node1
//! network:
//!   interfaces:
//!     - mac: "52:54:00:00:00:01"   # or `name: enp0s2`; neither: the first ethernet NIC
//!       dhcp: true
//!     - mac: "52:54:00:00:01:01"
//!       addresses: ["10.77.0.1/24"]
//!       gateway: "10.77.0.254"     # optional
//!   instances:                     # optional: the networks made on first boot for instances
//!     type: auto                   # auto (the default): bridge standalone, ovn in a cluster;
//!                                  # bridge (a NAT bridge on every member), ovn (the bridge
//!                                  # too, as the uplink; needs cluster:) or none
//!     name: cairnbr0               # optional; the bridge's name
//!     ipv4_address: auto           # optional; the bridge's: auto (a free 10.x.y.1/24) or a
//!                                  # gateway CIDR
//!     ovn:                         # optional; the OVN network the default profile's eth0 is on
//!       name: ovn0                 # optional
//!       uplink:                    # optional; default: the bridge above (each member's has
//!         parent: enp0s4           # the same subnet; routers NAT through whichever member
//!         gateway: 192.0.2.1/24    # holds them). Else a physical NIC with this name on
//!         ranges: 192.0.2.100-192.0.2.150   # every member: its gateway, the routers'
//!         nameservers: [192.0.2.1]          # addresses, DNS servers
//! trust:
//!   https_address: ":8443"         # default
//!   client_certificates:
//!     - name: operator
//!       certificate: |
//!         -----BEGIN CERTIFICATE-----
//!         ...
//! cluster:                         # optional: form a cluster with no API call
//!   name: rack1                    # a DNS label; part of every key derived from the secret
//!   secret: "correct horse battery staple"  # at least 16 characters, never sent
//!   founders: 3                    # how many members form the cluster initially
//!   interface: enp0s3              # optional; default: the first non-loopback NIC that is up
//!   port: 8444                     # optional; UDP port of the discovery announcements
//!   formation_timeout: 30          # optional, seconds; then a majority of founders suffices
//!   heartbeat_ms: 100              # optional; Raft heartbeat, raise it on slow links/machines
//! storage:                         # optional: the `default` storage pool, made on first boot
//!   driver: auto                   # auto (zfs when its module loads, else btrfs), zfs, btrfs, dir
//!   disk: /dev/nvme1n1             # optional; the whole disk the pool takes. Default: the first
//!                                  # disk with nothing on it (no partition table, no filesystem,
//!                                  # first MiB zero) other than the boot disk; none: a loop file
//!                                  # on the data partition
//!   size: 20GiB                    # optional; that loop file's size (default: 1/5 of free space)
//! ```

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Where a seed is looked for, and what it failed on.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("parsing seed YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("invalid seed: {0}")]
    Invalid(String),
}

/// The whole seed. Every field has a default, so an empty file is a valid seed (DHCP on the
/// first NIC, hostname derived from the machine id, no trusted client until one is added).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Seed {
    /// The node's hostname; a valid DNS label.
    pub hostname: Option<String>,
    pub network: Network,
    pub trust: Trust,
    /// Zero-touch cluster formation; absent: the node stays standalone.
    pub cluster: Option<Cluster>,
    /// Where the `default` storage pool goes on first boot.
    pub storage: Storage,
}

/// The `default` storage pool's driver and disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// `auto` (the default), `zfs`, `btrfs` or `dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The whole disk the pool takes (a /dev path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Size of the loop file made when there is no disk (an Incus size string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// The storage drivers a seed may name.
pub const STORAGE_DRIVERS: &[&str] = &["auto", "zfs", "btrfs", "dir"];

impl Storage {
    pub fn validate(&self) -> Result<(), SeedError> {
        let bad = |m: String| Err(SeedError::Invalid(format!("storage.{m}")));
        if let Some(d) = &self.driver {
            if !STORAGE_DRIVERS.contains(&d.as_str()) {
                return bad(format!(
                    "driver {d:?} is not one of {}",
                    STORAGE_DRIVERS.join(", ")
                ));
            }
        }
        if let Some(disk) = &self.disk {
            let ok = disk.starts_with("/dev/")
                && !disk.split('/').any(|c| c == "..")
                && disk.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                return bad(format!("disk {disk:?} is not a /dev path"));
            }
            if self.size.is_some() {
                return bad("size is for a loop file: a disk is taken whole".into());
            }
        }
        if let Some(size) = &self.size {
            let digits = size
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(size.len());
            let unit = &size[digits..];
            if digits == 0 || !["", "B", "MiB", "GiB", "TiB", "MB", "GB", "TB"].contains(&unit) {
                return bad(format!("size {size:?} is not a size (e.g. 20GiB)"));
            }
        }
        Ok(())
    }
}

/// Management network configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    pub interfaces: Vec<Interface>,
    /// The instances' network, made on first boot.
    pub instances: InstanceNetwork,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            interfaces: vec![Interface {
                dhcp: true,
                ..Interface::default()
            }],
            instances: InstanceNetwork::default(),
        }
    }
}

/// The networks made on first boot for the instances (the default profile's eth0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceNetwork {
    /// `auto` (bridge standalone, ovn in a cluster), `bridge` (a NAT bridge with DHCP and
    /// DNS, on every member), `ovn` (an OVN network over an uplink) or `none`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The bridge's name.
    pub name: String,
    /// `auto` or the bridge's gateway address in CIDR form (`10.10.0.1/24`).
    pub ipv4_address: String,
    pub ovn: OvnNetwork,
}

impl Default for InstanceNetwork {
    fn default() -> Self {
        InstanceNetwork {
            kind: "auto".into(),
            name: "cairnbr0".into(),
            ipv4_address: "auto".into(),
            ovn: OvnNetwork::default(),
        }
    }
}

/// The OVN network of a cluster's instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OvnNetwork {
    pub name: String,
    /// A physical uplink; `None`: the instance bridge is the uplink.
    pub uplink: Option<Uplink>,
}

impl Default for OvnNetwork {
    fn default() -> Self {
        OvnNetwork {
            name: "ovn0".into(),
            uplink: None,
        }
    }
}

/// A physical uplink for the OVN routers: Incus's `physical` network keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    /// The interface, by the same name on every member.
    pub parent: String,
    /// The uplink's gateway in CIDR form (`192.0.2.1/24`).
    pub gateway: String,
    /// The routers' addresses, `FIRST-LAST[,FIRST-LAST]`.
    pub ranges: String,
    #[serde(default)]
    pub nameservers: Vec<Ipv4Addr>,
}

fn interface_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl InstanceNetwork {
    /// What `type` means for this node: `auto` settled by whether it is clustered.
    pub fn resolved_kind(&self, clustered: bool) -> &str {
        match (self.kind.as_str(), clustered) {
            ("auto", true) => "ovn",
            ("auto", false) => "bridge",
            (k, _) => k,
        }
    }

    pub fn validate(&self, clustered: bool) -> Result<(), SeedError> {
        let bad = |m: String| Err(SeedError::Invalid(format!("network.instances.{m}")));
        match self.kind.as_str() {
            "auto" | "bridge" | "none" => {}
            "ovn" if clustered => {}
            "ovn" => {
                return bad(
                    "type ovn needs a cluster: section (a standalone node gets a bridge)".into(),
                )
            }
            k => return bad(format!("type {k:?} is not auto, bridge, ovn or none")),
        }
        let name_ok = interface_name_ok(&self.name) && !self.name.contains('.');
        if !name_ok {
            return bad(format!(
                "name {:?} is not an interface name (at most 15 letters, digits, - or _)",
                self.name
            ));
        }
        if self.ipv4_address != "auto" && Cidr::parse(&self.ipv4_address).is_err() {
            return bad(format!(
                "ipv4_address {:?} is not auto or an IPv4 CIDR",
                self.ipv4_address
            ));
        }
        let o = &self.ovn;
        let label_ok = !o.name.is_empty()
            && o.name.len() <= 63
            && o.name != self.name
            && o.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !label_ok {
            return bad(format!(
                "ovn.name {:?} is not a network name (letters, digits, - or _; not the bridge's)",
                o.name
            ));
        }
        if let Some(u) = &o.uplink {
            if !interface_name_ok(&u.parent) {
                return bad(format!(
                    "ovn.uplink.parent {:?} is not an interface name",
                    u.parent
                ));
            }
            Cidr::parse(&u.gateway).map_err(|_| {
                SeedError::Invalid(format!(
                    "network.instances.ovn.uplink.gateway {:?} is not an IPv4 CIDR",
                    u.gateway
                ))
            })?;
            for r in u.ranges.split(',') {
                let ok = r.split_once('-').is_some_and(|(a, b)| {
                    a.trim().parse::<Ipv4Addr>().is_ok() && b.trim().parse::<Ipv4Addr>().is_ok()
                });
                if !ok {
                    return bad(format!(
                        "ovn.uplink.ranges {:?} is not FIRST-LAST[,FIRST-LAST]",
                        u.ranges
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One NIC and how it gets its address. It is matched by `mac`, else by `name`, else it is
/// the first ethernet NIC not matched by another entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Interface {
    pub name: Option<String>,
    pub mac: Option<String>,
    pub dhcp: bool,
    /// Static IPv4 addresses in CIDR form, e.g. `10.77.0.1/24`.
    pub addresses: Vec<String>,
    pub gateway: Option<Ipv4Addr>,
}

/// First-boot trust: how clients reach and authenticate to the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Trust {
    /// The HTTPS listen address for the API (`core.https_address`).
    pub https_address: String,
    pub client_certificates: Vec<ClientCertificate>,
}

impl Default for Trust {
    fn default() -> Self {
        Trust {
            https_address: ":8443".into(),
            client_certificates: Vec::new(),
        }
    }
}

/// A client certificate trusted from the first boot on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificate {
    pub name: String,
    /// PEM, one certificate.
    pub certificate: String,
}

/// Zero-touch cluster formation: members whose seeds carry the same `name` and `secret` find
/// each other on the management network and form a cluster of `founders` members.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The cluster's name; a DNS label.
    pub name: String,
    /// The join secret shared by all members. Keys are derived from it; it is never sent.
    pub secret: String,
    /// How many members form the cluster initially (the first of them founds it).
    pub founders: u32,
    /// The management interface to announce on; default: the first non-loopback interface
    /// that is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// UDP port of the discovery announcements.
    #[serde(default = "default_discovery_port")]
    pub port: u16,
    /// Seconds to wait for all founders before a strict majority of them may form the cluster.
    #[serde(default = "default_formation_timeout")]
    pub formation_timeout: u64,
    /// This member's Raft heartbeat in milliseconds (cairnd's default when absent: 100).
    /// Its election timeouts are 2.5 to 5 times as long, so a leader is replaced about
    /// 8 heartbeats after it dies; members that answer slowly (emulated machines, a
    /// congested link) need a longer one, or they depose healthy leaders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
}

/// The accepted range of `cluster.heartbeat_ms`.
pub const HEARTBEAT_MS: std::ops::RangeInclusive<u64> = 20..=10_000;

/// The default UDP port for discovery: next to the API's 8443.
pub const DEFAULT_DISCOVERY_PORT: u16 = 8444;
/// The default formation timeout in seconds.
pub const DEFAULT_FORMATION_TIMEOUT: u64 = 30;
/// The shortest accepted join secret, in characters.
pub const MIN_SECRET_CHARS: usize = 16;
/// The longest accepted join secret, in bytes; a seed is a small file.
const MAX_SECRET_BYTES: usize = 1024;

fn default_discovery_port() -> u16 {
    DEFAULT_DISCOVERY_PORT
}

fn default_formation_timeout() -> u64 {
    DEFAULT_FORMATION_TIMEOUT
}

// Written by hand so that logging a seed (`{:?}`) never prints the join secret.
impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("founders", &self.founders)
            .field("interface", &self.interface)
            .field("port", &self.port)
            .field("formation_timeout", &self.formation_timeout)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .finish()
    }
}

impl Cluster {
    pub fn validate(&self) -> Result<(), SeedError> {
        let bad = |m: String| Err(SeedError::Invalid(format!("cluster.{m}")));
        if !valid_hostname(&self.name) {
            return bad(format!(
                "name {:?} is not a DNS label (a-z, 0-9, '-', at most 63)",
                self.name
            ));
        }
        // The secret is not echoed in errors: they end up in logs.
        if self.secret.chars().count() < MIN_SECRET_CHARS {
            return bad(format!(
                "secret is shorter than {MIN_SECRET_CHARS} characters"
            ));
        }
        if self.secret.len() > MAX_SECRET_BYTES {
            return bad(format!("secret is longer than {MAX_SECRET_BYTES} bytes"));
        }
        // A YAML block scalar silently adds a newline; two seeds that look alike must not
        // derive different keys, so surrounding whitespace and control characters are refused.
        if self.secret.trim() != self.secret || self.secret.chars().any(char::is_control) {
            return bad("secret has surrounding whitespace or control characters".into());
        }
        if self.founders == 0 {
            return bad("founders must be at least 1".into());
        }
        if let Some(i) = &self.interface {
            if !valid_ifname(i) {
                return bad(format!("interface {i:?} is not an interface name"));
            }
        }
        if self.port == 0 {
            return bad("port must not be 0".into());
        }
        if self.formation_timeout == 0 {
            return bad("formation_timeout must be at least 1 second".into());
        }
        if let Some(h) = self.heartbeat_ms {
            if !HEARTBEAT_MS.contains(&h) {
                return bad(format!(
                    "heartbeat_ms {h} is outside {}..={} milliseconds",
                    HEARTBEAT_MS.start(),
                    HEARTBEAT_MS.end()
                ));
            }
        }
        Ok(())
    }
}

/// An IPv4 address with its prefix length, parsed from CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, SeedError> {
        let bad = || SeedError::Invalid(format!("address {s:?} is not IPv4 CIDR (a.b.c.d/n)"));
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Cidr { address, prefix })
    }
}

impl Seed {
    /// Parses and validates a seed.
    pub fn parse(yaml: &str) -> Result<Seed, SeedError> {
        let seed: Seed = if yaml.trim().is_empty() {
            Seed::default()
        } else {
            serde_yaml::from_str(yaml)?
        };
        seed.validate()?;
        Ok(seed)
    }

    pub fn to_yaml(&self) -> Result<String, SeedError> {
        Ok(serde_yaml::to_string(self)?)
    }

    /// Checks what the types cannot: hostname syntax, CIDR syntax, PEM framing.
    pub fn validate(&self) -> Result<(), SeedError> {
        self.storage.validate()?;
        self.network.instances.validate(self.cluster.is_some())?;
        if let Some(h) = &self.hostname {
            if !valid_hostname(h) {
                return Err(SeedError::Invalid(format!(
                    "hostname {h:?} is not a DNS label (a-z, 0-9, '-', at most 63)"
                )));
            }
        }
        for (i, iface) in self.network.interfaces.iter().enumerate() {
            if iface.dhcp && !iface.addresses.is_empty() {
                return Err(SeedError::Invalid(format!(
                    "network.interfaces[{i}]: dhcp and static addresses are exclusive"
                )));
            }
            if !iface.dhcp && iface.addresses.is_empty() {
                return Err(SeedError::Invalid(format!(
                    "network.interfaces[{i}]: neither dhcp nor addresses"
                )));
            }
            for a in &iface.addresses {
                Cidr::parse(a)?;
            }
            if let Some(mac) = &iface.mac {
                if !valid_mac(mac) {
                    return Err(SeedError::Invalid(format!(
                        "network.interfaces[{i}]: mac {mac:?} is not aa:bb:cc:dd:ee:ff"
                    )));
                }
            }
        }
        for c in &self.trust.client_certificates {
            let pem = c.certificate.trim();
            if !pem.starts_with("-----BEGIN CERTIFICATE-----")
                || !pem.ends_with("-----END CERTIFICATE-----")
            {
                return Err(SeedError::Invalid(format!(
                    "trust.client_certificates {:?}: not a PEM certificate",
                    c.name
                )));
            }
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        Ok(())
    }
}

/// Linux's rule for interface names (`dev_valid_name`): 1 to 15 bytes, not `.` or `..`, no
/// `/`, `:` or whitespace.
fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && !n
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
        && !n.chars().any(char::is_control)
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && !h.starts_with('-')
        && !h.ends_with('-')
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_mac(m: &str) -> bool {
    let parts: Vec<&str> = m.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn empty_seed_means_dhcp_on_first_nic() {
        let s = Seed::parse("").unwrap();
        assert_eq!(s.network.interfaces.len(), 1);
        assert!(s.network.interfaces[0].dhcp);
        assert_eq!(s.trust.https_address, ":8443");
    }

    #[test]
    fn full_seed_round_trips() {
        let yaml = format!(
            "hostname: node1\nnetwork:\n  interfaces:\n    - mac: \"52:54:00:00:00:01\"\n      dhcp: true\n    - name: enp0s3\n      addresses: [\"10.77.0.1/24\"]\n      gateway: 10.77.0.254\ntrust:\n  client_certificates:\n    - name: op\n      certificate: |\n{}",
            PEM.lines().map(|l| format!("        {l}\n")).collect::<String>()
        );
        let s = Seed::parse(&yaml).unwrap();
        assert_eq!(s.hostname.as_deref(), Some("node1"));
        assert_eq!(
            s.network.interfaces[1].gateway,
            Some(Ipv4Addr::new(10, 77, 0, 254))
        );
        assert_eq!(s.trust.client_certificates[0].name, "op");
        assert_eq!(Seed::parse(&s.to_yaml().unwrap()).unwrap(), s);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Seed::parse("hostname: Bad_Name").is_err());
        assert!(Seed::parse("network: {interfaces: [{addresses: [\"10.0.0.1\"]}]}").is_err());
        assert!(Seed::parse("network: {interfaces: [{name: x}]}").is_err());
        assert!(Seed::parse("network: {interfaces: [{mac: zz, dhcp: true}]}").is_err());
        assert!(Seed::parse("unknown: 1").is_err());
        assert!(
            Seed::parse("trust: {client_certificates: [{name: a, certificate: nope}]}").is_err()
        );
    }

    const CLUSTER: &str =
        "cluster:\n  name: rack1\n  secret: \"0123456789abcdef\"\n  founders: 3\n";

    #[test]
    fn cluster_section_is_optional_and_defaults() {
        assert_eq!(Seed::parse("").unwrap().cluster, None);
        let s = Seed::parse(CLUSTER).unwrap();
        let c = s.cluster.clone().unwrap();
        assert_eq!(c.name, "rack1");
        assert_eq!(c.secret, "0123456789abcdef");
        assert_eq!(c.founders, 3);
        assert_eq!(c.interface, None);
        assert_eq!(c.port, DEFAULT_DISCOVERY_PORT);
        assert_eq!(c.formation_timeout, DEFAULT_FORMATION_TIMEOUT);
        assert_eq!(c.heartbeat_ms, None);
        assert_eq!(Seed::parse(&s.to_yaml().unwrap()).unwrap(), s);
    }

    #[test]
    fn cluster_section_full() {
        let yaml = format!(
            "{CLUSTER}  interface: enp0s3\n  port: 9000\n  formation_timeout: 5\n  heartbeat_ms: 400\n"
        );
        let c = Seed::parse(&yaml).unwrap().cluster.unwrap();
        assert_eq!(c.heartbeat_ms, Some(400));
        assert_eq!(c.interface.as_deref(), Some("enp0s3"));
        assert_eq!(c.port, 9000);
        assert_eq!(c.formation_timeout, 5);
    }

    #[test]
    fn cluster_section_rejects_bad_values() {
        let with = |extra: &str| Seed::parse(&format!("{CLUSTER}{extra}"));
        // Required fields.
        assert!(Seed::parse("cluster: {name: a, founders: 1}").is_err());
        assert!(Seed::parse("cluster: {secret: \"0123456789abcdef\", founders: 1}").is_err());
        assert!(Seed::parse("cluster: {name: a, secret: \"0123456789abcdef\"}").is_err());
        // Values.
        let one = |name: &str, secret: &str, founders: &str| {
            Seed::parse(&format!(
                "cluster: {{name: {name}, secret: {secret}, founders: {founders}}}"
            ))
        };
        assert!(one("a", "\"0123456789abcdef\"", "1").is_ok());
        assert!(one("Rack_1", "\"0123456789abcdef\"", "1").is_err());
        assert!(one("a", "\"0123456789abcde\"", "1").is_err(), "15 chars");
        assert!(one("a", "\"0123456789abcdef\\n\"", "1").is_err(), "newline");
        assert!(one("a", "\" 0123456789abcdef\"", "1").is_err(), "space");
        assert!(one("a", "\"0123456789abcdef\"", "0").is_err());
        assert!(one("a", "\"0123456789abcdef\"", "-1").is_err());
        assert!(with("  interface: \"eth0/x\"\n").is_err());
        assert!(with("  interface: averyveryverylongname\n").is_err());
        assert!(with("  port: 0\n").is_err());
        assert!(with("  formation_timeout: 0\n").is_err());
        assert!(with("  heartbeat_ms: 19\n").is_err());
        assert!(with("  heartbeat_ms: 10001\n").is_err());
        assert!(with("  heartbeat_ms: 20\n").is_ok());
        assert!(with("  unknown: 1\n").is_err(), "deny_unknown_fields");
    }

    #[test]
    fn cluster_secret_is_not_in_debug_output_or_errors() {
        let s = Seed::parse(CLUSTER).unwrap();
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
        let e = Seed::parse("cluster: {name: a, secret: \"short secret\", founders: 1}")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("short secret"), "{e}");
    }

    #[test]
    fn storage_section() {
        let s = Seed::parse("storage:\n  driver: zfs\n  disk: /dev/nvme1n1\n").unwrap();
        assert_eq!(s.storage.driver.as_deref(), Some("zfs"));
        assert_eq!(s.storage.disk.as_deref(), Some("/dev/nvme1n1"));
        assert_eq!(Seed::parse("").unwrap().storage, Storage::default());
        Seed::parse("storage:\n  size: 20GiB\n").unwrap();
        for bad in [
            "storage:\n  driver: lvm\n",
            "storage:\n  disk: sda\n",
            "storage:\n  disk: /dev/../etc/passwd\n",
            "storage:\n  disk: /dev/sdb\n  size: 1GiB\n",
            "storage:\n  size: lots\n",
            "storage:\n  bogus: 1\n",
        ] {
            assert!(Seed::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_network_section() {
        let s = Seed::parse("").unwrap();
        assert_eq!(s.network.instances.resolved_kind(false), "bridge");
        assert_eq!(s.network.instances.resolved_kind(true), "ovn");
        assert_eq!(s.network.instances.name, "cairnbr0");
        assert_eq!(s.network.instances.ovn.name, "ovn0");
        let cluster = "cluster:\n  name: lab\n  secret: \"0123456789abcdef\"\n  founders: 3\n";
        let s = Seed::parse(&format!(
            "{cluster}network:\n  instances:\n    type: ovn\n    ovn:\n      name: tenants\n      uplink: {{parent: enp0s4, gateway: 192.0.2.1/24, ranges: 192.0.2.100-192.0.2.150, nameservers: [192.0.2.1]}}\n"
        ))
        .unwrap();
        let u = s.network.instances.ovn.uplink.as_ref().unwrap();
        assert_eq!((u.parent.as_str(), u.nameservers.len()), ("enp0s4", 1));
        for bad in [
            "network:\n  instances:\n    ovn: {name: cairnbr0}\n",
            "network:\n  instances:\n    ovn: {uplink: {parent: enp0s4, gateway: x, ranges: 192.0.2.100-192.0.2.150}}\n",
            "network:\n  instances:\n    ovn: {uplink: {parent: enp0s4, gateway: 192.0.2.1/24, ranges: lots}}\n",
            "network:\n  instances:\n    ovn: {uplink: {gateway: 192.0.2.1/24, ranges: 192.0.2.100-192.0.2.150}}\n",
        ] {
            assert!(Seed::parse(&format!("{cluster}{bad}")).is_err(), "{bad}");
        }
        let s = Seed::parse("network:\n  instances:\n    type: none\n").unwrap();
        assert_eq!(s.network.instances.kind, "none");
        // The management interfaces keep their default when only instances is given.
        assert_eq!(s.network.interfaces.len(), 1);
        Seed::parse("network:\n  instances:\n    ipv4_address: 10.10.0.1/24\n").unwrap();
        for bad in [
            "network:\n  instances:\n    type: ovn\n",
            "network:\n  instances:\n    type: macvlan\n",
            "network:\n  instances:\n    name: a-name-far-too-long\n",
            "network:\n  instances:\n    name: \"br 0\"\n",
            "network:\n  instances:\n    ipv4_address: lots\n",
            "network:\n  instances:\n    bogus: 1\n",
        ] {
            assert!(Seed::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidr_parses() {
        let c = Cidr::parse("10.0.2.15/24").unwrap();
        assert_eq!(c.prefix, 24);
        assert!(Cidr::parse("10.0.2.15/33").is_err());
    }
}
