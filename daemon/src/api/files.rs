//! `/1.0/instances/{name}/files` (pylxd and older clients, `X-Incus-*`/`X-LXD-*` headers)
//! and `/1.0/instances/{name}/sftp` (the incus CLI's file push/pull: HTTP upgraded to a raw
//! SFTP stream).

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use super::response::{empty, sync};
use super::{ApiError, ApiResult, AppState};
use crate::instance::rootfs_access::{FileHeaders, FsError, Pulled, RootfsAccess};

impl From<FsError> for ApiError {
    fn from(e: FsError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.to_string())
    }
}

#[derive(Deserialize)]
pub struct PathQuery {
    #[serde(default)]
    path: Option<String>,
}

fn path_of(q: &PathQuery) -> Result<String, ApiError> {
    match q.path.as_deref() {
        Some(p) if !p.is_empty() && !p.contains('\0') => Ok(p.to_string()),
        _ => Err(ApiError::bad_request("Missing path argument")),
    }
}

async fn access(d: &AppState, name: &str) -> Result<RootfsAccess, ApiError> {
    let d2 = d.clone();
    let n = name.to_string();
    Ok(
        tokio::task::spawn_blocking(move || crate::instance::rootfs_access(&d2, &n))
            .await
            .map_err(ApiError::internal)??,
    )
}

fn with_headers(mut r: Response, pairs: Vec<(String, String)>) -> Response {
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::from_str(&v)) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

pub async fn get_file(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PathQuery>,
) -> Result<Response, ApiError> {
    let path = path_of(&q)?;
    let acc = access(&d, &name).await?;
    let pulled = tokio::task::spawn_blocking(move || acc.pull(&path))
        .await
        .map_err(ApiError::internal)??;
    let headers = FileHeaders::response_headers(pulled.entry());
    let resp = match pulled {
        Pulled::File { entry, file } => {
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(
                tokio::fs::File::from_std(file),
            ));
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::CONTENT_LENGTH, entry.size.to_string()),
                ],
                body,
            )
                .into_response()
        }
        Pulled::Directory { names, .. } => sync(names)?,
        Pulled::Symlink { target, .. } => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            target,
        )
            .into_response(),
    };
    Ok(with_headers(resp, headers))
}

pub async fn post_file(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let path = path_of(&q)?;
    let fh = FileHeaders::from_lookup(|n| headers.get(n).map(|v| v.as_bytes()))?;
    // The instance is looked up before a byte of the body is read: a push to a missing
    // instance is answered at once, and its body never sent (hyper only answers a client's
    // `Expect: 100-continue` when the body is read).
    let acc = access(&d, &name).await?;
    // The body goes straight into the file as it arrives, a chunk at a time, so a push costs
    // a few buffers of memory whatever its size (as Incus copies it into the file).
    let chunks = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(chunks));
    tokio::task::spawn_blocking(move || acc.push(&path, &fh, reader))
        .await
        .map_err(ApiError::internal)??;
    empty()
}

pub async fn delete_file(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<PathQuery>,
) -> ApiResult {
    let path = path_of(&q)?;
    let acc = access(&d, &name).await?;
    tokio::task::spawn_blocking(move || acc.remove(&path))
        .await
        .map_err(ApiError::internal)??;
    empty()
}

pub async fn sftp(
    State(d): State<AppState>,
    Path(name): Path<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("sftp"));
    if !wants {
        return Err(ApiError::bad_request("Missing or invalid upgrade header"));
    }
    let acc = access(&d, &name).await?;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                if let Err(e) = crate::instance::sftp::serve(TokioIo::new(io), acc).await {
                    tracing::debug!("sftp session for {name}: {e}");
                }
            }
            Err(e) => tracing::warn!("sftp upgrade for {name}: {e}"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::UPGRADE, "sftp"), (header::CONNECTION, "Upgrade")],
    )
        .into_response())
}
