//! USB devices from /sys/bus/usb/devices (hubs left out, as Incus does), with their
//! interfaces and the names usb.ids gives.

use std::path::Path;

use serde::Serialize;

use super::pci::IdDb;
use super::{dir_names, driver, hex_id, read_opt, read_str, read_u64, under, Result};

/// `api.ResourcesUSB`.
#[derive(Debug, Default, Serialize)]
pub struct UsbDevices {
    pub devices: Vec<UsbDevice>,
    pub total: u64,
}

/// `api.ResourcesUSBDevice`.
#[derive(Debug, Default, Serialize)]
pub struct UsbDevice {
    pub bus_address: u64,
    pub device_address: u64,
    pub serial: String,
    pub interfaces: Vec<UsbInterface>,
    pub vendor: String,
    pub vendor_id: String,
    pub product: String,
    pub product_id: String,
    pub speed: f64,
}

/// `api.ResourcesUSBDeviceInterface`.
#[derive(Debug, Default, Serialize)]
pub struct UsbInterface {
    pub class: String,
    pub class_id: u64,
    pub driver: String,
    pub driver_version: String,
    pub number: u64,
    pub subclass: String,
    pub subclass_id: u64,
}

/// A two-digit hex sysfs attribute (`bInterfaceClass` = `09`).
fn hex_u64(path: &Path) -> Option<u64> {
    u64::from_str_radix(read_opt(path)?.trim(), 16).ok()
}

pub fn read(root: &Path, ids: &IdDb) -> Result<UsbDevices> {
    let base = under(root, "/sys/bus/usb/devices");
    let names = dir_names(&base)?;
    let mut devices = Vec::new();
    for name in &names {
        let dev = base.join(name);
        let (Some(bus), Some(devnum)) =
            (read_u64(&dev.join("busnum")), read_u64(&dev.join("devnum")))
        else {
            continue; // interfaces (`1-1:1.0`) have no bus number
        };
        if hex_u64(&dev.join("bDeviceClass")) == Some(9) {
            continue; // hubs
        }
        let vendor_id = hex_id(&read_str(&dev.join("idVendor")));
        let product_id = hex_id(&read_str(&dev.join("idProduct")));
        let or_file = |name: String, file: &str| {
            if name.is_empty() {
                read_str(&dev.join(file))
            } else {
                name
            }
        };
        let mut interfaces = Vec::new();
        let prefix = format!("{name}:");
        for iname in names.iter().filter(|n| n.starts_with(&prefix)) {
            let i = base.join(iname);
            let class_id = hex_u64(&i.join("bInterfaceClass")).unwrap_or(0);
            let subclass_id = hex_u64(&i.join("bInterfaceSubClass")).unwrap_or(0);
            let class_hex = format!("{class_id:02x}");
            let (driver, driver_version) = driver(root, &i);
            interfaces.push(UsbInterface {
                class: ids.class(&class_hex),
                class_id,
                driver,
                driver_version,
                number: hex_u64(&i.join("bInterfaceNumber")).unwrap_or(0),
                subclass: if subclass_id > 0 {
                    ids.subclass(&class_hex, &format!("{subclass_id:02x}"))
                } else {
                    String::new()
                },
                subclass_id,
            });
        }
        devices.push(UsbDevice {
            bus_address: bus,
            device_address: devnum,
            serial: read_str(&dev.join("serial")),
            interfaces,
            vendor: or_file(ids.vendor(&vendor_id), "manufacturer"),
            product: or_file(ids.product(&vendor_id, &product_id), "product"),
            vendor_id,
            product_id,
            speed: read_opt(&dev.join("speed"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0),
        });
    }
    let total = devices.len() as u64;
    Ok(UsbDevices { devices, total })
}

#[cfg(test)]
mod tests {
    use super::super::test_tree::write;
    use super::*;

    #[test]
    fn a_device_with_an_interface_and_a_hub_left_out() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let b = "sys/bus/usb/devices";
        for (f, v) in [
            ("busnum", "1"),
            ("devnum", "1"),
            ("bDeviceClass", "09"),
            ("idVendor", "1d6b"),
            ("idProduct", "0002"),
        ] {
            write(root, &format!("{b}/usb1/{f}"), v);
        }
        for (f, v) in [
            ("busnum", "1"),
            ("devnum", "3"),
            ("bDeviceClass", "00"),
            ("idVendor", "046d"),
            ("idProduct", "c52b"),
            ("manufacturer", "Logitech"),
            ("product", "USB Receiver"),
            ("serial", "ABC123"),
            ("speed", "12"),
        ] {
            write(root, &format!("{b}/1-1/{f}"), &format!("{v}\n"));
        }
        write(root, &format!("{b}/1-1:1.0/bInterfaceClass"), "03\n");
        write(root, &format!("{b}/1-1:1.0/bInterfaceSubClass"), "01\n");
        write(root, &format!("{b}/1-1:1.0/bInterfaceNumber"), "00\n");
        let ids = IdDb::parse("C 03  Human Interface Device\n\t01  Boot Interface Subclass\n");

        let u = read(root, &ids).unwrap();
        assert_eq!(u.total, 1);
        let d = &u.devices[0];
        assert_eq!((d.bus_address, d.device_address), (1, 3));
        assert_eq!(
            (d.vendor.as_str(), d.vendor_id.as_str()),
            ("Logitech", "046d")
        );
        assert_eq!(
            (d.product.as_str(), d.serial.as_str()),
            ("USB Receiver", "ABC123")
        );
        assert_eq!(d.speed, 12.0);
        assert_eq!(d.interfaces.len(), 1);
        assert_eq!(d.interfaces[0].class, "Human Interface Device");
        assert_eq!(d.interfaces[0].subclass, "Boot Interface Subclass");
        assert_eq!(d.interfaces[0].class_id, 3);
    }
}
