//! `/1.0/storage-pools/{pool}/volumes[/{type}[/{name}[/state]]]`: the volumes of a pool
//! (instance and image volumes are listed; custom ones are also made, changed, renamed,
//! copied and deleted here, through the `volume` service).

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::response::{async_op, check_if_match, empty, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState};
use crate::db::records::ConfigMap;
use crate::operations::resources;
use crate::volume::{self, Origin, VolumeError};

impl From<VolumeError> for ApiError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::NotFound(m) => ApiError::not_found(m),
            VolumeError::Conflict(m) => ApiError::conflict(m),
            VolumeError::Invalid(m) => ApiError::bad_request(m),
            VolumeError::Failed(m) => ApiError::internal(m),
            VolumeError::Storage(e) => e.into(),
            VolumeError::Db(e) => e.into(),
        }
    }
}

/// A volume as Incus's `api.StorageVolume` shows it.
#[derive(Serialize)]
struct VolumeView {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    config: ConfigMap,
    description: String,
    used_by: Vec<String>,
    location: String,
    content_type: &'static str,
    project: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Serialize)]
struct VolumeEtag<'a> {
    config: &'a ConfigMap,
    description: &'a str,
}

fn pool_exists(d: &AppState, pool: &str) -> Result<(), ApiError> {
    d.db.pool(pool)?
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found("Storage pool not found"))
}

fn views(d: &AppState, pool: &str, kind: Option<&str>) -> Result<Vec<VolumeView>, ApiError> {
    pool_exists(d, pool)?;
    let mut vols = Vec::new();
    if kind.is_none_or(|k| k == "container") {
        for i in d.db.instances()? {
            let (_, ed) = crate::instance::expand(d, &i)?;
            if crate::instance::root_pool(&ed).ok().as_deref() == Some(pool) {
                vols.push(VolumeView {
                    name: i.name.clone(),
                    kind: "container",
                    config: ConfigMap::new(),
                    description: String::new(),
                    used_by: vec![crate::instance::url(&i.name)],
                    location: location_of(&i.location),
                    content_type: "filesystem",
                    project: "default",
                    created_at: Some(i.created_at),
                });
            }
        }
    }
    if kind.is_none_or(|k| k == "image") {
        if let Some(drv) = d.pool(pool) {
            for img in d.db.images()? {
                if drv.has_image(&img.fingerprint) {
                    vols.push(VolumeView {
                        name: img.fingerprint.clone(),
                        kind: "image",
                        config: ConfigMap::new(),
                        description: String::new(),
                        used_by: vec![format!("/1.0/images/{}", img.fingerprint)],
                        location: location_of(&d.cluster().map(|c| c.name()).unwrap_or_default()),
                        content_type: "filesystem",
                        project: "default",
                        created_at: None,
                    });
                }
            }
        }
    }
    if kind.is_none_or(|k| k == "custom") {
        for v in d.db.volumes(pool)? {
            vols.push(custom_view(d, v)?);
        }
    }
    Ok(vols)
}

/// Incus shows `none` for a volume of a server that is not clustered.
fn location_of(member: &str) -> String {
    if member.is_empty() {
        "none".into()
    } else {
        member.to_string()
    }
}

fn custom_view(d: &AppState, v: crate::db::records::VolumeRecord) -> Result<VolumeView, ApiError> {
    Ok(VolumeView {
        used_by: volume::used_by(d, &v.pool, &v.name)?,
        name: v.name,
        kind: "custom",
        config: v.config,
        description: v.description,
        location: location_of(&v.location),
        content_type: "filesystem",
        project: "default",
        created_at: Some(v.created_at),
    })
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    recursion: Option<String>,
    #[serde(default)]
    filter: Option<String>,
    /// `--target M`: the volumes on member M only.
    #[serde(default)]
    target: Option<String>,
}

