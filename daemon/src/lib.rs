//! cairnd: an Incus-compatible container daemon over liblxc.
//!
//! The HTTP layer (`api`) only parses and validates requests, builds typed commands and calls
//! services; services (`instance`, `image`, `storage`) never see HTTP types; every change to
//! persistent state is a typed [`db::Command`] applied in one place, so a later step can
//! replicate the same commands through Raft.

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
pub mod operations;
pub mod os;
pub mod preseed;
pub mod runner;
pub mod storage;
pub mod tls;
pub mod trust;
pub mod validate;
