//! Who may do what: the unix socket is fully trusted; over HTTPS a request is trusted when
//! its TLS client certificate is in the trust store. Untrusted clients reach only what Incus
//! shows them: the API root, `/1.0` (reduced) and `POST /1.0/certificates` to present a
//! trust token. `/internal/*` is for the unix socket only.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::listener::Peer;

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

pub async fn authenticate(State(d): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<Peer>()
        .cloned()
        .unwrap_or(Peer::Unix);
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
            let trusted = match fingerprint {
                Some(fp) => matches!(d.db.certificate(fp), Ok(Some(c)) if c.cert_type == "client"),
                None => false,
            };
            Caller {
                trusted,
                method: "tls",
                fingerprint: fingerprint.clone(),
                cert_der: cert_der.clone(),
            }
        }
    };
    let path = req.uri().path().to_string();
    if path.starts_with("/internal") && !matches!(peer, Peer::Unix) {
        return ApiError::forbidden().into_response();
    }
    if !caller.trusted && !open_to_untrusted(req.method(), &path) {
        return ApiError::forbidden().into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}
