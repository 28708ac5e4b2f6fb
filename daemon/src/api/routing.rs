//! In a cluster, a request about something that lives on another member is sent there and
//! its answer relayed, so that any member serves the whole cluster as Incus does:
//! - `/1.0/instances/{name}…` goes to the member the instance is on, and
//!   `/1.0/storage-pools/{pool}/volumes/custom/{name}…` to the member the volume is on;
//! - `POST /1.0/instances?target=M` (and storage/network requests with `target=M`, and
//!   `GET /1.0/resources?target=M`, a pool's `/resources` and any network request) go
//!   to M;
//! - `/1.0/operations/{id}…` goes to the member running the operation (known from the
//!   forwarded request that started it, or by asking the members).
//!
//! A forwarded request carries [`FORWARDED_HEADER`] and is never forwarded again, so a
//! stale view of where something is cannot loop a request between members.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::AppState;
use crate::cluster::member::Member;
use crate::cluster::member_api;

/// How long a member may take to say whether it runs an operation.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

pub use crate::cluster::member_api::FORWARDED_HEADER;
/// How long a read waits to be linearizable before it is served from local state.
const BARRIER_WAIT: Duration = Duration::from_millis(500);

/// Reads of cluster state that must see every acknowledged write (not streams and waits).
fn needs_fresh_read(method: &Method, path: &str) -> bool {
    method == Method::GET
        && path.starts_with("/1.0/")
        && !path.starts_with("/1.0/events")
        && !path.starts_with("/1.0/operations")
        && !path.ends_with("/websocket")
        && !path.ends_with("/sftp")
        && !path.ends_with("/console")
}
/// Async answers (operations) are small; anything bigger is passed on untouched.
const OP_ANSWER_LIMIT: usize = 1 << 20;

pub fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

enum Destination {
    Here,
    Member(String),
    /// An operation this member does not know: ask the others.
    FindOperation(String),
}

fn destination(
    d: &AppState,
    rt: &Member,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Destination {
    let Some(rest) = path.strip_prefix("/1.0/") else {
        return Destination::Here;
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let target = query_param(query, "target");
    let to_member = |name: &str| match rt.member_address(name) {
        Some(addr) => Destination::Member(addr),
        None => Destination::Here,
    };
    match segs.as_slice() {
        ["instances"] if method == Method::POST => target.map_or(Destination::Here, to_member),
        ["instances", name, ..] => {
            let name = percent_decode(name);
            match d.db.instance(&name) {
                Ok(Some(rec)) if !rec.location.is_empty() => to_member(&rec.location),
                _ => Destination::Here,
            }
        }
        ["operations", id, ..] => {
            if d.ops.get(id).is_some() {
                Destination::Here
            } else if let Some(addr) = rt.remote_op(id) {
                Destination::Member(addr)
            } else {
                Destination::FindOperation(id.to_string())
            }
        }
        ["cluster", "members", name, "state"] if method == Method::POST => to_member(name),
        // Per-member measurements: the named member's hardware and pool space.
        ["resources"] | ["storage-pools", _, "resources"] if method == Method::GET => {
            target.map_or(Destination::Here, to_member)
        }
        // A custom volume's files are on one member's share of its pool.
        ["storage-pools", pool, "volumes", "custom", name, ..] => match target {
            Some(t) => to_member(t),
            None => match d.db.volume(&percent_decode(pool), &percent_decode(name)) {
                Ok(Some(v)) if !v.location.is_empty() => to_member(&v.location),
                _ => Destination::Here,
            },
        },
        // A network with a target is that member's bridge: its state, leases, config.
        ["networks", ..] => target.map_or(Destination::Here, to_member),
        ["storage-pools", ..] if method != Method::GET => {
            target.map_or(Destination::Here, to_member)
        }
        _ => Destination::Here,
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds which other member runs operation `id`.
async fn find_operation(rt: &Member, id: &str) -> Option<String> {
    let members = rt.node().db().members().ok()?;
    for m in members.into_iter().filter(|m| m.name != rt.name()) {
        let path = format!("/1.0/operations/{id}");
        let asked = member_api::call(rt, &m.address, Method::GET, &path, None, ASK_TIMEOUT);
        if let Ok((StatusCode::OK, _)) = asked.await {
            rt.note_remote_op(id, &m.address);
            return Some(m.address);
        }
    }
    None
}

pub async fn route(State(d): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(rt) = d.cluster() else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED_HEADER) {
        return next.run(req).await;
    }
    let dest = destination(&d, &rt, req.method(), req.uri().path(), req.uri().query());
    let addr = match dest {
        Destination::Here => {
            if needs_fresh_read(req.method(), req.uri().path()) {
                // Linearizable: this read sees every write acknowledged before it began,
                // on any member. A member cut off from the leader still answers from what
                // it has (reads it can serve), after a short wait.
                let barrier = rt.node().linearizable_barrier();
                if tokio::time::timeout(BARRIER_WAIT, barrier).await.is_err() {
                    tracing::debug!("read without quorum: answering from local state");
                }
            }
            return next.run(req).await;
        }
        Destination::Member(addr) => addr,
        Destination::FindOperation(id) => match find_operation(&rt, &id).await {
            Some(addr) => addr,
            None => return next.run(req).await,
        },
    };
    req.headers_mut()
        .insert(FORWARDED_HEADER, HeaderValue::from_static("1"));
    let resp = super::forward::forward(rt.peer(), &addr, req).await;
    if resp.status() == StatusCode::ACCEPTED {
        return note_operation(&rt, &addr, resp).await;
    }
    resp
}

/// Records which member runs the operation an async answer names, and passes it on.
async fn note_operation(rt: &Arc<Member>, addr: &str, resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = match http_body_util::Limited::new(body, OP_ANSWER_LIMIT)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return super::ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("reading the answer of member {addr}: {e}"),
            )
            .into_response()
        }
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        if let Some(id) = v["metadata"]["id"].as_str() {
            rt.note_remote_op(id, addr);
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_and_names() {
        assert_eq!(query_param(Some("a=1&target=n2"), "target"), Some("n2"));
        assert_eq!(query_param(Some("target="), "target"), None);
        assert_eq!(query_param(None, "target"), None);
        assert_eq!(percent_decode("c%2D1"), "c-1");
        assert_eq!(percent_decode("abc%"), "abc%");
    }
}
