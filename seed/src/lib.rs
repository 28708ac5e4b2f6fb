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
//! trust:
//!   https_address: ":8443"         # default
//!   client_certificates:
//!     - name: operator
//!       certificate: |
//!         -----BEGIN CERTIFICATE-----
//!         ...
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
}

/// Management network configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    pub interfaces: Vec<Interface>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            interfaces: vec![Interface {
                dhcp: true,
                ..Interface::default()
            }],
        }
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
        Ok(())
    }
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

    #[test]
    fn cidr_parses() {
        let c = Cidr::parse("10.0.2.15/24").unwrap();
        assert_eq!(c.prefix, 24);
        assert!(Cidr::parse("10.0.2.15/33").is_err());
    }
}
