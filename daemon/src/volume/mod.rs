//! Custom storage volumes: the service behind `/1.0/storage-pools/{pool}/volumes/custom`.
//! Records change only through `Daemon::write`; the files through the pool's driver, on a
//! blocking thread. A create whose record cannot be written is undone, so no volume exists
//! on disk that the API does not list. Instances mount volumes as `disk` devices
//! (`pool=<pool> source=<volume>`); `instance::disks` resolves and re-owns them.

use std::sync::Arc;

use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, VolumeRecord};
use crate::db::{Command, DbError};
use crate::instance::idmap::IdShift;
use crate::storage::{StorageDriver, StorageError};

pub mod snapshot;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Db(#[from] DbError),
}

pub type Result<T> = std::result::Result<T, VolumeError>;

/// One change of volume records at a time: a snapshot list is read, changed and written
/// whole, and two changes interleaving would lose one.
pub(crate) static CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The id map a volume's files are owned for (Incus's key), absent while never mounted.
pub const IDMAP_KEY: &str = "volatile.idmap.last";

/// The keys a user may set on a custom filesystem volume (and `user.*`).
const KEYS: &[&str] = &["size"];

pub(crate) fn pool_driver(d: &Daemon, pool: &str) -> Result<Arc<dyn StorageDriver>> {
    if d.db.pool(pool)?.is_none() {
        return Err(VolumeError::NotFound("Storage pool not found".into()));
    }
    d.pool(pool).ok_or_else(|| {
        VolumeError::Failed(format!(
            "Storage pool {pool:?} is unavailable on this server"
        ))
    })
}

/// In a cluster a volume's files are on one member's share of the pool: its record says
/// which, and requests about it are routed there. Refuses acting on one that is elsewhere.
pub fn here(d: &Daemon, v: &VolumeRecord) -> Result<()> {
    match d.cluster() {
        Some(rt) if !v.location.is_empty() && v.location != rt.name() => {
            Err(VolumeError::Invalid(format!(
                "Storage volume {:?} is on cluster member {}, not on {}",
                v.name,
                v.location,
                rt.name()
            )))
        }
        _ => Ok(()),
    }
}

pub fn get(d: &Daemon, pool: &str, name: &str) -> Result<VolumeRecord> {
    if d.db.pool(pool)?.is_none() {
        return Err(VolumeError::NotFound("Storage pool not found".into()));
    }
    d.db.volume(pool, name)?
        .ok_or_else(|| VolumeError::NotFound("Storage volume not found".into()))
}

/// The size a config asks for, checked against what the pool can enforce.
pub(crate) fn checked_size(pool: &dyn StorageDriver, config: &ConfigMap) -> Result<Option<u64>> {
    for k in config.keys() {
        if k.starts_with("volatile.") {
            return Err(VolumeError::Invalid(format!(
                "Volatile key {k:?} is set by the server, not by clients"
            )));
        }
        if !KEYS.contains(&k.as_str()) && !k.starts_with("user.") {
            return Err(VolumeError::Invalid(format!("Invalid option {k:?}")));
        }
        crate::validate::config_key_name(k).map_err(|e| VolumeError::Invalid(e.to_string()))?;
    }
    let Some(size) = config.get("size").filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let bytes = crate::storage::size::parse_bytes(size)
        .map_err(|e| VolumeError::Invalid(format!("Invalid value for option \"size\": {e}")))?;
    if !pool.supports_quotas() {
        return Err(VolumeError::Invalid(format!(
            "A volume size needs a storage pool that enforces quotas (btrfs); pool {:?} is {}",
            pool.pool_name(),
            pool.driver_name()
        )));
    }
    Ok(Some(bytes))
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, StorageError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VolumeError::Failed(format!("internal task failed: {e}")))?
        .map_err(VolumeError::from)
}

