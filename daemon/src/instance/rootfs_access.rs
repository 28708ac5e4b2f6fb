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
//! The bottom of the file holds the `/1.0/instances/{name}/files` semantics of
//! Incus 6.0 ([`FileHeaders`], [`RootfsAccess::pull`], [`RootfsAccess::push`]).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::idmap::IdShift;

/// Mode of files created when the caller gives none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of directories created when the caller gives none.
pub const DEFAULT_DIR_MODE: u32 = 0o755;
/// The id the kernel shows for host ids that have no mapping in the container.
pub const OVERFLOW_ID: u32 = 65534;
/// Longest symlink target accepted from a client.
const MAX_SYMLINK_TARGET: usize = 4095;
/// How often a path resolution is retried when openat2 reports a concurrent rename.
const OPENAT2_RETRIES: usize = 16;

/// What can go wrong; every variant names the container path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: permission denied")]
    PermissionDenied { path: String },
    #[error("{path}: already exists")]
    Exists { path: String },
    #[error("{path}: not a directory")]
    NotDir { path: String },
    #[error("{path}: is a directory")]
    IsDir { path: String },
    #[error("{path}: directory not empty")]
    NotEmpty { path: String },
    #[error("{path}: not a regular file")]
    NotRegular { path: String },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{kind} {id} is outside the container's id range 0..{range}")]
    InvalidId {
        kind: &'static str,
        id: u32,
        range: u32,
    },
    #[error("invalid {name} header: {value:?}")]
    InvalidHeader { name: String, value: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    /// The HTTP status the files API answers with: 404, 403, 409, 400 or 500.
    pub fn http_status(&self) -> u16 {
        match self {
            FsError::NotFound { .. } => 404,
            FsError::PermissionDenied { .. } => 403,
            FsError::Exists { .. } | FsError::NotEmpty { .. } => 409,
            FsError::NotDir { .. }
            | FsError::IsDir { .. }
            | FsError::NotRegular { .. }
            | FsError::InvalidPath { .. }
            | FsError::InvalidId { .. }
            | FsError::InvalidHeader { .. } => 400,
            FsError::Io { .. } => 500,
        }
    }

    fn from_io(op: &'static str, path: &str, err: io::Error) -> FsError {
        let path = path.to_string();
        match err.raw_os_error() {
            Some(libc::ENOENT) => FsError::NotFound { path },
            Some(libc::EACCES) | Some(libc::EPERM) => FsError::PermissionDenied { path },
            Some(libc::EEXIST) => FsError::Exists { path },
            Some(libc::ENOTDIR) => FsError::NotDir { path },
            Some(libc::EISDIR) => FsError::IsDir { path },
            Some(libc::ENOTEMPTY) => FsError::NotEmpty { path },
            Some(libc::ELOOP) => FsError::InvalidPath {
                path,
                reason: "too many levels of symbolic links",
            },
            Some(libc::ENAMETOOLONG) => FsError::InvalidPath {
                path,
                reason: "name too long",
            },
            _ => FsError::Io {
                op,
                path,
                source: err,
            },
        }
    }
}

/// The host id of a container id (`base + id` for ids below the range of
/// the [`IdShift`]); -1 (`u32::MAX`, "unchanged" to chown) never results.
fn host_id(base: u32, range: u32, id: u32, kind: &'static str) -> Result<u32, FsError> {
    match base.checked_add(id) {
        Some(host) if id < range && host != u32::MAX => Ok(host),
        _ => Err(FsError::InvalidId { kind, id, range }),
    }
}

/// The container id of a host id; unmapped ids show as [`OVERFLOW_ID`], as
/// the kernel shows them inside the container.
fn container_id(base: u32, range: u32, host: u32) -> u32 {
    match host.checked_sub(base) {
        Some(id) if id < range => id,
        _ => OVERFLOW_ID,
    }
}

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    fn from_mode(st_mode: u32) -> FileKind {
        match st_mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => FileKind::File,
        }
    }

    /// The `S_IFMT` bits of this type.
    pub fn type_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
        }
    }

    /// The name the files API uses (`file`, `directory` or `symlink`; Incus
    /// calls every other type a file too).
    pub fn api_name(self) -> &'static str {
        match self {
            FileKind::Directory => "directory",
            FileKind::Symlink => "symlink",
            _ => "file",
        }
    }
}

/// What stat tells about a file, with owners in container ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: FileKind,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, setuid/setgid/sticky included (`0o7777`).
    pub mode: u32,
    pub size: u64,
    /// Seconds and nanoseconds since the epoch.
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    /// The symlink's target, for symlinks from `lstat`-like calls.
    pub target: Option<String>,
}

impl Entry {
    fn from_stat(st: &libc::stat, shift: &IdShift) -> Entry {
        Entry {
            kind: FileKind::from_mode(st.st_mode),
            uid: container_id(shift.uid_base, shift.range, st.st_uid),
            gid: container_id(shift.gid_base, shift.range, st.st_gid),
            mode: st.st_mode & 0o7777,
            size: st.st_size as u64,
            atime: (st.st_atime, st.st_atime_nsec as u32),
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            target: None,
        }
    }

