//! Creating, starting, stopping, renaming, updating and deleting instances.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::cloud_init;
use super::idmap::IdShift;
use super::lxc::{self, LxcState};
use super::lxc_config::{self, RenderInput};
use super::rootfs_access::RootfsAccess;
use super::{expand, expand_with, get, root_pool, InstanceError, Result};
use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, DeviceMap, InstanceRecord};
use crate::db::Command;
use crate::image;
use crate::validate::is_true;

pub struct CreateRequest {
    pub name: String,
    pub image_fingerprint: String,
    pub config: ConfigMap,
    pub devices: DeviceMap,
    /// None: the `default` profile, as Incus does for a missing list.
    pub profiles: Option<Vec<String>>,
    pub ephemeral: bool,
    pub description: String,
    pub start: bool,
}

/// Blocking work (copies, liblxc calls) runs off the async workers.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| InstanceError::Failed(format!("internal task failed: {e}")))?
}

fn shift_for(d: &Daemon, config: &ConfigMap) -> IdShift {
    if is_true(config.get("security.privileged")) {
        IdShift::IDENTITY
    } else {
        d.idmap
    }
}

/// Checks a create request against the database before an operation is started, so that
/// obvious mistakes get a synchronous error.
pub fn precheck_create(d: &Daemon, req: &CreateRequest) -> Result<()> {
    if d.db.instance(&req.name)?.is_some() {
        return Err(InstanceError::Conflict(format!(
            "Instance {:?} already exists",
            req.name
        )));
    }
    let profiles = req
        .profiles
        .clone()
        .unwrap_or_else(|| vec!["default".into()]);
    let (ec, ed) = expand_with(d, &profiles, &req.config, &req.devices)?;
    crate::validate::instance_config(&ec, true)?;
    crate::validate::devices(&ed)?;
    crate::network::nics::check_nics(d, &ed).map_err(nic_error)?;
    super::disks::check(d, &ed)?;
    let pool = root_pool(&ed)?;
    let Some(pool) = d.pool(&pool) else {
        return Err(InstanceError::Invalid(format!(
            "Storage pool {pool:?} doesn't exist"
        )));
    };
    super::check_root_size(pool.as_ref(), &ed)
}

pub async fn create(d: Arc<Daemon>, req: CreateRequest) -> Result<()> {
    let img =
        d.db.image(&req.image_fingerprint)?
            .ok_or_else(|| InstanceError::NotFound("Image not found".into()))?;
    let profiles = req
        .profiles
        .clone()
        .unwrap_or_else(|| vec!["default".into()]);
    let (ec, ed) = expand_with(&d, &profiles, &req.config, &req.devices)?;
    let pool_name = root_pool(&ed)?;
    let pool = d.pool(&pool_name).ok_or_else(|| {
        InstanceError::Invalid(format!("Storage pool {pool_name:?} doesn't exist"))
    })?;
    super::check_root_size(pool.as_ref(), &ed)?;
    let quota = super::root_size(&ed)?;
    let shift = shift_for(&d, &ec);

    let mut config = super::config_from_image(&img.properties);
    config.extend(req.config.clone());
    config.insert("volatile.base_image".into(), img.fingerprint.clone());
    super::initial_volatile(&mut config, &ed, &shift.to_incus_json());
    let now = Utc::now();
    let rec = InstanceRecord {
        name: req.name.clone(),
        instance_type: "container".into(),
        architecture: img.architecture.clone(),
        config,
        devices: req.devices.clone(),
        profiles,
        ephemeral: req.ephemeral,
        stateful: false,
        description: req.description.clone(),
        created_at: now,
        last_used_at: now,
        location: d
            .cluster()
            .map(|c| c.name().to_string())
            .unwrap_or_default(),
    };
    let lock = d.instance_lock(&req.name);
    let _guard = lock.lock().await;
    d.write(vec![Command::CreateInstance(rec)]).await?;

    if let Err(e) = crate::cluster::images::ensure_local(&d, &img.fingerprint).await {
        let _ = d
            .write(vec![Command::DeleteInstance {
                name: req.name.clone(),
            }])
            .await;
        return Err(InstanceError::Failed(e));
    }
    let made = {
        let d2 = d.clone();
        let fp = img.fingerprint.clone();
        let name = req.name.clone();
        let pool = pool.clone();
        blocking(move || {
            image::ensure_in_pool(&d2, pool.as_ref(), &fp)
                .map_err(|e| InstanceError::Failed(e.to_string()))?;
            pool.create_instance_from_image(&fp, &name, shift)?;
            // A new volume has no limit: only a size needs a call (quotas cost a commit).
            if quota.is_some() {
                if let Err(e) = pool.set_instance_quota(&name, quota) {
                    let _ = pool.delete_instance(&name);
                    return Err(e.into());
                }
            }
            Ok(())
        })
        .await
    };
    if let Err(e) = made {
        let _ = d
            .write(vec![Command::DeleteInstance {
                name: req.name.clone(),
            }])
            .await;
        return Err(e);
    }
    let _ = d
        .write(vec![Command::UpdateImage(
            crate::db::records::ImageRecord {
                last_used_at: Some(now),
                ..img
            },
        )])
        .await;
    d.events.lifecycle(
        "instance-created",
        &super::url(&req.name),
        serde_json::json!({"type": "container"}),
    );
    drop(_guard);
    if req.start {
        start(d, &req.name).await?;
    }
    Ok(())
}

