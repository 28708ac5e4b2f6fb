//! The data partition: the only writable storage, mounted on /var. Created by
//! systemd-repart (definitions in /usr/lib/cairn/repart.d) in the free space of the boot
//! disk on first boot; its ext4 state before mounting tells whether the last shutdown was
//! clean.

use crate::{gpt, info, mount};
use nix::mount::{mount as sys_mount, MsFlags};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const LABEL: &str = "cairn-data";
const REPART_DEFINITIONS: &str = "/usr/lib/cairn/repart.d";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("finding the boot disk: {0}")]
    BootDisk(String),
    #[error("creating the data partition on {disk}: {why}")]
    Create { disk: String, why: String },
    #[error("mounting {dev} on /var: {source}")]
    Mount { dev: String, source: nix::Error },
    #[error(transparent)]
    Gpt(#[from] gpt::GptError),
}

/// What the boot found on /var.
#[derive(Debug)]
pub struct DataState {
    pub device: String,
    pub created: bool,
    /// Whether the filesystem was cleanly unmounted last time (None: just created).
    pub clean: Option<bool>,
}

/// The disk that holds the running root: the first slave of the verity device.
pub fn boot_disk() -> Result<String, DataError> {
    let slaves = std::fs::read_dir("/sys/block")
        .map_err(|e| DataError::BootDisk(e.to_string()))?
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("dm-"))
        .filter_map(|d| std::fs::read_dir(d.path().join("slaves")).ok())
        .flatten()
        .flatten()
        .map(|s| s.file_name().to_string_lossy().into_owned());
    for part in slaves {
        // /sys/class/block/<part> links into .../<disk>/<part>.
        if let Ok(real) = std::fs::canonicalize(format!("/sys/class/block/{part}")) {
            if let Some(disk) = real.parent().and_then(|p| p.file_name()) {
                return Ok(disk.to_string_lossy().into_owned());
            }
        }
    }
    Err(DataError::BootDisk(
        "no dm device with a partition below it".into(),
    ))
}

fn find_partition(disk: &str) -> Result<Option<String>, DataError> {
    let parts = gpt::read_disk(&Path::new("/dev").join(disk))?;
    Ok(parts
        .iter()
        .find(|p| p.name == LABEL)
        .map(|p| gpt::partition_name(disk, p.number)))
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn wait_for_node(name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if Path::new("/dev").join(name).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Reads the ext4 superblock: `Some(true)` if the filesystem was unmounted cleanly and
/// needs no journal recovery.
pub fn ext4_clean(dev: &Path) -> Option<bool> {
    let mut f = File::open(dev).ok()?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    ext4_clean_from_superblock(&sb)
}

pub fn ext4_clean_from_superblock(sb: &[u8]) -> Option<bool> {
    if sb.len() < 0x64 || u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let state = u16::from_le_bytes([sb[0x3A], sb[0x3B]]);
    let incompat = u32::from_le_bytes([sb[0x60], sb[0x61], sb[0x62], sb[0x63]]);
    const VALID: u16 = 1;
    const ERRORS: u16 = 2;
    const NEEDS_RECOVERY: u32 = 0x4;
    Some(state & VALID != 0 && state & ERRORS == 0 && incompat & NEEDS_RECOVERY == 0)
}

/// Finds or creates the data partition and mounts it on /var.
pub fn mount_var() -> Result<DataState, DataError> {
    let disk = boot_disk()?;
    let mut created = false;
    let part = match find_partition(&disk)? {
        Some(p) => p,
        None => {
            info!("no data partition on {disk}: creating it");
            // repart formats through a loop device.
            crate::kmod::modprobe_all(&["loop", "ext4"]);
            let out = crate::supervisor::command("/usr/bin/systemd-repart")
                .env("SYSTEMD_LOG_LEVEL", "debug")
                .env("SYSTEMD_LOG_TARGET", "console")
                // Zeroing the 64 MiB journal up front is most of a first boot's mkfs time.
                .env(
                    "SYSTEMD_REPART_MKFS_OPTIONS_EXT4",
                    "-E lazy_itable_init=1,lazy_journal_init=1",
                )
                .args([
                    "--dry-run=no",
                    "--no-pager",
                    "--seed=random",
                    "--discard=no",
                    &format!("--definitions={REPART_DEFINITIONS}"),
                    &format!("/dev/{disk}"),
                ])
                .output()
                .map_err(|e| DataError::Create {
                    disk: disk.clone(),
                    why: format!("running systemd-repart: {e}"),
                })?;
            if !out.status.success() {
                return Err(DataError::Create {
                    disk: disk.clone(),
                    why: format!(
                        "systemd-repart {}: {}",
                        out.status,
                        tail_lines(&String::from_utf8_lossy(&out.stderr), 12)
                    ),
                });
            }
            created = true;
            find_partition(&disk)?.ok_or_else(|| DataError::Create {
                disk: disk.clone(),
                why: "systemd-repart succeeded but no partition is labelled cairn-data".into(),
            })?
        }
    };
    if !wait_for_node(&part, Duration::from_secs(10)) {
        return Err(DataError::Create {
            disk,
            why: format!("/dev/{part} did not appear"),
        });
    }
    let dev = PathBuf::from("/dev").join(&part);
    let clean = if created { None } else { ext4_clean(&dev) };
    sys_mount(
        Some(&dev),
        "/var",
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|source| DataError::Mount {
        dev: dev.display().to_string(),
        source,
    })?;
    Ok(DataState {
        device: dev.display().to_string(),
        created,
        clean,
    })
}

/// Lays out /var: the directories services expect, and /var/run, /var/lock links.
pub fn layout() {
    for d in [
        "/var/lib/cairn",
        "/var/log/cairn",
        "/var/lib/lxcfs",
        "/var/lib/lxc",
        "/var/lib/openvswitch",
        "/var/lib/ovn",
        "/var/log/openvswitch",
        "/var/log/ovn",
        "/var/lib/dhcpcd",
        "/var/cache",
        "/var/tmp",
        "/run/cairn",
        "/run/openvswitch",
        "/run/ovn",
        "/run/lock",
    ] {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::set_permissions(
        "/var/tmp",
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    );
    for (link, target) in [("/var/run", "/run"), ("/var/lock", "/run/lock")] {
        if std::fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
}

/// A persistent machine id on /var, bind-mounted over the root's empty /etc/machine-id.
pub fn machine_id() -> String {
    let path = Path::new("/var/lib/cairn/machine-id");
    let id = match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() == 32 => s.trim().to_string(),
        _ => {
            let mut b = [0u8; 16];
            let _ = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
            let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
            let _ = std::fs::write(path, format!("{id}\n"));
            id
        }
    };
    let _ = std::fs::write("/run/machine-id", format!("{id}\n"));
    if Path::new("/etc/machine-id").exists() && !mount::is_mountpoint("/etc/machine-id") {
        let _ = mount::bind(Path::new("/run/machine-id"), Path::new("/etc/machine-id"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(state: u16, incompat: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        b[0x3A..0x3C].copy_from_slice(&state.to_le_bytes());
        b[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        b
    }

    #[test]
    fn ext4_state() {
        assert_eq!(ext4_clean_from_superblock(&sb(1, 0x2c2)), Some(true));
        assert_eq!(ext4_clean_from_superblock(&sb(1, 0x2c6)), Some(false));
        assert_eq!(ext4_clean_from_superblock(&sb(0, 0)), Some(false));
        assert_eq!(ext4_clean_from_superblock(&sb(3, 0)), Some(false));
        assert_eq!(ext4_clean_from_superblock(&[0u8; 1024]), None);
    }
}
