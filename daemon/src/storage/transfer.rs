//! An instance volume between pools of different drivers (a copy into another pool, here
//! or on another member): no driver reads another's stream, so it goes file by file. Each
//! snapshot, oldest first, is written into the new volume and snapshotted there, then the
//! volume itself; the snapshots arrive complete but share no extents with each other.
//!
//! Between members the files travel as one tar per snapshot and one for the volume,
//! framed by `wire.rs`, owners, modes and xattrs kept.

use std::io::{Read, Write};
use std::path::Path;

use super::{tree, wire, StorageDriver, StorageError};

fn io_err(
    pool: &dyn StorageDriver,
    what: String,
) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |e| StorageError::io(pool.pool_name(), what, e)
}

/// Copies instance `from` of `src` (or its snapshot `snapshot`) into new instance `to`
/// of `dst`, with `snapshots` of `from` made along; on error nothing is left in `dst`.
pub fn copy_across(
    src: &dyn StorageDriver,
    from: &str,
    snapshot: Option<&str>,
    dst: &dyn StorageDriver,
    to: &str,
    snapshots: &[String],
) -> Result<(), StorageError> {
    dst.create_empty_instance(to)?;
    let copied = (|| {
        let volume = dst.instance_path(to);
        for s in snapshots {
            tree::refill(&src.snapshot_files(from, s), &volume)
                .map_err(io_err(dst, format!("copying snapshot {from}/{s}")))?;
            dst.create_snapshot(to, s)?;
        }
        let last = match snapshot {
            Some(s) => src.snapshot_files(from, s),
            None => src.instance_path(from),
        };
        tree::refill(&last, &volume).map_err(io_err(dst, format!("copying {from}")))
    })();
    if copied.is_err() {
        let _ = dst.delete_instance(to);
    }
    copied
}

fn append_tree(dir: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir)?;
    b.into_inner()?.flush()
}

/// Writes instance `name` of `src` (or its snapshot `snapshot`) and `snapshots` of it as
/// framed tars into `out`, for [`receive`] on another member.
pub fn send(
    src: &dyn StorageDriver,
    name: &str,
    snapshot: Option<&str>,
    snapshots: &[String],
    out: &mut dyn Write,
) -> Result<(), StorageError> {
    let err = |what: String| io_err(src, what);
    let mut dirs: Vec<std::path::PathBuf> = snapshots
        .iter()
        .map(|s| src.snapshot_files(name, s))
        .collect();
    dirs.push(match snapshot {
        Some(s) => src.snapshot_files(name, s),
        None => src.instance_path(name),
    });
    for dir in dirs {
        let mut w = wire::StreamWriter::start(out).map_err(err(format!("sending {name}")))?;
        append_tree(&dir, &mut w).map_err(err(format!("sending {}", dir.display())))?;
        w.finish().map_err(err(format!("sending {name}")))?;
    }
    wire::end(out).map_err(err(format!("sending {name}")))
}

/// Makes instance `name` of `dst` from a [`send`] stream whose first frames are the
/// snapshots `snapshots`, in order; on error nothing is left behind.
pub fn receive(
    dst: &dyn StorageDriver,
    name: &str,
    snapshots: &[String],
    input: &mut dyn Read,
) -> Result<(), StorageError> {
    dst.create_empty_instance(name)?;
    let received = (|| {
        let volume = dst.instance_path(name);
        let what = || format!("receiving {name}");
        let mut frames = 0;
        while wire::next(input).map_err(io_err(dst, what()))? {
            if frames > snapshots.len() {
                return Err(StorageError::Invalid(
                    dst.pool_name().to_string(),
                    format!("the stream for {name} holds more than its snapshots and volume"),
                ));
            }
            tree::clear(&volume).map_err(io_err(dst, what()))?;
            let mut one = wire::StreamReader::new(input);
            let mut a = tar::Archive::new(&mut one);
            a.set_preserve_permissions(true);
            a.set_preserve_ownerships(true);
            a.set_unpack_xattrs(true);
            // `unpack` refuses absolute paths and `..`, and links leaving the directory.
            a.unpack(&volume).map_err(io_err(dst, what()))?;
            one.drain().map_err(io_err(dst, what()))?;
            if let Some(s) = snapshots.get(frames) {
                dst.create_snapshot(name, s)?;
            }
            frames += 1;
        }
        if frames != snapshots.len() + 1 {
            return Err(StorageError::Invalid(
                dst.pool_name().to_string(),
                format!("the stream for {name} ended early"),
            ));
        }
        Ok(())
    })();
    if received.is_err() {
        let _ = dst.delete_instance(name);
    }
    received
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{dir, PoolPaths};

    fn pool(root: &Path, name: &str) -> Box<dyn StorageDriver> {
        let paths = PoolPaths::new(root, name);
        let config = (dir::KIND.create)(name, &Default::default(), &paths).unwrap();
        (dir::KIND.open)(name, &config, &paths).unwrap()
    }

    fn volume_with_snapshots(p: &dyn StorageDriver) {
        p.create_empty_instance("c1").unwrap();
        let root = p.instance_path("c1");
        std::fs::create_dir(root.join("rootfs")).unwrap();
        std::fs::write(root.join("rootfs/mark"), "one").unwrap();
        p.create_snapshot("c1", "s1").unwrap();
        std::fs::write(root.join("rootfs/mark"), "two").unwrap();
        std::fs::write(root.join("rootfs/later"), "x").unwrap();
    }

    fn check(p: &dyn StorageDriver, name: &str) {
        let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap();
        assert_eq!(read(p.instance_path(name).join("rootfs/mark")), "two");
        assert_eq!(
            read(p.snapshot_files(name, "s1").join("rootfs/mark")),
            "one"
        );
        assert!(!p.snapshot_files(name, "s1").join("rootfs/later").exists());
    }

    #[test]
    fn a_volume_and_its_snapshots_cross_pools_and_streams() {
        let t = tempfile::tempdir().unwrap();
        let a = pool(t.path(), "a");
        let b = pool(t.path(), "b");
        volume_with_snapshots(a.as_ref());
        let snaps = vec!["s1".to_string()];
        copy_across(a.as_ref(), "c1", None, b.as_ref(), "c2", &snaps).unwrap();
        check(b.as_ref(), "c2");

        let mut body = Vec::new();
        send(a.as_ref(), "c1", None, &snaps, &mut body).unwrap();
        receive(b.as_ref(), "c3", &snaps, &mut body.as_slice()).unwrap();
        check(b.as_ref(), "c3");
        // A stream cut short leaves nothing.
        let cut = &body[..body.len() / 2];
        assert!(receive(b.as_ref(), "c4", &snaps, &mut &cut[..]).is_err());
        assert!(!b.instance_path("c4").exists());
    }
}
