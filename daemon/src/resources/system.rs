//! The machine from the DMI tables in /sys/class/dmi/id (product, firmware, chassis,
//! motherboard), what kind of machine it is, and the load from /proc/loadavg and /proc.

use std::path::Path;

use serde::Serialize;

use super::{dir_names, parse_err, read_opt, read_required, read_str, read_u64, under, Result};

/// `api.ResourcesSystem`.
#[derive(Debug, Default, Serialize)]
pub struct System {
    pub uuid: String,
    pub vendor: String,
    pub product: String,
    pub family: String,
    pub version: String,
    pub sku: String,
    pub serial: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub firmware: Option<Firmware>,
    pub chassis: Option<Chassis>,
    pub motherboard: Option<Motherboard>,
}

/// `api.ResourcesSystemFirmware`.
#[derive(Debug, Default, Serialize)]
pub struct Firmware {
    pub vendor: String,
    pub date: String,
    pub version: String,
}

/// `api.ResourcesSystemChassis`.
#[derive(Debug, Default, Serialize)]
pub struct Chassis {
    pub vendor: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub serial: String,
    pub version: String,
}

/// `api.ResourcesSystemMotherboard`.
#[derive(Debug, Default, Serialize)]
pub struct Motherboard {
    pub vendor: String,
    pub product: String,
    pub serial: String,
    pub version: String,
}

/// `api.ResourcesLoad`: Go gives these fields no JSON tags, so they keep their Go names.
#[derive(Debug, Default, Serialize)]
pub struct Load {
    #[serde(rename = "Average1Min")]
    pub average_1min: f64,
    #[serde(rename = "Average5Min")]
    pub average_5min: f64,
    #[serde(rename = "Average10Min")]
    pub average_10min: f64,
    #[serde(rename = "Processes")]
    pub processes: u64,
}

/// SMBIOS chassis types (DMTF DSP0134 7.4.1), as Incus names them.
fn chassis_type(n: u64) -> &'static str {
    const NAMES: [&str; 36] = [
        "Other",
        "Unknown",
        "Desktop",
        "Low Profile Desktop",
        "Pizza Box",
        "Mini Tower",
        "Tower",
        "Portable",
        "Laptop",
        "Notebook",
        "Hand Held",
        "Docking Station",
        "All in One",
        "Sub Notebook",
        "Space-saving",
        "Lunch Box",
        "Main Server Chassis",
        "Expansion Chassis",
        "SubChassis",
        "Bus Expansion Chassis",
        "Peripheral Chassis",
        "RAID Chassis",
        "Rack Mount Chassis",
        "Sealed-case PC",
        "Multi-system chassis",
        "Compact PCI",
        "Advanced TCA",
        "Blade",
        "Blade Enclosure",
        "Tablet",
        "Convertible",
        "Detachable",
        "IoT Gateway",
        "Embedded PC",
        "Mini PC",
        "Stick PC",
    ];
    n.checked_sub(1)
        .and_then(|i| NAMES.get(i as usize))
        .copied()
        .unwrap_or("")
}

/// `container`, `virtual-machine` or `physical`, from what the kernel and init show: a
/// `container=` in init's environment (or systemd's /run/systemd/container), else the
/// `hypervisor` CPU flag or /sys/hypervisor, else physical on x86 (where the flag is
/// reliable) and `unknown` elsewhere. Incus asks systemd-detect-virt the same question.
fn machine_kind(root: &Path, arch: &str) -> String {
    let environ = std::fs::read(under(root, "/proc/1/environ")).unwrap_or_default();
    let in_container = environ
        .split(|b| *b == 0)
        .any(|kv| kv.starts_with(b"container=") && kv.len() > "container=".len())
        || read_opt(&under(root, "/run/systemd/container")).is_some_and(|s| !s.is_empty());
    if in_container {
        return "container".into();
    }
    let cpuinfo = read_str(&under(root, "/proc/cpuinfo"));
    let hv_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "hypervisor"));
    let hv_type = read_opt(&under(root, "/sys/hypervisor/type")).is_some_and(|s| !s.is_empty());
    if hv_flag || hv_type {
        return "virtual-machine".into();
    }
    if matches!(arch, "x86_64" | "i686" | "i386") {
        "physical".into()
    } else {
        "unknown".into()
    }
}

