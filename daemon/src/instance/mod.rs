//! Instances (LXC system containers): their records, expanded configuration, lifecycle,
//! snapshots, state and exec. Nothing here knows about HTTP; the API calls these functions
//! with typed arguments and maps [`InstanceError`] to statuses.

pub mod cloud_init;
pub mod copy;
pub mod disks;
pub mod exec;
pub mod hotplug;
pub mod idmap;
pub mod lifecycle;
pub mod lxc;
pub mod lxc_config;
pub mod migrate;
pub mod nics;
pub mod rootfs_access;
pub mod sftp;
pub mod snapshot;
pub mod state;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, DeviceMap, InstanceRecord, ProfileRecord};
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

impl From<DbError> for InstanceError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound(m) => InstanceError::NotFound(format!("Not found: {m}")),
            DbError::Exists(m) => InstanceError::Conflict(format!("Already exists: {m}")),
            e => InstanceError::Failed(e.to_string()),
        }
    }
}

impl From<crate::validate::ValidationError> for InstanceError {
    fn from(e: crate::validate::ValidationError) -> Self {
        InstanceError::Invalid(e.to_string())
    }
}

impl From<crate::storage::StorageError> for InstanceError {
    fn from(e: crate::storage::StorageError) -> Self {
        if e.is_bad_input() {
            return InstanceError::Invalid(e.to_string());
        }
        InstanceError::Failed(e.to_string())
    }
}