/// The keys a client sets: all but the server's `volatile.*`.
pub fn user_config(config: &ConfigMap) -> ConfigMap {
    config
        .iter()
        .filter(|(k, _)| !k.starts_with("volatile."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The size limit a stored volume config records (checked when it was set).
pub fn recorded_size(config: &ConfigMap) -> Option<u64> {
    config
        .get("size")
        .filter(|s| !s.is_empty())
        .and_then(|s| crate::storage::size::parse_bytes(s).ok())
}

/// What a new volume starts from.
pub enum Origin {
    Empty,
    /// A copy of another custom volume of the same pool, with its snapshots unless
    /// `volume_only`.
    Copy {
        from: String,
        volume_only: bool,
    },
}

pub async fn create(
    d: &Daemon,
    pool: &str,
    name: &str,
    description: String,
    config: ConfigMap,
    origin: Origin,
) -> Result<()> {
    let driver = pool_driver(d, pool)?;
    crate::validate::object_name(name).map_err(|e| VolumeError::Invalid(e.to_string()))?;
    let _held = CHANGES.lock().await;
    let mut config = config;
    let mut inherited = None;
    let mut snapshots = Vec::new();
    if let Origin::Copy { from, volume_only } = &origin {
        // The client sends the source's config back, its id map included; the copy's files
        // are owned as the source's are, so it takes the source's map, whatever was sent.
        config.remove(IDMAP_KEY);
        let src = get(d, pool, from)?;
        here(d, &src)?;
        inherited = src.config.get(IDMAP_KEY).cloned();
        if !volume_only {
            snapshots = src.snapshots;
        }
    }
    let size = checked_size(driver.as_ref(), &config)?;
    if let Some(map) = inherited {
        config.insert(IDMAP_KEY.into(), map);
    }
    if d.db.volume(pool, name)?.is_some() {
        return Err(VolumeError::Conflict(format!(
            "Storage volume {name:?} already exists in pool {pool:?}"
        )));
    }
    let (drv, n) = (driver.clone(), name.to_string());
    let snap_names: Vec<String> = snapshots.iter().map(|s| s.name.clone()).collect();
    blocking(move || {
        let made = (|| {
            match &origin {
                Origin::Empty => drv.create_volume(&n)?,
                Origin::Copy { from, .. } => {
                    drv.copy_volume_with_snapshots(from, &n, &snap_names)?
                }
            }
            drv.set_volume_quota(&n, size)
        })();
        if made.is_err() {
            let _ = drv.delete_volume(&n);
        }
        made
    })
    .await?;
    let rec = VolumeRecord {
        pool: pool.to_string(),
        name: name.to_string(),
        description,
        config,
        created_at: chrono::Utc::now(),
        snapshots,
        location: d.cluster().map(|c| c.name()).unwrap_or_default(),
    };
    if let Err(e) = d.write(vec![Command::CreateVolume(rec)]).await {
        let (drv, n) = (driver, name.to_string());
        let _ = blocking(move || drv.delete_volume(&n)).await;
        return Err(e.into());
    }
    d.events.lifecycle(
        "storage-volume-created",
        &url(pool, name),
        serde_json::json!({}),
    );
    Ok(())
}

pub fn url(pool: &str, name: &str) -> String {
    format!("/1.0/storage-pools/{pool}/volumes/custom/{name}")
}

/// Replaces a volume's config and description (PUT; a PATCH merges before calling this),
/// keeping the server's volatile keys. A changed `size` is applied before it is recorded.
pub async fn update(
    d: &Daemon,
    pool: &str,
    name: &str,
    description: String,
    mut config: ConfigMap,
) -> Result<()> {
    let _held = CHANGES.lock().await;
    let rec = get(d, pool, name)?;
    here(d, &rec)?;
    let driver = pool_driver(d, pool)?;
    let size = checked_size(driver.as_ref(), &config)?;
    if size != recorded_size(&rec.config) {
        let n = name.to_string();
        blocking(move || driver.set_volume_quota(&n, size)).await?;
    }
    for (k, v) in &rec.config {
        if k.starts_with("volatile.") {
            config.insert(k.clone(), v.clone());
        }
    }
    d.write(vec![Command::UpdateVolume(VolumeRecord {
        description,
        config,
        ..rec
    })])
    .await?;
    d.events.lifecycle(
        "storage-volume-updated",
        &url(pool, name),
        serde_json::json!({}),
    );
    Ok(())
}

/// Records the id map a volume's files were re-owned for.
pub async fn set_idmap(d: &Daemon, pool: &str, name: &str, shift: IdShift) -> Result<()> {
    let _held = CHANGES.lock().await;
    let mut rec = get(d, pool, name)?;
    rec.config.insert(IDMAP_KEY.into(), shift.to_incus_json());
    d.write(vec![Command::UpdateVolume(rec)]).await?;
    Ok(())
}

fn refuse_in_use(d: &Daemon, pool: &str, name: &str, what: &str) -> Result<()> {
    let users = used_by(d, pool, name)?;
    if !users.is_empty() {
        return Err(VolumeError::Invalid(format!(
            "Cannot {what} storage volume {name:?}: it is still used by {}",
            users.join(", ")
        )));
    }
    Ok(())
}

pub async fn rename(d: &Daemon, pool: &str, from: &str, to: &str) -> Result<()> {
    let _held = CHANGES.lock().await;
    let rec = get(d, pool, from)?;
    here(d, &rec)?;
    crate::validate::object_name(to).map_err(|e| VolumeError::Invalid(e.to_string()))?;
    if d.db.volume(pool, to)?.is_some() {
        return Err(VolumeError::Conflict(format!(
            "Storage volume {to:?} already exists in pool {pool:?}"
        )));
    }
    // Disk devices name the volume: renaming it under them would break them.
    refuse_in_use(d, pool, from, "rename")?;
    let driver = pool_driver(d, pool)?;
    let (drv, f, t) = (driver.clone(), from.to_string(), to.to_string());
    blocking(move || drv.rename_volume(&f, &t)).await?;
    let written = d
        .write(vec![
            Command::DeleteVolume {
                pool: pool.to_string(),
                name: from.to_string(),
            },
            Command::CreateVolume(VolumeRecord {
                name: to.to_string(),
                ..rec
            }),
        ])
        .await;
    if let Err(e) = written {
        let (f, t) = (from.to_string(), to.to_string());
        let _ = blocking(move || driver.rename_volume(&t, &f)).await;
        return Err(e.into());
    }
    d.events.lifecycle(
        "storage-volume-renamed",
        &url(pool, to),
        serde_json::json!({"old_name": from}),
    );
    Ok(())
}

pub async fn delete(d: &Daemon, pool: &str, name: &str) -> Result<()> {
    let _held = CHANGES.lock().await;
    here(d, &get(d, pool, name)?)?;
    refuse_in_use(d, pool, name, "delete")?;
    let driver = pool_driver(d, pool)?;
    d.write(vec![Command::DeleteVolume {
        pool: pool.to_string(),
        name: name.to_string(),
    }])
    .await?;
    let n = name.to_string();
    // The record is gone; a failure here leaves files behind, not a volume the API lists.
    blocking(move || driver.delete_volume(&n)).await?;
    d.events.lifecycle(
        "storage-volume-deleted",
        &url(pool, name),
        serde_json::json!({}),
    );
    Ok(())
}

/// Whether a device mounts the custom volume `pool`/`name`.
pub fn device_mounts(
    dev: &std::collections::BTreeMap<String, String>,
    pool: &str,
    name: &str,
) -> bool {
    dev.get("type").map(String::as_str) == Some("disk")
        && dev.get("path").map(String::as_str) != Some("/")
        && dev.get("pool").map(String::as_str) == Some(pool)
        && dev.get("source").map(String::as_str) == Some(name)
}

/// The instances (by their expanded devices) and profiles that mount a volume, as URLs.
pub fn used_by(d: &Daemon, pool: &str, name: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let profiles =
        crate::instance::all_profiles(d).map_err(|e| VolumeError::Failed(e.to_string()))?;
    for i in d.db.instances()? {
        let (_, ed) = crate::instance::expand_from(&profiles, &i.profiles, &i.config, &i.devices)
            .map_err(|e| VolumeError::Failed(e.to_string()))?;
        if ed.values().any(|dev| device_mounts(dev, pool, name)) {
            out.push(crate::instance::url(&i.name));
        }
    }
    for p in profiles.values() {
        if p.devices.values().any(|dev| device_mounts(dev, pool, name)) {
            out.push(format!("/1.0/profiles/{}", p.name));
        }
    }
    Ok(out)
}

/// Space a volume's files take (what `incus storage volume info` shows as usage).
pub fn usage(d: &Daemon, pool: &str, name: &str) -> Result<u64> {
    here(d, &get(d, pool, name)?)?;
    Ok(pool_driver(d, pool)?.volume_usage(name))
}
