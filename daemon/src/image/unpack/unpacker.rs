//! [`Unpacker`]: streams one tarball's entries into the destination under the module's rules.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, mkdirat, mknodat, Mode, SFlag};
use nix::unistd::{linkat, symlinkat};

use super::entry::{entry_xattrs, link_target, refused, split_entry_path, Attrs, Xattr, ABSOLUTE};
use super::metadata::{read_metadata, ImageMetadata, MAX_METADATA_BYTES};
use super::nodes::{
    dup_fd, is_symlink, make_dir, replace_existing, set_fd_attrs, set_link_attrs, set_node_attrs,
    set_xattrs,
};
use super::reader::{decompress, GuardedReader, UNACCOUNTED_READ_LIMIT};
use super::{UnpackError, UnpackLimits};

/// Which tarball is being unpacked, hence which top-level names are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
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

const COPY_CHUNK: usize = 128 * 1024;

/// A directory whose attributes are set once everything inside it is written:
/// creating children would bump its mtime, and a read-only mode must not get
/// in the way of its own children.
struct DeferredDir {
    components: Vec<Vec<u8>>,
    attrs: Attrs,
    xattrs: Vec<Xattr>,
    path: String,
}

pub(super) struct Unpacker {
    root: OwnedFd,
    layout: Layout,
    limits: UnpackLimits,
    pub(super) bytes: u64,
    pub(super) entries: u64,
    dirs: Vec<DeferredDir>,
    saw_metadata: bool,
    pub(super) saw_rootfs: bool,
    unaccounted: Rc<Cell<u64>>,
    tripped: Rc<Cell<bool>>,
}

impl Unpacker {
    pub(super) fn new(root: OwnedFd, layout: Layout, limits: UnpackLimits) -> Self {
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

    pub(super) fn run<R: Read>(&mut self, src: R) -> Result<(), UnpackError> {
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
                what: super::UNPACKED_BYTES,
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
                what: super::UNPACKED_BYTES,
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

    pub(super) fn finish_metadata(&self, dest: &Path) -> Result<ImageMetadata, UnpackError> {
        if !self.saw_metadata {
            return Err(UnpackError::Missing("metadata.yaml"));
        }
        read_metadata(&dest.join("metadata.yaml"))
    }
}
