//! Rootfs access tests: escapes via `..` and planted symlinks, id shifting, operations, files API.

use std::os::unix::fs::{symlink, MetadataExt};

use super::files_api::go_time_string;
use super::ids::{container_id, host_id};
use super::*;

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
