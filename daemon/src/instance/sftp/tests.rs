//! Tests of the SFTP server, driven by russh-sftp's client over an in-memory stream.

use std::os::unix::fs::MetadataExt;

use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags};

use super::super::idmap::IdShift;
use super::*;

const BASE: u32 = 1_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    rootfs: std::path::PathBuf,
    client: SftpSession,
    server: tokio::task::JoinHandle<Result<(), SftpError>>,
}

async fn connect() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/hostname"), "c1\n").unwrap();
    std::fs::write(dir.path().join("secret"), "host").unwrap();
    std::os::unix::fs::symlink("/", rootfs.join("escape")).unwrap();
    let access = RootfsAccess::open(
        &rootfs,
        IdShift {
            uid_base: BASE,
            gid_base: BASE,
            range: 65536,
        },
    )
    .unwrap();
    let (client_end, server_end) = tokio::io::duplex(512 * 1024);
    let server = tokio::spawn(serve(server_end, access));
    let client = SftpSession::new(client_end).await.unwrap();
    Fixture {
        _dir: dir,
        rootfs,
        client,
        server,
    }
}

/// Creates or truncates a file and writes it (the client's `write` does not create).
async fn put(c: &SftpSession, path: &str, data: &[u8]) {
    let mut f = c.create(path).await.unwrap();
    f.write_all(data).await.unwrap();
    f.shutdown().await.unwrap();
}

#[tokio::test]
async fn push_pull_stat_list_and_remove_through_sftp() {
    let fx = connect().await;
    let c = &fx.client;

    // Push: create + write (bigger than one packet), then chown/chmod.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut f = c.create("/etc/motd").await.unwrap();
    f.write_all(&payload).await.unwrap();
    f.shutdown().await.unwrap();
    let mut attrs = FileAttributes::empty();
    attrs.uid = Some(1000);
    attrs.gid = Some(1000);
    c.set_metadata("/etc/motd", attrs).await.unwrap();
    let mut attrs = FileAttributes::empty();
    attrs.permissions = Some(0o640);
    c.set_metadata("/etc/motd", attrs).await.unwrap();

    let meta = std::fs::metadata(fx.rootfs.join("etc/motd")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (BASE + 1000, BASE + 1000, 0o640)
    );
    assert_eq!(std::fs::read(fx.rootfs.join("etc/motd")).unwrap(), payload);

    // Stat shows container ids and the type bits.
    let st = c.metadata("/etc/motd").await.unwrap();
    assert_eq!(
        (st.uid, st.gid, st.size),
        (Some(1000), Some(1000), Some(300_000))
    );
    assert_eq!(st.permissions, Some(0o100640));
    assert!(c.metadata("/etc").await.unwrap().is_dir());

    // Pull.
    let mut back = Vec::new();
    c.open("/etc/motd")
        .await
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    assert_eq!(back, payload);

    // Directories, listing, symlinks.
    c.create_dir("/srv").await.unwrap();
    let meta = std::fs::metadata(fx.rootfs.join("srv")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (BASE, 0o755));
    put(c, "/srv/a", b"a").await;
    // OpenSSH order: the first argument travels as the target.
    c.symlink("/etc/hostname", "/srv/link").await.unwrap();
    assert_eq!(
        std::fs::read_link(fx.rootfs.join("srv/link"))
            .unwrap()
            .to_str(),
        Some("/etc/hostname")
    );
    assert_eq!(c.read_link("/srv/link").await.unwrap(), "/etc/hostname");
    assert!(c.symlink_metadata("/srv/link").await.unwrap().is_symlink());
    assert_eq!(c.read("/srv/link").await.unwrap(), b"c1\n");
    let names: Vec<String> = c
        .read_dir("/srv")
        .await
        .unwrap()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec!["a", "link"]);

    // Escapes stay inside: /escape -> / is the container's root.
    assert_eq!(c.read("/escape/etc/hostname").await.unwrap(), b"c1\n");
    assert!(c.read("/escape/../secret").await.is_err());
    assert_eq!(
        c.canonicalize("/srv/../etc/./hostname").await.unwrap(),
        "/etc/hostname"
    );

    // Rename refuses to replace; remove; rmdir.
    assert!(c.rename("/srv/a", "/etc/motd").await.is_err());
    c.rename("/srv/a", "/srv/b").await.unwrap();
    assert!(c.remove_dir("/srv").await.is_err());
    assert!(c.remove_file("/srv").await.is_err());
    c.remove_file("/srv/b").await.unwrap();
    c.remove_file("/srv/link").await.unwrap();
    c.remove_dir("/srv").await.unwrap();
    assert!(!fx.rootfs.join("srv").exists());
    assert!(fx.rootfs.join("etc/hostname").exists());
    assert!(!c.try_exists("/srv").await.unwrap());

    // Out-of-range ids are refused.
    let mut attrs = FileAttributes::empty();
    attrs.uid = Some(70000);
    attrs.gid = Some(0);
    assert!(c.set_metadata("/etc/motd", attrs).await.is_err());

    // The session ends cleanly when the client goes away.
    c.close().await.unwrap();
    drop(fx.client);
    fx.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn extensions_posix_rename_hardlink_and_statvfs() {
    let fx = connect().await;
    let c = &fx.client;
    put(c, "/a", b"1").await;
    put(c, "/b", b"2").await;
    assert!(c.hardlink("/a", "/c").await.unwrap());
    assert_eq!(std::fs::metadata(fx.rootfs.join("a")).unwrap().nlink(), 2);
    let info = c.fs_info("/").await.unwrap().expect("statvfs is supported");
    assert!(info.block_size > 0);
    drop(fx.client);
    fx.server.await.unwrap().unwrap();
}

