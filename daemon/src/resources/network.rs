//! Network cards from /sys/class/net: the interfaces backed by a device (not `lo`,
//! bridges, veths or other virtual links), grouped into cards by that device, one port per
//! interface.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cpu::is_zero;
use super::pci::{pci_ids, pci_parent, IdDb};
use super::{dir_names, driver, numa_node, read_str, read_u64, under, Result};

/// `api.ResourcesNetwork`.
#[derive(Debug, Default, Serialize)]
pub struct Networks {
    pub cards: Vec<NetworkCard>,
    pub total: u64,
}

/// `api.ResourcesNetworkCard` (no VFs, vDPA or firmware version: those need ethtool or
/// netlink queries this reader does not make).
#[derive(Debug, Default, Serialize)]
pub struct NetworkCard {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver_version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sriov: Option<Sriov>,
    pub numa_node: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub product_id: String,
}

/// `api.ResourcesNetworkCardSRIOV`, from `sriov_numvfs` / `sriov_totalvfs`.
#[derive(Debug, Default, Serialize)]
pub struct Sriov {
    pub current_vfs: u64,
    pub maximum_vfs: u64,
    pub vfs: Vec<NetworkCard>,
}

/// `api.ResourcesNetworkCardPort`.
#[derive(Debug, Default, Serialize)]
pub struct NetworkPort {
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub port: u64,
    pub protocol: String,
    pub auto_negotiation: bool,
    pub link_detected: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub link_speed: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_duplex: String,
}

/// ARPHRD_* link types as Incus names the protocol.
fn protocol(link_type: Option<u64>) -> &'static str {
    match link_type {
        Some(1) => "ethernet",
        Some(32) => "infiniband",
        _ => "",
    }
}

fn port(iface: &Path, name: &str) -> NetworkPort {
    // `speed` is -1 (or unreadable) without a link; `carrier` unreadable when down.
    let speed = read_str(&iface.join("speed")).parse::<i64>().unwrap_or(0);
    NetworkPort {
        id: name.to_string(),
        address: read_str(&iface.join("address")),
        port: read_u64(&iface.join("dev_port")).unwrap_or(0),
        protocol: protocol(read_u64(&iface.join("type"))).to_string(),
        auto_negotiation: false,
        link_detected: read_u64(&iface.join("carrier")) == Some(1),
        link_speed: u64::try_from(speed).unwrap_or(0),
        link_duplex: match read_str(&iface.join("duplex")).as_str() {
            "unknown" => String::new(),
            d => d.to_string(),
        },
    }
}

pub fn read(root: &Path, ids: &IdDb) -> Result<Networks> {
    let base = under(root, "/sys/class/net");
    // The device each interface sits on → its card, in device order.
    let mut cards: BTreeMap<PathBuf, NetworkCard> = BTreeMap::new();
    for name in dir_names(&base)? {
        let iface = base.join(&name);
        let Ok(dev) = std::fs::canonicalize(iface.join("device")) else {
            continue; // virtual interfaces have no device
        };
        let pci = pci_parent(&iface);
        let card = cards.entry(dev.clone()).or_insert_with(|| {
            let mut card = NetworkCard::default();
            (card.driver, card.driver_version) = driver(root, &dev);
            if let Some(p) = &pci {
                (card.vendor, card.vendor_id, card.product, card.product_id) = pci_ids(p, ids);
                card.numa_node = numa_node(p);
                card.pci_address = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if let Some(max) = read_u64(&p.join("sriov_totalvfs")) {
                    card.sriov = Some(Sriov {
                        current_vfs: read_u64(&p.join("sriov_numvfs")).unwrap_or(0),
                        maximum_vfs: max,
                        vfs: Vec::new(),
                    });
                }
            }
            card
        });
        card.ports.push(port(&iface, &name));
    }
    let cards: Vec<NetworkCard> = cards.into_values().collect();
    let total = cards.len() as u64;
    Ok(Networks { cards, total })
}

#[cfg(test)]
mod tests {
    use super::super::test_tree::{link, write};
    use super::*;

    #[test]
    fn a_virtio_nic_and_no_virtual_links() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let pcidev = "sys/devices/pci0000:00/0000:00:03.0";
        write(root, &format!("{pcidev}/vendor"), "0x1af4\n");
        write(root, &format!("{pcidev}/device"), "0x1000\n");
        link(root, &format!("{pcidev}/subsystem"), "../../../bus/pci");
        let v = format!("{pcidev}/virtio0");
        std::fs::create_dir_all(root.join(&v)).unwrap();
        link(root, &format!("{v}/subsystem"), "../../../../bus/virtio");
        link(
            root,
            &format!("{v}/driver"),
            "../../../../bus/virtio/drivers/virtio_net",
        );
        let n = format!("{v}/net/eth0");
        for (f, val) in [
            ("address", "52:54:00:12:34:56"),
            ("type", "1"),
            ("carrier", "1"),
            ("speed", "-1"),
            ("duplex", "unknown"),
            ("dev_port", "0"),
        ] {
            write(root, &format!("{n}/{f}"), &format!("{val}\n"));
        }
        link(root, &format!("{n}/device"), "../../../virtio0");
        link(root, "sys/class/net/eth0", &format!("../../{}", &n[4..]));
        write(
            root,
            "sys/devices/virtual/net/lo/address",
            "00:00:00:00:00:00\n",
        );
        link(root, "sys/class/net/lo", "../../devices/virtual/net/lo");

        let ids = IdDb::parse("1af4  Red Hat, Inc.\n\t1000  Virtio network device\n");
        let nets = read(root, &ids).unwrap();
        assert_eq!(nets.total, 1, "{nets:?}");
        let c = &nets.cards[0];
        assert_eq!(c.driver, "virtio_net");
        assert_eq!(c.pci_address, "0000:00:03.0");
        assert_eq!(
            (c.vendor.as_str(), c.product.as_str()),
            ("Red Hat, Inc.", "Virtio network device")
        );
        assert_eq!(c.ports.len(), 1);
        let p = &c.ports[0];
        assert_eq!(
            (p.id.as_str(), p.address.as_str()),
            ("eth0", "52:54:00:12:34:56")
        );
        assert_eq!(p.protocol, "ethernet");
        assert!(p.link_detected);
        assert_eq!((p.link_speed, p.link_duplex.as_str()), (0, ""));
    }
}
