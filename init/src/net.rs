//! Networking at boot: loopback, and each NIC the seed names (DHCP through cairn-init's
//! own client, `dhcp`, or static addresses set through rtnetlink). NICs are matched by MAC, then by
//! name, then in order among the ethernet NICs no other entry matched.

use crate::{info, netlink};
use cairn_seed::{Cidr, Interface, Seed};

/// An ethernet NIC found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: String,
}

/// Physical (device-backed) ethernet NICs, sorted by name.
pub fn nics() -> Vec<Nic> {
    let mut v: Vec<Nic> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .filter(|e| std::fs::read_to_string(e.path().join("type")).is_ok_and(|t| t.trim() == "1"))
        .map(|e| Nic {
            name: e.file_name().to_string_lossy().into_owned(),
            mac: std::fs::read_to_string(e.path().join("address"))
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Pairs each seed interface with a NIC.
pub fn assign<'a>(wanted: &'a [Interface], nics: &[Nic]) -> Vec<(&'a Interface, Nic)> {
    let mut taken = vec![false; nics.len()];
    let mut out: Vec<Option<Nic>> = vec![None; wanted.len()];
    for (i, w) in wanted.iter().enumerate() {
        let hit = nics.iter().enumerate().position(|(j, n)| {
            !taken[j]
                && (w.mac.as_deref().map(str::to_ascii_lowercase) == Some(n.mac.clone())
                    || (w.mac.is_none() && w.name.as_deref() == Some(n.name.as_str())))
        });
        if let Some(j) = hit {
            taken[j] = true;
            out[i] = Some(nics[j].clone());
        }
    }
    for (i, w) in wanted.iter().enumerate() {
        if out[i].is_none() && w.mac.is_none() && w.name.is_none() {
            if let Some(j) = taken.iter().position(|t| !t) {
                taken[j] = true;
                out[i] = Some(nics[j].clone());
            }
        }
    }
    wanted
        .iter()
        .zip(out)
        .filter_map(|(w, n)| n.map(|n| (w, n)))
        .collect()
}

/// Logs a configuration step that failed; the boot goes on with what works.
fn logged(r: std::io::Result<()>) {
    if let Err(e) = r {
        info!("network: {e}");
    }
}

/// What [`setup`] configured.
pub struct Configured {
    /// The NICs to run the DHCP client on (once the services that do not wait for an
    /// address are started).
    pub dhcp: Vec<String>,
    /// How many NICs were configured (each should end up with an address).
    pub nics: usize,
    /// The NICs given static addresses, in the seed's order: the management network.
    pub static_nics: Vec<String>,
    /// The NICs on DHCP whose leases give DNS servers, when the seed gives none.
    pub dns_from_dhcp: Vec<String>,
}

/// Brings up loopback and the seed's NICs.
pub fn setup(seed: &Seed) -> Configured {
    logged(netlink::link_up("lo"));
    // NIC drivers load early (virtio_net) or through udev's coldplug. The kernel command
    // line has net.ifnames=0, so udev never renames a NIC: one is usable as soon as its
    // driver made it, and nothing waits for udev here (a second or two under TCG).
    let wanted = seed.network.interfaces.len().max(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut found = nics();
    while found.len() < wanted && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        found = nics();
    }
    info!(
        "network: NICs {}",
        found
            .iter()
            .map(|n| format!("{}({})", n.name, n.mac))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut dhcp = Vec::new();
    let mut dhcp_nics = Vec::new();
    let mut resolv = String::new();
    let assigned = assign(&seed.network.interfaces, &found);
    let configured = assigned.len();
    let mut static_nics = Vec::new();
    for (want, nic) in assigned {
        logged(netlink::link_up(&nic.name));
        if want.dhcp {
            dhcp.push(nic.name.clone());
            dhcp_nics.push(nic.name.clone());
            continue;
        }
        for a in &want.addresses {
            if let Ok(c) = Cidr::parse(a) {
                logged(netlink::replace_address(
                    &nic.name,
                    c.address.into(),
                    c.prefix,
                    None,
                ));
            }
        }
        if !want.addresses.is_empty() {
            static_nics.push(nic.name.clone());
        }
        if let Some(gw) = want.gateway {
            logged(netlink::replace_default_route(&nic.name, gw.into()));
            resolv.push_str(&format!("nameserver {gw}\n"));
        }
        info!("network: {} static {}", nic.name, want.addresses.join(","));
    }
    let dns_from_dhcp = if resolv.is_empty() {
        dhcp_nics
    } else {
        let _ = std::fs::write("/run/cairn/resolv.conf", resolv);
        Vec::new()
    };
    Configured {
        dhcp,
        nics: configured,
        static_nics,
        dns_from_dhcp,
    }
}

/// The IPv4 addresses on the NICs, as "name=a.b.c.d/n" (what `ip -4 -o addr` says).
pub fn addresses() -> Vec<String> {
    netlink::global_ipv4().unwrap_or_else(|e| {
        info!("network: listing addresses: {e}");
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(n: &str, m: &str) -> Nic {
        Nic {
            name: n.into(),
            mac: m.into(),
        }
    }

    #[test]
    fn matches_by_mac_then_name_then_order() {
        let nics = vec![
            nic("enp0s2", "52:54:00:00:00:01"),
            nic("enp0s3", "52:54:00:00:00:02"),
            nic("enp0s4", "52:54:00:00:00:03"),
        ];
        let wanted = vec![
            Interface {
                dhcp: true,
                ..Default::default()
            },
            Interface {
                mac: Some("52:54:00:00:00:03".into()),
                addresses: vec!["10.0.0.1/24".into()],
                ..Default::default()
            },
            Interface {
                name: Some("enp0s2".into()),
                dhcp: true,
                ..Default::default()
            },
        ];
        let got = assign(&wanted, &nics);
        let names: Vec<&str> = got.iter().map(|(_, n)| n.name.as_str()).collect();
        assert_eq!(names, ["enp0s3", "enp0s4", "enp0s2"]);
    }

    #[test]
    fn unmatched_entries_are_dropped() {
        let wanted = vec![Interface {
            mac: Some("aa:bb:cc:dd:ee:ff".into()),
            dhcp: true,
            ..Default::default()
        }];
        assert!(assign(&wanted, &[nic("eth0", "52:54:00:00:00:01")]).is_empty());
    }
}
