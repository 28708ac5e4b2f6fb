//! A cluster member: its Raft instance over the durable log and the SQLite state machine,
//! the write path (group commit, forwarding to the leader, bounded waits) and
//! linearizable reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::raft::{ClientWriteResponse, SnapshotResponse};
use openraft::{BasicNode, ChangeMembers, RaftMetrics, SnapshotPolicy};
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use super::log_store::{LogStore, DEFAULT_COMPACT_BYTES};
use super::raft_net::{NetworkFactory, Reply, Rpc, Transport};
use super::state_machine::StateMachine;
use super::types::{
    Batch, ClusterError, NodeId, Raft, Receipt, Request, Snapshot, SnapshotFile, SnapshotMeta,
    TypeConfig, Vote,
};
use crate::db::{Command, Db, RequestOutcome};

/// How a member runs. [`Config::new`] gives the daemon's defaults; tests shorten the
/// timeouts.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: NodeId,
    /// Holds `raft.log` and `snapshots/`.
    pub dir: PathBuf,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long a write or a linearizable read may wait for a quorum before it fails with
    /// [`ClusterError::NoQuorum`].
    pub write_timeout: Duration,
    /// A snapshot is taken after this many entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for followers that lag a little.
    pub keep_after_snapshot: u64,
    /// Most requests carried by one log entry.
    pub max_batch: usize,
    /// Batches proposed but not yet committed at once.
    pub max_inflight_batches: usize,
    /// The log file is rewritten with only its live part past this size.
    pub log_compact_bytes: u64,
}

impl Config {
    pub fn new(id: NodeId, dir: PathBuf) -> Config {
        Config {
            id,
            dir,
            // openraft 0.9 has a follower wait election_timeout_max (its leader lease) plus a
            // random election timeout after the last heartbeat: 0.75-1 s here, so writes
            // resume about a second after a leader dies, while a heartbeat would have to
            // be late by 7 intervals for a needless election.
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(250),
            election_timeout_max: Duration::from_millis(500),
            write_timeout: Duration::from_secs(5),
            snapshot_every: 20_000,
            keep_after_snapshot: 5_000,
            max_batch: 1024,
            max_inflight_batches: 2,
            log_compact_bytes: DEFAULT_COMPACT_BYTES,
        }
    }

    /// A heartbeat other than the default (the seed's `cluster.heartbeat_ms`), with the
    /// election timeouts in the default's proportions: 2.5 and 5 heartbeats. openraft also
    /// uses the heartbeat as the timeout of each AppendEntries call, so it must exceed the
    /// slowest round trip members see, or leaders are deposed while healthy.
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Config {
        self.heartbeat = heartbeat;
        self.election_timeout_min = heartbeat * 5 / 2;
        self.election_timeout_max = heartbeat * 5;
        self
    }

    fn raft_config(&self) -> Result<openraft::Config, ClusterError> {
        let ms = |d: Duration| d.as_millis() as u64;
        openraft::Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            install_snapshot_timeout: ms(self.write_timeout).max(1000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Start {
            id: self.id,
            detail: format!("raft configuration: {e}"),
        })
    }
}

struct Proposal {
    request: Request,
    reply: oneshot::Sender<Result<Receipt, ClusterError>>,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    db: Arc<Db>,
    transport: Arc<dyn Transport>,
    config: Config,
    proposals: mpsc::UnboundedSender<Proposal>,
    proposer: Mutex<Option<JoinHandle<()>>>,
    /// The state machine's applied index.
    applied: watch::Receiver<u64>,
}

/// A running cluster member. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// A handle that does not keep a member alive (for transports that route to it).
#[derive(Clone)]
pub struct WeakNode(Weak<Inner>);

