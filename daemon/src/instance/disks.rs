//! Disk devices that mount custom volumes (`pool=<pool> source=<volume>`): checked when an
//! instance or profile names them, resolved to the volume's directory when the instance
//! starts, re-owned for the instance's id map, and mounted into or out of a running
//! container when its devices change (see [`super::hotplug`]).

use std::path::PathBuf;

use super::idmap::IdShift;
use super::{InstanceError, Result};
use crate::daemon::Daemon;
use crate::db::records::{DeviceMap, ProfileRecord, VolumeRecord};
use crate::validate::is_true;
use crate::volume::{self, VolumeError};

impl From<VolumeError> for InstanceError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::NotFound(m) | VolumeError::Invalid(m) => InstanceError::Invalid(m),
            VolumeError::Conflict(m) => InstanceError::Conflict(m),
            VolumeError::Storage(e) => e.into(),
            VolumeError::Db(e) => e.into(),
            VolumeError::Failed(m) => InstanceError::Failed(m),
        }
    }
}

/// A disk device that mounts a custom volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    pub device: String,
    pub pool: String,
    pub volume: String,
    /// Where it appears inside the container.
    pub path: String,
    pub readonly: bool,
}

/// The volume disks of an expanded device map, by device name.
pub fn volume_disks(devices: &DeviceMap) -> Vec<VolumeDisk> {
    devices
        .iter()
        .filter(|(_, d)| {
            d.get("type").map(String::as_str) == Some("disk")
                && d.get("path").is_some_and(|p| p != "/")
                && d.get("pool").is_some_and(|p| !p.is_empty())
        })
        .filter_map(|(name, d)| {
            Some(VolumeDisk {
                device: name.clone(),
                pool: d.get("pool")?.clone(),
                volume: d.get("source")?.clone(),
                path: d.get("path")?.clone(),
                readonly: is_true(d.get("readonly")),
            })
        })
        .collect()
}

/// Refuses disks that name a pool or volume that does not exist.
pub fn check(d: &Daemon, devices: &DeviceMap) -> Result<()> {
    for disk in volume_disks(devices) {
        if d.db.pool(&disk.pool)?.is_none() {
            return Err(InstanceError::Invalid(format!(
                "Device {:?}: storage pool {:?} doesn't exist",
                disk.device, disk.pool
            )));
        }
        if d.db.volume(&disk.pool, &disk.volume)?.is_none() {
            return Err(InstanceError::Invalid(format!(
                "Device {:?}: storage volume {:?} doesn't exist in pool {:?}",
                disk.device, disk.volume, disk.pool
            )));
        }
    }
    Ok(())
}

/// The id map a running instance's files are owned for, if it is running.
fn running_shift(d: &Daemon, name: &str) -> Option<IdShift> {
    if super::lxc_state(d, name) != super::lxc::LxcState::Running {
        return None;
    }
    d.db.instance(name)
        .ok()
        .flatten()?
        .config
        .get("volatile.last_state.idmap")
        .and_then(|s| IdShift::from_incus_json(s))
}

/// Makes a volume's files owned for `shift` (the instance `name` is about to mount it),
/// refusing when another running instance mounts it under a different map.
async fn own_for(d: &Daemon, name: &str, disk: &VolumeDisk, shift: IdShift) -> Result<PathBuf> {
    let rec: VolumeRecord = volume::get(d, &disk.pool, &disk.volume)?;
    if volume::here(d, &rec).is_err() {
        return Err(InstanceError::Invalid(format!(
            "Device {:?}: storage volume {:?} is on cluster member {}, and instance {name} is on {}: a volume is used on its own member",
            disk.device,
            disk.volume,
            rec.location,
            d.server_name()
        )));
    }
    let driver = d.pool(&disk.pool).ok_or_else(|| {
        InstanceError::Failed(format!("Storage pool {:?} is unavailable", disk.pool))
    })?;
    let path = driver.volume_path(&disk.volume);
    // A volume never mounted is owned by host root, as made.
    let have = rec
        .config
        .get(volume::IDMAP_KEY)
        .and_then(|s| IdShift::from_incus_json(s))
        .unwrap_or(IdShift::IDENTITY);
    if have == shift {
        return Ok(path);
    }
    for user in volume::used_by(d, &disk.pool, &disk.volume)? {
        let Some(other) = user.strip_prefix("/1.0/instances/") else {
            continue;
        };
        if other != name && running_shift(d, other).is_some_and(|s| s != shift) {
            return Err(InstanceError::Conflict(format!(
                "Idmaps of instance {other:?} and storage volume {:?} are not identical",
                disk.volume
            )));
        }
    }
    let vol = disk.volume.clone();
    tokio::task::spawn_blocking(move || driver.reshift_volume(&vol, have, shift))
        .await
        .map_err(|e| InstanceError::Failed(format!("internal task failed: {e}")))??;
    volume::set_idmap(d, &disk.pool, &disk.volume, shift).await?;
    Ok(path)
}

