//! Typed state changes. Every write to the database is one of these, applied by
//! [`apply`] inside one transaction, in the file of the command's [`Resource`]
//! (`images.rs`, `instances.rs`, …). `apply` is deterministic: it reads no clock, draws no
//! random numbers and does no I/O but its SQLite handle, so the same sequence of commands
//! gives the same database on every member once the commands travel through Raft.

use rusqlite::Transaction;
use serde::{Deserialize, Serialize};

use super::records::*;
use super::DbError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    SetServerConfig {
        key: String,
        value: Option<String>,
    },

    CreateImage(ImageRecord),
    UpdateImage(ImageRecord),
    DeleteImage {
        fingerprint: String,
    },
    CreateAlias(AliasRecord),
    UpdateAlias(AliasRecord),
    RenameAlias {
        from: String,
        to: String,
    },
    DeleteAlias {
        name: String,
    },

    CreateProfile(ProfileRecord),
    UpdateProfile(ProfileRecord),
    RenameProfile {
        from: String,
        to: String,
    },
    DeleteProfile {
        name: String,
    },

    CreateInstance(InstanceRecord),
    UpdateInstance(InstanceRecord),
    RenameInstance {
        from: String,
        to: String,
    },
    DeleteInstance {
        name: String,
    },
    /// Sets (or with `None` removes) one `volatile.*` key without touching the rest.
    SetInstanceVolatile {
        name: String,
        key: String,
        value: Option<String>,
    },

    CreateSnapshot(SnapshotRecord),
    UpdateSnapshot(SnapshotRecord),
    RenameSnapshot {
        instance: String,
        from: String,
        to: String,
    },
    DeleteSnapshot {
        instance: String,
        name: String,
    },

    CreatePool(PoolRecord),
    UpdatePool(PoolRecord),
    DeletePool {
        name: String,
    },
    /// Member `member`'s part of pool `pool` (`incus storage create --target`, or a
    /// member's share made): a pending pool is inserted when there is none yet.
    SetPoolShare {
        pool: String,
        driver: String,
        member: String,
        share: PoolShare,
    },
    CreateVolume(VolumeRecord),
    UpdateVolume(VolumeRecord),
    DeleteVolume {
        pool: String,
        name: String,
    },

    CreateNetwork(NetworkRecord),
    UpdateNetwork(NetworkRecord),
    DeleteNetwork {
        name: String,
    },
    /// `incus network create N --target M`: member M is added to pending network `N`
    /// (inserted, of type `kind`, when there is none yet).
    DefineNetworkMember {
        network: String,
        kind: String,
        member: String,
    },

    AddCertificate(CertificateRecord),
    UpdateCertificate(CertificateRecord),
    DeleteCertificate {
        fingerprint: String,
    },

    CreateToken(TokenRecord),
    DeleteToken {
        secret: String,
    },

    /// Adds a member; refused if its id was ever given out or its name is taken.
    AddMember(MemberRecord),
    UpdateMember(MemberRecord),
    RenameMember {
        from: String,
        to: String,
    },
    RemoveMember {
        name: String,
    },
    CreateJoinToken(JoinTokenRecord),
    DeleteJoinToken {
        name: String,
    },
}

/// Which part of the database a command changes, and so which file applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    ServerConfig,
    Images,
    Profiles,
    Instances,
    Snapshots,
    Pools,
    Networks,
    Trust,
    Members,
}

impl Command {
    pub fn resource(&self) -> Resource {
        use Command::*;
        match self {
            SetServerConfig { .. } => Resource::ServerConfig,
            CreateImage(_) | UpdateImage(_) | DeleteImage { .. } => Resource::Images,
            CreateAlias(_) | UpdateAlias(_) | RenameAlias { .. } | DeleteAlias { .. } => {
                Resource::Images
            }
            CreateProfile(_) | UpdateProfile(_) | RenameProfile { .. } | DeleteProfile { .. } => {
                Resource::Profiles
            }
            CreateInstance(_)
            | UpdateInstance(_)
            | RenameInstance { .. }
            | DeleteInstance { .. }
            | SetInstanceVolatile { .. } => Resource::Instances,
            CreateSnapshot(_)
            | UpdateSnapshot(_)
            | RenameSnapshot { .. }
            | DeleteSnapshot { .. } => Resource::Snapshots,
            CreatePool(_) | UpdatePool(_) | DeletePool { .. } | SetPoolShare { .. } => {
                Resource::Pools
            }
            CreateNetwork(_)
            | UpdateNetwork(_)
            | DeleteNetwork { .. }
            | DefineNetworkMember { .. } => Resource::Networks,
            CreateVolume(_) | UpdateVolume(_) | DeleteVolume { .. } => Resource::Pools,
            AddCertificate(_) | UpdateCertificate(_) | DeleteCertificate { .. } => Resource::Trust,
            CreateToken(_) | DeleteToken { .. } => Resource::Trust,
            AddMember(_) | UpdateMember(_) | RenameMember { .. } | RemoveMember { .. } => {
                Resource::Members
            }
            CreateJoinToken(_) | DeleteJoinToken { .. } => Resource::Members,
        }
    }
}

/// Applies one command inside the caller's transaction, in the file of its resource.
pub(super) fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<(), DbError> {
    match cmd.resource() {
        Resource::ServerConfig => super::server_config::apply(tx, cmd),
        Resource::Images => super::images::apply(tx, cmd),
        Resource::Profiles => super::profiles::apply(tx, cmd),
        Resource::Instances => super::instances::apply(tx, cmd),
        Resource::Snapshots => super::snapshots::apply(tx, cmd),
        Resource::Pools => super::pools::apply(tx, cmd),
        Resource::Networks => super::networks::apply(tx, cmd),
        Resource::Trust => super::trust::apply(tx, cmd),
        Resource::Members => super::members::apply(tx, cmd),
    }
}
