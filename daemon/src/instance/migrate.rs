//! Instances between cluster members: moving a stopped one (`incus move NAME --target M`,
//! evacuation and restore) and copying one (`incus copy c1 c2 --target M`). The volume
//! and its snapshots travel as the pool driver's stream (`zfs send`/`btrfs send` streams,
//! a tar of the files on dir) over the member-to-member HTTPS link and the target
//! receives them into its share of the same pool; for a move the instance's location then
//! changes through Raft and the source drops its copy. Ownership (the shifted ids of an
//! unprivileged container) and modes travel with the files.
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
    stays_with_its_volumes(name, &ed)?;
    let pool_name = root_pool(&ed)?;
    let pool = d
        .pool(&pool_name)
        .ok_or_else(|| InstanceError::Failed(format!("storage pool {pool_name} is not open")))?;
    let payload = Payload::Driver {
        pool: pool_name.clone(),
    };
    stream_to(&rt, pool.clone(), name, &member.address, name, payload)
        .await
        .map_err(|e| match e {
            InstanceError::Failed(m) => InstanceError::Failed(format!("moving to {target}: {m}")),
            e => e,
        })?;
    let mut moved = rec.clone();
    moved.location = target.to_string();
    d.write(vec![Command::UpdateInstance(moved)]).await?;
    let p = pool.clone();
    let n = name.to_string();
    match tokio::task::spawn_blocking(move || p.delete_instance(&n)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("removing the moved instance {name} here: {e}"),
        Err(e) => tracing::warn!("removing the moved instance {name} here: {e}"),
    }
    let _ = crate::storage::tree::remove(&d.paths.lxc.join(name));
    d.events.lifecycle(
        "instance-updated",
        &super::url(name),
        serde_json::json!({"location": target}),
    );
    Ok(())
}

/// An instance that mounts custom volumes stays where they are: a volume's files are on one
/// member's share of its pool.
pub fn stays_with_its_volumes(name: &str, devices: &crate::db::records::DeviceMap) -> Result<()> {
    match super::disks::volume_disks(devices).first() {
        None => Ok(()),
        Some(v) => Err(InstanceError::Invalid(format!(
            "Instance {name} mounts storage volume {:?} of pool {:?} (device {:?}), which stays on this member: detach it first",
            v.volume, v.pool, v.device
        ))),
    }
}

/// Streams instance `name`'s volume (a tar of its files, or `zfs send`/`btrfs send`
/// streams) from `pool` to the member at `addr`, which makes instance `as_name` of it.
async fn stream_to(
    rt: &crate::cluster::member::Member,
    pool: Arc<dyn crate::storage::StorageDriver>,
    name: &str,
    addr: &str,
    as_name: &str,
    payload: Payload,
) -> Result<()> {
    // The stream is written on a blocking thread into a pipe whose other end is the body.
    let (reader, writer) = tokio::io::duplex(1 << 20);
    let n = name.to_string();
    let (path, headers) = match &payload {
        Payload::Driver { pool } => (format!("{RECEIVE_PATH}/{as_name}?pool={pool}"), vec![]),
        Payload::Files {
            into, snapshots, ..
        } => (
            format!("{RECEIVE_PATH}/{as_name}?pool={into}&format=files"),
            vec![(
                SNAPSHOTS_HEADER,
                serde_json::to_string(snapshots).unwrap_or_default(),
            )],
        ),
    };
    let producer = tokio::task::spawn_blocking(move || {
        let mut out = tokio_util::io::SyncIoBridge::new(writer);
        match payload {
            Payload::Driver { .. } => pool.send_instance(&n, &mut out),
            Payload::Files {
                snapshot,
                snapshots,
                ..
            } => crate::storage::transfer::send(
                pool.as_ref(),
                &n,
                snapshot.as_deref(),
                &snapshots,
                &mut out,
            ),
        }
    });
    let (status, answer) =
        crate::cluster::member_api::post_stream(rt, addr, &path, &headers, reader)
            .await
            .map_err(|e| failed(&format!("sending {name}"), e))?;
    producer
        .await
        .map_err(|e| failed("writing the transfer", e))?
        .map_err(|e| failed(&format!("reading {name}'s files"), e))?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        let why = v["error"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
        return Err(InstanceError::Failed(format!(
            "the member refused {name}: {why}"
        )));
    }
    Ok(())
}

/// How a volume travels to another member.
enum Payload {
    /// The driver's own stream of the instance and all its snapshots, into the same pool.
    Driver { pool: String },
    /// Files, into pool `into` of another driver: `snapshots`, then the volume (or one
    /// `snapshot` of it).
    Files {
        into: String,
        snapshot: Option<String>,
        snapshots: Vec<String>,
    },
}

/// The snapshot names of a file-level stream, in order (JSON): names may hold any
/// character a query string would need escaping for.
pub const SNAPSHOTS_HEADER: &str = "x-cairn-snapshots";