    /// Type and permission bits together, as `st_mode`.
    pub fn st_mode(&self) -> u32 {
        self.kind.type_bits() | self.mode
    }
}

/// A directory entry: its name and what `lstat` says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub entry: Entry,
}

/// Owner and mode of something a call creates, in container ids. `None`
/// means container root (uid/gid 0) and the default mode of the type.
/// They are applied only to what the call creates, never to what exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewAttrs {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

/// Attribute changes (SFTP setstat); `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttrs {
    pub size: Option<u64>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
    /// (atime, mtime) in seconds since the epoch.
    pub times: Option<(i64, i64)>,
}

/// How to open a regular file, as in `open(2)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub create: bool,
    /// With `create`: fail if the file exists.
    pub exclusive: bool,
    pub truncate: bool,
    /// Mode of a created file (default [`DEFAULT_FILE_MODE`]).
    pub mode: Option<u32>,
}

/// Overwrite or append, for [`RootfsAccess::write_file`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteMode {
    #[default]
    Overwrite,
    Append,
}

/// File system statistics (SFTP `statvfs@openssh.com`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStats {
    pub block_size: u64,
    pub fragment_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub files_available: u64,
    pub fsid: u64,
    pub flags: u64,
    pub name_max: u64,
}

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

    fn host_uid(&self, uid: u32) -> Result<u32, FsError> {
        host_id(self.shift.uid_base, self.shift.range, uid, "uid")
    }

    fn host_gid(&self, gid: u32) -> Result<u32, FsError> {
        host_id(self.shift.gid_base, self.shift.range, gid, "gid")
    }

    fn host_owner(&self, uid: Option<u32>, gid: Option<u32>) -> Result<(u32, u32), FsError> {
        Ok((
            self.host_uid(uid.unwrap_or(0))?,
            self.host_gid(gid.unwrap_or(0))?,
        ))
    }

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

    /// Resolves a whole path inside the root (following symlinks inside it).
    fn resolve(&self, path: &str, flags: i32, op: &'static str) -> Result<OwnedFd, FsError> {
        let c = container_cpath(path)?;
        openat2_in_root(self.root.as_fd(), &c, flags, 0).map_err(|e| FsError::from_io(op, path, e))
    }

    /// Opens `path` with `flags`; with `create`, creates it if missing.
    /// Returns whether this call created it.
    fn open_maybe_create(
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

    fn dir_names(&self, path: &str) -> Result<(OwnedFd, Vec<String>), FsError> {
        let fd = self.resolve(path, libc::O_RDONLY | libc::O_DIRECTORY, "readdir")?;
        let dup = fd
            .try_clone()
            .map_err(|e| FsError::from_io("readdir", path, e))?;
        let names = read_dir_fd(dup).map_err(|e| FsError::from_io("readdir", path, e))?;
        Ok((fd, names))
    }

    /// The parent directory (opened inside the root) and final name of a
    /// path; `None` for the root itself.
    fn parent_of(
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

    fn parent_of_required(
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

// ---- path helpers ----

/// A container path as a C string; relative paths are taken from `/`.
fn container_cpath(path: &str) -> Result<CString, FsError> {
    if path.is_empty() {
        return Err(FsError::InvalidPath {
            path: path.into(),
            reason: "empty path",
        });
    }
    CString::new(path).map_err(|_| FsError::InvalidPath {
        path: path.into(),
        reason: "contains a NUL byte",
    })
}

/// Splits a path into parent and final name, without resolving anything.
/// `None` for the root. The final name may not be `.` or `..`.
fn split_path(path: &str) -> Result<Option<(&str, &str)>, FsError> {
    if path.is_empty() {
        return Err(FsError::InvalidPath {
            path: path.into(),
            reason: "empty path",
        });
    }
    if path.contains('\0') {
        return Err(FsError::InvalidPath {
            path: path.into(),
            reason: "contains a NUL byte",
        });
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(None);
    }
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => ("/", trimmed),
    };
    if name == "." || name == ".." {
        return Err(FsError::InvalidPath {
            path: path.into(),
            reason: "ends in . or ..",
        });
    }
    Ok(Some((parent, name)))
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Lexically cleans a container path into an absolute one (Go's
/// `path.Clean("/" + p)`): no symlink is resolved.
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

// ---- syscall helpers ----

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `struct open_how` of linux/openat2.h (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2 with the root as "/": `..` stops at the root, absolute symlinks
/// start from it, and magic links (/proc/*/fd/*) are refused.
fn openat2_in_root(
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

/// Opens a name in a directory without following it if it is a symlink.
fn openat_nofollow(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<OwnedFd> {
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
fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let proc_path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
    let fd = cvt(unsafe {
        libc::open(
            proc_path.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    Ok(unsafe { st.assume_init() })
}

fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
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

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr, shift: &IdShift) -> io::Result<Entry> {
    let st = fstatat_nofollow(dir, name)?;
    let mut entry = Entry::from_stat(&st, shift);
    if entry.kind == FileKind::Symlink {
        entry.target = Some(readlink_at(dir, name)?);
    }
    Ok(entry)
}

fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<String> {
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
fn read_dir_fd(fd: OwnedFd) -> io::Result<Vec<String>> {
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

fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

/// chown of the inode behind any fd (O_PATH included); u32::MAX keeps a field.
fn fchown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    cvt(unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) })?;
    Ok(())
}

/// chmod of the inode behind any fd (O_PATH included): fchmodat2 with
/// AT_EMPTY_PATH (Linux 6.6+), else through /proc/self/fd.
fn fchmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
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
fn futimens_fd(fd: BorrowedFd<'_>, ts: &[libc::timespec; 2]) -> io::Result<()> {
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
fn fs_stats_fd(fd: BorrowedFd<'_>) -> io::Result<FsStats> {
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

// ---- the files API (/1.0/instances/{name}/files) ----

/// `X-Incus-type` of a POST.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PushKind {
    #[default]
    File,
    Directory,
    Symlink,
}

/// The `X-Incus-*` (or pylxd's `X-LXD-*`) headers of a files API request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileHeaders {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits (`0o777`; Incus drops the others).
    pub mode: Option<u32>,
    pub kind: PushKind,
    pub write_mode: WriteMode,
}

impl FileHeaders {
    /// Parses the headers as Incus 6.0 does (`X-Incus-` first, then
    /// `X-LXD-`): a missing, empty or `-1` uid/gid/mode means "not given",
    /// the mode is parsed like Go's `ParseInt(s, 0, 0)` (`0644` is octal),
    /// type defaults to `file` and write to `overwrite`. Values Incus would
    /// silently ignore (non-numbers) are refused here.
    ///
    /// `header` looks a header up by name, case-insensitively; with axum:
    /// `FileHeaders::from_lookup(|n| headers.get(n).map(|v| v.as_bytes()))`.
    /// (This module sees no HTTP types.)
    pub fn from_lookup<'a>(
        header: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<FileHeaders, FsError> {
        let get = |key: &str| -> Result<Option<(String, String)>, FsError> {
            for prefix in ["X-Incus-", "X-LXD-"] {
                let name = format!("{prefix}{key}");
                if let Some(value) = header(&name) {
                    let text = std::str::from_utf8(value).map_err(|_| FsError::InvalidHeader {
                        name: name.clone(),
                        value: String::from_utf8_lossy(value).into_owned(),
                    })?;
                    let text = text.trim();
                    if !text.is_empty() {
                        return Ok(Some((name, text.to_string())));
                    }
                }
            }
            Ok(None)
        };
        let id = |key: &str| -> Result<Option<u32>, FsError> {
            let Some((name, value)) = get(key)? else {
                return Ok(None);
            };
            match value.parse::<i64>() {
                Ok(-1) => Ok(None),
                Ok(n) if (0..i64::from(u32::MAX)).contains(&n) => Ok(Some(n as u32)),
                _ => Err(FsError::InvalidHeader { name, value }),
            }
        };
        let mode = match get("mode")? {
            None => None,
            Some((_, v)) if v == "-1" => None,
            Some((name, value)) => match parse_go_int(&value) {
                Some(m) if m >= 0 => Some((m as u32) & 0o777),
                _ => return Err(FsError::InvalidHeader { name, value }),
            },
        };
        let kind = match get("type")? {
            None => PushKind::File,
            Some((name, value)) => match value.as_str() {
                "file" => PushKind::File,
                "directory" => PushKind::Directory,
                "symlink" => PushKind::Symlink,
                _ => return Err(FsError::InvalidHeader { name, value }),
            },
        };
        let write_mode = match get("write")? {
            None => WriteMode::Overwrite,
            Some((name, value)) => match value.as_str() {
                "overwrite" => WriteMode::Overwrite,
                "append" => WriteMode::Append,
                _ => return Err(FsError::InvalidHeader { name, value }),
            },
        };
        Ok(FileHeaders {
            uid: id("uid")?,
            gid: id("gid")?,
            mode,
            kind,
            write_mode,
        })
    }

    /// The owner and mode these headers give to what a push creates.
    pub fn new_attrs(&self) -> NewAttrs {
        NewAttrs {
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
        }
    }

    /// The headers of a GET (or HEAD) answer: uid, gid, mode (`%04o`), type
    /// and modified (Go's time format), under both `X-Incus-` and `X-LXD-`.
    pub fn response_headers(entry: &Entry) -> Vec<(String, String)> {
        let values = [
            ("uid", entry.uid.to_string()),
            ("gid", entry.gid.to_string()),
            ("mode", format!("{:04o}", entry.mode & 0o777)),
            ("type", entry.kind.api_name().to_string()),
            ("modified", go_time_string(entry.mtime.0, entry.mtime.1)),
        ];
        ["X-Incus-", "X-LXD-"]
            .iter()
            .flat_map(|prefix| {
                values
                    .iter()
                    .map(move |(k, v)| (format!("{prefix}{k}"), v.clone()))
            })
            .collect()
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, `0x`/`0o`/`0b` prefixes,
/// a leading `0` means octal, `_` separators after a prefix.
fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(b) = lower.strip_prefix("0x") {
        (16, b.to_string())
    } else if let Some(b) = lower.strip_prefix("0o") {
        (8, b.to_string())
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b.to_string())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string())
    } else {
        (10, lower.clone())
    };
    let body = if radix != 10 {
        body.replace('_', "")
    } else {
        body
    };
    if body.is_empty() || body.starts_with(['+', '-']) {
        return None;
    }
    let n = i64::from_str_radix(&body, radix).ok()?;
    Some(if neg { -n } else { n })
}

/// Go's `time.Time.UTC().String()`: `2006-01-02 15:04:05.999999999 +0000 UTC`.
fn go_time_string(secs: i64, nsec: u32) -> String {
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    );
    if nsec != 0 {
        let frac = format!("{nsec:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

/// What a files API GET answers.
#[derive(Debug)]
pub enum Pulled {
    /// A regular file (or another non-directory, non-symlink type): its
    /// `lstat` and the open file to stream.
    File { entry: Entry, file: File },
    /// A directory: its names, to answer as a JSON list.
    Directory { entry: Entry, names: Vec<String> },
    /// A symlink: its target made absolute (lexically, as Incus does); the
    /// body of the answer.
    Symlink { entry: Entry, target: String },
}

impl Pulled {
    pub fn entry(&self) -> &Entry {
        match self {
            Pulled::File { entry, .. }
            | Pulled::Directory { entry, .. }
            | Pulled::Symlink { entry, .. } => entry,
        }
    }
}

impl RootfsAccess {
    /// GET /1.0/instances/{name}/files?path=: `lstat` the path, then open the
    /// file, list the directory or read the symlink.
    pub fn pull(&self, path: &str) -> Result<Pulled, FsError> {
        let entry = self.lstat(path)?;
        match entry.kind {
            FileKind::Directory => {
                let names = self.read_dir(path)?;
                Ok(Pulled::Directory { entry, names })
            }
            FileKind::Symlink => {
                let stored = entry.target.clone().unwrap_or_default();
                let target = if stored.starts_with('/') {
                    clean_path(&stored)
                } else {
                    let dir = clean_path(path);
                    let parent =
                        dir.rsplit_once('/')
                            .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
                    clean_path(&join(parent, &stored))
                };
                Ok(Pulled::Symlink { entry, target })
            }
            FileKind::File => {
                let file = self.open_read(path)?;
                Ok(Pulled::File { entry, file })
            }
            _ => Err(FsError::NotRegular { path: path.into() }),
        }
    }

    /// POST /1.0/instances/{name}/files?path= with Incus 6.0 semantics:
    /// - `file`: written (overwrite truncates, append appends; created if
    ///   missing); uid/gid/mode apply only when the file is created;
    /// - `directory`: created with uid/gid/mode (default 0755), nothing
    ///   happens if something exists there already;
    /// - `symlink`: the body is the target; nothing happens if the same
    ///   symlink exists, an error if anything else does.
    pub fn push(&self, path: &str, headers: &FileHeaders, body: impl Read) -> Result<(), FsError> {
        let attrs = headers.new_attrs();
        match headers.kind {
            PushKind::File => {
                self.write_file(path, body, &attrs, headers.write_mode)?;
                Ok(())
            }
            PushKind::Directory => match self.stat(path) {
                Ok(_) => Ok(()),
                Err(FsError::NotFound { .. }) => self.mkdir(path, &attrs),
                Err(e) => Err(e),
            },
            PushKind::Symlink => {
                let mut target = Vec::new();
                body.take(MAX_SYMLINK_TARGET as u64 + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| FsError::from_io("reading symlink target", path, e))?;
                let target = String::from_utf8(target).map_err(|_| FsError::InvalidPath {
                    path: path.into(),
                    reason: "symlink target is not UTF-8",
                })?;
                if let Ok(existing) = self.lstat(path) {
                    if existing.target.as_deref() == Some(target.as_str()) {
                        return Ok(());
                    }
                }
                self.symlink(path, &target, &attrs)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    const BASE: u32 = 1_000_000;

    fn shifted(range: u32) -> IdShift {
        IdShift {
            uid_base: BASE,
            gid_base: BASE,
            range,
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        host: std::path::PathBuf,
        rootfs: std::path::PathBuf,
        access: RootfsAccess,
    }

    /// A host directory with a secret next to a container rootfs.
    fn fixture(shift: IdShift) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().to_path_buf();
        std::fs::write(host.join("secret"), "host secret").unwrap();
        let rootfs = host.join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
        std::fs::write(rootfs.join("etc/hostname"), "c1\n").unwrap();
        std::fs::write(rootfs.join("secret"), "container secret").unwrap();
        let access = RootfsAccess::open(&rootfs, shift).unwrap();
        Fixture {
            _dir: dir,
            host,
            rootfs,
            access,
        }
    }

    fn read_all(mut f: File) -> String {
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn reads_a_file_by_container_path() {
        let fx = fixture(IdShift::IDENTITY);
        assert_eq!(
            read_all(fx.access.open_read("/etc/hostname").unwrap()),
            "c1\n"
        );
        assert_eq!(
            read_all(fx.access.open_read("etc/hostname").unwrap()),
            "c1\n"
        );
        assert!(matches!(
            fx.access.open_read("/nope"),
            Err(FsError::NotFound { .. })
        ));
        assert!(matches!(
            fx.access.open_read("/etc"),
            Err(FsError::IsDir { .. })
        ));
    }

    #[test]
    fn dotdot_cannot_leave_the_rootfs() {
        let fx = fixture(IdShift::IDENTITY);
        assert_eq!(
            read_all(fx.access.open_read("/../secret").unwrap()),
            "container secret"
        );
        assert_eq!(
            read_all(fx.access.open_read("../../../../secret").unwrap()),
            "container secret"
        );
        assert_eq!(
            read_all(fx.access.open_read("/etc/../../secret").unwrap()),
            "container secret"
        );
    }

    #[test]
    fn absolute_and_relative_symlinks_resolve_inside_the_container() {
        let fx = fixture(IdShift::IDENTITY);
        let host_secret = fx.host.join("secret");
        // An absolute symlink naming the host path of the secret.
        symlink(&host_secret, fx.rootfs.join("abs")).unwrap();
        assert!(matches!(
            fx.access.open_read("/abs"),
            Err(FsError::NotFound { .. })
        ));
        symlink("/secret", fx.rootfs.join("abs2")).unwrap();
        assert_eq!(
            read_all(fx.access.open_read("/abs2").unwrap()),
            "container secret"
        );
        symlink("../../../../../secret", fx.rootfs.join("tmp/rel")).unwrap();
        assert_eq!(
            read_all(fx.access.open_read("/tmp/rel").unwrap()),
            "container secret"
        );
        // Writing through an escaping symlink writes inside the container.
        fx.access
            .write_file(
                "/tmp/rel",
                &b"overwritten"[..],
                &NewAttrs::default(),
                WriteMode::Overwrite,
            )
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&host_secret).unwrap(),
            "host secret"
        );
        assert_eq!(
            std::fs::read_to_string(fx.rootfs.join("secret")).unwrap(),
            "overwritten"
        );
    }

    #[test]
    fn a_planted_etc_to_root_link_stays_in_the_rootfs() {
        let fx = fixture(IdShift::IDENTITY);
        std::fs::remove_dir_all(fx.rootfs.join("etc")).unwrap();
        symlink("/", fx.rootfs.join("etc")).unwrap();
        // /etc/secret is the container's /secret, never the host's.
        assert_eq!(
            read_all(fx.access.open_read("/etc/secret").unwrap()),
            "container secret"
        );
        fx.access
            .write_file(
                "/etc/passwd",
                &b"root:x:0:0::/root:/bin/sh\n"[..],
                &NewAttrs::default(),
                WriteMode::Overwrite,
            )
            .unwrap();
        assert!(fx.rootfs.join("passwd").is_file());
        // Creating through the link lands in the rootfs.
        fx.access
            .mkdir("/etc/newdir", &NewAttrs::default())
            .unwrap();
        assert!(fx.rootfs.join("newdir").is_dir());
        // A dangling symlink naming a host path: its target is created
        // inside the container (where that directory also exists).
        let host_target = fx.host.join("created-by-container");
        let inside = fx.rootfs.join(host_target.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        symlink(&host_target, fx.rootfs.join("tmp/dangling")).unwrap();
        fx.access
            .write_file(
                "/tmp/dangling",
                &b"x"[..],
                &NewAttrs::default(),
                WriteMode::Overwrite,
            )
            .unwrap();
        assert!(!host_target.exists());
        assert_eq!(std::fs::read_to_string(inside).unwrap(), "x");
    }

    #[test]
    fn symlinks_are_removed_not_followed() {
        let fx = fixture(IdShift::IDENTITY);
        symlink(fx.host.join("secret"), fx.rootfs.join("tmp/link")).unwrap();
        fx.access.remove("/tmp/link").unwrap();
        assert!(fx.host.join("secret").exists());
        assert!(fx.rootfs.join("tmp/link").symlink_metadata().is_err());
        // A parent that is a link to / makes the removal happen in the root.
        symlink("/", fx.rootfs.join("up")).unwrap();
        fx.access.remove("/up/secret").unwrap();
        assert!(fx.host.join("secret").exists());
        assert!(!fx.rootfs.join("secret").exists());
    }

    #[test]
    fn unprivileged_ids_are_shifted_both_ways() {
        let fx = fixture(shifted(65536));
        let attrs = NewAttrs {
            uid: Some(1000),
            gid: Some(1001),
            mode: Some(0o640),
        };
        fx.access
            .write_file("/tmp/f", &b"data"[..], &attrs, WriteMode::Overwrite)
            .unwrap();
        let meta = std::fs::metadata(fx.rootfs.join("tmp/f")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (BASE + 1000, BASE + 1001, 0o640)
        );
        let entry = fx.access.stat("/tmp/f").unwrap();
        assert_eq!(
            (entry.uid, entry.gid, entry.mode, entry.size),
            (1000, 1001, 0o640, 4)
        );
        assert_eq!(entry.kind, FileKind::File);

        // Defaults: container root, 0644 / 0755.
        fx.access
            .write_file(
                "/tmp/g",
                &b""[..],
                &NewAttrs::default(),
                WriteMode::Overwrite,
            )
            .unwrap();
        let meta = std::fs::metadata(fx.rootfs.join("tmp/g")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (BASE, BASE, 0o644)
        );
        fx.access.mkdir("/tmp/d", &NewAttrs::default()).unwrap();
        let meta = std::fs::metadata(fx.rootfs.join("tmp/d")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (BASE, BASE, 0o755)
        );

        // Host-owned files show as the overflow id.
        let entry = fx.access.stat("/etc/hostname").unwrap();
        assert_eq!((entry.uid, entry.gid), (OVERFLOW_ID, OVERFLOW_ID));

        // Ids outside the range are refused and nothing is created.
        let bad = NewAttrs {
            uid: Some(65536),
            ..Default::default()
        };
        assert!(matches!(
            fx.access
                .write_file("/tmp/h", &b""[..], &bad, WriteMode::Overwrite),
            Err(FsError::InvalidId {
                kind: "uid",
                id: 65536,
                ..
            })
        ));
        assert!(!fx.rootfs.join("tmp/h").exists());
        assert!(matches!(
            fx.access.set_attrs(
                "/tmp/f",
                &SetAttrs {
                    gid: Some(u32::MAX),
                    ..Default::default()
                }
            ),
            Err(FsError::InvalidId { kind: "gid", .. })
        ));

        // chown through set_attrs.
        fx.access
            .set_attrs(
                "/tmp/f",
                &SetAttrs {
                    uid: Some(5),
                    gid: Some(6),
                    ..Default::default()
                },
            )
            .unwrap();
        let meta = std::fs::metadata(fx.rootfs.join("tmp/f")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (BASE + 5, BASE + 6));
    }

    #[test]
    fn id_shift_arithmetic() {
        let range = 1_000_000_000;
        assert_eq!(host_id(BASE, range, 0, "uid").unwrap(), BASE);
        assert_eq!(container_id(BASE, range, BASE + 33), 33);
        assert_eq!(container_id(BASE, range, 0), OVERFLOW_ID);
        assert!(host_id(BASE, range, range, "uid").is_err());
        let p = IdShift::IDENTITY;
        assert_eq!(host_id(p.uid_base, p.range, 1234, "uid").unwrap(), 1234);
        assert!(host_id(p.uid_base, p.range, u32::MAX, "uid").is_err());
        assert!(host_id(u32::MAX - 10, 100, 10, "uid").is_err());
    }

    #[test]
    fn existing_files_keep_owner_and_mode_and_append_appends() {
        let fx = fixture(shifted(65536));
        let first = NewAttrs {
            uid: Some(7),
            gid: Some(7),
            mode: Some(0o600),
        };
        fx.access
            .write_file("/tmp/log", &b"one\n"[..], &first, WriteMode::Overwrite)
            .unwrap();
        let other = NewAttrs {
            uid: Some(8),
            gid: Some(8),
            mode: Some(0o666),
        };
        fx.access
            .write_file("/tmp/log", &b"two\n"[..], &other, WriteMode::Append)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(fx.rootfs.join("tmp/log")).unwrap(),
            "one\ntwo\n"
        );
        let e = fx.access.stat("/tmp/log").unwrap();
        assert_eq!((e.uid, e.gid, e.mode), (7, 7, 0o600));
        fx.access
            .write_file("/tmp/log", &b"three\n"[..], &other, WriteMode::Overwrite)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(fx.rootfs.join("tmp/log")).unwrap(),
            "three\n"
        );
        // Append creates a missing file.
        fx.access
            .write_file("/tmp/new", &b"a"[..], &other, WriteMode::Append)
            .unwrap();
        let e = fx.access.stat("/tmp/new").unwrap();
        assert_eq!((e.uid, e.mode, e.size), (8, 0o666, 1));
    }

    #[test]
    fn mkdir_symlink_readlink_remove_rename() {
        let fx = fixture(shifted(65536));
        fx.access
            .mkdir(
                "/tmp/a",
                &NewAttrs {
                    mode: Some(0o700),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(matches!(
            fx.access.mkdir("/tmp/a", &NewAttrs::default()),
            Err(FsError::Exists { .. })
        ));
        assert!(matches!(
            fx.access.mkdir("/nope/a", &NewAttrs::default()),
            Err(FsError::NotFound { .. })
        ));
        assert!(matches!(
            fx.access.mkdir("/", &NewAttrs::default()),
            Err(FsError::InvalidPath { .. })
        ));
        assert_eq!(fx.access.stat("/tmp/a").unwrap().mode, 0o700);

        fx.access
            .symlink(
                "/tmp/l",
                "../etc/hostname",
                &NewAttrs {
                    uid: Some(3),
                    ..Default::default()
                },
            )
            .unwrap();
        let meta = std::fs::symlink_metadata(fx.rootfs.join("tmp/l")).unwrap();
        assert_eq!(meta.uid(), BASE + 3);
        assert_eq!(fx.access.read_link("/tmp/l").unwrap(), "../etc/hostname");
        let l = fx.access.lstat("/tmp/l").unwrap();
        assert_eq!(
            (l.kind, l.target.as_deref()),
            (FileKind::Symlink, Some("../etc/hostname"))
        );
        assert_eq!(fx.access.stat("/tmp/l").unwrap().kind, FileKind::File);
        assert!(matches!(
            fx.access.read_link("/tmp/a"),
            Err(FsError::InvalidPath { .. })
        ));

        fx.access
            .write_file(
                "/tmp/a/f",
                &b"x"[..],
                &NewAttrs::default(),
                WriteMode::Overwrite,
            )
            .unwrap();
        assert!(matches!(
            fx.access.remove("/tmp/a"),
            Err(FsError::NotEmpty { .. })
        ));
        assert!(matches!(
            fx.access.remove_file("/tmp/a"),
            Err(FsError::IsDir { .. })
        ));
        assert_eq!(fx.access.read_dir("/tmp").unwrap(), vec!["a", "l"]);
        let entries = fx.access.read_dir_entries("/tmp/a").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].name.as_str(), entries[0].entry.uid), ("f", 0));

        fx.access
            .write_file(
                "/tmp/b",
                &b"b"[..],
                &NewAttrs::default(),
                WriteMode::Overwrite,
            )
            .unwrap();
        assert!(matches!(
            fx.access.rename("/tmp/b", "/tmp/a/f", false),
            Err(FsError::Exists { .. })
        ));
        fx.access.rename("/tmp/b", "/tmp/a/f", true).unwrap();
        assert_eq!(read_all(fx.access.open_read("/tmp/a/f").unwrap()), "b");
        fx.access.remove("/tmp/a/f").unwrap();
        fx.access.remove("/tmp/a").unwrap();
        fx.access.remove("/tmp/l").unwrap();
        assert!(fx.access.read_dir("/tmp").unwrap().is_empty());
        assert!(matches!(
            fx.access.remove("/tmp/zzz"),
            Err(FsError::NotFound { .. })
        ));
        assert!(matches!(
            fx.access.remove("/tmp/.."),
            Err(FsError::InvalidPath { .. })
        ));
    }

    #[test]
    fn special_files_are_not_opened() {
        let fx = fixture(IdShift::IDENTITY);
        let fifo = CString::new(fx.rootfs.join("tmp/fifo").as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        // Would block forever if opened without O_NONBLOCK.
        assert!(matches!(
            fx.access.open_read("/tmp/fifo"),
            Err(FsError::NotRegular { .. })
        ));
        assert!(matches!(
            fx.access.write_file(
                "/tmp/fifo",
                &b"x"[..],
                &NewAttrs::default(),
                WriteMode::Overwrite
            ),
            Err(FsError::NotRegular { .. }) | Err(FsError::Io { .. })
        ));
        assert_eq!(fx.access.lstat("/tmp/fifo").unwrap().kind, FileKind::Fifo);
    }

    #[test]
    fn magic_links_are_refused() {
        let fx = fixture(IdShift::IDENTITY);
        symlink("/proc/self/root/etc/hostname", fx.rootfs.join("tmp/magic")).unwrap();
        // Inside the container there is no /proc here: not found.
        assert!(matches!(
            fx.access.open_read("/tmp/magic"),
            Err(FsError::NotFound { .. })
        ));
    }

    #[test]
    fn set_attrs_truncates_chmods_and_sets_times() {
        let fx = fixture(IdShift::IDENTITY);
        fx.access
            .write_file(
                "/tmp/t",
                &b"0123456789"[..],
                &NewAttrs::default(),
                WriteMode::Overwrite,
            )
            .unwrap();
        let attrs = SetAttrs {
            size: Some(3),
            mode: Some(0o4755),
            times: Some((1000, 2000)),
            ..Default::default()
        };
        fx.access.set_attrs("/tmp/t", &attrs).unwrap();
        let e = fx.access.stat("/tmp/t").unwrap();
        assert_eq!(
            (e.size, e.mode, e.atime.0, e.mtime.0),
            (3, 0o4755, 1000, 2000)
        );
        // Through a symlink: changes the target.
        symlink("/tmp/t", fx.rootfs.join("tmp/tl")).unwrap();
        fx.access
            .set_attrs(
                "/tmp/tl",
                &SetAttrs {
                    mode: Some(0o600),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(fx.access.stat("/tmp/t").unwrap().mode, 0o600);
        assert!(fx.access.fs_stats("/").unwrap().block_size > 0);
    }

    /// Parses request headers given as (name, value) pairs, looked up
    /// case-insensitively as an HTTP header map does.
    fn parse(pairs: &[(&str, &str)]) -> Result<FileHeaders, FsError> {
        FileHeaders::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        })
    }

    #[test]
    fn file_headers_parse_like_incus() {
        let h = parse(&[
            ("X-Incus-uid", "1000"),
            ("X-Incus-gid", "100"),
            ("X-Incus-mode", "0644"),
            ("X-Incus-type", "file"),
            ("X-Incus-write", "append"),
        ])
        .unwrap();
        assert_eq!(
            h,
            FileHeaders {
                uid: Some(1000),
                gid: Some(100),
                mode: Some(0o644),
                kind: PushKind::File,
                write_mode: WriteMode::Append
            }
        );
        // pylxd's legacy names, and its mode format.
        let h = parse(&[
            ("x-lxd-mode", "0123"),
            ("X-LXD-type", "directory"),
            ("X-LXD-uid", "-1"),
        ])
        .unwrap();
        assert_eq!(
            (h.mode, h.kind, h.uid),
            (Some(0o123), PushKind::Directory, None)
        );
        assert_eq!(parse(&[]).unwrap(), FileHeaders::default());
        // X-Incus wins over X-LXD.
        let h = parse(&[("X-Incus-type", "symlink"), ("X-LXD-type", "file")]).unwrap();
        assert_eq!(h.kind, PushKind::Symlink);
        // Go ParseInt base 0: "644" is decimal; the result is masked to 0777.
        let h = parse(&[("X-Incus-mode", "644")]).unwrap();
        assert_eq!(h.mode, Some(644 & 0o777));
        assert_eq!(
            parse(&[("X-Incus-mode", "0o755")]).unwrap().mode,
            Some(0o755)
        );
        for (k, v) in [
            ("X-Incus-uid", "abc"),
            ("X-Incus-type", "fifo"),
            ("X-Incus-write", "prepend"),
            ("X-Incus-mode", "rwx"),
        ] {
            assert!(
                matches!(parse(&[(k, v)]), Err(FsError::InvalidHeader { .. })),
                "{k}: {v}"
            );
        }
    }

    #[test]
    fn response_headers_report_the_container_view() {
        let entry = Entry {
            kind: FileKind::Directory,
            uid: 1,
            gid: 2,
            mode: 0o4755,
            size: 0,
            atime: (0, 0),
            mtime: (1_700_000_000, 120_000_000),
            target: None,
        };
        let headers = FileHeaders::response_headers(&entry);
        let h = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(headers.len(), 10);
        assert_eq!(h("X-Incus-uid"), "1");
        assert_eq!(h("X-LXD-gid"), "2");
        assert_eq!(h("X-Incus-mode"), "0755");
        assert_eq!(h("X-Incus-type"), "directory");
        assert_eq!(h("X-Incus-modified"), "2023-11-14 22:13:20.12 +0000 UTC");
        assert_eq!(go_time_string(0, 0), "1970-01-01 00:00:00 +0000 UTC");
    }

    #[test]
    fn push_and_pull_follow_incus_semantics() {
        let fx = fixture(shifted(65536));
        let h = |pairs: &[(&str, &str)]| parse(pairs).unwrap();
        fx.access
            .push(
                "/tmp/f",
                &h(&[("X-Incus-uid", "5"), ("X-Incus-mode", "0600")]),
                &b"hello"[..],
            )
            .unwrap();
        match fx.access.pull("/tmp/f").unwrap() {
            Pulled::File { entry, file } => {
                assert_eq!((entry.uid, entry.gid, entry.mode), (5, 0, 0o600));
                assert_eq!(read_all(file), "hello");
            }
            other => panic!("{other:?}"),
        }
        fx.access
            .push("/tmp/d", &h(&[("X-Incus-type", "directory")]), &b""[..])
            .unwrap();
        fx.access
            .push("/tmp/d", &h(&[("X-Incus-type", "directory")]), &b""[..])
            .unwrap();
        fx.access
            .push("/tmp/d/l", &h(&[("X-Incus-type", "symlink")]), &b"../f"[..])
            .unwrap();
        fx.access
            .push("/tmp/d/l", &h(&[("X-Incus-type", "symlink")]), &b"../f"[..])
            .unwrap();
        assert!(matches!(
            fx.access.push(
                "/tmp/d/l",
                &h(&[("X-Incus-type", "symlink")]),
                &b"/other"[..]
            ),
            Err(FsError::Exists { .. })
        ));
        match fx.access.pull("/tmp/d/l").unwrap() {
            Pulled::Symlink { target, entry } => {
                assert_eq!(target, "/tmp/f");
                assert_eq!(entry.kind, FileKind::Symlink);
            }
            other => panic!("{other:?}"),
        }
        match fx.access.pull("/tmp").unwrap() {
            Pulled::Directory { names, entry } => {
                assert_eq!(names, vec!["d", "f"]);
                assert_eq!(entry.kind, FileKind::Directory);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            fx.access.pull("/missing"),
            Err(FsError::NotFound { .. })
        ));
        assert_eq!(FsError::NotFound { path: "/x".into() }.http_status(), 404);
    }

    #[test]
    fn clean_path_is_lexical() {
        assert_eq!(clean_path(""), "/");
        assert_eq!(clean_path("."), "/");
        assert_eq!(clean_path("a/b/../c/"), "/a/c");
        assert_eq!(clean_path("/../../x"), "/x");
    }
}
