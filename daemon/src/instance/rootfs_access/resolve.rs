//! Container paths to fds via `openat2(RESOLVE_IN_ROOT)` on the rootfs fd, and to their parents.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::path::{container_cpath, split_path};
use super::sys::read_dir_fd;
use super::{FsError, RootfsAccess};

/// How often a path resolution is retried when openat2 reports a concurrent rename.
const OPENAT2_RETRIES: usize = 16;

/// `struct open_how` of linux/openat2.h (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2 with the root as "/": `..` stops at the root, absolute symlinks
/// start from it, and magic links (/proc/*/fd/*) are refused.
pub(super) fn openat2_in_root(
    root: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
            mode as u64
        } else {
            0
        },
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    let mut tries = 0;
    loop {
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // EAGAIN: a rename raced with a RESOLVE_IN_ROOT lookup.
            Some(libc::EAGAIN) | Some(libc::EINTR) if tries < OPENAT2_RETRIES => tries += 1,
            _ => return Err(err),
        }
    }
}

impl RootfsAccess {
    /// Resolves a whole path inside the root (following symlinks inside it).
    pub(super) fn resolve(
        &self,
        path: &str,
        flags: i32,
        op: &'static str,
    ) -> Result<OwnedFd, FsError> {
        let c = container_cpath(path)?;
        openat2_in_root(self.root.as_fd(), &c, flags, 0).map_err(|e| FsError::from_io(op, path, e))
    }

    /// Opens `path` with `flags`; with `create`, creates it if missing.
    /// Returns whether this call created it.
    pub(super) fn open_maybe_create(
        &self,
        path: &str,
        flags: i32,
        create: bool,
        exclusive: bool,
    ) -> Result<(OwnedFd, bool), FsError> {
        let c = container_cpath(path)?;
        let open = |extra: i32| openat2_in_root(self.root.as_fd(), &c, flags | extra, 0o600);
        if !create {
            return open(0)
                .map(|fd| (fd, false))
                .map_err(|e| FsError::from_io("open", path, e));
        }
        if exclusive {
            return open(libc::O_CREAT | libc::O_EXCL)
                .map(|fd| (fd, true))
                .map_err(|e| FsError::from_io("create", path, e));
        }
        // Know whether we create the file (to give it to the container):
        // exclusive create first, then plain open; a dangling symlink makes
        // both fail, then a plain O_CREAT creates its target.
        let mut last = None;
        for _ in 0..3 {
            match open(libc::O_CREAT | libc::O_EXCL) {
                Ok(fd) => return Ok((fd, true)),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(FsError::from_io("create", path, e)),
            }
            match open(0) {
                Ok(fd) => return Ok((fd, false)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(FsError::from_io("open", path, e)),
            }
            match open(libc::O_CREAT) {
                Ok(fd) => return Ok((fd, true)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => last = Some(e),
                Err(e) => return Err(FsError::from_io("create", path, e)),
            }
        }
        Err(FsError::from_io(
            "create",
            path,
            last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::ENOENT)),
        ))
    }

    pub(super) fn dir_names(&self, path: &str) -> Result<(OwnedFd, Vec<String>), FsError> {
        let fd = self.resolve(path, libc::O_RDONLY | libc::O_DIRECTORY, "readdir")?;
        let dup = fd
            .try_clone()
            .map_err(|e| FsError::from_io("readdir", path, e))?;
        let names = read_dir_fd(dup).map_err(|e| FsError::from_io("readdir", path, e))?;
        Ok((fd, names))
    }

    /// The parent directory (opened inside the root) and final name of a
    /// path; `None` for the root itself.
    pub(super) fn parent_of(
        &self,
        path: &str,
        op: &'static str,
    ) -> Result<Option<(OwnedFd, CString)>, FsError> {
        let Some((parent, name)) = split_path(path)? else {
            return Ok(None);
        };
        let cparent = container_cpath(parent)?;
        let fd = openat2_in_root(
            self.root.as_fd(),
            &cparent,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| FsError::from_io(op, path, e))?;
        let cname = CString::new(name).expect("checked for NUL");
        Ok(Some((fd, cname)))
    }

    pub(super) fn parent_of_required(
        &self,
        path: &str,
        op: &'static str,
    ) -> Result<(OwnedFd, CString), FsError> {
        self.parent_of(path, op)?
            .ok_or_else(|| FsError::InvalidPath {
                path: path.into(),
                reason: "is the root directory",
            })
    }
}
