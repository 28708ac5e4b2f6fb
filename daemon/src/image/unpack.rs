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

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Cursor, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use serde::Deserialize;
use sha2::{Digest, Sha256};

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

// ---------------------------------------------------------------------------
// metadata.yaml: what every Incus image says about itself. It is written by
// image builders (distrobuilder, `incus publish`, the test images built here),
// so parsing is lenient where real images vary (unknown keys, numeric
// property values such as `release: 22.04`) and strict only where the daemon
// depends on a value (an architecture must be named).
// ---------------------------------------------------------------------------

/// The largest `metadata.yaml` accepted. Real ones are a few KiB; the cap keeps
/// a hostile image from making the daemon parse a gigabyte of YAML.
pub const MAX_METADATA_BYTES: u64 = 4 * 1024 * 1024;

/// What an image says about itself in `metadata.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageMetadata {
    /// Architecture name as Incus spells it (`x86_64`, `aarch64`, ...).
    pub architecture: String,
    /// Build time, seconds since the epoch (0 when the image does not say).
    pub creation_date: i64,
    /// When the image stops being current, seconds since the epoch.
    pub expiry_date: Option<i64>,
    /// Free-form properties (`os`, `release`, `description`, ...), all as text.
    pub properties: BTreeMap<String, String>,
    /// Template rules keyed by the path inside the container, kept as parsed:
    /// the template engine interprets them, not the unpacker.
    pub templates: BTreeMap<String, serde_yaml::Value>,
}

/// Why a `metadata.yaml` was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("parsing metadata.yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("metadata.yaml names no architecture")]
    NoArchitecture,
    #[error("metadata.yaml property {key:?} is not a scalar value")]
    PropertyNotScalar { key: String },
    #[error("metadata.yaml is {size} bytes, more than the {max} bytes allowed")]
    TooLarge { size: u64, max: u64 },
}

/// The on-disk shape; unknown keys are ignored (serde's default) because image
/// builders add their own.
#[derive(Deserialize)]
struct RawMetadata {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    creation_date: i64,
    #[serde(default)]
    expiry_date: Option<i64>,
    #[serde(default)]
    properties: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    templates: Option<BTreeMap<String, serde_yaml::Value>>,
}

impl ImageMetadata {
    /// Parses the bytes of a `metadata.yaml`.
    pub fn from_yaml(bytes: &[u8]) -> Result<Self, MetadataError> {
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(MetadataError::TooLarge {
                size: bytes.len() as u64,
                max: MAX_METADATA_BYTES,
            });
        }
        let raw: RawMetadata = serde_yaml::from_slice(bytes)?;
        if raw.architecture.trim().is_empty() {
            return Err(MetadataError::NoArchitecture);
        }
        let mut properties = BTreeMap::new();
        for (key, value) in raw.properties.unwrap_or_default() {
            let text = scalar_to_string(&value)
                .ok_or_else(|| MetadataError::PropertyNotScalar { key: key.clone() })?;
            properties.insert(key, text);
        }
        Ok(ImageMetadata {
            architecture: raw.architecture,
            creation_date: raw.creation_date,
            // Incus writes 0 for "never expires"; both mean the same here.
            expiry_date: raw.expiry_date.filter(|date| *date != 0),
            properties,
            templates: raw.templates.unwrap_or_default(),
        })
    }
}

