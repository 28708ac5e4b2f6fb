//! Moving a stopped instance to another cluster member (`incus move NAME --target M`,
//! evacuation and restore): its volume and snapshots travel as one tar stream over the
//! member-to-member HTTPS link, the target unpacks them into its pool, then the instance's
//! location changes through Raft and the source drops its copy. Ownership (the shifted ids
//! of an unprivileged container) and modes travel with the files.
//!
//! Order matters for safety: the record moves only once the target holds the files, and
//! the source deletes its files only once the record moved, so a failure at any step
//! leaves a complete instance on one member.

use std::io::Read;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::sync::Arc;

use super::lxc::LxcState;
use super::{expand, get, root_pool, InstanceError, Result};
use crate::daemon::Daemon;
use crate::db::Command;

pub const RECEIVE_PATH: &str = "/internal/cluster/instances";

/// Tar roots: the instance volume and its snapshots.
const VOLUME: &str = "volume";
const SNAPSHOTS: &str = "snapshots";

fn failed(what: &str, e: impl std::fmt::Display) -> InstanceError {
    InstanceError::Failed(format!("{what}: {e}"))
}

/// Writes the instance's volume and snapshots as a tar stream into `out`.
fn write_tar(volume: &Path, snapshots: &Path, out: impl std::io::Write) -> std::io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(VOLUME, volume)?;
    if snapshots.exists() {
        b.append_dir_all(SNAPSHOTS, snapshots)?;
    }
    b.into_inner()?.flush()
}

