//! PCI devices from /sys/bus/pci/devices, GPUs from /sys/class/drm, and the vendor and
//! product names of the pci.ids / usb.ids databases when the host has them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{dir_names, driver, hex_id, link_name, numa_node, read_str, under, Result};

/// `api.ResourcesPCI`.
#[derive(Debug, Default, Serialize)]
pub struct PciDevices {
    pub devices: Vec<PciDevice>,
    pub total: u64,
}

/// `api.ResourcesPCIDevice` (the VPD, which needs root and a binary parser, stays empty).
#[derive(Debug, Default, Serialize)]
pub struct PciDevice {
    pub driver: String,
    pub driver_version: String,
    pub numa_node: u64,
    pub pci_address: String,
    pub vendor: String,
    pub vendor_id: String,
    pub product: String,
    pub product_id: String,
    pub iommu_group: u64,
    pub vpd: serde_json::Map<String, serde_json::Value>,
}

/// `api.ResourcesGPU`.
#[derive(Debug, Default, Serialize)]
pub struct Gpu {
    pub cards: Vec<GpuCard>,
    pub total: u64,
}

/// `api.ResourcesGPUCard`, DRM part only (no NVIDIA, SR-IOV or mdev details).
#[derive(Debug, Default, Serialize)]
pub struct GpuCard {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver_version: String,
    pub drm: Option<GpuDrm>,
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

/// `api.ResourcesGPUCardDRM`.
#[derive(Debug, Default, Serialize)]
pub struct GpuDrm {
    pub id: u64,
    pub card_name: String,
    pub card_device: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub control_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub control_device: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub render_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub render_device: String,
}

/// A pci.ids or usb.ids database: vendor names, (vendor, product) names, and the class
/// (`C xx`) and (class, subclass) names. Empty when the host has no such file.
#[derive(Debug, Default)]
pub struct IdDb {
    vendors: HashMap<String, String>,
    products: HashMap<(String, String), String>,
    classes: HashMap<String, String>,
    subclasses: HashMap<(String, String), String>,
}

impl IdDb {
    fn load_first(root: &Path, candidates: &[&str]) -> IdDb {
        candidates
            .iter()
            .find_map(|c| std::fs::read(under(root, c)).ok())
            .map(|bytes| IdDb::parse(&String::from_utf8_lossy(&bytes)))
            .unwrap_or_default()
    }

    pub fn load_pci(root: &Path) -> IdDb {
        Self::load_first(
            root,
            &["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"],
        )
    }

    pub fn load_usb(root: &Path) -> IdDb {
        Self::load_first(
            root,
            &[
                "/usr/share/misc/usb.ids",
                "/usr/share/hwdata/usb.ids",
                "/var/lib/usbutils/usb.ids",
            ],
        )
    }

    pub fn parse(text: &str) -> IdDb {
        let mut db = IdDb::default();
        // The vendor or class the indented lines below belong to.
        let mut vendor: Option<String> = None;
        let mut class: Option<String> = None;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let depth = line.chars().take_while(|c| *c == '\t').count();
            let body = line.trim_start_matches('\t');
            let Some((id, name)) = body.split_once(char::is_whitespace) else {
                continue;
            };
            let (id, name) = (id.to_lowercase(), name.trim().to_string());
            match depth {
                0 if id == "c" => {
                    // `C 03  Display controller`
                    let Some((cid, cname)) = name.split_once(char::is_whitespace) else {
                        continue;
                    };
                    vendor = None;
                    class = Some(cid.to_lowercase());
                    db.classes
                        .insert(cid.to_lowercase(), cname.trim().to_string());
                }
                0 if id.len() == 4 && id.chars().all(|c| c.is_ascii_hexdigit()) => {
                    class = None;
                    db.vendors.insert(id.clone(), name);
                    vendor = Some(id);
                }
                0 => {
                    // Other sections of usb.ids (AT, HID, …): nothing of ours below.
                    vendor = None;
                    class = None;
                }
                1 => {
                    if let Some(v) = &vendor {
                        db.products.insert((v.clone(), id), name);
                    } else if let Some(c) = &class {
                        db.subclasses.insert((c.clone(), id), name);
                    }
                }
                _ => {}
            }
        }
        db
    }

