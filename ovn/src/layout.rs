//! An OVN network's northbound rows, named as Incus names them (`<prefix>-lr`,
//! `<prefix>-ls-int`, `<prefix>-lr-lrp-int`, …, the prefix being `cairn-net-<name>`), so an
//! operator who knows Incus's layout reads `ovn-nbctl show` the same way:
//!
//! ```text
//! <prefix>-ls-int ── <prefix>-ls-int-lsp-router ── <prefix>-lr-lrp-int ┐
//!   (instance ports, DHCPv4 from OVN, IPAM by subnet)                 <prefix>-lr  (SNAT, default route)
//! <prefix>-ls-ext ── <prefix>-ls-ext-lsp-router ── <prefix>-lr-lrp-ext ┘
//!   └── <prefix>-ls-ext-lsp-provider (localnet: the uplink's physical network)
//! ```
//!
//! Every function converges: run twice it changes nothing (`--may-exist`, `--if-exists`).

use std::net::Ipv4Addr;

use crate::{Northbound, OvnError};

/// The uplink side of a network: its router's address on the uplink and where to send
/// what leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkSpec {
    /// The OVS bridge mapping name of the uplink (`ovn-bridge-mappings` on each chassis).
    pub physnet: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// Chassis that may host the router's external port, with their priorities.
    pub gateway_chassis: Vec<(String, u16)>,
    /// Whether what leaves the network is SNATed to `address` (Incus's `ipv4.nat`).
    pub snat: bool,
}

/// One OVN network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSpec {
    /// `cairn-net-<name>`: every row of the network is named from it.
    pub prefix: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: String,
    pub mtu: u32,
    pub dns_domain: String,
    pub dns_servers: Vec<Ipv4Addr>,
    pub uplink: Option<UplinkSpec>,
}

/// An instance's NIC on a network: the switch port `<prefix>-instance-<uuid>-<device>`.
#[derive(Debug, Clone, PartialEq)]
pub struct PortSpec {
    pub instance_uuid: String,
    pub device: String,
    pub mac: String,
    /// A static address (a reservation); `None`: OVN's IPAM picks one from the subnet.
    pub address: Option<Ipv4Addr>,
    /// The instance's name, for DNS under the network's domain.
    pub hostname: String,
}

impl NetworkSpec {
    pub fn router(&self) -> String {
        format!("{}-lr", self.prefix)
    }
    pub fn int_switch(&self) -> String {
        format!("{}-ls-int", self.prefix)
    }
    pub fn ext_switch(&self) -> String {
        format!("{}-ls-ext", self.prefix)
    }
    /// `<prefix>-lr-lrp-int` or `-ext`: the router's port on either switch.
    pub fn router_port(&self, side: &str) -> String {
        format!("{}-lrp-{side}", self.router())
    }
    fn switch_router_port(&self, switch: &str) -> String {
        format!("{switch}-lsp-router")
    }
    pub fn port_name(&self, p: &PortSpec) -> String {
        format!("{}-instance-{}-{}", self.prefix, p.instance_uuid, p.device)
    }
    fn subnet(&self) -> String {
        format!(
            "{}/{}",
            network_of(self.gateway, self.prefix_len),
            self.prefix_len
        )
    }

