//! The daemon's member-to-member transport: Raft messages as JSON over HTTPS with mutual
//! TLS on the cluster certificate, under `/internal/cluster/…` on the API port.
//!
//! Client side: [`HttpTransport`] implements [`Transport`] with the pooled, keep-alive
//! [`PeerClient`] (one TLS connection per peer is reused; messages are pipelined by the
//! pool opening more connections when calls overlap). Server side: [`serve_rpc`] and
//! [`serve_snapshot`] hand what arrives to the local node. A member never calls itself
//! through the network: Raft does not send to itself, and the write path submits locally
//! when this member leads.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use futures::TryStreamExt;
use openraft::raft::SnapshotResponse;

use super::member::{Liveness, Member};
use super::node::WeakNode;
use super::peer::PeerClient;
use super::raft_net::{BoxFuture, Reply, Rpc, Transport, TransportError};
use super::types::{NodeId, Snapshot, SnapshotMeta, Vote};

/// Raft messages.
pub const RPC_PATH: &str = "/internal/cluster/raft";
/// Whole snapshots, streamed.
pub const SNAPSHOT_PATH: &str = "/internal/cluster/snapshot";
/// Who sends: the sender's member id (liveness bookkeeping only; authentication is the
/// cluster certificate).
pub const FROM_HEADER: &str = "x-cairn-from";
const VOTE_HEADER: &str = "x-cairn-vote";
const META_HEADER: &str = "x-cairn-snapshot-meta";

/// A single message may wait this long (a forwarded write waits for its commit).
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

pub struct HttpTransport {
    peer: PeerClient,
    node: OnceLock<WeakNode>,
    liveness: Arc<Liveness>,
}

impl HttpTransport {
    pub fn new(peer: PeerClient, liveness: Arc<Liveness>) -> Arc<HttpTransport> {
        Arc::new(HttpTransport {
            peer,
            node: OnceLock::new(),
            liveness,
        })
    }

    /// Gives the transport the node whose membership tells where members are.
    pub fn bind(&self, node: WeakNode) {
        let _ = self.node.set(node);
    }

    fn address(&self, target: NodeId) -> Result<String, TransportError> {
        self.node
            .get()
            .and_then(|n| n.upgrade())
            .and_then(|n| {
                n.metrics()
                    .membership_config
                    .membership()
                    .get_node(&target)
                    .map(|b| b.addr.clone())
            })
            .ok_or_else(|| TransportError {
                target,
                detail: "address unknown (not in the membership)".into(),
            })
    }
}

impl Transport for HttpTransport {
    fn call(
        &self,
        from: NodeId,
        target: NodeId,
        rpc: Rpc,
    ) -> BoxFuture<'_, Result<Reply, TransportError>> {
        Box::pin(async move {
            let addr = self.address(target)?;
            // The target's id travels with the message: an address can change hands (a
            // member removed, another joined at its address) and must not get its mail.
            let path = format!("{RPC_PATH}?from={from}&to={target}");
            let reply: Reply = self
                .peer
                .post_json(&addr, &path, &rpc, RPC_TIMEOUT)
                .await
                .map_err(|e| TransportError {
                    target,
                    detail: e.to_string(),
                })?;
            self.liveness.touch(target);
            Ok(reply)
        })
    }

    fn send_snapshot(
        &self,
        from: NodeId,
        target: NodeId,
        vote: Vote,
        snapshot: Snapshot,
    ) -> BoxFuture<'_, Result<SnapshotResponse<NodeId>, TransportError>> {
        Box::pin(async move {
            let err = |detail: String| TransportError { target, detail };
            let addr = self.address(target)?;
            let vote_json = serde_json::to_string(&vote).map_err(|e| err(e.to_string()))?;
            let meta_json =
                serde_json::to_string(&snapshot.meta).map_err(|e| err(e.to_string()))?;
            let file = snapshot
                .snapshot
                .file
                .try_clone()
                .map_err(|e| err(format!("reopening snapshot: {e}")))?;
            let mut file = tokio::fs::File::from_std(file);
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| err(format!("rewinding snapshot: {e}")))?;
            let stream = tokio_util::io::ReaderStream::new(file);
            let req = Request::post(format!("{SNAPSHOT_PATH}?from={from}&to={target}"))
                .header(VOTE_HEADER, vote_json)
                .header(META_HEADER, meta_json)
                .body(Body::from_stream(stream))
                .map_err(|e| err(e.to_string()))?;
            let exchange = async {
                let resp = self
                    .peer
                    .request(&addr, req)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                let status = resp.status();
                use http_body_util::BodyExt;
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| err(format!("reading answer: {e}")))?
                    .to_bytes();
                if !status.is_success() {
                    return Err(err(format!(
                        "snapshot refused ({status}): {}",
                        String::from_utf8_lossy(&body)
                    )));
                }
                serde_json::from_slice(&body).map_err(|e| err(format!("decoding answer: {e}")))
            };
            let r = tokio::time::timeout(SNAPSHOT_TIMEOUT, exchange)
                .await
                .map_err(|_| err("snapshot transfer timed out".into()))??;
            self.liveness.touch(target);
            Ok(r)
        })
    }
}

