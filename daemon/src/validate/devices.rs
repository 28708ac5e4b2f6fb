//! Device checks: names, the keys each device type takes, and what their values must be.

use super::*;

const DISK_KEYS: &[&str] = &[
    "type",
    "path",
    "pool",
    "source",
    "size",
    "readonly",
    "required",
    "boot.priority",
];
/// The keys every NIC takes; each type adds its own (Incus's, less what is not built:
/// `vlan`, `limits.*`, `ipv6.address`, routes).
const NIC_KEYS: &[&str] = &[
    "type",
    "nictype",
    "network",
    "name",
    "hwaddr",
    "mtu",
    "boot.priority",
];

fn nic_type_keys(nictype: &str) -> &'static [&'static str] {
    match nictype {
        "p2p" => &["host_name"],
        "bridged" => &["parent", "host_name", "ipv4.address"],
        "macvlan" => &["parent"],
        _ => &[],
    }
}

fn known_keys(
    dev: &str,
    d: &BTreeMap<String, String>,
    keys: &[&str],
) -> Result<(), ValidationError> {
    for k in d.keys() {
        if !keys.contains(&k.as_str()) && !k.starts_with("user.") {
            return Err(ValidationError::Device(
                dev.into(),
                format!("unknown key {k:?}"),
            ));
        }
    }
    Ok(())
}

/// Incus's `IsDeviceName` without the slash: names end up in `volatile.<device>.*` keys and
/// in interface names, where a slash has no business.
fn device_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("device names must be 1 to 63 characters long".into());
    }
    if name.starts_with('.') {
        return Err("device names must not start with \".\"".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '_' | '.'))
    {
        return Err(
            "device names may only contain ASCII letters, digits, hyphens, colons, underscores and full stops"
                .into(),
        );
    }
    Ok(())
}

/// The grammar of device keys (the same as instance keys'), and values on one line: every
/// device value that means something is rendered into the LXC config.
fn device_entry(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!("invalid key {key:?}: must be 1 to 256 bytes long"));
    }
    if !key.chars().all(key_char) {
        return Err(format!(
            "invalid key {key:?}: only ASCII letters, digits and _ . - : / are allowed"
        ));
    }
    if value.chars().any(breaks_line) {
        return Err(format!(
            "invalid value for {key:?}: must be one line without control characters"
        ));
    }
    Ok(())
}

/// `xx:xx:xx:xx:xx:xx`, hex digits: what dnsmasq's host lines and LXC take.
pub fn is_mac(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

pub fn devices(devices: &DeviceMap) -> Result<(), ValidationError> {
    for (name, d) in devices {
        device_name(name).map_err(|m| ValidationError::Device(name.clone(), m))?;
        for (k, v) in d {
            device_entry(k, v).map_err(|m| ValidationError::Device(name.clone(), m))?;
        }
        let bad = |m: &str| Err(ValidationError::Device(name.clone(), m.to_string()));
        match d.get("type").map(String::as_str) {
            Some("disk") => {
                known_keys(name, d, DISK_KEYS)?;
                let Some(path) = d.get("path") else {
                    return bad("a disk needs a path");
                };
                if !path.starts_with('/') {
                    return bad("a disk path must be absolute");
                }
                if path != "/" && d.get("source").is_none() {
                    return bad("a disk other than the root needs a source");
                }
                if let Some(src) = d.get("source") {
                    let volume = path != "/" && d.get("pool").is_some_and(|p| !p.is_empty());
                    if volume {
                        // `pool=` + `source=`: the source names a custom volume of the pool.
                        if let Err(e) = object_name(src) {
                            return bad(&format!("invalid storage volume name: {e}"));
                        }
                    } else if !src.starts_with('/') {
                        return bad("a disk source is a host path, or a custom volume with pool=");
                    }
                }
                if path != "/" && d.contains_key("size") {
                    return bad("only the root disk takes a size (a custom volume has its own)");
                }
                if let Some(r) = d.get("readonly") {
                    boolean("readonly", r)
                        .map_err(|e| ValidationError::Device(name.clone(), e.to_string()))?;
                }
            }
            Some("nic") => {
                // A NIC on a managed network is bridged (the only managed type so far).
                let nictype = match (d.get("nictype"), d.get("network")) {
                    (Some(t), _) => t.as_str(),
                    (None, Some(_)) => "bridged",
                    (None, None) => "",
                };
                // A missing or unsupported nictype is named below, before its keys.
                let extra = nic_type_keys(nictype);
                if !extra.is_empty() {
                    for k in d.keys() {
                        let known = NIC_KEYS.contains(&k.as_str())
                            || extra.contains(&k.as_str())
                            || k.starts_with("user.");
                        if !known {
                            return bad(&format!("key {k:?} does not apply to a {nictype} NIC"));
                        }
                    }
                }
                if let Some(net) = d.get("network") {
                    // As Incus: the network decides the NIC's type and its bridge.
                    for k in ["nictype", "parent"] {
                        if d.contains_key(k) {
                            return bad(&format!(
                                "Cannot use {k:?} property in conjunction with \"network\" property"
                            ));
                        }
                    }
                    if let Err(e) = crate::network::config::valid_name(net) {
                        return bad(&e.to_string());
                    }
                }
                match d.get("nictype").map(String::as_str) {
                    Some("p2p") => {}
                    Some("bridged") => {
                        if d.get("parent").is_none_or(|p| p.is_empty()) {
                            return bad("a bridged NIC needs a parent bridge");
                        }
                    }
                    Some("macvlan") => {
                        let parent = d.get("parent").map(String::as_str).unwrap_or("");
                        if parent.is_empty() {
                            return bad("a macvlan NIC needs a parent interface");
                        }
                        if parent.len() > 15 || parent.contains('/') || parent.contains(' ') {
                            return bad(&format!("parent {parent:?} is not an interface name"));
                        }
                    }
                    Some(other) => return bad(&format!("unsupported nictype {other:?}")),
                    None if d.contains_key("network") => {}
                    None => return bad("a NIC needs a nictype"),
                }
                if let Some(n) = d.get("name") {
                    if n.is_empty() || n.len() > 15 || n.contains('/') || n.contains(' ') {
                        return bad("invalid interface name");
                    }
                }
                if let Some(mac) = d.get("hwaddr").filter(|m| !m.is_empty()) {
                    if !is_mac(mac) {
                        return bad(&format!("hwaddr {mac:?} is not a MAC address"));
                    }
                }
                if let Some(v) = d.get("ipv4.address").filter(|v| !v.is_empty()) {
                    if v.parse::<std::net::Ipv4Addr>().is_err() {
                        return bad(&format!("ipv4.address {v:?} is not an IPv4 address"));
                    }
                }
                if let Some(m) = d.get("mtu") {
                    uint("mtu", m)
                        .map_err(|e| ValidationError::Device(name.clone(), e.to_string()))?;
                }
            }
            Some("none") => {}
            Some(other) => return bad(&format!("unsupported device type {other:?}")),
            None => return bad("missing device type"),
        }
    }
    Ok(())
}
