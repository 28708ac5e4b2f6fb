//! Instance snapshots: the database record plus a copy of the volume in the pool.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::lxc::LxcState;
use super::{expand, expand_with, get, root_pool, InstanceError, Result};
use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, DeviceMap, SnapshotRecord};
use crate::db::Command;
use crate::storage::StorageDriver;

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotView {
    pub architecture: String,
    pub config: ConfigMap,
    pub created_at: DateTime<Utc>,
    pub devices: DeviceMap,
    pub ephemeral: bool,
    pub expanded_config: ConfigMap,
    pub expanded_devices: DeviceMap,
    pub last_used_at: DateTime<Utc>,
    pub name: String,
    pub profiles: Vec<String>,
    pub stateful: bool,
    pub size: i64,
    pub expires_at: Option<DateTime<Utc>>,
    pub description: String,
}

pub fn url(instance: &str, snap: &str) -> String {
    format!("/1.0/instances/{instance}/snapshots/{snap}")
}

pub fn view(d: &Daemon, s: &SnapshotRecord) -> Result<SnapshotView> {
    let (expanded_config, expanded_devices) = expand_with(d, &s.profiles, &s.config, &s.devices)
        .unwrap_or_else(|_| (s.config.clone(), s.devices.clone()));
    Ok(SnapshotView {
        architecture: s.architecture.clone(),
        config: s.config.clone(),
        created_at: s.created_at,
        devices: s.devices.clone(),
        ephemeral: s.ephemeral,
        expanded_config,
        expanded_devices,
        last_used_at: s.created_at,
        name: s.name.clone(),
        profiles: s.profiles.clone(),
        stateful: s.stateful,
        size: -1,
        expires_at: s.expires_at,
        description: s.description.clone(),
    })
}

pub fn list(d: &Daemon, instance: &str) -> Result<Vec<SnapshotView>> {
    d.db.snapshots(instance)?
        .iter()
        .map(|s| view(d, s))
        .collect()
}

pub fn get_snapshot(d: &Daemon, instance: &str, snap: &str) -> Result<SnapshotRecord> {
    d.db.snapshot(instance, snap)?
        .ok_or_else(|| InstanceError::NotFound("Snapshot not found".into()))
}

fn pool_of(d: &Daemon, instance: &str) -> Result<Arc<dyn StorageDriver>> {
    let rec = get(d, instance)?;
    let (_, ed) = expand(d, &rec)?;
    let p = root_pool(&ed)?;
    d.pool(&p)
        .ok_or_else(|| InstanceError::Failed(format!("Storage pool {p:?} is gone")))
}

async fn blocking<F>(f: F) -> Result<()>
where
    F: FnOnce() -> std::result::Result<(), crate::storage::StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| InstanceError::Failed(format!("internal task failed: {e}")))?
        .map_err(InstanceError::from)
}

/// Checks a snapshot request before an operation starts.
pub fn precheck_create(d: &Daemon, instance: &str, snap: &str, stateful: bool) -> Result<()> {
    crate::validate::object_name(snap)?;
    get(d, instance)?;
    if stateful {
        return Err(InstanceError::Invalid(
            "Stateful snapshots are not supported".into(),
        ));
    }
    if d.db.snapshot(instance, snap)?.is_some() {
        return Err(InstanceError::Conflict(format!(
            "Snapshot {snap:?} already exists"
        )));
    }
    Ok(())
}

