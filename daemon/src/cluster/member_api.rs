//! Calling another member's Incus API as the cluster (the cluster certificate, marked as
//! forwarded so the member answers for itself and never forwards it on): listing its
//! instances, finding an operation, driving an instance during evacuation.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use super::member::Member;
use super::peer::{empty_body, full_body};

/// Marks a request one member sent another; it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-cairn-forwarded";

/// Sends `method path` (with a JSON `body`) to the member at `addr` and returns the status
/// and the whole answer, within `timeout`.
pub async fn call(
    rt: &Member,
    addr: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let body = match body {
        Some(v) => full_body(serde_json::to_vec(v).map_err(|e| e.to_string())?),
        None => empty_body(),
    };
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(FORWARDED_HEADER, "1")
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = rt
            .peer()
            .request(addr, req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("member {addr} did not answer within {timeout:?}"))?
}

/// [`call`] for an Incus JSON answer: a non-2xx status becomes its `error` text.
pub async fn call_json(
    rt: &Member,
    addr: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let (status, bytes) = call(rt, addr, method, path, body, timeout).await?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !status.is_success() {
        return Err(v["error"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("answered {status}")));
    }
    Ok(v)
}

/// POSTs the bytes `reader` yields, streamed, to `path` on the member at `addr` (an
/// instance's files moving there) and returns the status and the whole answer. No time
/// bound: a large volume takes as long as it takes, and a dead member fails the stream.
pub async fn post_stream(
    rt: &Member,
    addr: &str,
    path: &str,
    headers: &[(&'static str, String)],
    reader: impl tokio::io::AsyncRead + Send + 'static,
) -> Result<(StatusCode, Bytes), super::peer::PeerError> {
    let mut req = http::Request::post(path);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req
        .body(super::peer::reader_body(reader))
        .map_err(|source| super::peer::PeerError::Address {
            call: super::peer::Call {
                method: Method::POST,
                addr: addr.to_string(),
                path: path.split('?').next().unwrap_or(path).to_string(),
            },
            source,
        })?;
    let resp = rt.peer().request(addr, req).await?;
    let status = resp.status();
    // An answer that cannot be read is an empty one: the status says what happened.
    let answer = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Ok((status, answer))
}
