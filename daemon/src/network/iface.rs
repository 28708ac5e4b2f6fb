//! The state of one host interface, measured: its addresses over rtnetlink, its counters,
//! MTU, MAC and flags from sysfs. What `GET /1.0/networks/{name}/state` shows for a managed
//! bridge and for any other interface of the host alike, as Incus does.

use std::path::Path;

use super::{netlink, Counters, NetworkError, NetworkState, StateAddress};

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const IFF_POINTOPOINT: u32 = 0x10;

fn read_sys(name: &str, file: &str) -> String {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join(file))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Incus's state `type`: from the interface's flags.
fn kind(flags: u32) -> &'static str {
    if flags & IFF_LOOPBACK != 0 {
        "loopback"
    } else if flags & IFF_POINTOPOINT != 0 {
        "point-to-point"
    } else {
        "broadcast"
    }
}

/// The state of interface `name` of the calling thread's network namespace.
pub fn state(name: &str) -> Result<NetworkState, NetworkError> {
    let io = |e: std::io::Error| NetworkError::Io(format!("reading interface {name}: {e}"));
    let index = netlink::index(name).map_err(io)?;
    let addresses = netlink::addresses()
        .map_err(io)?
        .into_iter()
        .filter(|a| a.index == index)
        .map(|a| StateAddress::from(&a))
        .collect();
    let stat = |f: &str| {
        read_sys(name, &format!("statistics/{f}"))
            .parse()
            .unwrap_or(0)
    };
    let flags =
        u32::from_str_radix(read_sys(name, "flags").trim_start_matches("0x"), 16).unwrap_or(0);
    Ok(NetworkState {
        addresses,
        counters: Some(Counters {
            bytes_received: stat("rx_bytes"),
            bytes_sent: stat("tx_bytes"),
            packets_received: stat("rx_packets"),
            packets_sent: stat("tx_packets"),
        }),
        hwaddr: read_sys(name, "address"),
        mtu: read_sys(name, "mtu").parse().unwrap_or(0),
        state: if flags & IFF_UP != 0 { "up" } else { "down" }.into(),
        kind: kind(flags).into(),
        dnsmasq_pid: None,
        ovn: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_measured() {
        let s = state("lo").unwrap();
        assert_eq!(s.kind, "loopback");
        assert!(s.mtu > 0);
        assert_eq!(kind(0x1003), "broadcast");
        assert_eq!(kind(0x91), "point-to-point");
    }

    #[test]
    fn a_missing_interface_is_an_error() {
        assert!(state("nosuch-if0").is_err());
    }
}
