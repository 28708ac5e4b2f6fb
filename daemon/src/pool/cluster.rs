//! Pools in a cluster, made as Incus makes them: `incus storage create P DRIVER source=…
//! --target M` defines member M's share (its disk, loop size, zpool name) and leaves the
//! pool Pending; `incus storage create P DRIVER` (no target, shared keys only) makes every
//! member's share and marks the pool Created. A pool nobody defined shares for is made on
//! every member with the shared keys alone (a loop file or a directory under each
//! member's state dir) — Incus refuses that; it is the one convenience taken here.
//!
//! A share is made by the member itself (`POST /internal/cluster/storage-pools`), since
//! only it sees its disks. If any member fails, the shares already made are removed again
//! and the pool stays Pending with its definitions, so the same create can be retried.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use super::{create_local, destroy_local, split_member_keys, NewPool, PoolError, Result};
use crate::daemon::Daemon;
use crate::db::records::{ConfigMap, PoolRecord, PoolShare, PoolStatus};
use crate::db::Command;

pub const SHARE_PATH: &str = "/internal/cluster/storage-pools";

/// Making a share formats a disk or writes a loop file; removing one destroys a zpool.
const SHARE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a member is asked to make.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ShareRequest {
    pub name: String,
    pub driver: String,
    pub config: ConfigMap,
}

/// `--target M`: records member M's keys; nothing is made yet.
pub async fn define(d: &Arc<Daemon>, req: &NewPool, target: &str) -> Result<()> {
    if d.db.member(target)?.is_none() {
        return Err(PoolError::NotFound(format!(
            "Cluster member {target:?} not found"
        )));
    }
    if let Some(k) = req
        .config
        .keys()
        .find(|k| !super::MEMBER_KEYS.contains(&k.as_str()))
    {
        return Err(PoolError::Invalid(format!(
            "Config key {k:?} may not be used as member-specific key"
        )));
    }
    if let Some(p) = d.db.pool(&req.name)? {
        if p.status == PoolStatus::Created {
            return Err(PoolError::Conflict(
                "The storage pool is already created".into(),
            ));
        }
        if p.driver != req.driver {
            return Err(PoolError::Invalid(format!(
                "Storage pool {:?} is being defined with driver {:?}",
                req.name, p.driver
            )));
        }
        if p.members.contains_key(target) {
            return Err(PoolError::Invalid(format!(
                "The storage pool already defined on member {target:?}"
            )));
        }
    }
    d.write(vec![Command::SetPoolShare {
        pool: req.name.clone(),
        driver: req.driver.clone(),
        member: target.to_string(),
        share: PoolShare {
            config: req.config.clone(),
            created: false,
        },
    }])
    .await?;
    Ok(())
}