    fn check(&self) -> Result<(), OvnError> {
        let bad = |m: String| Err(OvnError::Invalid(m));
        if !valid_name(&self.prefix) {
            return bad(format!("network prefix {:?} is not a name", self.prefix));
        }
        if !(8..=30).contains(&self.prefix_len) {
            return bad(format!(
                "an OVN subnet needs a /8 to /30, not /{}",
                self.prefix_len
            ));
        }
        if !is_mac(&self.mac) {
            return bad(format!("router MAC {:?}", self.mac));
        }
        if let Some(u) = &self.uplink {
            if !is_mac(&u.mac) || !valid_name(&u.physnet) || !(1..=32).contains(&u.prefix_len) {
                return bad(format!("uplink {u:?}"));
            }
        }
        Ok(())
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

fn network_of(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    Ipv4Addr::from(u32::from(addr) & mask)
}

fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A router port and the switch port that patches it into `switch`.
fn patch(
    cmds: &mut Vec<Vec<String>>,
    router: &str,
    lrp: &str,
    mac: &str,
    cidr: &str,
    switch: &str,
    lsp: &str,
) {
    cmds.push(cmd(&["--may-exist", "lrp-add", router, lrp, mac, cidr]));
    cmds.push(cmd(&["--may-exist", "lsp-add", switch, lsp]));
    cmds.push(cmd(&["lsp-set-type", lsp, "router"]));
    cmds.push(cmd(&["lsp-set-addresses", lsp, "router"]));
    cmds.push(cmd(&[
        "lsp-set-options",
        lsp,
        &format!("router-port={lrp}"),
    ]));
}

/// Makes (or converges) the network's router, switches, patch ports, NAT, route and DHCP
/// options, in two transactions (the DHCP options row is found or made by the second).
pub fn create(nb: &Northbound, n: &NetworkSpec) -> Result<(), OvnError> {
    n.check()?;
    let (lr, ls) = (n.router(), n.int_switch());
    let gw_cidr = format!("{}/{}", n.gateway, n.prefix_len);
    let mut cmds = vec![
        cmd(&["--may-exist", "lr-add", &lr]),
        cmd(&["--may-exist", "ls-add", &ls]),
        cmd(&[
            "set",
            "logical_switch",
            &ls,
            &format!("other_config:subnet={}", n.subnet()),
            &format!("other_config:exclude_ips={}", n.gateway),
            &format!("external_ids:cairn-network={}", n.prefix),
        ]),
    ];
    patch(
        &mut cmds,
        &lr,
        &n.router_port("int"),
        &n.mac,
        &gw_cidr,
        &ls,
        &n.switch_router_port(&ls),
    );
    if let Some(u) = &n.uplink {
        let ext = n.ext_switch();
        let lrp_ext = n.router_port("ext");
        cmds.push(cmd(&["--may-exist", "ls-add", &ext]));
        patch(
            &mut cmds,
            &lr,
            &lrp_ext,
            &u.mac,
            &format!("{}/{}", u.address, u.prefix_len),
            &ext,
            &n.switch_router_port(&ext),
        );
        let provider = format!("{ext}-lsp-provider");
        cmds.push(cmd(&["--may-exist", "lsp-add", &ext, &provider]));
        cmds.push(cmd(&["lsp-set-type", &provider, "localnet"]));
        cmds.push(cmd(&["lsp-set-addresses", &provider, "unknown"]));
        cmds.push(cmd(&[
            "lsp-set-options",
            &provider,
            &format!("network_name={}", u.physnet),
        ]));
        for (chassis, prio) in &u.gateway_chassis {
            cmds.push(cmd(&[
                "lrp-set-gateway-chassis",
                &lrp_ext,
                chassis,
                &prio.to_string(),
            ]));
        }
        if u.snat {
            cmds.push(cmd(&[
                "--may-exist",
                "lr-nat-add",
                &lr,
                "snat",
                &u.address.to_string(),
                &n.subnet(),
            ]));
        } else {
            cmds.push(cmd(&[
                "--if-exists",
                "lr-nat-del",
                &lr,
                "snat",
                &n.subnet(),
            ]));
        }
        cmds.push(cmd(&[
            "--may-exist",
            "lr-route-add",
            &lr,
            "0.0.0.0/0",
            &u.gateway.to_string(),
        ]));
    }
    nb.run(&cmds)?;

    let dhcp = dhcp_options(nb, n)?;
    let mut opts = vec![
        "dhcp-options-set-options".to_string(),
        dhcp,
        "lease_time=3600".into(),
        format!("router={}", n.gateway),
        format!("server_id={}", n.gateway),
        format!("server_mac={}", n.mac),
        format!("mtu={}", n.mtu),
        format!("domain_name=\"{}\"", n.dns_domain),
    ];
    if !n.dns_servers.is_empty() {
        let list: Vec<String> = n.dns_servers.iter().map(|a| a.to_string()).collect();
        opts.push(format!("dns_server={{{}}}", list.join(",")));
    }
    nb.run(&[opts])?;
    Ok(())
}

/// The UUID of the network's DHCPv4 options row, made if missing.
fn dhcp_options(nb: &Northbound, n: &NetworkSpec) -> Result<String, OvnError> {
    let key = format!("external_ids:cairn-network={}", n.prefix);
    let found = nb.one(&["--bare", "--columns=_uuid", "find", "dhcp_options", &key])?;
    if let Some(uuid) = found.split_whitespace().next() {
        return Ok(uuid.to_string());
    }
    // dhcp-options-create takes its external_ids as bare key=value pairs.
    let id = format!("cairn-network={}", n.prefix);
    nb.one(&["dhcp-options-create", &n.subnet(), &id])?;
    let found = nb.one(&["--bare", "--columns=_uuid", "find", "dhcp_options", &key])?;
    found
        .split_whitespace()
        .next()
        .map(String::from)
        .ok_or_else(|| OvnError::Invalid(format!("no DHCP options row for {}", n.prefix)))
}

/// Removes everything [`create`] and [`add_port`] made for the network.
pub fn delete(nb: &Northbound, n: &NetworkSpec) -> Result<(), OvnError> {
    n.check()?;
    let key = format!("external_ids:cairn-network={}", n.prefix);
    let rows = nb.one(&["--bare", "--columns=_uuid", "find", "dhcp_options", &key])?;
    let mut cmds = vec![
        cmd(&["--if-exists", "lr-del", &n.router()]),
        cmd(&["--if-exists", "ls-del", &n.int_switch()]),
        cmd(&["--if-exists", "ls-del", &n.ext_switch()]),
    ];
    for uuid in rows.split_whitespace() {
        cmds.push(cmd(&["dhcp-options-del", uuid]));
    }
    let dns = nb.one(&["--bare", "--columns=_uuid", "find", "dns", &key])?;
    for uuid in dns.split_whitespace() {
        cmds.push(cmd(&["destroy", "dns", uuid]));
    }
    nb.run(&cmds).map(drop)
}

/// The UUID of the network's DNS row (attached to its internal switch), made if missing.
fn dns_row(nb: &Northbound, n: &NetworkSpec) -> Result<String, OvnError> {
    let key = format!("external_ids:cairn-network={}", n.prefix);
    let find = || -> Result<Option<String>, OvnError> {
        let found = nb.one(&["--bare", "--columns=_uuid", "find", "dns", &key])?;
        Ok(found.split_whitespace().next().map(String::from))
    };
    if let Some(u) = find()? {
        return Ok(u);
    }
    nb.run(&[
        cmd(&["--id=@d", "create", "dns", &key]),
        cmd(&[
            "add",
            "logical_switch",
            &n.int_switch(),
            "dns_records",
            "@d",
        ]),
    ])?;
    find()?.ok_or_else(|| OvnError::Invalid(format!("no DNS row for {}", n.prefix)))
}

/// Makes `hostname.<dns domain>` resolve to `ip` for the network's instances (OVN answers
/// it from the DNS row), or with `None` forgets the name.
pub fn set_dns_record(
    nb: &Northbound,
    n: &NetworkSpec,
    hostname: &str,
    ip: Option<Ipv4Addr>,
) -> Result<(), OvnError> {
    n.check()?;
    if !valid_name(hostname) {
        return Err(OvnError::Invalid(format!("host name {hostname:?}")));
    }
    let fqdn = format!("{hostname}.{}", n.dns_domain).to_lowercase();
    let row = dns_row(nb, n)?;
    match ip {
        Some(ip) => nb.one(&["set", "dns", &row, &format!("records:\"{fqdn}\"=\"{ip}\"")]),
        None => nb.one(&["remove", "dns", &row, "records", &format!("\"{fqdn}\"")]),
    }
    .map(drop)
}

/// Adds (or converges) an instance's port: its MAC with a static or dynamic address, and
/// the network's DHCP options.
pub fn add_port(nb: &Northbound, n: &NetworkSpec, p: &PortSpec) -> Result<String, OvnError> {
    n.check()?;
    if !is_mac(&p.mac) || !valid_name(&p.device) || !valid_name(&p.instance_uuid) {
        return Err(OvnError::Invalid(format!("port {p:?}")));
    }
    let name = n.port_name(p);
    let addresses = match p.address {
        Some(a) => format!("{} {a}", p.mac),
        None => format!("{} dynamic", p.mac),
    };
    let dhcp = dhcp_options(nb, n)?;
    nb.run(&[
        cmd(&["--may-exist", "lsp-add", &n.int_switch(), &name]),
        cmd(&["lsp-set-addresses", &name, &addresses]),
        cmd(&["lsp-set-dhcpv4-options", &name, &dhcp]),
        cmd(&[
            "set",
            "logical_switch_port",
            &name,
            &format!("external_ids:cairn-hostname={}", p.hostname),
            &format!("external_ids:cairn-network={}", n.prefix),
        ]),
    ])?;
    Ok(name)
}

/// The address a port has: its static one, or the one OVN's IPAM gave it (empty until
/// ovn-northd has seen the port).
pub fn port_address(nb: &Northbound, port: &str) -> Result<Option<Ipv4Addr>, OvnError> {
    for column in ["dynamic_addresses", "addresses"] {
        let v = nb.one(&["--bare", "get", "logical_switch_port", port, column])?;
        let ip = v
            .split_whitespace()
            .filter_map(|w| {
                w.trim_matches(|c| matches!(c, '"' | '[' | ']' | ','))
                    .parse::<Ipv4Addr>()
                    .ok()
            })
            .next();
        if ip.is_some() {
            return Ok(ip);
        }
    }
    Ok(None)
}

pub fn remove_port(nb: &Northbound, port: &str) -> Result<(), OvnError> {
    nb.one(&["--if-exists", "lsp-del", port]).map(drop)
}

/// An instance port as the northbound database has it.
#[derive(Debug, Clone, PartialEq)]
pub struct PortInfo {
    pub name: String,
    /// The network's prefix (`external_ids:cairn-network`).
    pub network: String,
    pub hostname: String,
    pub mac: String,
    /// Its address: the static one, or the one OVN's IPAM gave it.
    pub address: Option<Ipv4Addr>,
    pub dynamic: bool,
}

/// The instance ports of `network` (a prefix), or of every network with `None`; only those
/// of instance `hostname` when given.
pub fn ports(
    nb: &Northbound,
    network: Option<&str>,
    hostname: Option<&str>,
) -> Result<Vec<PortInfo>, OvnError> {
    let mut filter = vec![
        "--format=csv".to_string(),
        "--data=bare".into(),
        "--no-headings".into(),
        "--columns=name,addresses,dynamic_addresses,external_ids".into(),
        "find".into(),
        "logical_switch_port".into(),
    ];
    if let Some(n) = network {
        filter.push(format!("external_ids:cairn-network={n}"));
    }
    if let Some(h) = hostname {
        filter.push(format!("external_ids:cairn-hostname={h}"));
    }
    let out = nb.run(&[filter])?;
    Ok(out
        .lines()
        .filter_map(parse_port_row)
        .filter(|p| !p.hostname.is_empty())
        .collect())
}

/// One `--format=csv --data=bare` row: `name,addresses,dynamic_addresses,external_ids`
/// (external_ids as space-separated `k=v`).
fn parse_port_row(line: &str) -> Option<PortInfo> {
    // CSV quotes a field with spaces; none of these fields holds a comma or a quote.
    let cols: Vec<&str> = line.splitn(4, ',').map(|c| c.trim_matches('"')).collect();
    let [name, addresses, dynamic, ids] = cols.as_slice() else {
        return None;
    };
    let id = |k: &str| {
        ids.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    let (hostname, network) = (id("cairn-hostname="), id("cairn-network="));
    let mut words = addresses.split_whitespace();
    let mac = words.next().unwrap_or_default().to_string();
    let fixed = words.find_map(|w| w.parse::<Ipv4Addr>().ok());
    let dynamic_ip = dynamic
        .split_whitespace()
        .find_map(|w| w.parse::<Ipv4Addr>().ok());
    Some(PortInfo {
        name: name.to_string(),
        network,
        hostname,
        mac,
        address: fixed.or(dynamic_ip),
        dynamic: fixed.is_none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NetworkSpec {
        NetworkSpec {
            prefix: "cairn-net7".into(),
            gateway: "10.50.0.1".parse().unwrap(),
            prefix_len: 24,
            mac: "10:66:6a:00:00:07".into(),
            mtu: 1442,
            dns_domain: "incus".into(),
            dns_servers: vec![],
            uplink: None,
        }
    }

    #[test]
    fn port_rows_parse() {
        let p = parse_port_row(
            "cairn-net-a-instance-u1-eth0,10:66:6a:00:00:01 dynamic,10:66:6a:00:00:01 10.50.0.2,cairn-hostname=c1 cairn-network=cairn-net-a",
        )
        .unwrap();
        assert_eq!(p.hostname, "c1");
        assert_eq!(p.network, "cairn-net-a");
        assert_eq!(p.address, Some("10.50.0.2".parse().unwrap()));
        assert!(p.dynamic);
        let p = parse_port_row("p,10:66:6a:00:00:02 10.50.0.9,,cairn-hostname=c2").unwrap();
        assert_eq!(p.address, Some("10.50.0.9".parse().unwrap()));
        assert!(!p.dynamic);
    }

    #[test]
    fn names_follow_incus() {
        let n = spec();
        assert_eq!(n.router(), "cairn-net7-lr");
        assert_eq!(n.int_switch(), "cairn-net7-ls-int");
        assert_eq!(n.router_port("int"), "cairn-net7-lr-lrp-int");
        assert_eq!(
            n.switch_router_port(&n.int_switch()),
            "cairn-net7-ls-int-lsp-router"
        );
        assert_eq!(n.subnet(), "10.50.0.0/24");
    }

    #[test]
    fn bad_values_are_refused_before_ovn_sees_them() {
        let mut n = spec();
        n.mac = "nope".into();
        assert!(n.check().is_err());
        let mut n = spec();
        n.prefix = "a b".into();
        assert!(n.check().is_err());
        let mut n = spec();
        n.prefix_len = 31;
        assert!(n.check().is_err());
    }
}
