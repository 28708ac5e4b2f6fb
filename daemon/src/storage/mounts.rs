//! What a driver needs to know about block devices and mounts before it formats or mounts
//! anything: read from `/proc/self/mountinfo`, `statfs` and `blkid`, never guessed.

use std::path::{Path, PathBuf};

use crate::runner::{self, RunError};

/// `statfs` magic of btrfs (linux/magic.h).
pub const BTRFS_MAGIC: i64 = 0x9123_683E;

/// One line of `/proc/self/mountinfo`: the source and the mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let target = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(Mount {
                source: unescape(source),
                target: PathBuf::from(unescape(target)),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

pub fn mounts() -> std::io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Whether something is mounted at `target`.
pub fn is_mount_point(target: &Path) -> std::io::Result<bool> {
    Ok(mounts()?.iter().any(|m| m.target == target))
}

/// Where `device` is mounted, if anywhere (compared by canonical path, so a symlink under
/// `/dev/disk/by-*` matches its device node).
pub fn mounted_at(device: &Path) -> std::io::Result<Option<PathBuf>> {
    let dev = std::fs::canonicalize(device)?;
    Ok(mounts()?.into_iter().find_map(|m| {
        let src = Path::new(&m.source);
        (src.is_absolute() && std::fs::canonicalize(src).ok().as_deref() == Some(&dev))
            .then_some(m.target)
    }))
}

/// The filesystem type `path` lives on (statfs magic).
pub fn fs_magic(path: &Path) -> std::io::Result<i64> {
    let st = nix::sys::statfs::statfs(path).map_err(std::io::Error::from)?;
    Ok(st.filesystem_type().0 as i64)
}

/// What `blkid` finds on a device (`TYPE`, e.g. `ext4`, `btrfs`, `zfs_member`, or a
/// partition table's `PTTYPE`, e.g. `gpt`), or none.
pub fn probe_signature(device: &Path) -> Result<Option<String>, RunError> {
    // blkid exits 2 when it finds nothing: that is an answer, not a failure.
    match runner::run(
        "blkid",
        [
            "-p".as_ref(),
            "-s".as_ref(),
            "TYPE".as_ref(),
            "-s".as_ref(),
            "PTTYPE".as_ref(),
            "-o".as_ref(),
            "value".as_ref(),
            device.as_os_str(),
        ],
    ) {
        Ok(out) => Ok(out
            .lines()
            .map(str::trim)
            .find(|s| !s.is_empty())
            .map(str::to_string)),
        Err(RunError::Failed { status, .. }) if status.contains("exit status: 2") => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_and_escapes() {
        let text = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - btrfs /dev/loop3 rw\n\
                    37 35 0:5 / /dev rw - devtmpfs udev rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].source, "/dev/loop3");
        assert_eq!(m[0].fstype, "btrfs");
        assert_eq!(m[1].target, PathBuf::from("/dev"));
    }

    #[test]
    fn the_root_is_a_mount_point() {
        assert!(is_mount_point(Path::new("/")).unwrap());
    }
}
