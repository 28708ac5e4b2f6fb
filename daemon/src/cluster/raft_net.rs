//! Raft's member-to-member messages behind one trait object, [`Transport`], so the Raft
//! core does not know how they travel. The daemon's transport is `transport.rs` (HTTPS with
//! mutual TLS under `/internal/cluster/…`); [`LocalRouter`] delivers them in-process, with
//! partitions and stopped members under the test's control, for tests and the benchmark.
//!
//! Every message is serde-serializable as it is; snapshots travel separately as a whole
//! SQLite file.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use super::node::{Node, WeakNode};
use super::types::{ClusterError, NodeId, Receipt, Request, Snapshot, TypeConfig, Vote};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message from one member to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Rpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// A client write forwarded to the leader.
    Write(Request),
    /// A follower asks the leader for the index a linearizable read must wait for.
    ReadIndex,
    /// A member asks the leader how long ago it heard from each member.
    Liveness,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Write(Result<Receipt, ClusterError>),
    ReadIndex(Result<u64, ClusterError>),
    /// Milliseconds since each member was heard from.
    Liveness(std::collections::BTreeMap<NodeId, u64>),
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("member {target} unreachable: {detail}")]
pub struct TransportError {
    pub target: NodeId,
    pub detail: String,
}

/// How members reach each other.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        from: NodeId,
        target: NodeId,
        rpc: Rpc,
    ) -> BoxFuture<'_, Result<Reply, TransportError>>;

    /// Sends a whole snapshot; the receiver installs it with [`Node::receive_snapshot`].
    fn send_snapshot(
        &self,
        from: NodeId,
        target: NodeId,
        vote: Vote,
        snapshot: Snapshot,
    ) -> BoxFuture<'_, Result<SnapshotResponse<NodeId>, TransportError>>;
}

/// openraft's view of the transport: one client per target member.
pub struct NetworkFactory {
    pub(crate) from: NodeId,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) retry_every: Duration,
}

pub struct Network {
    from: NodeId,
    target: NodeId,
    transport: Arc<dyn Transport>,
    retry_every: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Network {
        Network {
            from: self.from,
            target,
            transport: self.transport.clone(),
            retry_every: self.retry_every,
        }
    }
}

type RpcResult<T> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId>>>;

impl Network {
    async fn call(&self, action: RPCTypes, rpc: Rpc, ttl: Duration) -> RpcResult<Reply> {
        let fut = self.transport.call(self.from, self.target, rpc);
        match tokio::time::timeout(ttl, fut).await {
            Err(_) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.target,
                timeout: ttl,
            })),
            Ok(Err(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    // openraft's error type is large; it is what the trait returns.
    #[allow(clippy::result_large_err)]
    fn unexpected<T>(&self, reply: Reply) -> RpcResult<T> {
        let e = TransportError {
            target: self.target,
            detail: format!("unexpected reply {reply:?}"),
        };
        Err(RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let reply = self
            .call(
                RPCTypes::AppendEntries,
                Rpc::AppendEntries(rpc),
                option.hard_ttl(),
            )
            .await?;
        match reply {
            Reply::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => self.unexpected(other),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let reply = self
            .call(RPCTypes::Vote, Rpc::Vote(rpc), option.hard_ttl())
            .await?;
        match reply {
            Reply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => self.unexpected(other),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let ttl = option.hard_ttl();
        let send = self
            .transport
            .send_snapshot(self.from, self.target, vote, snapshot);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(ttl, send) => match r {
                Err(_) => Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.from,
                    target: self.target,
                    timeout: ttl,
                })),
                Ok(Err(e)) => Err(StreamingError::Unreachable(Unreachable::new(&e))),
                Ok(Ok(resp)) => Ok(resp),
            },
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.retry_every))
    }
}

/// In-process delivery between members of one process, with faults on demand: members
/// can be cut into groups that do not hear each other, and stopped members are dropped.
#[derive(Default)]
pub struct LocalRouter {
    state: Mutex<RouterState>,
}