/// Unpacks a stream from [`write_tar`] into `volume` and `snapshots` (which must not
/// exist), through a staging directory next to them.
pub fn receive_tar(input: impl Read, volume: &Path, snapshots: &Path) -> std::io::Result<()> {
    let parent = volume
        .parent()
        .ok_or_else(|| std::io::Error::other("instance path has no parent"))?;
    let staging = parent.join(format!(
        ".incoming-{}",
        volume.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let _ = crate::storage::tree::remove(&staging);
    std::fs::create_dir_all(&staging)?;
    let unpacked = (|| {
        let mut a = tar::Archive::new(input);
        a.set_preserve_permissions(true);
        a.set_preserve_ownerships(true);
        a.set_unpack_xattrs(true);
        a.set_overwrite(false);
        // `unpack` refuses absolute paths and `..`, and links leaving the directory.
        a.unpack(&staging)?;
        if !staging.join(VOLUME).is_dir() {
            return Err(std::io::Error::other("the stream holds no instance volume"));
        }
        if volume.exists() {
            return Err(std::io::Error::other(format!(
                "{} already exists",
                volume.display()
            )));
        }
        std::fs::rename(staging.join(VOLUME), volume)?;
        if staging.join(SNAPSHOTS).is_dir() {
            if let Some(p) = snapshots.parent() {
                std::fs::create_dir_all(p)?;
            }
            let _ = crate::storage::tree::remove(snapshots);
            std::fs::rename(staging.join(SNAPSHOTS), snapshots)?;
        }
        Ok(())
    })();
    let _ = crate::storage::tree::remove(&staging);
    unpacked
}

/// Moves stopped instance `name` from this member to member `target`.
pub async fn move_to(d: Arc<Daemon>, name: &str, target: &str) -> Result<()> {
    let rt = d
        .cluster()
        .ok_or_else(|| InstanceError::Invalid("This server is not clustered".into()))?;
    if target == rt.name() {
        return Err(InstanceError::Invalid(format!(
            "Instance {name} is already on member {target}"
        )));
    }
    let member =
        d.db.member(target)?
            .ok_or_else(|| InstanceError::NotFound(format!("Cluster member {target} not found")))?;
    if member.evacuated {
        return Err(InstanceError::Invalid(format!(
            "Member {target} is evacuated"
        )));
    }
    let lock = d.instance_lock(name);
    let _guard = lock.lock().await;
    let rec = get(&d, name)?;
    if super::lxc_state(&d, name) != LxcState::Stopped {
        return Err(InstanceError::Conflict(
            "The instance is running: stop it before moving it (containers are moved cold)".into(),
        ));
    }
    let (_, ed) = expand(&d, &rec)?;
    let pool_name = root_pool(&ed)?;
    let pool = d
        .pool(&pool_name)
        .ok_or_else(|| InstanceError::Failed(format!("storage pool {pool_name} is not open")))?;
    if !pool.moves_as_files() {
        return Err(InstanceError::Invalid(format!(
            "Moving an instance between members is not supported yet on {} pools (storage pool \
             {pool_name:?})",
            pool.driver_name()
        )));
    }
    let volume = pool.instance_path(name);
    let snapshots = pool.snapshots_path(name);

    // The tar is written on a blocking thread into a pipe whose other end is the body.
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let (v, s) = (volume.clone(), snapshots.clone());
    let producer = tokio::task::spawn_blocking(move || {
        let out = tokio_util::io::SyncIoBridge::new(writer);
        write_tar(&v, &s, out)
    });
    let path = format!("{RECEIVE_PATH}/{name}?pool={pool_name}");
    let (status, answer) =
        crate::cluster::member_api::post_stream(&rt, &member.address, &path, reader)
            .await
            .map_err(|e| failed(&format!("sending {name} to {target}"), e))?;
    producer
        .await
        .map_err(|e| failed("writing the transfer", e))?
        .map_err(|e| failed(&format!("reading {name}'s files"), e))?;
    if !status.is_success() {
        return Err(InstanceError::Failed(format!(
            "member {target} refused {name}: {}",
            String::from_utf8_lossy(&answer)
        )));
    }
    let mut moved = rec.clone();
    moved.location = target.to_string();
    d.write(vec![Command::UpdateInstance(moved)]).await?;
    let p = pool.clone();
    let n = name.to_string();
    if let Err(e) = tokio::task::spawn_blocking(move || p.delete_instance(&n)).await {
        tracing::warn!("removing the moved instance {name} here: {e}");
    }
    let _ = crate::storage::tree::remove(&d.paths.lxc.join(name));
    d.events.lifecycle(
        "instance-updated",
        &super::url(name),
        serde_json::json!({"location": target}),
    );
    Ok(())
}

/// `POST /internal/cluster/instances/{name}?pool=P` on the target: unpacks the stream.
pub async fn receive(
    d: Arc<Daemon>,
    name: &str,
    pool_name: &str,
    reader: impl tokio::io::AsyncRead + Send + Unpin + 'static,
) -> Result<()> {
    crate::validate::instance_name(name).map_err(|e| InstanceError::Invalid(e.to_string()))?;
    let pool = d
        .pool(pool_name)
        .ok_or_else(|| InstanceError::NotFound(format!("storage pool {pool_name}")))?;
    if !pool.moves_as_files() {
        return Err(InstanceError::Invalid(format!(
            "storage pool {pool_name:?} ({}) does not receive instances as files",
            pool.driver_name()
        )));
    }
    let volume = pool.instance_path(name);
    let snapshots = pool.snapshots_path(name);
    if let Some(p) = volume.parent() {
        std::fs::create_dir_all(p).map_err(|e| failed("creating the pool directory", e))?;
    }
    tokio::task::spawn_blocking(move || {
        receive_tar(
            tokio_util::io::SyncIoBridge::new(reader),
            &volume,
            &snapshots,
        )
    })
    .await
    .map_err(|e| failed("receiving", e))?
    .map_err(|e| failed(&format!("unpacking {name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn snapshots_dir(volume: &Path) -> PathBuf {
        volume.with_extension("snapshots")
    }

    #[test]
    fn a_volume_and_its_snapshots_travel_with_owners_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let src = tempfile::tempdir().unwrap();
        let vol = src.path().join("containers/c1");
        std::fs::create_dir_all(vol.join("rootfs/etc")).unwrap();
        std::fs::write(vol.join("rootfs/etc/hostname"), "c1\n").unwrap();
        std::fs::set_permissions(
            vol.join("rootfs/etc/hostname"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::chown(
            vol.join("rootfs/etc/hostname"),
            Some(1000123),
            Some(1000123),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/hostname", vol.join("rootfs/link")).unwrap();
        let snaps = snapshots_dir(&vol);
        std::fs::create_dir_all(snaps.join("s1/rootfs")).unwrap();
        std::fs::write(snaps.join("s1/rootfs/x"), "x").unwrap();

        let mut buf = Vec::new();
        write_tar(&vol, &snaps, &mut buf).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let dvol = dst.path().join("containers/c1");
        std::fs::create_dir_all(dvol.parent().unwrap()).unwrap();
        let dsnaps = snapshots_dir(&dvol);
        receive_tar(buf.as_slice(), &dvol, &dsnaps).unwrap();
        let m = std::fs::metadata(dvol.join("rootfs/etc/hostname")).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (1000123, 1000123, 0o640)
        );
        assert_eq!(
            std::fs::read_link(dvol.join("rootfs/link")).unwrap(),
            Path::new("/etc/hostname")
        );
        assert_eq!(std::fs::read(dsnaps.join("s1/rootfs/x")).unwrap(), b"x");
        // A second delivery of the same instance is refused, the first stays whole.
        assert!(receive_tar(buf.as_slice(), &dvol, &dsnaps).is_err());
        assert!(dvol.join("rootfs/etc/hostname").exists());
        // Garbage is refused without leaving anything behind.
        let other = dst.path().join("containers/c2");
        assert!(receive_tar(&b"not a tar stream"[..], &other, &snapshots_dir(&other)).is_err());
        assert!(!other.exists());
    }
}