    pub fn vendor(&self, vendor: &str) -> String {
        self.vendors.get(vendor).cloned().unwrap_or_default()
    }

    pub fn product(&self, vendor: &str, product: &str) -> String {
        let key = (vendor.to_string(), product.to_string());
        self.products.get(&key).cloned().unwrap_or_default()
    }

    pub fn class(&self, class: &str) -> String {
        self.classes.get(class).cloned().unwrap_or_default()
    }

    pub fn subclass(&self, class: &str, sub: &str) -> String {
        let key = (class.to_string(), sub.to_string());
        self.subclasses.get(&key).cloned().unwrap_or_default()
    }
}

/// Vendor and product ids and names of a PCI device directory.
pub(super) fn pci_ids(dev: &Path, ids: &IdDb) -> (String, String, String, String) {
    let vendor_id = hex_id(&read_str(&dev.join("vendor")));
    let product_id = hex_id(&read_str(&dev.join("device")));
    (
        ids.vendor(&vendor_id),
        vendor_id.clone(),
        ids.product(&vendor_id, &product_id),
        product_id,
    )
}

/// The PCI device a /sys/class device sits on: its `device` link, or that device's parent
/// for virtio devices (`virtio0` under a PCI function). `None` when it is not on PCI.
pub(super) fn pci_parent(class_dev: &Path) -> Option<PathBuf> {
    let mut dev = std::fs::canonicalize(class_dev.join("device")).ok()?;
    for _ in 0..2 {
        if link_name(&dev.join("subsystem")) == "pci" {
            return Some(dev);
        }
        dev = dev.parent()?.to_path_buf();
    }
    None
}

pub fn read(root: &Path, ids: &IdDb) -> Result<PciDevices> {
    let base = under(root, "/sys/bus/pci/devices");
    let mut devices = Vec::new();
    for addr in dir_names(&base)? {
        let dev = base.join(&addr);
        let (driver, driver_version) = driver(root, &dev);
        let (vendor, vendor_id, product, product_id) = pci_ids(&dev, ids);
        devices.push(PciDevice {
            driver,
            driver_version,
            numa_node: numa_node(&dev),
            pci_address: addr,
            vendor,
            vendor_id,
            product,
            product_id,
            iommu_group: link_name(&dev.join("iommu_group")).parse().unwrap_or(0),
            vpd: Default::default(),
        });
    }
    let total = devices.len() as u64;
    Ok(PciDevices { devices, total })
}

/// DRM cards (`/sys/class/drm/cardN`), with their control and render nodes.
pub fn read_gpus(root: &Path, ids: &IdDb) -> Result<Gpu> {
    let base = under(root, "/sys/class/drm");
    let names = dir_names(&base)?;
    let mut cards = Vec::new();
    for name in &names {
        let Some(id) = name
            .strip_prefix("card")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue; // card0-HDMI-A-1 and the like are connectors
        };
        let card = base.join(name);
        let mut drm = GpuDrm {
            id,
            card_name: name.clone(),
            card_device: read_str(&card.join("dev")),
            ..Default::default()
        };
        // The render and control nodes are the DRM minors on the same device.
        let same_device = std::fs::canonicalize(card.join("device")).ok();
        for other in &names {
            let node = base.join(other);
            if std::fs::canonicalize(node.join("device")).ok() != same_device {
                continue;
            }
            if other.starts_with("renderD") {
                drm.render_name = other.clone();
                drm.render_device = read_str(&node.join("dev"));
            } else if other.starts_with("controlD") {
                drm.control_name = other.clone();
                drm.control_device = read_str(&node.join("dev"));
            }
        }
        let mut gpu = GpuCard {
            drm: Some(drm),
            ..Default::default()
        };
        if let Some(dev) = pci_parent(&card) {
            (gpu.driver, gpu.driver_version) = driver(root, &dev);
            (gpu.vendor, gpu.vendor_id, gpu.product, gpu.product_id) = pci_ids(&dev, ids);
            gpu.numa_node = numa_node(&dev);
            gpu.pci_address = dev
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        } else if card.join("device").exists() {
            (gpu.driver, gpu.driver_version) = driver(root, &card.join("device"));
        }
        cards.push(gpu);
    }
    let total = cards.len() as u64;
    Ok(Gpu { cards, total })
}

