//! What the Raft log carries and what applying it returns, and the errors of the cluster
//! layer.

use std::fs::File;
use std::path::PathBuf;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::db::{Command, RejectKind, RequestOutcome};

/// A member's Raft id. Ids are never reused for another member.
pub type NodeId = u64;

/// One client request: typed database commands that take effect together or not at all.
/// The id is unique per request and kept across retries, so a request retried after a
/// leader change takes effect once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub commands: Vec<Command>,
}

/// The payload of one log entry: the requests the leader gathered while the previous batch
/// was being committed (group commit: one entry, one fsync per member, many requests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub requests: Vec<Request>,
}

/// What applying a [`Batch`] gave: one outcome per request, in order. Empty for an entry
/// that was already applied before (re-delivered after a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BatchOutcome {
    pub outcomes: Vec<RequestOutcome>,
}

/// A snapshot: a SQLite database file written by `Db::write_snapshot`, kept open so that a
/// transfer in flight survives the file being replaced by a newer snapshot.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: File,
}

openraft::declare_raft_types!(
    /// Cairn's Raft types: batches of typed database commands, applied to SQLite.
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Where a committed write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The log index of the entry that carried it.
    pub index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    /// No majority could be reached in time: this member is on the minority side of a
    /// partition, or too many members are down. A write that ends with this may still take
    /// effect later; retrying it with the same request id is safe.
    #[error("no quorum: the cluster could not commit within {waited_ms} ms ({detail})")]
    NoQuorum { waited_ms: u64, detail: String },
    /// The request reached the state machine and was refused by the database, on every
    /// member alike (e.g. creating an object that exists).
    #[error("{message}")]
    Rejected { kind: RejectKind, message: String },
    /// This member is not the leader and the call cannot be forwarded.
    #[error("member {this} is not the leader (leader: {leader:?})")]
    NotLeader {
        this: NodeId,
        leader: Option<NodeId>,
    },
    /// The member is shutting down or stopped.
    #[error("member {0} is stopped")]
    Stopped(NodeId),
    #[error("membership change: {0}")]
    Membership(String),
    #[error("starting member {id}: {detail}")]
    Start { id: NodeId, detail: String },
    #[error("member to member call to {target}: {detail}")]
    Transport { target: NodeId, detail: String },
}

impl ClusterError {
    /// Whether the same call may succeed if tried again a little later (through the new
    /// leader, once a leader is known).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NotLeader { .. } | ClusterError::Transport { .. }
        )
    }
}

impl From<RequestOutcome> for Result<(), ClusterError> {
    fn from(o: RequestOutcome) -> Self {
        match o {
            RequestOutcome::Applied => Ok(()),
            RequestOutcome::Rejected { kind, message } => {
                Err(ClusterError::Rejected { kind, message })
            }
        }
    }
}
