//! The `physical` network type: a host interface (or Linux bridge) given to Cairn as an
//! uplink, as Incus's `physical` networks are. Nothing is made for it on its own: an OVN
//! network that names it as `network=` connects to it (an OVS bridge with the parent on
//! it, mapped for ovn-controller; see `ovn_uplink`), and takes its routers' external
//! addresses from `ipv4.ovn.ranges`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::config::{bad, parse_gateway, ranges, Ipv4Cidr};
use super::NetworkError;

/// The keys a physical network accepts; others Incus has (`vlan`, `gvrp`, IPv6, routes) are
/// refused, not ignored.
pub const PHYSICAL_KEYS: &[&str] = &[
    "parent",
    "mtu",
    "ipv4.gateway",
    "ipv4.ovn.ranges",
    "dns.nameservers",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalSpec {
    pub parent: String,
    pub mtu: Option<u32>,
    /// The uplink's gateway and subnet (`ipv4.gateway=192.0.2.1/24`).
    pub gateway: Option<Ipv4Cidr>,
    /// Addresses OVN routers may take on the uplink.
    pub ovn_ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub nameservers: Vec<Ipv4Addr>,
}

impl PhysicalSpec {
    /// Every address of `ipv4.ovn.ranges`, in order (ranges are bounded by the subnet).
    pub fn ovn_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ovn_ranges
            .iter()
            .flat_map(|(a, b)| (u32::from(*a)..=u32::from(*b)).map(Ipv4Addr::from))
    }
}

pub fn parse(config: &BTreeMap<String, String>) -> Result<PhysicalSpec, NetworkError> {
    for k in config.keys() {
        if !PHYSICAL_KEYS.contains(&k.as_str()) && !k.starts_with("user.") {
            return Err(NetworkError::Invalid(format!(
                "Invalid network configuration key {k:?}"
            )));
        }
    }
    let get = |k: &str| config.get(k).filter(|v| !v.is_empty());
    let parent = get("parent")
        .cloned()
        .ok_or_else(|| bad("parent", "a physical network needs its parent interface"))?;
    if parent.len() > 15 || parent.contains('/') || parent.contains(char::is_whitespace) {
        return Err(bad(
            "parent",
            format!("{parent:?} is not an interface name"),
        ));
    }
    let mtu = match get("mtu") {
        None => None,
        Some(v) => Some(
            v.parse::<u32>()
                .ok()
                .filter(|m| (1280..=65535).contains(m))
                .ok_or_else(|| bad("mtu", format!("{v:?} is not an MTU (1280 to 65535)")))?,
        ),
    };
    let gateway = get("ipv4.gateway")
        .map(|v| parse_gateway("ipv4.gateway", v))
        .transpose()?;
    let ovn_ranges = match (get("ipv4.ovn.ranges"), gateway) {
        (None, _) => vec![],
        (Some(_), None) => return Err(bad("ipv4.ovn.ranges", "needs ipv4.gateway")),
        (Some(v), Some(g)) => {
            let r = ranges("ipv4.ovn.ranges", v, g)?;
            if r.iter().any(|(a, b)| (*a..=*b).contains(&g.addr)) {
                return Err(bad(
                    "ipv4.ovn.ranges",
                    format!("{v} holds the gateway {}", g.addr),
                ));
            }
            r
        }
    };
    let nameservers = match get("dns.nameservers") {
        None => vec![],
        Some(v) => v
            .split(',')
            .map(str::trim)
            .map(|s| {
                s.parse::<Ipv4Addr>().map_err(|_| {
                    bad(
                        "dns.nameservers",
                        format!(
                            "{s:?} is not an IPv4 address (IPv6 uplinks are not supported yet)"
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(PhysicalSpec {
        parent,
        mtu,
        gateway,
        ovn_ranges,
        nameservers,
    })
}

/// The host side of a physical network: its parent must exist here; it is brought up (and
/// given `mtu`), as Incus does when it starts one.
pub fn apply(spec: &PhysicalSpec) -> Result<(), NetworkError> {
    if !super::netlink::exists(&spec.parent) {
        return Err(NetworkError::Invalid(format!(
            "Parent interface {:?} not found",
            spec.parent
        )));
    }
    let io = |e: std::io::Error| NetworkError::Io(format!("uplink {}: {e}", spec.parent));
    if let Some(m) = spec.mtu {
        super::netlink::set_mtu(&spec.parent, m).map_err(io)?;
    }
    super::netlink::link_up(&spec.parent).map_err(io)
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
    fn keys_and_ranges() {
        let s = parse(&conf(&[
            ("parent", "eth1"),
            ("ipv4.gateway", "192.0.2.1/24"),
            ("ipv4.ovn.ranges", "192.0.2.10-192.0.2.12"),
            ("dns.nameservers", "192.0.2.53"),
        ]))
        .unwrap();
        assert_eq!(s.ovn_addresses().count(), 3);
        assert_eq!(s.nameservers, vec![Ipv4Addr::new(192, 0, 2, 53)]);
        let e = |kv: &[(&str, &str)]| parse(&conf(kv)).unwrap_err().to_string();
        assert!(e(&[]).contains("parent"));
        assert!(e(&[("parent", "eth1"), ("vlan", "10")]).contains("vlan"));
        assert!(e(&[
            ("parent", "eth1"),
            ("ipv4.ovn.ranges", "192.0.2.10-192.0.2.12")
        ])
        .contains("needs ipv4.gateway"));
        assert!(e(&[
            ("parent", "eth1"),
            ("ipv4.gateway", "192.0.2.1/24"),
            ("ipv4.ovn.ranges", "192.0.3.10-192.0.3.12")
        ])
        .contains("inside"));
        assert!(e(&[
            ("parent", "eth1"),
            ("ipv4.gateway", "192.0.2.1/24"),
            ("ipv4.ovn.ranges", "192.0.2.1-192.0.2.12")
        ])
        .contains("gateway"));
        assert!(e(&[("parent", "eth1"), ("dns.nameservers", "fd00::1")]).contains("IPv6"));
    }
}
