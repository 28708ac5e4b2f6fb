//! Snapshots of custom volumes: made, restored, renamed and deleted through the pool's
//! driver and recorded in the volume's record, under the same one-change-at-a-time lock.

use super::{blocking, get, pool_driver, url, Result, VolumeError, CHANGES};
use crate::daemon::Daemon;
use crate::db::records::{VolumeRecord, VolumeSnapshotRecord};
use crate::db::Command;

fn find<'a>(rec: &'a VolumeRecord, snap: &str) -> Result<&'a VolumeSnapshotRecord> {
    rec.snapshots
        .iter()
        .find(|s| s.name == snap)
        .ok_or_else(|| VolumeError::NotFound("Storage volume snapshot not found".into()))
}

pub fn get_snapshot(
    d: &Daemon,
    pool: &str,
    name: &str,
    snap: &str,
) -> Result<VolumeSnapshotRecord> {
    Ok(find(&get(d, pool, name)?, snap)?.clone())
}

fn snapshot_url(pool: &str, name: &str, snap: &str) -> String {
    format!("{}/snapshots/{snap}", url(pool, name))
}

/// Incus's automatic names: `snap0`, `snap1`… the first not taken.
fn next_name(rec: &VolumeRecord) -> String {
    (0..)
        .map(|i| format!("snap{i}"))
        .find(|n| rec.snapshots.iter().all(|s| &s.name != n))
        .unwrap_or_default()
}

pub async fn create(d: &Daemon, pool: &str, name: &str, snap: &str) -> Result<String> {
    let _held = CHANGES.lock().await;
    let mut rec = get(d, pool, name)?;
    super::here(d, &rec)?;
    let snap = if snap.is_empty() {
        next_name(&rec)
    } else {
        snap.to_string()
    };
    crate::validate::object_name(&snap).map_err(|e| VolumeError::Invalid(e.to_string()))?;
    if rec.snapshots.iter().any(|s| s.name == snap) {
        return Err(VolumeError::Conflict(format!(
            "Snapshot {snap:?} of storage volume {name:?} already exists"
        )));
    }
    let driver = pool_driver(d, pool)?;
    let (drv, n, s) = (driver.clone(), name.to_string(), snap.clone());
    blocking(move || drv.create_volume_snapshot(&n, &s)).await?;
    rec.snapshots.push(VolumeSnapshotRecord {
        name: snap.clone(),
        description: String::new(),
        config: rec.config.clone(),
        created_at: chrono::Utc::now(),
    });
    if let Err(e) = d.write(vec![Command::UpdateVolume(rec)]).await {
        let (n, s) = (name.to_string(), snap.clone());
        let _ = blocking(move || driver.delete_volume_snapshot(&n, &s)).await;
        return Err(e.into());
    }
    d.events.lifecycle(
        "storage-volume-snapshot-created",
        &snapshot_url(pool, name, &snap),
        serde_json::json!({}),
    );
    Ok(snap)
}

pub async fn delete(d: &Daemon, pool: &str, name: &str, snap: &str) -> Result<()> {
    let _held = CHANGES.lock().await;
    let mut rec = get(d, pool, name)?;
    super::here(d, &rec)?;
    find(&rec, snap)?;
    rec.snapshots.retain(|s| s.name != snap);
    d.write(vec![Command::UpdateVolume(rec)]).await?;
    let driver = pool_driver(d, pool)?;
    let (n, s) = (name.to_string(), snap.to_string());
    blocking(move || driver.delete_volume_snapshot(&n, &s)).await?;
    d.events.lifecycle(
        "storage-volume-snapshot-deleted",
        &snapshot_url(pool, name, snap),
        serde_json::json!({}),
    );
    Ok(())
}

