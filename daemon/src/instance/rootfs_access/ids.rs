//! Owners between container ids and host ids, through the container's id shift.

use super::{FsError, RootfsAccess, OVERFLOW_ID};

/// The host id of a container id (`base + id` for ids below the range of
/// the [`IdShift`](crate::instance::idmap::IdShift)); -1 (`u32::MAX`,
/// "unchanged" to chown) never results.
pub(super) fn host_id(base: u32, range: u32, id: u32, kind: &'static str) -> Result<u32, FsError> {
    match base.checked_add(id) {
        Some(host) if id < range && host != u32::MAX => Ok(host),
        _ => Err(FsError::InvalidId { kind, id, range }),
    }
}

/// The container id of a host id; unmapped ids show as [`OVERFLOW_ID`], as
/// the kernel shows them inside the container.
pub(super) fn container_id(base: u32, range: u32, host: u32) -> u32 {
    match host.checked_sub(base) {
        Some(id) if id < range => id,
        _ => OVERFLOW_ID,
    }
}

impl RootfsAccess {
    pub(super) fn host_uid(&self, uid: u32) -> Result<u32, FsError> {
        host_id(self.shift.uid_base, self.shift.range, uid, "uid")
    }

    pub(super) fn host_gid(&self, gid: u32) -> Result<u32, FsError> {
        host_id(self.shift.gid_base, self.shift.range, gid, "gid")
    }

    pub(super) fn host_owner(
        &self,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(u32, u32), FsError> {
        Ok((
            self.host_uid(uid.unwrap_or(0))?,
            self.host_gid(gid.unwrap_or(0))?,
        ))
    }
}