fn list_of(d: &AppState, pool: &str, kind: Option<&str>, q: &ListQuery) -> ApiResult {
    let filter = q
        .filter
        .as_deref()
        .filter(|f| !f.trim().is_empty())
        .map(super::filter::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let mut vols = views(d, pool, kind)?;
    if let Some(t) = q.target.as_deref().filter(|t| !t.is_empty()) {
        if d.db.member(t)?.is_none() {
            return Err(ApiError::not_found(format!(
                "Cluster member {t:?} not found"
            )));
        }
        vols.retain(|v| v.location == t);
    }
    if let Some(f) = &filter {
        vols.retain(|v| serde_json::to_value(v).is_ok_and(|j| f.matches(&j)));
    }
    if super::recursion_level(q.recursion.as_deref()) >= 1 {
        return sync(vols);
    }
    sync(
        vols.iter()
            .map(|v| format!("/1.0/storage-pools/{pool}/volumes/{}/{}", v.kind, v.name))
            .collect::<Vec<_>>(),
    )
}

fn known_kind(kind: &str) -> Result<(), ApiError> {
    if !["container", "image", "custom"].contains(&kind) {
        return Err(ApiError::bad_request(format!(
            "Invalid storage volume type {kind:?}"
        )));
    }
    Ok(())
}

/// Writes go to custom volumes only: the others belong to their instance or image.
fn custom_only(kind: &str) -> Result<(), ApiError> {
    known_kind(kind)?;
    if kind != "custom" {
        return Err(ApiError::bad_request(format!(
            "Storage volumes of type {kind:?} are managed through their instance or image"
        )));
    }
    Ok(())
}

pub async fn list(
    State(d): State<AppState>,
    Path(pool): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    list_of(&d, &pool, None, &q)
}

pub async fn list_kind(
    State(d): State<AppState>,
    Path((pool, kind)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    known_kind(&kind)?;
    list_of(&d, &pool, Some(&kind), &q)
}

#[derive(Deserialize, Default)]
pub struct SourceReq {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    pool: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    refresh: bool,
    #[serde(default)]
    volume_only: bool,
    #[serde(default, rename = "refresh_exclude_older")]
    _refresh_exclude_older: IgnoredAny,
    #[serde(default, rename = "certificate")]
    _certificate: IgnoredAny,
    #[serde(default, rename = "mode")]
    _mode: IgnoredAny,
    #[serde(default, rename = "operation")]
    _operation: IgnoredAny,
    #[serde(default, rename = "secrets")]
    _secrets: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumesPost {
    name: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    content_type: String,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    config: ConfigMap,
    #[serde(default)]
    description: String,
    #[serde(default)]
    source: SourceReq,
}

async fn create_in(d: AppState, pool: String, kind: &str, req: VolumesPost) -> ApiResult {
    custom_only(kind)?;
    if !req.content_type.is_empty() && req.content_type != "filesystem" {
        return Err(ApiError::bad_request(format!(
            "Custom volumes of content type {:?} are not supported (only filesystem)",
            req.content_type
        )));
    }
    let origin = match req.source.kind.as_str() {
        "" => Origin::Empty,
        "copy" => {
            let s = &req.source;
            if !s.pool.is_empty() && s.pool != pool {
                return Err(ApiError::bad_request(
                    "Copying a volume between storage pools is not supported yet",
                ));
            }
            if s.refresh {
                return Err(ApiError::bad_request(
                    "Refreshing a volume copy is not supported",
                ));
            }
            if !s.project.is_empty() && s.project != "default" {
                return Err(ApiError::bad_request("Projects are not supported yet"));
            }
            if !s.location.is_empty() && s.location != "none" {
                return Err(ApiError::bad_request(
                    "Copying a volume from another member is not supported yet",
                ));
            }
            if s.name.is_empty() {
                return Err(ApiError::bad_request(
                    "A copy needs the source volume's name",
                ));
            }
            Origin::Copy {
                from: s.name.clone(),
                volume_only: s.volume_only,
            }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "Volume source type {other:?} is not supported (only copy)"
            )))
        }
    };
    if let Origin::Copy { from, .. } = &origin {
        // A copy can take long: it is an operation, as the client expects.
        volume::get(&d, &pool, from)?;
        let origin = Origin::Copy {
            from: from.clone(),
            volume_only: req.source.volume_only,
        };
        let url = volume::url(&pool, &req.name);
        let d2 = d.daemon.clone();
        let op = d.ops.spawn_task(
            "Copying storage volume",
            resources("storage_volumes", &[url]),
            async move {
                volume::create(&d2, &pool, &req.name, req.description, req.config, origin)
                    .await
                    .map_err(|e| e.to_string())
            },
        );
        return async_op(op.view());
    }
    volume::create(&d, &pool, &req.name, req.description, req.config, origin).await?;
    empty()
}

pub async fn create(
    State(d): State<AppState>,
    Path(pool): Path<String>,
    ApiJson(req): ApiJson<VolumesPost>,
) -> ApiResult {
    let kind = if req.kind.is_empty() {
        "custom".to_string()
    } else {
        req.kind.clone()
    };
    create_in(d, pool, &kind, req).await
}

pub async fn create_kind(
    State(d): State<AppState>,
    Path((pool, kind)): Path<(String, String)>,
    ApiJson(req): ApiJson<VolumesPost>,
) -> ApiResult {
    if !req.kind.is_empty() && req.kind != kind {
        return Err(ApiError::bad_request(format!(
            "Volume type {:?} in the request does not match the URL's {kind:?}",
            req.kind
        )));
    }
    create_in(d, pool, &kind, req).await
}

