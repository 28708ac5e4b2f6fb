//! `/os/1.0/…`: the appliance's services, logs, boots and power (see `crate::os`).

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::response::{empty, sync};
use super::{ApiError, ApiResult};
use crate::os::{self, OsError, OsPaths, PowerAction};

impl From<OsError> for ApiError {
    fn from(e: OsError) -> Self {
        match e {
            OsError::NoService(_) => ApiError::not_found(e.to_string()),
            OsError::NotAppliance => ApiError::bad_request(e.to_string()),
            OsError::Io(m) => ApiError::internal(m),
            OsError::InitUnreachable { .. } | OsError::Init { .. } => ApiError::internal(e),
        }
    }
}

fn text(body: String) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

pub async fn root() -> ApiResult {
    sync([
        "/os/1.0/services",
        "/os/1.0/boots",
        "/os/1.0/debug/kernel-log",
        "/os/1.0/system",
    ])
}

pub async fn services() -> ApiResult {
    sync(os::services(&OsPaths::default()).await?)
}

pub async fn service(Path(name): Path<String>) -> ApiResult {
    sync(os::service(&OsPaths::default(), &name).await?)
}

#[derive(Deserialize, Default)]
pub struct LogQuery {
    #[serde(default)]
    bytes: Option<u64>,
}

/// At most this much of a log in one answer.
const MAX_LOG: u64 = 4 << 20;

pub async fn service_log(
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let max = q.bytes.unwrap_or(256 << 10).min(MAX_LOG);
    Ok(text(
        os::service_log(&OsPaths::default(), &name, max).await?,
    ))
}

pub async fn boots() -> ApiResult {
    sync(os::boots(&OsPaths::default()).await?)
}

pub async fn kernel_log() -> Result<Response, ApiError> {
    let log = tokio::task::spawn_blocking(os::kernel_log)
        .await
        .map_err(ApiError::internal)??;
    Ok(text(log))
}

pub async fn system() -> ApiResult {
    let (os_name, os_version) = super::server::os_release();
    sync(serde_json::json!({
        "os_name": os_name,
        "os_version": os_version,
        "hostname": crate::daemon::hostname(),
        "uptime_seconds": std::fs::read_to_string("/proc/uptime").ok()
            .and_then(|u| u.split_whitespace().next().and_then(|s| s.parse::<f64>().ok()))
            .unwrap_or(0.0),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerPost {
    action: String,
}

/// `POST /os/1.0/system {"action": "reboot" | "poweroff"}`.
pub async fn power(super::ApiJson(req): super::ApiJson<PowerPost>) -> ApiResult {
    let action = match req.action.as_str() {
        "reboot" => PowerAction::Reboot,
        "poweroff" | "shutdown" => PowerAction::PowerOff,
        other => return Err(ApiError::bad_request(format!("Unknown action {other:?}"))),
    };
    os::power(&OsPaths::default(), action).await?;
    empty()
}
