//! `/1.0/cluster…` as Incus serves it (enable, join, members, join tokens, rename, removal,
//! evacuation), and the member-to-member endpoints under `/internal/cluster/…`.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::response::{async_op, check_if_match, empty, sync, sync_etag};
use super::{nullable, ApiError, ApiJson, ApiResult, AppState, RecursionQuery};
use crate::cluster::membership::{self, JoinParams, JoinRequest, MembershipError};
use crate::db::records::{ConfigMap, MemberRecord};
use crate::db::Command;
use crate::operations::{resources, NewOp, OpClass};

impl From<MembershipError> for ApiError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::Invalid(m) => ApiError::bad_request(m),
            MembershipError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, m),
            MembershipError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
        }
    }
}

fn clustered(d: &AppState) -> Result<std::sync::Arc<crate::cluster::member::Member>, ApiError> {
    d.cluster()
        .ok_or_else(|| ApiError::bad_request("Server isn't part of a cluster"))
}

pub async fn get_cluster(State(d): State<AppState>) -> ApiResult {
    let (name, enabled) = match d.cluster() {
        Some(c) => (c.name().to_string(), true),
        None => (String::new(), false),
    };
    sync(json!({"server_name": name, "enabled": enabled, "member_config": []}))
}

/// Incus's `ClusterPut`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPut {
    #[serde(default, deserialize_with = "nullable")]
    server_name: String,
    #[serde(default)]
    enabled: bool,
    #[serde(default, deserialize_with = "nullable")]
    #[allow(dead_code)]
    member_config: Vec<serde_json::Value>,
    #[serde(default, deserialize_with = "nullable")]
    cluster_address: String,
    #[serde(default, deserialize_with = "nullable")]
    cluster_certificate: String,
    #[serde(default, deserialize_with = "nullable")]
    server_address: String,
    #[serde(default, deserialize_with = "nullable")]
    cluster_token: String,
}

pub async fn put_cluster(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<ClusterPut>,
) -> ApiResult {
    if !req.enabled {
        return Err(match d.cluster() {
            Some(_) => ApiError::bad_request("Clustering can't be disabled on a member"),
            None => ApiError::bad_request("Clustering isn't enabled"),
        });
    }
    if d.cluster().is_some() {
        return Err(ApiError::bad_request("This server is already clustered"));
    }
    let joining = !req.cluster_token.is_empty() || !req.cluster_address.is_empty();
    if joining && req.cluster_token.is_empty() {
        return Err(ApiError::bad_request(
            "Joining a cluster needs a cluster_token (incus cluster add NAME on a member)",
        ));
    }
    let name = if req.server_name.is_empty() && !joining {
        d.hostname.clone()
    } else {
        req.server_name.clone()
    };
    if !joining {
        // Fail fast on what the client can fix; the rest happens in the operation.
        membership::member_address(&d)?;
    }
    let d2 = d.clone();
    let op = d.ops.spawn_task(
        if joining {
            "Joining cluster"
        } else {
            "Enabling clustering"
        },
        resources("cluster", &["/1.0/cluster".to_string()]),
        async move {
            let r = if joining {
                membership::join(
                    &d2.daemon,
                    JoinParams {
                        server_name: name,
                        server_address: req.server_address,
                        cluster_certificate: req.cluster_certificate,
                        cluster_token: req.cluster_token,
                    },
                )
                .await
            } else {
                membership::enable(&d2.daemon, &name).await
            };
            r.map_err(|e| e.to_string())
        },
    );
    async_op(op.view())
}

#[derive(Serialize)]
struct MemberView<'a> {
    server_name: &'a str,
    url: String,
    database: bool,
    status: &'static str,
    message: String,
    architecture: &'a str,
    roles: Vec<String>,
    failure_domain: &'a str,
    description: &'a str,
    config: &'a ConfigMap,
    groups: &'a [String],
}

#[derive(Serialize)]
struct MemberEtag<'a> {
    roles: Vec<String>,
    failure_domain: &'a str,
    description: &'a str,
    config: &'a ConfigMap,
    groups: &'a [String],
}

fn member_url(name: &str) -> String {
    format!("/1.0/cluster/members/{name}")
}

async fn views(d: &AppState, members: &[MemberRecord]) -> Result<Vec<serde_json::Value>, ApiError> {
    let rt = clustered(d)?;
    let info = rt.member_views(members).await;
    members
        .iter()
        .map(|m| {
            let v = info
                .get(&m.id)
                .cloned()
                .unwrap_or(crate::cluster::member::MemberView {
                    roles: vec![],
                    database: false,
                    status: "Offline",
                    message: String::new(),
                });
            serde_json::to_value(MemberView {
                server_name: &m.name,
                url: format!("https://{}", m.address),
                database: v.database,
                status: v.status,
                message: v.message,
                architecture: &m.architecture,
                roles: v.roles,
                failure_domain: &m.failure_domain,
                description: &m.description,
                config: &m.config,
                groups: &m.groups,
            })
            .map_err(ApiError::internal)
        })
        .collect()
}

