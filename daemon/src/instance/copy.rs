//! Local copies of instances (`incus copy c1 c2`, `incus copy c1/snap0 c2`): the volume, the
//! configuration without the source's identity, and (unless instance-only) its snapshots.

use std::sync::Arc;

use chrono::Utc;

use super::idmap::IdShift;
use super::{expand_with, get, root_pool, InstanceError, Result};
use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, DeviceMap, InstanceRecord, SnapshotRecord};
use crate::db::Command;

pub struct CopyRequest {
    pub name: String,
    /// "c1" or "c1/snap0".
    pub source: String,
    pub instance_only: bool,
    /// What the client sent for the new instance (the CLI sends the source's, edited).
    pub config: Option<ConfigMap>,
    pub devices: Option<DeviceMap>,
    pub profiles: Option<Vec<String>>,
    pub ephemeral: bool,
    pub description: String,
    pub start: bool,
}

/// Keys that describe the data on disk travel with the copy; the rest of `volatile.*` is the
/// source's identity (MACs, veth names, uuid, power state) and does not.
fn strip_identity(config: &mut ConfigMap) {
    config.retain(|k, _| {
        !k.starts_with("volatile.")
            || k == "volatile.base_image"
            || k.starts_with("volatile.idmap.")
            || k == "volatile.last_state.idmap"
    });
}

pub fn precheck(d: &Daemon, req: &CopyRequest) -> Result<()> {
    crate::validate::instance_name(&req.name)?;
    if d.db.instance(&req.name)?.is_some() {
        return Err(InstanceError::Conflict(format!(
            "Instance {:?} already exists",
            req.name
        )));
    }
    let (src, snap) = split(&req.source);
    get(d, src)?;
    if let Some(s) = snap {
        super::snapshot::get_snapshot(d, src, s)?;
    }
    Ok(())
}

fn split(source: &str) -> (&str, Option<&str>) {
    match source.split_once('/') {
        Some((i, s)) => (i, Some(s)),
        None => (source, None),
    }
}

