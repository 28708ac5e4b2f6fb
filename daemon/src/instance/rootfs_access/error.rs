//! [`FsError`]: what can go wrong, always naming the container path concerned.

use std::io;

/// What can go wrong; every variant names the container path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: permission denied")]
    PermissionDenied { path: String },
    #[error("{path}: already exists")]
    Exists { path: String },
    #[error("{path}: not a directory")]
    NotDir { path: String },
    #[error("{path}: is a directory")]
    IsDir { path: String },
    #[error("{path}: directory not empty")]
    NotEmpty { path: String },
    #[error("{path}: not a regular file")]
    NotRegular { path: String },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{kind} {id} is outside the container's id range 0..{range}")]
    InvalidId {
        kind: &'static str,
        id: u32,
        range: u32,
    },
    #[error("invalid {name} header: {value:?}")]
    InvalidHeader { name: String, value: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    /// The HTTP status the files API answers with: 404, 403, 409, 400 or 500.
    pub fn http_status(&self) -> u16 {
        match self {
            FsError::NotFound { .. } => 404,
            FsError::PermissionDenied { .. } => 403,
            FsError::Exists { .. } | FsError::NotEmpty { .. } => 409,
            FsError::NotDir { .. }
            | FsError::IsDir { .. }
            | FsError::NotRegular { .. }
            | FsError::InvalidPath { .. }
            | FsError::InvalidId { .. }
            | FsError::InvalidHeader { .. } => 400,
            FsError::Io { .. } => 500,
        }
    }

    pub(super) fn from_io(op: &'static str, path: &str, err: io::Error) -> FsError {
        let path = path.to_string();
        match err.raw_os_error() {
            Some(libc::ENOENT) => FsError::NotFound { path },
            Some(libc::EACCES) | Some(libc::EPERM) => FsError::PermissionDenied { path },
            Some(libc::EEXIST) => FsError::Exists { path },
            Some(libc::ENOTDIR) => FsError::NotDir { path },
            Some(libc::EISDIR) => FsError::IsDir { path },
            Some(libc::ENOTEMPTY) => FsError::NotEmpty { path },
            Some(libc::ELOOP) => FsError::InvalidPath {
                path,
                reason: "too many levels of symbolic links",
            },
            Some(libc::ENAMETOOLONG) => FsError::InvalidPath {
                path,
                reason: "name too long",
            },
            _ => FsError::Io {
                op,
                path,
                source: err,
            },
        }
    }
}
