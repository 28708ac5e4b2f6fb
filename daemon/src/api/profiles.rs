//! `/1.0/profiles[/{name}]`.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::response::{check_if_match, empty, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState, RecursionQuery};
use crate::db::records::{ConfigMap, DeviceMap, ProfileRecord};
use crate::db::Command;

fn validate(d: &AppState, config: &ConfigMap, devices: &DeviceMap) -> Result<(), ApiError> {
    crate::validate::instance_config(config, false)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    crate::validate::devices(devices).map_err(|e| ApiError::bad_request(e.to_string()))?;
    crate::instance::disks::check(d, devices)?;
    Ok(())
}

#[derive(Serialize)]
struct ProfileView<'a> {
    name: &'a str,
    description: &'a str,
    config: &'a ConfigMap,
    devices: &'a DeviceMap,
    used_by: Vec<String>,
    project: &'static str,
}

#[derive(Serialize)]
struct ProfileEtag<'a> {
    config: &'a ConfigMap,
    description: &'a str,
    devices: &'a DeviceMap,
}

fn used_by(d: &AppState, name: &str) -> Result<Vec<String>, ApiError> {
    Ok(d.db
        .instances()?
        .into_iter()
        .filter(|i| i.profiles.iter().any(|p| p == name))
        .map(|i| crate::instance::url(&i.name))
        .collect())
}

fn view<'a>(d: &AppState, p: &'a ProfileRecord) -> Result<ProfileView<'a>, ApiError> {
    Ok(ProfileView {
        name: &p.name,
        description: &p.description,
        config: &p.config,
        devices: &p.devices,
        used_by: used_by(d, &p.name)?,
        project: "default",
    })
}

fn etag(p: &ProfileRecord) -> ProfileEtag<'_> {
    ProfileEtag {
        config: &p.config,
        description: &p.description,
        devices: &p.devices,
    }
}

pub async fn list(State(d): State<AppState>, Query(q): Query<RecursionQuery>) -> ApiResult {
    let profiles = d.db.profiles()?;
    if q.recursive() {
        let views = profiles
            .iter()
            .map(|p| view(&d, p))
            .collect::<Result<Vec<_>, _>>()?;
        return sync(views);
    }
    sync(
        profiles
            .iter()
            .map(|p| format!("/1.0/profiles/{}", p.name))
            .collect::<Vec<_>>(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesPost {
    name: String,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    config: ConfigMap,
    #[serde(default)]
    description: String,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    devices: DeviceMap,
}

pub async fn create(State(d): State<AppState>, ApiJson(req): ApiJson<ProfilesPost>) -> ApiResult {
    crate::validate::object_name(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    validate(&d, &req.config, &req.devices)?;
    if d.db.profile(&req.name)?.is_some() {
        return Err(ApiError::conflict(format!(
            "Profile {:?} already exists",
            req.name
        )));
    }
    d.write(vec![Command::CreateProfile(ProfileRecord {
        name: req.name.clone(),
        description: req.description,
        config: req.config,
        devices: req.devices,
    })])
    .await?;
    d.events.lifecycle(
        "profile-created",
        &format!("/1.0/profiles/{}", req.name),
        serde_json::json!({}),
    );
    let mut r = empty()?;
    r.headers_mut().insert(
        axum::http::header::LOCATION,
        axum::http::HeaderValue::from_str(&format!("/1.0/profiles/{}", req.name))
            .map_err(ApiError::internal)?,
    );
    *r.status_mut() = axum::http::StatusCode::CREATED;
    Ok(r)
}

fn get_profile(d: &AppState, name: &str) -> Result<ProfileRecord, ApiError> {
    d.db.profile(name)?
        .ok_or_else(|| ApiError::not_found("Profile not found"))
}

pub async fn get_one(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let p = get_profile(&d, &name)?;
    sync_etag(view(&d, &p)?, &etag(&p))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilePut {
    #[serde(default)]
    config: Option<ConfigMap>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    devices: Option<DeviceMap>,
    // Read-only fields echoed back from GET.
    #[serde(rename = "name", default)]
    _name: IgnoredAny,
    #[serde(rename = "used_by", default)]
    _used_by: IgnoredAny,
    #[serde(rename = "project", default)]
    _project: IgnoredAny,
}

async fn update(
    d: AppState,
    name: String,
    headers: HeaderMap,
    req: ProfilePut,
    patch: bool,
) -> ApiResult {
    let mut p = get_profile(&d, &name)?;
    check_if_match(&headers, &etag(&p))?;
    if patch {
        if let Some(c) = req.config {
            p.config.extend(c);
        }
        if let Some(dv) = req.devices {
            p.devices.extend(dv);
        }
        if let Some(desc) = req.description {
            p.description = desc;
        }
    } else {
        p.config = req.config.unwrap_or_default();
        p.devices = req.devices.unwrap_or_default();
        p.description = req.description.unwrap_or_default();
    }
    validate(&d, &p.config, &p.devices)?;
    let limits = crate::instance::root_size_changes(&d, &p)?;
    crate::instance::disks::profile_hotplug(&d, &p).await?;
    d.write(vec![Command::UpdateProfile(p)]).await?;
    // Incus applies a profile's root size to the instances using it.
    for (instance, pool, size) in limits {
        let applied = tokio::task::spawn_blocking(move || pool.set_instance_quota(&instance, size))
            .await
            .map_err(ApiError::internal)?;
        applied?;
    }
    d.events.lifecycle(
        "profile-updated",
        &format!("/1.0/profiles/{name}"),
        serde_json::json!({}),
    );
    empty()
}

pub async fn put(
    State(d): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ProfilePut>,
) -> ApiResult {
    update(d, name, headers, req, false).await
}

pub async fn patch(
    State(d): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ProfilePut>,
) -> ApiResult {
    update(d, name, headers, req, true).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilePost {
    name: String,
}

pub async fn rename(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ProfilePost>,
) -> ApiResult {
    if name == "default" {
        return Err(ApiError::bad_request(
            "The \"default\" profile cannot be renamed",
        ));
    }
    crate::validate::object_name(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    get_profile(&d, &name)?;
    if d.db.profile(&req.name)?.is_some() {
        return Err(ApiError::conflict(format!(
            "Profile {:?} already exists",
            req.name
        )));
    }
    d.write(vec![Command::RenameProfile {
        from: name,
        to: req.name,
    }])
    .await?;
    empty()
}

pub async fn delete(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    if name == "default" {
        return Err(ApiError::bad_request(
            "The \"default\" profile cannot be deleted",
        ));
    }
    get_profile(&d, &name)?;
    if !used_by(&d, &name)?.is_empty() {
        return Err(ApiError::bad_request("Profile is currently in use"));
    }
    d.write(vec![Command::DeleteProfile { name: name.clone() }])
        .await?;
    d.events.lifecycle(
        "profile-deleted",
        &format!("/1.0/profiles/{name}"),
        serde_json::json!({}),
    );
    empty()
}