impl WeakNode {
    pub fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

fn stopped<E>(id: NodeId) -> impl Fn(E) -> ClusterError {
    move |_| ClusterError::Stopped(id)
}

fn no_quorum(waited: Duration, detail: impl Into<String>) -> ClusterError {
    ClusterError::NoQuorum {
        waited_ms: waited.as_millis() as u64,
        detail: detail.into(),
    }
}

impl Node {
    /// Starts a member over `db` (opened with `Db::open_replicated`), with its log and
    /// snapshots in `config.dir`. A member that ran before resumes from what is on disk.
    pub async fn start(
        config: Config,
        db: Arc<Db>,
        transport: Arc<dyn Transport>,
    ) -> Result<Node, ClusterError> {
        let id = config.id;
        let start_err = |what: &str, e: &dyn std::fmt::Display| ClusterError::Start {
            id,
            detail: format!("{what}: {e}"),
        };
        let log = LogStore::open(&config.dir, config.log_compact_bytes)
            .map_err(|e| start_err("opening the raft log", &e))?;
        let sm = StateMachine::open(db.clone(), &config.dir.join("snapshots"))
            .map_err(|e| start_err("opening the state machine", &e))?;
        let applied = sm.applied_index();
        let network = NetworkFactory {
            from: id,
            transport: transport.clone(),
            retry_every: config.heartbeat,
        };
        let raft = Raft::new(id, Arc::new(config.raft_config()?), network, log, sm)
            .await
            .map_err(|e| start_err("starting raft", &e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let proposer = tokio::spawn(propose(
            id,
            raft.clone(),
            rx,
            config.max_batch.max(1),
            config.max_inflight_batches.max(1),
        ));
        Ok(Node {
            inner: Arc::new(Inner {
                id,
                raft,
                db,
                transport,
                config,
                proposals: tx,
                proposer: Mutex::new(Some(proposer)),
                applied,
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The member's database, for reads. Reads right after [`Node::linearizable_barrier`]
    /// see every write acknowledged before the barrier began.
    pub fn db(&self) -> &Arc<Db> {
        &self.inner.db
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.inner.raft.metrics().borrow().clone()
    }

    /// The leader this member knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Forms a new cluster with this member and `members` (run on one founder only).
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, BasicNode>,
    ) -> Result<(), ClusterError> {
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(|e| ClusterError::Membership(e.to_string()))
    }

    /// Adds a member that receives the log without voting, and waits until it caught up.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), ClusterError> {
        let r = self
            .inner
            .raft
            .add_learner(id, BasicNode { addr }, true)
            .await;
        self.membership_result(r)
    }

    /// Makes `voters` the voting members (others that are known stay as learners).
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), ClusterError> {
        let r = self.inner.raft.change_membership(voters, true).await;
        self.membership_result(r)
    }

    /// Removes members altogether, voters or learners.
    pub async fn remove_members(&self, ids: BTreeSet<NodeId>) -> Result<(), ClusterError> {
        let voters: BTreeSet<NodeId> = self
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| !ids.contains(v))
            .collect();
        self.change_membership(voters).await?;
        let r = self
            .inner
            .raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false)
            .await;
        self.membership_result(r)
    }

    fn membership_result(
        &self,
        r: Result<
            ClientWriteResponse<TypeConfig>,
            RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
        >,
    ) -> Result<(), ClusterError> {
        match r {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ClusterError::NotLeader {
                    this: self.id(),
                    leader: f.leader_id,
                })
            }
            Err(RaftError::Fatal(_)) => Err(ClusterError::Stopped(self.id())),
            Err(e) => Err(ClusterError::Membership(e.to_string())),
        }
    }

    /// Writes `commands` as one request: they take effect together or not at all. Resolves
    /// once the request is committed on a majority and applied here.
    pub async fn write(&self, commands: Vec<Command>) -> Result<Receipt, ClusterError> {
        self.write_request(Request {
            // Time-ordered ids: the state machine's request-id index then grows at its end
            // instead of dirtying a random page per request (a third of the WAL's volume).
            id: uuid::Uuid::now_v7().simple().to_string(),
            commands,
        })
        .await
    }

