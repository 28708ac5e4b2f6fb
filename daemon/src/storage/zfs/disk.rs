//! A whole disk prepared for a zpool: one GPT partition that cairnd writes itself.
//!
//! Given a whole disk, `zpool create` writes its own label and then waits up to 30 s for
//! udev to have *processed* the new partition (libzfs `zpool_label_disk_wait`). On a
//! loaded first boot (coldplug, module loads, three emulated members) udev missed that
//! window on every member and the preseed's pool was never made. Partitioning with sfdisk
//! and handing zpool the partition takes udev out of the path: the kernel adds the
//! partition's device node (devtmpfs) when the table is re-read, and zpool neither
//! relabels nor waits for a partition it is given.
//!
//! udev must also keep its hands off while this happens: when a tool that wrote to a disk
//! closes it, udevd re-reads the disk's partition table (its `watch` rule), which drops
//! and re-adds the partition's node; on a loaded first boot that landed in the middle of
//! `zpool create`, which failed with "no such pool or dataset". The whole disk is held
//! under an exclusive BSD lock from the table's writing until the pool holds the
//! partition open: udevd postpones a locked disk's events (systemd's "Locking Block
//! Device Access"), and a re-read after that fails harmlessly on the busy partition.
//!
//! The partition is named `cairn-<pool>`: a disk that holds only that partition, with
//! nothing on it, is one a cairnd stopped part way through preparing, and is taken again.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::runner::{self, RunError};

/// The GPT type OpenZFS gives the partitions it makes ("Solaris /usr & Apple ZFS").
const ZFS_PART_TYPE: &str = "6A898CC3-1DD2-11B2-99A6-080020736631";
/// How long the kernel may take to show the new partition's node after the re-read.
const NODE_WAIT: Duration = Duration::from_secs(20);

fn label(pool: &str) -> String {
    format!("cairn-{pool}")
}

/// The disk's kernel name (`nvme0n1`) behind a path that may be a symlink.
fn kernel_name(disk: &Path) -> std::io::Result<String> {
    let real = fs::canonicalize(disk)?;
    real.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| std::io::Error::other(format!("{} has no device name", real.display())))
}

/// The node of partition `number` of `disk`, when the kernel shows one.
pub(super) fn partition(disk: &Path, number: u32) -> Option<PathBuf> {
    let name = kernel_name(disk).ok()?;
    let dir = Path::new("/sys/class/block").join(&name);
    for entry in fs::read_dir(&dir).ok()?.flatten() {
        let part = entry.path().join("partition");
        let Ok(n) = fs::read_to_string(&part) else {
            continue;
        };
        if n.trim() == number.to_string() {
            let dev = Path::new("/dev").join(entry.file_name());
            return dev.exists().then_some(dev);
        }
    }
    None
}

/// An exclusive BSD lock on a whole disk, held while it lives.
pub(super) struct DiskLock(fs::File);

impl Drop for DiskLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is open for as long as self.0.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Locks `disk` against udevd (and any other tool that follows the convention).
pub(super) fn lock(disk: &Path) -> std::io::Result<DiskLock> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(disk)?;
    // SAFETY: a valid open fd; flock takes no pointers.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(DiskLock(f))
}

/// Whether `disk` holds exactly the one partition [`prepare`] makes for `pool`, with
/// nothing written on it yet.
pub(super) fn is_own_empty_label(pool: &str, disk: &Path) -> bool {
    let Ok(json) = runner::run("sfdisk", ["--json".as_ref(), disk.as_os_str()]) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) else {
        return false;
    };
    let parts = v["partitiontable"]["partitions"].as_array();
    let [only] = parts.map(Vec::as_slice).unwrap_or_default() else {
        return false;
    };
    if only["name"].as_str() != Some(label(pool).as_str()) {
        return false;
    }
    partition(disk, 1)
        .is_some_and(|p| matches!(super::super::mounts::probe_signature(&p), Ok(None)))
}

