//! `/1.0/storage-pools[/{pool}]` and volume listings.

use std::collections::BTreeMap;
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
    Ok(out)
}

fn view<'a>(d: &AppState, p: &'a PoolRecord) -> Result<PoolView<'a>, ApiError> {
    Ok(PoolView {
        name: &p.name,
        driver: &p.driver,
        description: &p.description,
        config: &p.config,
        used_by: used_by(d, p)?,
        status: "Created",
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

fn check_pool_config(config: &ConfigMap) -> Result<(), ApiError> {
    for (k, v) in config {
        match k.as_str() {
            "source" => {
                if !v.starts_with('/') || v.split('/').any(|c| c == "..") {
                    return Err(ApiError::bad_request("source must be an absolute path"));
                }
            }
            k if k.starts_with("user.") => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Unknown configuration key: {k}"
                )))
            }
        }
    }
    Ok(())
}

pub async fn create(State(d): State<AppState>, ApiJson(req): ApiJson<PoolsPost>) -> ApiResult {
    crate::validate::object_name(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    check_pool_config(&req.config)?;
    if d.db.pool(&req.name)?.is_some() {
        return Err(ApiError::conflict(format!(
            "Storage pool {:?} already exists",
            req.name
        )));
    }
    let mut config = req.config.clone();
    let source = config
        .entry("source".into())
        .or_insert_with(|| d.paths.pools.join(&req.name).display().to_string())
        .clone();
    let driver = crate::storage::open(&req.name, &req.driver, std::path::Path::new(&source))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    d.write(vec![Command::CreatePool(PoolRecord {
        name: req.name.clone(),
        driver: req.driver.clone(),
        description: req.description,
        config,
    })])
    .await?;
    d.pools_mut().insert(req.name.clone(), Arc::from(driver));
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
        check_pool_config(&c)?;
        if c.get("source")
            .is_some_and(|s| Some(s) != p.config.get("source"))
        {
            return Err(ApiError::bad_request(
                "The source of an existing pool cannot change",
            ));
        }
        let source = p.config.get("source").cloned();
        p.config = c;
        if let Some(s) = source {
            p.config.insert("source".into(), s);
        }
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
    d.write(vec![Command::DeletePool { name: pool.clone() }])
        .await?;
    d.pools_mut().remove(&pool);
    empty()
}

#[derive(Serialize)]
struct VolumeView {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    config: BTreeMap<String, String>,
    description: String,
    used_by: Vec<String>,
    location: &'static str,
    content_type: &'static str,
    project: &'static str,
}

fn volume_list(d: &AppState, pool: &str, kind: Option<&str>, recursive: bool) -> ApiResult {
    let p = get_pool(d, pool)?;
    let mut vols = Vec::new();
    if kind.is_none_or(|k| k == "container") {
        for n in pool_instances(d, &p.name)? {
            vols.push(VolumeView {
                name: n.clone(),
                kind: "container",
                config: BTreeMap::new(),
                description: String::new(),
                used_by: vec![crate::instance::url(&n)],
                location: "none",
                content_type: "filesystem",
                project: "default",
            });
        }
    }
    if kind.is_none_or(|k| k == "image") {
        if let Some(drv) = d.pool(&p.name) {
            for img in d.db.images()? {
                if drv.has_image(&img.fingerprint) {
                    vols.push(VolumeView {
                        name: img.fingerprint.clone(),
                        kind: "image",
                        config: BTreeMap::new(),
                        description: String::new(),
                        used_by: vec![format!("/1.0/images/{}", img.fingerprint)],
                        location: "none",
                        content_type: "filesystem",
                        project: "default",
                    });
                }
            }
        }
    }
    if recursive {
        return sync(vols);
    }
    sync(
        vols.iter()
            .map(|v| format!("/1.0/storage-pools/{pool}/volumes/{}/{}", v.kind, v.name))
            .collect::<Vec<_>>(),
    )
}

pub async fn volumes(
    State(d): State<AppState>,
    Path(pool): Path<String>,
    Query(q): Query<RecursionQuery>,
) -> ApiResult {
    volume_list(&d, &pool, None, q.recursive())
}

pub async fn volumes_of_kind(
    State(d): State<AppState>,
    Path((pool, kind)): Path<(String, String)>,
    Query(q): Query<RecursionQuery>,
) -> ApiResult {
    if !["container", "image", "custom"].contains(&kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Invalid storage volume type {kind:?}"
        )));
    }
    volume_list(&d, &pool, Some(&kind), q.recursive())
}

pub async fn resources(State(d): State<AppState>, Path(pool): Path<String>) -> ApiResult {
    let p = get_pool(&d, &pool)?;
    let source = d.pool_source(&p);
    let st = nix::sys::statvfs::statvfs(&source).map_err(ApiError::internal)?;
    let total = st.blocks() * st.fragment_size();
    let free = st.blocks_available() * st.fragment_size();
    sync(serde_json::json!({
        "space": {"used": total.saturating_sub(free), "total": total},
        "inodes": {"used": st.files().saturating_sub(st.files_free()), "total": st.files()},
    }))
}
