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

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::listener::Peer;
use crate::tls::cert::ServerCert;

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

/// Whether the caller presented `own_cert`, the daemon's current server certificate: only
/// another cluster member holds its key.
pub fn is_cluster_peer(peer: &Peer, own_cert: &ServerCert) -> bool {
    matches!(peer, Peer::Tls { cert_der: Some(der), .. } if der.as_slice() == own_cert.der().as_ref())
}

/// Why a TLS client is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Untrusted {
    /// No certificate, or one not in the trust store: Incus's plain "not authorized".
    Unknown,
    /// In the trust store, but outside its validity period (Incus's `CheckTrustState`
    /// refuses it too); the client is told which end it is past.
    OutOfPeriod(String),
    /// Restricted to projects, which cairnd does not have yet: trusting it would make it a
    /// full admin, so it is refused until projects exist.
    Restricted,
}

impl Untrusted {
    fn into_error(self) -> ApiError {
        match self {
            Untrusted::Unknown => ApiError::forbidden(),
            Untrusted::OutOfPeriod(m) => ApiError::new(StatusCode::FORBIDDEN, m),
            Untrusted::Restricted => {
                ApiError::new(StatusCode::FORBIDDEN, crate::trust::RESTRICTED_UNSUPPORTED)
            }
        }
    }
}

/// Whether a client certificate (not the cluster's) is trusted now.
fn client_trust(
    d: &AppState,
    fingerprint: Option<&str>,
    cert_der: Option<&Vec<u8>>,
) -> Result<(), Untrusted> {
    let (Some(fp), Some(der)) = (fingerprint, cert_der) else {
        return Err(Untrusted::Unknown);
    };
    let rec = match d.db.certificate(fp) {
        Ok(Some(c)) if c.cert_type == "client" => c,
        Ok(_) => return Err(Untrusted::Unknown),
        Err(e) => {
            tracing::warn!("looking up client certificate {fp}: {e}");
            return Err(Untrusted::Unknown);
        }
    };
    if let Err(e) = crate::tls::validity::check_now(der) {
        tracing::info!("refusing trusted certificate {fp} ({}): {e}", rec.name);
        return Err(Untrusted::OutOfPeriod(e.to_string()));
    }
    if rec.restricted {
        tracing::info!("refusing restricted certificate {fp} ({})", rec.name);
        return Err(Untrusted::Restricted);
    }
    Ok(())
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
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    if !caller.trusted && !open_to_untrusted(req.method(), &path) {
        return refusal.into_error().into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tls_peer(cert_der: Option<Vec<u8>>) -> Peer {
        Peer::Tls {
            fingerprint: cert_der.as_deref().map(crate::tls::cert_fingerprint),
            cert_der: cert_der.map(Arc::new),
            remote: "127.0.0.2:40000".parse().unwrap(),
        }
    }

    #[test]
    fn only_a_caller_presenting_the_daemons_own_certificate_is_a_cluster_peer() {
        let own = ServerCert::generate("node1").unwrap();
        let other = ServerCert::generate("node1").unwrap();
        assert!(is_cluster_peer(&tls_peer(Some(own.der().to_vec())), &own));
        assert!(!is_cluster_peer(
            &tls_peer(Some(other.der().to_vec())),
            &own
        ));
        assert!(!is_cluster_peer(&tls_peer(None), &own));
        assert!(!is_cluster_peer(&Peer::Unix, &own));
    }
}
