//! cairnd: an Incus-compatible container daemon over liblxc.
//!
//! The HTTP layer (`api`, with `listener`) only parses and validates requests, builds typed
//! commands and calls services; services (`instance`, `image`, `storage`, `cluster`, `trust`,
//! `os`) never see HTTP server types and never import `api` (`tests/layering.rs` checks
//! both). Every change to persistent state is a typed [`db::Command`] sent through
//! `Daemon::write`, which in a cluster replicates it through Raft.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod db;
pub mod events;
pub mod image;
pub mod instance;
pub mod listener;
pub mod local_config;
pub mod network;
pub mod operations;
pub mod os;
pub mod owner_only;
pub mod peer_trust;
pub mod pool;
pub mod preseed;
pub mod resources;
pub mod runner;
pub mod storage;
pub mod tls;
pub mod trust;
pub mod validate;
pub mod volume;
