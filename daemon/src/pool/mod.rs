//! Storage pools: the service behind `/1.0/storage-pools`. A pool's record changes only
//! through `Daemon::write`; what backs it on a member (a zpool, a btrfs filesystem, a
//! directory) through the pool's driver, on a blocking thread.
//!
//! Standalone, a create makes the pool and then its record (undone if the record cannot be
//! written). In a cluster a pool is Incus's cluster-wide object with a share on every
//! member, made the way Incus makes it (`cluster.rs`).

use std::sync::Arc;

use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, PoolRecord, PoolStatus};
use crate::db::{Command, DbError};
use crate::storage::StorageError;

pub mod cluster;

/// The keys that differ from member to member (Incus's `NodeSpecificStorageConfig`, less
/// the LVM ones Cairn has no driver for).
pub const MEMBER_KEYS: &[&str] = &["source", "size", "zfs.pool_name"];

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
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

pub type Result<T> = std::result::Result<T, PoolError>;

/// What `POST /1.0/storage-pools` asks for.
pub struct NewPool {
    pub name: String,
    pub driver: String,
    pub config: ConfigMap,
    pub description: String,
}

/// One pool creation at a time on this member: a create checks that the name is free,
/// makes storage, then writes; two interleaving would both make storage.
static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn get(d: &Daemon, name: &str) -> Result<PoolRecord> {
    d.db.pool(name)?
        .ok_or_else(|| PoolError::NotFound("Storage pool not found".into()))
}

/// `config` split into the keys every member shares and this member's own.
pub fn split_member_keys(config: &ConfigMap) -> (ConfigMap, ConfigMap) {
    config
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| !MEMBER_KEYS.contains(&k.as_str()))
}

/// `incus storage create NAME DRIVER [KEY=VALUE…] [--target M]`.
pub async fn create(d: &Arc<Daemon>, req: NewPool, target: Option<&str>) -> Result<()> {
    crate::validate::object_name(&req.name).map_err(|e| PoolError::Invalid(e.to_string()))?;
    let kind = crate::storage::kind(&req.driver)?;
    (kind.validate)(&req.config)?;
    let _one = CREATING.lock().await;
    if d.cluster().is_some() {
        return match target {
            Some(t) => cluster::define(d, &req, t).await,
            None => cluster::create(d, req).await,
        };
    }
    if let Some(t) = target {
        return Err(PoolError::Invalid(format!(
            "This server is not clustered: there is no member {t:?} to target"
        )));
    }
    if d.db.pool(&req.name)?.is_some() {
        return Err(PoolError::Conflict(format!(
            "Storage pool {:?} already exists",
            req.name
        )));
    }
    let config = create_local(d, &req.name, &req.driver, &req.config).await?;
    let written = d
        .write(vec![Command::CreatePool(PoolRecord {
            name: req.name.clone(),
            driver: req.driver.clone(),
            description: req.description,
            config,
            ..PoolRecord::default()
        })])
        .await;
    if let Err(e) = written {
        let _ = destroy_local(d, &req.name).await;
        return Err(e.into());
    }
    created_event(d, &req.name);
    Ok(())
}

fn created_event(d: &Daemon, name: &str) {
    d.events.lifecycle(
        "storage-pool-created",
        &format!("/1.0/storage-pools/{name}"),
        serde_json::json!({}),
    );
}

/// Makes this member's share of pool `name` and opens it; returns the config the driver
/// filled in (the loop file it made, the zpool's name).
pub async fn create_local(
    d: &Arc<Daemon>,
    name: &str,
    driver: &str,
    config: &ConfigMap,
) -> Result<ConfigMap> {
    if d.pool(name).is_some() {
        return Err(PoolError::Conflict(format!(
            "Storage pool {name:?} already exists on member {}",
            d.server_name()
        )));
    }
    let kind = crate::storage::kind(driver)?;
    (kind.validate)(config)?;
    let paths = d.pool_paths(name);
    let (n, c) = (name.to_string(), config.clone());
    // Formatting and mounting block; they run off the async workers.
    let (config, opened) = tokio::task::spawn_blocking(move || {
        let config = (kind.create)(&n, &c, &paths)?;
        let opened = (kind.open)(&n, &config, &paths)?;
        Ok::<_, StorageError>((config, opened))
    })
    .await
    .map_err(|e| PoolError::Failed(format!("internal task failed: {e}")))??;
    d.pools_mut().insert(name.to_string(), Arc::from(opened));
    Ok(config)
}

/// Closes and removes this member's share of pool `name` (nothing if it has none).
pub async fn destroy_local(d: &Daemon, name: &str) -> Result<()> {
    let driver = d.pools_mut().remove(name);
    let _ = std::fs::remove_file(d.local_share_path(name));
    let Some(driver) = driver else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || driver.destroy())
        .await
        .map_err(|e| PoolError::Failed(format!("internal task failed: {e}")))??;
    Ok(())
}

