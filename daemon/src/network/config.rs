//! A bridge network's configuration: Incus's keys, checked and parsed into [`BridgeSpec`]
//! once, so the drivers never see a string they would have to re-validate. Pure functions;
//! the one thing that reads the host (which subnets are in use) comes in as an argument.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::NetworkError;

/// The keys a bridge network accepts in this step; anything else is refused, so a key
/// Incus knows and Cairn does not yet is an error rather than silently ignored.
pub const BRIDGE_KEYS: &[&str] = &[
    "ipv4.address",
    "ipv4.firewall",
    "ipv6.firewall",
    "ipv4.nat",
    "ipv4.dhcp",
    "ipv4.dhcp.ranges",
    "ipv4.dhcp.expiry",
    "ipv4.nat.address",
    "ipv6.address",
    "ipv6.nat",
    "ipv6.dhcp",
    "ipv4.routing",
    "ipv6.routing",
    "dns.domain",
    "dns.mode",
    "bridge.mtu",
    "bridge.external_interfaces",
];

/// Incus's `dns.mode`: which names dnsmasq gives the instances' addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    /// `<instance>.<dns.domain>` from the names cairnd gives dnsmasq (the default).
    Managed,
    /// The names the DHCP clients send.
    Dynamic,
    /// No records, and no local domain.
    None,
}

