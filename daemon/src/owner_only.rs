//! Files only their owner (root) may read: state that may hold credentials or addresses.

use std::path::Path;

/// Writes `data` to `path`, created (or truncated, and its mode fixed) as 0600: never
/// briefly readable by others, and an older file's wider mode does not survive.
pub fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)
}
