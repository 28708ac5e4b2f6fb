//! This host's Open vSwitch, through `ovs-vsctl` (the one runner): the integration bridge's
//! instance ports (`external_ids:iface-id` is what ovn-controller binds to a logical switch
//! port), the uplink bridges OVN's localnet ports reach the physical network through, and
//! `ovn-bridge-mappings`. Which OVS database: `ovs-vsctl`'s own default, so `OVS_RUNDIR`
//! in cairnd's environment moves it (the host tests run a private OVS that way).

use super::NetworkError;
use crate::runner;

fn vsctl(args: &[&str]) -> Result<String, NetworkError> {
    runner::run("ovs-vsctl", args).map_err(|e| NetworkError::Io(format!("Open vSwitch: {e}")))
}

/// Whether this host runs Open vSwitch where `ovs-vsctl` looks (answers within 2 s).
pub fn available() -> bool {
    runner::run("ovs-vsctl", ["--timeout=2", "show"]).is_ok()
}

/// One of this host's OVS `external_ids`, unquoted; `None` when unset.
fn external_id(key: &str) -> Result<Option<String>, NetworkError> {
    let v = vsctl(&[
        "--timeout=5",
        "--if-exists",
        "get",
        "open_vswitch",
        ".",
        &format!("external_ids:{key}"),
    ])?;
    let v = v.trim().trim_matches('"');
    Ok((!v.is_empty()).then(|| v.to_string()))
}

/// The chassis name ovn-controller registers this host under (`external_ids:system-id`).
pub fn system_id() -> Result<Option<String>, NetworkError> {
    external_id("system-id")
}

/// The southbound database ovn-controller on this host reaches (`external_ids:ovn-remote`).
pub fn ovn_remote() -> Result<Option<String>, NetworkError> {
    external_id("ovn-remote")
}

/// Makes this host chassis `name` of the OVN whose southbound database is `sb`, its
/// Geneve tunnels on `encap_ip` (other external ids, like a test's datapath type, kept).
pub fn set_chassis(name: &str, sb: &str, encap_ip: &str) -> Result<(), NetworkError> {
    vsctl(&[
        "--timeout=5",
        "set",
        "open_vswitch",
        ".",
        &format!("external_ids:system-id={name}"),
        &format!("external_ids:hostname={name}"),
        &format!("external_ids:ovn-remote=\"{sb}\""),
        "external_ids:ovn-encap-type=geneve",
        &format!("external_ids:ovn-encap-ip={encap_ip}"),
    ])
    .map(drop)
}

/// The names of the ports whose interface is bound to `iface_id`.
fn ports_bound_to(iface_id: &str) -> Result<Vec<String>, NetworkError> {
    let out = vsctl(&[
        "--timeout=5",
        "--bare",
        "--columns=name",
        "find",
        "interface",
        &format!("external_ids:iface-id={iface_id}"),
    ])?;
    Ok(out.split_whitespace().map(String::from).collect())
}