#[derive(Default)]
struct RouterState {
    members: HashMap<NodeId, WeakNode>,
    /// Members in different groups cannot talk; members not listed are in group 0.
    groups: HashMap<NodeId, u32>,
    /// Whether a call across a partition hangs (packets dropped on a real link) instead of
    /// failing at once (refused).
    drop_silently: bool,
}

impl RouterState {
    fn reachable(&self, from: NodeId, target: NodeId) -> bool {
        let group = |id| self.groups.get(&id).copied().unwrap_or(0);
        group(from) == group(target)
    }

    fn target(&self, from: NodeId, target: NodeId) -> Result<Node, TransportError> {
        let unreachable = |detail: &str| TransportError {
            target,
            detail: detail.to_string(),
        };
        if !self.reachable(from, target) {
            return Err(unreachable("partitioned"));
        }
        self.members
            .get(&target)
            .and_then(WeakNode::upgrade)
            .ok_or_else(|| unreachable("not running"))
    }
}

impl LocalRouter {
    pub fn new() -> Arc<LocalRouter> {
        Arc::new(LocalRouter::default())
    }

    fn lock(&self) -> MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a started member reachable.
    pub fn register(&self, node: &Node) {
        self.lock().members.insert(node.id(), node.downgrade());
    }

    /// Makes a member unreachable, as if its process died.
    pub fn unregister(&self, id: NodeId) {
        self.lock().members.remove(&id);
    }

    /// Cuts the members into groups that only hear their own group.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut st = self.lock();
        st.groups.clear();
        for (g, ids) in groups.iter().enumerate() {
            for id in *ids {
                st.groups.insert(*id, g as u32 + 1);
            }
        }
    }

    /// Cuts one member off from all others.
    pub fn isolate(&self, id: NodeId) {
        let mut st = self.lock();
        st.groups.insert(id, u32::MAX);
    }

    /// Heals every partition.
    pub fn heal(&self) {
        self.lock().groups.clear();
    }

    /// From now on a call across a partition never answers, as on a cut link where packets
    /// are dropped, rather than failing at once as on a refused connection.
    pub fn drop_silently(&self) {
        self.lock().drop_silently = true;
    }

    fn silent(&self) -> bool {
        self.lock().drop_silently
    }

    fn check_reply(&self, from: NodeId, target: NodeId) -> Result<(), TransportError> {
        // A reply crossing a partition made while the call was in flight is lost too.
        if self.lock().reachable(from, target) {
            Ok(())
        } else {
            Err(TransportError {
                target,
                detail: "partitioned".into(),
            })
        }
    }
}

impl Transport for LocalRouter {
    fn call(
        &self,
        from: NodeId,
        target: NodeId,
        rpc: Rpc,
    ) -> BoxFuture<'_, Result<Reply, TransportError>> {
        Box::pin(async move {
            let target_node = self.lock().target(from, target);
            let node = match target_node {
                Err(_) if self.silent() => return std::future::pending().await,
                other => other?,
            };
            let reply = node.handle(rpc).await;
            if self.check_reply(from, target).is_err() && self.silent() {
                return std::future::pending().await;
            }
            self.check_reply(from, target)?;
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
            let node = self.lock().target(from, target)?;
            let mut file = snapshot
                .snapshot
                .file
                .try_clone()
                .map_err(|e| TransportError {
                    target,
                    detail: format!("reading snapshot: {e}"),
                })?;
            // The clone shares the file offset: read from the start.
            std::io::Seek::rewind(&mut file).map_err(|e| TransportError {
                target,
                detail: format!("reading snapshot: {e}"),
            })?;
            let resp = node
                .receive_snapshot(vote, snapshot.meta, tokio::fs::File::from_std(file))
                .await
                .map_err(|e| TransportError {
                    target,
                    detail: e.to_string(),
                })?;
            self.check_reply(from, target)?;
            Ok(resp)
        })
    }
}
