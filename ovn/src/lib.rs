//! Cairn's side of OVN's northbound database: what an OVN network is made of there (a
//! logical router, an internal switch with DHCP, an external switch onto the uplink with
//! SNAT and a default route) and the ports of the instances on it, laid out as Incus lays
//! them out. OVN's own ovn-northd turns these rows into flows; ovn-controller on each
//! member makes them real. This crate only writes and reads northbound rows: it starts no
//! daemon and touches no host interface.
//!
//! It calls `ovn-nbctl` (one process per change, every command of the change in one
//! transaction) rather than speaking OVSDB JSON-RPC itself; see README.md for why and what
//! that costs.

pub mod layout;
mod nbctl;

pub use layout::{NetworkSpec, PortInfo, PortSpec, UplinkSpec};
pub mod southbound;
pub use nbctl::Northbound;

/// Why a northbound operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OvnError {
    /// The database did not answer (not running, wrong address, no quorum).
    #[error("OVN northbound database {db} is unreachable: {detail}")]
    Unreachable { db: String, detail: String },
    /// ovn-nbctl ran and refused the change (the transaction was not committed).
    #[error("ovn-nbctl {command}: {stderr}")]
    Refused { command: String, stderr: String },
    /// ovn-nbctl could not be started.
    #[error("running ovn-nbctl: {0}")]
    Spawn(#[from] std::io::Error),
    /// A value given to the layout is not one OVN can take.
    #[error("{0}")]
    Invalid(String),
}