#[cfg(test)]
mod tests {
    use super::super::test_tree::{link, write};
    use super::*;

    const IDS: &str = "# comment\n8086  Intel Corporation\n\t1234  Test NIC\n\t\t8086 0001  Subsystem\n1af4  Red Hat, Inc.\n\t1000  Virtio network device\nC 03  Display controller\n\t00  VGA compatible controller\n";

    fn pci_dev(root: &Path, addr: &str, vendor: &str, device: &str) {
        let d = format!("sys/devices/pci0000:00/{addr}");
        write(root, &format!("{d}/vendor"), &format!("0x{vendor}\n"));
        write(root, &format!("{d}/device"), &format!("0x{device}\n"));
        write(root, &format!("{d}/numa_node"), "-1\n");
        std::fs::create_dir_all(root.join("sys/bus/pci/drivers/e1000e")).unwrap();
        link(
            root,
            &format!("{d}/driver"),
            "../../../bus/pci/drivers/e1000e",
        );
        link(root, &format!("{d}/subsystem"), "../../../bus/pci");
        link(
            root,
            &format!("{d}/iommu_group"),
            "../../../kernel/iommu_groups/7",
        );
        link(
            root,
            &format!("sys/bus/pci/devices/{addr}"),
            &format!("../../../devices/pci0000:00/{addr}"),
        );
    }

    #[test]
    fn the_id_database() {
        let db = IdDb::parse(IDS);
        assert_eq!(db.vendor("8086"), "Intel Corporation");
        assert_eq!(db.product("8086", "1234"), "Test NIC");
        assert_eq!(db.product("1af4", "1000"), "Virtio network device");
        assert_eq!(db.class("03"), "Display controller");
        assert_eq!(db.subclass("03", "00"), "VGA compatible controller");
        assert_eq!(db.vendor("ffff"), "");
        IdDb::parse("\t\t\n\tx\nC\n\u{feff}\0");
    }

    #[test]
    fn devices_and_a_drm_card() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "sys/module/e1000e/version", "3.2.6-k\n");
        pci_dev(root, "0000:00:02.0", "8086", "1234");
        let d = "sys/devices/pci0000:00/0000:00:02.0";
        write(root, &format!("{d}/drm/card0/dev"), "226:0\n");
        write(root, &format!("{d}/drm/renderD128/dev"), "226:128\n");
        link(
            root,
            &format!("{d}/drm/card0/device"),
            "../../../0000:00:02.0",
        );
        link(
            root,
            &format!("{d}/drm/renderD128/device"),
            "../../../0000:00:02.0",
        );
        link(
            root,
            "sys/class/drm/card0",
            &format!("../../{}/drm/card0", &d[4..]),
        );
        link(
            root,
            "sys/class/drm/renderD128",
            &format!("../../{}/drm/renderD128", &d[4..]),
        );
        link(root, "sys/class/drm/card0-HDMI-A-1", "card0");

        let ids = IdDb::parse(IDS);
        let p = read(root, &ids).unwrap();
        assert_eq!(p.total, 1);
        let dev = &p.devices[0];
        assert_eq!(dev.pci_address, "0000:00:02.0");
        assert_eq!(
            (dev.vendor_id.as_str(), dev.product_id.as_str()),
            ("8086", "1234")
        );
        assert_eq!(dev.product, "Test NIC");
        assert_eq!(
            (dev.driver.as_str(), dev.driver_version.as_str()),
            ("e1000e", "3.2.6-k")
        );
        assert_eq!((dev.iommu_group, dev.numa_node), (7, 0));

        let g = read_gpus(root, &ids).unwrap();
        assert_eq!(g.total, 1, "{g:?}");
        let card = &g.cards[0];
        assert_eq!(card.pci_address, "0000:00:02.0");
        let drm = card.drm.as_ref().unwrap();
        assert_eq!((drm.id, drm.card_device.as_str()), (0, "226:0"));
        assert_eq!(
            (drm.render_name.as_str(), drm.render_device.as_str()),
            ("renderD128", "226:128")
        );
    }

    #[test]
    fn no_drm_no_gpus() {
        let t = tempfile::tempdir().unwrap();
        let g = read_gpus(t.path(), &IdDb::default()).unwrap();
        assert_eq!((g.total, g.cards.len()), (0, 0));
    }
}
