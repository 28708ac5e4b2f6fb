//! Creating nodes and setting attributes relative to a directory fd, never through a symlink.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::entry::{Attrs, Xattr};

pub(super) fn dup_fd(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

/// Runs `create`; if the name is taken by an earlier entry (tar archives may
/// repeat a path, and the later one wins), removes it and runs `create` again.
/// A directory is never removed: replacing a directory would silently drop
/// what an earlier part of the archive put in it.
pub(super) fn replace_existing<T>(
    parent: RawFd,
    name: &[u8],
    mut create: impl FnMut(RawFd) -> nix::Result<T>,
) -> io::Result<T> {
    match create(parent) {
        Ok(value) => Ok(value),
        Err(Errno::EEXIST) => {
            let stat = fstatat(Some(parent), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "an earlier entry made a directory at this path",
                ));
            }
            unlinkat(Some(parent), name, UnlinkatFlags::NoRemoveDir)?;
            Ok(create(parent)?)
        }
        Err(errno) => Err(errno.into()),
    }
}

/// Creates a directory, or accepts an existing one (an implicit parent made
/// earlier, or a repeated entry); anything else at that name is replaced.
pub(super) fn make_dir(parent: RawFd, name: &[u8]) -> io::Result<()> {
    replace_existing(parent, name, |fd| {
        match mkdirat(Some(fd), name, Mode::from_bits_truncate(0o700)) {
            Err(Errno::EEXIST) => {
                let stat = fstatat(Some(fd), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
                if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
                {
                    Ok(())
                } else {
                    Err(Errno::EEXIST)
                }
            }
            other => other,
        }
    })
}

/// Sets extended attributes on an open file. A filesystem without xattr
/// support loses them with a warning, as tar does, rather than failing the
/// whole image.
pub(super) fn set_xattrs(fd: RawFd, xattrs: &[Xattr], shown: &str) -> io::Result<()> {
    for xattr in xattrs {
        // SAFETY: `name` is NUL-terminated and `value` is a live buffer of the
        // given length for the duration of the call.
        let rc = unsafe {
            libc::fsetxattr(
                fd,
                xattr.name.as_ptr(),
                xattr.value.as_ptr().cast(),
                xattr.value.len(),
                0,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
                tracing::warn!(entry = %shown, xattr = ?xattr.name, "filesystem does not support extended attributes; dropped");
                continue;
            }
            return Err(io::Error::new(
                err.kind(),
                format!("setting extended attribute {:?}: {err}", xattr.name),
            ));
        }
    }
    Ok(())
}

/// Whether `name` in `parent` is a symlink (not followed). Linux reports a
/// symlink opened with `O_DIRECTORY | O_NOFOLLOW` as ENOTDIR, like a file.
pub(super) fn is_symlink(parent: RawFd, name: &[u8]) -> bool {
    fstatat(Some(parent), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|stat| {
            SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK
        })
        .unwrap_or(false)
}

fn timespec(secs: i64) -> TimeSpec {
    TimeSpec::new(secs as libc::time_t, 0)
}

/// Owner first, then mode: chown clears setuid/setgid bits.
pub(super) fn set_fd_attrs(fd: RawFd, attrs: Attrs) -> io::Result<()> {
    fchown(
        fd,
        Some(Uid::from_raw(attrs.uid)),
        Some(Gid::from_raw(attrs.gid)),
    )?;
    fchmod(fd, Mode::from_bits_truncate(attrs.mode as libc::mode_t))?;
    futimens(fd, &timespec(attrs.mtime), &timespec(attrs.mtime))?;
    Ok(())
}

/// A symlink's owner and mtime, set on the link itself (its mode is fixed).
pub(super) fn set_link_attrs(parent: RawFd, name: &[u8], attrs: Attrs) -> io::Result<()> {
    fchownat(
        Some(parent),
        name,
        Some(Uid::from_raw(attrs.uid)),
        Some(Gid::from_raw(attrs.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    utimensat(
        Some(parent),
        name,
        &timespec(attrs.mtime),
        &timespec(attrs.mtime),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// Attributes of a node that cannot be opened for writing (a fifo). The name
/// was just created by this process and nothing else writes here, so
/// following it is not a risk; fchmodat cannot refuse symlinks on Linux.
pub(super) fn set_node_attrs(parent: RawFd, name: &[u8], attrs: Attrs) -> io::Result<()> {
    fchownat(
        Some(parent),
        name,
        Some(Uid::from_raw(attrs.uid)),
        Some(Gid::from_raw(attrs.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    fchmodat(
        Some(parent),
        name,
        Mode::from_bits_truncate(attrs.mode as libc::mode_t),
        FchmodatFlags::FollowSymlink,
    )?;
    utimensat(
        Some(parent),
        name,
        &timespec(attrs.mtime),
        &timespec(attrs.mtime),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}
