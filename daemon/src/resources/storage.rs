//! Disks from /sys/class/block (the block devices with a `device`: not loop, zram or
//! device-mapper), their partitions, the udev database in /run/udev/data and the
//! /dev/disk/by-id and by-path links.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::{dir_names, numa_node, pci, read_opt, read_str, read_u64, under, Result};

/// `api.ResourcesStorage`.
#[derive(Debug, Default, Serialize)]
pub struct Storage {
    pub disks: Vec<Disk>,
    /// Disks and partitions, as Incus counts them.
    pub total: u64,
}

/// `api.ResourcesStorageDisk`.
#[derive(Debug, Default, Serialize)]
pub struct Disk {
    pub id: String,
    pub device: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    pub read_only: bool,
    pub size: u64,
    pub removable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub wwn: String,
    pub numa_node: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device_path: String,
    pub block_size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub firmware_version: String,
    pub rpm: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub serial: String,
    pub device_id: String,
    pub partitions: Vec<Partition>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pci_address: String,
}

/// `api.ResourcesStorageDiskPartition`.
#[derive(Debug, Default, Serialize)]
pub struct Partition {
    pub id: String,
    pub device: String,
    pub read_only: bool,
    pub size: u64,
    pub partition: u64,
}

/// The `E:KEY=value` lines of a udev database entry.
fn udev_props(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("E:"))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The name in `dir` (a /dev/disk/by-* directory) whose link points at /dev/`name`.
fn link_to(dir: &Path, name: &str) -> Result<String> {
    for link in dir_names(dir)? {
        let Ok(target) = std::fs::read_link(dir.join(&link)) else {
            continue;
        };
        if target.file_name().is_some_and(|n| n == name) {
            return Ok(link);
        }
    }
    Ok(String::new())
}

/// 512-byte sectors in a `size` file, as bytes.
fn sectors(dir: &Path) -> u64 {
    read_u64(&dir.join("size")).unwrap_or(0).saturating_mul(512)
}

fn flag(dir: &Path, file: &str) -> bool {
    read_u64(&dir.join(file)).is_some_and(|n| n != 0)
}

pub fn read(root: &Path) -> Result<Storage> {
    let base = under(root, "/sys/class/block");
    let by_id = under(root, "/dev/disk/by-id");
    let by_path = under(root, "/dev/disk/by-path");
    let mut disks = Vec::new();
    for name in dir_names(&base)? {
        let dir = base.join(&name);
        let dev = dir.join("device");
        if !dev.exists() || dir.join("partition").exists() {
            continue;
        }
        let subsystem = super::link_name(&dev.join("subsystem"));
        if subsystem == "rbd" {
            continue; // Ceph RBD mappings are not local disks (Incus leaves them out)
        }
        let device = read_str(&dir.join("dev"));
        let udev = read_opt(&under(root, "/run/udev/data").join(format!("b{device}")))
            .map(|t| udev_props(&t))
            .unwrap_or_default();
        let prop = |k: &str| udev.get(k).cloned().unwrap_or_default();
        let removable = flag(&dir, "removable");
        let mut kind = subsystem;
        if prop("ID_CDROM") == "1" || (name.starts_with("sr") && removable) {
            kind = "cdrom".into();
        } else if prop("ID_USB_DRIVER") == "usb-storage" {
            kind = "usb".into();
        } else if prop("ID_ATA_SATA") == "1" {
            kind = "sata".into();
        }
        let serial = [
            "SCSI_IDENT_SERIAL",
            "ID_SCSI_SERIAL",
            "ID_SERIAL_SHORT",
            "ID_SERIAL",
        ]
        .iter()
        .map(|k| prop(k))
        .find(|s| !s.is_empty())
        .unwrap_or_default();
        let mut firmware_version = read_str(&dev.join("firmware_rev"));
        if firmware_version.is_empty() {
            firmware_version = prop("ID_REVISION");
        }
        let mut rpm = prop("ID_ATA_ROTATION_RATE_RPM").parse().unwrap_or(0);
        if rpm == 0 {
            // Rotational without a known speed is 1, as Incus reports it.
            rpm = read_u64(&dir.join("queue/rotational")).unwrap_or(0);
        }

        let mut partitions = Vec::new();
        // Partitions are subdirectories of the disk named after it (`vda1`, `nvme0n1p1`).
        for sub in dir_names(&dir)?
            .into_iter()
            .filter(|s| s.starts_with(&name))
        {
            let p = dir.join(&sub);
            let Some(number) = read_u64(&p.join("partition")) else {
                continue;
            };
            partitions.push(Partition {
                device: read_str(&p.join("dev")),
                read_only: flag(&p, "ro"),
                size: sectors(&p),
                partition: number,
                id: sub,
            });
        }
        disks.push(Disk {
            model: read_str(&dev.join("model")),
            kind,
            read_only: flag(&dir, "ro"),
            size: sectors(&dir),
            removable,
            wwn: read_str(&dir.join("wwid")),
            numa_node: numa_node(&dev),
            device_path: link_to(&by_path, &name)?,
            block_size: read_u64(&dir.join("queue/logical_block_size")).unwrap_or(0),
            firmware_version,
            rpm,
            serial,
            device_id: link_to(&by_id, &name)?,
            partitions,
            pci_address: pci::pci_parent(&dir)
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default(),
            device,
            id: name,
        });
    }
    let total = disks.iter().map(|d| 1 + d.partitions.len() as u64).sum();
    Ok(Storage { disks, total })
}

