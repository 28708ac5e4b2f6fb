//! One client's session: its open handles, and dispatching each request to its handler.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::Arc;

use russh_sftp::protocol::{Packet, Status, StatusCode};
use russh_sftp::server::{Handler, StatusReply};

use super::wire::{status_of, status_packet};
use super::MAX_HANDLES;
use crate::instance::rootfs_access::{DirEntry, FsError, RootfsAccess};

pub(super) enum OpenHandle {
    File { file: Arc<File>, path: String },
    Dir { entries: VecDeque<DirEntry> },
}

/// One client's state: its open handles.
pub(super) struct Session {
    pub(super) access: Arc<RootfsAccess>,
    pub(super) handles: HashMap<String, OpenHandle>,
    pub(super) next_handle: u64,
}

impl Session {
    pub(super) fn new(access: RootfsAccess) -> Session {
        Session {
            access: Arc::new(access),
            handles: HashMap::new(),
            next_handle: 1,
        }
    }

    pub(super) fn add_handle(&mut self, handle: OpenHandle) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message("too many open handles"));
        }
        let name = format!("h{}", self.next_handle);
        self.next_handle += 1;
        self.handles.insert(name.clone(), handle);
        Ok(name)
    }

    pub(super) fn file(&self, handle: &str) -> Result<(Arc<File>, String), StatusReply> {
        match self.handles.get(handle) {
            Some(OpenHandle::File { file, path }) => Ok((file.clone(), path.clone())),
            Some(OpenHandle::Dir { .. }) => {
                Err(StatusCode::Failure.with_message("not a file handle"))
            }
            None => Err(StatusCode::Failure.with_message("invalid handle")),
        }
    }

    /// Runs a file system call off the async threads.
    pub(super) async fn fs<T, F>(&self, f: F) -> Result<T, StatusReply>
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

    pub(super) async fn dispatch(&mut self, packet: Packet) -> Packet {
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

    pub(super) fn ok(id: u32) -> Status {
        Status {
            id,
            status_code: StatusCode::Ok,
            error_message: "Ok".to_string(),
            language_tag: "en-US".to_string(),
        }
    }
}
