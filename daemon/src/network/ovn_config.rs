//! An `ovn` network's configuration: Incus's keys for it, checked and parsed once into
//! [`OvnSpec`]. Pure functions, like `config` for bridges.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::config::{bad, boolean, check_domain, parse_gateway, Ipv4Cidr};
use super::NetworkError;

/// The uplink address of the network's router, chosen by cairnd from the uplink's
/// `ipv4.ovn.ranges` (Incus's key of the same name).
pub const VOLATILE_UPLINK_IPV4: &str = "volatile.network.ipv4.address";

/// The keys an OVN network accepts in this step; the other keys Incus has for it are
/// refused, not ignored.
pub const OVN_KEYS: &[&str] = &[
    "network",
    "ipv4.address",
    "ipv4.nat",
    "ipv6.address",
    "dns.domain",
    "bridge.mtu",
    "bridge.hwaddr",
    VOLATILE_UPLINK_IPV4,
];

/// Geneve's overhead on a 1500-byte underlay, Incus's default for OVN networks.
pub const DEFAULT_MTU: u32 = 1442;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvnSpec {
    /// The `physical` network the router reaches the outside through; `None`: `network=none`,
    /// an isolated overlay.
    pub uplink: Option<String>,
    pub ipv4: Ipv4Cidr,
    pub nat: bool,
    pub domain: String,
    pub mtu: u32,
    pub hwaddr: Option<String>,
    pub uplink_ipv4: Option<Ipv4Addr>,
}

/// Checks `config`, whose `ipv4.address` must be concrete (`auto` settled).
pub fn parse(config: &BTreeMap<String, String>) -> Result<OvnSpec, NetworkError> {
    for k in config.keys() {
        if !OVN_KEYS.contains(&k.as_str()) && !k.starts_with("user.") {
            return Err(NetworkError::Invalid(format!(
                "Invalid network configuration key {k:?}"
            )));
        }
    }
    let get = |k: &str| config.get(k).filter(|v| !v.is_empty());
    let uplink = match get("network").map(String::as_str) {
        None => {
            return Err(bad(
                "network",
                "an OVN network needs an uplink network (a physical network, or none)",
            ))
        }
        Some("none") => None,
        Some(n) => Some(n.to_string()),
    };
    let ipv4 = match get("ipv4.address").map(String::as_str) {
        None | Some("none") => return Err(bad(
            "ipv4.address",
            "an OVN network needs an IPv4 subnet (IPv6-only OVN networks are not supported yet)",
        )),
        Some("auto") => {
            return Err(NetworkError::Invalid(
                "ipv4.address=auto must be resolved before parsing".into(),
            ))
        }
        Some(v) => parse_gateway("ipv4.address", v)?,
    };
    match get("ipv6.address").map(String::as_str) {
        None | Some("none") => {}
        Some(v) => {
            return Err(bad(
                "ipv6.address",
                format!("{v:?}: IPv6 on OVN networks is not supported yet (only none)"),
            ))
        }
    }
    let domain = get("dns.domain").cloned().unwrap_or_else(|| "incus".into());
    check_domain(&domain)?;
    let mtu = match get("bridge.mtu") {
        None => DEFAULT_MTU,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|m| (1280..=65535).contains(m))
            .ok_or_else(|| bad("bridge.mtu", format!("{v:?} is not an MTU (1280 to 65535)")))?,
    };
    let hwaddr = match get("bridge.hwaddr") {
        None => None,
        Some(v) if crate::validate::is_mac(v) => Some(v.to_lowercase()),
        Some(v) => return Err(bad("bridge.hwaddr", format!("{v:?} is not a MAC address"))),
    };
    let uplink_ipv4 = match get(VOLATILE_UPLINK_IPV4) {
        None => None,
        Some(v) => Some(v.parse::<Ipv4Addr>().map_err(|_| {
            bad(
                VOLATILE_UPLINK_IPV4,
                format!("{v:?} is not an IPv4 address"),
            )
        })?),
    };
    if uplink.is_none() && uplink_ipv4.is_some() {
        return Err(bad(VOLATILE_UPLINK_IPV4, "needs an uplink network"));
    }
    Ok(OvnSpec {
        uplink,
        ipv4,
        nat: boolean("ipv4.nat", config.get("ipv4.nat"), true)?,
        domain,
        mtu,
        hwaddr,
        uplink_ipv4,
    })
}

/// A stable locally administered MAC for `what` of network `name` (router ports), so a
/// network's router keeps its MAC across daemon restarts and members.
pub fn derived_mac(name: &str, what: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes().chain([0]).chain(what.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let b = h.to_be_bytes();
    format!("10:66:6a:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_refusals() {
        let s = parse(&conf(&[
            ("network", "UPLINK"),
            ("ipv4.address", "10.60.0.1/24"),
        ]))
        .unwrap();
        assert_eq!(s.mtu, DEFAULT_MTU);
        assert!(s.nat);
        assert_eq!(s.uplink.as_deref(), Some("UPLINK"));
        let e = |kv: &[(&str, &str)]| parse(&conf(kv)).unwrap_err().to_string();
        assert!(e(&[("ipv4.address", "10.60.0.1/24")]).contains("uplink"));
        assert!(e(&[("network", "none")]).contains("IPv4"));
        assert!(e(&[
            ("network", "none"),
            ("ipv4.address", "10.60.0.1/24"),
            ("ipv6.address", "fd00::1/64")
        ])
        .contains("IPv6"));
        assert!(e(&[
            ("network", "none"),
            ("ipv4.address", "10.60.0.1/24"),
            ("ipv4.dhcp.ranges", "x")
        ])
        .contains("ipv4.dhcp.ranges"));
        assert_ne!(derived_mac("a", "int"), derived_mac("a", "ext"));
        assert!(crate::validate::is_mac(&derived_mac("tenant2", "int")));
    }
}