/// `incus storage delete NAME`: refused while anything uses it.
pub async fn delete(d: &Arc<Daemon>, name: &str, in_use: bool) -> Result<()> {
    let p = get(d, name)?;
    if in_use {
        return Err(PoolError::Invalid(
            "The storage pool is currently in use".into(),
        ));
    }
    if d.cluster().is_some() {
        return cluster::delete(d, p).await;
    }
    d.write(vec![Command::DeletePool { name: name.into() }])
        .await?;
    // The record is gone; what backs the pool on this member goes with it. A failure here
    // leaves files behind, not a pool the API still lists.
    destroy_local(d, name).await.map_err(|e| {
        tracing::error!(pool = %name, "deleting the pool's storage: {e}");
        PoolError::Failed(format!(
            "Storage pool {name:?} was deleted, but its storage was not removed: {e}"
        ))
    })
}

/// `PUT`/`PATCH /1.0/storage-pools/{pool}[?target=M]`: only `user.*` keys and the
/// description change in place, and `size` grows a pool on a loop file (in a cluster,
/// member M's share, which the request was routed to). The other keys are how the pool
/// was made: a change is refused, not recorded. A PUT that leaves such a key out keeps it.
pub async fn update(
    d: &Arc<Daemon>,
    mut p: PoolRecord,
    config: Option<ConfigMap>,
    description: Option<String>,
    target: Option<&str>,
) -> Result<()> {
    let clustered = d.cluster().is_some();
    if let Some(c) = config {
        (crate::storage::kind(&p.driver)?.validate)(&c)?;
        let current = config_view(d, &p, target);
        let mut grow = None;
        for (key, value) in &c {
            if key.starts_with("user.") || current.get(key) == Some(value) {
                continue;
            }
            if key == "size" {
                if clustered && target.is_none() {
                    return Err(PoolError::Invalid(
                        "Config key \"size\" is cluster member specific: set it with --target <member>"
                            .into(),
                    ));
                }
                let bytes = crate::storage::size::parse_bytes(value).map_err(|e| {
                    PoolError::Invalid(format!("Invalid value for option \"size\": {e}"))
                })?;
                grow = Some((bytes, value.clone()));
                continue;
            }
            return Err(PoolError::Invalid(format!(
                "Changing {key:?} of an existing storage pool is not supported"
            )));
        }
        if let Some((bytes, _)) = &grow {
            if target.is_some_and(|t| t != d.server_name()) {
                return Err(PoolError::Failed(format!(
                    "The request for member {} reached {}",
                    target.unwrap_or_default(),
                    d.server_name()
                )));
            }
            let driver = d.pool(&p.name).ok_or_else(|| {
                PoolError::Invalid(format!("Storage pool {:?} is unavailable", p.name))
            })?;
            let bytes = *bytes;
            tokio::task::spawn_blocking(move || driver.grow(bytes))
                .await
                .map_err(|e| PoolError::Failed(format!("internal task failed: {e}")))??;
        }
        // The shared keys: what was sent (less member keys), plus what it cannot change.
        let (sent, _) = if clustered {
            split_member_keys(&c)
        } else {
            (c.clone(), ConfigMap::new())
        };
        let kept: ConfigMap = p
            .config
            .iter()
            .filter(|(k, _)| !(k.starts_with("user.") || (grow.is_some() && *k == "size")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        p.config = sent;
        p.config.extend(kept);
        if let Some((_, size)) = grow {
            if clustered {
                let me = d.server_name();
                let mut share = p.members.get(&me).cloned().unwrap_or_default();
                share.created = true;
                share.config = split_member_keys(&d.pool_config(&p)).1;
                share.config.insert("size".into(), size);
                p.members.insert(me, share);
            } else {
                p.config.insert("size".into(), size);
            }
        }
    }
    if let Some(desc) = description {
        p.description = desc;
    }
    d.write(vec![Command::UpdatePool(p)]).await?;
    Ok(())
}

/// The pool's config as a client sees it: in a cluster, without a target the shared keys
/// only (as Incus shows it); with one, that member's own keys too.
pub fn config_view(d: &Daemon, p: &PoolRecord, target: Option<&str>) -> ConfigMap {
    if d.cluster().is_none() {
        return p.config.clone();
    }
    let (mut shared, _) = split_member_keys(&p.config);
    if let Some(t) = target {
        let mine = match p.members.get(t) {
            Some(share) => share.config.clone(),
            None if t == d.server_name() => split_member_keys(&d.pool_config(p)).1,
            None => ConfigMap::new(),
        };
        shared.extend(mine);
    }
    shared
}

/// `status` as Incus names it; a created pool this member cannot open is Unavailable.
pub fn status(d: &Daemon, p: &PoolRecord) -> &'static str {
    match p.status {
        PoolStatus::Created if d.pool(&p.name).is_none() => "Unavailable",
        s => s.as_str(),
    }
}

/// The members the pool is made on (`locations`); `["none"]` standalone, as Incus shows it.
pub fn locations(d: &Daemon, p: &PoolRecord) -> Vec<String> {
    if d.cluster().is_none() {
        return vec!["none".into()];
    }
    if p.members.is_empty() && p.status == PoolStatus::Created {
        // A pool made before shares were recorded (or by every member from the preseed).
        return d
            .db
            .members()
            .map(|m| m.into_iter().map(|m| m.name).collect())
            .unwrap_or_default();
    }
    p.members
        .iter()
        .filter(|(_, s)| s.created)
        .map(|(m, _)| m.clone())
        .collect()
}
