//! Copying and re-owning directory trees: the dir driver's way to make an instance from an
//! image (copy and shift ids in one pass), to snapshot and restore, and to re-shift a rootfs
//! when an instance changes between privileged and unprivileged.
//!
//! Nothing here follows a symlink: links are copied as links and re-owned with lchown.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::instance::idmap::IdShift;

/// How ids change on the way: `to = from - from_base + to_base`, per uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reshift {
    pub from_uid: u32,
    pub from_gid: u32,
    pub to_uid: u32,
    pub to_gid: u32,
}

impl Reshift {
    pub const NONE: Reshift = Reshift {
        from_uid: 0,
        from_gid: 0,
        to_uid: 0,
        to_gid: 0,
    };

    /// From one id map to another (an instance or volume re-owned for a new map).
    pub fn between(from: IdShift, to: IdShift) -> Reshift {
        Reshift {
            from_uid: from.uid_base,
            from_gid: from.gid_base,
            to_uid: to.uid_base,
            to_gid: to.gid_base,
        }
    }

    /// From root-owned files (an image) to `to`'s map.
    pub fn from_root(to: IdShift) -> Reshift {
        Reshift {
            from_uid: 0,
            from_gid: 0,
            to_uid: to.uid_base,
            to_gid: to.gid_base,
        }
    }

    fn is_none(&self) -> bool {
        self.from_uid == self.to_uid && self.from_gid == self.to_gid
    }

    fn uid(&self, id: u32) -> u32 {
        id.checked_sub(self.from_uid)
            .and_then(|v| v.checked_add(self.to_uid))
            .unwrap_or(id)
    }
    fn gid(&self, id: u32) -> u32 {
        id.checked_sub(self.from_gid)
            .and_then(|v| v.checked_add(self.to_gid))
            .unwrap_or(id)
    }
}

fn ctx(e: io::Error, what: &str, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
}

fn chown(p: &Path, md: &fs::Metadata, shift: Reshift) -> io::Result<()> {
    nix::unistd::fchownat(
        None,
        p,
        Some(Uid::from_raw(shift.uid(md.uid()))),
        Some(Gid::from_raw(shift.gid(md.gid()))),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| ctx(e.into(), "changing owner of", p))
}

fn set_times(p: &Path, md: &fs::Metadata) -> io::Result<()> {
    let at = TimeSpec::new(md.atime(), md.atime_nsec());
    let mt = TimeSpec::new(md.mtime(), md.mtime_nsec());
    utimensat(None, p, &at, &mt, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| ctx(e.into(), "setting times of", p))
}

/// Copies `src` (a directory) to `dst` (must not exist), shifting owners by `shift`, keeping
/// modes, times, symlinks, hard links, fifos and device nodes.
pub fn copy(src: &Path, dst: &Path, shift: Reshift) -> io::Result<()> {
    let mut links: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
    copy_dir(src, dst, shift, &mut links)
}

/// Makes the existing directory `dst` hold what `src` holds, and nothing else (owners,
/// modes and times of `src`'s root too): a volume refilled from a snapshot.
pub fn refill(src: &Path, dst: &Path) -> io::Result<()> {
    clear(dst)?;
    let mut links: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
    fill_dir(src, dst, Reshift::NONE, &mut links)
}

/// Removes everything inside the directory `p`, keeping `p`.
pub fn clear(p: &Path) -> io::Result<()> {
    for entry in fs::read_dir(p).map_err(|e| ctx(e, "listing", p))? {
        let entry = entry.map_err(|e| ctx(e, "listing", p))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| ctx(e, "reading", &path))?;
        if ft.is_dir() {
            remove(&path)?;
        } else {
            fs::remove_file(&path).map_err(|e| ctx(e, "removing", &path))?;
        }
    }
    Ok(())
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    shift: Reshift,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> io::Result<()> {
    fs::create_dir(dst).map_err(|e| ctx(e, "creating directory", dst))?;
    fill_dir(src, dst, shift, links)
}

