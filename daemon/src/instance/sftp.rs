//! The SFTP server behind `GET /1.0/instances/{name}/sftp`.
//!
//! The Incus 6.0 CLI does `incus file push/pull/delete/create` and
//! `file mount` by upgrading that request (`Upgrade: sftp`, answered with
//! `101 Switching Protocols`) and then speaking raw SFTP version 3 over the
//! connection, with no SSH around it (github.com/pkg/sftp's client; sshfs for
//! `mount`). [`serve`] answers such a stream from a container's rootfs through
//! [`RootfsAccess`], so every path stays inside the container and owners are
//! shown and set in container ids.
//!
//! Protocol notes:
//! - requests are answered one at a time, in order (clients pipeline reads
//!   and writes; answers in order are what they expect);
//! - `SSH_FXP_SYMLINK` takes its arguments in OpenSSH's order (target
//!   first, then link path), as pkg/sftp and OpenSSH's `sftp` send them;
//! - `realpath` is lexical (as pkg/sftp's server, which Incus runs);
//! - a plain `rename` refuses to replace an existing file (SFTP v3);
//!   `posix-rename@openssh.com` replaces;
//! - extensions: `posix-rename@openssh.com`, `hardlink@openssh.com`,
//!   `statvfs@openssh.com`, `fstatvfs@openssh.com`, `fsync@openssh.com`;
//! - names travel as UTF-8 strings (russh-sftp's types): names that are not
//!   UTF-8 are listed lossily.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File as NameEntry, FileAttributes, Handle, Name, OpenFlags, Packet,
    Status, StatusCode, Version,
};
use russh_sftp::server::{Handler, StatusReply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::rootfs_access::{
    clean_path, DirEntry, Entry, FileKind, FsError, FsStats, NewAttrs, OpenOptions, RootfsAccess,
    SetAttrs, DEFAULT_DIR_MODE,
};

/// Largest request accepted (OpenSSH's limit; pkg/sftp sends up to 128 KiB
/// of data per write as Incus configures it).
const MAX_PACKET: u32 = 256 * 1024 + 1024;
/// Largest read answered (clients ask for 32 KiB (OpenSSH) or 128 KiB (Incus)).
const MAX_READ: u32 = 255 * 1024;
/// Directory entries per `SSH_FXP_NAME` answer.
const READDIR_BATCH: usize = 128;
/// Applied to the modes clients give to `open` and `mkdir` (OpenSSH's
/// `sftp` asks 0777 for new directories and relies on the server's umask);
/// `setstat` modes are applied as given.
const UMASK: u32 = 0o022;
/// Open handles per session.
const MAX_HANDLES: usize = 1024;

/// Why a session ended other than by the client closing it.
#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    #[error("sftp connection: {0}")]
    Io(#[from] io::Error),
    #[error("sftp protocol: {0}")]
    Protocol(String),
}

/// Serves SFTP v3 over `stream` (an upgraded HTTP connection) from the
/// container's rootfs until the client closes it. Open files are closed when
/// it returns.
pub async fn serve<S>(stream: S, access: RootfsAccess) -> Result<(), SftpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Buffered reads: a request is a length, then its body.
    let mut stream = BufReader::with_capacity(64 * 1024, stream);
    let mut session = Session::new(access);
    loop {
        let len = match stream.read_u32().await {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if len == 0 || len > MAX_PACKET {
            return Err(SftpError::Protocol(format!("request of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await?;
        let request_id = match buf.get(1..5) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        };
        let mut bytes = Bytes::from(buf);
        let response = match Packet::try_from(&mut bytes) {
            Ok(packet) => session.dispatch(packet).await,
            Err(e) => status_packet(
                request_id,
                StatusCode::BadMessage.with_message(format!("malformed request: {e}")),
            ),
        };
        let out = Bytes::try_from(response)
            .map_err(|e| SftpError::Protocol(format!("encoding an answer: {e}")))?;
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
}

enum OpenHandle {
    File { file: Arc<File>, path: String },
    Dir { entries: VecDeque<DirEntry> },
}

/// One client's state: its open handles.
struct Session {
    access: Arc<RootfsAccess>,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
}

impl Session {
    fn new(access: RootfsAccess) -> Session {
        Session {
            access: Arc::new(access),
            handles: HashMap::new(),
            next_handle: 1,
        }
    }

    fn add_handle(&mut self, handle: OpenHandle) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message("too many open handles"));
        }
        let name = format!("h{}", self.next_handle);
        self.next_handle += 1;
        self.handles.insert(name.clone(), handle);
        Ok(name)
    }

    fn file(&self, handle: &str) -> Result<(Arc<File>, String), StatusReply> {
        match self.handles.get(handle) {
            Some(OpenHandle::File { file, path }) => Ok((file.clone(), path.clone())),
            Some(OpenHandle::Dir { .. }) => {
                Err(StatusCode::Failure.with_message("not a file handle"))
            }
            None => Err(StatusCode::Failure.with_message("invalid handle")),
        }
    }

    /// Runs a file system call off the async threads.
    async fn fs<T, F>(&self, f: F) -> Result<T, StatusReply>
    where
        T: Send + 'static,
        F: FnOnce(&RootfsAccess) -> Result<T, FsError> + Send + 'static,
    {
        let access = self.access.clone();
        match tokio::task::spawn_blocking(move || f(&access)).await {
            Ok(result) => result.map_err(|e| status_of(&e)),
            Err(_) => Err(StatusCode::Failure.with_message("internal error")),
        }
    }

    async fn dispatch(&mut self, packet: Packet) -> Packet {
        let id = packet.get_request_id();
        let result: Result<Packet, StatusReply> = match packet {
            Packet::Init(p) => self.init(p.version, p.extensions).await.map(Into::into),
            Packet::Open(p) => self
                .open(p.id, p.filename, p.pflags, p.attrs)
                .await
                .map(Into::into),
            Packet::Close(p) => self.close(p.id, p.handle).await.map(Into::into),
            Packet::Read(p) => self
                .read(p.id, p.handle, p.offset, p.len)
                .await
                .map(Into::into),
            Packet::Write(p) => self
                .write(p.id, p.handle, p.offset, p.data)
                .await
                .map(Into::into),
            Packet::Lstat(p) => self.lstat(p.id, p.path).await.map(Into::into),
            Packet::Fstat(p) => self.fstat(p.id, p.handle).await.map(Into::into),
            Packet::SetStat(p) => self.setstat(p.id, p.path, p.attrs).await.map(Into::into),
            Packet::FSetStat(p) => self.fsetstat(p.id, p.handle, p.attrs).await.map(Into::into),
            Packet::OpenDir(p) => self.opendir(p.id, p.path).await.map(Into::into),
            Packet::ReadDir(p) => self.readdir(p.id, p.handle).await.map(Into::into),
            Packet::Remove(p) => self.remove(p.id, p.filename).await.map(Into::into),
            Packet::MkDir(p) => self.mkdir(p.id, p.path, p.attrs).await.map(Into::into),
            Packet::RmDir(p) => self.rmdir(p.id, p.path).await.map(Into::into),
            Packet::RealPath(p) => self.realpath(p.id, p.path).await.map(Into::into),
            Packet::Stat(p) => self.stat(p.id, p.path).await.map(Into::into),
            Packet::Rename(p) => self
                .rename(p.id, p.oldpath, p.newpath)
                .await
                .map(Into::into),
            Packet::ReadLink(p) => self.readlink(p.id, p.path).await.map(Into::into),
            Packet::Symlink(p) => self
                .symlink(p.id, p.linkpath, p.targetpath)
                .await
                .map(Into::into),
            Packet::Extended(p) => self.extended(p.id, p.request, p.data).await,
            _ => Err(StatusCode::BadMessage.with_message("not a request")),
        };
        result.unwrap_or_else(|reply| status_packet(id, reply))
    }

    fn ok(id: u32) -> Status {
        Status {
            id,
            status_code: StatusCode::Ok,
            error_message: "Ok".to_string(),
            language_tag: "en-US".to_string(),
        }
    }
}

impl Handler for Session {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut version = Version::new();
        for (name, ver) in [
            ("posix-rename@openssh.com", "1"),
            ("hardlink@openssh.com", "1"),
            ("statvfs@openssh.com", "2"),
            ("fstatvfs@openssh.com", "2"),
            ("fsync@openssh.com", "1"),
        ] {
            version.extensions.insert(name.to_string(), ver.to_string());
        }
        Ok(version)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let write = pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND);
        let opts = OpenOptions {
            read: pflags.contains(OpenFlags::READ) || !write,
            write,
            append: pflags.contains(OpenFlags::APPEND),
            create: pflags.contains(OpenFlags::CREATE),
            exclusive: pflags.contains(OpenFlags::EXCLUDE),
            truncate: pflags.contains(OpenFlags::TRUNCATE),
            mode: attrs.permissions.map(|m| m & 0o7777 & !UMASK),
        };
        let path = filename.clone();
        let (file, _) = self
            .fs(move |a| a.open_file(&path, &opts, &NewAttrs::default()))
            .await?;
        let handle = self.add_handle(OpenHandle::File {
            file: Arc::new(file),
            path: filename,
        })?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(_) => Ok(Session::ok(id)),
            None => Err(StatusCode::Failure.with_message("invalid handle")),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let (file, path) = self.file(&handle)?;
        let len = len.min(MAX_READ) as usize;
        let data = self
            .fs(move |_| {
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    match file.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(FsError::Io {
                                op: "read",
                                path,
                                source: e,
                            })
                        }
                    }
                }
                buf.truncate(got);
                Ok(buf)
            })
            .await?;
        if data.is_empty() && len > 0 {
            return Err(StatusCode::Eof.into());
        }
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let (file, path) = self.file(&handle)?;
        self.fs(move |_| {
            file.write_all_at(&data, offset).map_err(|e| FsError::Io {
                op: "write",
                path,
                source: e,
            })
        })
        .await?;
        Ok(Session::ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let entry = self.fs(move |a| a.lstat(&path)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&entry),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let (file, _) = self.file(&handle)?;
        let entry = self.fs(move |a| a.stat_file(&file)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&entry),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let change = set_attrs(&attrs);
        self.fs(move |a| a.set_attrs(&path, &change)).await?;
        Ok(Session::ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let (file, _) = self.file(&handle)?;
        let change = set_attrs(&attrs);
        self.fs(move |a| a.set_file_attrs(&file, &change)).await?;
        Ok(Session::ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let entries = self.fs(move |a| a.read_dir_entries(&path)).await?;
        let handle = self.add_handle(OpenHandle::Dir {
            entries: entries.into(),
        })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(OpenHandle::Dir { entries }) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("invalid directory handle"));
        };
        if entries.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        let n = entries.len().min(READDIR_BATCH);
        let files = entries
            .drain(..n)
            .map(|d| {
                let attrs = attributes(&d.entry);
                NameEntry {
                    longname: long_name(&d.name, &d.entry),
                    filename: d.name,
                    attrs,
                }
            })
            .collect();
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        self.fs(move |a| a.remove_file(&filename)).await?;
        Ok(Session::ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let new = NewAttrs {
            mode: Some(
                attrs
                    .permissions
                    .map_or(DEFAULT_DIR_MODE, |m| m & 0o7777 & !UMASK),
            ),
            ..Default::default()
        };
        self.fs(move |a| a.mkdir(&path, &new)).await?;
        Ok(Session::ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        self.fs(move |a| a.remove_dir(&path)).await?;
        Ok(Session::ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        Ok(name_reply(id, clean_path(&path)))
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let entry = self.fs(move |a| a.stat(&path)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&entry),
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.fs(move |a| a.rename(&oldpath, &newpath, false))
            .await?;
        Ok(Session::ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = self.fs(move |a| a.read_link(&path)).await?;
        Ok(name_reply(id, target))
    }

    /// OpenSSH's argument order: russh-sftp's `linkpath` field holds the
    /// target and its `targetpath` field the link to create.
    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        let (target, link) = (linkpath, targetpath);
        self.fs(move |a| a.symlink(&link, &target, &NewAttrs::default()))
            .await?;
        Ok(Session::ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        let mut args = &data[..];
        let bad = || StatusReply::from(StatusCode::BadMessage);
        match request.as_str() {
            "posix-rename@openssh.com" => {
                let from = take_string(&mut args).ok_or_else(bad)?;
                let to = take_string(&mut args).ok_or_else(bad)?;
                self.fs(move |a| a.rename(&from, &to, true)).await?;
                Ok(Session::ok(id).into())
            }
            "hardlink@openssh.com" => {
                let existing = take_string(&mut args).ok_or_else(bad)?;
                let new = take_string(&mut args).ok_or_else(bad)?;
                self.fs(move |a| a.hard_link(&existing, &new)).await?;
                Ok(Session::ok(id).into())
            }
            "statvfs@openssh.com" => {
                let path = take_string(&mut args).ok_or_else(bad)?;
                let stats = self.fs(move |a| a.fs_stats(&path)).await?;
                Ok(ExtendedReply {
                    id,
                    data: statvfs_reply(&stats),
                }
                .into())
            }
            "fstatvfs@openssh.com" => {
                let handle = take_string(&mut args).ok_or_else(bad)?;
                let (file, _) = self.file(&handle)?;
                let stats = self.fs(move |a| a.fs_stats_file(&file)).await?;
                Ok(ExtendedReply {
                    id,
                    data: statvfs_reply(&stats),
                }
                .into())
            }
            "fsync@openssh.com" => {
                let handle = take_string(&mut args).ok_or_else(bad)?;
                let (file, path) = self.file(&handle)?;
                self.fs(move |_| {
                    file.sync_all().map_err(|e| FsError::Io {
                        op: "fsync",
                        path,
                        source: e,
                    })
                })
                .await?;
                Ok(Session::ok(id).into())
            }
            _ => {
                Err(StatusCode::OpUnsupported
                    .with_message(format!("unsupported extension {request}")))
            }
        }
    }
}

/// The SFTP status for a file system error (as OpenSSH maps errno).
fn status_of(err: &FsError) -> StatusReply {
    let code = match err {
        FsError::NotFound { .. } | FsError::NotDir { .. } => StatusCode::NoSuchFile,
        FsError::PermissionDenied { .. } => StatusCode::PermissionDenied,
        FsError::InvalidPath { .. } | FsError::InvalidId { .. } | FsError::InvalidHeader { .. } => {
            StatusCode::BadMessage
        }
        // pkg/sftp's Remove falls back to rmdir on a plain failure.
        _ => StatusCode::Failure,
    };
    code.with_message(err.to_string())
}

fn status_packet(id: u32, reply: StatusReply) -> Packet {
    let StatusReply {
        status_code,
        error_message,
        language_tag,
    } = reply;
    Packet::Status(Status {
        id,
        status_code,
        error_message: error_message.unwrap_or_else(|| status_code.to_string()),
        language_tag: language_tag.unwrap_or_else(|| "en-US".to_string()),
    })
}

fn name_reply(id: u32, name: String) -> Name {
    Name {
        id,
        files: vec![NameEntry {
            filename: name,
            longname: String::new(),
            attrs: FileAttributes::empty(),
        }],
    }
}

fn attributes(entry: &Entry) -> FileAttributes {
    FileAttributes {
        size: Some(entry.size),
        uid: Some(entry.uid),
        user: None,
        gid: Some(entry.gid),
        group: None,
        permissions: Some(entry.st_mode()),
        atime: Some(entry.atime.0.clamp(0, u32::MAX as i64) as u32),
        mtime: Some(entry.mtime.0.clamp(0, u32::MAX as i64) as u32),
    }
}

fn set_attrs(attrs: &FileAttributes) -> SetAttrs {
    SetAttrs {
        size: attrs.size,
        uid: attrs.uid,
        gid: attrs.gid,
        mode: attrs.permissions.map(|m| m & 0o7777),
        times: match (attrs.atime, attrs.mtime) {
            (Some(a), Some(m)) => Some((i64::from(a), i64::from(m))),
            _ => None,
        },
    }
}

/// An `ls -l` line, as OpenSSH's server sends in `SSH_FXP_NAME`.
fn long_name(name: &str, entry: &Entry) -> String {
    let kind = match entry.kind {
        FileKind::File => '-',
        FileKind::Directory => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
    };
    let m = entry.mode;
    let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
    let exec = |x: u32, special: u32, set: char, unset: char| match (m & x != 0, m & special != 0) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    let perms: String = [
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect();
    format!(
        "{kind}{perms}    1 {:<8} {:<8} {:>8} {name}",
        entry.uid, entry.gid, entry.size
    )
}

/// Reads an SSH string (u32 length + bytes) from an extension's arguments.
fn take_string(data: &mut &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let s = data.get(4..4 + len)?;
    let out = String::from_utf8(s.to_vec()).ok()?;
    *data = &data[4 + len..];
    Some(out)
}

fn statvfs_reply(s: &FsStats) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(88);
    for v in [
        s.block_size,
        s.fragment_size,
        s.blocks,
        s.blocks_free,
        s.blocks_available,
        s.files,
        s.files_free,
        s.files_available,
        s.fsid,
        s.flags,
        s.name_max,
    ] {
        out.put_u64(v);
    }
    out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::idmap::IdShift;
    use super::*;
    use russh_sftp::client::SftpSession;
    use std::os::unix::fs::MetadataExt;

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
}