/// Go's YAML decoder turns any scalar into a string when the target is a
/// string map, so `release: 22.04` is valid there; do the same.
fn scalar_to_string(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(text) => Some(text.clone()),
        serde_yaml::Value::Number(number) => Some(number.to_string()),
        serde_yaml::Value::Bool(flag) => Some(flag.to_string()),
        serde_yaml::Value::Null => Some(String::new()),
        _ => None,
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
/// under `rootfs/` are skipped like any other stray entry.
/// On error the caller removes `dest`.
pub fn unpack_metadata<R: Read>(
    src: R,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<ImageMetadata, UnpackError> {
    let root = open_empty_dir(dest)?;
    let mut unpacker = Unpacker::new(root, Layout::MetadataOnly, *limits);
    unpacker.run(src)?;
    unpacker.finish_metadata(dest)
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

/// Reads and parses `metadata.yaml` at `path`, refusing a symlink there.
pub fn read_metadata(path: &Path) -> Result<ImageMetadata, UnpackError> {
    let read_err = |source| UnpackError::MetadataRead {
        path: path.to_path_buf(),
        source,
    };
    let fd = openat(
        None,
        path,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| read_err(errno.into()))?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    // Read one byte past the cap so an oversized file is reported as such.
    file.take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    ImageMetadata::from_yaml(&bytes).map_err(|source| UnpackError::Metadata {
        path: path.to_path_buf(),
        source,
    })
}

/// SHA-256 of a file, lowercase hex: the fingerprint of a unified image.
pub fn fingerprint_file(path: &Path) -> io::Result<String> {
    fingerprint_files(&[path])
}

/// SHA-256 over the concatenated bytes of `paths`, lowercase hex. For a split
/// image Incus hashes the metadata tarball followed by the rootfs tarball.
pub fn fingerprint_files(paths: &[&Path]) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    for path in paths {
        let mut file = File::open(path)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Which tarball is being unpacked, hence which top-level names are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Unified,
    MetadataOnly,
    Rootfs,
}

/// Where an entry goes once its path is understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Skip,
    Metadata,
    Templates,
    Rootfs,
}

/// Bytes the tar reader may pull from the stream without the unpacker seeing
/// them: headers, padding and GNU long-name / PAX extension records, which
/// the tar crate buffers whole in memory. Real ones are a few KiB.
const UNACCOUNTED_READ_LIMIT: u64 = 8 * 1024 * 1024;

const COPY_CHUNK: usize = 128 * 1024;

/// Counts bytes pulled from the decompressed stream since the unpacker last
/// accounted for them, and fails the read once that passes
/// [`UNACCOUNTED_READ_LIMIT`]. File data is accounted chunk by chunk, so only
/// what the tar crate reads on its own (a 10 GiB "long name") trips it.
struct GuardedReader<R> {
    inner: R,
    unaccounted: Rc<Cell<u64>>,
    tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for GuardedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.unaccounted.get().saturating_add(n as u64);
        self.unaccounted.set(total);
        if total > UNACCOUNTED_READ_LIMIT {
            self.tripped.set(true);
            return Err(io::Error::other("tar header data over the limit"));
        }
        Ok(n)
    }
}

/// Attributes of an entry taken from its header.
#[derive(Debug, Clone, Copy)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// A directory whose attributes are set once everything inside it is written:
/// creating children would bump its mtime, and a read-only mode must not get
/// in the way of its own children.
struct DeferredDir {
    components: Vec<Vec<u8>>,
    attrs: Attrs,
    xattrs: Vec<Xattr>,
    path: String,
}

/// An extended attribute to set on an unpacked file or directory.
struct Xattr {
    name: CString,
    value: Vec<u8>,
}

struct Unpacker {
    root: OwnedFd,
    layout: Layout,
    limits: UnpackLimits,
    bytes: u64,
    entries: u64,
    dirs: Vec<DeferredDir>,
    saw_metadata: bool,
    saw_rootfs: bool,
    unaccounted: Rc<Cell<u64>>,
    tripped: Rc<Cell<bool>>,
}

impl Unpacker {
    fn new(root: OwnedFd, layout: Layout, limits: UnpackLimits) -> Self {
        Unpacker {
            root,
            layout,
            limits,
            bytes: 0,
            entries: 0,
            dirs: Vec::new(),
            saw_metadata: false,
            saw_rootfs: false,
            unaccounted: Rc::new(Cell::new(0)),
            tripped: Rc::new(Cell::new(false)),
        }
    }

    fn run<R: Read>(&mut self, src: R) -> Result<(), UnpackError> {
        let reader = GuardedReader {
            inner: decompress(src)?,
            unaccounted: Rc::clone(&self.unaccounted),
            tripped: Rc::clone(&self.tripped),
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|err| self.stream_error(err))?;
        for entry in entries {
            let mut entry = entry.map_err(|err| self.stream_error(err))?;
            // The header (and any extension records) just read is accounted
            // for by the entry count.
            self.unaccounted.set(0);
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(UnpackError::TooLarge {
                    what: "the number of entries",
                    limit: self.limits.max_entries,
                });
            }
            self.unpack_entry(&mut entry)?;
        }
        self.apply_directory_attrs()
    }

    /// Maps an error of the tar stream, telling a tripped guard apart from a
    /// corrupt or truncated archive.
    fn stream_error(&self, err: io::Error) -> UnpackError {
        if self.tripped.get() {
            UnpackError::TooLarge {
                what: "a tar header or extension record",
                limit: UNACCOUNTED_READ_LIMIT,
            }
        } else {
            UnpackError::Read(err)
        }
    }

    fn unpack_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let components =
            split_entry_path(&raw_path).map_err(|reason| UnpackError::HostilePath {
                path: shown.clone(),
                reason,
            })?;
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() {
            return Err(UnpackError::DeviceNode { path: shown });
        }

        self.check_declared_size(entry.size())?;

        let target = self.classify(&components);
        if target == Target::Skip || kind.is_pax_global_extensions() {
            tracing::debug!(entry = %shown, "skipping image entry outside the image trees");
            return self.drain(entry, &shown, None);
        }
        if target == Target::Rootfs {
            self.saw_rootfs = true;
        }
        let attrs = self.attrs(entry, &shown)?;

        if target == Target::Metadata {
            if !(kind.is_file() || kind.is_contiguous()) {
                return Err(refused(&shown, "metadata.yaml must be a regular file"));
            }
            if entry.size() > MAX_METADATA_BYTES {
                return Err(refused(
                    &shown,
                    format!("metadata.yaml is larger than {MAX_METADATA_BYTES} bytes"),
                ));
            }
            self.saw_metadata = true;
        }
        // The top directory of a tree (`rootfs/`, `templates/`) must be a
        // directory, or every later entry of the tree would fail confusingly.
        let is_tree_top = self.layout != Layout::Rootfs && components.len() == 1;
        if is_tree_top && target != Target::Metadata && !kind.is_dir() {
            return Err(refused(
                &shown,
                "the top of an image tree must be a directory",
            ));
        }
        // Templates are read by the daemon when rendering; only plain files
        // and directories, so rendering can never be pointed elsewhere.
        if target == Target::Templates && !(kind.is_dir() || kind.is_file() || kind.is_contiguous())
        {
            return Err(refused(
                &shown,
                "only files and directories are allowed under templates/",
            ));
        }

        if components.is_empty() {
            // The archive's `./` entry: in a rootfs tarball it carries the
            // attributes of the root directory itself.
            if self.layout == Layout::Rootfs && kind.is_dir() {
                let xattrs = entry_xattrs(entry, &shown)?;
                self.dirs.push(DeferredDir {
                    components: Vec::new(),
                    attrs,
                    xattrs,
                    path: shown,
                });
            }
            return self.drain(entry, "archive root", None);
        }

        let (name, parents) = match components.split_last() {
            Some(split) => split,
            None => return Ok(()),
        };
        let name: &[u8] = name;
        let parent = self.open_dir(parents, true, &shown)?;
        let parent_fd = parent.as_raw_fd();
        let entry_err = |source: io::Error| UnpackError::Entry {
            path: shown.clone(),
            source,
        };

        let is_file = kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse();
        if !is_file {
            // Other entry types carry no data, but a crafted header may
            // declare some: read it here, counted, instead of letting the tar
            // reader skip it behind the guard.
            self.drain(entry, &shown, None)?;
        }
        if is_file {
            self.write_file(entry, parent_fd, name, attrs, &shown)
        } else if kind.is_dir() {
            make_dir(parent_fd, name).map_err(entry_err)?;
            let xattrs = entry_xattrs(entry, &shown)?;
            self.dirs.push(DeferredDir {
                components: components.iter().map(|c| c.to_vec()).collect(),
                attrs,
                xattrs,
                path: shown,
            });
            Ok(())
        } else if kind.is_symlink() {
            let link = link_target(entry, &shown)?;
            replace_existing(parent_fd, name, |fd| {
                symlinkat(link.as_slice(), Some(fd), name)
            })
            .map_err(entry_err)?;
            set_link_attrs(parent_fd, name, attrs).map_err(entry_err)
        } else if kind.is_hard_link() {
            self.hard_link(entry, &components, parent_fd, name, &shown)
        } else if kind.is_fifo() {
            replace_existing(parent_fd, name, |fd| {
                mknodat(
                    Some(fd),
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                )
            })
            .map_err(entry_err)?;
            set_node_attrs(parent_fd, name, attrs).map_err(entry_err)
        } else {
            Err(refused(
                &shown,
                format!("unsupported tar entry type {:?}", kind.as_byte() as char),
            ))
        }
    }

    /// Decides where an entry goes from its first path component.
    fn classify(&self, components: &[&[u8]]) -> Target {
        let first = match components.first() {
            Some(first) => *first,
            None => {
                return match self.layout {
                    Layout::Rootfs => Target::Rootfs,
                    _ => Target::Skip,
                }
            }
        };
        match self.layout {
            Layout::Rootfs => Target::Rootfs,
            Layout::Unified | Layout::MetadataOnly => match first {
                b"metadata.yaml" if components.len() == 1 => Target::Metadata,
                b"templates" => Target::Templates,
                b"rootfs" if self.layout == Layout::Unified => Target::Rootfs,
                _ => Target::Skip,
            },
        }
    }

    fn attrs<R: Read>(&self, entry: &tar::Entry<'_, R>, shown: &str) -> Result<Attrs, UnpackError> {
        let header = entry.header();
        let field =
            |what: &str, err: io::Error| refused(shown, format!("bad {what} in header: {err}"));
        let mode = header.mode().map_err(|err| field("mode", err))? & 0o7777;
        let uid = header.uid().map_err(|err| field("uid", err))?;
        let gid = header.gid().map_err(|err| field("gid", err))?;
        let mtime = header.mtime().map_err(|err| field("mtime", err))?;
        let uid =
            u32::try_from(uid).map_err(|_| refused(shown, format!("uid {uid} out of range")))?;
        let gid =
            u32::try_from(gid).map_err(|_| refused(shown, format!("gid {gid} out of range")))?;
        Ok(Attrs {
            mode,
            uid,
            gid,
            mtime: i64::try_from(mtime).unwrap_or(i64::MAX),
        })
    }

    /// Adds `n` bytes of file data to the total, failing past the limit.
    fn account(&mut self, n: u64) -> Result<(), UnpackError> {
        self.bytes = self.bytes.saturating_add(n);
        self.unaccounted.set(0);
        if self.bytes > self.limits.max_bytes {
            return Err(UnpackError::TooLarge {
                what: "the unpacked size in bytes",
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Refuses a declared size over the limit before anything of the entry is
    /// created or read: a bomb stops here, at its header.
    fn check_declared_size(&self, size: u64) -> Result<(), UnpackError> {
        if self.bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(UnpackError::TooLarge {
                what: "the unpacked size in bytes",
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Streams an entry's data into `out` (or nowhere), counting every byte.
    fn drain<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
        mut out: Option<&mut File>,
    ) -> Result<(), UnpackError> {
        self.check_declared_size(entry.size())?;
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(UnpackError::Read(io::Error::new(
                        err.kind(),
                        format!("reading entry {shown}: {err}"),
                    )))
                }
            };
            self.account(n as u64)?;
            if let Some(file) = out.as_mut() {
                file.write_all(&buf[..n])
                    .map_err(|source| UnpackError::Entry {
                        path: shown.to_string(),
                        source,
                    })?;
            }
        }
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: RawFd,
        name: &[u8],
        attrs: Attrs,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let entry_err = |source: io::Error| UnpackError::Entry {
            path: shown.to_string(),
            source,
        };
        let xattrs = entry_xattrs(entry, shown)?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = replace_existing(parent, name, |fd| {
            openat(Some(fd), name, flags, Mode::from_bits_truncate(0o600))
        })
        .map_err(entry_err)?;
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        self.drain(entry, shown, Some(&mut file))?;
        // After chown, which would clear security.capability.
        set_fd_attrs(file.as_raw_fd(), attrs)
            .and_then(|()| set_xattrs(file.as_raw_fd(), &xattrs, shown))
            .map_err(entry_err)
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        components: &[&[u8]],
        parent: RawFd,
        name: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let link = link_target(entry, shown)?;
        let hostile = |reason| UnpackError::HostilePath {
            path: shown.to_string(),
            reason,
        };
        let target = split_entry_path(&link).map_err(|reason| match reason {
            ABSOLUTE => hostile("hard link target is an absolute path"),
            _ => hostile("hard link target leaves the image with `..`"),
        })?;
        // In a unified tarball both ends must be in the same tree: a rootfs
        // file hard-linked to metadata.yaml or a template would let the
        // container rewrite what the daemon reads.
        let same_tree = match self.layout {
            Layout::Rootfs => !target.is_empty(),
            Layout::Unified | Layout::MetadataOnly => {
                target.len() > 1 && target.first() == components.first()
            }
        };
        if !same_tree {
            return Err(hostile("hard link target is outside the entry's tree"));
        }
        if target == components {
            return Ok(());
        }
        let (target_name, target_parents) = match target.split_last() {
            Some(split) => split,
            None => return Err(hostile("hard link target is outside the entry's tree")),
        };
        // Never create directories for a link target: it must already exist,
        // i.e. be an earlier entry (the destination started empty).
        let target_parent = self.open_dir(target_parents, false, shown)?;
        replace_existing(parent, name, |fd| {
            linkat(
                Some(target_parent.as_raw_fd()),
                *target_name,
                Some(fd),
                name,
                nix::fcntl::AtFlags::empty(),
            )
        })
        .map_err(|source| UnpackError::Entry {
            path: shown.to_string(),
            source: io::Error::new(
                source.kind(),
                format!("linking to {}: {source}", String::from_utf8_lossy(&link)),
            ),
        })
    }

    /// Opens the directory `components` below the root, one component at a
    /// time and never through a symlink. Missing directories are created
    /// (mode 0755, as tar does) when `create` is set.
    fn open_dir(
        &self,
        components: &[&[u8]],
        create: bool,
        shown: &str,
    ) -> Result<OwnedFd, UnpackError> {
        let mut current = dup_fd(&self.root).map_err(|source| UnpackError::Entry {
            path: shown.to_string(),
            source,
        })?;
        for (depth, component) in components.iter().enumerate() {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let opened = match openat(Some(current.as_raw_fd()), *component, flags, Mode::empty()) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(
                        Some(current.as_raw_fd()),
                        *component,
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(errno) => {
                            return Err(self.parent_error(components, depth, shown, errno))
                        }
                    }
                    let fd = openat(Some(current.as_raw_fd()), *component, flags, Mode::empty())
                        .map_err(|errno| self.parent_error(components, depth, shown, errno))?;
                    // mkdir applied the umask; tar's implicit directories are 0755.
                    fchmod(fd, Mode::from_bits_truncate(0o755))
                        .map_err(|errno| self.parent_error(components, depth, shown, errno))?;
                    fd
                }
                Ok(fd) => fd,
                Err(Errno::ENOTDIR) if is_symlink(current.as_raw_fd(), component) => {
                    return Err(self.parent_error(components, depth, shown, Errno::ELOOP))
                }
                Err(errno) => return Err(self.parent_error(components, depth, shown, errno)),
            };
            // SAFETY: `opened` was just returned by openat and is owned by nobody else.
            current = unsafe { OwnedFd::from_raw_fd(opened) };
        }
        Ok(current)
    }

    fn parent_error(
        &self,
        components: &[&[u8]],
        depth: usize,
        shown: &str,
        errno: Errno,
    ) -> UnpackError {
        let parent = components
            .get(..=depth)
            .unwrap_or(components)
            .iter()
            .map(|c| String::from_utf8_lossy(c))
            .collect::<Vec<_>>()
            .join("/");
        match errno {
            // O_NOFOLLOW on a symlink: the archive tried to write through one.
            Errno::ELOOP => UnpackError::HostilePath {
                path: shown.to_string(),
                reason: "a parent directory is a symlink",
            },
            Errno::ENOTDIR => refused(shown, format!("parent {parent} is not a directory")),
            Errno::ENOENT => refused(shown, format!("{parent} does not exist")),
            other => UnpackError::Entry {
                path: shown.to_string(),
                source: io::Error::new(
                    io::Error::from(other).kind(),
                    format!("opening directory {parent}: {other}"),
                ),
            },
        }
    }

    /// Sets the attributes of every directory entry, deepest last-created
    /// first, now that nothing more is written into them.
    fn apply_directory_attrs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        for dir in dirs.iter().rev() {
            let components: Vec<&[u8]> = dir.components.iter().map(|c| c.as_slice()).collect();
            let fd = self.open_dir(&components, false, &dir.path)?;
            set_fd_attrs(fd.as_raw_fd(), dir.attrs)
                .and_then(|()| set_xattrs(fd.as_raw_fd(), &dir.xattrs, &dir.path))
                .map_err(|source| UnpackError::Entry {
                    path: dir.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    fn finish_metadata(&self, dest: &Path) -> Result<ImageMetadata, UnpackError> {
        if !self.saw_metadata {
            return Err(UnpackError::Missing("metadata.yaml"));
        }
        read_metadata(&dest.join("metadata.yaml"))
    }
}

const ABSOLUTE: &str = "absolute path";
const DOTDOT: &str = "path leaves the image with `..`";

/// Splits a tar path into its components, dropping empty and `.` ones.
/// Absolute paths and `..` anywhere are refused, whatever they would resolve
/// to: a well-formed image never needs them.
fn split_entry_path(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err(ABSOLUTE);
    }
    let mut components = Vec::new();
    for component in raw.split(|byte| *byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(DOTDOT),
            _ => components.push(component),
        }
    }
    Ok(components)
}

fn refused(path: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        path: path.to_string(),
        reason: reason.into(),
    }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, shown: &str) -> Result<Vec<u8>, UnpackError> {
    match entry.link_name_bytes() {
        Some(Cow::Borrowed(bytes)) if !bytes.is_empty() => Ok(bytes.to_vec()),
        Some(Cow::Owned(bytes)) if !bytes.is_empty() => Ok(bytes),
        _ => Err(refused(shown, "link entry without a target")),
    }
}