    /// [`Node::write`] with the caller's request id, to retry a request whose outcome is
    /// unknown: it takes effect at most once.
    ///
    /// The request rides out a leader change: a forward to a leader this member stops
    /// believing in is abandoned and the same request (same id: the state machine applies
    /// it once) goes to the next leader as soon as this member learns of one. A leader that
    /// has not heard from a majority for its lease refuses at once instead of holding the
    /// write: the others may already have elected a leader of their own.
    pub async fn write_request(&self, request: Request) -> Result<Receipt, ClusterError> {
        let started = Instant::now();
        let deadline = started + self.inner.config.write_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let leader = self.leader();
            let attempt = match leader {
                Some(l) if l == self.id() => match self.check_quorum().await {
                    Err(e) => return Err(e),
                    Ok(()) => {
                        let lost = async {
                            self.quorum_lost_or_leader_changed(l).await;
                            Err(ClusterError::NotLeader {
                                this: self.id(),
                                leader: None,
                            })
                        };
                        let submitted = bounded(remaining, self.submit(request.clone()), started);
                        tokio::select! {
                            r = submitted => r,
                            r = lost => match self.check_quorum().await {
                                // Leadership moved on: retry through the new leader.
                                Ok(()) => r,
                                // Cut off with the write in flight: its fate is unknown
                                // (it commits only if a majority holds it), say so.
                                Err(e) => return Err(e),
                            },
                        }
                    }
                },
                Some(l) => match self
                    .forward_to_leader(l, Rpc::Write(request.clone()), remaining, started)
                    .await
                {
                    Ok(Some(Reply::Write(r))) => r,
                    Ok(Some(other)) => Err(unexpected(l, &other)),
                    Ok(None) => {
                        tracing::debug!(
                            "member {}: leader {l} replaced while a write was forwarded to \
                             it; sending request {} again",
                            self.id(),
                            request.id
                        );
                        continue;
                    }
                    Err(e) => Err(e),
                },
                None => Err(ClusterError::NotLeader {
                    this: self.id(),
                    leader: None,
                }),
            };
            match attempt {
                Ok(receipt) => {
                    // Read-your-writes on this member: wait until it applied the entry too.
                    let _ = self.wait_applied(receipt.index, deadline).await;
                    return Ok(receipt);
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) if Instant::now() >= deadline => {
                    return Err(no_quorum(started.elapsed(), e.to_string()))
                }
                Err(_) => {}
            }
            self.pause_for_leader(leader, deadline).await?;
        }
    }

