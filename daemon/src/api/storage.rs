//! `/1.0/storage-pools[/{pool}[/resources]]`; their volumes are in `volumes.rs`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::response::{check_if_match, empty, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState, RecursionQuery};
use crate::db::records::{ConfigMap, PoolRecord};
use crate::db::Command;

#[derive(Serialize)]
struct PoolView<'a> {
    name: &'a str,
    driver: &'a str,
    description: &'a str,
    config: &'a ConfigMap,
    used_by: Vec<String>,
    status: &'static str,
    locations: Vec<&'static str>,
}

#[derive(Serialize)]
struct PoolEtag<'a> {
    config: &'a ConfigMap,
    description: &'a str,
}

fn pool_instances(d: &AppState, pool: &str) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for i in d.db.instances()? {
        let (_, ed) = crate::instance::expand(d, &i)?;
        if crate::instance::root_pool(&ed).ok().as_deref() == Some(pool) {
            out.push(i.name);
        }
    }
    Ok(out)
}

fn used_by(d: &AppState, p: &PoolRecord) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = pool_instances(d, &p.name)?
        .iter()
        .map(|n| crate::instance::url(n))
        .collect();
    for prof in d.db.profiles()? {
        if prof
            .devices
            .values()
            .any(|dev| dev.get("pool") == Some(&p.name))
        {
            out.push(format!("/1.0/profiles/{}", prof.name));
        }
    }
    for v in d.db.volumes(&p.name)? {
        out.push(crate::volume::url(&p.name, &v.name));
    }
    Ok(out)
}

fn view<'a>(d: &AppState, p: &'a PoolRecord) -> Result<PoolView<'a>, ApiError> {
    Ok(PoolView {
        name: &p.name,
        driver: &p.driver,
        description: &p.description,
        config: &p.config,
        used_by: used_by(d, p)?,
        status: if d.pool(&p.name).is_some() {
            "Created"
        } else {
            "Unavailable"
        },
        locations: vec!["none"],
    })
}

fn get_pool(d: &AppState, name: &str) -> Result<PoolRecord, ApiError> {
    d.db.pool(name)?
        .ok_or_else(|| ApiError::not_found("Storage pool not found"))
}

