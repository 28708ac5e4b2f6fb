//! Thin wrappers over the fd-relative syscalls used here; none follows a final symlink unasked.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use crate::instance::idmap::IdShift;

use super::{Entry, FileKind, FsStats};

pub(super) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens a name in a directory without following it if it is a symlink.
pub(super) fn openat_nofollow(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the inode behind an O_PATH fd again with real access flags.
pub(super) fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let proc_path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
    let fd = cvt(unsafe {
        libc::open(
            proc_path.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    Ok(unsafe { st.assume_init() })
}

pub(super) fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(unsafe { st.assume_init() })
}

pub(super) fn lstat_at(dir: BorrowedFd<'_>, name: &CStr, shift: &IdShift) -> io::Result<Entry> {
    let st = fstatat_nofollow(dir, name)?;
    let mut entry = Entry::from_stat(&st, shift);
    if entry.kind == FileKind::Symlink {
        entry.target = Some(readlink_at(dir, name)?);
    }
    Ok(entry)
}

pub(super) fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<String> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Names in an open directory (without `.` and `..`); consumes the fd.
pub(super) fn read_dir_fd(fd: OwnedFd) -> io::Result<Vec<String>> {
    let raw = fd.into_raw_fd();
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        let err = io::Error::last_os_error();
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
        return Err(err);
    }
    let mut names = Vec::new();
    let result = loop {
        // readdir returns NULL both at the end and on error: tell by errno.
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            let errno = io::Error::last_os_error();
            break match errno.raw_os_error() {
                Some(0) | None => Ok(()),
                _ => Err(errno),
            };
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    };
    unsafe { libc::closedir(dir) };
    result.map(|()| names)
}

pub(super) fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

/// chown of the inode behind any fd (O_PATH included); u32::MAX keeps a field.
pub(super) fn fchown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    cvt(unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) })?;
    Ok(())
}

/// chmod of the inode behind any fd (O_PATH included): fchmodat2 with
/// AT_EMPTY_PATH (Linux 6.6+), else through /proc/self/fd.
pub(super) fn fchmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode,
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
            let proc_path =
                CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
            cvt(unsafe { libc::chmod(proc_path.as_ptr(), mode) })?;
            Ok(())
        }
        _ => Err(err),
    }
}

/// utimens of the inode behind any fd (O_PATH included).
pub(super) fn futimens_fd(fd: BorrowedFd<'_>, ts: &[libc::timespec; 2]) -> io::Result<()> {
    let r = unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            ts.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => {
            let proc_path =
                CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
            cvt(unsafe { libc::utimensat(libc::AT_FDCWD, proc_path.as_ptr(), ts.as_ptr(), 0) })?;
            Ok(())
        }
        _ => Err(err),
    }
}

// statvfs field types differ between architectures.
#[allow(clippy::unnecessary_cast)]
pub(super) fn fs_stats_fd(fd: BorrowedFd<'_>) -> io::Result<FsStats> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    let st = unsafe { st.assume_init() };
    Ok(FsStats {
        block_size: st.f_bsize as u64,
        fragment_size: st.f_frsize as u64,
        blocks: st.f_blocks as u64,
        blocks_free: st.f_bfree as u64,
        blocks_available: st.f_bavail as u64,
        files: st.f_files as u64,
        files_free: st.f_ffree as u64,
        files_available: st.f_favail as u64,
        fsid: st.f_fsid as u64,
        flags: st.f_flag as u64,
        name_max: st.f_namemax as u64,
    })
}