/// Makes `port` (a veth's host end, which may not exist yet: OVS takes it once it appears)
/// the one port of `bridge` bound to logical port `iface_id`. Ports a previous start left
/// bound to it go in the same transaction.
pub fn bind_port(bridge: &str, port: &str, iface_id: &str) -> Result<(), NetworkError> {
    let stale = ports_bound_to(iface_id)?;
    let mut args: Vec<String> = vec!["--timeout=5".into()];
    for s in stale.iter().filter(|s| s.as_str() != port) {
        args.extend([
            "--if-exists".into(),
            "del-port".into(),
            s.clone(),
            "--".into(),
        ]);
    }
    args.extend([
        "--may-exist".into(),
        "add-port".into(),
        bridge.into(),
        port.into(),
        "--".into(),
        "set".into(),
        "interface".into(),
        port.into(),
        format!("external_ids:iface-id={iface_id}"),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    vsctl(&refs).map(drop)
}

/// Removes every port bound to `iface_id` (the NIC is gone or stopped).
pub fn unbind(iface_id: &str) -> Result<(), NetworkError> {
    for p in ports_bound_to(iface_id)? {
        vsctl(&["--timeout=5", "--if-exists", "del-port", &p])?;
    }
    Ok(())
}

/// An OVS bridge `bridge` with `port` (a host interface) on it, and `physnet` mapped to it
/// in `ovn-bridge-mappings` (other mappings kept). Converges.
/// The bridge has the integration bridge's datapath type (`netdev` for OVS's userspace
/// datapath, as the host tests run it; the kernel's otherwise): patch ports join only
/// bridges of one datapath.
pub fn connect_uplink(bridge: &str, port: &str, physnet: &str) -> Result<(), NetworkError> {
    let dp = integration_datapath()?;
    vsctl(&[
        "--timeout=5",
        "--may-exist",
        "add-br",
        bridge,
        "--",
        "set",
        "bridge",
        bridge,
        &format!("datapath_type={dp}"),
        "--",
        "--may-exist",
        "add-port",
        bridge,
        port,
    ])?;
    let mut maps = mappings()?;
    maps.retain(|(p, _)| p != physnet);
    maps.push((physnet.to_string(), bridge.to_string()));
    set_mappings(&maps)
}

/// The integration bridge's datapath type: what ovn-controller makes it with
/// (`external_ids:ovn-bridge-datapath-type`), since at a first boot the uplink is
/// connected before ovn-controller made the bridge (reading the bridge alone gave the
/// kernel's type then, and a localnet patch port that never carried a packet); else the
/// bridge's own; else the kernel's.
fn integration_datapath() -> Result<String, NetworkError> {
    if let Some(dp) = external_id("ovn-bridge-datapath-type")? {
        return Ok(dp);
    }
    let dp = vsctl(&[
        "--timeout=5",
        "--if-exists",
        "get",
        "bridge",
        super::ovn::INTEGRATION_BRIDGE,
        "datapath_type",
    ])?;
    let dp = dp.trim().trim_matches('"');
    Ok(if dp.is_empty() { "system" } else { dp }.to_string())
}

/// Undoes [`connect_uplink`]: the mapping and the bridge (with its ports) go.
pub fn disconnect_uplink(bridge: &str, physnet: &str) -> Result<(), NetworkError> {
    let mut maps = mappings()?;
    maps.retain(|(p, _)| p != physnet);
    set_mappings(&maps)?;
    vsctl(&["--timeout=5", "--if-exists", "del-br", bridge]).map(drop)
}

fn mappings() -> Result<Vec<(String, String)>, NetworkError> {
    Ok(parse_mappings(
        &external_id("ovn-bridge-mappings")?.unwrap_or_default(),
    ))
}

fn parse_mappings(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|m| m.split_once(':'))
        .map(|(p, b)| (p.trim().to_string(), b.trim().to_string()))
        .filter(|(p, b)| !p.is_empty() && !b.is_empty())
        .collect()
}

fn set_mappings(maps: &[(String, String)]) -> Result<(), NetworkError> {
    if maps.is_empty() {
        return vsctl(&[
            "--timeout=5",
            "remove",
            "open_vswitch",
            ".",
            "external_ids",
            "ovn-bridge-mappings",
        ])
        .map(drop);
    }
    let joined: Vec<String> = maps.iter().map(|(p, b)| format!("{p}:{b}")).collect();
    vsctl(&[
        "--timeout=5",
        "set",
        "open_vswitch",
        ".",
        &format!("external_ids:ovn-bridge-mappings=\"{}\"", joined.join(",")),
    ])
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_parse() {
        assert_eq!(
            parse_mappings("UPLINK:cairnovn-a, phys2:br-x"),
            vec![
                ("UPLINK".to_string(), "cairnovn-a".to_string()),
                ("phys2".to_string(), "br-x".to_string())
            ]
        );
        assert!(parse_mappings("").is_empty());
        assert!(parse_mappings("nonsense").is_empty());
    }
}
