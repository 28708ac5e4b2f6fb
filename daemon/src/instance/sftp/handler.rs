//! The answer to each SFTP request, from the container's rootfs.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File as NameEntry, FileAttributes, Handle, Name, OpenFlags, Packet,
    Status, StatusCode, Version,
};
use russh_sftp::server::{Handler, StatusReply};

use super::session::{OpenHandle, Session};
use super::wire::{attributes, long_name, name_reply, set_attrs, statvfs_reply, take_string};
use super::{MAX_READ, READDIR_BATCH, UMASK};
use crate::instance::rootfs_access::{
    clean_path, FsError, NewAttrs, OpenOptions, DEFAULT_DIR_MODE,
};

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
