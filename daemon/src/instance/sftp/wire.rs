//! Rootfs types to SFTP's and back: statuses, attributes, `ls -l` lines, extension payloads.

use bytes::{BufMut, BytesMut};
use russh_sftp::protocol::{File as NameEntry, FileAttributes, Name, Packet, Status, StatusCode};
use russh_sftp::server::StatusReply;

use crate::instance::rootfs_access::{Entry, FileKind, FsError, FsStats, SetAttrs};

/// The SFTP status for a file system error (as OpenSSH maps errno).
pub(super) fn status_of(err: &FsError) -> StatusReply {
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

pub(super) fn status_packet(id: u32, reply: StatusReply) -> Packet {
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

pub(super) fn name_reply(id: u32, name: String) -> Name {
    Name {
        id,
        files: vec![NameEntry {
            filename: name,
            longname: String::new(),
            attrs: FileAttributes::empty(),
        }],
    }
}

pub(super) fn attributes(entry: &Entry) -> FileAttributes {
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

pub(super) fn set_attrs(attrs: &FileAttributes) -> SetAttrs {
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
pub(super) fn long_name(name: &str, entry: &Entry) -> String {
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
pub(super) fn take_string(data: &mut &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let s = data.get(4..4 + len)?;
    let out = String::from_utf8(s.to_vec()).ok()?;
    *data = &data[4 + len..];
    Some(out)
}

pub(super) fn statvfs_reply(s: &FsStats) -> Vec<u8> {
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
