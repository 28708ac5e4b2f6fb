//! The `default` storage pool the first start makes, from the seed's `storage:` section:
//! which driver and which disk. cairn-init only chooses and hands the choice to cairnd in
//! its preseed; cairnd makes the pool (and refuses a disk that holds anything).
//!
//! A disk is taken only when nothing is on it: no partitions, no holders, and its first MiB
//! all zeros (no partition table, filesystem or pool label). A disk the seed names is taken
//! as named; cairnd still refuses it if it holds a filesystem.

use std::io::Read;
use std::path::Path;

/// The pool cairnd is asked to make: its driver and config (`source`, `size`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPool {
    pub driver: String,
    pub config: Vec<(String, String)>,
}

/// Whether the image carries the zfs module for the running kernel.
pub fn image_has_zfs() -> bool {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("/sys/module/zfs").exists()
        || Path::new(&format!("/usr/lib/modules/{release}/updates/zfs")).is_dir()
}

/// Block devices that are never a data disk.
fn is_virtual(name: &str) -> bool {
    ["loop", "ram", "dm-", "sr", "zram", "md", "nbd", "zd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Whether `/sys/block/<name>` is an unused disk (see the module doc).
fn is_empty_disk(sys_block: &Path, dev_dir: &Path, name: &str) -> bool {
    let sys = sys_block.join(name);
    let size: u64 = std::fs::read_to_string(sys.join("size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    // Under 1 GiB (512-byte sectors) is no place for a pool.
    if size < 2 * 1024 * 1024 {
        return false;
    }
    let has_partitions = std::fs::read_dir(&sys)
        .map(|rd| rd.flatten().any(|e| e.path().join("partition").exists()))
        .unwrap_or(true);
    let has_holders = std::fs::read_dir(sys.join("holders"))
        .map(|mut rd| rd.next().is_some())
        .unwrap_or(false);
    if has_partitions || has_holders {
        return false;
    }
    let mut buf = vec![0u8; 1 << 20];
    match std::fs::File::open(dev_dir.join(name)).and_then(|mut f| f.read_exact(&mut buf)) {
        Ok(()) => buf.iter().all(|b| *b == 0),
        Err(_) => false,
    }
}

/// The first unused disk, by name, other than the boot disk.
pub fn find_empty_disk(
    sys_block: &Path,
    dev_dir: &Path,
    boot_disk: Option<&str>,
) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_virtual(n) && Some(n.as_str()) != boot_disk)
        .collect();
    names.sort();
    names
        .into_iter()
        .find(|n| is_empty_disk(sys_block, dev_dir, n))
        .map(|n| dev_dir.join(n).display().to_string())
}

/// The pool to ask for: `None` leaves cairnd's dir `default` on the data partition.
pub fn choose(
    seed: &cairn_seed::Storage,
    has_zfs: bool,
    disk: impl FnOnce() -> Option<String>,
) -> Option<DefaultPool> {
    let driver = match seed.driver.as_deref().unwrap_or("auto") {
        "dir" => return None,
        "auto" if has_zfs => "zfs",
        "auto" => "btrfs",
        d => d,
    };
    let disk = seed.disk.clone().or_else(disk);
    let config = match (disk, &seed.size) {
        (Some(d), _) => vec![("source".to_string(), d)],
        // No disk: a loop file on the data partition (zfs or btrfs both take one).
        (None, Some(size)) => vec![("size".to_string(), size.clone())],
        (None, None) => vec![],
    };
    Some(DefaultPool {
        driver: driver.to_string(),
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(driver: Option<&str>, disk: Option<&str>) -> cairn_seed::Storage {
        cairn_seed::Storage {
            driver: driver.map(String::from),
            disk: disk.map(String::from),
            size: None,
        }
    }

    #[test]
    fn auto_is_zfs_when_the_module_is_there() {
        let p = choose(&seed(None, None), true, || Some("/dev/vdb".into())).unwrap();
        assert_eq!(p.driver, "zfs");
        assert_eq!(p.config, vec![("source".into(), "/dev/vdb".into())]);
        assert_eq!(
            choose(&seed(None, None), false, || None).unwrap().driver,
            "btrfs"
        );
        assert!(choose(&seed(Some("dir"), None), true, || None).is_none());
        let named = choose(&seed(Some("zfs"), Some("/dev/sdc")), true, || {
            panic!("a named disk needs no search")
        });
        assert_eq!(named.unwrap().config[0].1, "/dev/sdc");
    }

    #[test]
    fn only_unused_disks_are_taken() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        let disk = |name: &str, sectors: u64, data: &[u8], part: bool| {
            let d = sys.path().join(name);
            std::fs::create_dir_all(d.join("holders")).unwrap();
            std::fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
            if part {
                std::fs::create_dir_all(d.join(format!("{name}p1"))).unwrap();
                std::fs::write(d.join(format!("{name}p1/partition")), "1").unwrap();
            }
            use std::io::Write;
            let mut f = std::fs::File::create(dev.path().join(name)).unwrap();
            f.set_len(2 << 20).unwrap();
            f.write_all(data).unwrap();
        };
        disk("nvme0n1", 1 << 24, b"", true); // the boot disk
        disk("nvme1n1", 1 << 24, b"EFI PART", false); // a partition table
        disk("nvme2n1", 1 << 10, b"", false); // too small
        disk("loop0", 1 << 24, b"", false);
        disk("nvme3n1", 1 << 24, b"", false);
        let found = find_empty_disk(sys.path(), dev.path(), Some("nvme0n1")).unwrap();
        assert_eq!(found, dev.path().join("nvme3n1").display().to_string());
    }
}
