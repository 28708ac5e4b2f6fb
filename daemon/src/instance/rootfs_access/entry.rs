//! What stat tells about a file as callers see it: kind, owners in container ids, mode, times.

use crate::instance::idmap::IdShift;

use super::ids::container_id;

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
    pub(super) fn from_mode(st_mode: u32) -> FileKind {
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
    pub(super) fn from_stat(st: &libc::stat, shift: &IdShift) -> Entry {
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