pub async fn create(
    d: Arc<Daemon>,
    instance: &str,
    snap: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<()> {
    let lock = d.instance_lock(instance);
    let _guard = lock.lock().await;
    precheck_create(&d, instance, snap, false)?;
    let rec = get(&d, instance)?;
    let pool = pool_of(&d, instance)?;
    // A running container keeps writing; freeze it for a consistent copy, as Incus does.
    let was_running = super::lxc_state(&d, instance) == LxcState::Running;
    if was_running {
        let _ = super::lxc::freeze(&d.paths.lxc, instance);
    }
    let (i, s) = (instance.to_string(), snap.to_string());
    let r = blocking(move || pool.create_snapshot(&i, &s)).await;
    if was_running {
        let _ = super::lxc::unfreeze(&d.paths.lxc, instance);
    }
    r?;
    d.write(vec![Command::CreateSnapshot(SnapshotRecord {
        instance: instance.into(),
        name: snap.into(),
        architecture: rec.architecture,
        config: rec.config,
        devices: rec.devices,
        profiles: rec.profiles,
        ephemeral: rec.ephemeral,
        stateful: false,
        description: String::new(),
        created_at: Utc::now(),
        expires_at,
    })])
    .await?;
    d.events.lifecycle(
        "instance-snapshot-created",
        &url(instance, snap),
        serde_json::json!({}),
    );
    Ok(())
}

/// Restores the volume and the configuration; a running instance is stopped first and
/// started again after.
pub async fn restore(d: Arc<Daemon>, instance: &str, snap: &str) -> Result<()> {
    let s = get_snapshot(&d, instance, snap)?;
    let was_running = super::lxc_state(&d, instance) != LxcState::Stopped;
    if was_running {
        super::lifecycle::stop(d.clone(), instance, true, -1).await?;
    }
    {
        let lock = d.instance_lock(instance);
        let _guard = lock.lock().await;
        let pool = pool_of(&d, instance)?;
        let mut rec = get(&d, instance)?;
        // The restored volume is a new one: it gets the limit the restored config names.
        let quota = {
            let restored = crate::db::records::InstanceRecord {
                devices: s.devices.clone(),
                profiles: s.profiles.clone(),
                ..rec.clone()
            };
            super::root_size(&super::expand(&d, &restored)?.1)?
        };
        let (i, sn) = (instance.to_string(), snap.to_string());
        blocking(move || {
            pool.restore_snapshot(&i, &sn)?;
            // The restored volume is new, so it starts without a limit.
            match quota {
                Some(_) => pool.set_instance_quota(&i, quota),
                None => Ok(()),
            }
        })
        .await?;
        let mut config = s.config.clone();
        // The volume on disk now carries the snapshot's id map: keep its volatile keys.
        super::keep_volatile(&rec.config, &mut config);
        if let Some(v) = s.config.get("volatile.last_state.idmap") {
            config.insert("volatile.last_state.idmap".into(), v.clone());
        }
        rec.config = config;
        rec.devices = s.devices.clone();
        rec.profiles = s.profiles.clone();
        d.write(vec![Command::UpdateInstance(rec)]).await?;
    }
    d.events.lifecycle(
        "instance-restored",
        &super::url(instance),
        serde_json::json!({"snapshot": snap}),
    );
    if was_running {
        super::lifecycle::start(d, instance).await?;
    }
    Ok(())
}

pub async fn delete(d: Arc<Daemon>, instance: &str, snap: &str) -> Result<()> {
    let lock = d.instance_lock(instance);
    let _guard = lock.lock().await;
    get_snapshot(&d, instance, snap)?;
    let pool = pool_of(&d, instance)?;
    let (i, s) = (instance.to_string(), snap.to_string());
    blocking(move || pool.delete_snapshot(&i, &s)).await?;
    d.write(vec![Command::DeleteSnapshot {
        instance: instance.into(),
        name: snap.into(),
    }])
    .await?;
    d.events.lifecycle(
        "instance-snapshot-deleted",
        &url(instance, snap),
        serde_json::json!({}),
    );
    Ok(())
}

pub async fn rename(d: Arc<Daemon>, instance: &str, from: &str, to: &str) -> Result<()> {
    crate::validate::object_name(to)?;
    let lock = d.instance_lock(instance);
    let _guard = lock.lock().await;
    get_snapshot(&d, instance, from)?;
    if d.db.snapshot(instance, to)?.is_some() {
        return Err(InstanceError::Conflict(format!(
            "Snapshot {to:?} already exists"
        )));
    }
    let pool = pool_of(&d, instance)?;
    let (i, f, t) = (instance.to_string(), from.to_string(), to.to_string());
    blocking(move || pool.rename_snapshot(&i, &f, &t)).await?;
    d.write(vec![Command::RenameSnapshot {
        instance: instance.into(),
        from: from.into(),
        to: to.into(),
    }])
    .await?;
    Ok(())
}