/// An IPv4 address with its prefix length (`10.0.0.1/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
    /// Whether the two subnets share an address: one contains the other's network.
    pub fn overlaps(self, other: Ipv4Cidr) -> bool {
        let p = self.prefix.min(other.prefix);
        let m = Ipv4Cidr {
            addr: self.addr,
            prefix: p,
        }
        .mask();
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv6 address with its prefix length (`fd42:1:2:3::1/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Cidr {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Ipv6Cidr {
    fn mask(self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        }
    }
    pub fn network(self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }
    pub fn overlaps(self, other: Ipv6Cidr) -> bool {
        let p = self.prefix.min(other.prefix);
        let m = Ipv6Cidr {
            addr: self.addr,
            prefix: p,
        }
        .mask();
        u128::from(self.addr) & m == u128::from(other.addr) & m
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv6 gateway for a bridge: a host address of a /64 (what SLAAC needs), neither the
/// subnet's network address nor link-local, loopback or multicast.
pub fn parse_gateway6(key: &str, v: &str) -> Result<Ipv6Cidr, NetworkError> {
    let (a, p) = v.split_once('/').ok_or_else(|| {
        bad(
            key,
            format!("{v:?} is not an address with a prefix (fd42:1:2:3::1/64)"),
        )
    })?;
    let addr: Ipv6Addr = a
        .parse()
        .map_err(|_| bad(key, format!("{a:?} is not an IPv6 address")))?;
    if p != "64" {
        return Err(bad(
            key,
            format!("prefix {p:?}: a bridge's IPv6 subnet is a /64 (SLAAC needs one)"),
        ));
    }
    let c = Ipv6Cidr { addr, prefix: 64 };
    let link_local = (addr.segments()[0] & 0xffc0) == 0xfe80;
    if addr == c.network()
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.is_unspecified()
        || link_local
    {
        return Err(bad(key, format!("{v} cannot be a bridge address")));
    }
    Ok(c)
}

/// A random unique local /64 (fd00::/8 with a random 40-bit global id and subnet, RFC
/// 4193) overlapping none of `used`; `seed` supplies the randomness.
pub fn choose_auto6(used: &[Ipv6Cidr], seed: u64) -> Option<Ipv6Cidr> {
    (0..1024u64).find_map(|i| {
        let bits = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) & 0x00ff_ffff_ffff_ffff;
        let net = (0xfdu128 << 120) | (u128::from(bits) << 64);
        let cand = Ipv6Cidr {
            addr: Ipv6Addr::from(net | 1),
            prefix: 64,
        };
        (!used.iter().any(|u| u.overlaps(cand))).then_some(cand)
    })
}

pub(super) fn bad(key: &str, msg: impl fmt::Display) -> NetworkError {
    NetworkError::Invalid(format!(
        "Invalid value for network config key {key:?}: {msg}"
    ))
}

/// `FIRST-LAST[,FIRST-LAST…]`, each an ascending range inside subnet `c`.
pub fn ranges(key: &str, v: &str, c: Ipv4Cidr) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, NetworkError> {
    let mut out = Vec::new();
    for r in v.split(',').map(str::trim) {
        let (a, b) = r
            .split_once('-')
            .ok_or_else(|| bad(key, format!("{r:?} is not FIRST-LAST")))?;
        let ip = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| bad(key, format!("{s:?} is not an IPv4 address")))
        };
        let (a, b) = (ip(a)?, ip(b)?);
        if u32::from(a) > u32::from(b) || !c.contains(a) || !c.contains(b) {
            return Err(bad(
                key,
                format!(
                    "{r} is not an ascending range inside {}",
                    Ipv4Cidr {
                        addr: c.network(),
                        prefix: c.prefix
                    }
                ),
            ));
        }
        out.push((a, b));
    }
    Ok(out)
}

/// A DNS domain (`dns.domain`): dot-separated labels of letters, digits and `-`.
pub fn check_domain(v: &str) -> Result<(), NetworkError> {
    if v.len() > 253
        || !v.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        })
    {
        return Err(bad("dns.domain", format!("{v:?} is not a domain name")));
    }
    Ok(())
}

/// A gateway address for a bridge: `a.b.c.d/n` with n in 8..=30 and a host address (neither
/// the network nor the broadcast address), as Incus's `IsNetworkAddressCIDRV4` wants.
pub fn parse_gateway(key: &str, v: &str) -> Result<Ipv4Cidr, NetworkError> {
    let (a, p) = v.split_once('/').ok_or_else(|| {
        bad(
            key,
            format!("{v:?} is not an address with a prefix (a.b.c.d/n)"),
        )
    })?;
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| bad(key, format!("{a:?} is not an IPv4 address")))?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or_else(|| bad(key, format!("prefix {p:?} must be 8 to 30")))?;
    let c = Ipv4Cidr { addr, prefix };
    if addr == c.network() || addr == c.broadcast() {
        return Err(bad(
            key,
            format!("{v} is the subnet's network or broadcast address, not a host address"),
        ));
    }
    if addr.is_loopback() || addr.is_multicast() || addr.is_unspecified() {
        return Err(bad(key, format!("{addr} cannot be a bridge address")));
    }
    Ok(c)
}

pub(super) fn boolean(key: &str, v: Option<&String>, default: bool) -> Result<bool, NetworkError> {
    match v.map(String::as_str) {
        None | Some("") => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(o) => Err(bad(key, format!("{o:?} is not a boolean"))),
    }
}

/// What a bridge is to be, parsed from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub ipv4: Option<Ipv4Cidr>,
    pub nat: bool,
    pub dhcp: bool,
    pub dhcp_ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// The DHCPv4 lease time as dnsmasq takes it (`1h`, `45m`, `7200`, `infinite`).
    pub dhcp_expiry: String,
    /// `ipv4.nat.address`: the source address NATed traffic leaves with (SNAT), instead
    /// of whatever the outgoing interface has (masquerade).
    pub nat_address: Option<Ipv4Addr>,
    pub domain: String,
    pub mtu: Option<u32>,
    /// The bridge's IPv6 gateway; router advertisements make instances SLAAC addresses.
    pub ipv6: Option<Ipv6Cidr>,
    pub nat6: bool,
    /// Stateless DHCPv6 (DNS server and domain) next to the router advertisements.
    pub dhcp6: bool,
    /// Incus's `ipv4.firewall`/`ipv6.firewall`: the filtering rules that let the
    /// instances reach dnsmasq and be forwarded (the table's input and forward chains).
    pub firewall4: bool,
    pub firewall6: bool,
    /// `ipv4.routing`/`ipv6.routing`: whether traffic is forwarded in and out of the bridge.
    pub routing4: bool,
    pub routing6: bool,
    pub dns_mode: DnsMode,
    /// `bridge.external_interfaces`: unconfigured host interfaces made ports of the bridge.
    pub external: Vec<String>,
}

impl BridgeSpec {
    /// dnsmasq runs when it has something to serve: DHCP, or DNS for the instances' names
    /// (which also needs the bridge's address to listen on).
    pub fn wants_dnsmasq(&self) -> bool {
        self.ipv4.is_some() || self.ipv6.is_some()
    }
    /// The DHCP ranges to hand out: the configured ones, or the whole subnet but the
    /// gateway's neighbour at the start (Incus's default: from .2 to the last host).
    pub fn ranges(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        let Some(c) = self.ipv4 else { return vec![] };
        if !self.dhcp_ranges.is_empty() {
            return self.dhcp_ranges.clone();
        }
        let first = Ipv4Addr::from(u32::from(c.network()) + 2);
        let last = Ipv4Addr::from(u32::from(c.broadcast()) - 1);
        vec![(first, last)]
    }
}

/// Checks `config` (whose `ipv4.address` must already be concrete: `auto` resolved) and
/// parses it. `name` is the bridge's interface name.
pub fn parse(name: &str, config: &BTreeMap<String, String>) -> Result<BridgeSpec, NetworkError> {
    for k in config.keys() {
        if !BRIDGE_KEYS.contains(&k.as_str()) && !k.starts_with("user.") {
            return Err(NetworkError::Invalid(format!(
                "Invalid network configuration key {k:?}"
            )));
        }
    }
    let get = |k: &str| config.get(k).filter(|v| !v.is_empty());
    let ipv4 = match get("ipv4.address").map(String::as_str) {
        None | Some("none") => None,
        Some("auto") => {
            return Err(NetworkError::Invalid(
                "ipv4.address=auto must be resolved before parsing".into(),
            ))
        }
        Some(v) => Some(parse_gateway("ipv4.address", v)?),
    };
    let ipv6 = match get("ipv6.address").map(String::as_str) {
        None | Some("none") => None,
        Some("auto") => {
            return Err(NetworkError::Invalid(
                "ipv6.address=auto must be resolved before parsing".into(),
            ))
        }
        Some(v) => Some(parse_gateway6("ipv6.address", v)?),
    };
    for k in ["ipv6.nat", "ipv6.dhcp"] {
        if ipv6.is_none() && get(k).is_some() {
            return Err(bad(k, "needs ipv6.address"));
        }
    }
    let mut dhcp_ranges = Vec::new();
    if let Some(v) = get("ipv4.dhcp.ranges") {
        let Some(c) = ipv4 else {
            return Err(bad("ipv4.dhcp.ranges", "needs ipv4.address"));
        };
        dhcp_ranges = ranges("ipv4.dhcp.ranges", v, c)?;
    }
    let dhcp_expiry = get("ipv4.dhcp.expiry")
        .cloned()
        .unwrap_or_else(|| "1h".into());
    let expiry_ok = dhcp_expiry == "infinite"
        || dhcp_expiry
            .strip_suffix(['s', 'm', 'h', 'd', 'w'])
            .unwrap_or(&dhcp_expiry)
            .parse::<u32>()
            .is_ok_and(|n| n > 0);
    if !expiry_ok {
        return Err(bad(
            "ipv4.dhcp.expiry",
            format!("{dhcp_expiry:?} is not a lease time (like 1h, 45m, 3600 or infinite)"),
        ));
    }
    let nat_address = match get("ipv4.nat.address") {
        None => None,
        Some(v) => Some(
            v.parse::<Ipv4Addr>()
                .map_err(|_| bad("ipv4.nat.address", format!("{v:?} is not an IPv4 address")))?,
        ),
    };
    let mtu = match get("bridge.mtu") {
        None => None,
        Some(v) => Some(
            v.parse::<u32>()
                .ok()
                .filter(|m| (68..=65535).contains(m))
                .ok_or_else(|| bad("bridge.mtu", format!("{v:?} is not an MTU (68 to 65535)")))?,
        ),
    };
    let domain = get("dns.domain").cloned().unwrap_or_else(|| "incus".into());
    check_domain(&domain)?;
    let dns_mode = match get("dns.mode").map(String::as_str) {
        None | Some("managed") => DnsMode::Managed,
        Some("dynamic") => DnsMode::Dynamic,
        Some("none") => DnsMode::None,
        Some(o) => {
            return Err(bad(
                "dns.mode",
                format!("{o:?} is not one of managed, dynamic, none"),
            ))
        }
    };
    let mut external: Vec<String> = Vec::new();
    for e in get("bridge.external_interfaces")
        .map(|v| v.split(',').map(str::trim).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if e.contains('/') {
            return Err(bad(
                "bridge.external_interfaces",
                format!("{e:?}: the NAME/PARENT/VLAN form (a VLAN made on demand) is not supported; make the VLAN interface and name it"),
            ));
        }
        valid_name(e).map_err(|_| {
            bad(
                "bridge.external_interfaces",
                format!("{e:?} is not an interface name"),
            )
        })?;
        if e == name {
            return Err(bad(
                "bridge.external_interfaces",
                "a bridge cannot be its own port",
            ));
        }
        if external.iter().any(|x| x == e) {
            return Err(bad(
                "bridge.external_interfaces",
                format!("{e:?} is listed twice"),
            ));
        }
        external.push(e.to_string());
    }
    for (k, needs) in [
        ("ipv4.routing", ipv4.is_some()),
        ("ipv6.routing", ipv6.is_some()),
    ] {
        if !needs && get(k).is_some() {
            return Err(bad(
                k,
                format!("needs {}", k.replace(".routing", ".address")),
            ));
        }
    }
    Ok(BridgeSpec {
        name: name.to_string(),
        ipv4,
        nat: boolean("ipv4.nat", config.get("ipv4.nat"), false)?,
        dhcp: boolean("ipv4.dhcp", config.get("ipv4.dhcp"), true)?,
        dhcp_ranges,
        dhcp_expiry,
        nat_address,
        domain,
        mtu,
        ipv6,
        nat6: boolean("ipv6.nat", config.get("ipv6.nat"), false)?,
        dhcp6: boolean("ipv6.dhcp", config.get("ipv6.dhcp"), true)?,
        firewall4: boolean("ipv4.firewall", config.get("ipv4.firewall"), true)?,
        firewall6: boolean("ipv6.firewall", config.get("ipv6.firewall"), true)?,
        routing4: boolean("ipv4.routing", config.get("ipv4.routing"), true)?,
        routing6: boolean("ipv6.routing", config.get("ipv6.routing"), true)?,
        dns_mode,
        external,
    })
}

/// The first `/24` gateway in 10.0.0.0/8, from a starting point `seed` (random, so two hosts
/// choosing at once rarely pick alike), that overlaps none of the subnets `used`: the
/// host's routes and addresses, read locally, never probed for on the wire.
pub fn choose_auto(used: &[Ipv4Cidr], seed: u16) -> Option<Ipv4Cidr> {
    (0..=u16::MAX).find_map(|i| {
        let n = seed.wrapping_add(i);
        let [b, c] = n.to_be_bytes();
        let cand = Ipv4Cidr {
            addr: Ipv4Addr::new(10, b, c, 1),
            prefix: 24,
        };
        (!used.iter().any(|u| u.overlaps(cand))).then_some(cand)
    })
}

/// A valid network name: an interface name (1 to 15 characters, letters, digits, `-`, `_`,
/// `.`, not starting with a digit or `-`), as Incus's `ValidNetworkName` and the kernel
/// require.
pub fn valid_name(n: &str) -> Result<(), NetworkError> {
    let ok = !n.is_empty()
        && n.len() <= 15
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !n.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        && n != "none";
    if ok {
        Ok(())
    } else {
        Err(NetworkError::Invalid(format!(
            "Invalid network name {n:?}: 1 to 15 letters, digits, \"-\", \"_\" or \".\", starting with a letter"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        let (a, p) = s.split_once('/').unwrap();
        Ipv4Cidr {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    fn conf(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn gateways_parse_and_refuse_what_is_no_host_address() {
        assert_eq!(
            parse_gateway("k", "10.1.2.1/24").unwrap(),
            cidr("10.1.2.1/24")
        );
        for bad in [
            "10.1.2.0/24",
            "10.1.2.255/24",
            "10.1.2.1",
            "10.1.2/24",
            "10.1.2.1/31",
            "10.1.2.1/7",
            "300.1.2.1/24",
            "127.0.0.2/8",
            "10.1.2.1/x",
            "",
        ] {
            assert!(parse_gateway("k", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lease_time_and_nat_address() {
        let base = [("ipv4.address", "10.1.2.1/24"), ("ipv4.nat", "true")];
        let with = |k: &str, v: &str| {
            let mut c = conf(&base);
            c.insert(k.into(), v.into());
            parse("br1", &c)
        };
        assert_eq!(parse("br1", &conf(&base)).unwrap().dhcp_expiry, "1h");
        for ok in ["30m", "7200", "infinite", "2d"] {
            assert_eq!(with("ipv4.dhcp.expiry", ok).unwrap().dhcp_expiry, ok);
        }
        for bad in ["soon", "0", "1y", "-5m", "1h,2h"] {
            let e = with("ipv4.dhcp.expiry", bad).unwrap_err().to_string();
            assert!(e.contains("ipv4.dhcp.expiry"), "{bad}: {e}");
        }
        let s = with("ipv4.nat.address", "192.0.2.9").unwrap();
        assert_eq!(s.nat_address, Some(Ipv4Addr::new(192, 0, 2, 9)));
        assert!(with("ipv4.nat.address", "192.0.2.300").is_err());
    }

    #[test]
    fn overlap_is_symmetric_and_prefix_aware() {
        assert!(cidr("10.0.0.1/8").overlaps(cidr("10.5.0.1/24")));
        assert!(cidr("10.5.0.1/24").overlaps(cidr("10.0.0.1/8")));
        assert!(!cidr("10.5.0.1/24").overlaps(cidr("10.5.1.1/24")));
        assert!(cidr("192.168.1.7/32").overlaps(cidr("192.168.1.1/24")));
        assert!(cidr("1.2.3.4/0").overlaps(cidr("9.9.9.9/32")));
    }

    #[test]
    fn auto_skips_used_subnets() {
        let used = [cidr("10.0.0.0/8")];
        assert_eq!(choose_auto(&used, 0), None);
        let used = [cidr("10.0.0.0/24"), cidr("10.0.1.5/16")];
        let got = choose_auto(&used, 0).unwrap();
        assert_eq!(got, cidr("10.1.0.1/24"));
        let got = choose_auto(&[cidr("10.7.7.0/24")], 0x0707).unwrap();
        assert_eq!(got, cidr("10.7.8.1/24"));
    }

    #[test]
    fn spec_defaults_and_ranges() {
        let s = parse(
            "br1",
            &conf(&[("ipv4.address", "10.123.0.1/24"), ("ipv4.nat", "true")]),
        )
        .unwrap();
        assert!(s.nat && s.dhcp);
        assert_eq!(s.domain, "incus");
        assert_eq!(
            s.ranges(),
            vec![(
                "10.123.0.2".parse().unwrap(),
                "10.123.0.254".parse().unwrap()
            )]
        );
        let s = parse(
            "br1",
            &conf(&[
                ("ipv4.address", "10.123.0.1/24"),
                ("ipv4.dhcp.ranges", "10.123.0.100-10.123.0.150"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.ranges(),
            vec![(
                "10.123.0.100".parse().unwrap(),
                "10.123.0.150".parse().unwrap()
            )]
        );
        let s = parse(
            "br1",
            &conf(&[("ipv4.address", "none"), ("ipv6.address", "none")]),
        )
        .unwrap();
        assert!(s.ipv4.is_none() && !s.wants_dnsmasq());
    }

    #[test]
    fn bad_keys_and_values_are_refused_with_the_key_named() {
        for (k, v) in [
            ("ipv4.firewall", "sometimes"),
            ("ipv4.routing", "sometimes"),
            ("ipv6.routing", "false"),
            ("dns.mode", "loud"),
            ("bridge.external_interfaces", "eth1.5/eth1/5"),
            ("bridge.external_interfaces", "br1"),
            ("bridge.external_interfaces", "eth1,eth1"),
            ("bridge.driver", "openvswitch"),
            ("bogus", "1"),
            ("ipv6.address", "fd00::/64"),
            ("ipv6.address", "fd00::1/48"),
            ("ipv6.address", "fe80::1/64"),
            ("ipv6.address", "10.0.0.1/24"),
            ("ipv6.nat", "true"),
            ("ipv4.nat", "maybe"),
            ("bridge.mtu", "9"),
            ("dns.domain", "a..b"),
            ("ipv4.dhcp.ranges", "10.123.0.9-10.123.0.2"),
            ("ipv4.dhcp.ranges", "10.9.0.2-10.9.0.3"),
        ] {
            let mut c = conf(&[("ipv4.address", "10.123.0.1/24")]);
            c.insert(k.into(), v.into());
            let e = parse("br1", &c).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }

    #[test]
    fn ipv6_gateways_and_auto() {
        let s = parse(
            "br1",
            &conf(&[
                ("ipv4.address", "none"),
                ("ipv6.address", "fd42:1:2:3::1/64"),
                ("ipv6.nat", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(s.ipv6.unwrap().to_string(), "fd42:1:2:3::1/64");
        assert!(s.nat6 && s.dhcp6 && s.wants_dnsmasq());
        let used = Ipv6Cidr {
            addr: "fd00::".parse().unwrap(),
            prefix: 8,
        };
        assert_eq!(choose_auto6(&[used], 7), None);
        let got = choose_auto6(&[], 7).unwrap();
        assert_eq!(got.prefix, 64);
        assert_eq!(got.addr.segments()[0] >> 8, 0xfd);
        assert_eq!(u128::from(got.addr) & 0xffff_ffff_ffff_ffff, 1);
        let again = choose_auto6(&[got], 7).unwrap();
        assert_ne!(again.network(), got.network());
    }

    #[test]
    fn names() {
        for ok in ["br1", "cairnbr0", "a.b_c-d", "abcdefghijklmno"] {
            valid_name(ok).unwrap();
        }
        for bad in [
            "",
            "1br",
            "-x",
            "abcdefghijklmnop",
            "a/b",
            "a b",
            "none",
            "br\n",
        ] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
    }
}
