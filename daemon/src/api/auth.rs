//! Who may do what: the unix socket is fully trusted; over HTTPS a request is trusted when
//! its TLS client certificate is in the trust store, or is this daemon's own certificate —
//! in a cluster the certificate all members share, which one member presents when it calls
//! another (a forwarded request, an event relay). A client certificate in the trust store
//! is still refused, with the reason, outside its validity period, and while it is
//! `restricted` (projects do not exist yet, so a restriction could not be enforced).
//! Untrusted clients reach only what Incus shows them: the API root, `/1.0` (reduced) and
//! `POST /1.0/certificates` to present a trust token. `/internal/*` is for the unix socket,
//! and `/internal/cluster/*` for the other members of the cluster (and a joining server's
//! `/internal/cluster/join`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use futures::StreamExt;
use http_body_util::BodyExt;

use super::{ApiError, AppState};
use crate::listener::Peer;
use crate::peer_trust::{client_trust, is_cluster_peer, Untrusted};

/// What handlers learn about the caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub trusted: bool,
    /// "unix" or "tls", as `/1.0`'s `auth_user_method` shows.
    pub method: &'static str,
    pub fingerprint: Option<String>,
    pub cert_der: Option<std::sync::Arc<Vec<u8>>>,
}

fn open_to_untrusted(method: &Method, path: &str) -> bool {
    matches!(
        (method, path),
        (&Method::GET, "/")
            | (&Method::GET, "/1.0")
            | (&Method::GET, "/1.0/")
            | (&Method::POST, "/1.0/certificates")
    )
}

/// What an untrusted caller is told when it asks for more than the public part.
fn refusal_error(why: Untrusted) -> ApiError {
    match why {
        Untrusted::Unknown => ApiError::forbidden(),
        Untrusted::OutOfPeriod(m) => ApiError::new(StatusCode::FORBIDDEN, m),
        Untrusted::Restricted => {
            ApiError::new(StatusCode::FORBIDDEN, crate::trust::RESTRICTED_UNSUPPORTED)
        }
    }
}

/// The most an untrusted client's request body may hold: a trust token redemption or a
/// join request is a few hundred bytes of JSON.
pub const UNTRUSTED_BODY_LIMIT: usize = 64 << 10;

/// How long an untrusted client has to send a request's whole body.
pub const UNTRUSTED_BODY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimeout(Duration);

/// Refuses an untrusted request whose announced body is over [`UNTRUSTED_BODY_LIMIT`]
/// before reading any of it: the client, which may be waiting for `100 Continue`, gets the
/// answer instead of sending the body into a connection about to close.
fn untrusted_body_too_large(req: &Request) -> Option<Response> {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()?;
    (announced > UNTRUSTED_BODY_LIMIT as u64).then(|| {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
        )
        .into_response()
    })
}

/// An untrusted request's body, cut off past [`UNTRUSTED_BODY_LIMIT`] bytes (413 from the
/// extractors) or when it is not complete within [`UNTRUSTED_BODY_TIMEOUT`], so a client
/// that never finishes its body holds neither memory nor the handler.
fn bounded_untrusted_body(body: Body) -> Body {
    let deadline = tokio::time::Instant::now() + UNTRUSTED_BODY_TIMEOUT;
    let limited = http_body_util::Limited::new(body, UNTRUSTED_BODY_LIMIT);
    let frames =
        futures::stream::unfold(Some(limited.into_data_stream()), move |state| async move {
            let mut data = state?;
            match tokio::time::timeout_at(deadline, data.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(data))),
                Ok(Some(Err(e))) => Some((Err(axum::Error::new(e)), None)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(axum::Error::new(BodyTimeout(UNTRUSTED_BODY_TIMEOUT))),
                    None,
                )),
            }
        });
    Body::from_stream(frames)
}

pub async fn authenticate(State(d): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<Peer>()
        .cloned()
        .unwrap_or(Peer::Unix);
    // What an untrusted caller is told when it asks for more than the public part.
    let mut refusal = Untrusted::Unknown;
    let caller = match &peer {
        Peer::Unix => Caller {
            trusted: true,
            method: "unix",
            fingerprint: None,
            cert_der: None,
        },
        Peer::Tls {
            fingerprint,
            cert_der,
            ..
        } => {
            let trusted = if is_cluster_peer(&peer, &d.cert()) {
                Ok(())
            } else {
                client_trust(&d, fingerprint.as_deref(), cert_der.as_deref())
            };
            if let Err(why) = &trusted {
                refusal = why.clone();
            }
            Caller {
                trusted: trusted.is_ok(),
                method: "tls",
                fingerprint: fingerprint.clone(),
                cert_der: cert_der.clone(),
            }
        }
    };
    let path = req.uri().path().to_string();
    if path.starts_with("/internal") {
        let allowed = match &peer {
            Peer::Unix => true,
            // A joining server has no trusted certificate yet: it proves itself with the
            // join token's secret, checked by the handler.
            Peer::Tls { .. } if path == "/internal/cluster/join" => true,
            Peer::Tls { .. } => {
                path.starts_with("/internal/cluster/")
                    && d.cluster().is_some()
                    && is_cluster_peer(&peer, &d.cert())
            }
        };
        if !allowed {
            return ApiError::forbidden().into_response();
        }
        if !caller.trusted {
            if let Some(refused) = untrusted_body_too_large(&req) {
                return refused;
            }
            req = req.map(bounded_untrusted_body);
        }
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    if !caller.trusted {
        if !open_to_untrusted(req.method(), &path) {
            return refusal_error(refusal).into_response();
        }
        if let Some(refused) = untrusted_body_too_large(&req) {
            return refused;
        }
        req = req.map(bounded_untrusted_body);
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}