fn json_answer<T: serde::Serialize>(status: StatusCode, v: &T) -> axum::response::Response {
    match serde_json::to_vec(v) {
        Ok(body) => axum::response::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap_or_default(),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn plain(status: StatusCode, msg: String) -> axum::response::Response {
    let mut r = axum::response::Response::new(Body::from(msg));
    *r.status_mut() = status;
    r
}

fn param(query: Option<&str>, key: &str) -> Option<NodeId> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn sender(query: Option<&str>) -> Option<NodeId> {
    param(query, "from")
}

/// Refuses a message meant for another member id (this address used to be that member's).
fn misdirected(rt: &Member, query: Option<&str>) -> Option<axum::response::Response> {
    match param(query, "to") {
        Some(to) if to != rt.id() => Some(plain(
            StatusCode::MISDIRECTED_REQUEST,
            format!("message for member {to} reached member {}", rt.id()),
        )),
        _ => None,
    }
}

/// `POST /internal/cluster/raft`: one message from another member.
pub async fn serve_rpc(
    rt: Arc<Member>,
    query: Option<&str>,
    body: bytes::Bytes,
) -> axum::response::Response {
    if let Some(r) = misdirected(&rt, query) {
        return r;
    }
    if let Some(from) = sender(query) {
        rt.liveness().touch(from);
    }
    let rpc: Rpc = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("decoding message: {e}")),
    };
    let reply = match rpc {
        Rpc::Liveness => Reply::Liveness(rt.liveness().view()),
        rpc => rt.node().handle(rpc).await,
    };
    json_answer(StatusCode::OK, &reply)
}

/// `POST /internal/cluster/snapshot`: a whole snapshot from the leader, streamed to disk
/// and installed.
pub async fn serve_snapshot(
    rt: Arc<Member>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> axum::response::Response {
    if let Some(r) = misdirected(&rt, query) {
        return r;
    }
    if let Some(from) = sender(query) {
        rt.liveness().touch(from);
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (Some(vote), Some(meta)) = (header(VOTE_HEADER), header(META_HEADER)) else {
        return plain(StatusCode::BAD_REQUEST, "missing snapshot headers".into());
    };
    let vote: Vote = match serde_json::from_str(&vote) {
        Ok(v) => v,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("vote: {e}")),
    };
    let meta: SnapshotMeta = match serde_json::from_str(&meta) {
        Ok(v) => v,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("snapshot meta: {e}")),
    };
    let stream = body
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let reader = tokio_util::io::StreamReader::new(stream);
    match rt.node().receive_snapshot(vote, meta, reader).await {
        Ok(r) => json_answer(StatusCode::OK, &r),
        Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::param;

    #[test]
    fn sender_and_target_ids_from_the_query() {
        let q = Some("from=1&to=12");
        assert_eq!(param(q, "from"), Some(1));
        assert_eq!(param(q, "to"), Some(12));
        assert_eq!(param(Some("too=3"), "to"), None);
        assert_eq!(param(Some("to="), "to"), None);
        assert_eq!(param(None, "to"), None);
    }
}
