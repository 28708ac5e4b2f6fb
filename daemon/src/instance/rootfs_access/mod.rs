//! Reading and writing files inside a container's root filesystem from the host.
//!
//! A container's rootfs is a plain directory on the host whose contents the
//! container owns: it can plant symlinks such as `/etc -> /` or
//! `x -> ../../../..` to make a naive host-side path walk leave the rootfs.
//! Every path given here is a *container* path and is resolved with
//! `openat2(RESOLVE_IN_ROOT)` against a directory fd of the rootfs, so
//! symlinks (absolute or relative, `..` included) resolve as they would inside
//! the container and can never name a host file.
//!
//! Invariants:
//! - no host path is ever built from a container path: every operation goes
//!   through a file descriptor obtained by `openat2(RESOLVE_IN_ROOT)`, and
//!   final components are handled with `*at` calls that do not follow
//!   symlinks (or follow them through `openat2` again);
//! - only regular files are opened for reading or writing (never FIFOs or
//!   device nodes), and opening never blocks;
//! - owners are given and reported in container ids; they are shifted to host
//!   ids with [`IdShift`], and anything created here belongs to the container
//!   (its root by default), never to the host's root;
//! - error messages name container paths only, never host paths.
//!
//! Code map: [`RootfsAccess`] (here) holds the operations; `resolve` turns
//! container paths into file descriptors with `openat2(RESOLVE_IN_ROOT)` and
//! walks to parents; `path` splits and cleans container paths lexically;
//! `sys` wraps the fd-relative syscalls; `ids` shifts owners between
//! container and host ids; `entry`, `options` and `error` are the types
//! callers see; `files_api` holds the `/1.0/instances/{name}/files`
//! semantics of Incus 6.0 ([`FileHeaders`], [`RootfsAccess::pull`],
//! [`RootfsAccess::push`]).

mod entry;
mod error;
mod files_api;
mod ids;
mod options;
mod path;
mod resolve;
mod sys;
#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::idmap::IdShift;
pub use entry::{DirEntry, Entry, FileKind, FsStats};
pub use error::FsError;
pub use files_api::{FileHeaders, Pulled, PushKind};
pub use options::{NewAttrs, OpenOptions, SetAttrs, WriteMode};
pub use path::clean_path;
use path::join;
use sys::{
    cvt, fchmod_fd, fchown_fd, fs_stats_fd, fstat, fstatat_nofollow, futimens_fd, lstat_at,
    openat_nofollow, readlink_at, reopen, set_blocking,
};

/// Mode of files created when the caller gives none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of directories created when the caller gives none.
pub const DEFAULT_DIR_MODE: u32 = 0o755;
/// The id the kernel shows for host ids that have no mapping in the container.
pub const OVERFLOW_ID: u32 = 65534;
/// Longest symlink target accepted from a client.
const MAX_SYMLINK_TARGET: usize = 4095;

/// Access to one container's root filesystem.
#[derive(Debug)]
pub struct RootfsAccess {
    root: OwnedFd,
    shift: IdShift,
}