/// What `incus file push -p` / `delete` send (github.com/pkg/sftp):
/// relative Lstat while walking parents, Mkdir without attributes,
/// OpenFile(WRONLY|CREATE|TRUNC), Write, Close, Stat, Chown, Chmod, and
/// Remove falling back to rmdir on SSH_FX_FAILURE.
#[tokio::test]
async fn the_incus_cli_request_sequence() {
    use russh_sftp::client::RawSftpSession;
    let fx = connect().await;
    drop(fx.client);
    let _ = fx.server.await;

    let access = RootfsAccess::open(
        &fx.rootfs,
        IdShift {
            uid_base: BASE,
            gid_base: BASE,
            range: 65536,
        },
    )
    .unwrap();
    let (client_end, server_end) = tokio::io::duplex(512 * 1024);
    let server = tokio::spawn(serve(server_end, access));
    let raw = RawSftpSession::new(client_end);
    let version = raw.init().await.unwrap();
    assert!(version.extensions.contains_key("posix-rename@openssh.com"));

    assert_eq!(raw.realpath(".").await.unwrap().files[0].filename, "/");
    assert!(raw.lstat("etc").await.unwrap().attrs.is_dir());
    assert!(raw.lstat("etc/a").await.is_err());
    raw.mkdir("/etc/a", FileAttributes::empty()).await.unwrap();
    let meta = std::fs::metadata(fx.rootfs.join("etc/a")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (BASE, 0o755));

    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let handle = raw
        .open("/etc/a/f", flags, FileAttributes::empty())
        .await
        .unwrap()
        .handle;
    raw.write(handle.as_str(), 0, b"hello ".to_vec())
        .await
        .unwrap();
    raw.write(handle.as_str(), 6, b"world".to_vec())
        .await
        .unwrap();
    raw.fsync(handle.as_str()).await.unwrap();
    raw.close(handle).await.unwrap();
    let st = raw.stat("/etc/a/f").await.unwrap().attrs;
    assert_eq!(
        (st.uid, st.gid, st.permissions),
        (Some(0), Some(0), Some(0o100644))
    );
    let mut owner = FileAttributes::empty();
    owner.uid = Some(33);
    owner.gid = Some(33);
    raw.setstat("/etc/a/f", owner).await.unwrap();
    let mut mode = FileAttributes::empty();
    mode.permissions = Some(0o4750);
    raw.setstat("/etc/a/f", mode).await.unwrap();
    let meta = std::fs::metadata(fx.rootfs.join("etc/a/f")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (BASE + 33, BASE + 33, 0o4750)
    );
    assert_eq!(
        std::fs::read_to_string(fx.rootfs.join("etc/a/f")).unwrap(),
        "hello world"
    );

    // posix-rename replaces; plain rename does not.
    std::fs::write(fx.rootfs.join("etc/b"), "b").unwrap();
    assert!(raw.rename("/etc/b", "/etc/a/f").await.is_err());
    let mut args = Vec::new();
    for s in ["/etc/b", "/etc/a/f"] {
        args.extend_from_slice(&(s.len() as u32).to_be_bytes());
        args.extend_from_slice(s.as_bytes());
    }
    match raw
        .extended("posix-rename@openssh.com", args)
        .await
        .unwrap()
    {
        Packet::Status(st) => assert_eq!(st.status_code, StatusCode::Ok),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(fx.rootfs.join("etc/a/f")).unwrap(),
        "b"
    );
    match raw.extended("nope@example.com", Vec::new()).await {
        Ok(Packet::Status(st)) => assert_eq!(st.status_code, StatusCode::OpUnsupported),
        other => panic!("{other:?}"),
    }

    // Remove of a directory answers SSH_FX_FAILURE, then rmdir works.
    raw.remove("/etc/a/f").await.unwrap();
    match raw.remove("/etc/a").await {
        Err(russh_sftp::client::error::Error::Status(st)) => {
            assert_eq!(st.status_code, StatusCode::Failure)
        }
        other => panic!("{other:?}"),
    }
    raw.rmdir("/etc/a").await.unwrap();
    match raw.stat("/etc/a").await {
        Err(russh_sftp::client::error::Error::Status(st)) => {
            assert_eq!(st.status_code, StatusCode::NoSuchFile)
        }
        other => panic!("{other:?}"),
    }
    raw.close_session().unwrap();
    drop(raw);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn garbage_ends_the_session_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let access = RootfsAccess::open(dir.path(), IdShift::IDENTITY).unwrap();
    let (mut client, server_end) = tokio::io::duplex(4096);
    let server = tokio::spawn(serve(server_end, access));
    client.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    assert!(matches!(server.await.unwrap(), Err(SftpError::Protocol(_))));
}

#[tokio::test]
async fn a_malformed_request_gets_bad_message_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let access = RootfsAccess::open(dir.path(), IdShift::IDENTITY).unwrap();
    let (mut client, server_end) = tokio::io::duplex(4096);
    let server = tokio::spawn(serve(server_end, access));
    // SSH_FXP_STAT (17), id 7, then a truncated string.
    client
        .write_all(&[0, 0, 0, 7, 17, 0, 0, 0, 7, 0, 0])
        .await
        .unwrap();
    let len = client.read_u32().await.unwrap();
    let mut buf = vec![0; len as usize];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf[0], 101); // SSH_FXP_STATUS
    assert_eq!(&buf[1..5], &[0, 0, 0, 7]);
    assert_eq!(&buf[5..9], &[0, 0, 0, 5]); // SSH_FX_BAD_MESSAGE
    drop(client);
    server.await.unwrap().unwrap();
}