pub async fn copy(d: Arc<Daemon>, req: CopyRequest) -> Result<()> {
    let (src_name, snap) = split(&req.source);
    let src = get(&d, src_name)?;
    let (base_config, base_devices, base_profiles) = match snap {
        Some(s) => {
            let sr = super::snapshot::get_snapshot(&d, src_name, s)?;
            (sr.config, sr.devices, sr.profiles)
        }
        None => (
            src.config.clone(),
            src.devices.clone(),
            src.profiles.clone(),
        ),
    };
    let mut config = req.config.clone().unwrap_or(base_config.clone());
    // The on-disk id map comes from the source whatever the client sent.
    for k in [
        "volatile.idmap.current",
        "volatile.idmap.next",
        "volatile.last_state.idmap",
        "volatile.idmap.base",
    ] {
        match base_config.get(k) {
            Some(v) => config.insert(k.to_string(), v.clone()),
            None => config.remove(k),
        };
    }
    strip_identity(&mut config);
    let devices = req.devices.clone().unwrap_or(base_devices);
    let profiles = req.profiles.clone().unwrap_or(base_profiles);
    let (ec, ed) = expand_with(&d, &profiles, &config, &devices)?;
    crate::validate::instance_config(&ec, true)?;
    crate::validate::devices(&ed)?;
    let pool_name = root_pool(&ed)?;
    let pool = d.pool(&pool_name).ok_or_else(|| {
        InstanceError::Invalid(format!("Storage pool {pool_name:?} doesn't exist"))
    })?;
    // The pool the source's volume is in: a copy into another pool goes file by file.
    let src_pool = {
        let (_, src_devices) = super::expand(&d, &src)?;
        root_pool(&src_devices)?
    };
    // The source on another member: its volume comes here as the pool's own stream (as
    // files, into another pool).
    let remote = match d.cluster() {
        Some(rt) if !src.location.is_empty() && src.location != rt.name() => {
            super::migrate::stays_with_its_volumes(&req.name, &ed)?;
            let member = d.db.member(&src.location)?.ok_or_else(|| {
                InstanceError::Failed(format!("member {} is not in the cluster", src.location))
            })?;
            Some((rt, member))
        }
        _ => None,
    };
    super::check_root_size(pool.as_ref(), &ed)?;
    let quota = super::root_size(&ed)?;
    let shift = config
        .get("volatile.last_state.idmap")
        .and_then(|s| IdShift::from_incus_json(s))
        .unwrap_or(d.idmap);
    let mut fresh = config.clone();
    super::initial_volatile(&mut fresh, &ed, &shift.to_incus_json());
    // A snapshot restored later takes its devices back: in another pool, its root disk
    // must name the pool its files are now in.
    // (Without a root disk of its own, the copy's comes from its profiles.)
    let moved_root = (src_pool != pool_name).then(|| devices.get("root").cloned());
    let now = Utc::now();
    let lock = d.instance_lock(&req.name);
    let guard = lock.lock().await;
    d.write(vec![Command::CreateInstance(InstanceRecord {
        name: req.name.clone(),
        instance_type: src.instance_type.clone(),
        architecture: src.architecture.clone(),
        config: fresh,
        devices,
        profiles,
        ephemeral: req.ephemeral,
        stateful: false,
        description: req.description.clone(),
        created_at: now,
        last_used_at: now,
        location: d
            .cluster()
            .map(|c| c.name().to_string())
            .unwrap_or_default(),
    })])
    .await?;
    let snapshots = if req.instance_only || snap.is_some() {
        vec![]
    } else {
        d.db.snapshots(src_name)?
    };
    let copied = if let Some((rt, member)) = &remote {
        pull(
            &d,
            rt,
            &member.address,
            (src_name, snap),
            &req.name,
            (&src_pool, &pool_name),
            &snapshots,
        )
        .await
    } else if src_pool != pool_name {
        let from_pool = d.pool(&src_pool).ok_or_else(|| {
            InstanceError::Failed(format!("storage pool {src_pool:?} is not open"))
        })?;
        let (pool, from, to) = (pool.clone(), src_name.to_string(), req.name.clone());
        let snap = snap.map(str::to_string);
        let names: Vec<String> = snapshots.iter().map(|s| s.name.clone()).collect();
        tokio::task::spawn_blocking(move || {
            crate::storage::transfer::copy_across(
                from_pool.as_ref(),
                &from,
                snap.as_deref(),
                pool.as_ref(),
                &to,
                &names,
            )?;
            match quota {
                Some(_) => pool.set_instance_quota(&to, quota),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| InstanceError::Failed(format!("internal task failed: {e}")))?
        .map_err(InstanceError::from)
    } else {
        let (pool, from, to) = (pool.clone(), src_name.to_string(), req.name.clone());
        let snap = snap.map(str::to_string);
        let names: Vec<String> = snapshots.iter().map(|s| s.name.clone()).collect();
        tokio::task::spawn_blocking(
            move || -> std::result::Result<(), crate::storage::StorageError> {
                pool.copy_instance_with_snapshots(&from, snap.as_deref(), &to, &names)?;
                // A snapshot carries no qgroup limit: the copy gets its own.
                match quota {
                    Some(_) => pool.set_instance_quota(&to, quota),
                    None => Ok(()),
                }
            },
        )
        .await
        .map_err(|e| InstanceError::Failed(format!("internal task failed: {e}")))?
        .map_err(InstanceError::from)
    };
    if let Err(e) = copied {
        let _ = pool.delete_instance(&req.name);
        let _ = d
            .write(vec![Command::DeleteInstance {
                name: req.name.clone(),
            }])
            .await;
        return Err(e);
    }
    let cmds: Vec<Command> = snapshots
        .into_iter()
        .map(|mut s| {
            match &moved_root {
                Some(Some(root)) => {
                    s.devices.insert("root".into(), root.clone());
                }
                Some(None) => {
                    s.devices.remove("root");
                }
                None => {}
            }
            Command::CreateSnapshot(SnapshotRecord {
                instance: req.name.clone(),
                ..s
            })
        })
        .collect();
    d.write(cmds).await?;
    d.events.lifecycle(
        "instance-created",
        &super::url(&req.name),
        serde_json::json!({"type": "container", "source": req.source}),
    );
    drop(guard);
    if req.start {
        super::lifecycle::start(d, &req.name).await?;
    }
    Ok(())
}

/// How long the member holding the source may take to stream it here.
const PULL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Asks the member at `addr` to stream instance `from` (with all its snapshots), or one
/// snapshot of it, here as instance `to`, then drops the snapshots the copy does not keep.
async fn pull(
    d: &Daemon,
    rt: &crate::cluster::member::Member,
    addr: &str,
    (from, snapshot): (&str, Option<&str>),
    to: &str,
    (from_pool, pool_name): (&str, &str),
    keep: &[SnapshotRecord],
) -> Result<()> {
    let body = serde_json::to_value(super::migrate::SendRequest {
        to: rt.name(),
        as_name: to.to_string(),
        pool: from_pool.to_string(),
        into_pool: (from_pool != pool_name).then(|| pool_name.to_string()),
        snapshot: snapshot.map(str::to_string),
    })
    .map_err(|e| InstanceError::Failed(e.to_string()))?;
    crate::cluster::member_api::call_json(
        rt,
        addr,
        http::Method::POST,
        &super::migrate::send_path(from),
        Some(&body),
        PULL_TIMEOUT,
    )
    .await
    .map_err(|e| InstanceError::Failed(format!("copying {from} from its member: {e}")))?;
    let pool = d
        .pool(pool_name)
        .ok_or_else(|| InstanceError::Failed(format!("storage pool {pool_name} is not open")))?;
    if snapshot.is_some() {
        return Ok(());
    }
    let drop: Vec<String> =
        d.db.snapshots(from)?
            .into_iter()
            .map(|s| s.name)
            .filter(|n| !keep.iter().any(|k| &k.name == n))
            .collect();
    let to = to.to_string();
    tokio::task::spawn_blocking(move || drop.iter().try_for_each(|s| pool.delete_snapshot(&to, s)))
        .await
        .map_err(|e| InstanceError::Failed(format!("internal task failed: {e}")))??;
    Ok(())
}
