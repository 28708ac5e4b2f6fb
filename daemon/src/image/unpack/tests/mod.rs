//! Unpacker tests against tarballs built entry by entry; the shared builder lives here.

mod hostile;
mod layout;
mod limits;

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::{unpack_unified, UnpackError, UnpackLimits, Unpacked};

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
    fn raw(mut self, mut header: tar::Header, name: &str, link: Option<&str>, data: &[u8]) -> Self {
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