/// No target: every member makes its share, then the pool is Created.
pub async fn create(d: &Arc<Daemon>, req: NewPool) -> Result<()> {
    if let Some(k) = req
        .config
        .keys()
        .find(|k| super::MEMBER_KEYS.contains(&k.as_str()))
    {
        return Err(PoolError::Invalid(format!(
            "Config key {k:?} is cluster member specific"
        )));
    }
    let existing = d.db.pool(&req.name)?;
    let members = d.db.members()?;
    if let Some(p) = &existing {
        if p.status == PoolStatus::Created {
            return Err(PoolError::Conflict(
                "The storage pool is already created".into(),
            ));
        }
        if p.driver != req.driver {
            return Err(PoolError::Invalid(format!(
                "Requested storage pool driver {:?} doesn't match driver in existing database record {:?}",
                req.driver, p.driver
            )));
        }
        let missing: Vec<&str> = members
            .iter()
            .filter(|m| !p.members.contains_key(&m.name))
            .map(|m| m.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(PoolError::Invalid(format!(
                "Pool not defined on members: {} (use --target <member> first)",
                missing.join(", ")
            )));
        }
    }
    let mut rec = existing.clone().unwrap_or_else(|| PoolRecord {
        name: req.name.clone(),
        driver: req.driver.clone(),
        ..PoolRecord::default()
    });
    rec.config.extend(req.config.clone());
    if !req.description.is_empty() {
        rec.description = req.description.clone();
    }
    for m in &members {
        rec.members.entry(m.name.clone()).or_default();
    }
    // Written before anything is made, so that no other create of the name starts.
    rec.status = PoolStatus::Pending;
    d.write(vec![match existing {
        Some(_) => Command::UpdatePool(rec.clone()),
        None => Command::CreatePool(rec.clone()),
    }])
    .await?;

    let me = d.server_name();
    // This member first: a bad shared key fails here before any other member is asked.
    let mut order: Vec<_> = members.iter().collect();
    order.sort_by_key(|m| m.name != me);
    let mut made: Vec<(String, String)> = Vec::new();
    let mut failure = None;
    for m in order {
        let mut config = rec.config.clone();
        config.extend(rec.members[&m.name].config.clone());
        let result = if m.name == me {
            create_local(d, &req.name, &req.driver, &config).await
        } else {
            create_remote(d, &m.address, &req.name, &req.driver, config).await
        };
        match result {
            Ok(filled) => {
                let (shared, own) = split_member_keys(&filled);
                if m.name == me {
                    // Defaults the driver filled in for every member (mount options).
                    for (k, v) in shared {
                        rec.config.entry(k).or_insert(v);
                    }
                }
                rec.members.insert(
                    m.name.clone(),
                    PoolShare {
                        config: own,
                        created: true,
                    },
                );
                made.push((m.name.clone(), m.address.clone()));
            }
            Err(e) => {
                failure = Some((m.name.clone(), e));
                break;
            }
        }
    }
    if let Some((member, e)) = failure {
        for (name, addr) in made.iter().rev() {
            let undone = if *name == me {
                destroy_local(d, &req.name).await
            } else {
                destroy_remote(d, addr, &req.name).await
            };
            if let Err(u) = undone {
                tracing::error!(pool = %req.name, member = %name, "removing a share after a failed create: {u}");
            }
        }
        let back = match existing {
            Some(mut p) => {
                p.status = PoolStatus::Pending;
                Command::UpdatePool(p)
            }
            None => Command::DeletePool {
                name: req.name.clone(),
            },
        };
        if let Err(w) = d.write(vec![back]).await {
            tracing::error!(pool = %req.name, "restoring the pool record after a failed create: {w}");
        }
        return Err(match e {
            PoolError::Invalid(m) => {
                PoolError::Invalid(format!("Creating the pool on member {member}: {m}"))
            }
            PoolError::Storage(s) if s.is_bad_input() => {
                PoolError::Invalid(format!("Creating the pool on member {member}: {s}"))
            }
            e => PoolError::Failed(format!("Creating the pool on member {member}: {e}")),
        });
    }
    rec.status = PoolStatus::Created;
    d.write(vec![Command::UpdatePool(rec)]).await?;
    super::created_event(d, &req.name);
    Ok(())
}

/// The record goes first, then every member removes its share; a member that cannot is
/// reported (its files stay behind, no pool the API lists).
pub async fn delete(d: &Arc<Daemon>, p: PoolRecord) -> Result<()> {
    d.write(vec![Command::DeletePool {
        name: p.name.clone(),
    }])
    .await?;
    if p.status == PoolStatus::Pending && p.members.values().all(|s| !s.created) {
        return Ok(());
    }
    let me = d.server_name();
    let mut failed = Vec::new();
    for m in d.db.members()? {
        let has_share = p.members.get(&m.name).is_none_or(|s| s.created);
        if !has_share {
            continue;
        }
        let removed = if m.name == me {
            destroy_local(d, &p.name).await
        } else {
            destroy_remote(d, &m.address, &p.name).await
        };
        if let Err(e) = removed {
            tracing::error!(pool = %p.name, member = %m.name, "removing the pool's storage: {e}");
            failed.push(format!("{}: {e}", m.name));
        }
    }
    if !failed.is_empty() {
        return Err(PoolError::Failed(format!(
            "Storage pool {:?} was deleted, but its storage was not removed on {}",
            p.name,
            failed.join("; ")
        )));
    }
    Ok(())
}

