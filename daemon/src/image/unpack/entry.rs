//! What a tar entry's header says: its path (escapes refused), link target, attributes, xattrs.

use std::borrow::Cow;
use std::ffi::CString;
use std::io::Read;

use super::UnpackError;

/// Attributes of an entry taken from its header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attrs {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: i64,
}

/// An extended attribute to set on an unpacked file or directory.
pub(super) struct Xattr {
    pub(super) name: CString,
    pub(super) value: Vec<u8>,
}

pub(super) const ABSOLUTE: &str = "absolute path";
pub(super) const DOTDOT: &str = "path leaves the image with `..`";

/// Splits a tar path into its components, dropping empty and `.` ones.
/// Absolute paths and `..` anywhere are refused, whatever they would resolve
/// to: a well-formed image never needs them.
pub(super) fn split_entry_path(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err(ABSOLUTE);
    }
    let mut components = Vec::new();
    for component in raw.split(|byte| *byte == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(DOTDOT),
            _ => components.push(component),
        }
    }
    Ok(components)
}

pub(super) fn refused(path: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        path: path.to_string(),
        reason: reason.into(),
    }
}

pub(super) fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    shown: &str,
) -> Result<Vec<u8>, UnpackError> {
    match entry.link_name_bytes() {
        Some(Cow::Borrowed(bytes)) if !bytes.is_empty() => Ok(bytes.to_vec()),
        Some(Cow::Owned(bytes)) if !bytes.is_empty() => Ok(bytes),
        _ => Err(refused(shown, "link entry without a target")),
    }
}

/// Extended attributes carried as PAX `SCHILY.xattr.NAME` records (GNU tar
/// `--xattrs`, Go's archive/tar). Only `user.*` and `security.capability`
/// (file capabilities, e.g. `ping`'s cap_net_raw) are kept: `trusted.*` and
/// other `security.*` labels are the host's business, and `system.*` ACLs
/// name host ids.
pub(super) fn entry_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
) -> Result<Vec<Xattr>, UnpackError> {
    let mut xattrs = Vec::new();
    let extensions = match entry.pax_extensions() {
        Ok(Some(extensions)) => extensions,
        Ok(None) => return Ok(xattrs),
        Err(err) => return Err(refused(shown, format!("bad PAX header: {err}"))),
    };
    for extension in extensions {
        let extension =
            extension.map_err(|err| refused(shown, format!("bad PAX record: {err}")))?;
        let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        if !(name.starts_with(b"user.") || name == b"security.capability") {
            continue;
        }
        let name = CString::new(name)
            .map_err(|_| refused(shown, "extended attribute name with a NUL byte"))?;
        xattrs.push(Xattr {
            name,
            value: extension.value_bytes().to_vec(),
        });
    }
    Ok(xattrs)
}