fn fill_dir(
    src: &Path,
    dst: &Path,
    shift: Reshift,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> io::Result<()> {
    let md = fs::symlink_metadata(src).map_err(|e| ctx(e, "reading", src))?;
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(|e| ctx(e, "listing", src))?
        .collect::<Result<_, _>>()
        .map_err(|e| ctx(e, "listing", src))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let emd = fs::symlink_metadata(&s).map_err(|e| ctx(e, "reading", &s))?;
        let ft = emd.file_type();
        if ft.is_dir() {
            copy_dir(&s, &d, shift, links)?;
            continue;
        }
        if !ft.is_symlink() && emd.nlink() > 1 {
            if let Some(first) = links.get(&(emd.dev(), emd.ino())) {
                fs::hard_link(first, &d).map_err(|e| ctx(e, "linking", &d))?;
                continue;
            }
            links.insert((emd.dev(), emd.ino()), d.clone());
        }
        if ft.is_symlink() {
            let target = fs::read_link(&s).map_err(|e| ctx(e, "reading link", &s))?;
            std::os::unix::fs::symlink(&target, &d).map_err(|e| ctx(e, "creating link", &d))?;
        } else if ft.is_file() {
            fs::copy(&s, &d).map_err(|e| ctx(e, "copying", &s))?;
        } else {
            // fifo, socket, device: recreate the node itself.
            nix::sys::stat::mknod(
                &d,
                nix::sys::stat::SFlag::from_bits_truncate(emd.mode() & libc::S_IFMT),
                nix::sys::stat::Mode::from_bits_truncate(emd.mode() & 0o7777),
                emd.rdev(),
            )
            .map_err(|e| ctx(e.into(), "creating node", &d))?;
        }
        chown(&d, &emd, shift)?;
        if !ft.is_symlink() {
            // chown clears setuid/setgid bits: set the mode after it.
            fs::set_permissions(&d, fs::Permissions::from_mode(emd.mode() & 0o7777))
                .map_err(|e| ctx(e, "setting mode of", &d))?;
        }
        set_times(&d, &emd)?;
    }
    chown(dst, &md, shift)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
        .map_err(|e| ctx(e, "setting mode of", dst))?;
    set_times(dst, &md)?;
    Ok(())
}

/// Re-owns a tree in place.
pub fn reshift(root: &Path, shift: Reshift) -> io::Result<()> {
    if shift.is_none() {
        return Ok(());
    }
    let md = fs::symlink_metadata(root).map_err(|e| ctx(e, "reading", root))?;
    if md.is_dir() {
        for entry in fs::read_dir(root).map_err(|e| ctx(e, "listing", root))? {
            reshift(&entry?.path(), shift)?;
        }
    }
    chown(root, &md, shift)?;
    if !md.file_type().is_symlink() {
        fs::set_permissions(root, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(|e| ctx(e, "setting mode of", root))?;
    }
    Ok(())
}

/// Removes a tree if it exists.
pub fn remove(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| ctx(e, "removing", p)),
    }
}

/// Bytes used by a tree (apparent sizes), for the API's usage figures.
pub fn usage(p: &Path) -> u64 {
    let Ok(md) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !md.is_dir() {
        return md.len();
    }
    fs::read_dir(p)
        .map(|it| it.flatten().map(|e| usage(&e.path())).sum::<u64>())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn copy_shifts_owners_and_keeps_links_and_modes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/busybox"), b"elf").unwrap();
        symlink("/bin/busybox", src.join("bin/sh")).unwrap();
        fs::hard_link(src.join("bin/busybox"), src.join("bin/bb2")).unwrap();
        nix::unistd::chown(
            &src.join("bin/busybox"),
            Some(Uid::from_raw(5)),
            Some(Gid::from_raw(6)),
        )
        .unwrap();
        fs::set_permissions(src.join("bin/busybox"), fs::Permissions::from_mode(0o4755)).unwrap();

        let dst = t.path().join("dst");
        let shift = Reshift {
            from_uid: 0,
            from_gid: 0,
            to_uid: 1_000_000,
            to_gid: 1_000_000,
        };
        copy(&src, &dst, shift).unwrap();

        let md = fs::metadata(dst.join("bin/busybox")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1_000_005, 1_000_006));
        assert_eq!(md.mode() & 0o7777, 0o4755, "setuid survives chown");
        assert_eq!(
            fs::read_link(dst.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(
            fs::symlink_metadata(dst.join("bin/sh")).unwrap().uid(),
            1_000_000
        );
        assert_eq!(
            fs::metadata(dst.join("bin/bb2")).unwrap().ino(),
            md.ino(),
            "hard link kept"
        );
        assert_eq!(fs::metadata(&dst).unwrap().uid(), 1_000_000);

        // and back again, in place
        reshift(
            &dst,
            Reshift {
                from_uid: 1_000_000,
                from_gid: 1_000_000,
                to_uid: 0,
                to_gid: 0,
            },
        )
        .unwrap();
        assert_eq!(fs::metadata(dst.join("bin/busybox")).unwrap().uid(), 5);
        assert_eq!(usage(&dst), 3 + 3 + "/bin/busybox".len() as u64);
    }
}