/// Detects the compression from the magic bytes and returns the tar stream.
fn decompress<'a, R: Read + 'a>(mut src: R) -> Result<Box<dyn Read + 'a>, UnpackError> {
    let mut magic = [0u8; 6];
    let mut filled = 0;
    while filled < magic.len() {
        match src.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(UnpackError::Read(err)),
        }
    }
    let head = &magic[..filled];
    let stream = Cursor::new(head.to_vec()).chain(src);
    if head.starts_with(&[0x1f, 0x8b]) {
        // Multi-member: parallel compressors (pigz) write several members.
        Ok(Box::new(flate2::read::MultiGzDecoder::new(stream)))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Ok(Box::new(xz2::read::XzDecoder::new_multi_decoder(stream)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(UnpackError::UnsupportedCompression {
            compression: "zstd",
        })
    } else if head.starts_with(b"BZh") {
        Err(UnpackError::UnsupportedCompression {
            compression: "bzip2",
        })
    } else if head.starts_with(&[0x5d, 0x00, 0x00]) {
        Err(UnpackError::UnsupportedCompression {
            compression: "lzma",
        })
    } else {
        // Plain tar, or garbage that the tar reader will refuse.
        Ok(Box::new(stream))
    }
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

fn dup_fd(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

/// Runs `create`; if the name is taken by an earlier entry (tar archives may
/// repeat a path, and the later one wins), removes it and runs `create` again.
/// A directory is never removed: replacing a directory would silently drop
/// what an earlier part of the archive put in it.
fn replace_existing<T>(
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
fn make_dir(parent: RawFd, name: &[u8]) -> io::Result<()> {
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

/// Extended attributes carried as PAX `SCHILY.xattr.NAME` records (GNU tar
/// `--xattrs`, Go's archive/tar). Only `user.*` and `security.capability`
/// (file capabilities, e.g. `ping`'s cap_net_raw) are kept: `trusted.*` and
/// other `security.*` labels are the host's business, and `system.*` ACLs
/// name host ids.
fn entry_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
) -> Result<Vec<Xattr>, UnpackError> {
    let mut xattrs = Vec::new();
    let extensions = match entry.pax_extensions() {
        Ok(Some(extensions)) => extensions,
        Ok(None) => return Ok(xattrs),
        Err(err) => return Err(refused(shown, format!("bad PAX header: {err}"))),
    };
    for extension in extensions {
        let extension =
            extension.map_err(|err| refused(shown, format!("bad PAX record: {err}")))?;
        let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        if !(name.starts_with(b"user.") || name == b"security.capability") {
            continue;
        }
        let name = CString::new(name)
            .map_err(|_| refused(shown, "extended attribute name with a NUL byte"))?;
        xattrs.push(Xattr {
            name,
            value: extension.value_bytes().to_vec(),
        });
    }
    Ok(xattrs)
}

/// Sets extended attributes on an open file. A filesystem without xattr
/// support loses them with a warning, as tar does, rather than failing the
/// whole image.
fn set_xattrs(fd: RawFd, xattrs: &[Xattr], shown: &str) -> io::Result<()> {
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
fn is_symlink(parent: RawFd, name: &[u8]) -> bool {
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
fn set_fd_attrs(fd: RawFd, attrs: Attrs) -> io::Result<()> {
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
fn set_link_attrs(parent: RawFd, name: &[u8], attrs: Attrs) -> io::Result<()> {
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
fn set_node_attrs(parent: RawFd, name: &[u8], attrs: Attrs) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    const METADATA: &str = "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: busybox\n  release: \"1.36\"\ntemplates:\n  /etc/hostname:\n    when: [create]\n    template: hostname.tpl\n";
    const MTIME: u64 = 1_600_000_000;

    fn me() -> (u64, u64) {
        (
            u64::from(nix::unistd::geteuid().as_raw()),
            u64::from(nix::unistd::getegid().as_raw()),
        )
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Builds tarballs entry by entry, including entries `tar::Builder`'s
    /// path setters refuse (absolute, `..`): those names are written into
    /// the header bytes directly.
    struct Tarball {
        builder: tar::Builder<Vec<u8>>,
    }

    impl Tarball {
        fn new() -> Self {
            Tarball {
                builder: tar::Builder::new(Vec::new()),
            }
        }

        fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(size);
            let (uid, gid) = me();
            header.set_uid(uid);
            header.set_gid(gid);
            header.set_mtime(MTIME);
            header
        }

        /// Appends with the name (and link name) bytes put in the header as is.
        fn raw(
            mut self,
            mut header: tar::Header,
            name: &str,
            link: Option<&str>,
            data: &[u8],
        ) -> Self {
            {
                let old = header.as_old_mut();
                old.name = [0; 100];
                old.name[..name.len()].copy_from_slice(name.as_bytes());
                if let Some(link) = link {
                    old.linkname = [0; 100];
                    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
                }
            }
            header.set_cksum();
            self.builder.append(&header, data).unwrap();
            self
        }

        fn dir(self, name: &str, mode: u32) -> Self {
            self.raw(
                Self::header(tar::EntryType::Directory, mode, 0),
                name,
                None,
                b"",
            )
        }

        fn file(self, name: &str, mode: u32, data: &[u8]) -> Self {
            let header = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
            self.raw(header, name, None, data)
        }

        fn owned_file(self, name: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> Self {
            let mut header = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
            header.set_uid(uid);
            header.set_gid(gid);
            self.raw(header, name, None, data)
        }

        fn symlink(self, name: &str, target: &str) -> Self {
            let header = Self::header(tar::EntryType::Symlink, 0o777, 0);
            self.raw(header, name, Some(target), b"")
        }

        fn hardlink(self, name: &str, target: &str) -> Self {
            let header = Self::header(tar::EntryType::Link, 0o644, 0);
            self.raw(header, name, Some(target), b"")
        }

        fn node(self, name: &str, kind: tar::EntryType) -> Self {
            self.raw(Self::header(kind, 0o666, 0), name, None, b"")
        }

        fn metadata(self) -> Self {
            self.file("metadata.yaml", 0o644, METADATA.as_bytes())
        }

        fn finish(self) -> Vec<u8> {
            self.builder.into_inner().unwrap()
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn xz(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = xz2::write::XzEncoder::new(Vec::new(), 1);
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// A busybox-like unified image: setuid binary, relative and absolute
    /// symlinks, a hard link, a fifo, a sticky /tmp, `./` prefixes.
    fn busybox_image() -> Vec<u8> {
        Tarball::new()
            .metadata()
            .dir("templates/", 0o755)
            .file("templates/hostname.tpl", 0o644, b"{{ container.name }}\n")
            .dir("./rootfs/", 0o755)
            .dir("rootfs/bin/", 0o755)
            .file("rootfs/bin/busybox", 0o4755, b"\x7fELF fake busybox")
            .symlink("rootfs/bin/sh", "busybox")
            .hardlink("rootfs/bin/ls", "rootfs/bin/busybox")
            .dir("rootfs/sbin/", 0o755)
            .symlink("rootfs/sbin/init", "/bin/busybox")
            .dir("rootfs/etc/", 0o755)
            .file(
                "rootfs/etc/passwd",
                0o644,
                b"root:x:0:0:root:/root:/bin/sh\n",
            )
            .file("rootfs/etc/shadow", 0o640, b"root:*:19000:0:99999:7:::\n")
            .dir("rootfs/tmp/", 0o1777)
            .dir("rootfs/dev/", 0o755)
            .node("rootfs/run/initctl", tar::EntryType::Fifo)
            // A file whose parents were never listed: created implicitly.
            .file("rootfs/usr/share/doc/README", 0o444, b"read me\n")
            .dir("rootfs/readonly/", 0o555)
            .file("rootfs/readonly/inside", 0o600, b"x")
            .finish()
    }

    fn check_busybox(dest: &Path, unpacked: &Unpacked) {
        assert_eq!(unpacked.metadata.architecture, "x86_64");
        assert_eq!(unpacked.metadata.properties["release"], "1.36");
        assert!(unpacked.metadata.templates.contains_key("/etc/hostname"));
        assert_eq!(unpacked.entries, 19);
        let root = dest.join("rootfs");
        let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();

        let busybox = meta("bin/busybox");
        assert_eq!(busybox.permissions().mode() & 0o7777, 0o4755);
        assert_eq!(busybox.mtime(), MTIME as i64);
        assert_eq!(
            std::fs::read(root.join("bin/busybox")).unwrap(),
            b"\x7fELF fake busybox"
        );
        assert_eq!(
            meta("bin/ls").ino(),
            busybox.ino(),
            "hard link shares the inode"
        );
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            std::fs::read_link(root.join("sbin/init")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(meta("sbin/init").mtime(), MTIME as i64);
        assert_eq!(meta("etc/shadow").permissions().mode() & 0o7777, 0o640);
        assert_eq!(meta("tmp").permissions().mode() & 0o7777, 0o1777);
        assert_eq!(
            meta("tmp").mtime(),
            MTIME as i64,
            "directory mtime survives its children"
        );
        assert_eq!(meta("readonly").permissions().mode() & 0o7777, 0o555);
        assert_eq!(meta("readonly").mtime(), MTIME as i64);
        assert!(meta("run/initctl").file_type().is_fifo());
        assert_eq!(meta("usr/share").permissions().mode() & 0o7777, 0o755);
        assert_eq!(
            meta("usr/share/doc/README").permissions().mode() & 0o7777,
            0o444
        );
        assert_eq!(meta(".").permissions().mode() & 0o7777, 0o755);
        assert_eq!(
            std::fs::read_to_string(dest.join("templates/hostname.tpl")).unwrap(),
            "{{ container.name }}\n"
        );
        let contents: [&[u8]; 6] = [
            b"{{ container.name }}\n",
            b"\x7fELF fake busybox",
            b"root:x:0:0:root:/root:/bin/sh\n",
            b"root:*:19000:0:99999:7:::\n",
            b"read me\n",
            b"x",
        ];
        let file_bytes = METADATA.len() + contents.iter().map(|c| c.len()).sum::<usize>();
        assert_eq!(unpacked.bytes, file_bytes as u64);
    }

    fn unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let result = unpack_unified(bytes, dir.path(), &UnpackLimits::default());
        (dir, result)
    }

    #[test]
    fn busybox_image_round_trips_gzip_xz_and_plain() {
        let tar = busybox_image();
        for (name, bytes) in [
            ("gzip", gzip(&tar)),
            ("xz", xz(&tar)),
            ("plain", tar.clone()),
        ] {
            let (dir, result) = unpack(&bytes);
            let unpacked = result.unwrap_or_else(|err| panic!("{name}: {err}"));
            check_busybox(dir.path(), &unpacked);
        }
    }

    /// A PAX `x` header whose records apply to the next entry.
    fn pax_header(records: &[(&str, &[u8])]) -> (tar::Header, Vec<u8>) {
        let mut data = Vec::new();
        for (key, value) in records {
            // The length prefix counts itself, so find the fixed point.
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let header = Tarball::header(tar::EntryType::XHeader, 0o644, data.len() as u64);
        (header, data)
    }

    fn xattrs_supported(dir: &Path) -> bool {
        let probe = dir.join("xattr-probe");
        std::fs::write(&probe, b"").unwrap();
        let file = File::open(&probe).unwrap();
        let name = CString::new("user.probe").unwrap();
        // SAFETY: valid NUL-terminated name and a 1-byte buffer.
        let rc =
            unsafe { libc::fsetxattr(file.as_raw_fd(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
        std::fs::remove_file(&probe).unwrap();
        rc == 0
    }

    fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let file = File::open(path).unwrap();
        let name = CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: valid NUL-terminated name and a buffer of the given size.
        let n = unsafe {
            libc::fgetxattr(
                file.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    #[test]
    fn user_xattrs_are_kept_and_host_ones_dropped() {
        let dir = tempfile::tempdir().unwrap();
        if !xattrs_supported(dir.path()) {
            eprintln!("skipped: no user xattrs on this filesystem");
            return;
        }
        let (pax, records) = pax_header(&[
            ("SCHILY.xattr.user.cairn", b"kept"),
            ("SCHILY.xattr.trusted.evil", b"dropped"),
            ("SCHILY.xattr.security.selinux", b"dropped"),
        ]);
        let (dir_pax, dir_records) = pax_header(&[("SCHILY.xattr.user.dir", b"d")]);
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .raw(dir_pax, "././@PaxHeader", None, &dir_records)
            .dir("rootfs/etc/", 0o755)
            .raw(pax, "././@PaxHeader", None, &records)
            .file("rootfs/etc/tagged", 0o644, b"x")
            .finish();
        let unpacked =
            unpack_unified(tar.as_slice(), dir.path(), &UnpackLimits::default()).unwrap();
        assert_eq!(unpacked.entries, 4, "PAX headers are not entries");
        let tagged = dir.path().join("rootfs/etc/tagged");
        assert_eq!(
            get_xattr(&tagged, "user.cairn").as_deref(),
            Some(&b"kept"[..])
        );
        assert_eq!(get_xattr(&tagged, "trusted.evil"), None);
        assert_ne!(
            get_xattr(&tagged, "security.selinux").as_deref(),
            Some(&b"dropped"[..])
        );
        let etc = dir.path().join("rootfs/etc");
        assert_eq!(get_xattr(&etc, "user.dir").as_deref(), Some(&b"d"[..]));
    }

    #[test]
    fn ownership_is_kept_numerically() {
        if !is_root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .owned_file("rootfs/owned", 0o6750, 1000, 12345, b"data")
            .finish();
        let (dir, result) = unpack(&tar);
        result.unwrap();
        let meta = std::fs::metadata(dir.path().join("rootfs/owned")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 12345));
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o6750,
            "setuid survives chown"
        );
    }

    #[test]
    fn split_image_unpacks_and_fingerprints_like_incus() {
        let meta_tar = gzip(
            &Tarball::new()
                .metadata()
                .dir("templates/", 0o755)
                .file("templates/hosts.tpl", 0o644, b"127.0.0.1 localhost\n")
                .finish(),
        );
        let rootfs_tar = xz(&Tarball::new()
            .dir("./", 0o755)
            .dir("./bin/", 0o755)
            .file("./bin/busybox", 0o755, b"bb")
            .symlink("bin/sh", "/bin/busybox")
            .finish());
        let dir = tempfile::tempdir().unwrap();
        let limits = UnpackLimits::default();
        let metadata = unpack_metadata(meta_tar.as_slice(), dir.path(), &limits).unwrap();
        assert_eq!(metadata.architecture, "x86_64");
        let (bytes, entries) =
            unpack_rootfs(rootfs_tar.as_slice(), &dir.path().join("rootfs"), &limits).unwrap();
        assert_eq!((bytes, entries), (2, 4));
        assert_eq!(
            std::fs::read(dir.path().join("rootfs/bin/busybox")).unwrap(),
            b"bb"
        );
        assert!(dir.path().join("templates/hosts.tpl").is_file());

        let files = tempfile::tempdir().unwrap();
        let meta_path = files.path().join("meta.tar.gz");
        let rootfs_path = files.path().join("rootfs.tar.xz");
        std::fs::write(&meta_path, &meta_tar).unwrap();
        std::fs::write(&rootfs_path, &rootfs_tar).unwrap();
        let mut both = meta_tar.clone();
        both.extend_from_slice(&rootfs_tar);
        assert_eq!(
            fingerprint_files(&[&meta_path, &rootfs_path]).unwrap(),
            hex::encode(Sha256::digest(&both))
        );
        assert_eq!(
            fingerprint_file(&meta_path).unwrap(),
            hex::encode(Sha256::digest(&meta_tar))
        );
    }

    #[test]
    fn rootfs_tarball_without_root_entry_gets_a_0755_root() {
        let tar = Tarball::new().file("etc/hostname", 0o644, b"c1\n").finish();
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        unpack_rootfs(tar.as_slice(), &rootfs, &UnpackLimits::default()).unwrap();
        let mode = std::fs::metadata(&rootfs).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn absolute_paths_are_refused_and_nothing_lands_outside() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("pwned");
        let name = target.to_str().unwrap().to_string();
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .file(&name, 0o644, b"x")
            .finish();
        let (_dir, result) = unpack(&gzip(&tar));
        let err = result.unwrap_err();
        assert!(matches!(err, UnpackError::HostilePath { .. }), "{err}");
        assert!(err.to_string().contains(&name), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn dotdot_components_are_refused() {
        for name in [
            "rootfs/../../escape",
            "../escape",
            "rootfs/a/../b",
            "./rootfs/..",
        ] {
            let tar = Tarball::new().metadata().file(name, 0o644, b"x").finish();
            let (dir, result) = unpack(&tar);
            let err = result.unwrap_err();
            assert!(
                matches!(err, UnpackError::HostilePath { .. }),
                "{name}: {err}"
            );
            assert!(!dir.path().parent().unwrap().join("escape").exists());
        }
    }

    #[test]
    fn writing_through_a_symlink_entry_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .symlink("rootfs/evil", outside.path().to_str().unwrap())
            .file("rootfs/evil/pwned", 0o644, b"owned")
            .finish();
        let (dir, result) = unpack(&gzip(&tar));
        let err = result.unwrap_err();
        assert!(matches!(err, UnpackError::HostilePath { .. }), "{err}");
        assert!(err.to_string().contains("rootfs/evil/pwned"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // The symlink entry itself is kept as written.
        assert_eq!(
            std::fs::read_link(dir.path().join("rootfs/evil")).unwrap(),
            outside.path()
        );
    }

    #[test]
    fn directory_entry_through_a_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .symlink("rootfs/evil", outside.path().to_str().unwrap())
            .dir("rootfs/evil/sub/", 0o755)
            .finish();
        let (_dir, result) = unpack(&tar);
        assert!(matches!(
            result.unwrap_err(),
            UnpackError::HostilePath { .. }
        ));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_symlinked_tree_top_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let tar = Tarball::new()
            .metadata()
            .symlink("rootfs", outside.path().to_str().unwrap())
            .file("rootfs/pwned", 0o644, b"x")
            .finish();
        let (_dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(matches!(err, UnpackError::Refused { .. }), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_later_entry_replaces_a_symlink_instead_of_following_it() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"original").unwrap();
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .symlink("rootfs/etc-passwd", victim.to_str().unwrap())
            .file("rootfs/etc-passwd", 0o644, b"overwritten")
            .finish();
        let (dir, result) = unpack(&tar);
        result.unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"original");
        assert_eq!(
            std::fs::read(dir.path().join("rootfs/etc-passwd")).unwrap(),
            b"overwritten"
        );
    }

    #[test]
    fn hard_links_out_of_the_tree_are_refused() {
        let cases = [
            ("/etc/passwd", "absolute"),
            ("../../etc/passwd", "`..`"),
            ("rootfs/../metadata.yaml", "`..`"),
            ("metadata.yaml", "outside"),
            ("templates/t.tpl", "outside"),
        ];
        for (target, expected) in cases {
            let tar = Tarball::new()
                .metadata()
                .dir("templates/", 0o755)
                .file("templates/t.tpl", 0o644, b"t")
                .dir("rootfs/", 0o755)
                .hardlink("rootfs/link", target)
                .finish();
            let (dir, result) = unpack(&tar);
            let err = result.unwrap_err();
            assert!(
                matches!(err, UnpackError::HostilePath { .. }),
                "{target}: {err}"
            );
            assert!(err.to_string().contains(expected), "{target}: {err}");
            assert!(!dir.path().join("rootfs/link").exists());
        }
    }

    #[test]
    fn hard_link_through_a_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .symlink("rootfs/evil", outside.path().to_str().unwrap())
            .hardlink("rootfs/stolen", "rootfs/evil/secret")
            .finish();
        let (dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(matches!(err, UnpackError::HostilePath { .. }), "{err}");
        assert!(!dir.path().join("rootfs/stolen").exists());
        assert_eq!(
            std::fs::metadata(outside.path().join("secret"))
                .unwrap()
                .nlink(),
            1
        );
    }

    #[test]
    fn hard_link_to_a_missing_entry_is_refused() {
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .hardlink("rootfs/link", "rootfs/nowhere/file")
            .finish();
        let (_dir, result) = unpack(&tar);
        assert!(matches!(result.unwrap_err(), UnpackError::Refused { .. }));
    }

    #[test]
    fn device_nodes_are_refused_even_outside_the_trees() {
        for (name, kind) in [
            ("rootfs/dev/sda", tar::EntryType::Block),
            ("rootfs/dev/mem", tar::EntryType::Char),
            ("stray-device", tar::EntryType::Char),
        ] {
            let tar = Tarball::new()
                .metadata()
                .dir("rootfs/", 0o755)
                .node(name, kind)
                .finish();
            let (dir, result) = unpack(&tar);
            let err = result.unwrap_err();
            assert!(
                matches!(err, UnpackError::DeviceNode { .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(name), "{err}");
            assert!(!dir.path().join(name).exists());
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_byte_limit() {
        // 64 MiB of zeros compress to about 64 KiB.
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .file("rootfs/bomb", 0o644, &zeros)
            .finish();
        let bomb = gzip(&tar);
        assert!(bomb.len() < 1024 * 1024);
        let dir = tempfile::tempdir().unwrap();
        let limits = UnpackLimits {
            max_bytes: 1024 * 1024,
            ..UnpackLimits::default()
        };
        let err = unpack_unified(bomb.as_slice(), dir.path(), &limits).unwrap_err();
        assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
        // Refused at its header: nothing of it was written.
        assert!(!dir.path().join("rootfs/bomb").exists());
    }

    #[test]
    fn many_small_files_stop_at_the_byte_limit_while_streaming() {
        let mut tarball = Tarball::new().metadata().dir("rootfs/", 0o755);
        for i in 0..64 {
            tarball = tarball.file(&format!("rootfs/f{i}"), 0o644, &[7u8; 64 * 1024]);
        }
        let dir = tempfile::tempdir().unwrap();
        let limits = UnpackLimits {
            max_bytes: 1024 * 1024,
            ..UnpackLimits::default()
        };
        let err =
            unpack_unified(gzip(&tarball.finish()).as_slice(), dir.path(), &limits).unwrap_err();
        assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
        let written = std::fs::read_dir(dir.path().join("rootfs"))
            .unwrap()
            .count();
        assert!(written <= 16, "stopped early, wrote {written} files");
    }

    #[test]
    fn entry_count_is_limited() {
        let mut tarball = Tarball::new().metadata().dir("rootfs/", 0o755);
        for i in 0..100 {
            tarball = tarball.dir(&format!("rootfs/d{i}/"), 0o755);
        }
        let dir = tempfile::tempdir().unwrap();
        let limits = UnpackLimits {
            max_entries: 10,
            ..UnpackLimits::default()
        };
        let err = unpack_unified(tarball.finish().as_slice(), dir.path(), &limits).unwrap_err();
        assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("entries"), "{err}");
        let written = std::fs::read_dir(dir.path().join("rootfs"))
            .unwrap()
            .count();
        assert!(written <= 8, "wrote {written} directories");
    }

    #[test]
    fn a_huge_gnu_long_name_is_refused_without_buffering_it() {
        let long = vec![b'a'; 9 * 1024 * 1024];
        let mut header = Tarball::header(tar::EntryType::GNULongName, 0o644, long.len() as u64);
        header.set_cksum();
        let mut tarball = Tarball::new().metadata();
        tarball = tarball.raw(header, "././@LongLink", None, &long);
        let tar = tarball.file("rootfs/x", 0o644, b"x").finish();
        let (_dir, result) = unpack(&gzip(&tar));
        let err = result.unwrap_err();
        assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn long_names_and_link_targets_unpack() {
        // Over 100 bytes: the tar builder writes GNU long-name records.
        let deep = format!("rootfs/{}/file", "d".repeat(150));
        let target = format!("/{}", "t".repeat(200));
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = Tarball::header(tar::EntryType::Regular, 0o644, 3);
        builder
            .append_data(&mut header, &deep, &b"abc"[..])
            .unwrap();
        let mut header = Tarball::header(tar::EntryType::Symlink, 0o777, 0);
        builder
            .append_link(&mut header, "rootfs/longlink", &target)
            .unwrap();
        let body = builder.into_inner().unwrap();
        let mut tar = Tarball::new().metadata().dir("rootfs/", 0o755).finish();
        // Drop the first archive's end-of-archive blocks and append the second.
        tar.truncate(tar.len() - 1024);
        tar.extend_from_slice(&body);
        let (dir, result) = unpack(&tar);
        result.unwrap();
        assert_eq!(std::fs::read(dir.path().join(&deep)).unwrap(), b"abc");
        assert_eq!(
            std::fs::read_link(dir.path().join("rootfs/longlink")).unwrap(),
            Path::new(&target)
        );
    }

    #[test]
    fn data_declared_on_a_symlink_entry_is_counted_not_buffered() {
        // 9 MiB, over the guard for header data: it must be streamed as data.
        let junk = vec![b'j'; 9 * 1024 * 1024];
        let header = Tarball::header(tar::EntryType::Symlink, 0o777, junk.len() as u64);
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .raw(header, "rootfs/link", Some("target"), &junk)
            .file("rootfs/after", 0o644, b"still read")
            .finish();
        let (dir, result) = unpack(&gzip(&tar));
        let unpacked = result.unwrap();
        assert!(unpacked.bytes > junk.len() as u64);
        assert_eq!(
            std::fs::read_link(dir.path().join("rootfs/link")).unwrap(),
            Path::new("target")
        );
        assert_eq!(
            std::fs::read(dir.path().join("rootfs/after")).unwrap(),
            b"still read"
        );
    }

    #[test]
    fn metadata_must_be_present_and_valid() {
        let no_metadata = Tarball::new().dir("rootfs/", 0o755).finish();
        let (_dir, result) = unpack(&no_metadata);
        assert!(matches!(
            result.unwrap_err(),
            UnpackError::Missing("metadata.yaml")
        ));

        let bad = Tarball::new()
            .file("metadata.yaml", 0o644, b"creation_date: [\n")
            .dir("rootfs/", 0o755)
            .finish();
        let (_dir, result) = unpack(&bad);
        let err = result.unwrap_err();
        assert!(matches!(err, UnpackError::Metadata { .. }), "{err}");
        assert!(err.to_string().contains("metadata.yaml"), "{err}");

        let no_arch = Tarball::new()
            .file("metadata.yaml", 0o644, b"creation_date: 1\n")
            .dir("rootfs/", 0o755)
            .finish();
        let (_dir, result) = unpack(&no_arch);
        assert!(matches!(result.unwrap_err(), UnpackError::Metadata { .. }));

        let link = Tarball::new()
            .symlink("metadata.yaml", "/etc/shadow")
            .dir("rootfs/", 0o755)
            .finish();
        let (_dir, result) = unpack(&link);
        assert!(matches!(result.unwrap_err(), UnpackError::Refused { .. }));

        let no_rootfs = Tarball::new().metadata().finish();
        let (_dir, result) = unpack(&no_rootfs);
        assert!(matches!(
            result.unwrap_err(),
            UnpackError::Missing("rootfs/ tree")
        ));
    }

    #[test]
    fn read_metadata_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real.yaml"), METADATA).unwrap();
        std::os::unix::fs::symlink("real.yaml", dir.path().join("metadata.yaml")).unwrap();
        assert!(read_metadata(&dir.path().join("real.yaml")).is_ok());
        let err = read_metadata(&dir.path().join("metadata.yaml")).unwrap_err();
        assert!(matches!(err, UnpackError::MetadataRead { .. }), "{err}");
    }

    #[test]
    fn stray_top_level_entries_are_skipped() {
        let tar = Tarball::new()
            .metadata()
            .file("manifest.json", 0o644, b"{}")
            .dir("extra/", 0o755)
            .symlink("extra/link", "/etc")
            .dir("rootfs/", 0o755)
            .finish();
        let (dir, result) = unpack(&tar);
        let unpacked = result.unwrap();
        assert_eq!(unpacked.entries, 5);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["metadata.yaml", "rootfs"]);
    }

    #[test]
    fn metadata_tarball_skips_rootfs_entries() {
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .file("rootfs/x", 0o644, b"x")
            .finish();
        let dir = tempfile::tempdir().unwrap();
        unpack_metadata(tar.as_slice(), dir.path(), &UnpackLimits::default()).unwrap();
        assert!(!dir.path().join("rootfs").exists());
    }

    #[test]
    fn templates_may_only_hold_files_and_directories() {
        let tar = Tarball::new()
            .metadata()
            .dir("templates/", 0o755)
            .symlink("templates/hostname.tpl", "/etc/shadow")
            .dir("rootfs/", 0o755)
            .finish();
        let (_dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(matches!(err, UnpackError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("templates/hostname.tpl"), "{err}");
    }

    #[test]
    fn destination_must_be_an_empty_real_directory() {
        let tar = busybox_image();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("left-over"), b"").unwrap();
        let err = unpack_unified(tar.as_slice(), dir.path(), &UnpackLimits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::Destination { .. }), "{err}");

        let real = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        let err = unpack_unified(tar.as_slice(), &link, &UnpackLimits::default()).unwrap_err();
        assert!(matches!(err, UnpackError::Destination { .. }), "{err}");
    }

    #[test]
    fn unsupported_and_corrupt_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let limits = UnpackLimits::default();
        let zstd = [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
        let err = unpack_unified(zstd.as_slice(), dir.path(), &limits).unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
        let err = unpack_unified(b"BZh91AY".as_slice(), dir.path(), &limits).unwrap_err();
        assert!(err.to_string().contains("bzip2"), "{err}");

        let garbage = vec![0x55u8; 4096];
        let err = unpack_unified(garbage.as_slice(), dir.path(), &limits).unwrap_err();
        assert!(matches!(err, UnpackError::Read(_)), "{err}");

        let mut truncated = gzip(&busybox_image());
        truncated.truncate(truncated.len() / 2);
        let dir = tempfile::tempdir().unwrap();
        let err = unpack_unified(truncated.as_slice(), dir.path(), &limits).unwrap_err();
        assert!(matches!(err, UnpackError::Read(_)), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let err = unpack_unified(b"".as_slice(), dir.path(), &limits).unwrap_err();
        assert!(matches!(err, UnpackError::Missing(_)), "{err}");
    }

    #[test]
    fn a_file_cannot_replace_a_directory() {
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .dir("rootfs/etc/", 0o755)
            .file("rootfs/etc/passwd", 0o644, b"x")
            .file("rootfs/etc", 0o644, b"not a dir")
            .finish();
        let (_dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(matches!(err, UnpackError::Entry { .. }), "{err}");
        assert!(err.to_string().contains("rootfs/etc"), "{err}");
    }

    #[test]
    fn error_messages_say_what_was_unpacked() {
        let err = UnpackError::HostilePath {
            path: "rootfs/../x".into(),
            reason: DOTDOT,
        };
        assert_eq!(
            err.to_string(),
            "unpacking image entry rootfs/../x: path leaves the image with `..`"
        );
    }
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn a_distrobuilder_style_file_parses() {
        let yaml = br#"
architecture: x86_64
creation_date: 1700000000
expiry_date: 1800000000
properties:
  os: Debian
  release: trixie
  version: 13
  description: Debian trixie amd64
  variant: default
templates:
  /etc/hostname:
    when: [create, copy]
    template: hostname.tpl
    create_only: false
some_builder_key: ignored
"#;
        let meta = ImageMetadata::from_yaml(yaml).unwrap();
        assert_eq!(meta.architecture, "x86_64");
        assert_eq!(meta.creation_date, 1_700_000_000);
        assert_eq!(meta.expiry_date, Some(1_800_000_000));
        assert_eq!(meta.properties["os"], "Debian");
        assert_eq!(meta.properties["version"], "13");
        let rule = &meta.templates["/etc/hostname"];
        assert_eq!(rule["template"].as_str(), Some("hostname.tpl"));
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let meta = ImageMetadata::from_yaml(b"architecture: aarch64\n").unwrap();
        assert_eq!(meta.creation_date, 0);
        assert_eq!(meta.expiry_date, None);
        assert!(meta.properties.is_empty());
        assert!(meta.templates.is_empty());
    }

    #[test]
    fn zero_expiry_means_none() {
        let meta = ImageMetadata::from_yaml(b"architecture: x86_64\nexpiry_date: 0\n").unwrap();
        assert_eq!(meta.expiry_date, None);
    }

    #[test]
    fn numeric_and_null_properties_become_text() {
        let meta = ImageMetadata::from_yaml(
            b"architecture: x86_64\nproperties:\n  release: 22.04\n  serial:\n  lts: true\n",
        )
        .unwrap();
        assert_eq!(meta.properties["release"], "22.04");
        assert_eq!(meta.properties["serial"], "");
        assert_eq!(meta.properties["lts"], "true");
    }

    #[test]
    fn missing_architecture_is_refused() {
        let err = ImageMetadata::from_yaml(b"creation_date: 1\n").unwrap_err();
        assert!(matches!(err, MetadataError::NoArchitecture), "{err}");
    }

    #[test]
    fn nested_property_is_refused() {
        let err = ImageMetadata::from_yaml(b"architecture: x86_64\nproperties:\n  os: [a, b]\n")
            .unwrap_err();
        assert!(err.to_string().contains("\"os\""), "{err}");
    }

    #[test]
    fn garbage_is_a_yaml_error() {
        let err = ImageMetadata::from_yaml(b"architecture: [unclosed\n").unwrap_err();
        assert!(matches!(err, MetadataError::Yaml(_)), "{err}");
        let err = ImageMetadata::from_yaml(b"- just\n- a list\n").unwrap_err();
        assert!(matches!(err, MetadataError::Yaml(_)), "{err}");
    }

    #[test]
    fn oversized_file_is_refused_before_parsing() {
        let big = vec![b' '; MAX_METADATA_BYTES as usize + 1];
        let err = ImageMetadata::from_yaml(&big).unwrap_err();
        assert!(matches!(err, MetadataError::TooLarge { .. }), "{err}");
    }
}
