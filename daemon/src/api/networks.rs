//! `/1.0/networks[/{name}[/state|/leases]]`: the managed networks (`network::manage`) and,
//! beside them, the host's other interfaces, read from sysfs and shown unmanaged.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::response::{check_if_match, empty, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState, RecursionQuery};
use crate::db::records::{ConfigMap, NetworkRecord};
use crate::network::manage::{self, NetworkView};
use crate::network::NetworkError;

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> Self {
        match e {
            NetworkError::Invalid(m) | NetworkError::InUse(m) => ApiError::bad_request(m),
            NetworkError::Conflict(m) => ApiError::conflict(m),
            NetworkError::NotFound(m) => ApiError::not_found(m),
            NetworkError::Db(e) => e.into(),
            e => ApiError::internal(e),
        }
    }
}

fn kind_of(name: &str) -> String {
    let base = std::path::Path::new("/sys/class/net").join(name);
    if name == "lo" {
        "loopback".into()
    } else if base.join("bridge").exists() {
        "bridge".into()
    } else if base.join("bonding").exists() {
        "bond".into()
    } else if base.join("device").exists() {
        "physical".into()
    } else {
        "unknown".into()
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 15 && !n.contains('/') && n != "." && n != ".."
}

fn host_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn host_view(d: &AppState, name: &str) -> NetworkView {
    NetworkView {
        name: name.to_string(),
        description: String::new(),
        kind: kind_of(name),
        managed: false,
        status: String::new(),
        config: Default::default(),
        used_by: manage::used_by(d, name).unwrap_or_default(),
        locations: vec![],
        project: "default".into(),
    }
}

/// Managed networks first by name, then the host interfaces that are not one of them.
fn all_views(d: &AppState) -> Result<Vec<NetworkView>, ApiError> {
    let managed = d.db.networks()?;
    let mut out = managed
        .iter()
        .map(|r| manage::view(d, r))
        .collect::<Result<Vec<_>, _>>()?;
    for n in host_names() {
        if !managed.iter().any(|r| r.name == n) {
            out.push(host_view(d, &n));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub async fn list(
    State(d): State<AppState>,
    Query(q): Query<RecursionQuery>,
    Query(nq): Query<NetQuery>,
) -> ApiResult {
    nq.check_here(&d)?;
    let views = all_views(&d)?;
    if q.recursive() {
        return sync(views);
    }
    sync(
        views
            .iter()
            .map(|v| format!("/1.0/networks/{}", v.name))
            .collect::<Vec<_>>(),
    )
}

/// What a network's ETag covers: its writable part, as Incus.
#[derive(Serialize)]
struct NetworkEtag<'a> {
    name: &'a str,
    managed: bool,
    #[serde(rename = "type")]
    kind: &'a str,
    description: &'a str,
    config: &'a ConfigMap,
}

fn etag(r: &NetworkRecord) -> NetworkEtag<'_> {
    NetworkEtag {
        name: &r.name,
        managed: true,
        kind: &r.kind,
        description: &r.description,
        config: &r.config,
    }
}

pub async fn get_one(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NetQuery>,
) -> ApiResult {
    q.check_here(&d)?;
    if let Some(r) = d.db.network(&name)? {
        return sync_etag(manage::view(&d, &r)?, &etag(&r));
    }
    if !valid_name(&name) || !host_names().contains(&name) {
        return Err(ApiError::not_found("Network not found"));
    }
    sync(host_view(&d, &name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworksPost {
    name: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    config: ConfigMap,
}

/// `?target=` and `?project=` on network requests: neither is ignored.
#[derive(Deserialize, Default)]
pub struct NetQuery {
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    project: Option<String>,
}

impl NetQuery {
    fn target(&self) -> Option<&str> {
        self.target.as_deref().filter(|t| !t.is_empty())
    }

    /// Networks live in the default project only, so far.
    fn check_project(&self) -> Result<(), ApiError> {
        match self.project.as_deref() {
            None | Some("") | Some("default") => Ok(()),
            Some(p) => Err(ApiError::not_found(format!("Project {p:?} not found"))),
        }
    }

    /// A read measured on one member: the target (if any) must be this member; another
    /// member's was forwarded there by `routing.rs`.
    fn check_here(&self, d: &AppState) -> Result<(), ApiError> {
        self.check_project()?;
        let Some(t) = self.target() else {
            return Ok(());
        };
        match d.cluster() {
            None => Err(ApiError::bad_request(format!(
                "Cannot target member {t:?}: this server is not clustered"
            ))),
            Some(rt) if rt.name() == t => Ok(()),
            Some(_) => Err(ApiError::not_found(format!(
                "Cluster member {t:?} not found"
            ))),
        }
    }

    /// A change: a network has no member-specific keys, so no change names a member.
    fn refuse_target(&self) -> Result<(), ApiError> {
        self.check_project()?;
        match self.target() {
            Some(t) => Err(ApiError::bad_request(format!(
                "Bridge networks have no member-specific config: --target {t:?} does not apply"
            ))),
            None => Ok(()),
        }
    }
}

pub async fn create(
    State(d): State<AppState>,
    Query(q): Query<NetQuery>,
    ApiJson(req): ApiJson<NetworksPost>,
) -> ApiResult {
    q.check_project()?;
    let url = format!("/1.0/networks/{}", req.name);
    manage::create(
        &d.daemon,
        req.name,
        req.kind,
        req.description,
        req.config,
        q.target(),
    )
    .await?;
    d.events
        .lifecycle("network-created", &url, serde_json::json!({}));
    let mut r = empty()?;
    r.headers_mut().insert(
        axum::http::header::LOCATION,
        axum::http::HeaderValue::from_str(&url).map_err(ApiError::internal)?,
    );
    *r.status_mut() = axum::http::StatusCode::CREATED;
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPut {
    #[serde(default, deserialize_with = "crate::api::nullable")]
    config: Option<ConfigMap>,
    #[serde(default)]
    description: Option<String>,
    // Read-only fields a client echoes back from GET.
    #[serde(rename = "name", default)]
    _name: IgnoredAny,
    #[serde(rename = "type", default)]
    _type: IgnoredAny,
    #[serde(rename = "managed", default)]
    _managed: IgnoredAny,
    #[serde(rename = "status", default)]
    _status: IgnoredAny,
    #[serde(rename = "used_by", default)]
    _used_by: IgnoredAny,
    #[serde(rename = "locations", default)]
    _locations: IgnoredAny,
    #[serde(rename = "project", default)]
    _project: IgnoredAny,
}

fn managed(d: &AppState, name: &str) -> Result<NetworkRecord, ApiError> {
    match d.db.network(name)? {
        Some(r) => Ok(r),
        None if valid_name(name) && host_names().iter().any(|n| n == name) => Err(
            ApiError::bad_request("Only managed networks can be modified"),
        ),
        None => Err(ApiError::not_found("Network not found")),
    }
}

async fn update(
    d: AppState,
    name: String,
    headers: HeaderMap,
    req: NetworkPut,
    patch: bool,
) -> ApiResult {
    let r = managed(&d, &name)?;
    check_if_match(&headers, &etag(&r))?;
    let (config, description) = if patch {
        let mut c = r.config.clone();
        c.extend(req.config.unwrap_or_default());
        (c, req.description.unwrap_or(r.description))
    } else {
        (
            req.config.unwrap_or_default(),
            req.description.unwrap_or_default(),
        )
    };
    manage::update(&d.daemon, &name, description, config).await?;
    d.events.lifecycle(
        "network-updated",
        &format!("/1.0/networks/{name}"),
        serde_json::json!({}),
    );
    empty()
}

pub async fn put(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NetQuery>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NetworkPut>,
) -> ApiResult {
    q.refuse_target()?;
    update(d, name, headers, req, false).await
}

pub async fn patch(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NetQuery>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NetworkPut>,
) -> ApiResult {
    q.refuse_target()?;
    update(d, name, headers, req, true).await
}

pub async fn delete(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NetQuery>,
) -> ApiResult {
    q.refuse_target()?;
    managed(&d, &name)?;
    manage::delete(&d.daemon, &name).await?;
    d.events.lifecycle(
        "network-deleted",
        &format!("/1.0/networks/{name}"),
        serde_json::json!({}),
    );
    empty()
}

/// Renaming would rename the bridge under running instances; not offered yet.
pub async fn rename(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    managed(&d, &name)?;
    Err(ApiError::bad_request(
        "Renaming a network is not supported yet",
    ))
}

/// Only managed networks have a driver that measures them, so far.
fn managed_for_info(d: &AppState, name: &str) -> Result<NetworkRecord, ApiError> {
    managed(d, name).map_err(|e| {
        if e.status == axum::http::StatusCode::BAD_REQUEST {
            ApiError::bad_request("Leases are only kept for managed networks")
        } else {
            e
        }
    })
}

pub async fn state(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NetQuery>,
) -> ApiResult {
    q.check_here(&d)?;
    // Any host interface has a state, managed or not (as in Incus).
    let is_managed = match managed(&d, &name) {
        Ok(_) => true,
        Err(e) if e.status == axum::http::StatusCode::BAD_REQUEST => false,
        Err(e) => return Err(e),
    };
    let d2 = d.clone();
    let st = tokio::task::spawn_blocking(move || {
        if is_managed {
            manage::state(&d2, &name)
        } else {
            crate::network::iface::state(&name)
        }
    })
    .await
    .map_err(ApiError::internal)??;
    sync(st)
}

/// In a cluster without a target: every member's leases, as Incus lists them.
pub async fn leases(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NetQuery>,
) -> ApiResult {
    q.check_here(&d)?;
    let rec = managed_for_info(&d, &name)?;
    // An OVN network's leases are its ports in the cluster-wide database: one answer.
    let per_member = rec.kind == "bridge" || rec.kind.is_empty();
    if d.cluster().is_some() && q.target().is_none() && per_member {
        return sync(crate::network::cluster::leases(&d.daemon, &name).await?);
    }
    let (d2, n2) = (d.clone(), name.clone());
    let mut leases = tokio::task::spawn_blocking(move || manage::leases(&d2, &n2))
        .await
        .map_err(ApiError::internal)??;
    if d.cluster().is_some() && per_member {
        let me = d.server_name();
        for l in &mut leases {
            l.location = me.clone();
        }
    }
    sync(leases)
}

/// `POST /internal/cluster/networks`: another member making a cluster network asks this
/// one to make (or change) its bridge.
pub async fn internal_apply(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<crate::network::cluster::MemberRequest>,
) -> ApiResult {
    match req.kind.as_str() {
        "" | "bridge" => manage::apply_here(&d.daemon, &req.name, req.config).await?,
        _ => crate::network::ovn::member_request(req).await?,
    }
    empty()
}

/// `DELETE /internal/cluster/networks/{name}`: this member's bridge goes.
pub async fn internal_remove(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    manage::remove_here(&d.daemon, &name).await?;
    empty()
}
