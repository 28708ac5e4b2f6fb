//! The Incus REST API over axum. Handlers parse and validate requests into typed calls on
//! the services (`instance`, `image`, `storage`, …) and shape the answers as Incus does; they
//! hold no state of their own.

mod auth;
mod certificates;
mod cluster;
mod events;
mod exec;
mod files;
mod filter;
mod forward;
mod images;
mod instances;
mod instances_list;
mod networks;
mod operations;
mod os;
mod profiles;
mod resources;
pub mod response;
pub mod routing;
mod server;
mod snapshots;
mod storage;
mod volume_snapshots;
mod volumes;
pub mod websocket;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;

use crate::daemon::Daemon;
pub use response::{ApiError, ApiResult};

/// What every handler holds: the daemon, and the API layer's own state (the websocket
/// streams of running operations). It derefs to [`Daemon`], so handlers write `d.db`,
/// `d.write(…)`; services that keep the daemon take `d.daemon.clone()`.
#[derive(Clone)]
pub struct AppState {
    pub daemon: Arc<Daemon>,
    pub websockets: Arc<websocket::Websockets>,
}

impl AppState {
    pub fn new(daemon: Arc<Daemon>) -> AppState {
        AppState {
            daemon,
            websockets: Default::default(),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

/// The most a JSON request body may hold; image uploads have their own streaming limit.
pub const JSON_BODY_LIMIT: usize = 4 << 20;

/// A JSON body parsed strictly (unknown fields refused), with Incus-style errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(e.status(), "Request body too large")
                } else {
                    ApiError::bad_request(format!("Failed reading request body: {e}"))
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
    }
}

/// The level of `recursion=N;fields=…` before any field selection (the selection is a subset
/// cairnd always fills); 0 when absent or unreadable.
pub fn recursion_level(r: Option<&str>) -> u8 {
    r.and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `?recursion=N` (possibly `N;fields=…`) on listing endpoints.
#[derive(serde::Deserialize, Default)]
pub struct RecursionQuery {
    #[serde(default)]
    recursion: Option<String>,
}

impl RecursionQuery {
    pub fn level(&self) -> u8 {
        recursion_level(self.recursion.as_deref())
    }

    /// Full objects rather than URLs.
    pub fn recursive(&self) -> bool {
        self.level() >= 1
    }
}

/// Go clients send `null` for empty maps and lists: read it as empty.
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize as _;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub fn router(d: Arc<Daemon>) -> Router {
    let d = AppState::new(d);
    let json_routes = Router::new()
        .route("/", get(server::root))
        .route(
            "/1.0",
            get(server::get_server)
                .put(server::put_server)
                .patch(server::patch_server),
        )
        .route("/1.0/events", get(events::events))
        .route("/1.0/resources", get(resources::get))
        .route("/1.0/operations", get(operations::list))
        .route(
            "/1.0/operations/{id}",
            get(operations::get_op).delete(operations::cancel),
        )
        .route("/1.0/operations/{id}/wait", get(operations::wait))
        .route("/1.0/operations/{id}/websocket", get(operations::websocket))
        .route(
            "/1.0/instances",
            get(instances_list::list)
                .post(instances::create)
                .put(instances::bulk_state),
        )
        .route(
            "/1.0/instances/{name}",
            get(instances::get_one)
                .put(instances::put)
                .patch(instances::patch)
                .delete(instances::delete)
                .post(instances::rename),
        )
        .route(
            "/1.0/instances/{name}/state",
            get(instances::get_state).put(instances::put_state),
        )
        .route("/1.0/instances/{name}/exec", post(exec::exec))
        .route(
            "/1.0/instances/{name}/files",
            get(files::get_file)
                .post(files::post_file)
                .delete(files::delete_file),
        )
        .route("/1.0/instances/{name}/sftp", get(files::sftp))
        .route("/1.0/instances/{name}/logs", get(instances::logs))
        .route(
            "/1.0/instances/{name}/backups",
            get(instances::backups).post(instances::create_backup),
        )
        .route(
            "/1.0/instances/{name}/logs/{file}",
            get(instances::log_file).delete(instances::delete_log),
        )
        .route(
            "/1.0/instances/{name}/snapshots",
            get(snapshots::list).post(snapshots::create),
        )
        .route(
            "/1.0/instances/{name}/snapshots/{snap}",
            get(snapshots::get_one)
                .post(snapshots::rename)
                .delete(snapshots::delete)
                .put(snapshots::put)
                .patch(snapshots::put),
        )
        .route("/1.0/images", get(images::list).post(images::import))
        .route(
            "/1.0/images/aliases",
            get(images::list_aliases).post(images::create_alias),
        )
        .route(
            "/1.0/images/aliases/{alias}",
            get(images::get_alias)
                .put(images::put_alias)
                .patch(images::put_alias)
                .post(images::rename_alias)
                .delete(images::delete_alias),
        )
        .route(
            "/1.0/images/{fp}",
            get(images::get_one)
                .put(images::put)
                .patch(images::patch)
                .delete(images::delete),
        )
        .route("/1.0/images/{fp}/export", get(images::export))
        .route("/1.0/profiles", get(profiles::list).post(profiles::create))
        .route(
            "/1.0/profiles/{name}",
            get(profiles::get_one)
                .put(profiles::put)
                .patch(profiles::patch)
                .post(profiles::rename)
                .delete(profiles::delete),
        )
        .route(
            "/1.0/storage-pools",
            get(storage::list).post(storage::create),
        )
        .route(
            "/1.0/storage-pools/{pool}",
            get(storage::get_one)
                .put(storage::put)
                .patch(storage::put)
                .delete(storage::delete),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes",
            get(volumes::list).post(volumes::create),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes/{kind}",
            get(volumes::list_kind).post(volumes::create_kind),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes/{kind}/{name}",
            get(volumes::get_one)
                .put(volumes::put)
                .patch(volumes::patch)
                .post(volumes::rename)
                .delete(volumes::delete),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes/{kind}/{name}/state",
            get(volumes::state),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes/{kind}/{name}/snapshots",
            get(volume_snapshots::list).post(volume_snapshots::create),
        )
        .route(
            "/1.0/storage-pools/{pool}/volumes/{kind}/{name}/snapshots/{snapshot}",
            get(volume_snapshots::get_one)
                .put(volume_snapshots::put)
                .patch(volume_snapshots::put)
                .post(volume_snapshots::rename)
                .delete(volume_snapshots::delete),
        )
        .route(
            "/1.0/storage-pools/{pool}/resources",
            get(storage::resources),
        )
        .route("/1.0/networks", get(networks::list).post(networks::create))
        .route(
            "/1.0/networks/{name}",
            get(networks::get_one)
                .put(networks::put)
                .patch(networks::patch)
                .post(networks::rename)
                .delete(networks::delete),
        )
        .route("/1.0/networks/{name}/state", get(networks::state))
        .route("/1.0/networks/{name}/leases", get(networks::leases))
        .route("/1.0/projects", get(server::projects))
        .route("/1.0/projects/{name}", get(server::project))
        .route(
            "/1.0/certificates",
            get(certificates::list).post(certificates::create),
        )
        .route(
            "/1.0/certificates/{fp}",
            get(certificates::get_one)
                .put(certificates::put)
                .patch(certificates::put)
                .delete(certificates::delete),
        )
        .route(
            "/1.0/cluster",
            get(cluster::get_cluster).put(cluster::put_cluster),
        )
        .route(
            "/1.0/cluster/members",
            get(cluster::list_members).post(cluster::create_token),
        )
        .route(
            "/1.0/cluster/members/{name}",
            get(cluster::get_member)
                .put(cluster::put_member)
                .patch(cluster::patch_member)
                .post(cluster::rename_member)
                .delete(cluster::delete_member),
        )
        .route(
            "/1.0/cluster/members/{name}/state",
            get(cluster::get_member_state).post(cluster::post_member_state),
        )
        .route("/internal/cluster/join", post(cluster::internal_join))
        .route(
            "/internal/cluster/instances/{name}/send",
            post(cluster::internal_send_instance),
        )
        .route(
            crate::pool::cluster::SHARE_PATH,
            post(storage::internal_create_share),
        )
        .route(
            "/internal/cluster/storage-pools/{name}",
            axum::routing::delete(storage::internal_delete_share),
        )
        .route(
            crate::network::cluster::MEMBER_PATH,
            post(networks::internal_apply),
        )
        .route(
            "/internal/cluster/networks/{name}",
            axum::routing::delete(networks::internal_remove),
        )
        .route(
            crate::cluster::events_relay::EVENTS_PATH,
            get(cluster::internal_events),
        )
        .route(
            "/internal/cluster/images/{fp}/{part}",
            get(cluster::internal_image_part),
        )
        .route("/os/1.0", get(os::root))
        .route("/os/1.0/services", get(os::services))
        .route("/os/1.0/services/{name}", get(os::service))
        .route("/os/1.0/services/{name}/log", get(os::service_log))
        .route("/os/1.0/boots", get(os::boots))
        .route("/os/1.0/debug/kernel-log", get(os::kernel_log))
        .route("/os/1.0/system", get(os::system).post(os::power))
        .route("/internal/ready", get(server::ready))
        .route(
            "/internal/shutdown",
            axum::routing::put(server::shutdown).post(server::shutdown),
        )
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));
    // Snapshots are whole databases: streamed, no JSON body limit.
    let stream_routes = Router::new()
        .route(
            "/internal/cluster/snapshot",
            post(cluster::internal_snapshot),
        )
        .route(
            "/internal/cluster/instances/{name}",
            post(cluster::internal_receive_instance),
        )
        // Raft batches can be large; they come only from authenticated members.
        .route("/internal/cluster/raft", post(cluster::internal_raft))
        .layer(DefaultBodyLimit::max(1 << 30));

    json_routes
        .merge(stream_routes)
        .fallback(|| async { ApiError::not_found("not found") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            )
        })
        // Layers run outside in: authenticate first, then route to the right member.
        .layer(axum::middleware::from_fn_with_state(
            d.clone(),
            routing::route,
        ))
        .layer(axum::middleware::from_fn_with_state(
            d.clone(),
            auth::authenticate,
        ))
        .with_state(d)
}
