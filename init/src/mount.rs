//! The API filesystems PID 1 mounts before anything else.

use crate::info;
use nix::mount::{mount, MsFlags};
use std::path::Path;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    /// A missing filesystem (e.g. bpf on a kernel without it) is logged, not fatal.
    optional: bool,
    /// Mounted once the host modules are loaded ([`late_filesystems`]) rather than at the
    /// start: nothing on the way to the API needs it, and mounting bpffs costs most of a
    /// second under TCG.
    late: bool,
}

fn table() -> Vec<Mount> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    vec![
        Mount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nosuid_nodev_noexec,
            data: None,
            optional: false,
            late: false,
        },
        Mount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid_nodev_noexec,
            data: None,
            optional: false,
            late: false,
        },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
            optional: false,
            late: false,
        },
        Mount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("gid=5,mode=0620,ptmxmode=0666"),
            optional: false,
            late: false,
        },
        Mount {
            source: "tmpfs",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
            optional: false,
            late: false,
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755,size=20%"),
            optional: false,
            late: false,
        },
        Mount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777,size=20%"),
            optional: false,
            late: false,
        },
        Mount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: nosuid_nodev_noexec,
            data: Some("nsdelegate,memory_recursiveprot"),
            optional: false,
            late: false,
        },
        Mount {
            source: "securityfs",
            target: "/sys/kernel/security",
            fstype: "securityfs",
            flags: nosuid_nodev_noexec,
            data: None,
            optional: true,
            late: false,
        },
        Mount {
            source: "bpf",
            target: "/sys/fs/bpf",
            fstype: "bpf",
            flags: nosuid_nodev_noexec,
            data: Some("mode=0700"),
            optional: true,
            late: true,
        },
        Mount {
            source: "debugfs",
            target: "/sys/kernel/debug",
            fstype: "debugfs",
            flags: nosuid_nodev_noexec,
            data: None,
            optional: true,
            late: false,
        },
        Mount {
            source: "tracefs",
            target: "/sys/kernel/tracing",
            fstype: "tracefs",
            flags: nosuid_nodev_noexec,
            data: None,
            optional: true,
            late: false,
        },
        Mount {
            source: "fusectl",
            target: "/sys/fs/fuse/connections",
            fstype: "fusectl",
            flags: nosuid_nodev_noexec,
            data: None,
            optional: true,
            late: false,
        },
        Mount {
            source: "configfs",
            target: "/sys/kernel/config",
            fstype: "configfs",
            flags: nosuid_nodev_noexec,
            data: None,
            optional: true,
            late: false,
        },
    ]
}

/// Whether `path` is a mount point (it is on a different device than its parent, or is /).
pub fn is_mountpoint(path: &str) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mountinfo_has(&text, path)
}

/// Whether a /proc/self/mountinfo text lists a mount on `path`.
pub fn mountinfo_has(mountinfo: &str, path: &str) -> bool {
    mountinfo
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path))
}

/// Mounts the API filesystems that are not mounted yet (the initrd moved /proc, /sys, /dev).
pub fn api_filesystems() {
    mount_all(table().into_iter().filter(|m| !m.late));
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
}

/// Mounts the API filesystems that wait for the host modules (bpffs).
pub fn late_filesystems() {
    mount_all(table().into_iter().filter(|m| m.late));
}

fn mount_all(mounts: impl Iterator<Item = Mount>) {
    for m in mounts {
        // /proc must be up before is_mountpoint can answer.
        if Path::new("/proc/self/mountinfo").exists() && is_mountpoint(m.target) {
            continue;
        }
        let _ = std::fs::create_dir_all(m.target);
        let t = std::time::Instant::now();
        let r = mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data);
        // A slow mount shows in the boot stages; say which one it was.
        if t.elapsed() > std::time::Duration::from_millis(100) {
            info!("mounting {} took {} ms", m.target, t.elapsed().as_millis());
        }
        if let Err(e) = r {
            if !m.optional {
                info!("mounting {} on {}: {e}", m.fstype, m.target);
            }
        }
    }
}

/// Bind-mounts `source` onto `target` (both must exist).
pub fn bind(source: &Path, target: &Path) -> nix::Result<()> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mount_points_in_mountinfo() {
        let mi = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n25 1 259:6 / /var rw - ext4 /dev/nvme0n1p6 rw\n";
        assert!(mountinfo_has(mi, "/var"));
        assert!(mountinfo_has(mi, "/proc"));
        assert!(!mountinfo_has(mi, "/run"));
    }
}
