//! `/1.0/operations`: list, get, wait, cancel, and the websocket endpoint of websocket
//! operations (exec streams).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::response::{empty, sync};
use super::{ApiError, ApiResult, AppState, RecursionQuery};
use crate::operations::OpClass;
use crate::trust;

pub async fn list(State(d): State<AppState>, Query(q): Query<RecursionQuery>) -> ApiResult {
    let full = q.recursive();
    let mut by_status: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    trust::forget_spent_tokens(&d)?;
    let views = d.ops.all().iter().map(|op| op.view()).collect::<Vec<_>>();
    for v in views.into_iter().chain(trust::tokens_held_elsewhere(&d)?) {
        let key = v.status.to_lowercase();
        let item = if full {
            serde_json::to_value(&v).map_err(ApiError::internal)?
        } else {
            serde_json::Value::String(format!("/1.0/operations/{}", v.id))
        };
        by_status.entry(key).or_default().push(item);
    }
    sync(by_status)
}

pub async fn get_op(State(d): State<AppState>, Path(id): Path<String>) -> ApiResult {
    trust::forget_spent_tokens(&d)?;
    if let Some(op) = d.ops.get(&id) {
        return sync(op.view());
    }
    let elsewhere = trust::tokens_held_elsewhere(&d)?;
    match elsewhere.into_iter().find(|v| v.id == id) {
        Some(v) => sync(v),
        None => Err(ApiError::not_found("Operation not found")),
    }
}

/// Cancelling a token operation revokes the token: its record goes first (replicated), so
/// a cancel that cannot be written fails and leaves the operation running. A token whose
/// operation is on no reachable member (the member that issued it is down) is still named
/// by its operation id in the record, and revoked here.
pub async fn cancel(State(d): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let Some(op) = d.ops.get(&id) else {
        if trust::revoke_operation(&d, &id).await? {
            return empty();
        }
        return Err(ApiError::not_found("Operation not found"));
    };
    if !op.may_cancel() {
        return Err(ApiError::bad_request("This operation can't be cancelled"));
    }
    if op.class() == OpClass::Token {
        trust::revoke_operation(&d, &id).await?;
    }
    if !op.cancel() {
        return Err(ApiError::bad_request("This operation can't be cancelled"));
    }
    empty()
}

#[derive(Deserialize, Default)]
pub struct WaitQuery {
    #[serde(default)]
    timeout: Option<i64>,
}

pub async fn wait(
    State(d): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult {
    let op = d
        .ops
        .get(&id)
        .ok_or_else(|| ApiError::not_found("Operation not found"))?;
    let t = q
        .timeout
        .filter(|t| *t >= 0)
        .map(|t| Duration::from_secs(t as u64));
    op.wait(t).await;
    sync(op.view())
}

#[derive(Deserialize, Default)]
pub struct WsQuery {
    #[serde(default)]
    secret: String,
}

pub async fn websocket(
    State(d): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Result<axum::response::Response, ApiError> {
    let target = d
        .websocket_target(&id)
        .ok_or_else(|| ApiError::not_found("Operation not found"))?;
    let secret = q.secret;
    // Check the secret before upgrading, so a wrong one gets an HTTP error.
    target
        .check_secret(&secret)
        .map_err(|_| ApiError::forbidden())?;
    Ok(ws
        .on_upgrade(move |socket| async move {
            if let Err(e) = target.connect(&secret, socket) {
                tracing::warn!("websocket for operation {id}: {e}");
            }
        })
        .into_response())
}