/// The devices as liblxc mounts them at start: each volume disk's `source` becomes the
/// volume's directory, re-owned for `shift` first.
pub async fn resolve(
    d: &Daemon,
    name: &str,
    devices: &DeviceMap,
    shift: IdShift,
) -> Result<DeviceMap> {
    let mut out = devices.clone();
    for disk in volume_disks(devices) {
        let path = own_for(d, name, &disk, shift).await?;
        if let Some(dev) = out.get_mut(&disk.device) {
            dev.remove("pool");
            dev.insert("source".into(), path.display().to_string());
        }
    }
    Ok(out)
}

/// A non-root disk as the container sees it: what it mounts and where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// A host path, or `pool`/`volume` of a custom volume.
    source: (Option<String>, String),
    path: String,
    readonly: bool,
}

fn mounts(devices: &DeviceMap) -> Vec<Mount> {
    devices
        .values()
        .filter(|d| {
            d.get("type").map(String::as_str) == Some("disk")
                && d.get("path").is_some_and(|p| p != "/")
        })
        .filter_map(|d| {
            Some(Mount {
                source: (
                    d.get("pool").filter(|p| !p.is_empty()).cloned(),
                    d.get("source")?.clone(),
                ),
                path: d.get("path")?.clone(),
                readonly: is_true(d.get("readonly")),
            })
        })
        .collect()
}

/// Applies a change of disks to a running container: mounts the added ones and unmounts
/// the removed ones (a changed one is both), as Incus hotplugs disks. Stops at the first
/// failure; the caller records the new devices only after this succeeded.
pub async fn hotplug(
    d: &Daemon,
    name: &str,
    old: &DeviceMap,
    new: &DeviceMap,
    shift: IdShift,
) -> Result<()> {
    let (before, after) = (mounts(old), mounts(new));
    if before == after {
        return Ok(());
    }
    let Some(pid) = super::lxc::init_pid(&d.paths.lxc, name)? else {
        return Ok(());
    };
    for gone in before.iter().filter(|b| !after.contains(b)) {
        super::hotplug::unmount(pid, &gone.path).await?;
    }
    for added in after.iter().filter(|a| !before.contains(a)) {
        let source = match &added.source {
            (Some(pool), volume) => {
                let disk = VolumeDisk {
                    device: String::new(),
                    pool: pool.clone(),
                    volume: volume.clone(),
                    path: added.path.clone(),
                    readonly: added.readonly,
                };
                own_for(d, name, &disk, shift).await?
            }
            (None, host) => PathBuf::from(host),
        };
        super::hotplug::mount(pid, &source, &added.path, added.readonly).await?;
    }
    Ok(())
}

/// Applies a profile change to the disks and NICs of the running instances that use it, before the
/// profile is written (as [`hotplug`] does for one instance).
pub async fn profile_hotplug(d: &Daemon, profile: &ProfileRecord) -> Result<()> {
    let known = super::all_profiles(d)?;
    let mut updated = known.clone();
    updated.insert(profile.name.clone(), profile.clone());
    let mut running = Vec::new();
    for rec in d.db.instances()? {
        if !rec.profiles.contains(&profile.name)
            || super::lxc_state(d, &rec.name) != super::lxc::LxcState::Running
        {
            continue;
        }
        let (_, old) = super::expand_from(&known, &rec.profiles, &rec.config, &rec.devices)?;
        let (_, new) = super::expand_from(&updated, &rec.profiles, &rec.config, &rec.devices)?;
        running.push((rec.name, rec.config, old, new));
    }
    for (name, mut config, old, new) in running {
        let Some(shift) = running_shift(d, &name) else {
            continue;
        };
        hotplug(d, &name, &old, &new, shift).await?;
        super::nics::hotplug(d, &name, &old, &new, &mut config).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn only_non_root_disks_with_a_pool_are_volume_disks() {
        let mut m = DeviceMap::new();
        m.insert(
            "root".into(),
            dev(&[("type", "disk"), ("path", "/"), ("pool", "default")]),
        );
        m.insert(
            "data".into(),
            dev(&[
                ("type", "disk"),
                ("path", "/data"),
                ("pool", "p"),
                ("source", "v"),
                ("readonly", "true"),
            ]),
        );
        m.insert(
            "host".into(),
            dev(&[("type", "disk"), ("path", "/srv"), ("source", "/srv")]),
        );
        let disks = volume_disks(&m);
        assert_eq!(
            disks,
            vec![VolumeDisk {
                device: "data".into(),
                pool: "p".into(),
                volume: "v".into(),
                path: "/data".into(),
                readonly: true,
            }]
        );
        assert_eq!(mounts(&m).len(), 2);
    }
}