impl RootfsAccess {
    /// Opens the rootfs directory (a trusted host path) for access with the
    /// container's id shift.
    pub fn open(rootfs: &Path, shift: IdShift) -> Result<RootfsAccess, FsError> {
        let shown = rootfs.display().to_string();
        let c = CString::new(rootfs.as_os_str().as_encoded_bytes()).map_err(|_| {
            FsError::InvalidPath {
                path: shown.clone(),
                reason: "contains a NUL byte",
            }
        })?;
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(FsError::from_io(
                "opening rootfs",
                &shown,
                io::Error::last_os_error(),
            ));
        }
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(RootfsAccess { root, shift })
    }

    pub fn shift(&self) -> IdShift {
        self.shift
    }

    /// Stat, following symlinks (inside the container).
    pub fn stat(&self, path: &str) -> Result<Entry, FsError> {
        let fd = self.resolve(path, libc::O_PATH, "stat")?;
        let st = fstat(fd.as_fd()).map_err(|e| FsError::from_io("stat", path, e))?;
        Ok(Entry::from_stat(&st, &self.shift))
    }

    /// Stat without following a final symlink; symlinks carry their target.
    pub fn lstat(&self, path: &str) -> Result<Entry, FsError> {
        let Some((parent, name)) = self.parent_of(path, "lstat")? else {
            return self.stat("/");
        };
        lstat_at(parent.as_fd(), &name, &self.shift).map_err(|e| FsError::from_io("lstat", path, e))
    }

    /// Stat an open file.
    pub fn stat_file(&self, file: &File) -> Result<Entry, FsError> {
        let st = fstat(file.as_fd()).map_err(|e| FsError::from_io("fstat", "(open file)", e))?;
        Ok(Entry::from_stat(&st, &self.shift))
    }

    /// Names in a directory (without `.` and `..`), sorted.
    pub fn read_dir(&self, path: &str) -> Result<Vec<String>, FsError> {
        let mut names = self.dir_names(path)?.1;
        names.sort();
        Ok(names)
    }

    /// Entries of a directory with their `lstat`, sorted by name. Entries
    /// that vanish while listing are left out.
    pub fn read_dir_entries(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let (dir, mut names) = self.dir_names(path)?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Ok(cname) = CString::new(name.as_bytes()) else {
                continue;
            };
            match lstat_at(dir.as_fd(), &cname, &self.shift) {
                Ok(entry) => out.push(DirEntry { name, entry }),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(FsError::from_io("lstat", &join(path, &name), e)),
            }
        }
        Ok(out)
    }

    /// The target of a symlink, as stored.
    pub fn read_link(&self, path: &str) -> Result<String, FsError> {
        let Some((parent, name)) = self.parent_of(path, "readlink")? else {
            return Err(FsError::InvalidPath {
                path: path.into(),
                reason: "not a symlink",
            });
        };
        readlink_at(parent.as_fd(), &name).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => FsError::InvalidPath {
                path: path.into(),
                reason: "not a symlink",
            },
            _ => FsError::from_io("readlink", path, e),
        })
    }

    /// Opens a regular file for reading.
    pub fn open_read(&self, path: &str) -> Result<File, FsError> {
        let opts = OpenOptions {
            read: true,
            ..Default::default()
        };
        Ok(self.open_file(path, &opts, &NewAttrs::default())?.0)
    }

    /// Opens (and maybe creates) a regular file. Returns the file and whether
    /// this call created it; a created file gets `attrs`' owner (container
    /// root by default) and `opts.mode`/`attrs.mode` (default 0644).
    pub fn open_file(
        &self,
        path: &str,
        opts: &OpenOptions,
        attrs: &NewAttrs,
    ) -> Result<(File, bool), FsError> {
        let (uid, gid) = self.host_owner(attrs.uid, attrs.gid)?;
        let mode = attrs.mode.or(opts.mode).unwrap_or(DEFAULT_FILE_MODE) & 0o7777;
        let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
        flags |= match (opts.read, opts.write || opts.append) {
            (_, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
        };
        if opts.append {
            flags |= libc::O_APPEND;
        }
        if opts.truncate && (opts.write || opts.append) {
            flags |= libc::O_TRUNC;
        }
        let (fd, created) = self.open_maybe_create(path, flags, opts.create, opts.exclusive)?;
        let st = fstat(fd.as_fd()).map_err(|e| FsError::from_io("fstat", path, e))?;
        match FileKind::from_mode(st.st_mode) {
            FileKind::File => {}
            FileKind::Directory => return Err(FsError::IsDir { path: path.into() }),
            _ => return Err(FsError::NotRegular { path: path.into() }),
        }
        // Regular files never block; clear O_NONBLOCK anyway for callers.
        set_blocking(fd.as_fd()).map_err(|e| FsError::from_io("fcntl", path, e))?;
        if created {
            fchown_fd(fd.as_fd(), uid, gid).map_err(|e| FsError::from_io("chown", path, e))?;
            fchmod_fd(fd.as_fd(), mode).map_err(|e| FsError::from_io("chmod", path, e))?;
        }
        Ok((File::from(fd), created))
    }

    /// Opens a file for writing the way the files API does: created (with
    /// `attrs`) if missing, truncated for [`WriteMode::Overwrite`],
    /// positioned at its end for [`WriteMode::Append`].
    pub fn open_for_write(
        &self,
        path: &str,
        attrs: &NewAttrs,
        write: WriteMode,
    ) -> Result<(File, bool), FsError> {
        let opts = OpenOptions {
            write: true,
            append: write == WriteMode::Append,
            truncate: write == WriteMode::Overwrite,
            create: true,
            ..Default::default()
        };
        self.open_file(path, &opts, attrs)
    }

    /// Writes `data` to a file (see [`RootfsAccess::open_for_write`]).
    /// Returns the number of bytes written.
    pub fn write_file(
        &self,
        path: &str,
        mut data: impl Read,
        attrs: &NewAttrs,
        write: WriteMode,
    ) -> Result<u64, FsError> {
        let (mut file, _) = self.open_for_write(path, attrs, write)?;
        let n = io::copy(&mut data, &mut file).map_err(|e| FsError::from_io("write", path, e))?;
        file.flush()
            .map_err(|e| FsError::from_io("write", path, e))?;
        Ok(n)
    }

    /// Creates a directory (owner and mode from `attrs`, default root and 0755).
    pub fn mkdir(&self, path: &str, attrs: &NewAttrs) -> Result<(), FsError> {
        let (uid, gid) = self.host_owner(attrs.uid, attrs.gid)?;
        let mode = attrs.mode.unwrap_or(DEFAULT_DIR_MODE) & 0o7777;
        let (parent, name) = self.parent_of_required(path, "mkdir")?;
        cvt(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) })
            .map_err(|e| FsError::from_io("mkdir", path, e))?;
        // Set owner and mode on what was just created, without following.
        let dir = openat_nofollow(parent.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| FsError::from_io("mkdir", path, e))?;
        fchown_fd(dir.as_fd(), uid, gid).map_err(|e| FsError::from_io("chown", path, e))?;
        fchmod_fd(dir.as_fd(), mode).map_err(|e| FsError::from_io("chmod", path, e))?;
        Ok(())
    }

    /// Creates a symlink at `path` pointing to `target` (stored as given; it
    /// resolves inside the container). Owner from `attrs` (default root).
    pub fn symlink(&self, path: &str, target: &str, attrs: &NewAttrs) -> Result<(), FsError> {
        let (uid, gid) = self.host_owner(attrs.uid, attrs.gid)?;
        if target.is_empty() || target.len() > MAX_SYMLINK_TARGET {
            return Err(FsError::InvalidPath {
                path: target.into(),
                reason: "bad symlink target",
            });
        }
        let ctarget = CString::new(target).map_err(|_| FsError::InvalidPath {
            path: target.into(),
            reason: "contains a NUL byte",
        })?;
        let (parent, name) = self.parent_of_required(path, "symlink")?;
        cvt(unsafe { libc::symlinkat(ctarget.as_ptr(), parent.as_raw_fd(), name.as_ptr()) })
            .map_err(|e| FsError::from_io("symlink", path, e))?;
        cvt(unsafe {
            libc::fchownat(
                parent.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map_err(|e| FsError::from_io("chown", path, e))?;
        Ok(())
    }

    /// Creates a hard link `new` to the file `existing` (not following a
    /// symlink `existing`).
    pub fn hard_link(&self, existing: &str, new: &str) -> Result<(), FsError> {
        let (from_dir, from_name) = self.parent_of_required(existing, "link")?;
        let (to_dir, to_name) = self.parent_of_required(new, "link")?;
        cvt(unsafe {
            libc::linkat(
                from_dir.as_raw_fd(),
                from_name.as_ptr(),
                to_dir.as_raw_fd(),
                to_name.as_ptr(),
                0,
            )
        })
        .map_err(|e| FsError::from_io("link", new, e))?;
        Ok(())
    }

    /// Removes a file, a symlink (not its target) or an empty directory.
    pub fn remove(&self, path: &str) -> Result<(), FsError> {
        let (parent, name) = self.parent_of_required(path, "remove")?;
        let st = fstatat_nofollow(parent.as_fd(), &name)
            .map_err(|e| FsError::from_io("remove", path, e))?;
        let flags = if FileKind::from_mode(st.st_mode) == FileKind::Directory {
            libc::AT_REMOVEDIR
        } else {
            0
        };
        cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) })
            .map_err(|e| FsError::from_io("remove", path, e))?;
        Ok(())
    }

    /// Removes anything but a directory (SFTP remove).
    pub fn remove_file(&self, path: &str) -> Result<(), FsError> {
        let (parent, name) = self.parent_of_required(path, "remove")?;
        cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) })
            .map_err(|e| FsError::from_io("remove", path, e))?;
        Ok(())
    }

    /// Removes an empty directory (SFTP rmdir).
    pub fn remove_dir(&self, path: &str) -> Result<(), FsError> {
        let (parent, name) = self.parent_of_required(path, "rmdir")?;
        cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
            .map_err(|e| FsError::from_io("rmdir", path, e))?;
        Ok(())
    }

    /// Renames `from` to `to`. With `replace` an existing `to` is replaced
    /// (POSIX rename); without, an existing `to` is an error (SFTP rename).
    pub fn rename(&self, from: &str, to: &str, replace: bool) -> Result<(), FsError> {
        let (from_dir, from_name) = self.parent_of_required(from, "rename")?;
        let (to_dir, to_name) = self.parent_of_required(to, "rename")?;
        let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
        let r = cvt(unsafe {
            libc::renameat2(
                from_dir.as_raw_fd(),
                from_name.as_ptr(),
                to_dir.as_raw_fd(),
                to_name.as_ptr(),
                flags,
            )
        });
        match r {
            // File systems without RENAME_NOREPLACE: check, then rename.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !replace => {
                if fstatat_nofollow(to_dir.as_fd(), &to_name).is_ok() {
                    return Err(FsError::Exists { path: to.into() });
                }
                cvt(unsafe {
                    libc::renameat(
                        from_dir.as_raw_fd(),
                        from_name.as_ptr(),
                        to_dir.as_raw_fd(),
                        to_name.as_ptr(),
                    )
                })
                .map_err(|e| FsError::from_io("rename", from, e))?;
                Ok(())
            }
            Err(e) => Err(FsError::from_io("rename", from, e)),
            Ok(_) => Ok(()),
        }
    }

    /// Changes attributes of `path`, following symlinks inside the container.
    pub fn set_attrs(&self, path: &str, attrs: &SetAttrs) -> Result<(), FsError> {
        let fd = self.resolve(path, libc::O_PATH, "setstat")?;
        self.apply_set_attrs(fd.as_fd(), path, attrs)
    }

    /// Changes attributes of an open file.
    pub fn set_file_attrs(&self, file: &File, attrs: &SetAttrs) -> Result<(), FsError> {
        self.apply_set_attrs(file.as_fd(), "(open file)", attrs)
    }

    /// Statistics of the file system holding `path`.
    pub fn fs_stats(&self, path: &str) -> Result<FsStats, FsError> {
        let fd = self.resolve(path, libc::O_PATH, "statvfs")?;
        fs_stats_fd(fd.as_fd()).map_err(|e| FsError::from_io("statvfs", path, e))
    }

    /// Statistics of the file system holding an open file.
    pub fn fs_stats_file(&self, file: &File) -> Result<FsStats, FsError> {
        fs_stats_fd(file.as_fd()).map_err(|e| FsError::from_io("fstatvfs", "(open file)", e))
    }

    // ---- internals ----

    fn apply_set_attrs(
        &self,
        fd: BorrowedFd<'_>,
        path: &str,
        attrs: &SetAttrs,
    ) -> Result<(), FsError> {
        let owner = match (attrs.uid, attrs.gid) {
            (None, None) => None,
            (uid, gid) => Some((
                uid.map(|u| self.host_uid(u)).transpose()?,
                gid.map(|g| self.host_gid(g)).transpose()?,
            )),
        };
        if let Some(size) = attrs.size {
            let st = fstat(fd).map_err(|e| FsError::from_io("truncate", path, e))?;
            match FileKind::from_mode(st.st_mode) {
                FileKind::File => {}
                FileKind::Directory => return Err(FsError::IsDir { path: path.into() }),
                _ => return Err(FsError::NotRegular { path: path.into() }),
            }
            let file =
                reopen(fd, libc::O_WRONLY).map_err(|e| FsError::from_io("truncate", path, e))?;
            let size = i64::try_from(size).map_err(|_| FsError::InvalidPath {
                path: path.into(),
                reason: "size too large",
            })?;
            cvt(unsafe { libc::ftruncate(file.as_raw_fd(), size) })
                .map_err(|e| FsError::from_io("truncate", path, e))?;
        }
        if let Some((uid, gid)) = owner {
            fchown_fd(fd, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))
                .map_err(|e| FsError::from_io("chown", path, e))?;
        }
        if let Some(mode) = attrs.mode {
            fchmod_fd(fd, mode & 0o7777).map_err(|e| FsError::from_io("chmod", path, e))?;
        }
        if let Some((atime, mtime)) = attrs.times {
            let ts = [
                libc::timespec {
                    tv_sec: atime,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: mtime,
                    tv_nsec: 0,
                },
            ];
            futimens_fd(fd, &ts).map_err(|e| FsError::from_io("utimes", path, e))?;
        }
        Ok(())
    }
}
