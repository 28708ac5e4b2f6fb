//! `GET /1.0/resources`: what this member's hardware is, measured from /proc and /sys by
//! [`crate::resources`]. In a cluster `?target=M` is sent to member M by `routing.rs`;
//! a target naming no member (or set on a standalone server) is refused, not ignored.

use std::path::Path;

use axum::extract::{Query, State};
use serde::Deserialize;

use super::response::sync;
use super::{ApiError, ApiResult, AppState};

/// `?target=` on per-member reads.
#[derive(Deserialize, Default)]
pub struct TargetQuery {
    #[serde(default)]
    target: Option<String>,
}

/// Refuses a `target` that is not this member. A request for another member that exists
/// was already forwarded there by `routing.rs`; what reaches a handler names this member,
/// an unknown one, or any name on a server that is not clustered.
pub fn check_target(d: &AppState, q: &TargetQuery) -> Result<(), ApiError> {
    let Some(target) = q.target.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    match d.cluster() {
        None => Err(ApiError::bad_request(format!(
            "Cannot target member {target:?}: this server is not clustered"
        ))),
        Some(rt) if rt.name() == target => Ok(()),
        Some(_) => Err(ApiError::bad_request(format!(
            "Cluster member {target:?} not found"
        ))),
    }
}

pub async fn get(State(d): State<AppState>, Query(q): Query<TargetQuery>) -> ApiResult {
    check_target(&d, &q)?;
    let res = tokio::task::spawn_blocking(|| crate::resources::read(Path::new("/")))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("Failed to read the server's resources: {e}")))?;
    sync(res)
}