pub async fn get_one(
    State(d): State<AppState>,
    Path((pool, kind, name)): Path<(String, String, String)>,
) -> ApiResult {
    known_kind(&kind)?;
    if kind == "custom" {
        let v = volume::get(&d, &pool, &name)?;
        let etag = (v.config.clone(), v.description.clone());
        return sync_etag(
            custom_view(&d, v)?,
            &VolumeEtag {
                config: &etag.0,
                description: &etag.1,
            },
        );
    }
    let v = views(&d, &pool, Some(&kind))?
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| ApiError::not_found("Storage volume not found"))?;
    sync(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumePut {
    #[serde(default)]
    config: Option<ConfigMap>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    restore: String,
    // What a GET returned and an `incus storage volume edit` sends back unchanged.
    #[serde(rename = "name", default)]
    _name: IgnoredAny,
    #[serde(rename = "type", default)]
    _kind: IgnoredAny,
    #[serde(rename = "used_by", default)]
    _used_by: IgnoredAny,
    #[serde(rename = "location", default)]
    _location: IgnoredAny,
    #[serde(rename = "content_type", default)]
    _content_type: IgnoredAny,
    #[serde(rename = "project", default)]
    _project: IgnoredAny,
    #[serde(rename = "created_at", default)]
    _created_at: IgnoredAny,
}

async fn update(
    d: AppState,
    pool: String,
    kind: String,
    name: String,
    headers: HeaderMap,
    req: VolumePut,
    patch: bool,
) -> ApiResult {
    custom_only(&kind)?;
    let v = volume::get(&d, &pool, &name)?;
    check_if_match(
        &headers,
        &VolumeEtag {
            config: &v.config,
            description: &v.description,
        },
    )?;
    if !req.restore.is_empty() {
        volume::snapshot::restore(&d, &pool, &name, &req.restore).await?;
        return empty();
    }
    let user = volume::user_config;
    let config = match (patch, req.config) {
        (true, Some(c)) => {
            let mut merged = user(&v.config);
            merged.extend(user(&c));
            merged
        }
        (true, None) => user(&v.config),
        // The volatile keys a client read and sends back are the server's, kept anyway.
        (false, c) => user(&c.unwrap_or_default()),
    };
    let description = req.description.unwrap_or(if patch {
        v.description.clone()
    } else {
        String::new()
    });
    volume::update(&d, &pool, &name, description, config).await?;
    empty()
}

pub async fn put(
    State(d): State<AppState>,
    Path((pool, kind, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<VolumePut>,
) -> ApiResult {
    update(d, pool, kind, name, headers, req, false).await
}

pub async fn patch(
    State(d): State<AppState>,
    Path((pool, kind, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<VolumePut>,
) -> ApiResult {
    update(d, pool, kind, name, headers, req, true).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumePost {
    name: String,
    #[serde(default)]
    pool: String,
    #[serde(default)]
    migration: bool,
    #[serde(default)]
    project: String,
    #[serde(default)]
    target: Option<serde_json::Value>,
    #[serde(default, rename = "volume_only")]
    _volume_only: IgnoredAny,
    #[serde(default, rename = "source")]
    _source: IgnoredAny,
}

pub async fn rename(
    State(d): State<AppState>,
    Path((pool, kind, name)): Path<(String, String, String)>,
    ApiJson(req): ApiJson<VolumePost>,
) -> ApiResult {
    custom_only(&kind)?;
    if (!req.pool.is_empty() && req.pool != pool) || req.migration || req.target.is_some() {
        return Err(ApiError::bad_request(
            "Moving a volume to another pool or server is not supported yet",
        ));
    }
    if !req.project.is_empty() && req.project != "default" {
        return Err(ApiError::bad_request("Projects are not supported yet"));
    }
    volume::rename(&d, &pool, &name, &req.name).await?;
    empty()
}

pub async fn delete(
    State(d): State<AppState>,
    Path((pool, kind, name)): Path<(String, String, String)>,
) -> ApiResult {
    custom_only(&kind)?;
    volume::delete(&d, &pool, &name).await?;
    empty()
}

pub async fn state(
    State(d): State<AppState>,
    Path((pool, kind, name)): Path<(String, String, String)>,
) -> ApiResult {
    custom_only(&kind)?;
    let v = volume::get(&d, &pool, &name)?;
    let (d2, p2, n2) = (d.daemon.clone(), pool.clone(), name.clone());
    let used = tokio::task::spawn_blocking(move || volume::usage(&d2, &p2, &n2))
        .await
        .map_err(ApiError::internal)??;
    // Incus: the quota as total, -1 when the volume has none.
    let total: i64 = volume::recorded_size(&v.config).map_or(-1, |b| b as i64);
    sync(serde_json::json!({"usage": {"used": used, "total": total}}))
}