fn lxc_log_tail(d: &Daemon, name: &str) -> String {
    let log = std::fs::read_to_string(d.instance_log_dir(name).join("lxc.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn nic_error(e: crate::network::NetworkError) -> InstanceError {
    match e {
        crate::network::NetworkError::Invalid(m) => InstanceError::Invalid(m),
        e => InstanceError::Failed(e.to_string()),
    }
}

pub async fn start(d: Arc<Daemon>, name: &str) -> Result<()> {
    let lock = d.instance_lock(name);
    let _guard = lock.lock().await;
    let rec = get(&d, name)?;
    match super::lxc_state(&d, name) {
        LxcState::Stopped | LxcState::Aborting => {}
        LxcState::Frozen | LxcState::Freezing => {
            return Err(InstanceError::Conflict("The instance is frozen".into()))
        }
        _ => {
            return Err(InstanceError::Conflict(
                "The instance is already running".into(),
            ))
        }
    }
    let (ec, ed) = expand(&d, &rec)?;
    // A NIC on a managed network that is gone would fail deep in liblxc ("no such
    // device"): say which network is missing instead.
    crate::network::nics::check_nics(&d, &ed).map_err(nic_error)?;
    super::disks::check(&d, &ed)?;
    let pool_name = root_pool(&ed)?;
    let pool = d
        .pool(&pool_name)
        .ok_or_else(|| InstanceError::Failed(format!("Storage pool {pool_name:?} is gone")))?;

    // Re-own the rootfs if the id map changed since the last start (privileged toggled).
    let want = shift_for(&d, &ec);
    let have = rec
        .config
        .get("volatile.last_state.idmap")
        .and_then(|s| IdShift::from_incus_json(s))
        .unwrap_or(want);
    if have != want {
        let (pool2, n) = (pool.clone(), name.to_string());
        blocking(move || Ok(pool2.reshift_instance(&n, have, want)?)).await?;
        let json = want.to_incus_json();
        for key in [
            "volatile.last_state.idmap",
            "volatile.idmap.current",
            "volatile.idmap.next",
        ] {
            d.write(vec![Command::SetInstanceVolatile {
                name: name.into(),
                key: key.into(),
                value: Some(json.clone()),
            }])
            .await?;
        }
    }

    // Each start gets fresh host-side veth names, like Incus.
    let mut config = get(&d, name)?.config;
    for (dev, conf) in &ed {
        if conf.get("type").map(String::as_str) == Some("nic") {
            prepare_nic(&d, name, dev, conf, &mut config).await?;
        }
    }
    let mut full = ec.clone();
    full.extend(
        config
            .into_iter()
            .filter(|(k, _)| k.starts_with("volatile.")),
    );

    for (dev, conf) in &ed {
        if conf.get("type").map(String::as_str) != Some("nic") {
            continue;
        }
        let Some(mac) = conf
            .get("hwaddr")
            .or_else(|| full.get(&format!("volatile.{dev}.hwaddr")))
        else {
            continue;
        };
        crate::network::nics::attach_nic(&d, name, dev, conf, mac).map_err(nic_error)?;
    }

    // Volume disks become bind mounts of the volumes' directories, owned for this map.
    let mut mounted = super::disks::resolve(&d, name, &ed, want).await?;
    crate::network::nics::link_free(&d, &mut mounted).map_err(nic_error)?;
    let log_dir = d.instance_log_dir(name);
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| InstanceError::Failed(format!("creating {}: {e}", log_dir.display())))?;
    let rendered = lxc_config::render(
        &RenderInput {
            name,
            rootfs: &pool.rootfs_path(name),
            log_dir: &log_dir,
            config: &full,
            devices: &mounted,
            shift: want,
        },
        &d.host,
    )
    .map_err(|e| InstanceError::Invalid(e.to_string()))?;
    if let Some(seed) = cloud_init::Seed::for_instance(name, &ec) {
        let rootfs = pool.rootfs_path(name);
        blocking(move || {
            RootfsAccess::open(&rootfs, want)
                .and_then(|root| seed.write(&root))
                .map_err(|e| InstanceError::Failed(format!("writing the cloud-init seed: {e}")))
        })
        .await?;
        tracing::debug!(instance = name, "wrote the cloud-init seed");
    }
    let dir = d.paths.lxc.join(name);
    // Owner-only: `environment.*` values are often credentials, and only root's liblxc
    // (forkstart) reads this file, never the container's unprivileged root.
    std::fs::create_dir_all(&dir)
        .and_then(|_| crate::owner_only::write(&dir.join("config"), rendered.as_bytes()))
        .map_err(|e| InstanceError::Failed(format!("writing liblxc config of {name}: {e}")))?;
    let _ = std::fs::write(log_dir.join("lxc.log"), b"");

    let lxcpath = d.paths.lxc.clone();
    let n = name.to_string();
    let started = blocking(move || {
        let exe = std::env::current_exe()
            .map_err(|e| InstanceError::Failed(format!("finding cairnd's own binary: {e}")))?;
        crate::runner::run(
            &exe.to_string_lossy(),
            [Path::new("forkstart"), &lxcpath, Path::new(&n)],
        )
        .map(|_| ())
        .map_err(|e| InstanceError::Failed(e.to_string()))
    })
    .await;
    if let Err(e) = started {
        let tail = lxc_log_tail(&d, name);
        return Err(InstanceError::Failed(format!(
            "Failed to start instance {name}: {e}{}{tail}",
            if tail.is_empty() { "" } else { "\n" }
        )));
    }
    // The container runs: its OVN NICs are bound now, or (Open vSwitch not up yet, as
    // early in a boot that resumes instances) retried in the background for two minutes.
    {
        let (d2, n, devs) = (d.clone(), name.to_string(), ed.clone());
        let first =
            blocking(move || crate::network::nics::plug(&d2, &n, &devs).map_err(nic_error)).await;
        if let Err(e) = first {
            tracing::warn!(instance = %name, "binding its OVN NICs: {e}; retrying");
            let (d2, n, devs) = (d.clone(), name.to_string(), ed.clone());
            tokio::spawn(async move {
                for _ in 0..60 {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    let (d3, n3, v3) = (d2.clone(), n.clone(), devs.clone());
                    let r = tokio::task::spawn_blocking(move || {
                        crate::network::nics::plug(&d3, &n3, &v3)
                    })
                    .await;
                    if matches!(r, Ok(Ok(()))) {
                        tracing::info!(instance = %n, "OVN NICs bound");
                        return;
                    }
                }
                tracing::error!(instance = %n, "its OVN NICs are still not bound after 2 min");
            });
        }
    }
    d.write(vec![Command::SetInstanceVolatile {
        name: name.into(),
        key: "volatile.last_state.power".into(),
        value: Some("RUNNING".into()),
    }])
    .await?;
    let mut rec = get(&d, name)?;
    rec.last_used_at = Utc::now();
    d.write(vec![Command::UpdateInstance(rec)]).await?;
    d.events
        .lifecycle("instance-started", &super::url(name), serde_json::json!({}));
    Ok(())
}

/// Stops an instance: `force` kills it, otherwise its init is asked to power off and given
/// `timeout` seconds (negative: no limit, as Incus).
pub async fn stop(d: Arc<Daemon>, name: &str, force: bool, timeout: i64) -> Result<()> {
    let lock = d.instance_lock(name);
    let _guard = lock.lock().await;
    get(&d, name)?;
    if super::lxc_state(&d, name) == LxcState::Stopped {
        return Err(InstanceError::Conflict(
            "The instance is already stopped".into(),
        ));
    }
    let lxcpath = d.paths.lxc.clone();
    let n = name.to_string();
    blocking(move || {
        if force || timeout == 0 {
            if lxc::state(&lxcpath, &n)? == LxcState::Frozen {
                let _ = lxc::unfreeze(&lxcpath, &n);
            }
            lxc::stop(&lxcpath, &n)?;
            return Ok(());
        }
        let t = if timeout < 0 {
            -1
        } else {
            timeout.min(i32::MAX as i64) as i32
        };
        if !lxc::shutdown(&lxcpath, &n, t)? {
            return Err(InstanceError::Failed(format!(
                "Failed shutting down instance {n}: still running after {timeout}s"
            )));
        }
        Ok(())
    })
    .await?;
    // Not fatal: the next start replaces a port left bound.
    let unplugged = {
        let (d2, n) = (d.clone(), name.to_string());
        blocking(move || {
            let (_, ed) = expand(&d2, &get(&d2, &n)?)?;
            crate::network::nics::unplug(&d2, &n, &ed).map_err(nic_error)
        })
        .await
    };
    if let Err(e) = unplugged {
        tracing::warn!(instance = %name, "unbinding its OVN NICs: {e}");
    }
    d.write(vec![Command::SetInstanceVolatile {
        name: name.into(),
        key: "volatile.last_state.power".into(),
        value: Some("STOPPED".into()),
    }])
    .await?;
    d.events
        .lifecycle("instance-stopped", &super::url(name), serde_json::json!({}));
    let rec = get(&d, name)?;
    drop(_guard);
    if rec.ephemeral {
        delete(d, name).await?;
    }
    Ok(())
}

pub async fn restart(d: Arc<Daemon>, name: &str, force: bool, timeout: i64) -> Result<()> {
    if super::lxc_state(&d, name) != LxcState::Stopped {
        // An ephemeral instance must survive its own restart.
        let rec = get(&d, name)?;
        if rec.ephemeral {
            let lxcpath = d.paths.lxc.clone();
            let n = name.to_string();
            blocking(move || Ok(lxc::stop(&lxcpath, &n)?)).await?;
        } else {
            stop(d.clone(), name, force, timeout).await?;
        }
    }
    start(d, name).await
}

pub async fn freeze(d: Arc<Daemon>, name: &str, freeze: bool) -> Result<()> {
    let lock = d.instance_lock(name);
    let _guard = lock.lock().await;
    get(&d, name)?;
    let st = super::lxc_state(&d, name);
    match (freeze, st) {
        (true, LxcState::Running | LxcState::Thawed) => {}
        (false, LxcState::Frozen) => {}
        (true, LxcState::Frozen) => {
            return Err(InstanceError::Conflict(
                "The instance is already frozen".into(),
            ))
        }
        (false, LxcState::Running | LxcState::Thawed) => {
            return Err(InstanceError::Conflict("The instance is not frozen".into()))
        }
        _ => return Err(InstanceError::Conflict("The instance isn't running".into())),
    }
    let lxcpath = d.paths.lxc.clone();
    let n = name.to_string();
    blocking(move || {
        if freeze {
            lxc::freeze(&lxcpath, &n)?
        } else {
            lxc::unfreeze(&lxcpath, &n)?
        }
        Ok(())
    })
    .await?;
    let action = if freeze {
        "instance-paused"
    } else {
        "instance-resumed"
    };
    d.events
        .lifecycle(action, &super::url(name), serde_json::json!({}));
    Ok(())
}

pub async fn delete(d: Arc<Daemon>, name: &str) -> Result<()> {
    let lock = d.instance_lock(name);
    let _guard = lock.lock().await;
    let rec = get(&d, name)?;
    if super::lxc_state(&d, name) != LxcState::Stopped {
        return Err(InstanceError::Conflict(
            "The instance is currently running, stop it first or use --force".into(),
        ));
    }
    if is_true(rec.config.get("security.protection.delete")) {
        return Err(InstanceError::Conflict(
            "The instance is protected from deletion (security.protection.delete)".into(),
        ));
    }
    let (_, ed) = expand(&d, &rec)?;
    if let Some(pool) = root_pool(&ed).ok().and_then(|p| d.pool(&p)) {
        let n = name.to_string();
        blocking(move || Ok(pool.delete_instance(&n)?)).await?;
    }
    d.write(vec![Command::DeleteInstance { name: name.into() }])
        .await?;
    crate::network::nics::forget_instance(&d, name);
    let _ = crate::storage::tree::remove(&d.paths.lxc.join(name));
    let _ = crate::storage::tree::remove(&d.instance_log_dir(name));
    d.events
        .lifecycle("instance-deleted", &super::url(name), serde_json::json!({}));
    Ok(())
}

pub async fn rename(d: Arc<Daemon>, from: &str, to: &str) -> Result<()> {
    crate::validate::instance_name(to)?;
    let lock = d.instance_lock(from);
    let _guard = lock.lock().await;
    let rec = get(&d, from)?;
    if super::lxc_state(&d, from) != LxcState::Stopped {
        return Err(InstanceError::Conflict(
            "Renaming of running instance not allowed".into(),
        ));
    }
    if d.db.instance(to)?.is_some() {
        return Err(InstanceError::Conflict(format!(
            "Instance {to:?} already exists"
        )));
    }
    let (_, ed) = expand(&d, &rec)?;
    let pool = root_pool(&ed)
        .ok()
        .and_then(|p| d.pool(&p))
        .ok_or_else(|| InstanceError::Failed("root pool missing".into()))?;
    {
        let (f, t) = (from.to_string(), to.to_string());
        let pool = pool.clone();
        blocking(move || Ok(pool.rename_instance(&f, &t)?)).await?;
    }
    if let Err(e) = d
        .write(vec![Command::RenameInstance {
            from: from.into(),
            to: to.into(),
        }])
        .await
    {
        let _ = pool.rename_instance(to, from);
        return Err(e.into());
    }
    let _ = crate::storage::tree::remove(&d.paths.lxc.join(from));
    let _ = std::fs::rename(d.instance_log_dir(from), d.instance_log_dir(to));
    d.events.lifecycle(
        "instance-renamed",
        &super::url(to),
        serde_json::json!({"old_name": from}),
    );
    Ok(())
}

/// Replaces the writable part of an instance (PUT), keeping the daemon's volatile keys.
///
/// What a NIC needs before it is made: a macvlan's parent must exist (liblxc's own failure
/// would not name the device); a NIC added after the instance was made gets its
/// `volatile.<dev>.hwaddr` now (kept from then on, as Incus keeps it); a veth a fresh
/// host-side name, each time. New volatile keys are written and put into `config`.
pub async fn prepare_nic(
    d: &Daemon,
    name: &str,
    dev: &str,
    conf: &std::collections::BTreeMap<String, String>,
    config: &mut ConfigMap,
) -> Result<()> {
    let macvlan = conf.get("nictype").map(String::as_str) == Some("macvlan");
    if macvlan {
        let parent = conf.get("parent").map(String::as_str).unwrap_or("");
        if !crate::network::netlink::exists(parent) {
            return Err(InstanceError::Invalid(format!(
                "Device {dev:?}: parent interface {parent:?} doesn't exist"
            )));
        }
    }
    let mut fresh = Vec::new();
    let mac_key = format!("volatile.{dev}.hwaddr");
    if !conf.contains_key("hwaddr") && !config.contains_key(&mac_key) {
        fresh.push((mac_key, super::random_hwaddr()));
    }
    if !macvlan && !conf.contains_key("host_name") {
        fresh.push((
            format!("volatile.{dev}.host_name"),
            super::random_veth_name(),
        ));
    }
    for (key, v) in fresh {
        d.write(vec![Command::SetInstanceVolatile {
            name: name.into(),
            key: key.clone(),
            value: Some(v.clone()),
        }])
        .await?;
        config.insert(key, v);
    }
    Ok(())
}

/// Async for its write: it runs on the runtime, where a cluster write cannot block.
pub async fn update(
    d: &Daemon,
    name: &str,
    mut config: ConfigMap,
    devices: DeviceMap,
    profiles: Vec<String>,
    description: String,
    ephemeral: bool,
) -> Result<()> {
    let rec = get(d, name)?;
    super::keep_volatile(&rec.config, &mut config);
    let (ec, ed) = expand_with(d, &profiles, &config, &devices)?;
    crate::validate::instance_config(&ec, true)?;
    crate::validate::devices(&ed)?;
    let (_, old_ed) = expand(d, &rec)?;
    let pool_name = root_pool(&ed)?;
    if pool_name != root_pool(&old_ed)? {
        return Err(InstanceError::Invalid(
            "Changing the root disk's pool is not supported".into(),
        ));
    }
    super::disks::check(d, &ed)?;
    // A running container gets its disks mounted and unmounted now, before the record
    // says so; a stopped one mounts them at its next start.
    if super::lxc_state(d, name) == LxcState::Running {
        let shift = rec
            .config
            .get("volatile.last_state.idmap")
            .and_then(|s| IdShift::from_incus_json(s))
            .unwrap_or_else(|| shift_for(d, &ec));
        super::disks::hotplug(d, name, &old_ed, &ed, shift).await?;
        super::nics::hotplug(d, name, &old_ed, &ed, &mut config).await?;
    }
    let size = super::root_size(&ed)?;
    if size != super::root_size(&old_ed)? {
        let pool = d.pool(&pool_name).ok_or_else(|| {
            InstanceError::Failed(format!("Storage pool {pool_name:?} is unavailable"))
        })?;
        super::check_root_size(pool.as_ref(), &ed)?;
        let n = name.to_string();
        blocking(move || Ok(pool.set_instance_quota(&n, size)?)).await?;
    }
    d.write(vec![Command::UpdateInstance(InstanceRecord {
        config,
        devices,
        profiles,
        description,
        ephemeral,
        ..rec
    })])
    .await?;
    d.events
        .lifecycle("instance-updated", &super::url(name), serde_json::json!({}));
    Ok(())
}

/// Waits until liblxc reports the state, for tests and shutdown.
pub async fn wait_state(d: &Daemon, name: &str, want: LxcState, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if super::lxc_state(d, name) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