pub async fn list_members(State(d): State<AppState>, Query(q): Query<RecursionQuery>) -> ApiResult {
    clustered(&d)?;
    let members = d.db.members()?;
    if q.recursive() {
        sync(views(&d, &members).await?)
    } else {
        sync(
            members
                .iter()
                .map(|m| member_url(&m.name))
                .collect::<Vec<_>>(),
        )
    }
}

fn find_member(d: &AppState, name: &str) -> Result<MemberRecord, ApiError> {
    d.db.member(name)?
        .ok_or_else(|| ApiError::not_found("Cluster member not found"))
}

pub async fn get_member(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    clustered(&d)?;
    let m = find_member(&d, &name)?;
    let view = views(&d, std::slice::from_ref(&m)).await?.remove(0);
    let etag = MemberEtag {
        roles: view["roles"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        failure_domain: &m.failure_domain,
        description: &m.description,
        config: &m.config,
        groups: &m.groups,
    };
    sync_etag(view, &etag)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersPost {
    server_name: String,
}

/// `incus cluster add NAME`: a join token, shown as a `token` operation as Incus does.
pub async fn create_token(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<MembersPost>,
) -> ApiResult {
    clustered(&d)?;
    let op_id = uuid::Uuid::new_v4().to_string();
    let token = membership::issue_token(&d.daemon, &req.server_name, &op_id).await?;
    let op = d.ops.create_with_id(
        op_id,
        NewOp {
            class: OpClass::Token,
            description: "Requesting a join token".into(),
            resources: resources("cluster", &["/1.0/cluster".to_string()]),
            metadata: json!({
                "serverName": token.server_name,
                "secret": token.secret,
                "fingerprint": token.fingerprint,
                "addresses": token.addresses,
                "expiresAt": token.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            }),
            may_cancel: true,
        },
    );
    async_op(op.view())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberPut {
    #[serde(default, deserialize_with = "nullable")]
    #[allow(dead_code)]
    roles: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    failure_domain: String,
    #[serde(default, deserialize_with = "nullable")]
    description: String,
    #[serde(default, deserialize_with = "nullable")]
    config: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    groups: Vec<String>,
}

async fn update_member(d: AppState, name: String, req: MemberPut, replace: bool) -> ApiResult {
    clustered(&d)?;
    let mut m = find_member(&d, &name)?;
    if replace || !req.description.is_empty() {
        m.description = req.description;
    }
    if replace || !req.failure_domain.is_empty() {
        m.failure_domain = if req.failure_domain.is_empty() {
            "default".into()
        } else {
            req.failure_domain
        };
    }
    if replace {
        m.config = req.config;
    } else {
        m.config.extend(req.config);
    }
    if replace || !req.groups.is_empty() {
        m.groups = if req.groups.is_empty() {
            vec!["default".into()]
        } else {
            req.groups
        };
    }
    d.write(vec![Command::UpdateMember(m)]).await?;
    empty()
}

pub async fn put_member(
    State(d): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<MemberPut>,
) -> ApiResult {
    let m = find_member(&d, &name)?;
    let view = views(&d, std::slice::from_ref(&m)).await?.remove(0);
    let roles: Vec<String> = view["roles"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    check_if_match(
        &headers,
        &MemberEtag {
            roles,
            failure_domain: &m.failure_domain,
            description: &m.description,
            config: &m.config,
            groups: &m.groups,
        },
    )?;
    update_member(d, name, req, true).await
}

pub async fn patch_member(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<MemberPut>,
) -> ApiResult {
    update_member(d, name, req, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberPost {
    server_name: String,
}

/// Renames a member. Only the member itself may be renamed from itself, as in Incus
/// (its identity file names it).
pub async fn rename_member(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<MemberPost>,
) -> ApiResult {
    let rt = clustered(&d)?;
    crate::validate::object_name(&req.server_name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    find_member(&d, &name)?;
    if d.db.member(&req.server_name)?.is_some() {
        return Err(ApiError::conflict(format!(
            "The cluster already has a member with name: {}",
            req.server_name
        )));
    }
    d.write(vec![Command::RenameMember {
        from: name.clone(),
        to: req.server_name.clone(),
    }])
    .await?;
    if rt.name() == name {
        membership::renamed_self(&d, &req.server_name)?;
    }
    empty()
}

#[derive(Deserialize, Default)]
pub struct DeleteQuery {
    #[serde(default)]
    force: Option<String>,
}

/// `incus cluster remove NAME [--force]`: without force, only a member with no instances;
/// with force, whatever it had is dropped from the cluster's records.
pub async fn delete_member(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult {
    let rt = clustered(&d)?;
    let m = find_member(&d, &name)?;
    let force = matches!(q.force.as_deref(), Some("1" | "true"));
    let members = d.db.members()?;
    if members.len() == 1 {
        return Err(ApiError::bad_request(
            "The last member of a cluster cannot be removed",
        ));
    }
    let instances: Vec<_> =
        d.db.instances()?
            .into_iter()
            .filter(|i| i.location == name)
            .collect();
    if !instances.is_empty() && !force {
        return Err(ApiError::bad_request(format!(
            "Member {name} still has {} instance(s); move or delete them, or use --force",
            instances.len()
        )));
    }
    let mut cmds: Vec<Command> = instances
        .iter()
        .map(|i| Command::DeleteInstance {
            name: i.name.clone(),
        })
        .collect();
    cmds.extend(crate::pool::cluster::drop_member_shares(&d, &name)?);
    cmds.extend(crate::network::cluster::drop_member(&d, &name)?);
    // Its volumes' files went with it.
    for p in d.db.pools()? {
        for v in d.db.volumes(&p.name)? {
            if v.location == name {
                cmds.push(Command::DeleteVolume {
                    pool: p.name.clone(),
                    name: v.name,
                });
            }
        }
    }
    cmds.push(Command::RemoveMember { name: name.clone() });
    d.write(cmds).await?;
    if let Err(e) = rt.remove([m.id].into()).await {
        // The role keeper takes a member without a record out of raft later.
        tracing::warn!("removing member {name} from raft: {e}");
    }
    d.events
        .lifecycle("cluster-member-removed", &member_url(&name), json!({}));
    empty()
}

pub async fn get_member_state(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    clustered(&d)?;
    find_member(&d, &name)?;
    let pools: BTreeMap<String, serde_json::Value> =
        d.db.pools()?
            .into_iter()
            .map(|p| (p.name, json!({"space": {"used": 0, "total": 0}})))
            .collect();
    sync(json!({"sysinfo": {}, "storage_pools": pools}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberStatePost {
    action: String,
    #[serde(default, deserialize_with = "nullable")]
    mode: String,
}

/// `incus cluster evacuate|restore NAME`: routed to member NAME, which does it.
pub async fn post_member_state(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<MemberStatePost>,
) -> ApiResult {
    let rt = clustered(&d)?;
    find_member(&d, &name)?;
    if name != rt.name() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Member {name} is not reachable"),
        ));
    }
    let mode = if req.mode.is_empty() {
        "auto".to_string()
    } else {
        req.mode
    };
    if !matches!(mode.as_str(), "auto" | "migrate" | "stop") {
        return Err(ApiError::bad_request(format!(
            "Unsupported evacuation mode {mode:?}"
        )));
    }
    let d2 = d.daemon.clone();
    let op = match req.action.as_str() {
        "evacuate" => d.ops.spawn_task(
            "Evacuating cluster member",
            resources("cluster", &[member_url(&name)]),
            async move { crate::cluster::evacuation::evacuate(d2, &mode).await },
        ),
        "restore" => d.ops.spawn_task(
            "Restoring cluster member",
            resources("cluster", &[member_url(&name)]),
            async move { crate::cluster::evacuation::restore(d2).await },
        ),
        other => {
            return Err(ApiError::bad_request(format!("Unknown action {other:?}")));
        }
    };
    async_op(op.view())
}

/// `POST /internal/cluster/instances/{name}?pool=P`: an instance moving here.
pub async fn internal_receive_instance(
    State(d): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult {
    let pool = q.get("pool").cloned().unwrap_or_else(|| "default".into());
    let files = match q.get("format").map(String::as_str) {
        None => None,
        Some("files") => {
            let list = headers
                .get(crate::instance::migrate::SNAPSHOTS_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("[]");
            Some(serde_json::from_str::<Vec<String>>(list).map_err(|e| {
                ApiError::bad_request(format!("the snapshot list of a file stream: {e}"))
            })?)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Unknown volume stream format {other:?}"
            )))
        }
    };
    let stream = futures::TryStreamExt::map_err(body.into_data_stream(), |e| {
        std::io::Error::other(e.to_string())
    });
    let reader = tokio_util::io::StreamReader::new(stream);
    crate::instance::migrate::receive(d.daemon.clone(), &name, &pool, files, reader).await?;
    empty()
}

/// `POST /internal/cluster/instances/{name}/send`: a member copying `name` asks for its
/// volume; the answer comes once the stream was received there.
pub async fn internal_send_instance(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<crate::instance::migrate::SendRequest>,
) -> ApiResult {
    crate::instance::migrate::send_copy(d.daemon.clone(), &name, req).await?;
    empty()
}

// ---- member to member -------------------------------------------------------------------

pub async fn internal_join(
    State(d): State<AppState>,
    axum::Extension(peer): axum::Extension<crate::listener::Peer>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Response {
    let (caller, from_member) = match &peer {
        crate::listener::Peer::Tls { fingerprint, .. } => (
            fingerprint.clone(),
            d.cluster().is_some() && crate::peer_trust::is_cluster_peer(&peer, &d.cert()),
        ),
        crate::listener::Peer::Unix => (None, false),
    };
    match membership::accept(&d.daemon, req, caller.as_deref(), from_member).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn json_answer<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap_or_default(),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Raft transport answers are plain text, not Incus envelopes: only members read them.
fn plain(status: StatusCode, msg: String) -> Response {
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = status;
    r
}

/// `POST /internal/cluster/raft`: one Raft message from another member.
pub async fn internal_raft(
    State(d): State<AppState>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    use crate::cluster::transport;
    let Some(rt) = d.cluster() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not a cluster member")
            .into_response();
    };
    if let Err(e) = transport::admit(&rt, transport::Envelope::from_query(q.as_deref())) {
        return plain(StatusCode::MISDIRECTED_REQUEST, e.to_string());
    }
    let rpc: crate::cluster::Rpc = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("decoding message: {e}")),
    };
    json_answer(StatusCode::OK, &transport::handle_rpc(&rt, rpc).await)
}

/// `POST /internal/cluster/snapshot`: a whole snapshot from the leader, streamed to disk
/// and installed.
pub async fn internal_snapshot(
    State(d): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use crate::cluster::transport;
    let Some(rt) = d.cluster() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not a cluster member")
            .into_response();
    };
    if let Err(e) = transport::admit(&rt, transport::Envelope::from_query(q.as_deref())) {
        return plain(StatusCode::MISDIRECTED_REQUEST, e.to_string());
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (Some(vote), Some(meta)) = (
        header(transport::VOTE_HEADER),
        header(transport::META_HEADER),
    ) else {
        return plain(StatusCode::BAD_REQUEST, "missing snapshot headers".into());
    };
    let vote: crate::cluster::types::Vote = match serde_json::from_str(&vote) {
        Ok(v) => v,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("vote: {e}")),
    };
    let meta: crate::cluster::types::SnapshotMeta = match serde_json::from_str(&meta) {
        Ok(v) => v,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("snapshot meta: {e}")),
    };
    let stream = futures::TryStreamExt::map_err(body.into_data_stream(), |e| {
        std::io::Error::other(e.to_string())
    });
    let reader = tokio_util::io::StreamReader::new(stream);
    match rt.node().receive_snapshot(vote, meta, reader).await {
        Ok(r) => {
            // The database was replaced: its pools may be others now.
            if let Err(e) = d.reopen_pools() {
                tracing::warn!("reopening storage pools after a snapshot: {e}");
            }
            json_answer(StatusCode::OK, &r)
        }
        Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /internal/cluster/images/{fp}/{part}`: an image's files for a member that lacks
/// them (`part`: `meta` or `rootfs`).
pub async fn internal_image_part(
    State(d): State<AppState>,
    Path((fp, part)): Path<(String, String)>,
) -> Response {
    if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return ApiError::bad_request("Invalid fingerprint").into_response();
    }
    let Some(path) = crate::cluster::images::part_path(&d, &fp, &part) else {
        return ApiError::bad_request("Unknown image part").into_response();
    };
    match tokio::fs::File::open(&path).await {
        Ok(f) => Body::from_stream(tokio_util::io::ReaderStream::new(f)).into_response(),
        Err(_) => ApiError::not_found("Image file not found here").into_response(),
    }
}

/// `GET /internal/cluster/events`: this member's own events, as they happen, one JSON
/// object per line (an empty line as keep-alive), until the peer hangs up or the daemon
/// shuts down. Only cluster members are let in (`auth.rs`).
pub async fn internal_events(State(d): State<AppState>) -> Response {
    let lines = crate::cluster::events_relay::local_event_lines(&d.events, d.shutdown.subscribe());
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(futures::StreamExt::map(
            lines,
            Ok::<_, std::convert::Infallible>,
        )),
    )
        .into_response()
}
