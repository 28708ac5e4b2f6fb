//! `/1.0/instances` and `/1.0/instances/{name}` (+ `/state`, `/logs`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::response::{async_op, check_if_match, empty, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState};
use crate::db::records::{ConfigMap, DeviceMap};
use crate::instance::{self, lifecycle, InstanceError};
use crate::operations::resources;

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> Self {
        match e {
            InstanceError::NotFound(m) => ApiError::not_found(m),
            InstanceError::Conflict(m) => ApiError::conflict(m),
            InstanceError::Invalid(m) => ApiError::bad_request(m),
            InstanceError::Failed(m) => ApiError::internal(m),
        }
    }
}

pub(super) fn err_string(e: InstanceError) -> String {
    e.to_string()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InstanceSource {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(rename = "certificate", default)]
    _certificate: IgnoredAny,
    #[serde(default)]
    alias: String,
    #[serde(default)]
    fingerprint: String,
    #[serde(rename = "properties", default)]
    _properties: IgnoredAny,
    #[serde(default)]
    server: String,
    #[serde(rename = "secret", default)]
    _secret: IgnoredAny,
    #[serde(rename = "protocol", default)]
    _protocol: IgnoredAny,
    #[serde(rename = "base-image", default)]
    _base_image: IgnoredAny,
    #[serde(rename = "mode", default)]
    _mode: IgnoredAny,
    #[serde(rename = "operation", default)]
    _operation: IgnoredAny,
    #[serde(rename = "secrets", default)]
    _secrets: IgnoredAny,
    #[serde(default)]
    source: String,
    #[serde(rename = "live", default)]
    _live: IgnoredAny,
    #[serde(default)]
    instance_only: bool,
    #[serde(rename = "refresh", default)]
    _refresh: IgnoredAny,
    #[serde(rename = "refresh_exclude_older", default)]
    _refresh_exclude_older: IgnoredAny,
    #[serde(rename = "project", default)]
    _project: IgnoredAny,
    #[serde(rename = "allow_inconsistent", default)]
    _allow_inconsistent: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesPost {
    name: String,
    #[serde(default)]
    source: InstanceSource,
    #[serde(rename = "instance_type", default)]
    _instance_type: IgnoredAny,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    start: bool,
    #[serde(rename = "architecture", default)]
    _architecture: IgnoredAny,
    #[serde(default)]
    config: Option<ConfigMap>,
    #[serde(default)]
    devices: Option<DeviceMap>,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    profiles: Option<Vec<String>>,
    #[serde(rename = "restore", default)]
    _restore: IgnoredAny,
    #[serde(rename = "stateful", default)]
    _stateful: IgnoredAny,
    #[serde(default)]
    description: String,
}

fn resolve_image(d: &AppState, src: &InstanceSource) -> Result<String, ApiError> {
    if !src.server.is_empty() {
        return Err(ApiError::bad_request(
            "Images from remote servers are not supported yet: import the image first",
        ));
    }
    if !src.alias.is_empty() {
        let a = d
            .db
            .alias(&src.alias)?
            .ok_or_else(|| ApiError::not_found(format!("Image alias {:?} not found", src.alias)))?;
        return Ok(a.target);
    }
    if !src.fingerprint.is_empty() {
        return crate::image::resolve(d, &src.fingerprint)
            .map(|i| i.fingerprint)
            .map_err(|_| ApiError::not_found("Image not found"));
    }
    Err(ApiError::bad_request(
        "No image given (source.alias or source.fingerprint)",
    ))
}

pub async fn create(State(d): State<AppState>, ApiJson(req): ApiJson<InstancesPost>) -> ApiResult {
    crate::validate::instance_name(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !req.kind.is_empty() && req.kind != "container" {
        return Err(ApiError::bad_request(format!(
            "Instance type {:?} is not supported (only containers)",
            req.kind
        )));
    }
    let config = req.config.unwrap_or_default();
    // A copy carries the source's config back, volatile keys included; copy() checks it.
    crate::validate::instance_config(&config, req.source.kind == "copy")
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let devices = req.devices.unwrap_or_default();
    crate::validate::devices(&devices).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let image_fingerprint = match req.source.kind.as_str() {
        "image" | "" => resolve_image(&d, &req.source)?,
        "copy" => {
            let creq = crate::instance::copy::CopyRequest {
                name: req.name.clone(),
                source: req.source.source.clone(),
                instance_only: req.source.instance_only,
                config: Some(config),
                devices: Some(devices),
                profiles: req.profiles,
                ephemeral: req.ephemeral,
                description: req.description,
                start: req.start,
            };
            crate::instance::copy::precheck(&d, &creq)?;
            let d2 = d.daemon.clone();
            let op = d.ops.spawn_task(
                "Creating instance",
                resources("instances", &[instance::url(&req.name)]),
                async move {
                    crate::instance::copy::copy(d2, creq)
                        .await
                        .map_err(err_string)
                },
            );
            return async_op(op.view());
        }
        "none" => {
            return Err(ApiError::bad_request(
                "Instances without an image are not supported yet",
            ))
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "Source type {other:?} is not supported"
            )))
        }
    };
    let creq = lifecycle::CreateRequest {
        name: req.name.clone(),
        image_fingerprint,
        config,
        devices,
        profiles: req.profiles,
        ephemeral: req.ephemeral,
        description: req.description,
        start: req.start,
    };
    lifecycle::precheck_create(&d, &creq)?;
    let d2 = d.daemon.clone();
    let op = d.ops.spawn_task(
        "Creating instance",
        resources("instances", &[instance::url(&req.name)]),
        async move { lifecycle::create(d2, creq).await.map_err(err_string) },
    );
    async_op(op.view())
}