async fn create_remote(
    d: &Daemon,
    addr: &str,
    name: &str,
    driver: &str,
    config: ConfigMap,
) -> Result<ConfigMap> {
    let rt = d
        .cluster()
        .ok_or_else(|| PoolError::Failed("This server is not clustered".into()))?;
    let body = serde_json::to_value(ShareRequest {
        name: name.to_string(),
        driver: driver.to_string(),
        config,
    })
    .map_err(|e| PoolError::Failed(e.to_string()))?;
    let (status, answer) = crate::cluster::member_api::call(
        &rt,
        addr,
        Method::POST,
        SHARE_PATH,
        Some(&body),
        SHARE_TIMEOUT,
    )
    .await
    .map_err(PoolError::Failed)?;
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    if !status.is_success() {
        let msg = v["error"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("answered {status}"));
        return Err(match status {
            StatusCode::BAD_REQUEST | StatusCode::CONFLICT => PoolError::Invalid(msg),
            _ => PoolError::Failed(msg),
        });
    }
    serde_json::from_value(v["metadata"]["config"].clone())
        .map_err(|e| PoolError::Failed(format!("the member's answer: {e}")))
}

async fn destroy_remote(d: &Daemon, addr: &str, name: &str) -> Result<()> {
    let rt = d
        .cluster()
        .ok_or_else(|| PoolError::Failed("This server is not clustered".into()))?;
    crate::cluster::member_api::call_json(
        &rt,
        addr,
        Method::DELETE,
        &format!("{SHARE_PATH}/{name}"),
        None,
        SHARE_TIMEOUT,
    )
    .await
    .map(drop)
    .map_err(PoolError::Failed)
}

/// After joining: this member makes its share of every created pool it cannot open yet
/// (a pool made before it joined: a loop file or a directory with the shared keys), and
/// records the share it made from its preseed, so that `--target` shows its own keys.
pub async fn adopt_shares(d: &Arc<Daemon>) {
    let me = d.server_name();
    let pools = match d.db.pools() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("listing pools after joining: {e}");
            return;
        }
    };
    for p in pools
        .into_iter()
        .filter(|p| p.status == PoolStatus::Created)
    {
        // What the record says of this member may be an earlier member of the same name
        // (removed, then joined again on a new disk): what is open here is what counts.
        let config = if d.pool(&p.name).is_some() {
            let own = split_member_keys(&d.pool_config(&p)).1;
            if p.members
                .get(&me)
                .is_some_and(|s| s.created && s.config == own)
            {
                continue;
            }
            own
        } else {
            let (shared, _) = split_member_keys(&p.config);
            match create_local(d, &p.name, &p.driver, &shared).await {
                Ok(filled) => {
                    tracing::info!(pool = %p.name, "made this member's share of the pool");
                    split_member_keys(&filled).1
                }
                Err(e) => {
                    tracing::error!(pool = %p.name, "making this member's share of the pool: {e}");
                    continue;
                }
            }
        };
        let cmd = Command::SetPoolShare {
            pool: p.name.clone(),
            driver: p.driver.clone(),
            member: me.clone(),
            share: PoolShare {
                config,
                created: true,
            },
        };
        if let Err(e) = d.write(vec![cmd]).await {
            tracing::warn!(pool = %p.name, "recording this member's share: {e}");
        }
    }
}

/// A member leaving the cluster: its shares leave the pools' records.
pub fn drop_member_shares(d: &Daemon, member: &str) -> Result<Vec<Command>> {
    Ok(d.db
        .pools()?
        .into_iter()
        .filter(|p| p.members.contains_key(member))
        .map(|mut p| {
            p.members.remove(member);
            Command::UpdatePool(p)
        })
        .collect())
}

/// At `cluster enable`: the founder's member-specific keys become its share.
pub fn founder_shares(d: &Daemon, founder: &str) -> Result<Vec<Command>> {
    let mut cmds = Vec::new();
    for mut p in d.db.pools()? {
        let own = split_member_keys(&d.pool_config(&p)).1;
        p.config = split_member_keys(&p.config).0;
        p.members.insert(
            founder.to_string(),
            PoolShare {
                config: own,
                created: true,
            },
        );
        cmds.push(Command::UpdatePool(p));
    }
    Ok(cmds)
}
