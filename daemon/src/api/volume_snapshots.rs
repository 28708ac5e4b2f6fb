//! `/1.0/storage-pools/{pool}/volumes/custom/{name}/snapshots[/{snapshot}]`.

use axum::extract::{Path, Query, State};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::response::{async_op, empty, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState, RecursionQuery};
use crate::db::records::{ConfigMap, VolumeSnapshotRecord};
use crate::operations::resources;
use crate::volume::{self, snapshot};

#[derive(Serialize)]
struct SnapshotView {
    name: String,
    config: ConfigMap,
    content_type: &'static str,
    created_at: chrono::DateTime<chrono::Utc>,
    description: String,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Serialize)]
struct SnapshotEtag<'a> {
    description: &'a str,
}

/// Named `<volume>/<snapshot>`, as Incus names them.
fn view(volume: &str, s: VolumeSnapshotRecord) -> SnapshotView {
    SnapshotView {
        name: format!("{volume}/{}", s.name),
        config: s.config,
        content_type: "filesystem",
        created_at: s.created_at,
        description: s.description,
        expires_at: None,
    }
}

fn custom(kind: &str) -> Result<(), ApiError> {
    if kind != "custom" {
        return Err(ApiError::bad_request(format!(
            "Snapshots of {kind:?} volumes are made through their instance"
        )));
    }
    Ok(())
}

/// Go's zero time, what the CLI sends when no expiry was asked for.
fn no_expiry(v: &Option<String>) -> Result<(), ApiError> {
    match v.as_deref() {
        None | Some("") | Some("0001-01-01T00:00:00Z") => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "Snapshot expiry is not supported yet",
        )),
    }
}

pub async fn list(
    State(d): State<AppState>,
    Path((pool, kind, name)): Path<(String, String, String)>,
    Query(q): Query<RecursionQuery>,
) -> ApiResult {
    custom(&kind)?;
    let rec = volume::get(&d, &pool, &name)?;
    if q.recursive() {
        return sync(
            rec.snapshots
                .into_iter()
                .map(|s| view(&name, s))
                .collect::<Vec<_>>(),
        );
    }
    sync(
        rec.snapshots
            .iter()
            .map(|s| format!("{}/snapshots/{}", volume::url(&pool, &name), s.name))
            .collect::<Vec<_>>(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsPost {
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_at: Option<String>,
}

pub async fn create(
    State(d): State<AppState>,
    Path((pool, kind, name)): Path<(String, String, String)>,
    ApiJson(req): ApiJson<SnapshotsPost>,
) -> ApiResult {
    custom(&kind)?;
    no_expiry(&req.expires_at)?;
    volume::get(&d, &pool, &name)?;
    let d2 = d.daemon.clone();
    let op = d.ops.spawn_task(
        "Snapshotting storage volume",
        resources("storage_volumes", &[volume::url(&pool, &name)]),
        async move {
            snapshot::create(&d2, &pool, &name, &req.name)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
    async_op(op.view())
}

pub async fn get_one(
    State(d): State<AppState>,
    Path((pool, kind, name, snap)): Path<(String, String, String, String)>,
) -> ApiResult {
    custom(&kind)?;
    let s = snapshot::get_snapshot(&d, &pool, &name, &snap)?;
    let etag = s.description.clone();
    sync_etag(view(&name, s), &SnapshotEtag { description: &etag })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPut {
    #[serde(default)]
    description: String,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(rename = "name", default)]
    _name: IgnoredAny,
    #[serde(rename = "config", default)]
    _config: IgnoredAny,
    #[serde(rename = "content_type", default)]
    _content_type: IgnoredAny,
    #[serde(rename = "created_at", default)]
    _created_at: IgnoredAny,
}

pub async fn put(
    State(d): State<AppState>,
    Path((pool, kind, name, snap)): Path<(String, String, String, String)>,
    ApiJson(req): ApiJson<SnapshotPut>,
) -> ApiResult {
    custom(&kind)?;
    no_expiry(&req.expires_at)?;
    snapshot::set_description(&d, &pool, &name, &snap, req.description).await?;
    empty()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPost {
    name: String,
    #[serde(default)]
    migration: bool,
    #[serde(default)]
    target: Option<serde_json::Value>,
}

pub async fn rename(
    State(d): State<AppState>,
    Path((pool, kind, name, snap)): Path<(String, String, String, String)>,
    ApiJson(req): ApiJson<SnapshotPost>,
) -> ApiResult {
    custom(&kind)?;
    if req.migration || req.target.is_some() {
        return Err(ApiError::bad_request(
            "Moving a volume snapshot to another server is not supported",
        ));
    }
    snapshot::get_snapshot(&d, &pool, &name, &snap)?;
    let d2 = d.daemon.clone();
    let op = d.ops.spawn_task(
        "Renaming storage volume snapshot",
        resources("storage_volumes", &[volume::url(&pool, &name)]),
        async move {
            snapshot::rename(&d2, &pool, &name, &snap, &req.name)
                .await
                .map_err(|e| e.to_string())
        },
    );
    async_op(op.view())
}

pub async fn delete(
    State(d): State<AppState>,
    Path((pool, kind, name, snap)): Path<(String, String, String, String)>,
) -> ApiResult {
    custom(&kind)?;
    snapshot::get_snapshot(&d, &pool, &name, &snap)?;
    let d2 = d.daemon.clone();
    let op = d.ops.spawn_task(
        "Deleting storage volume snapshot",
        resources("storage_volumes", &[volume::url(&pool, &name)]),
        async move {
            snapshot::delete(&d2, &pool, &name, &snap)
                .await
                .map_err(|e| e.to_string())
        },
    );
    async_op(op.view())
}