pub async fn get_one(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<super::instances_list::ListQuery>,
) -> ApiResult {
    let rec = instance::get(&d, &name)?;
    let full = q.level() >= 1;
    let d2 = d.clone();
    let r2 = rec.clone();
    let v = tokio::task::spawn_blocking(move || instance::view(&d2, &r2, full))
        .await
        .map_err(ApiError::internal)??;
    sync_etag(v, &instance::etag_of(&rec))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancePut {
    #[serde(rename = "architecture", default)]
    _architecture: IgnoredAny,
    #[serde(default)]
    config: Option<ConfigMap>,
    #[serde(default)]
    devices: Option<DeviceMap>,
    #[serde(default)]
    ephemeral: Option<bool>,
    #[serde(default)]
    profiles: Option<Vec<String>>,
    #[serde(default)]
    restore: String,
    #[serde(rename = "stateful", default)]
    _stateful: IgnoredAny,
    #[serde(default)]
    description: Option<String>,
    // Read-only fields a client may echo back from GET; ignored like Incus does.
    #[serde(rename = "created_at", default)]
    _created_at: IgnoredAny,
    #[serde(rename = "expanded_config", default)]
    _expanded_config: IgnoredAny,
    #[serde(rename = "expanded_devices", default)]
    _expanded_devices: IgnoredAny,
    #[serde(rename = "name", default)]
    _name: IgnoredAny,
    #[serde(rename = "status", default)]
    _status: IgnoredAny,
    #[serde(rename = "status_code", default)]
    _status_code: IgnoredAny,
    #[serde(rename = "last_used_at", default)]
    _last_used_at: IgnoredAny,
    #[serde(rename = "location", default)]
    _location: IgnoredAny,
    #[serde(rename = "type", default)]
    _kind: IgnoredAny,
    #[serde(rename = "project", default)]
    _project: IgnoredAny,
}

async fn update(
    d: AppState,
    name: String,
    headers: HeaderMap,
    req: InstancePut,
    patch: bool,
) -> ApiResult {
    let rec = instance::get(&d, &name)?;
    check_if_match(&headers, &instance::etag_of(&rec))?;
    if !req.restore.is_empty() {
        let d2 = d.daemon.clone();
        // The CLI sends "instance/snapshot"; a bare snapshot name is accepted too.
        let snap = match req.restore.split_once('/') {
            Some((inst, snap)) if inst == name => snap.to_string(),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "Snapshot belongs to another instance",
                ))
            }
            None => req.restore.clone(),
        };
        crate::instance::snapshot::get_snapshot(&d, &name, &snap)?;
        let op = d.ops.spawn_task(
            "Restoring snapshot",
            resources("instances", &[instance::url(&name)]),
            async move {
                crate::instance::snapshot::restore(d2, &name, &snap)
                    .await
                    .map_err(err_string)
            },
        );
        return async_op(op.view());
    }
    let (mut config, mut devices) = (rec.config.clone(), rec.devices.clone());
    match (patch, req.config) {
        (true, Some(c)) => config.extend(c),
        (false, c) => config = c.unwrap_or_default(),
        (true, None) => {}
    }
    match (patch, req.devices) {
        (true, Some(dv)) => devices.extend(dv),
        (false, dv) => devices = dv.unwrap_or_default(),
        (true, None) => {}
    }
    let user_keys: ConfigMap = config
        .iter()
        .filter(|(k, _)| !k.starts_with("volatile."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    crate::validate::instance_config(&user_keys, false)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    crate::validate::devices(&devices).map_err(|e| ApiError::bad_request(e.to_string()))?;
    crate::network::nics::check_nics(&d, &devices)?;
    crate::instance::disks::check(&d, &devices)?;
    let profiles = req
        .profiles
        .unwrap_or(if patch { rec.profiles.clone() } else { vec![] });
    let description = req.description.unwrap_or(if patch {
        rec.description.clone()
    } else {
        String::new()
    });
    let ephemeral = req
        .ephemeral
        .unwrap_or(if patch { rec.ephemeral } else { false });
    let d2 = d.clone();
    let n = name.clone();
    let op = d.ops.spawn_task(
        "Updating instance",
        resources("instances", &[instance::url(&name)]),
        async move {
            lifecycle::update(&d2, &n, config, devices, profiles, description, ephemeral)
                .await
                .map_err(err_string)
        },
    );
    async_op(op.view())
}

pub async fn put(
    State(d): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<InstancePut>,
) -> ApiResult {
    update(d, name, headers, req, false).await
}

pub async fn patch(
    State(d): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<InstancePut>,
) -> ApiResult {
    update(d, name, headers, req, true).await
}

pub async fn delete(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    instance::get(&d, &name)?;
    if instance::lxc_state(&d, &name) != crate::instance::lxc::LxcState::Stopped {
        return Err(ApiError::bad_request(
            "Instance is running: stop it first or use --force",
        ));
    }
    let d2 = d.daemon.clone();
    let n = name.clone();
    let op = d.ops.spawn_task(
        "Deleting instance",
        resources("instances", &[instance::url(&name)]),
        async move { lifecycle::delete(d2, &n).await.map_err(err_string) },
    );
    async_op(op.view())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancePost {
    name: String,
    #[serde(default)]
    migration: bool,
    #[serde(rename = "live", default)]
    _live: IgnoredAny,
    #[serde(default)]
    instance_only: bool,
    #[serde(default)]
    target: Option<serde_json::Value>,
    #[serde(default)]
    pool: String,
    #[serde(default)]
    project: String,
    #[serde(rename = "allow_inconsistent", default)]
    _allow_inconsistent: IgnoredAny,
    // Incus's InstancePost has no JSON tags on these: Go writes them capitalized.
    #[serde(rename = "Config", alias = "config", default)]
    config: Option<serde_json::Value>,
    // Incus's InstancePost has no JSON tags on these: Go writes them capitalized.
    #[serde(rename = "Devices", alias = "devices", default)]
    devices: Option<serde_json::Value>,
    // Incus's InstancePost has no JSON tags on these: Go writes them capitalized.
    #[serde(rename = "Profiles", alias = "profiles", default)]
    profiles: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
pub struct TargetQuery {
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    project: Option<String>,
}

/// Whether an optional override in an `InstancePost` says anything.
fn given(v: &Option<serde_json::Value>) -> bool {
    v.as_ref().is_some_and(|v| match v {
        serde_json::Value::Null => false,
        serde_json::Value::Object(m) => !m.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        _ => true,
    })
}

pub async fn rename(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<TargetQuery>,
    ApiJson(req): ApiJson<InstancePost>,
) -> ApiResult {
    if let (Some(member), true) = (q.target.filter(|t| !t.is_empty()), req.migration) {
        // `incus move NAME --target M` in a cluster: a cold move to member M.
        if req.name != name {
            return Err(ApiError::bad_request(
                "Renaming while moving to another member is not supported",
            ));
        }
        if req.instance_only {
            return Err(ApiError::bad_request(
                "Moving an instance without its snapshots is not supported: move it whole, then delete them",
            ));
        }
        // `incus move --config/--device/--profile`: overrides the move would not apply.
        if given(&req.config) || given(&req.devices) || given(&req.profiles) {
            return Err(ApiError::bad_request(
                "Changing the configuration, devices or profiles while moving to another member is not supported: move it, then change it",
            ));
        }
        if !req.pool.is_empty() || !req.project.is_empty() {
            return Err(ApiError::bad_request(
                "Moving to another member and another storage pool or project at once is not supported: copy it with --storage, then delete the original",
            ));
        }
        instance::get(&d, &name)?;
        let d2 = d.daemon.clone();
        let op = d.ops.spawn_task(
            "Migrating instance",
            resources("instances", &[instance::url(&name)]),
            async move {
                crate::instance::migrate::move_to(d2, &name, &member)
                    .await
                    .map_err(err_string)
            },
        );
        return async_op(op.view());
    }
    if req.migration || req.target.is_some() || !req.pool.is_empty() || !req.project.is_empty() {
        return Err(ApiError::bad_request("Migration is not supported yet"));
    }
    if given(&req.config) || given(&req.devices) || given(&req.profiles) {
        return Err(ApiError::bad_request(
            "Changing the configuration, devices or profiles while renaming is not supported: rename it, then change it",
        ));
    }
    crate::validate::instance_name(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    instance::get(&d, &name)?;
    if d.db.instance(&req.name)?.is_some() {
        return Err(ApiError::conflict(format!(
            "Instance {:?} already exists",
            req.name
        )));
    }
    let d2 = d.daemon.clone();
    let to = req.name.clone();
    let op = d.ops.spawn_task(
        "Renaming instance",
        resources("instances", &[instance::url(&name)]),
        async move { lifecycle::rename(d2, &name, &to).await.map_err(err_string) },
    );
    async_op(op.view())
}

pub async fn get_state(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let rec = instance::get(&d, &name)?;
    let d2 = d.daemon.clone();
    let v = tokio::task::spawn_blocking(move || {
        let ls = instance::lxc_state(&d2, &rec.name);
        crate::instance::state::view(&d2, &rec, ls)
    })
    .await
    .map_err(ApiError::internal)?;
    sync(v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatePut {
    action: String,
    #[serde(default)]
    timeout: i64,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    stateful: bool,
}

fn state_op(d: &AppState, name: &str, req: &StatePut) -> ApiResult {
    if req.stateful {
        return Err(ApiError::bad_request(
            "Stateful stop/start is not supported",
        ));
    }
    instance::get(d, name)?;
    let (desc, d2, n, force, timeout) = (
        match req.action.as_str() {
            "start" => "Starting instance",
            "stop" => "Stopping instance",
            "restart" => "Restarting instance",
            "freeze" => "Freezing instance",
            "unfreeze" => "Unfreezing instance",
            other => return Err(ApiError::bad_request(format!("Unknown action {other:?}"))),
        },
        d.daemon.clone(),
        name.to_string(),
        req.force,
        req.timeout,
    );
    let action = req.action.clone();
    let op = d.ops.spawn_task(
        desc,
        resources("instances", &[instance::url(name)]),
        async move {
            let r = match action.as_str() {
                "start" => lifecycle::start(d2, &n).await,
                "stop" => lifecycle::stop(d2, &n, force, timeout).await,
                "restart" => lifecycle::restart(d2, &n, force, timeout).await,
                "freeze" => lifecycle::freeze(d2, &n, true).await,
                _ => lifecycle::freeze(d2, &n, false).await,
            };
            r.map_err(err_string)
        },
    );
    async_op(op.view())
}

pub async fn put_state(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<StatePut>,
) -> ApiResult {
    state_op(&d, &name, &req)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkState {
    state: StatePut,
}

/// `PUT /1.0/instances`: the same state change for every instance (`incus stop --all`).
pub async fn bulk_state(State(d): State<AppState>, ApiJson(req): ApiJson<BulkState>) -> ApiResult {
    let names: Vec<String> = d.db.instances()?.into_iter().map(|r| r.name).collect();
    let d2: Arc<crate::daemon::Daemon> = d.daemon.clone();
    let action = req.state.action.clone();
    let (force, timeout) = (req.state.force, req.state.timeout);
    if !["start", "stop", "restart", "freeze", "unfreeze"].contains(&action.as_str()) {
        return Err(ApiError::bad_request(format!("Unknown action {action:?}")));
    }
    let urls: Vec<String> = names.iter().map(|n| instance::url(n)).collect();
    let op = d.ops.spawn_task(
        "Updating instance states",
        resources("instances", &urls),
        async move {
            let mut failures = Vec::new();
            for n in names {
                let st = instance::lxc_state(&d2, &n);
                let skip = match action.as_str() {
                    "start" => st != crate::instance::lxc::LxcState::Stopped,
                    "stop" | "freeze" => st == crate::instance::lxc::LxcState::Stopped,
                    _ => false,
                };
                if skip {
                    continue;
                }
                let r = match action.as_str() {
                    "start" => lifecycle::start(d2.clone(), &n).await,
                    "stop" => lifecycle::stop(d2.clone(), &n, force, timeout).await,
                    "restart" => lifecycle::restart(d2.clone(), &n, force, timeout).await,
                    "freeze" => lifecycle::freeze(d2.clone(), &n, true).await,
                    _ => lifecycle::freeze(d2.clone(), &n, false).await,
                };
                if let Err(e) = r {
                    failures.push(format!("{n}: {e}"));
                }
            }
            if failures.is_empty() {
                Ok(())
            } else {
                Err(failures.join("; "))
            }
        },
    );
    async_op(op.view())
}

fn log_name_ok(f: &str) -> bool {
    !f.is_empty() && !f.contains('/') && f != "." && f != ".."
}

pub async fn logs(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    instance::get(&d, &name)?;
    let dir = d.instance_log_dir(&name);
    let mut out = Vec::new();
    if let Ok(it) = std::fs::read_dir(&dir) {
        for e in it.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            out.push(format!("/1.0/instances/{name}/logs/{f}"));
        }
    }
    out.sort();
    sync(out)
}

pub async fn log_file(
    State(d): State<AppState>,
    Path((name, file)): Path<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    instance::get(&d, &name)?;
    if !log_name_ok(&file) {
        return Err(ApiError::bad_request("Invalid log file name"));
    }
    let data = std::fs::read(d.instance_log_dir(&name).join(&file))
        .map_err(|_| ApiError::not_found("Log file not found"))?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        data,
    )
        .into_response())
}

pub async fn delete_log(
    State(d): State<AppState>,
    Path((name, file)): Path<(String, String)>,
) -> ApiResult {
    instance::get(&d, &name)?;
    if !log_name_ok(&file) || file == "lxc.log" || file == "console.log" {
        return Err(ApiError::bad_request(
            "Only exec output logs can be deleted",
        ));
    }
    std::fs::remove_file(d.instance_log_dir(&name).join(&file))
        .map_err(|_| ApiError::not_found("Log file not found"))?;
    empty()
}

/// Backups are listed (there are none) so `incus info` works; making them comes later.
pub async fn backups(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    instance::get(&d, &name)?;
    sync(Vec::<String>::new())
}

pub async fn create_backup(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    instance::get(&d, &name)?;
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "Instance backups are not supported yet",
    ))
}
