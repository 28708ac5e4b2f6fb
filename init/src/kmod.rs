//! Kernel modules: in the initrd, load pre-ordered, uncompressed modules with finit_module;
//! in the root, ask kmod's `modprobe` (it resolves dependencies and compression).

use crate::info;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Loads one module file. Already-loaded modules are not an error.
pub fn load_file(path: &Path) -> Result<(), std::io::Error> {
    let f = File::open(path)?;
    let params = CString::default();
    // SAFETY: finit_module reads the module from the fd and the NUL-terminated params.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// Loads the modules named (one per line) in `list`, from `dir`, in order.
pub fn load_listed(list: &Path, dir: &Path) {
    let Ok(text) = std::fs::read_to_string(list) else {
        return;
    };
    for name in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Err(e) = load_file(&dir.join(name)) {
            info!("loading module {name}: {e}");
        }
    }
}

/// What cairnd's first managed bridge needs (the bridge, a veth per container, its nft
/// table with NAT). Loaded at boot at normal priority: left to the nice-19 host-module
/// job, the kernel's own on-demand load waited behind it for 100-140 s under emulation.
pub const BRIDGE_MODULES: &[&str] = &[
    "bridge",
    "veth",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "nft_ct",
    "nf_nat",
];

/// The modules an appliance host needs; missing ones (built in, or not in this kernel) are
/// reported and skipped.
pub const HOST_MODULES: &[&str] = &[
    "qemu_fw_cfg",
    "button",
    "evdev",
    "virtio_net",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "mlx5_core",
    "bnxt_en",
    "bridge",
    "br_netfilter",
    "overlay",
    "veth",
    "vxlan",
    "geneve",
    "openvswitch",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "nft_ct",
    "nf_nat",
    "tun",
    "fuse",
    "ext4",
    "loop",
    "dm_mod",
    "zfs",
];

/// Loads those of `names` that are neither loaded (the initrd loads most of what PID 1
/// needs early) nor built in, with one modprobe run.
pub fn ensure(names: &[&str]) {
    let builtin = std::fs::read_to_string(format!(
        "/usr/lib/modules/{}/modules.builtin",
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default()
    ))
    .unwrap_or_default();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !present(n, &builtin))
        .collect();
    if !missing.is_empty() {
        modprobe_all(&missing);
    }
}

/// Whether module `name` is loaded (in /sys/module) or listed in `builtin`
/// (modules.builtin's text: paths like kernel/fs/fat/vfat.ko).
fn present(name: &str, builtin: &str) -> bool {
    let name = name.replace('-', "_");
    Path::new("/sys/module").join(&name).exists()
        || builtin.lines().any(|l| {
            l.rsplit('/')
                .next()
                .and_then(|f| f.split(".ko").next())
                .is_some_and(|m| m.replace('-', "_") == name)
        })
}

/// Loads all `names` with one modprobe run (`-a`, `-b`: honour blacklists, `-q`: quiet).
pub fn modprobe_all(names: &[&str]) {
    let status = crate::supervisor::command("/usr/sbin/modprobe")
        .args(["-a", "-b", "-q"])
        .args(names)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(_) => {
            // Some are missing: load one by one to say which.
            for n in names {
                let ok = crate::supervisor::command("/usr/sbin/modprobe")
                    .args(["-b", "-q", n])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if !ok {
                    info!("module {n} not loaded");
                }
            }
        }
        Err(e) => info!("running modprobe: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_modules_count_as_present() {
        let builtin = "kernel/fs/fat/cairn-test-fat.ko\nkernel/net/cairn_test_net.ko\n";
        assert!(present("cairn_test_fat", builtin));
        assert!(present("cairn-test-net", builtin));
        assert!(!present("cairn_test_fa", builtin));
        assert!(!present("cairn_test_absent", ""));
    }
}
