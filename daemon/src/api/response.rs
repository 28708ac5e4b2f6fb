//! Incus response envelopes: sync, async (operation) and error. Every answer carries
//! `error_code` and `error`, which Ansible and pylxd read even on success.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::operations::OperationView;

/// An error as Incus returns it: `{"type":"error","error_code":404,"error":"…"}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn forbidden() -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "not authorized")
    }
    pub fn internal(m: impl std::fmt::Display) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m.to_string())
    }
    pub fn precondition_failed(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::PRECONDITION_FAILED, m)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "type": "error",
            "status": "",
            "status_code": 0,
            "operation": "",
            "error_code": self.status.as_u16(),
            "error": self.message,
            "metadata": null,
        });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        use crate::db::DbError;
        match e {
            DbError::NotFound(m) => ApiError::not_found(format!("Not found: {m}")),
            DbError::Exists(m) => ApiError::conflict(format!("Already exists: {m}")),
            DbError::Invalid(m) => ApiError::bad_request(m),
            DbError::Unavailable(m) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Cluster unavailable: {m}"),
            ),
            e => ApiError::internal(e),
        }
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(e: crate::storage::StorageError) -> Self {
        if e.is_bad_input() {
            return ApiError::bad_request(e.to_string());
        }
        ApiError::internal(e)
    }
}

pub type ApiResult = Result<Response, ApiError>;

/// The envelope of a sync answer, serialized straight from `metadata`: no intermediate
/// `serde_json::Value` copy of what may be megabytes of instances.
#[derive(Serialize)]
struct SyncBody<T> {
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    status_code: u16,
    operation: &'static str,
    error_code: u16,
    error: &'static str,
    metadata: T,
}

/// The bytes of a sync answer with `metadata`, for handlers that serialize off the async
/// workers; [`sync_raw`] sends them.
pub fn sync_body<T: Serialize>(metadata: T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(&SyncBody {
        kind: "sync",
        status: "Success",
        status_code: 200,
        operation: "",
        error_code: 0,
        error: "",
        metadata,
    })
    .map_err(ApiError::internal)
}

pub fn sync_raw(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A sync answer with `metadata`.
pub fn sync<T: Serialize>(metadata: T) -> ApiResult {
    Ok(sync_raw(sync_body(metadata)?))
}

/// A sync answer whose ETag covers `etag_of` (the writable part of the object).
pub fn sync_etag<T: Serialize, E: Serialize>(metadata: T, etag_of: &E) -> ApiResult {
    let mut r = sync(metadata)?;
    r.headers_mut().insert(header::ETAG, etag_header(etag_of)?);
    Ok(r)
}

pub fn empty() -> ApiResult {
    sync(serde_json::Value::Object(Default::default()))
}

/// 202 with the operation and its URL in `Location`.
pub fn async_op(op: OperationView) -> ApiResult {
    let url = format!("/1.0/operations/{}", op.id);
    let body = json!({
        "type": "async",
        "status": "Operation created",
        "status_code": 100,
        "operation": url,
        "error_code": 0,
        "error": "",
        "metadata": serde_json::to_value(op).map_err(ApiError::internal)?,
    });
    let mut r = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&url).map_err(ApiError::internal)?,
    );
    Ok(r)
}

pub fn etag<E: Serialize>(v: &E) -> Result<String, ApiError> {
    let bytes = serde_json::to_vec(v).map_err(ApiError::internal)?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn etag_header<E: Serialize>(v: &E) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!("\"{}\"", etag(v)?)).map_err(ApiError::internal)
}

/// Refuses a write whose `If-Match` names another version than the current one.
pub fn check_if_match<E: Serialize>(headers: &HeaderMap, current: &E) -> Result<(), ApiError> {
    let Some(want) = headers.get(header::IF_MATCH) else {
        return Ok(());
    };
    let want = want.to_str().unwrap_or("").trim().trim_matches('"');
    if want.is_empty() || want == "*" {
        return Ok(());
    }
    if want != etag(current)? {
        return Err(ApiError::precondition_failed("ETag doesn't match"));
    }
    Ok(())
}
