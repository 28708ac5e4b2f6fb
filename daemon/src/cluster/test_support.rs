//! Test helpers for member-to-member HTTPS: a cluster certificate and a real TLS server
//! that can require a given client certificate, count its connections and be stopped
//! (connections included) like a member that goes down.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use crate::listener::Peer;
use crate::tls::cert::ServerCert;
use crate::tls::AnyClientCert;

/// A fresh cluster certificate, loaded and as the PEM pair members are given.
pub fn cluster_cert() -> (ServerCert, String, String) {
    let (pem, key) = crate::tls::generate_client_cert("cluster").unwrap();
    let cert = ServerCert::from_pem(&pem, &key, "test cluster certificate").unwrap();
    (cert, pem, key)
}

/// Refuses a client that does not present exactly `expected`.
#[derive(Debug)]
struct RequireClientCert {
    expected: CertificateDer<'static>,
    inner: AnyClientCert,
}

impl ClientCertVerifier for RequireClientCert {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the cluster certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn server_config(
    cert: &ServerCert,
    require_client: Option<CertificateDer<'static>>,
) -> Arc<rustls::ServerConfig> {
    let Some(expected) = require_client else {
        return crate::tls::server_config(cert).unwrap();
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = RequireClientCert {
        expected,
        inner: AnyClientCert::new(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![cert.der().clone()], cert.key())
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An HTTPS server (HTTP/1.1 with upgrades, like the daemon's listener) on 127.0.0.1.
pub struct TlsServer {
    pub addr: String,
    /// TCP connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsServer {
    pub async fn start(
        router: Router,
        cert: &ServerCert,
        require_client: Option<CertificateDer<'static>>,
    ) -> TlsServer {
        Self::start_at("127.0.0.1:0", router, cert, require_client).await
    }

    pub async fn start_at(
        addr: &str,
        router: Router,
        cert: &ServerCert,
        require_client: Option<CertificateDer<'static>>,
    ) -> TlsServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(cert, require_client));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            // Owned here so that stopping the server also ends its connections.
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, remote)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                while connections.try_join_next().is_some() {}
                let acceptor = acceptor.clone();
                let router = router.clone();
                connections.spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let cert_der = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::new(c.to_vec()));
                    let peer = Peer::Tls {
                        fingerprint: cert_der.as_ref().map(|c| crate::tls::cert_fingerprint(c)),
                        cert_der,
                        remote,
                    };
                    let svc =
                        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                            req.extensions_mut().insert(peer.clone());
                            let router = router.clone();
                            async move {
                                let resp = router
                                    .oneshot(req.map(axum::body::Body::new))
                                    .await
                                    .unwrap_or_else(|e: Infallible| match e {});
                                Ok::<_, Infallible>(resp)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TlsServer {
            addr,
            accepted,
            task,
        }
    }

    /// Stops listening and drops every open connection, as a member going down would.
    pub async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