/// Writes a fresh GPT with one partition over the whole of `disk` (erasing what the disk
/// held: the caller has checked that it may) and returns the partition's node once the
/// kernel shows it.
pub(super) fn prepare(pool: &str, disk: &Path) -> Result<PathBuf, RunError> {
    let script = format!(
        "label: gpt\ntype={ZFS_PART_TYPE}, name=\"{}\"\n",
        label(pool)
    );
    runner::stream_in(
        "sfdisk",
        &[
            "--quiet".as_ref(),
            // The caller holds the disk's lock: sfdisk taking its own would wait on it.
            "--lock=no".as_ref(),
            "--wipe".as_ref(),
            "always".as_ref(),
            "--wipe-partitions".as_ref(),
            "always".as_ref(),
            disk.as_os_str(),
        ],
        &mut script.as_bytes(),
    )?;
    let start = Instant::now();
    let mut reread = false;
    loop {
        if let Some(p) = partition(disk, 1) {
            return Ok(p);
        }
        // A table sfdisk could not make the kernel re-read (the disk was busy) is read
        // again once; the loop then sees its partition.
        if !reread && start.elapsed() > Duration::from_secs(2) {
            reread = true;
            let _ = runner::run("partx", ["-u".as_ref(), disk.as_os_str()]);
        }
        if start.elapsed() > NODE_WAIT {
            return Err(RunError::Stream {
                program: "sfdisk".into(),
                source: std::io::Error::other(format!(
                    "the kernel showed no partition on {} {} s after the table was written",
                    disk.display(),
                    NODE_WAIT.as_secs()
                )),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Erases the table [`prepare`] wrote (a pool that could not be made leaves the disk as
/// empty as it was given).
pub(super) fn erase(disk: &Path) {
    if let Some(p) = partition(disk, 1) {
        let _ = runner::run("wipefs", ["-a".as_ref(), p.as_os_str()]);
    }
    let _ = runner::run("wipefs", ["-a".as_ref(), disk.as_os_str()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_names_the_pool() {
        assert_eq!(label("default"), "cairn-default");
    }

    /// A loop device with partition scanning stands in for a disk (root: losetup).
    struct LoopDisk(PathBuf, #[allow(dead_code)] tempfile::TempDir);
    impl Drop for LoopDisk {
        fn drop(&mut self) {
            let _ = runner::run("losetup", ["-d".as_ref(), self.0.as_os_str()]);
        }
    }
    fn loop_disk() -> LoopDisk {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (losetup)"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        fs::File::create(&file).unwrap().set_len(64 << 20).unwrap();
        let dev = runner::run(
            "losetup",
            [
                "-f".as_ref(),
                "--show".as_ref(),
                "-P".as_ref(),
                file.as_os_str(),
            ],
        )
        .unwrap();
        LoopDisk(PathBuf::from(dev.trim()), dir)
    }

    #[test]
    fn a_prepared_disk_has_one_named_partition_taken_again_while_empty() {
        let d = loop_disk();
        assert!(!is_own_empty_label("p1", &d.0), "a blank disk is not ours");
        let locked = lock(&d.0).unwrap();
        let part = prepare("p1", &d.0).unwrap();
        drop(locked);
        assert_eq!(partition(&d.0, 1).as_deref(), Some(part.as_path()));
        assert!(is_own_empty_label("p1", &d.0));
        assert!(!is_own_empty_label("p2", &d.0), "another pool's label");
        // Something written on the partition: no longer an unfinished preparation.
        runner::run("mkfs.ext4", ["-q".as_ref(), part.as_os_str()]).unwrap();
        assert!(!is_own_empty_label("p1", &d.0));
        erase(&d.0);
        assert!(matches!(
            super::super::super::mounts::probe_signature(&d.0),
            Ok(None)
        ));
    }

    #[test]
    fn a_missing_disk_has_no_partition() {
        assert!(partition(Path::new("/dev/does-not-exist"), 1).is_none());
    }
}
