//! The daemon's member-to-member transport: Raft messages as JSON over HTTPS with mutual
//! TLS on the cluster certificate, under `/internal/cluster/…` on the API port.
//!
//! Client side: [`HttpTransport`] implements [`Transport`] with the pooled, keep-alive
//! [`PeerClient`] (one TLS connection per peer is reused; messages are pipelined by the
//! pool opening more connections when calls overlap). Server side: `api/cluster.rs` parses
//! what arrives (the same paths, query and headers as here), checks it with [`admit`] and
//! hands it to [`handle_rpc`] or the node's snapshot install. A member never calls itself
//! through the network: Raft does not send to itself, and the write path submits locally
//! when this member leads.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::Request;
use openraft::raft::SnapshotResponse;

use super::member::{Liveness, Member};
use super::node::WeakNode;
use super::peer::PeerClient;
use super::raft_net::{BoxFuture, Reply, Rpc, Transport, TransportError};
use super::types::{NodeId, Snapshot, Vote};

/// Raft messages.
pub const RPC_PATH: &str = "/internal/cluster/raft";
/// Whole snapshots, streamed.
pub const SNAPSHOT_PATH: &str = "/internal/cluster/snapshot";
/// Who sends: the sender's member id (liveness bookkeeping only; authentication is the
/// cluster certificate).
pub const FROM_HEADER: &str = "x-cairn-from";
/// A snapshot's vote and metadata (JSON) travel in these headers, its file as the body.
pub const VOTE_HEADER: &str = "x-cairn-vote";
pub const META_HEADER: &str = "x-cairn-snapshot-meta";

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
            let req = Request::post(format!("{SNAPSHOT_PATH}?from={from}&to={target}"))
                .header(VOTE_HEADER, vote_json)
                .header(META_HEADER, meta_json)
                .body(super::peer::reader_body(file))
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

fn param(query: Option<&str>, key: &str) -> Option<NodeId> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Who a message is from and for, as the sender put them in the query (`?from=1&to=2`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Envelope {
    pub from: Option<NodeId>,
    pub to: Option<NodeId>,
}

impl Envelope {
    pub fn from_query(query: Option<&str>) -> Envelope {
        Envelope {
            from: param(query, "from"),
            to: param(query, "to"),
        }
    }
}

/// A message meant for another member id reached this one (this address used to be that
/// member's).
#[derive(Debug, thiserror::Error)]
#[error("message for member {to} reached member {this}")]
pub struct Misdirected {
    pub to: NodeId,
    pub this: NodeId,
}

/// Checks that a message is for this member and notes that its sender is alive; done
/// before anything else about the message is looked at.
pub fn admit(rt: &Member, envelope: Envelope) -> Result<(), Misdirected> {
    if let Some(to) = envelope.to.filter(|to| *to != rt.id()) {
        return Err(Misdirected { to, this: rt.id() });
    }
    if let Some(from) = envelope.from {
        rt.liveness().touch(from);
    }
    Ok(())
}

/// One Raft message from another member, once [`admit`]ted.
pub async fn handle_rpc(rt: &Member, rpc: Rpc) -> Reply {
    match rpc {
        Rpc::Liveness => Reply::Liveness(rt.liveness().view()),
        rpc => rt.node().handle(rpc).await,
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
