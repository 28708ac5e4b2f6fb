//! Subvolumes without the CLI: the snapshot ioctl (the hot path of launch and snapshot)
//! and finding the subvolumes a container made inside its own.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `struct btrfs_ioctl_vol_args_v2` (linux/btrfs.h): 4096 bytes.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

nix::ioctl_write_ptr!(btrfs_snap_create_v2, 0x94, 23, VolArgsV2);

/// Snapshots subvolume `src` as `dst` (whose parent must exist on the same filesystem).
pub(super) fn snapshot_ioctl(src: &Path, dst: &Path, readonly: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    let (Some(parent), Some(name)) = (dst.parent(), dst.file_name()) else {
        return Err(invalid("a snapshot needs a parent directory and a name"));
    };
    let name = name.as_bytes();
    if name.len() >= 4040 || name.contains(&0) {
        return Err(invalid("snapshot name too long or holding a NUL"));
    }
    let dir = |p: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(p)
    };
    let src_fd = dir(src)?;
    let parent_fd = dir(parent)?;
    let mut args = VolArgsV2 {
        fd: src_fd.as_raw_fd() as i64,
        transid: 0,
        flags: if readonly { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; 4040],
    };
    args.name[..name.len()].copy_from_slice(name);
    // SAFETY: args is a valid, fully initialised vol_args_v2 that outlives the call; both
    // fds are open directories.
    unsafe { btrfs_snap_create_v2(parent_fd.as_raw_fd(), &args) }
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// A btrfs subvolume's root directory has inode 256.
pub(super) fn is_subvolume(md: &fs::Metadata) -> bool {
    md.is_dir() && md.ino() == 256
}

/// Subvolumes below `dir`, parents before children. A nested subvolume has its own st_dev.
pub(super) fn nested_subvolumes(
    dir: &Path,
    dev: u64,
    out: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let md = entry.metadata()?;
        if !md.is_dir() {
            continue;
        }
        let p = entry.path();
        if md.dev() != dev && is_subvolume(&md) {
            out.push(p.clone());
            nested_subvolumes(&p, md.dev(), out)?;
        } else if md.dev() == dev {
            nested_subvolumes(&p, dev, out)?;
        }
    }
    Ok(())
}
