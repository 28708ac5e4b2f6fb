//! `/1.0/instances/{name}/snapshots[/{snap}]`.

use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::response::{async_op, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState, RecursionQuery};
use crate::instance::{self, snapshot};
use crate::operations::{resources, Resources};

pub async fn list(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RecursionQuery>,
) -> ApiResult {
    instance::get(&d, &name)?;
    if q.recursive() {
        return sync(snapshot::list(&d, &name)?);
    }
    let urls: Vec<String> =
        d.db.snapshots(&name)?
            .iter()
            .map(|s| snapshot::url(&name, &s.name))
            .collect();
    sync(urls)
}

pub async fn get_one(
    State(d): State<AppState>,
    Path((name, snap)): Path<(String, String)>,
) -> ApiResult {
    let s = snapshot::get_snapshot(&d, &name, &snap)?;
    sync_etag(snapshot::view(&d, &s)?, &s.expires_at)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsPost {
    #[serde(default)]
    name: String,
    #[serde(default)]
    stateful: bool,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

fn op_resources(name: &str, snap: &str) -> Resources {
    let mut r = resources("instances", &[instance::url(name)]);
    r.insert(
        "instances_snapshots".into(),
        vec![snapshot::url(name, snap)],
    );
    r
}

pub async fn create(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SnapshotsPost>,
) -> ApiResult {
    let snap = if req.name.is_empty() {
        // Incus names unnamed snapshots snap0, snap1, …
        let existing = d.db.snapshots(&name)?;
        (0..)
            .map(|i| format!("snap{i}"))
            .find(|n| !existing.iter().any(|s| &s.name == n))
            .unwrap_or_else(|| "snap".into())
    } else {
        req.name.clone()
    };
    snapshot::precheck_create(&d, &name, &snap, req.stateful)?;
    let d2 = d.daemon.clone();
    let (n, s) = (name.clone(), snap.clone());
    let expires = req.expires_at;
    let op = d.ops.spawn_task(
        "Snapshotting instance",
        op_resources(&name, &snap),
        async move {
            snapshot::create(d2, &n, &s, expires)
                .await
                .map_err(|e| e.to_string())
        },
    );
    async_op(op.view())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPost {
    name: String,
    #[serde(default)]
    migration: bool,
    #[serde(default)]
    target: Option<serde_json::Value>,
    #[serde(default)]
    live: bool,
}

pub async fn rename(
    State(d): State<AppState>,
    Path((name, snap)): Path<(String, String)>,
    ApiJson(req): ApiJson<SnapshotPost>,
) -> ApiResult {
    if req.migration || req.target.is_some() || req.live {
        return Err(ApiError::bad_request("Snapshot migration is not supported"));
    }
    snapshot::get_snapshot(&d, &name, &snap)?;
    let d2 = d.daemon.clone();
    let (n, from, to) = (name.clone(), snap.clone(), req.name.clone());
    let op = d.ops.spawn_task(
        "Renaming snapshot",
        op_resources(&name, &snap),
        async move {
            snapshot::rename(d2, &n, &from, &to)
                .await
                .map_err(|e| e.to_string())
        },
    );
    async_op(op.view())
}

pub async fn delete(
    State(d): State<AppState>,
    Path((name, snap)): Path<(String, String)>,
) -> ApiResult {
    snapshot::get_snapshot(&d, &name, &snap)?;
    let d2 = d.daemon.clone();
    let (n, s) = (name.clone(), snap.clone());
    let op = d.ops.spawn_task(
        "Deleting snapshot",
        op_resources(&name, &snap),
        async move {
            snapshot::delete(d2, &n, &s)
                .await
                .map_err(|e| e.to_string())
        },
    );
    async_op(op.view())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPut {
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

pub async fn put(
    State(d): State<AppState>,
    Path((name, snap)): Path<(String, String)>,
    ApiJson(req): ApiJson<SnapshotPut>,
) -> ApiResult {
    let mut s = snapshot::get_snapshot(&d, &name, &snap)?;
    // Go's zero time means "never".
    s.expires_at = req.expires_at.filter(|t| t.timestamp() > 0);
    d.write(vec![crate::db::Command::UpdateSnapshot(s.clone())])
        .await?;
    // The change is already stored; the operation only reports it, as Incus's PUT is async.
    let op = d
        .ops
        .spawn_task("Updating snapshot", op_resources(&name, &snap), async {
            Ok(())
        });
    async_op(op.view())
}