/// What a member copying an instance here asks of the member the source lives on.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SendRequest {
    /// The member to send to.
    pub to: String,
    /// The name the copy has there.
    #[serde(rename = "as")]
    pub as_name: String,
    pub pool: String,
    /// The pool the copy goes into when it is not `pool`: a file-level copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into_pool: Option<String>,
    /// Copy this snapshot of the instance (as a volume without snapshots) instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

pub fn send_path(name: &str) -> String {
    format!("{RECEIVE_PATH}/{name}/send")
}

/// `POST /internal/cluster/instances/{name}/send` on the source's member (`incus copy
/// c1 c2 --target M`): streams `name`'s volume, snapshots included, to member `req.to`.
/// The source keeps running: zfs and btrfs send a snapshot of it, dir a tar of the files.
pub async fn send_copy(d: Arc<Daemon>, name: &str, req: SendRequest) -> Result<()> {
    let rt = d
        .cluster()
        .ok_or_else(|| InstanceError::Invalid("This server is not clustered".into()))?;
    let member = d
        .db
        .member(&req.to)?
        .ok_or_else(|| InstanceError::NotFound(format!("Cluster member {} not found", req.to)))?;
    let lock = d.instance_lock(name);
    let _guard = lock.lock().await;
    let rec = get(&d, name)?;
    if rec.location != rt.name() {
        return Err(InstanceError::Invalid(format!(
            "Instance {name} is not on member {}",
            rt.name()
        )));
    }
    let pool = d
        .pool(&req.pool)
        .ok_or_else(|| InstanceError::Failed(format!("storage pool {} is not open", req.pool)))?;
    if let Some(into) = req.into_pool.filter(|p| *p != req.pool) {
        let snapshots = match &req.snapshot {
            Some(_) => vec![],
            None => d.db.snapshots(name)?.into_iter().map(|s| s.name).collect(),
        };
        let payload = Payload::Files {
            into,
            snapshot: req.snapshot,
            snapshots,
        };
        return stream_to(&rt, pool, name, &member.address, &req.as_name, payload).await;
    }
    let driver = Payload::Driver {
        pool: req.pool.clone(),
    };
    let Some(snap) = req.snapshot else {
        return stream_to(&rt, pool, name, &member.address, &req.as_name, driver).await;
    };
    // A snapshot travels as a volume of its own: a local copy of it (a clone, a send
    // within the pool, or a file copy), streamed, then dropped.
    super::snapshot::get_snapshot(&d, name, &snap)?;
    let safe: String = snap
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let staged = format!("cairn-send-{name}-{safe}");
    if d.db.instance(&staged)?.is_some() {
        return Err(InstanceError::Conflict(format!(
            "An instance named {staged} is in the way of copying {name}/{snap}"
        )));
    }
    let (p, n, s, t) = (pool.clone(), name.to_string(), snap.clone(), staged.clone());
    tokio::task::spawn_blocking(move || {
        let _ = p.delete_instance(&t);
        p.copy_instance(&n, Some(&s), &t)
    })
    .await
    .map_err(|e| failed("staging the snapshot", e))?
    .map_err(|e| failed(&format!("staging {name}/{snap}"), e))?;
    let sent = stream_to(
        &rt,
        pool.clone(),
        &staged,
        &member.address,
        &req.as_name,
        driver,
    )
    .await;
    let t = staged.clone();
    match tokio::task::spawn_blocking(move || pool.delete_instance(&t)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("removing the staged copy {staged}: {e}"),
        Err(e) => tracing::warn!("removing the staged copy {staged}: {e}"),
    }
    sent
}

/// `POST /internal/cluster/instances/{name}?pool=P` on the target: unpacks the stream.
/// `files` is a file-level stream's snapshot list (`Payload::Files`); `None`, the
/// driver's own stream.
pub async fn receive(
    d: Arc<Daemon>,
    name: &str,
    pool_name: &str,
    files: Option<Vec<String>>,
    reader: impl tokio::io::AsyncRead + Send + Unpin + 'static,
) -> Result<()> {
    crate::validate::instance_name(name).map_err(|e| InstanceError::Invalid(e.to_string()))?;
    let pool = d
        .pool(pool_name)
        .ok_or_else(|| InstanceError::NotFound(format!("storage pool {pool_name}")))?;
    // The root disk's size, when the record says one (a btrfs qgroup does not travel in
    // the stream; a zfs refquota does, and setting it again is harmless).
    let quota = match get(&d, name) {
        Ok(rec) => expand(&d, &rec).and_then(|(_, ed)| super::root_size(&ed))?,
        Err(_) => None,
    };
    let n = name.to_string();
    tokio::task::spawn_blocking(move || {
        let mut input = tokio_util::io::SyncIoBridge::new(reader);
        match files {
            Some(snapshots) => {
                crate::storage::transfer::receive(pool.as_ref(), &n, &snapshots, &mut input)?
            }
            None => pool.receive_instance(&n, &mut input)?,
        }
        match quota {
            Some(_) if pool.supports_quotas() => pool.set_instance_quota(&n, quota),
            _ => Ok(()),
        }
    })
    .await
    .map_err(|e| failed("receiving", e))?
    .map_err(|e| failed(&format!("unpacking {name}"), e))
}
