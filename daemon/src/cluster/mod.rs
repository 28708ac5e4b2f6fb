//! Clustering: the daemon's database replicated with Raft.
//!
//! Every write is a [`Request`] of typed [`crate::db::Command`]s. On the leader, requests
//! that arrive together are gathered into one log entry (group commit); the entry is made
//! durable on a majority (each member fsyncs its log, [`log_store`]) and then applied to
//! each member's SQLite by the deterministic [`state_machine`]. A write is acknowledged
//! only once it is committed and applied. Reads are local, or linearizable through a
//! read-index barrier ([`Node::linearizable_barrier`]). Members talk through a
//! [`raft_net::Transport`] trait object: in-process for tests and benchmarks
//! ([`raft_net::LocalRouter`]), and between daemons [`transport::HttpTransport`] — JSON over
//! HTTPS under `/internal/cluster/…` on the API port, where members call each other with
//! [`peer::PeerClient`], presenting the shared cluster certificate and pinning it on the
//! other side. A client's API request can be forwarded to another member (`api::forward`), and
//! [`events_relay`] shows every member's events on each member's `/1.0/events`; members
//! find each other with no API call through [`discovery`] and [`autojoin`].
//!
//! # Why openraft 0.9 (storage-v2)
//! openraft 0.9.25 is the newest stable release; the 0.10 line is still alpha (0.10.0-alpha.37
//! at the time of writing) and its API changes between alphas. 0.9 with the `storage-v2`
//! feature already separates the log store from the state machine, which is the split
//! Cairn needs (a file log, SQLite as the state machine), and `generic-snapshot-data` lets
//! a snapshot be a SQLite file sent whole. One 0.9 limit shapes the design: the leader
//! waits for each `append` to be flushed before it takes the next client request, so
//! group commit is done above openraft — one log entry carries a batch of requests.
//!
//! Invariants: the state machine is deterministic (no clock, no randomness, no I/O but its
//! SQLite handle); nothing is acknowledged before it is on disk on a majority; a request
//! (by id) takes effect at most once, whatever the retries and re-deliveries.

pub mod autojoin;
pub mod discovery;
pub mod evacuation;
pub mod events_relay;
pub mod images;
pub mod log_store;
pub mod member;
pub mod member_api;
pub mod membership;
pub mod node;
pub mod peer;
pub mod raft_net;
pub mod state_machine;
pub mod transport;
pub mod types;

pub use node::{Config, Node};
pub use peer::{PeerClient, PeerError};
pub use raft_net::{LocalRouter, Reply, Rpc, Transport, TransportError};
pub use types::{Batch, BatchOutcome, ClusterError, NodeId, Receipt, Request};

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