pub async fn rename(d: &Daemon, pool: &str, name: &str, from: &str, to: &str) -> Result<()> {
    let _held = CHANGES.lock().await;
    let mut rec = get(d, pool, name)?;
    super::here(d, &rec)?;
    find(&rec, from)?;
    crate::validate::object_name(to).map_err(|e| VolumeError::Invalid(e.to_string()))?;
    if rec.snapshots.iter().any(|s| s.name == to) {
        return Err(VolumeError::Conflict(format!(
            "Snapshot {to:?} of storage volume {name:?} already exists"
        )));
    }
    let driver = pool_driver(d, pool)?;
    let (drv, n, f, t) = (
        driver.clone(),
        name.to_string(),
        from.to_string(),
        to.to_string(),
    );
    blocking(move || drv.rename_volume_snapshot(&n, &f, &t)).await?;
    for s in rec.snapshots.iter_mut().filter(|s| s.name == from) {
        s.name = to.to_string();
    }
    if let Err(e) = d.write(vec![Command::UpdateVolume(rec)]).await {
        let (n, f, t) = (name.to_string(), from.to_string(), to.to_string());
        let _ = blocking(move || driver.rename_volume_snapshot(&n, &t, &f)).await;
        return Err(e.into());
    }
    d.events.lifecycle(
        "storage-volume-snapshot-renamed",
        &snapshot_url(pool, name, to),
        serde_json::json!({"old_name": from}),
    );
    Ok(())
}

pub async fn set_description(
    d: &Daemon,
    pool: &str,
    name: &str,
    snap: &str,
    description: String,
) -> Result<()> {
    let _held = CHANGES.lock().await;
    let mut rec = get(d, pool, name)?;
    find(&rec, snap)?;
    for s in rec.snapshots.iter_mut().filter(|s| s.name == snap) {
        s.description = description.clone();
    }
    d.write(vec![Command::UpdateVolume(rec)]).await?;
    Ok(())
}

/// Makes the volume what the snapshot holds, its size limit set again on the new files.
/// Refused while a running instance mounts it: its files would change under the mount.
pub async fn restore(d: &Daemon, pool: &str, name: &str, snap: &str) -> Result<()> {
    let _held = CHANGES.lock().await;
    let rec = get(d, pool, name)?;
    super::here(d, &rec)?;
    find(&rec, snap)?;
    for user in super::used_by(d, pool, name)? {
        let Some(inst) = user.strip_prefix("/1.0/instances/") else {
            continue;
        };
        if crate::instance::lxc_state(d, inst) != crate::instance::lxc::LxcState::Stopped {
            return Err(VolumeError::Invalid(format!(
                "Cannot restore storage volume {name:?} while instance {inst:?} using it is running"
            )));
        }
    }
    let driver = pool_driver(d, pool)?;
    let size = super::recorded_size(&rec.config);
    let (n, s) = (name.to_string(), snap.to_string());
    blocking(move || {
        driver.restore_volume_snapshot(&n, &s)?;
        driver.set_volume_quota(&n, size)
    })
    .await?;
    // The restored files are owned as they were when the snapshot was taken.
    let taken = find(&rec, snap)?.config.get(super::IDMAP_KEY).cloned();
    if taken != rec.config.get(super::IDMAP_KEY).cloned() {
        let mut rec = rec.clone();
        match taken {
            Some(m) => rec.config.insert(super::IDMAP_KEY.into(), m),
            None => rec.config.remove(super::IDMAP_KEY),
        };
        d.write(vec![Command::UpdateVolume(rec)]).await?;
    }
    d.events.lifecycle(
        "storage-volume-restored",
        &url(pool, name),
        serde_json::json!({"snapshot": snap}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_names_take_the_first_free_number() {
        let mut rec = VolumeRecord {
            pool: "p".into(),
            name: "v".into(),
            description: String::new(),
            config: Default::default(),
            created_at: chrono::Utc::now(),
            snapshots: vec![],
            location: String::new(),
        };
        assert_eq!(next_name(&rec), "snap0");
        for n in ["snap0", "snap2"] {
            rec.snapshots.push(VolumeSnapshotRecord {
                name: n.into(),
                description: String::new(),
                config: Default::default(),
                created_at: chrono::Utc::now(),
            });
        }
        assert_eq!(next_name(&rec), "snap1");
    }
}
