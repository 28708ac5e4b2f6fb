//! The persistent records: what the database stores for each kind of object. They are plain
//! data (serde) so that commands carrying them can be replicated as they are.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Instance or profile configuration: Incus keys to string values.
pub type ConfigMap = BTreeMap<String, String>;
/// Devices by name, each a map of Incus device keys (`type`, `path`, `nictype`, …).
pub type DeviceMap = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub name: String,
    pub instance_type: String,
    pub architecture: String,
    pub config: ConfigMap,
    pub devices: DeviceMap,
    pub profiles: Vec<String>,
    pub ephemeral: bool,
    pub stateful: bool,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    /// The cluster member the instance lives on; empty when not clustered.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub instance: String,
    pub name: String,
    pub architecture: String,
    pub config: ConfigMap,
    pub devices: DeviceMap,
    pub profiles: Vec<String>,
    pub ephemeral: bool,
    pub stateful: bool,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub fingerprint: String,
    pub filename: String,
    pub size: u64,
    pub architecture: String,
    pub image_type: String,
    pub public: bool,
    pub auto_update: bool,
    pub cached: bool,
    pub properties: BTreeMap<String, String>,
    pub profiles: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub uploaded_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub name: String,
    pub target: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileRecord {
    pub name: String,
    pub description: String,
    pub config: ConfigMap,
    pub devices: DeviceMap,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    pub driver: String,
    pub description: String,
    /// The keys every member shares; in a cluster the member-specific ones (`source`,
    /// `size`, `zfs.pool_name`) are in `members`.
    pub config: ConfigMap,
    #[serde(default)]
    pub status: PoolStatus,
    /// In a cluster: each member's own keys and whether its share of the pool exists.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, PoolShare>,
}

/// Incus's pool states: defined on some members (`--target`), made on all, or a
/// cluster-wide creation that failed part way (retried by creating again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolStatus {
    #[default]
    Created,
    Pending,
    Errored,
}

impl PoolStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolStatus::Created => "Created",
            PoolStatus::Pending => "Pending",
            PoolStatus::Errored => "Errored",
        }
    }
}

/// One member's part of a pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolShare {
    pub config: ConfigMap,
    #[serde(default)]
    pub created: bool,
}

/// A managed network. `kind` is its Incus type (`bridge`); `config` holds concrete values
/// (an `ipv4.address=auto` is resolved before the record is written, so every member and
/// every restart sees the same subnet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    pub kind: String,
    pub description: String,
    pub config: ConfigMap,
    /// Pending while defined on some members (`--target`) or being made on all of them.
    #[serde(default)]
    pub status: NetworkStatus,
    /// In a cluster: the members it is defined on, each with whether it is made there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, bool>,
}

/// Networks go through the same states as pools in Incus.
pub type NetworkStatus = PoolStatus;

/// A custom storage volume (`incus storage volume create`): a filesystem volume of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub pool: String,
    pub name: String,
    pub description: String,
    pub config: ConfigMap,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Oldest first. Kept in the volume's record: they are made, renamed and deleted with it.
    #[serde(default)]
    pub snapshots: Vec<VolumeSnapshotRecord>,
    /// The cluster member whose share of the pool holds the files; empty standalone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSnapshotRecord {
    pub name: String,
    pub description: String,
    /// The volume's config when the snapshot was taken.
    pub config: ConfigMap,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateRecord {
    pub fingerprint: String,
    pub name: String,
    pub cert_type: String,
    pub certificate: String,
    pub restricted: bool,
    pub projects: Vec<String>,
    pub description: String,
}

/// A pending trust token (`incus config trust add`): single use, may expire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub secret: String,
    pub client_name: String,
    pub operation_id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The restrictions the admin gave the token; the redeeming client cannot choose its
    /// own. Absent from records written before they existed (no migration: records are
    /// JSON), which were issued unrestricted.
    #[serde(default)]
    pub restricted: bool,
    #[serde(default)]
    pub projects: Vec<String>,
}

/// A cluster member. `id` is its Raft node id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: u64,
    pub name: String,
    /// `host:port` of its API (and of member-to-member traffic).
    pub address: String,
    pub architecture: String,
    pub description: String,
    pub failure_domain: String,
    pub config: ConfigMap,
    pub groups: Vec<String>,
    /// Evacuated by `incus cluster evacuate`: takes no new instances until restored.
    pub evacuated: bool,
}

/// A pending join token (`incus cluster add NAME`): single use, expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub name: String,
    pub secret: String,
    pub operation_id: String,
    pub expires_at: DateTime<Utc>,
}
