//! `/1.0/storage-pools[/{pool}[/resources]]`; their volumes are in `volumes.rs`.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::response::{check_if_match, empty, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState};
use crate::db::records::{ConfigMap, PoolRecord};
use crate::pool::{self, PoolError};

#[derive(Serialize)]
struct PoolView<'a> {
    name: &'a str,
    driver: &'a str,
    description: &'a str,
    config: ConfigMap,
    used_by: Vec<String>,
    status: &'static str,
    locations: Vec<String>,
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::NotFound(m) => ApiError::not_found(m),
            PoolError::Conflict(m) => ApiError::conflict(m),
            PoolError::Invalid(m) => ApiError::bad_request(m),
            PoolError::Failed(m) => ApiError::internal(m),
            PoolError::Storage(e) => e.into(),
            PoolError::Db(e) => e.into(),
        }
    }
}

/// `?target=M` on a read: which member's keys to show.
#[derive(Deserialize, Default)]
pub struct TargetQuery {
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    recursion: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    filter: Option<String>,
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

fn view<'a>(
    d: &AppState,
    p: &'a PoolRecord,
    target: Option<&str>,
) -> Result<PoolView<'a>, ApiError> {
    Ok(PoolView {
        name: &p.name,
        driver: &p.driver,
        description: &p.description,
        config: pool::config_view(d, p, target),
        used_by: used_by(d, p)?,
        status: pool::status(d, p),
        locations: pool::locations(d, p),
    })
}

fn get_pool(d: &AppState, name: &str) -> Result<PoolRecord, ApiError> {
    Ok(pool::get(d, name)?)
}

/// A `target` must name a member of this cluster.
fn checked_target<'q>(
    d: &AppState,
    target: &'q Option<String>,
) -> Result<Option<&'q str>, ApiError> {
    let Some(t) = target.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if d.cluster().is_none() {
        return Err(ApiError::bad_request(
            "This server is not clustered: there is no member to target",
        ));
    }
    if d.db.member(t)?.is_none() {
        return Err(ApiError::not_found(format!(
            "Cluster member {t:?} not found"
        )));
    }
    Ok(Some(t))
}

fn checked_project(project: &Option<String>) -> Result<(), ApiError> {
    match project.as_deref() {
        None | Some("") | Some("default") => Ok(()),
        Some(p) => Err(ApiError::not_found(format!("Project {p:?} not found"))),
    }
}

pub async fn list(State(d): State<AppState>, Query(q): Query<TargetQuery>) -> ApiResult {
    checked_project(&q.project)?;
    let target = checked_target(&d, &q.target)?;
    let filter = q
        .filter
        .as_deref()
        .filter(|f| !f.trim().is_empty())
        .map(super::filter::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let mut pools = d.db.pools()?;
    if let Some(f) = &filter {
        let mut kept = Vec::new();
        for p in pools {
            let v = serde_json::to_value(view(&d, &p, target)?).map_err(ApiError::internal)?;
            if f.matches(&v) {
                kept.push(p);
            }
        }
        pools = kept;
    }
    if super::recursion_level(q.recursion.as_deref()) >= 1 {
        return sync(
            pools
                .iter()
                .map(|p| view(&d, p, target))
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

pub async fn get_one(
    State(d): State<AppState>,
    Path(pool): Path<String>,
    Query(q): Query<TargetQuery>,
) -> ApiResult {
    checked_project(&q.project)?;
    let target = checked_target(&d, &q.target)?;
    let p = get_pool(&d, &pool)?;
    sync_etag(
        view(&d, &p, target)?,
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

pub async fn create(
    State(d): State<AppState>,
    Query(q): Query<TargetQuery>,
    ApiJson(req): ApiJson<PoolsPost>,
) -> ApiResult {
    checked_project(&q.project)?;
    let target = checked_target(&d, &q.target)?;
    let new = pool::NewPool {
        name: req.name,
        driver: req.driver,
        config: req.config,
        description: req.description,
    };
    pool::create(&d.daemon, new, target).await?;
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
    Query(q): Query<TargetQuery>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PoolPut>,
) -> ApiResult {
    checked_project(&q.project)?;
    let target = checked_target(&d, &q.target)?;
    let p = get_pool(&d, &pool)?;
    check_if_match(
        &headers,
        &PoolEtag {
            config: &p.config,
            description: &p.description,
        },
    )?;
    pool::update(&d.daemon, p, req.config, req.description, target).await?;
    empty()
}

pub async fn delete(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let p = get_pool(&d, &name)?;
    let in_use = !used_by(&d, &p)?.is_empty();
    pool::delete(&d.daemon, &name, in_use).await?;
    empty()
}

/// `POST /internal/cluster/storage-pools`: another member asks this one to make its share
/// of a pool; the answer is the config its driver filled in.
pub async fn internal_create_share(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<pool::cluster::ShareRequest>,
) -> ApiResult {
    let config = pool::create_local(&d.daemon, &req.name, &req.driver, &req.config).await?;
    sync(serde_json::json!({ "config": config }))
}

/// `DELETE /internal/cluster/storage-pools/{name}`: this member's share goes.
pub async fn internal_delete_share(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    pool::destroy_local(&d, &name).await?;
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