pub fn read(root: &Path, arch: &str) -> Result<System> {
    let dmi = under(root, "/sys/class/dmi/id");
    let f = |name: &str| read_str(&dmi.join(name));
    let has_dmi = dmi.is_dir();
    let kind = machine_kind(root, arch);
    if !has_dmi {
        // No DMI tables (most ARM boards, some VMs): only the kind is known.
        return Ok(System {
            kind,
            ..Default::default()
        });
    }
    Ok(System {
        uuid: f("product_uuid"),
        vendor: f("sys_vendor"),
        product: f("product_name"),
        family: f("product_family"),
        version: f("product_version"),
        sku: f("product_sku"),
        serial: f("product_serial"),
        kind,
        firmware: Some(Firmware {
            vendor: f("bios_vendor"),
            date: f("bios_date"),
            version: f("bios_version"),
        }),
        chassis: Some(Chassis {
            vendor: f("chassis_vendor"),
            kind: read_u64(&dmi.join("chassis_type"))
                .map(chassis_type)
                .unwrap_or("")
                .to_string(),
            serial: f("chassis_serial"),
            version: f("chassis_version"),
        }),
        motherboard: Some(Motherboard {
            vendor: f("board_vendor"),
            product: f("board_name"),
            serial: f("board_serial"),
            version: f("board_version"),
        }),
    })
}

/// The load averages and the number of processes (numeric directories of /proc).
pub fn read_load(root: &Path) -> Result<Load> {
    let path = under(root, "/proc/loadavg");
    let text = read_required(&path)?;
    let avg: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .map(|w| w.parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| parse_err(&path, e.to_string()))?;
    let [one, five, fifteen] = avg[..] else {
        return Err(parse_err(&path, "fewer than three load averages"));
    };
    let processes = dir_names(&under(root, "/proc"))?
        .iter()
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .count() as u64;
    Ok(Load {
        average_1min: one,
        average_5min: five,
        average_10min: fifteen,
        processes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_tree::write;
    use super::*;

    #[test]
    fn dmi_tables() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for (f, v) in [
            ("sys_vendor", "QEMU"),
            ("product_name", "Standard PC (Q35 + ICH9, 2009)"),
            ("product_version", "pc-q35-8.2"),
            ("bios_vendor", "SeaBIOS"),
            ("bios_date", "04/01/2014"),
            ("bios_version", "1.16.3"),
            ("chassis_type", "1"),
            ("chassis_vendor", "QEMU"),
            ("board_vendor", "ACME"),
        ] {
            write(root, &format!("sys/class/dmi/id/{f}"), &format!("{v}\n"));
        }
        write(
            root,
            "proc/cpuinfo",
            "processor\t: 0\nflags\t\t: fpu hypervisor\n",
        );
        let s = read(root, "x86_64").unwrap();
        assert_eq!(s.vendor, "QEMU");
        assert_eq!(s.product, "Standard PC (Q35 + ICH9, 2009)");
        assert_eq!(
            s.uuid, "",
            "product_uuid is root-only or absent: left empty"
        );
        assert_eq!(s.kind, "virtual-machine");
        assert_eq!(s.firmware.as_ref().unwrap().vendor, "SeaBIOS");
        assert_eq!(s.chassis.as_ref().unwrap().kind, "Other");
        assert_eq!(s.motherboard.as_ref().unwrap().vendor, "ACME");
    }

    #[test]
    fn no_dmi_and_machine_kinds() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu\n");
        let s = read(root, "x86_64").unwrap();
        assert!(s.firmware.is_none() && s.chassis.is_none());
        assert_eq!(s.kind, "physical");
        assert_eq!(read(root, "aarch64").unwrap().kind, "unknown");
        write(root, "proc/1/environ", "HOME=/\0container=lxc\0");
        assert_eq!(read(root, "x86_64").unwrap().kind, "container");
        assert_eq!(chassis_type(0), "");
        assert_eq!(chassis_type(0x17), "Rack Mount Chassis");
        assert_eq!(chassis_type(999), "");
    }

    #[test]
    fn load_and_processes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "proc/loadavg", "0.69 1.10 1.29 2/345 6789\n");
        write(root, "proc/1/stat", "");
        write(root, "proc/42/stat", "");
        write(root, "proc/self/stat", "");
        let l = read_load(root).unwrap();
        assert_eq!(
            (l.average_1min, l.average_5min, l.average_10min),
            (0.69, 1.10, 1.29)
        );
        assert_eq!(l.processes, 2);
        write(root, "proc/loadavg", "0.5\n");
        assert!(read_load(root).is_err());
        write(root, "proc/loadavg", "x y z\n");
        assert!(read_load(root).is_err());
    }
}