impl From<lxc::LxcError> for InstanceError {
    fn from(e: lxc::LxcError) -> Self {
        InstanceError::Failed(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, InstanceError>;

pub fn get(d: &Daemon, name: &str) -> Result<InstanceRecord> {
    d.db.instance(name)?
        .ok_or_else(|| InstanceError::NotFound("Instance not found".into()))
}

/// Profiles applied in order, then the instance's own config and devices on top.
pub fn expand(d: &Daemon, rec: &InstanceRecord) -> Result<(ConfigMap, DeviceMap)> {
    expand_with(d, &rec.profiles, &rec.config, &rec.devices)
}

pub fn expand_with(
    d: &Daemon,
    profiles: &[String],
    config: &ConfigMap,
    devices: &DeviceMap,
) -> Result<(ConfigMap, DeviceMap)> {
    let mut known = BTreeMap::new();
    for p in profiles {
        let prof =
            d.db.profile(p)?
                .ok_or_else(|| InstanceError::Invalid(format!("Profile {p:?} doesn't exist")))?;
        known.insert(p.clone(), prof);
    }
    expand_from(&known, profiles, config, devices)
}

/// Expansion against profiles already loaded (a listing loads them once for all).
pub fn expand_from(
    known: &BTreeMap<String, ProfileRecord>,
    profiles: &[String],
    config: &ConfigMap,
    devices: &DeviceMap,
) -> Result<(ConfigMap, DeviceMap)> {
    let mut c = ConfigMap::new();
    let mut dv = DeviceMap::new();
    for p in profiles {
        let prof = known
            .get(p)
            .ok_or_else(|| InstanceError::Invalid(format!("Profile {p:?} doesn't exist")))?;
        c.extend(prof.config.clone());
        dv.extend(prof.devices.clone());
    }
    c.extend(config.clone());
    dv.extend(devices.clone());
    Ok((c, dv))
}

/// All profiles by name, for [`view_with`].
pub fn all_profiles(d: &Daemon) -> Result<BTreeMap<String, ProfileRecord>> {
    Ok(d.db
        .profiles()?
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect())
}

/// The pool holding an instance's root disk.
pub fn root_pool(devices: &DeviceMap) -> Result<String> {
    devices
        .values()
        .find(|d| {
            d.get("type").map(String::as_str) == Some("disk")
                && d.get("path").map(String::as_str) == Some("/")
        })
        .and_then(|d| d.get("pool").cloned())
        .ok_or_else(|| InstanceError::Invalid("No root device could be found".into()))
}

/// The root disk's `size` in bytes (Incus's size strings), if set.
pub fn root_size(devices: &DeviceMap) -> Result<Option<u64>> {
    let size = devices
        .values()
        .find(|d| {
            d.get("type").map(String::as_str) == Some("disk")
                && d.get("path").map(String::as_str) == Some("/")
        })
        .and_then(|d| d.get("size"))
        .filter(|s| !s.is_empty());
    match size {
        None => Ok(None),
        Some(s) => crate::storage::size::parse_bytes(s)
            .map(Some)
            .map_err(|e| InstanceError::Invalid(format!("Invalid root disk size: {e}"))),
    }
}

/// Refuses a root disk `size` the instance's pool cannot enforce.
pub fn check_root_size(
    pool: &dyn crate::storage::StorageDriver,
    devices: &DeviceMap,
) -> Result<()> {
    if root_size(devices)?.is_some() && !pool.supports_quotas() {
        return Err(InstanceError::Invalid(format!(
            "A root disk size needs a storage pool that enforces quotas (btrfs); pool {:?} is \
             {}",
            pool.pool_name(),
            pool.driver_name()
        )));
    }
    Ok(())
}

/// An instance, its pool, and the root size to apply.
pub type RootLimit = (
    String,
    std::sync::Arc<dyn crate::storage::StorageDriver>,
    Option<u64>,
);

/// The root disk limits a profile update changes: for each instance using `profile`
/// whose expanded root `size` differs, its pool and new size. Refuses what the instances'
/// pools cannot do (a pool change, a size on a pool without quotas) before anything is
/// written.
pub fn root_size_changes(d: &Daemon, profile: &ProfileRecord) -> Result<Vec<RootLimit>> {
    let known = all_profiles(d)?;
    let mut updated = known.clone();
    updated.insert(profile.name.clone(), profile.clone());
    let mut out = Vec::new();
    for rec in d.db.instances()? {
        if !rec.profiles.contains(&profile.name) {
            continue;
        }
        let (_, old) = expand_from(&known, &rec.profiles, &rec.config, &rec.devices)?;
        let (_, new) = expand_from(&updated, &rec.profiles, &rec.config, &rec.devices)?;
        let pool_name = root_pool(&new)?;
        if pool_name != root_pool(&old)? {
            return Err(InstanceError::Invalid(format!(
                "Changing the root disk's pool of instance {:?} is not supported",
                rec.name
            )));
        }
        let size = root_size(&new)?;
        if size == root_size(&old)? {
            continue;
        }
        let pool = d.pool(&pool_name).ok_or_else(|| {
            InstanceError::Failed(format!("Storage pool {pool_name:?} is unavailable"))
        })?;
        check_root_size(pool.as_ref(), &new)?;
        out.push((rec.name, pool, size));
    }
    Ok(out)
}

/// Incus's status names and codes.
pub fn status_of(s: lxc::LxcState) -> (&'static str, u16) {
    use lxc::LxcState::*;
    match s {
        Running | Thawed => ("Running", 103),
        Stopped => ("Stopped", 102),
        Starting => ("Starting", 106),
        Stopping => ("Stopping", 107),
        Aborting => ("Error", 112),
        Freezing | Frozen => ("Frozen", 110),
    }
}

pub fn lxc_state(d: &Daemon, name: &str) -> lxc::LxcState {
    // Never started since its record was made: liblxc has nothing to say, skip asking it.
    if !d.paths.lxc.join(name).join("config").exists() {
        return lxc::LxcState::Stopped;
    }
    lxc::state(&d.paths.lxc, name).unwrap_or(lxc::LxcState::Stopped)
}

/// The instance as `GET /1.0/instances/{name}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub architecture: String,
    pub config: ConfigMap,
    pub devices: DeviceMap,
    pub ephemeral: bool,
    pub profiles: Vec<String>,
    pub stateful: bool,
    pub description: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expanded_config: ConfigMap,
    pub expanded_devices: DeviceMap,
    pub name: String,
    pub status: String,
    pub status_code: u16,
    pub last_used_at: chrono::DateTime<chrono::Utc>,
    pub location: String,
    #[serde(rename = "type")]
    pub instance_type: String,
    pub project: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<state::StateView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<snapshot::SnapshotView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backups: Option<Vec<serde_json::Value>>,
}

/// The writable part of an instance: what its ETag covers and PUT replaces.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceEtag<'a> {
    pub architecture: &'a str,
    pub config: &'a ConfigMap,
    pub devices: &'a DeviceMap,
    pub ephemeral: bool,
    pub profiles: &'a [String],
    pub description: &'a str,
}

pub fn etag_of(rec: &InstanceRecord) -> InstanceEtag<'_> {
    InstanceEtag {
        architecture: &rec.architecture,
        config: &rec.config,
        devices: &rec.devices,
        ephemeral: rec.ephemeral,
        profiles: &rec.profiles,
        description: &rec.description,
    }
}

/// `full` adds state and snapshots (recursion=2).
pub fn view(d: &Daemon, rec: &InstanceRecord, full: bool) -> Result<InstanceView> {
    view_with(d, rec, full, &all_profiles(d)?)
}

