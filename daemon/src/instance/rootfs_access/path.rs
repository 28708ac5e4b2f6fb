//! Container paths handled lexically (C strings, split, join, clean); nothing is resolved here.

use std::ffi::CString;

use super::FsError;

/// A container path as a C string; relative paths are taken from `/`.
pub(super) fn container_cpath(path: &str) -> Result<CString, FsError> {
    if path.is_empty() {
        return Err(FsError::InvalidPath {
            path: path.into(),
            reason: "empty path",
        });
    }
    CString::new(path).map_err(|_| FsError::InvalidPath {
        path: path.into(),
        reason: "contains a NUL byte",
    })
}

/// Splits a path into parent and final name, without resolving anything.
/// `None` for the root. The final name may not be `.` or `..`.
pub(super) fn split_path(path: &str) -> Result<Option<(&str, &str)>, FsError> {
    if path.is_empty() {
        return Err(FsError::InvalidPath {
            path: path.into(),
            reason: "empty path",
        });
    }
    if path.contains('\0') {
        return Err(FsError::InvalidPath {
            path: path.into(),
            reason: "contains a NUL byte",
        });
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(None);
    }
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => ("/", trimmed),
    };
    if name == "." || name == ".." {
        return Err(FsError::InvalidPath {
            path: path.into(),
            reason: "ends in . or ..",
        });
    }
    Ok(Some((parent, name)))
}

pub(super) fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Lexically cleans a container path into an absolute one (Go's
/// `path.Clean("/" + p)`): no symlink is resolved.
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}
