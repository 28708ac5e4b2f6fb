//! NAT and forwarding through nftables, one table of Cairn's own per network
//! (`inet cairn_<name>`): applied with one `nft -f` (a transaction: the whole table or
//! nothing), removed by deleting that table, and never touching any other table.

use super::config::BridgeSpec;
use super::NetworkError;
use crate::runner;

pub fn table_name(network: &str) -> String {
    // nft identifiers allow letters, digits, `_` and `.` but not `-`.
    format!("cairn_{}", network.replace('-', "_"))
}

/// The ruleset that (re)defines the network's table. Declaring the table then deleting it
/// first makes the script work whether the table exists or not, in the same transaction.
pub fn render(spec: &BridgeSpec) -> String {
    let t = table_name(&spec.name);
    let br = &spec.name;
    let mut s = format!("table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{\n");
    // Accept what our dnsmasq serves, and forwarding to and from the bridge, per family
    // as `ipv4.firewall`/`ipv6.firewall` ask (both default on). Base chains in other
    // tables still get their say: an accept here is not final for them.
    let mut input = String::new();
    let mut forward = String::new();
    for (on, routed, fam, udp, extra) in [
        (spec.firewall4, spec.routing4, "ipv4", "53, 67", ""),
        (
            spec.firewall6 && spec.ipv6.is_some(),
            spec.routing6,
            "ipv6",
            "53, 547",
            "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept",
        ),
    ] {
        if !on {
            continue;
        }
        input.push_str(&format!(
            "    iifname \"{br}\" meta nfproto {fam} udp dport {{ {udp} }} accept\n    \
             iifname \"{br}\" meta nfproto {fam} tcp dport 53 accept\n"
        ));
        if !extra.is_empty() {
            input.push_str(&format!("    iifname \"{br}\" {extra}\n"));
        }
        // `ipv4.routing=false`: the instances reach the host, nothing beyond it (the
        // ports of the bridge still talk to each other: bridged, not forwarded).
        let verdict = if routed { "accept" } else { "reject" };
        forward.push_str(&format!(
            "    iifname \"{br}\" meta nfproto {fam} {verdict}\n    oifname \"{br}\" meta nfproto {fam} {verdict}\n"
        ));
    }
    if !input.is_empty() {
        s.push_str(&format!(
            "  chain input {{\n    type filter hook input priority filter; policy accept;\n{input}  }}\n"
        ));
        s.push_str(&format!(
            "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n{forward}  }}\n"
        ));
    }
    let mut nat = String::new();
    if let (true, Some(c)) = (spec.nat, spec.ipv4) {
        let net = format!("{}/{}", c.network(), c.prefix);
        let action = match spec.nat_address {
            Some(a) => format!("snat to {a}"),
            None => "masquerade".into(),
        };
        nat.push_str(&format!("    ip saddr {net} ip daddr != {net} {action}\n"));
    }
    if let (true, Some(c)) = (spec.nat6, spec.ipv6) {
        let net = format!("{}/{}", c.network(), c.prefix);
        nat.push_str(&format!(
            "    ip6 saddr {net} ip6 daddr != {net} masquerade\n"
        ));
    }
    if !nat.is_empty() {
        s.push_str(&format!(
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{nat}  }}\n"
        ));
    }
    s.push_str("}\n");
    s
}

pub fn apply(spec: &BridgeSpec) -> Result<(), NetworkError> {
    let path = std::env::temp_dir().join(format!(
        "cairn-nft-{}-{}.nft",
        spec.name,
        std::process::id()
    ));
    std::fs::write(&path, render(spec))
        .map_err(|e| NetworkError::Io(format!("writing {}: {e}", path.display())))?;
    let r = runner::run("nft", [std::ffi::OsStr::new("-f"), path.as_os_str()]);
    let _ = std::fs::remove_file(&path);
    r.map(drop).map_err(|e| {
        NetworkError::Firewall(format!("applying table {}: {e}", table_name(&spec.name)))
    })
}

/// Deletes the network's table; a table that is not there is not an error.
pub fn remove(network: &str) -> Result<(), NetworkError> {
    let t = table_name(network);
    let script = format!("table inet {t} {{}}\ndelete table inet {t}\n");
    let path = std::env::temp_dir().join(format!(
        "cairn-nft-del-{network}-{}.nft",
        std::process::id()
    ));
    std::fs::write(&path, script)
        .map_err(|e| NetworkError::Io(format!("writing {}: {e}", path.display())))?;
    let r = runner::run("nft", [std::ffi::OsStr::new("-f"), path.as_os_str()]);
    let _ = std::fs::remove_file(&path);
    r.map(drop)
        .map_err(|e| NetworkError::Firewall(format!("deleting table {t}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::config::Ipv4Cidr;
    use std::net::Ipv4Addr;

    fn spec(nat: bool) -> BridgeSpec {
        BridgeSpec {
            name: "br-1".into(),
            ipv4: Some(Ipv4Cidr {
                addr: Ipv4Addr::new(10, 123, 0, 1),
                prefix: 24,
            }),
            nat,
            dhcp: true,
            dhcp_ranges: vec![],
            dhcp_expiry: "1h".into(),
            nat_address: None,
            domain: "incus".into(),
            mtu: None,
            ipv6: Some(crate::network::config::Ipv6Cidr {
                addr: "fd42:1:2:3::1".parse().unwrap(),
                prefix: 64,
            }),
            nat6: nat,
            dhcp6: true,
            firewall4: true,
            firewall6: true,
            routing4: true,
            routing6: true,
            dns_mode: crate::network::config::DnsMode::Managed,
            external: vec![],
        }
    }

    #[test]
    fn ruleset_is_one_table_of_our_own_redefined_atomically() {
        let r = render(&spec(true));
        assert!(
            r.starts_with("table inet cairn_br_1 {}\ndelete table inet cairn_br_1\n"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr 10.123.0.0/24 ip daddr != 10.123.0.0/24 masquerade"),
            "{r}"
        );
        assert!(
            r.contains("iifname \"br-1\" meta nfproto ipv4 accept"),
            "{r}"
        );
        assert!(
            r.contains("iifname \"br-1\" meta nfproto ipv6 accept"),
            "{r}"
        );
        let mut snat = spec(true);
        snat.nat_address = Some(Ipv4Addr::new(192, 0, 2, 9));
        let r3 = render(&snat);
        assert!(
            r3.contains("ip daddr != 10.123.0.0/24 snat to 192.0.2.9")
                && r3.matches("masquerade").count() == 1,
            "{r3}"
        );
        let mut unrouted = spec(true);
        unrouted.routing4 = false;
        let r4 = render(&unrouted);
        assert!(
            r4.contains("iifname \"br-1\" meta nfproto ipv4 reject")
                && r4.contains("oifname \"br-1\" meta nfproto ipv6 accept"),
            "{r4}"
        );
        let mut off = spec(true);
        off.firewall4 = false;
        off.firewall6 = false;
        let r2 = render(&off);
        assert!(
            !r2.contains("chain input") && r2.contains("masquerade"),
            "{r2}"
        );
        // Nothing but our table is named.
        let tables: Vec<&str> = r.lines().filter(|l| l.contains("table ")).collect();
        assert!(
            tables.iter().all(|l| l.contains("inet cairn_br_1")),
            "{tables:?}"
        );
        assert!(
            r.contains("ip6 saddr fd42:1:2:3::/64 ip6 daddr != fd42:1:2:3::/64 masquerade"),
            "{r}"
        );
        assert!(!render(&spec(false)).contains("masquerade"));
    }
}
