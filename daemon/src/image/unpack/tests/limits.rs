//! Limits: bombs, entry counts and header data are stopped while streaming.

use super::*;

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
    assert!(err.is_over_byte_limit(), "{err}");
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
    let err = unpack_unified(gzip(&tarball.finish()).as_slice(), dir.path(), &limits).unwrap_err();
    assert!(err.is_over_byte_limit(), "{err}");
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
    // Not the byte limit: the caller's message for that would be wrong here.
    assert!(!err.is_over_byte_limit(), "{err}");
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
fn a_split_image_counts_its_metadata_tarball_against_the_limit() {
    let meta = Tarball::new()
        .metadata()
        .file("stray", 0o644, &[1u8; 4096])
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let got = super::super::unpack_metadata(meta.as_slice(), dir.path(), &UnpackLimits::default())
        .unwrap();
    // The skipped stray file counts too: it was read out of the stream all the same.
    assert!(got.bytes >= 4096, "{}", got.bytes);
    assert!(got.entries >= 2, "{}", got.entries);
}

#[test]
fn a_full_disk_is_told_apart_from_a_broken_image() {
    let full = UnpackError::Entry {
        path: "rootfs/x".into(),
        source: std::io::Error::from_raw_os_error(libc::ENOSPC),
    };
    assert!(full.is_out_of_space());
    let other = UnpackError::Entry {
        path: "rootfs/x".into(),
        source: std::io::Error::from_raw_os_error(libc::EACCES),
    };
    assert!(!other.is_out_of_space());
}
