//! `incus cluster evacuate|restore M`: runs on member M itself (the API routes the request
//! there). Evacuating marks M so it takes no new instances, stops its instances and, in
//! the default mode, moves each to the online member with the fewest instances and starts
//! it there if it was running; restoring brings them back and starts what ran before.
//!
//! Each moved instance carries `volatile.evacuate.origin` (and `volatile.evacuate.running`
//! if it ran), so restore knows what to bring back even after restarts of either side.

use std::sync::Arc;

use std::time::Duration;

use super::member::Member;
use super::member_api;
use crate::daemon::Daemon;
use crate::db::Command;
use crate::instance::lxc::LxcState;

const ORIGIN: &str = "volatile.evacuate.origin";
const RUNNING: &str = "volatile.evacuate.running";
/// A clean stop gets this long before the container is killed.
const STOP_TIMEOUT: i64 = 30;

fn volatile(name: &str, key: &str, value: Option<&str>) -> Command {
    Command::SetInstanceVolatile {
        name: name.to_string(),
        key: key.to_string(),
        value: value.map(str::to_string),
    }
}

async fn set_evacuated(d: &Daemon, name: &str, evacuated: bool) -> Result<(), String> {
    let mut m =
        d.db.member(name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("member {name} not found"))?;
    m.evacuated = evacuated;
    d.write(vec![Command::UpdateMember(m)])
        .await
        .map_err(|e| e.to_string())
}

/// How long one call to another member may take (an operation wait has its own bound).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(660);

/// Sends an API request to member `addr` and, if it starts an operation, waits for it.
pub async fn call_member(
    rt: &Member,
    addr: &str,
    method: http::Method,
    path: &str,
    body: serde_json::Value,
) -> Result<(), String> {
    let v = member_api::call_json(rt, addr, method, path, Some(&body), CALL_TIMEOUT).await?;
    if v["type"] != "async" {
        return Ok(());
    }
    let id = v["metadata"]["id"]
        .as_str()
        .ok_or("an operation without id")?
        .to_string();
    let done = member_api::call_json(
        rt,
        addr,
        http::Method::GET,
        &format!("/1.0/operations/{id}/wait?timeout=600"),
        None,
        OPERATION_TIMEOUT,
    )
    .await?;
    match done["metadata"]["status_code"].as_u64() {
        Some(200) => Ok(()),
        _ => Err(done["metadata"]["err"]
            .as_str()
            .filter(|e| !e.is_empty())
            .unwrap_or("the operation failed")
            .to_string()),
    }
}

/// The online, not evacuated member (other than `not`) with the fewest instances.
async fn pick_target(d: &Daemon, rt: &Member, not: &str) -> Result<String, String> {
    let members = d.db.members().map_err(|e| e.to_string())?;
    let instances = d.db.instances().map_err(|e| e.to_string())?;
    // The leader hears from every member; a follower only from the leader.
    let live = rt.liveness_view().await;
    let threshold = super::member::RoleSettings::of(&d.db).offline_threshold;
    let online = |id| {
        live.get(&id)
            .is_some_and(|ms| *ms < threshold.as_millis() as u64)
    };
    members
        .into_iter()
        .filter(|m| m.name != not && !m.evacuated && (m.id == rt.id() || online(m.id)))
        .min_by_key(|m| instances.iter().filter(|i| i.location == m.name).count())
        .map(|m| m.name)
        .ok_or_else(|| "No other member can take the instances".to_string())
}

pub async fn evacuate(d: Arc<Daemon>, mode: &str) -> Result<(), String> {
    let rt = d.cluster().ok_or("not clustered")?;
    let me = rt.name();
    set_evacuated(&d, &me, true).await?;
    let mine: Vec<_> =
        d.db.instances()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|i| i.location == me)
            .collect();
    for inst in mine {
        let name = inst.name.clone();
        let running = crate::instance::lxc_state(&d, &name) != LxcState::Stopped;
        let mut marks = vec![volatile(&name, ORIGIN, Some(&me))];
        if running {
            marks.push(volatile(&name, RUNNING, Some("true")));
        }
        d.write(marks).await.map_err(|e| e.to_string())?;
        if running {
            crate::instance::lifecycle::stop(d.clone(), &name, false, STOP_TIMEOUT)
                .await
                .map_err(|e| format!("stopping {name}: {e}"))?;
        }
        if mode == "stop" {
            continue;
        }
        // `auto` moves what can move: an instance mounting a custom volume (whose files
        // are on this member) stays here, stopped, as Incus leaves instances it cannot
        // migrate. `migrate` insists, and fails on it.
        if mode == "auto" {
            let devices = crate::instance::expand(&d, &inst).map(|(_, ed)| ed);
            if devices.is_ok_and(|ed| !crate::instance::disks::volume_disks(&ed).is_empty()) {
                continue;
            }
        }
        let target = pick_target(&d, &rt, &me).await?;
        crate::instance::migrate::move_to(d.clone(), &name, &target)
            .await
            .map_err(|e| format!("moving {name} to {target}: {e}"))?;
        if running {
            let addr = rt
                .member_address(&target)
                .ok_or_else(|| format!("member {target} has no address"))?;
            call_member(
                &rt,
                &addr,
                http::Method::PUT,
                &format!("/1.0/instances/{name}/state"),
                serde_json::json!({"action": "start"}),
            )
            .await
            .map_err(|e| format!("starting {name} on {target}: {e}"))?;
        }
    }
    d.events.lifecycle(
        "cluster-member-evacuated",
        &format!("/1.0/cluster/members/{me}"),
        serde_json::json!({}),
    );
    Ok(())
}

pub async fn restore(d: Arc<Daemon>) -> Result<(), String> {
    let rt = d.cluster().ok_or("not clustered")?;
    let me = rt.name();
    let ours: Vec<_> =
        d.db.instances()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|i| i.config.get(ORIGIN) == Some(&me))
            .collect();
    // Back here before taking new instances: restore is the opposite of evacuate.
    set_evacuated(&d, &me, false).await?;
    for inst in ours {
        let name = inst.name.clone();
        let was_running = inst.config.get(RUNNING).is_some_and(|v| v == "true");
        if inst.location != me {
            let addr = rt
                .member_address(&inst.location)
                .ok_or_else(|| format!("member {} has no address", inst.location))?;
            if was_running {
                call_member(
                    &rt,
                    &addr,
                    http::Method::PUT,
                    &format!("/1.0/instances/{name}/state"),
                    serde_json::json!({"action": "stop", "timeout": STOP_TIMEOUT}),
                )
                .await
                .map_err(|e| format!("stopping {name} on {}: {e}", inst.location))?;
            }
            call_member(
                &rt,
                &addr,
                http::Method::POST,
                &format!("/1.0/instances/{name}?target={me}"),
                serde_json::json!({"name": name, "migration": true}),
            )
            .await
            .map_err(|e| format!("bringing {name} back from {}: {e}", inst.location))?;
        }
        d.write(vec![
            volatile(&name, ORIGIN, None),
            volatile(&name, RUNNING, None),
        ])
        .await
        .map_err(|e| e.to_string())?;
        if was_running {
            crate::instance::lifecycle::start(d.clone(), &name)
                .await
                .map_err(|e| format!("starting {name}: {e}"))?;
        }
    }
    d.events.lifecycle(
        "cluster-member-restored",
        &format!("/1.0/cluster/members/{me}"),
        serde_json::json!({}),
    );
    Ok(())
}