    /// Waits until a read on this member's database would see every write acknowledged
    /// before the call (read-index through the leader; no lease, so no clock assumption).
    pub async fn linearizable_barrier(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        let deadline = started + self.inner.config.write_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let leader = self.leader();
            let attempt = match leader {
                Some(l) if l == self.id() => match self.check_quorum().await {
                    Err(e) => return Err(e),
                    Ok(()) => bounded(remaining, self.read_index(), started).await,
                },
                Some(l) => match self
                    .forward_to_leader(l, Rpc::ReadIndex, remaining, started)
                    .await
                {
                    Ok(Some(Reply::ReadIndex(r))) => r,
                    Ok(Some(other)) => Err(unexpected(l, &other)),
                    Ok(None) => continue,
                    Err(e) => Err(e),
                },
                None => Err(ClusterError::NotLeader {
                    this: self.id(),
                    leader: None,
                }),
            };
            match attempt {
                Ok(index) => return self.wait_applied(index, deadline).await,
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) if Instant::now() >= deadline => {
                    return Err(no_quorum(started.elapsed(), e.to_string()))
                }
                Err(_) => {}
            }
            self.pause_for_leader(leader, deadline).await?;
        }
    }

    /// Sends `rpc` to `leader`, abandoned as soon as this member's view of the leader changes
    /// (`Ok(None)`: try again with the leader it knows now).
    async fn forward_to_leader(
        &self,
        leader: NodeId,
        rpc: Rpc,
        remaining: Duration,
        started: Instant,
    ) -> Result<Option<Reply>, ClusterError> {
        tokio::select! {
            r = bounded(remaining, self.forward(leader, rpc), started) => r.map(Some),
            r = self.leader_changed(Some(leader)) => r.map(|()| None),
        }
    }

    /// Between two attempts: until this member's idea of the leader changes from `leader`,
    /// a short pause at most (a refused connection to a leader that is still believed in is
    /// tried again), never past `deadline`.
    async fn pause_for_leader(
        &self,
        leader: Option<NodeId>,
        deadline: Instant,
    ) -> Result<(), ClusterError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let pause = if leader.is_none() {
            // Nobody to try: wait for an election to end rather than poll.
            remaining
        } else {
            self.retry_pause().min(remaining)
        };
        match tokio::time::timeout(pause, self.leader_changed(leader)).await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }

    /// Resolves once this member's view of the leader is no longer `leader`.
    async fn leader_changed(&self, leader: Option<NodeId>) -> Result<(), ClusterError> {
        let mut metrics = self.inner.raft.metrics();
        metrics
            .wait_for(|m| m.current_leader != leader)
            .await
            .map(drop)
            .map_err(stopped(self.id()))
    }

    /// How long a leader may go without hearing from a majority before it stops taking
    /// writes: openraft's leader lease (`election_timeout_max`), after which the followers
    /// are free to elect another leader.
    fn lease(&self) -> Duration {
        self.inner.config.election_timeout_max
    }

    /// Whether this member leads but has not heard from a majority within its lease.
    fn quorum_stale(&self, m: &RaftMetrics<NodeId, BasicNode>) -> bool {
        let lease = self.lease().as_millis() as u64;
        m.current_leader == Some(self.id()) && m.millis_since_quorum_ack.is_some_and(|a| a > lease)
    }

    /// On a leader whose majority went silent: one more lease for it to come back (a slow
    /// round trip on a busy machine), then [`ClusterError::NoQuorum`]: a leader cut off
    /// from the others refuses writes within two leases instead of holding them.
    async fn check_quorum(&self) -> Result<(), ClusterError> {
        if !self.quorum_stale(&self.metrics()) {
            return Ok(());
        }
        let started = Instant::now();
        let mut metrics = self.inner.raft.metrics();
        let back = async { metrics.wait_for(|m| !self.quorum_stale(m)).await.map(drop) };
        match tokio::time::timeout(self.lease(), back).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ClusterError::Stopped(self.id())),
            Err(_) => {
                let since = self.metrics().millis_since_quorum_ack.unwrap_or_default();
                Err(no_quorum(
                    started.elapsed(),
                    format!("this member leads but has not heard from a majority for {since} ms"),
                ))
            }
        }
    }

    /// Resolves when this member, leading as `leader`, loses its majority's acks for a
    /// lease or stops leading.
    async fn quorum_lost_or_leader_changed(&self, leader: NodeId) {
        let mut metrics = self.inner.raft.metrics();
        let _ = metrics
            .wait_for(|m| m.current_leader != Some(leader) || self.quorum_stale(m))
            .await;
    }

    fn retry_pause(&self) -> Duration {
        self.inner.config.heartbeat / 2
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ClusterError> {
        let mut applied = self.inner.applied.clone();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let reached = async { applied.wait_for(|i| *i >= index).await.map(drop) };
        match tokio::time::timeout(remaining, reached).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ClusterError::Stopped(self.id())),
            Err(_) => Err(no_quorum(
                self.inner.config.write_timeout,
                format!("catching up: entry {index} not applied here yet"),
            )),
        }
    }

    /// Sends `rpc` to member `target` (never to this member itself).
    pub async fn call(&self, target: NodeId, rpc: Rpc) -> Result<Reply, ClusterError> {
        self.forward(target, rpc).await
    }

    async fn forward(&self, leader: NodeId, rpc: Rpc) -> Result<Reply, ClusterError> {
        self.inner
            .transport
            .call(self.id(), leader, rpc)
            .await
            .map_err(|e| ClusterError::Transport {
                target: leader,
                detail: e.detail,
            })
    }

    /// Hands a request to this member's proposer (valid on the leader only).
    async fn submit(&self, request: Request) -> Result<Receipt, ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .proposals
            .send(Proposal { request, reply: tx })
            .map_err(stopped(self.id()))?;
        rx.await.map_err(stopped(self.id()))?
    }

    /// On the leader: confirms leadership with a quorum and returns the index a read must
    /// wait for.
    async fn read_index(&self) -> Result<u64, ClusterError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map_or(0, |id| id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ClusterError::NotLeader {
                    this: self.id(),
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                tracing::debug!("read index: {q}");
                Err(ClusterError::NotLeader {
                    this: self.id(),
                    leader: None,
                })
            }
            Err(RaftError::Fatal(_)) => Err(ClusterError::Stopped(self.id())),
        }
    }

    /// Serves a message from another member.
    pub async fn handle(&self, rpc: Rpc) -> Reply {
        let limit = self.inner.config.write_timeout;
        let started = Instant::now();
        match rpc {
            Rpc::AppendEntries(r) => Reply::AppendEntries(self.inner.raft.append_entries(r).await),
            Rpc::Vote(r) => Reply::Vote(self.inner.raft.vote(r).await),
            Rpc::Write(req) => Reply::Write(match self.check_quorum().await {
                // The forwarder tries again once it knows a leader that has a majority.
                Err(ClusterError::NoQuorum { .. }) => Err(ClusterError::NotLeader {
                    this: self.id(),
                    leader: None,
                }),
                Err(e) => Err(e),
                Ok(()) => bounded(limit, self.submit(req), started).await,
            }),
            Rpc::ReadIndex => Reply::ReadIndex(bounded(limit, self.read_index(), started).await),
            // Liveness is the daemon's knowledge (cluster::member); a bare node has none.
            Rpc::Liveness => Reply::Liveness(BTreeMap::new()),
        }
    }

    /// Installs a whole snapshot sent by the leader, read from `data`.
    pub async fn receive_snapshot<R: AsyncRead + Unpin>(
        &self,
        vote: Vote,
        meta: SnapshotMeta,
        mut data: R,
    ) -> Result<SnapshotResponse<NodeId>, ClusterError> {
        let raft = &self.inner.raft;
        let dst = raft
            .begin_receiving_snapshot()
            .await
            .map_err(stopped(self.id()))?;
        let SnapshotFile { path, file } = *dst;
        let mut f = tokio::fs::File::from_std(file);
        let copied = async {
            tokio::io::copy(&mut data, &mut f).await?;
            f.sync_all().await
        }
        .await;
        if let Err(e) = copied {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(ClusterError::Transport {
                target: self.id(),
                detail: format!("receiving snapshot {}: {e}", meta.snapshot_id),
            });
        }
        let file = f.into_std().await;
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile { path, file }),
        };
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(stopped(self.id()))
    }

    /// Stops the member: its Raft task, log writer and proposer.
    pub async fn shutdown(&self) {
        let proposer = self
            .inner
            .proposer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(p) = proposer {
            p.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!("member {}: stopping raft: {e}", self.id());
        }
    }
}

