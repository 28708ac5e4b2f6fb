//! Moving a stopped instance to another cluster member (`incus move NAME --target M`,
//! evacuation and restore): its volume and snapshots travel as one tar stream over the
//! member-to-member HTTPS link, the target unpacks them into its pool, then the instance's
//! location changes through Raft and the source drops its copy. Ownership (the shifted ids
//! of an unprivileged container) and modes travel with the files.
//!
//! Order matters for safety: the record moves only once the target holds the files, and
//! the source deletes its files only once the record moved, so a failure at any step
//! leaves a complete instance on one member.

use std::sync::Arc;

use super::lxc::LxcState;
use super::{expand, get, root_pool, InstanceError, Result};
use crate::daemon::Daemon;
use crate::db::Command;

pub const RECEIVE_PATH: &str = "/internal/cluster/instances";

fn failed(what: &str, e: impl std::fmt::Display) -> InstanceError {
    InstanceError::Failed(format!("{what}: {e}"))
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
    // The pool's stream (a tar of the files, or `zfs send`) is written on a blocking
    // thread into a pipe whose other end is the body.
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let (p, n) = (pool.clone(), name.to_string());
    let producer = tokio::task::spawn_blocking(move || {
        let mut out = tokio_util::io::SyncIoBridge::new(writer);
        p.send_instance(&n, &mut out)
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
    let n = name.to_string();
    tokio::task::spawn_blocking(move || {
        pool.receive_instance(&n, &mut tokio_util::io::SyncIoBridge::new(reader))
    })
    .await
    .map_err(|e| failed("receiving", e))?
    .map_err(|e| failed(&format!("unpacking {name}"), e))
}
