//! The initrd stage: find the root slot named by `roothash=`, verify it with dm-verity,
//! mount it read-only and switch root into PID 1. On any failure the boot is refused
//! (`cairn: boot refused: …`) and the machine powers off after a short pause, so a corrupted
//! slot never runs.

use crate::{console, gpt, info, kmod, verity};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SYSROOT: &str = "/sysroot";
const DEFAULT_INIT: &str = "/usr/bin/cairn-init";

/// The kernel command line parameters this stage reads.
#[derive(Debug, Default, PartialEq)]
pub struct Cmdline {
    pub roothash: Option<String>,
    pub slot: Option<String>,
    pub init: Option<String>,
    pub debug: bool,
}

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut c = Cmdline::default();
        for word in text.split_whitespace() {
            match word.split_once('=') {
                Some(("roothash", v)) => c.roothash = Some(v.to_string()),
                Some(("cairn.slot", v)) => c.slot = Some(v.to_string()),
                Some(("init", v)) => c.init = Some(v.to_string()),
                Some(("cairn.debug", v)) => c.debug = v == "1",
                _ => {}
            }
        }
        c
    }
}

pub fn run() -> ! {
    let _ = mount_fs("proc", "/proc", "proc");
    let _ = mount_fs("sysfs", "/sys", "sysfs");
    let _ = mount_fs("devtmpfs", "/dev", "devtmpfs");
    console::attach();
    console::stage("initrd-start");
    let cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());

    kmod::load_listed(
        Path::new("/etc/cairn/initrd-modules"),
        Path::new("/lib/modules"),
    );
    console::stage("initrd-modules");

    match mount_root(&cmdline) {
        Ok(()) => {}
        Err(e) => refuse(&e),
    }
    console::stage("initrd-root-mounted");
    let init = cmdline.init.clone().unwrap_or_else(|| DEFAULT_INIT.into());
    if let Err(e) = switch_root(&init) {
        refuse(&format!("switching root to {init}: {e}"));
    }
    unreachable_halt()
}

fn mount_fs(src: &str, target: &str, fstype: &str) -> nix::Result<()> {
    let _ = std::fs::create_dir_all(target);
    mount(
        Some(src),
        target,
        Some(fstype),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}

/// Finds root data + hash partitions, sets up dm-verity and mounts the root on /sysroot.
fn mount_root(cmdline: &Cmdline) -> Result<(), String> {
    let roothash = cmdline
        .roothash
        .as_deref()
        .ok_or("no roothash= on the kernel command line")?;
    if roothash.len() < 64 {
        return Err(format!("roothash {roothash:?} is too short"));
    }
    let data_uuid = gpt::hex_to_uuid(&roothash[..32]).ok_or("roothash is not hex")?;
    let hash_uuid =
        gpt::hex_to_uuid(&roothash[roothash.len() - 32..]).ok_or("roothash is not hex")?;
    let slot = cmdline.slot.clone().unwrap_or_else(|| "a".into());

    let deadline = Instant::now() + Duration::from_secs(30);
    let (data, hash) = loop {
        if let Some(found) = find_partitions(&data_uuid, &hash_uuid, &slot) {
            break found;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no root partitions for roothash (uuids {data_uuid} / {hash_uuid}, slot {slot})"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    info!("root data {} hash {}", data.0, hash.0);

    let sb =
        verity::Superblock::read(&Path::new("/dev").join(&hash.0)).map_err(|e| e.to_string())?;
    let (sectors, table) = sb.table(&data.1, &hash.1, roothash);
    let (major, minor) =
        verity::dm_create("root", "verity", sectors, &table).map_err(|e| e.to_string())?;
    let node = "/dev/cairn-root";
    let dev = libc::makedev(major, minor);
    let cnode = CString::new(node).map_err(|e| e.to_string())?;
    // SAFETY: mknod with a valid C string; an existing node is fine.
    unsafe { libc::mknod(cnode.as_ptr(), libc::S_IFBLK | 0o600, dev) };

    let _ = std::fs::create_dir_all(SYSROOT);
    mount(
        Some(node),
        SYSROOT,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("mounting the verified root (erofs on {node}): {e}"))?;
    // Touch the init binary so a corrupted block in it refuses the boot here, not later.
    let init = Path::new(SYSROOT).join(DEFAULT_INIT.trim_start_matches('/'));
    std::fs::read(&init).map_err(|e| format!("reading {}: {e}", init.display()))?;
    Ok(())
}

/// (kernel name, "major:minor") of the root data and hash partitions. Matches GPT unique
/// GUIDs derived from the root hash (what systemd-repart writes); falls back to the slot
/// labels root-<slot> / root-<slot>-verity.
fn find_partitions(
    data_uuid: &str,
    hash_uuid: &str,
    slot: &str,
) -> Option<((String, String), (String, String))> {
    let disks = std::fs::read_dir("/sys/block").ok()?;
    for d in disks.flatten() {
        let disk = d.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "dm-", "zram", "sr"]
            .iter()
            .any(|p| disk.starts_with(p))
        {
            continue;
        }
        let Ok(parts) = gpt::read_disk(&Path::new("/dev").join(&disk)) else {
            continue;
        };
        let by = |f: &dyn Fn(&gpt::Partition) -> bool| parts.iter().find(|p| f(p)).cloned();
        let data = by(&|p| p.unique_guid == data_uuid)
            .or_else(|| by(&|p| p.name == format!("root-{slot}")));
        let hash = by(&|p| p.unique_guid == hash_uuid)
            .or_else(|| by(&|p| p.name == format!("root-{slot}-verity")));
        if let (Some(data), Some(hash)) = (data, hash) {
            let resolve = |p: &gpt::Partition| {
                let name = gpt::partition_name(&disk, p.number);
                let dev = std::fs::read_to_string(format!("/sys/class/block/{name}/dev")).ok()?;
                Path::new("/dev").join(&name).exists().then_some(())?;
                Some((name, dev.trim().to_string()))
            };
            return Some((resolve(&data)?, resolve(&hash)?));
        }
    }
    None
}

fn switch_root(init: &str) -> Result<(), String> {
    for m in ["/dev", "/proc", "/sys"] {
        let target = PathBuf::from(SYSROOT).join(&m[1..]);
        if mount(
            Some(m),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .is_err()
        {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
    }
    // Free the initramfs: the modules are loaded and this binary is running.
    let _ = std::fs::remove_dir_all("/lib/modules");
    let _ = std::fs::remove_file("/init");
    std::env::set_current_dir(SYSROOT).map_err(|e| e.to_string())?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving {SYSROOT} to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| e.to_string())?;
    console::stage("initrd-exec");
    let path = CString::new(init).map_err(|e| e.to_string())?;
    let argv = [path.clone()];
    let err = nix::unistd::execv(&path, &argv).err();
    Err(format!("exec: {err:?}"))
}

/// Refuses the boot: says why on the console and powers off.
fn refuse(why: &str) -> ! {
    info!("boot refused: {why}");
    std::thread::sleep(Duration::from_secs(2));
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    unreachable_halt()
}

fn unreachable_halt() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cmdline() {
        let c = Cmdline::parse("console=ttyS0 roothash=abc cairn.slot=b cairn.debug=1 init=/x");
        assert_eq!(c.roothash.as_deref(), Some("abc"));
        assert_eq!(c.slot.as_deref(), Some("b"));
        assert_eq!(c.init.as_deref(), Some("/x"));
        assert!(c.debug);
        assert_eq!(Cmdline::parse(""), Cmdline::default());
    }
}