pub fn view_with(
    d: &Daemon,
    rec: &InstanceRecord,
    full: bool,
    profiles: &BTreeMap<String, ProfileRecord>,
) -> Result<InstanceView> {
    let (expanded_config, expanded_devices) =
        expand_from(profiles, &rec.profiles, &rec.config, &rec.devices)?;
    let ls = lxc_state(d, &rec.name);
    let (status, status_code) = status_of(ls);
    let (state, snapshots, backups) = if full {
        (
            Some(state::view_expanded(
                d,
                rec,
                ls,
                &expanded_config,
                &expanded_devices,
            )),
            Some(snapshot::list(d, &rec.name)?),
            Some(vec![]),
        )
    } else {
        (None, None, None)
    };
    Ok(InstanceView {
        architecture: rec.architecture.clone(),
        config: rec.config.clone(),
        devices: rec.devices.clone(),
        ephemeral: rec.ephemeral,
        profiles: rec.profiles.clone(),
        stateful: rec.stateful,
        description: rec.description.clone(),
        created_at: rec.created_at,
        expanded_config,
        expanded_devices,
        name: rec.name.clone(),
        status: status.into(),
        status_code,
        last_used_at: rec.last_used_at,
        location: if rec.location.is_empty() {
            "none".into()
        } else {
            rec.location.clone()
        },
        instance_type: rec.instance_type.clone(),
        project: "default".into(),
        state,
        snapshots,
        backups,
    })
}

/// The NICs that `new` adds, removes or changes against `old`, by device name.
pub fn nic_changes(old: &DeviceMap, new: &DeviceMap) -> Vec<String> {
    let is_nic = |d: &BTreeMap<String, String>| d.get("type").map(String::as_str) == Some("nic");
    let mut out: Vec<String> = old
        .iter()
        .filter(|(_, d)| is_nic(d))
        .filter(|(n, d)| new.get(*n) != Some(d))
        .map(|(n, _)| n.clone())
        .collect();
    out.extend(
        new.iter()
            .filter(|(n, d)| is_nic(d) && !old.contains_key(*n))
            .map(|(n, _)| n.clone()),
    );
    out.sort();
    out.dedup();
    out
}

pub fn url(name: &str) -> String {
    format!("/1.0/instances/{name}")
}

/// Incus-style MAC for a NIC: the `10:66:6a` prefix Incus uses, random tail.
pub fn random_hwaddr() -> String {
    let b: [u8; 3] = rand::random();
    format!("10:66:6a:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

pub fn random_veth_name() -> String {
    let b: [u8; 4] = rand::random();
    format!("veth{}", hex::encode(b))
}

/// Fills the `volatile.*` keys a new instance needs (NIC names and MACs, id map, uuid).
pub fn initial_volatile(config: &mut ConfigMap, devices: &DeviceMap, idmap: &str) {
    for (name, dev) in devices {
        if dev.get("type").map(String::as_str) == Some("nic") {
            config
                .entry(format!("volatile.{name}.hwaddr"))
                .or_insert_with(random_hwaddr);
        }
    }
    let uuid = uuid::Uuid::new_v4().to_string();
    config.insert("volatile.uuid".into(), uuid.clone());
    config.insert("volatile.uuid.generation".into(), uuid);
    config.insert("volatile.idmap.base".into(), "0".into());
    config.insert("volatile.idmap.next".into(), idmap.to_string());
    config.insert("volatile.idmap.current".into(), idmap.to_string());
    config.insert("volatile.last_state.idmap".into(), idmap.to_string());
    config.insert("volatile.last_state.power".into(), "STOPPED".into());
}

/// Keys the daemon owns: a client's PUT keeps the stored values of these.
pub fn keep_volatile(old: &ConfigMap, new: &mut ConfigMap) {
    new.retain(|k, _| !k.starts_with("volatile."));
    for (k, v) in old {
        if k.starts_with("volatile.") {
            new.insert(k.clone(), v.clone());
        }
    }
}

pub fn config_from_image(props: &BTreeMap<String, String>) -> ConfigMap {
    props
        .iter()
        .map(|(k, v)| (format!("image.{k}"), v.clone()))
        // A property name outside the key grammar would make the instance's config
        // impossible to PUT back.
        .filter(|(k, _)| crate::validate::config_key_name(k).is_ok())
        .collect()
}

/// File access to an instance's root filesystem, with the id map its files are stored under.
pub fn rootfs_access(d: &Daemon, name: &str) -> Result<rootfs_access::RootfsAccess> {
    let rec = get(d, name)?;
    let (_, ed) = expand(d, &rec)?;
    let pool_name = root_pool(&ed)?;
    let pool = d
        .pool(&pool_name)
        .ok_or_else(|| InstanceError::Failed(format!("Storage pool {pool_name:?} is gone")))?;
    let shift = rec
        .config
        .get("volatile.last_state.idmap")
        .and_then(|s| idmap::IdShift::from_incus_json(s))
        .unwrap_or(d.idmap);
    rootfs_access::RootfsAccess::open(&pool.rootfs_path(name), shift)
        .map_err(|e| InstanceError::Failed(e.to_string()))
}

/// The host's architecture as Incus names it (`uname -m`).
pub fn host_architecture() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "x86_64".into())
}