fn unexpected(from: NodeId, reply: &Reply) -> ClusterError {
    ClusterError::Transport {
        target: from,
        detail: format!("unexpected reply {reply:?}"),
    }
}

async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, ClusterError>>,
    started: Instant,
) -> Result<T, ClusterError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(no_quorum(
            started.elapsed(),
            "timed out waiting for a commit",
        ))
    })
}

/// The group-commit loop on every member (used while it leads): requests that arrive while
/// earlier batches are in flight are gathered into one log entry.
async fn propose(
    id: NodeId,
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    max_batch: usize,
    max_inflight: usize,
) {
    let slots = Arc::new(Semaphore::new(max_inflight));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.request, p.reply)).unzip();
        let pending = match raft.client_write_ff(Batch { requests }).await {
            Ok(rx) => rx,
            Err(_) => {
                for r in replies {
                    let _ = r.send(Err(ClusterError::Stopped(id)));
                }
                return;
            }
        };
        tokio::spawn(async move {
            let result = pending.await;
            drop(slot);
            match result {
                Ok(Ok(resp)) => {
                    let index = resp.log_id.index;
                    let mut outcomes = resp.data.outcomes.into_iter();
                    for r in replies {
                        let outcome = outcomes.next().unwrap_or(RequestOutcome::Applied);
                        let result: Result<(), ClusterError> = outcome.into();
                        let _ = r.send(result.map(|()| Receipt { index }));
                    }
                }
                Ok(Err(e)) => {
                    let err = match e {
                        ClientWriteError::ForwardToLeader(f) => ClusterError::NotLeader {
                            this: id,
                            leader: f.leader_id,
                        },
                        ClientWriteError::ChangeMembershipError(e) => {
                            ClusterError::Membership(e.to_string())
                        }
                    };
                    for r in replies {
                        let _ = r.send(Err(err.clone()));
                    }
                }
                Err(_) => {
                    // The entry was dropped without an answer (leadership lost before it
                    // committed): its fate is unknown, a retry under the same id is safe.
                    for r in replies {
                        let _ = r.send(Err(ClusterError::NotLeader {
                            this: id,
                            leader: None,
                        }));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn a_longer_heartbeat_keeps_the_election_timeouts_in_proportion() {
        let c = Config::new(1, PathBuf::from("/nonexistent"))
            .with_heartbeat(Duration::from_millis(500));
        assert_eq!(c.election_timeout_min, Duration::from_millis(1250));
        assert_eq!(c.election_timeout_max, Duration::from_millis(2500));
        let raft = c.raft_config().expect("a valid openraft configuration");
        assert_eq!(raft.heartbeat_interval, 500);
        assert!(raft.election_timeout_min > raft.heartbeat_interval);
    }
}
