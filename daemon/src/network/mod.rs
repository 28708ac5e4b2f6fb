//! Managed networks. This step builds the pure parts of the `bridge` type: key
//! validation and subnet choice (`config`), the dnsmasq config and lease parsing plus
//! its supervisor (`dnsmasq`), and the per-network nftables table (`nft`). The host-side
//! pieces (`netlink.rs`, `bridge.rs`) are drafts, not yet in the module tree.
//! Drivers never import `crate::api` or HTTP types.

pub mod config;
pub mod dnsmasq;
pub mod nft;

/// Why a network operation failed; `Invalid` is the caller's fault (a 400).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Invalid(String),
    #[error("network I/O: {0}")]
    Io(String),
    #[error("dnsmasq: {0}")]
    Dnsmasq(String),
    #[error("nftables: {0}")]
    Firewall(String),
}
