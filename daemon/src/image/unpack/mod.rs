//! Unpacking Incus image tarballs that may have been written by an attacker.
//!
//! Two layouts exist. A *unified* image is one tarball holding `metadata.yaml`,
//! an optional `templates/` tree and the `rootfs/` tree. A *split* image is a
//! metadata tarball (`metadata.yaml` + `templates/`) and a separate rootfs
//! tarball whose entries are the root tree itself. Either tarball may be gzip,
//! xz or plain tar; the format is told by its magic bytes, not its name.
//!
//! Safety rules, all enforced while streaming:
//! - an entry path that is absolute or has a `..` component is refused
//!   ([`UnpackError::HostilePath`]); so is a hard link whose target is;
//! - nothing is ever created through a symlink: every parent is opened with
//!   `openat(O_DIRECTORY | O_NOFOLLOW)` one component at a time from a file
//!   descriptor on the destination, so a symlink entry (`rootfs/evil -> /tmp`)
//!   followed by `rootfs/evil/pwned` fails instead of writing to the host;
//! - symlink entries themselves are kept whatever their target: an absolute
//!   target such as `/bin/busybox` is normal in a rootfs and resolves inside
//!   the container;
//! - hard links may only point at an earlier entry of the same tree
//!   (`rootfs/` or `templates/`);
//! - character and block devices are refused ([`UnpackError::DeviceNode`]):
//!   a container gets its devices from the runtime, never from an image;
//! - the bytes written and the entries seen are counted as they stream and the
//!   unpacking stops at the first one over [`UnpackLimits`], so a
//!   decompression bomb costs at most the limit, not the disk;
//! - numeric uid/gid, the full mode (setuid, setgid, sticky), mtimes and the
//!   `user.*` / `security.capability` extended attributes are kept, which
//!   needs root (the daemon runs as root).
//!
//! In a unified tarball only `metadata.yaml`, `templates/**` and `rootfs/**`
//! (with or without a `./` prefix) are unpacked. Any other top-level entry is
//! *skipped*: image builders add stray files (manifests, checksums) and Incus
//! ignores them too; a skipped entry still counts against the limits and is
//! still refused if its path is hostile or it is a device node.
//!
//! On error the destination is left partly written: the caller removes it
//! (`std::fs::remove_dir_all`, which does not follow symlinks) and must not use
//! it. Nothing outside the destination is ever written.
//!
//! Code map: `reader` detects the compression and guards what the tar reader
//! buffers on its own; `unpacker` streams the entries into the destination
//! and enforces the rules above; `entry` reads what a tar header says (path,
//! link target, attributes, extended attributes); `nodes` creates files and
//! sets attributes relative to a directory fd; `metadata` parses
//! `metadata.yaml`; `fingerprint` hashes image files.

mod entry;
mod fingerprint;
mod metadata;
mod nodes;
mod reader;
#[cfg(test)]
mod tests;
mod unpacker;

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, Mode};

pub use fingerprint::{fingerprint_file, fingerprint_files};
pub use metadata::{read_metadata, ImageMetadata, MetadataError, MAX_METADATA_BYTES};
use unpacker::{Layout, Unpacker};

/// How much an image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total bytes of file contents written.
    pub max_bytes: u64,
    /// Number of tar entries read, including skipped ones.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 16 * 1024 * 1024 * 1024,
            max_entries: 2_000_000,
        }
    }
}

/// The `what` of [`UnpackError::TooLarge`] when [`UnpackLimits::max_bytes`] is what stopped
/// the unpacking: the caller tells its own limits apart by it (see
/// [`UnpackError::is_over_byte_limit`]).
pub const UNPACKED_BYTES: &str = "the unpacked size in bytes";

/// What a unified image unpacked to.
#[derive(Debug, Clone, PartialEq)]
pub struct Unpacked {
    pub metadata: ImageMetadata,
    /// Bytes of file contents written.
    pub bytes: u64,
    /// Tar entries read.
    pub entries: u64,
}