#[cfg(test)]
mod tests {
    use super::super::test_tree::{link, write};
    use super::*;

    #[test]
    fn a_disk_with_a_partition_and_no_loop_devices() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let d = "sys/devices/pci0000:00/0000:00:05.0/virtio2/block/vda";
        write(root, &format!("{d}/dev"), "254:0\n");
        write(root, &format!("{d}/size"), "20971520\n");
        write(root, &format!("{d}/ro"), "0\n");
        write(root, &format!("{d}/removable"), "0\n");
        write(root, &format!("{d}/queue/logical_block_size"), "512\n");
        write(root, &format!("{d}/queue/rotational"), "1\n");
        write(root, &format!("{d}/vda1/partition"), "1\n");
        write(root, &format!("{d}/vda1/dev"), "254:1\n");
        write(root, &format!("{d}/vda1/size"), "2048\n");
        write(root, &format!("{d}/vda1/ro"), "0\n");
        link(root, &format!("{d}/device"), "../../../virtio2");
        write(
            root,
            "sys/devices/pci0000:00/0000:00:05.0/virtio2/numa_node",
            "-1\n",
        );
        std::fs::create_dir_all(root.join("sys/bus/virtio")).unwrap();
        link(
            root,
            "sys/devices/pci0000:00/0000:00:05.0/virtio2/subsystem",
            "../../../../bus/virtio",
        );
        link(
            root,
            "sys/devices/pci0000:00/0000:00:05.0/subsystem",
            "../../../bus/pci",
        );
        link(root, "sys/class/block/vda", &format!("../../{}", &d[4..]));
        link(
            root,
            "sys/class/block/vda1",
            &format!("../../{}/vda1", &d[4..]),
        );
        write(root, "sys/devices/virtual/block/loop0/size", "0\n");
        link(
            root,
            "sys/class/block/loop0",
            "../../devices/virtual/block/loop0",
        );
        write(
            root,
            "run/udev/data/b254:0",
            "S:disk/by-id/virtio-abc\nE:ID_SERIAL=abc\n",
        );
        write(root, "dev/vda", "");
        link(root, "dev/disk/by-id/virtio-abc", "../../vda");
        link(root, "dev/disk/by-path/pci-0000:00:05.0", "../../vda");
        link(
            root,
            "dev/disk/by-path/pci-0000:00:05.0-part1",
            "../../vda1",
        );

        let s = read(root).unwrap();
        assert_eq!(s.total, 2, "{s:?}");
        let disk = &s.disks[0];
        assert_eq!((disk.id.as_str(), disk.device.as_str()), ("vda", "254:0"));
        assert_eq!(disk.size, 20971520 * 512);
        assert_eq!(disk.kind, "virtio");
        assert_eq!((disk.block_size, disk.rpm), (512, 1));
        assert_eq!(disk.serial, "abc");
        assert_eq!(disk.device_id, "virtio-abc");
        assert_eq!(disk.device_path, "pci-0000:00:05.0");
        assert_eq!(disk.pci_address, "0000:00:05.0");
        assert_eq!(disk.partitions.len(), 1);
        assert_eq!(
            (disk.partitions[0].size, disk.partitions[0].partition),
            (2048 * 512, 1)
        );
    }
}
