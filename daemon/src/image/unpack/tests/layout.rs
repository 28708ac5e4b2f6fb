//! What well-formed images unpack to: trees, attributes, split images, metadata, stray entries.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;

use sha2::{Digest, Sha256};

use super::super::entry::DOTDOT;
use super::super::{
    fingerprint_file, fingerprint_files, read_metadata, unpack_metadata, unpack_rootfs,
};
use super::*;

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
    let unpacked = unpack_unified(tar.as_slice(), dir.path(), &UnpackLimits::default()).unwrap();
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
    let metadata = unpack_metadata(meta_tar.as_slice(), dir.path(), &limits)
        .unwrap()
        .metadata;
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