/// Why an image could not be unpacked. Every message names what was being
/// unpacked, so it can go to the API client as is.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(
        "reading image tarball: {compression} compression is not supported (gzip, xz or plain tar)"
    )]
    UnsupportedCompression { compression: &'static str },
    #[error("reading image tarball: {0}")]
    Read(#[source] io::Error),
    /// An I/O failure around the unpacking rather than inside it, e.g. the
    /// caller opening the tarball; the message says what was being done.
    #[error("unpacking image: {0}")]
    Io(#[source] io::Error),
    #[error("unpacking image entry {path}: {reason}")]
    HostilePath { path: String, reason: &'static str },
    #[error("unpacking image entry {path}: device nodes are not allowed in images")]
    DeviceNode { path: String },
    #[error("unpacking image: {what} is over the limit of {limit}")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("unpacking image entry {path}: {reason}")]
    Refused { path: String, reason: String },
    #[error("unpacking image entry {path}: {source}")]
    Entry {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("unpacking image into {}: {reason}", dest.display())]
    Destination { dest: PathBuf, reason: String },
    #[error("unpacking image: the image has no {0}")]
    Missing(&'static str),
    #[error("reading image metadata {}: {source}", path.display())]
    MetadataRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading image metadata {}: {source}", path.display())]
    Metadata {
        path: PathBuf,
        #[source]
        source: MetadataError,
    },
}

impl UnpackError {
    /// Whether the byte limit stopped the unpacking (not the entry count or a header).
    pub fn is_over_byte_limit(&self) -> bool {
        matches!(self, UnpackError::TooLarge { what, .. } if *what == UNPACKED_BYTES)
    }

    /// Whether the destination's filesystem ran out of space (or quota) while writing.
    pub fn is_out_of_space(&self) -> bool {
        let io = match self {
            UnpackError::Entry { source, .. } | UnpackError::Io(source) => source,
            _ => return false,
        };
        matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
    }
}

/// Unpacks a unified image tarball into `dest`, an existing empty directory,
/// which receives `metadata.yaml`, `templates/` and `rootfs/`.
/// On error the caller removes `dest`.
pub fn unpack_unified<R: Read>(
    src: R,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<Unpacked, UnpackError> {
    let root = open_empty_dir(dest)?;
    let mut unpacker = Unpacker::new(root, Layout::Unified, *limits);
    unpacker.run(src)?;
    if !unpacker.saw_rootfs {
        return Err(UnpackError::Missing("rootfs/ tree"));
    }
    let metadata = unpacker.finish_metadata(dest)?;
    Ok(Unpacked {
        metadata,
        bytes: unpacker.bytes,
        entries: unpacker.entries,
    })
}

/// Unpacks the metadata tarball of a split image into `dest`, an existing
/// empty directory, which receives `metadata.yaml` and `templates/`. Entries
/// under `rootfs/` are skipped like any other stray entry. The bytes and entries counted
/// include the skipped ones, so a caller can give the rootfs what is left of its limits.
/// On error the caller removes `dest`.
pub fn unpack_metadata<R: Read>(
    src: R,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<Unpacked, UnpackError> {
    let root = open_empty_dir(dest)?;
    let mut unpacker = Unpacker::new(root, Layout::MetadataOnly, *limits);
    unpacker.run(src)?;
    let metadata = unpacker.finish_metadata(dest)?;
    Ok(Unpacked {
        metadata,
        bytes: unpacker.bytes,
        entries: unpacker.entries,
    })
}

/// Unpacks the rootfs tarball of a split image into `rootfs` (normally
/// `dest/rootfs`), created if missing and otherwise required to be empty.
/// Returns the bytes written and the entries read.
/// On error the caller removes `rootfs` (or the whole image directory).
pub fn unpack_rootfs<R: Read>(
    src: R,
    rootfs: &Path,
    limits: &UnpackLimits,
) -> Result<(u64, u64), UnpackError> {
    match std::fs::create_dir(rootfs) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => {
            return Err(UnpackError::Destination {
                dest: rootfs.to_path_buf(),
                reason: format!("creating the directory: {err}"),
            })
        }
    }
    let root = open_empty_dir(rootfs)?;
    // A rootfs tarball without a `./` entry still needs a usable root.
    fchmod(root.as_raw_fd(), Mode::from_bits_truncate(0o755)).map_err(|errno| {
        UnpackError::Destination {
            dest: rootfs.to_path_buf(),
            reason: format!("setting its mode: {errno}"),
        }
    })?;
    let mut unpacker = Unpacker::new(root, Layout::Rootfs, *limits);
    unpacker.run(src)?;
    Ok((unpacker.bytes, unpacker.entries))
}

/// Opens `dest` as a real directory (not a symlink) and checks it is empty.
fn open_empty_dir(dest: &Path) -> Result<OwnedFd, UnpackError> {
    let dest_err = |reason: String| UnpackError::Destination {
        dest: dest.to_path_buf(),
        reason,
    };
    let fd = openat(
        None,
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| dest_err(format!("opening it as a directory: {errno}")))?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut listing =
        std::fs::read_dir(dest).map_err(|err| dest_err(format!("listing it: {err}")))?;
    if listing.next().is_some() {
        return Err(dest_err("it is not empty".to_string()));
    }
    Ok(fd)
}
