//! Whether a connection's peer is trusted, and if not why: decided from the TLS client
//! certificate against the replicated trust store (type, validity period, restriction) or
//! the cluster certificate. The API's middleware (`api/auth.rs`) and the listener's
//! untrusted-connection gate both ask here, so they can never disagree.

use crate::daemon::Daemon;
use crate::listener::Peer;
use crate::tls::cert::ServerCert;

/// Whether the caller presented `own_cert`, the daemon's current server certificate: only
/// another cluster member holds its key.
pub fn is_cluster_peer(peer: &Peer, own_cert: &ServerCert) -> bool {
    matches!(peer, Peer::Tls { cert_der: Some(der), .. } if der.as_slice() == own_cert.der().as_ref())
}

/// Why a TLS client is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    /// No certificate, or one not in the trust store: Incus's plain "not authorized".
    Unknown,
    /// In the trust store, but outside its validity period (Incus's `CheckTrustState`
    /// refuses it too); the client is told which end it is past.
    OutOfPeriod(String),
    /// Restricted to projects, which cairnd does not have yet: trusting it would make it a
    /// full admin, so it is refused until projects exist.
    Restricted,
}

/// Whether a client certificate (not the cluster's) is trusted now.
pub fn client_trust(
    d: &Daemon,
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

/// Whether a connection's client is trusted: the unix socket, a client certificate in the
/// trust store that [`client_trust`] accepts now, or the cluster certificate.
pub fn peer_is_trusted(d: &Daemon, peer: &Peer) -> bool {
    match peer {
        Peer::Unix => true,
        Peer::Tls {
            fingerprint,
            cert_der,
            ..
        } => {
            is_cluster_peer(peer, &d.cert())
                || client_trust(d, fingerprint.as_deref(), cert_der.as_deref()).is_ok()
        }
    }
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
