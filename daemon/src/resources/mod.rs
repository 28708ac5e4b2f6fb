//! What the host has, measured from /proc and /sys: `GET /1.0/resources` (the Incus
//! `resources` extension and its successors). The structs are Incus's `api.Resources*`
//! (shared/api/resource.go) with the same JSON names; a field a source does not give stays
//! empty or zero, as Incus leaves it. Every reader takes the root it reads under (`/` on the
//! host, a fixture tree in tests).

mod cpu;
mod memory;
mod network;
mod pci;
mod storage;
mod system;
mod usb;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use cpu::{Cache, Core, Cpu, Socket, Thread};
pub use memory::{Memory, MemoryNode};
pub use network::{NetworkCard, NetworkPort, Networks};
pub use pci::{Gpu, GpuCard, GpuDrm, PciDevice, PciDevices};
pub use storage::{Disk, Partition, Storage};
pub use system::{Chassis, Firmware, Load, Motherboard, System};
pub use usb::{UsbDevice, UsbDevices, UsbInterface};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {what}")]
    Parse { path: PathBuf, what: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// `api.Resources`.
#[derive(Debug, Default, Serialize)]
pub struct Resources {
    pub cpu: Cpu,
    pub memory: Memory,
    pub gpu: Gpu,
    pub network: Networks,
    pub storage: Storage,
    pub usb: UsbDevices,
    pub pci: PciDevices,
    pub system: System,
    pub load: Load,
}

/// Everything, read under `root` (`/` for the host). The CPU and memory are required (a
/// host without /proc/meminfo or /sys/devices/system/cpu is not one to report on); the
/// device lists are empty where their /sys directories are missing, as in a container.
pub fn read(root: &Path) -> Result<Resources> {
    let arch = nix::sys::utsname::uname()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_default();
    let pci_ids = pci::IdDb::load_pci(root);
    let usb_ids = pci::IdDb::load_usb(root);
    Ok(Resources {
        cpu: cpu::read(root, &arch)?,
        memory: memory::read(root)?,
        gpu: pci::read_gpus(root, &pci_ids)?,
        network: network::read(root, &pci_ids)?,
        storage: storage::read(root)?,
        usb: usb::read(root, &usb_ids)?,
        pci: pci::read(root, &pci_ids)?,
        system: system::read(root, &arch)?,
        load: system::read_load(root)?,
    })
}

// Small sysfs helpers shared by the readers.

/// `root` joined with an absolute path such as `/proc/meminfo`.
fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

fn read_err(path: &Path, source: std::io::Error) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn parse_err(path: &Path, what: impl Into<String>) -> Error {
    Error::Parse {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// A file's text, trimmed; `None` when it does not exist or cannot be read (sysfs
/// attributes that a device lacks, or that only root may read, such as DMI serials).
fn read_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A file's text, or "" (for optional string fields).
fn read_str(path: &Path) -> String {
    read_opt(path).unwrap_or_default()
}

/// A required file's text.
fn read_required(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| read_err(path, e))
}

/// An optional decimal number; `None` when absent, unreadable or not a number.
fn read_u64(path: &Path) -> Option<u64> {
    read_opt(path)?.parse().ok()
}

/// An optional signed number (`numa_node` is -1 without NUMA).
fn read_i64(path: &Path) -> Option<i64> {
    read_opt(path)?.parse().ok()
}

/// A NUMA node number from a device's `numa_node` file: 0 when absent or -1.
fn numa_node(dev: &Path) -> u64 {
    read_i64(&dev.join("numa_node"))
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// The last component of where a symlink points (`driver` → `e1000e`).
fn link_name(path: &Path) -> String {
    std::fs::read_link(path)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// A device's kernel driver name and that module's version (empty when built in).
fn driver(root: &Path, dev: &Path) -> (String, String) {
    let name = link_name(&dev.join("driver"));
    if name.is_empty() {
        return (name, String::new());
    }
    let version = read_str(&under(root, "/sys/module").join(&name).join("version"));
    (name, version)
}

/// A sysfs hex id (`0x8086`) as Incus shows it: four lowercase hex digits, no prefix.
fn hex_id(raw: &str) -> String {
    raw.trim().trim_start_matches("0x").to_lowercase()
}

/// The names in a directory, sorted; empty when it does not exist.
fn dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_err(dir, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by(|a, b| natural_cmp(a, b));
    Ok(names)
}

/// Orders `cpu2` before `cpu10`: digit runs compare by value.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn key(s: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut text = String::new();
        let mut num = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                num.push(c);
            } else {
                if !num.is_empty() {
                    out.push((std::mem::take(&mut text), num.parse().unwrap_or(u64::MAX)));
                    num.clear();
                }
                text.push(c);
            }
        }
        out.push((text, num.parse().unwrap_or(0)));
        out
    }
    key(a).cmp(&key(b))
}

#[cfg(test)]
pub(crate) mod test_tree {
    //! A fake root for the readers' tests.
    use std::path::Path;

    pub fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn link(root: &Path, rel: &str, target: &str) {
        let p = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_and_hex_ids() {
        let mut v = vec!["cpu10", "cpu2", "cpu1", "cpufreq"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["cpu1", "cpu2", "cpu10", "cpufreq"]);
        assert_eq!(hex_id("0x8086\n"), "8086");
        assert_eq!(hex_id("1AF4"), "1af4");
    }

    #[test]
    fn the_host_is_readable() {
        // The real /proc and /sys of whatever runs the tests: at least one online CPU and
        // some memory, and nothing in the device lists that would fail to serialize.
        let r = read(Path::new("/")).unwrap();
        assert!(r.cpu.total >= 1, "{:?}", r.cpu);
        assert!(r.memory.total > 0);
        serde_json::to_string(&r).unwrap();
    }
}