pub async fn list(State(d): State<AppState>, Query(q): Query<RecursionQuery>) -> ApiResult {
    let pools = d.db.pools()?;
    if q.recursive() {
        return sync(
            pools
                .iter()
                .map(|p| view(&d, p))
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    sync(
        pools
            .iter()
            .map(|p| format!("/1.0/storage-pools/{}", p.name))
            .collect::<Vec<_>>(),
    )
}

pub async fn get_one(State(d): State<AppState>, Path(pool): Path<String>) -> ApiResult {
    let p = get_pool(&d, &pool)?;
    sync_etag(
        view(&d, &p)?,
        &PoolEtag {
            config: &p.config,
            description: &p.description,
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsPost {
    name: String,
    driver: String,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    config: ConfigMap,
    #[serde(default)]
    description: String,
}

pub async fn create(State(d): State<AppState>, ApiJson(req): ApiJson<PoolsPost>) -> ApiResult {
    crate::validate::object_name(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let kind = crate::storage::kind(&req.driver)?;
    (kind.validate)(&req.config)?;
    if d.cluster().is_some() && req.driver != "dir" {
        // Incus makes such pools member by member (`--target`, PENDING, then CREATED);
        // until that exists a cluster keeps to dir pools rather than half-make others.
        return Err(ApiError::bad_request(format!(
            "Storage pools of driver {:?} cannot be created in a cluster yet (only dir)",
            req.driver
        )));
    }
    if d.db.pool(&req.name)?.is_some() {
        return Err(ApiError::conflict(format!(
            "Storage pool {:?} already exists",
            req.name
        )));
    }
    let paths = d.pool_paths(&req.name);
    let (name, config) = (req.name.clone(), req.config.clone());
    // Formatting and mounting block; they run off the async workers.
    let made = tokio::task::spawn_blocking(move || {
        let config = (kind.create)(&name, &config, &paths)?;
        let driver = (kind.open)(&name, &config, &paths)?;
        Ok::<_, crate::storage::StorageError>((config, driver))
    })
    .await
    .map_err(ApiError::internal)?;
    let (config, driver) = made?;
    let driver: Arc<dyn crate::storage::StorageDriver> = Arc::from(driver);
    let written = d
        .write(vec![Command::CreatePool(PoolRecord {
            name: req.name.clone(),
            driver: req.driver.clone(),
            description: req.description,
            config,
        })])
        .await;
    if let Err(e) = written {
        let undo = driver.clone();
        let _ = tokio::task::spawn_blocking(move || undo.destroy()).await;
        return Err(e.into());
    }
    d.pools_mut().insert(req.name.clone(), driver);
    d.events.lifecycle(
        "storage-pool-created",
        &format!("/1.0/storage-pools/{}", req.name),
        serde_json::json!({}),
    );
    empty()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolPut {
    #[serde(default)]
    config: Option<ConfigMap>,
    #[serde(default)]
    description: Option<String>,
    #[serde(rename = "name", default)]
    _name: IgnoredAny,
    #[serde(rename = "driver", default)]
    _driver: IgnoredAny,
    #[serde(rename = "used_by", default)]
    _used_by: IgnoredAny,
    #[serde(rename = "status", default)]
    _status: IgnoredAny,
    #[serde(rename = "locations", default)]
    _locations: IgnoredAny,
}

pub async fn put(
    State(d): State<AppState>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PoolPut>,
) -> ApiResult {
    let mut p = get_pool(&d, &pool)?;
    check_if_match(
        &headers,
        &PoolEtag {
            config: &p.config,
            description: &p.description,
        },
    )?;
    if let Some(c) = req.config {
        (crate::storage::kind(&p.driver)?.validate)(&c)?;
        // Only user.* keys change in place: the others are how the pool was made (a
        // resize or remount is not implemented, so it is refused, not recorded).
        // A PUT that leaves such a key out keeps it.
        let mut grow = None;
        for (key, value) in &c {
            if key.starts_with("user.") || p.config.get(key) == Some(value) {
                continue;
            }
            // A loop-backed pool grows (Incus: `incus storage set POOL size=…`).
            if key == "size" {
                let bytes = crate::storage::size::parse_bytes(value).map_err(|e| {
                    ApiError::bad_request(format!("Invalid value for option \"size\": {e}"))
                })?;
                grow = Some(bytes);
                continue;
            }
            return Err(ApiError::bad_request(format!(
                "Changing {key:?} of an existing storage pool is not supported"
            )));
        }
        if let Some(bytes) = grow {
            if d.cluster().is_some() {
                return Err(ApiError::bad_request(
                    "Growing a storage pool in a cluster is not supported yet",
                ));
            }
            let driver = d.pool(&pool).ok_or_else(|| {
                ApiError::bad_request(format!("Storage pool {pool:?} is unavailable"))
            })?;
            tokio::task::spawn_blocking(move || driver.grow(bytes))
                .await
                .map_err(ApiError::internal)??;
        }
        let kept: ConfigMap = p
            .config
            .iter()
            .filter(|(k, _)| !(k.starts_with("user.") || (grow.is_some() && *k == "size")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        p.config = c;
        p.config.extend(kept);
    }
    if let Some(desc) = req.description {
        p.description = desc;
    }
    d.write(vec![Command::UpdatePool(p)]).await?;
    empty()
}

pub async fn delete(State(d): State<AppState>, Path(pool): Path<String>) -> ApiResult {
    let p = get_pool(&d, &pool)?;
    if !used_by(&d, &p)?.is_empty() {
        return Err(ApiError::bad_request(
            "The storage pool is currently in use",
        ));
    }
    let driver = d.pool(&pool);
    d.write(vec![Command::DeletePool { name: pool.clone() }])
        .await?;
    d.pools_mut().remove(&pool);
    let _ = std::fs::remove_file(d.local_share_path(&pool));
    if let Some(driver) = driver {
        // The record is gone; what backs the pool on this member goes with it. A failure
        // here leaves files behind, not a pool the API still lists.
        let destroyed = tokio::task::spawn_blocking(move || driver.destroy())
            .await
            .map_err(ApiError::internal)?;
        if let Err(e) = destroyed {
            tracing::error!(pool = %pool, "deleting the pool's storage: {e}");
            return Err(ApiError::internal(format!(
                "Storage pool {pool:?} was deleted, but its storage was not removed: {e}"
            )));
        }
    }
    empty()
}

pub async fn resources(
    State(d): State<AppState>,
    Path(pool): Path<String>,
    Query(q): Query<super::resources::TargetQuery>,
) -> ApiResult {
    super::resources::check_target(&d, &q)?;
    get_pool(&d, &pool)?;
    let driver = d
        .pool(&pool)
        .ok_or_else(|| ApiError::internal(format!("Storage pool {pool:?} is unavailable")))?;
    let space = tokio::task::spawn_blocking(move || driver.space())
        .await
        .map_err(ApiError::internal)??;
    sync(serde_json::json!({
        "space": {"used": space.used, "total": space.total},
        "inodes": {"used": space.inodes_used, "total": space.inodes_total},
    }))
}
