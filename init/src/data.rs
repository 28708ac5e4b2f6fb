//! The data partition: the only writable storage, mounted on /var. Created on first boot
//! in the free space of the boot disk: appended to the GPT here (gpt_append.rs) and
//! formatted with mkfs.ext4, or by systemd-repart (definitions in /usr/lib/cairn/repart.d)
//! should the table be one that code refuses to edit. Its ext4 state before mounting tells
//! whether the last shutdown was clean.

use crate::{gpt, gpt_append, info, mount};
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
    crate::wait_for_path(&Path::new("/dev").join(name), timeout)
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
            let t0 = Instant::now();
            let part = match append_partition(&disk) {
                Ok(p) => p,
                Err(e) => {
                    info!("data: {e}; creating it with systemd-repart instead");
                    repart(&disk)?
                }
            };
            info!("data: {part} created in {} ms", t0.elapsed().as_millis());
            created = true;
            part
        }
    };
    if !wait_for_node(&part, Duration::from_secs(10)) {
        return Err(DataError::Create {
            disk,
            why: format!("/dev/{part} did not appear"),
        });
    }
    let dev = PathBuf::from("/dev").join(&part);
    if never_formatted(&dev) {
        // In the table but never formatted: the first boot stopped between the two (a
        // power cut), or repart left it so. Nothing is lost by formatting it now.
        info!(
            "data: {} has no filesystem yet: formatting it",
            dev.display()
        );
        mkfs(&dev).map_err(|why| DataError::Create {
            disk: disk.clone(),
            why,
        })?;
        created = true;
    }
    let t_mount = Instant::now();
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
    info!("data: mounted in {} ms", t_mount.elapsed().as_millis());
    Ok(DataState {
        device: dev.display().to_string(),
        created,
        clean,
    })
}

/// Creates the data partition with systemd-repart (definitions in /usr/lib/cairn/repart.d):
/// the slower way, kept for a table [`append_partition`] refuses to edit.
fn repart(disk: &str) -> Result<String, DataError> {
    // repart formats through a loop device.
    crate::kmod::ensure(&["loop", "ext4"]);
    let out = crate::supervisor::command("/usr/bin/systemd-repart")
        .env("SYSTEMD_LOG_LEVEL", "debug")
        .env("SYSTEMD_LOG_TARGET", "console")
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
            disk: disk.into(),
            why: format!("running systemd-repart: {e}"),
        })?;
    if !out.status.success() {
        return Err(DataError::Create {
            disk: disk.into(),
            why: format!(
                "systemd-repart {}: {}",
                out.status,
                tail_lines(&String::from_utf8_lossy(&out.stderr), 12)
            ),
        });
    }
    find_partition(disk)?.ok_or_else(|| DataError::Create {
        disk: disk.into(),
        why: "systemd-repart succeeded but no partition is labelled cairn-data".into(),
    })
}

/// Adds the data partition over the disk's free space (see gpt_append.rs) and formats it.
fn append_partition(disk: &str) -> Result<String, String> {
    const LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
    const MIN_BYTES: u64 = 512 << 20;
    let dev = Path::new("/dev").join(disk);
    let sector =
        std::fs::read_to_string(format!("/sys/class/block/{disk}/queue/logical_block_size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(512);
    let mut unique = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut unique))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    unique[6] = (unique[6] & 0x0f) | 0x40; // a version 4 GUID
    unique[8] = (unique[8] & 0x3f) | 0x80;
    let type_guid = gpt_append::guid_bytes(LINUX_DATA).ok_or("bad type GUID")?;
    let added = gpt_append::append(&dev, sector, type_guid, unique, LABEL, MIN_BYTES)
        .map_err(|e| e.to_string())?;
    gpt_append::announce(&dev, &added)
        .map_err(|e| format!("telling the kernel about partition {}: {e}", added.number))?;
    let part = gpt::partition_name(disk, added.number);
    if !wait_for_node(&part, Duration::from_secs(10)) {
        return Err(format!("/dev/{part} did not appear"));
    }
    mkfs(&Path::new("/dev").join(&part))?;
    Ok(part)
}

/// Formats the data partition: ext4 as repart made it, inode tables and journal zeroed
/// lazily (zeroing them up front was most of a first boot's mkfs time).
fn mkfs(dev: &Path) -> Result<(), String> {
    let out = crate::supervisor::command("/usr/sbin/mkfs.ext4")
        .args([
            "-q", "-F", "-L", LABEL, "-m", "0", "-I", "256", "-T", "default",
        ])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(dev)
        .output()
        .map_err(|e| format!("running mkfs.ext4: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 {} {}: {}",
            dev.display(),
            out.status,
            tail_lines(&String::from_utf8_lossy(&out.stderr), 6)
        ));
    }
    Ok(())
}

/// Whether neither the primary ext4 superblock nor the first backup (block group 1 of a
/// 4 KiB-block filesystem) is there: a partition that was never formatted, as opposed to
/// one whose primary superblock was damaged (that one e2fsck can still recover).
fn never_formatted(dev: &Path) -> bool {
    let Ok(mut f) = File::open(dev) else {
        return false;
    };
    let magic_at = |f: &mut File, at: u64| -> Option<bool> {
        let mut b = [0u8; 2];
        f.seek(SeekFrom::Start(at + 0x38)).ok()?;
        f.read_exact(&mut b).ok()?;
        Some(u16::from_le_bytes(b) == 0xEF53)
    };
    magic_at(&mut f, 1024) == Some(false) && magic_at(&mut f, 32768 * 4096) != Some(true)
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
        "/var/cache",
        "/var/tmp",
        "/run/cairn",
        "/run/cairn/dhcp",
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
            if let Err(e) = crate::write_durably(path, format!("{id}\n").as_bytes()) {
                info!("keeping the machine id in {}: {e}", path.display());
            }
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
