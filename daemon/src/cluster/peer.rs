//! The member-to-member HTTPS client.
//!
//! Every member of a cluster presents the same cluster certificate, as its HTTPS server
//! certificate and as its TLS client certificate when it calls another member. So the
//! client trusts a server only if it presents exactly that certificate (pinning: no CA, no
//! host name check — members are addressed by IP), and presents it in turn so the server
//! knows a member is calling.
//!
//! Connections are kept alive and pooled per address: Raft sends many small requests and
//! a TLS handshake per request would dominate their latency. TCP_NODELAY is set for the
//! same reason.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http::{header, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::tls::cert::ServerCert;

/// TCP connect plus TLS handshake; a member that takes longer is as good as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an unused pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How much of an error answer's body an error keeps.
const ERROR_BODY_LIMIT: usize = 4096;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the client sends: any body, boxed (whole JSON, a streamed file or tar, a client's
/// request being forwarded).
pub type PeerBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A body that streams `reader` (a snapshot file, a tar pipe) as it is read.
pub fn reader_body(reader: impl AsyncRead + Send + 'static) -> PeerBody {
    let frames = tokio_util::io::ReaderStream::new(reader)
        .map_ok(hyper::body::Frame::data)
        .map_err(BoxError::from);
    StreamBody::new(frames).boxed_unsync()
}

/// An empty body.
pub fn empty_body() -> PeerBody {
    Full::new(Bytes::new())
        .map_err(BoxError::from)
        .boxed_unsync()
}

/// A whole body.
pub fn full_body(bytes: impl Into<Bytes>) -> PeerBody {
    Full::new(bytes.into())
        .map_err(BoxError::from)
        .boxed_unsync()
}

/// Which call failed: method, member address and path (never the query, which may hold
/// an operation secret).
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub addr: String,
    pub path: String,
}

impl Call {
    fn new(method: &Method, addr: &str, uri: &Uri) -> Call {
        Call {
            method: method.clone(),
            addr: addr.to_string(),
            path: uri.path().to_string(),
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} https://{}{}", self.method, self.addr, self.path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("loading the cluster certificate: {0}")]
    Certificate(#[source] crate::tls::TlsError),
    #[error("building the member-to-member TLS client: {0}")]
    Config(#[source] rustls::Error),
    #[error("{call}: invalid member address: {source}")]
    Address {
        call: Call,
        #[source]
        source: http::Error,
    },
    #[error("{call}: {}", error_chain(.source))]
    Unreachable {
        call: Call,
        #[source]
        source: Box<hyper_util::client::legacy::Error>,
    },
    #[error("{call}: no answer within {timeout:?}")]
    Timeout { call: Call, timeout: Duration },
    #[error("{call}: {status}: {body}")]
    Status {
        call: Call,
        status: StatusCode,
        body: String,
    },
    #[error("{call}: reading the answer: {reason}")]
    Body { call: Call, reason: String },
    #[error("{call}: encoding the request: {source}")]
    Encode {
        call: Call,
        #[source]
        source: serde_json::Error,
    },
    #[error("{call}: decoding the answer: {source}")]
    Decode {
        call: Call,
        #[source]
        source: serde_json::Error,
    },
}

impl PeerError {
    /// The status of a non-2xx answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            PeerError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// hyper's errors say little at the top ("client error (Connect)"); the cause is below.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The member-to-member client. Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct PeerClient {
    client: Client<PinnedTlsConnector, PeerBody>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient").finish_non_exhaustive()
    }
}

impl PeerClient {
    /// A client presenting the cluster certificate (`cert_pem` + `key_pem`) and trusting
    /// only servers that present the same certificate.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<PeerClient, PeerError> {
        let cert = ServerCert::from_pem(cert_pem, key_pem, "cluster certificate")
            .map_err(PeerError::Certificate)?;
        Self::from_cert(&cert)
    }

    /// The same, from an already loaded certificate (the daemon's `d.cert()`).
    pub fn from_cert(cert: &ServerCert) -> Result<PeerClient, PeerError> {
        Self::pinned(cert.der(), cert)
    }

    /// A client that trusts only a server presenting `server` and presents `own`: a server
    /// joining a cluster knows the cluster certificate, not yet its key.
    pub fn pinned(
        server: &CertificateDer<'static>,
        own: &ServerCert,
    ) -> Result<PeerClient, PeerError> {
        Self::pinned_fingerprint(&crate::tls::cert_fingerprint(server.as_ref()), own)
    }

    /// A client that trusts only a server whose certificate has SHA-256 `fingerprint` (hex)
    /// and presents `own`: joining a member seen through discovery, which announced its
    /// certificate's fingerprint.
    pub fn pinned_fingerprint(
        fingerprint: &str,
        own: &ServerCert,
    ) -> Result<PeerClient, PeerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PinnedServerCert {
            fingerprint: fingerprint.to_ascii_lowercase(),
            algorithms: provider.signature_verification_algorithms,
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(PeerError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(vec![own.der().clone()], own.key())
            .map_err(PeerError::Config)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = PinnedTlsConnector {
            tls: TlsConnector::from(Arc::new(config)),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(PeerClient { client })
    }

    /// Sends `req` to the member at `addr` ("10.0.0.2:8443"); only the path and query of
    /// its URI are used. The answer is returned whatever its status; its body streams.
    pub async fn request<B>(
        &self,
        addr: &str,
        req: Request<B>,
    ) -> Result<Response<Incoming>, PeerError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        let call = Call::new(&parts.method, addr, &parts.uri);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        parts.uri = Uri::builder()
            .scheme("https")
            .authority(addr)
            .path_and_query(path_and_query)
            .build()
            .map_err(|source| PeerError::Address {
                call: call.clone(),
                source,
            })?;
        parts.version = Version::HTTP_11;
        self.client
            .request(Request::from_parts(
                parts,
                body.map_err(Into::into).boxed_unsync(),
            ))
            .await
            .map_err(|source| PeerError::Unreachable {
                call,
                source: Box::new(source),
            })
    }

    /// POSTs `body` as JSON to `path` on the member at `addr` and decodes the JSON answer;
    /// a non-2xx answer is [`PeerError::Status`] with the body's text. `timeout` bounds
    /// the whole exchange.
    pub async fn post_json<T, R>(
        &self,
        addr: &str,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<R, PeerError>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let call = Call {
            method: Method::POST,
            addr: addr.to_string(),
            path: path.split('?').next().unwrap_or(path).to_string(),
        };
        let bytes = serde_json::to_vec(body).map_err(|source| PeerError::Encode {
            call: call.clone(),
            source,
        })?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|source| PeerError::Address {
                call: call.clone(),
                source,
            })?;
        let exchange = async {
            let resp = self.request(addr, req).await?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| PeerError::Body {
                    call: call.clone(),
                    reason: error_chain(&e),
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(PeerError::Status {
                    call: call.clone(),
                    status,
                    body: truncated_text(&body),
                });
            }
            serde_json::from_slice(&body).map_err(|source| PeerError::Decode {
                call: call.clone(),
                source,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout { call, timeout }),
        }
    }
}

fn truncated_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= ERROR_BODY_LIMIT {
        return text.trim_end().to_string();
    }
    let mut end = ERROR_BODY_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Accepts a server only if it presents the pinned certificate, and checks (through the
/// handshake signature) that it holds its key.
#[derive(Debug)]
struct PinnedServerCert {
    /// SHA-256 of the one certificate accepted (as Incus pins certificates).
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if crate::tls::cert_fingerprint(end_entity.as_ref()) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Connects the pool's connections: TCP with TCP_NODELAY, then TLS with the pinned
/// certificate.
#[derive(Clone)]
struct PinnedTlsConnector {
    tls: TlsConnector,
}

impl tower::Service<Uri> for PinnedTlsConnector {
    type Response = TokioIo<PeerStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<PeerStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let connect = async {
                let host = uri
                    .host()
                    .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
                let port = uri.port_u16().unwrap_or(8443);
                let tcp = TcpStream::connect((host, port)).await?;
                tcp.set_nodelay(true)?;
                // Closing resets the connection and drops what is still unsent: a request
                // abandoned on a dead link (a write given up on, then refused to its client)
                // must not reach the member once the link heals and take effect after all.
                socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO))?;
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let stream = tls.connect(name, tcp).await.map_err(explain_pin_failure)?;
                Ok::<_, io::Error>(TokioIo::new(PeerStream(stream)))
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(e)) => Err(io::Error::new(
                    e.kind(),
                    format!("connecting to {authority}: {e}"),
                )),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {authority}: no answer within {CONNECT_TIMEOUT:?}"),
                )),
            }
        })
    }
}

/// rustls only says "ApplicationVerificationFailure" when our pin refuses a server.
fn explain_pin_failure(e: io::Error) -> io::Error {
    let pin_refused = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
            )
        });
    if pin_refused {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the server does not present the cluster certificate",
        )
    } else {
        e
    }
}

/// A TLS connection to a member, as the pool keeps it.
struct PeerStream(TlsStream<TcpStream>);

impl Connection for PeerStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_support::{cluster_cert, TlsServer};
    use axum::routing::{get, post};
    use axum::Router;
    use std::sync::atomic::Ordering;

    fn get_req(path: &str) -> Request<Full<Bytes>> {
        Request::get(path).body(Full::default()).unwrap()
    }

    async fn text(resp: Response<Incoming>) -> String {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn app() -> Router {
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route(
                "/add",
                post(|axum::Json(v): axum::Json<Vec<u32>>| async move {
                    axum::Json(v.iter().sum::<u32>())
                }),
            )
            .route(
                "/join",
                post(|| async { (StatusCode::CONFLICT, "already a member\n") }),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "late"
                }),
            )
    }

    #[tokio::test]
    async fn the_pinned_member_answers_over_one_reused_connection() {
        let (cert, pem, key) = cluster_cert();
        let server = TlsServer::start(app(), &cert, Some(cert.der().clone())).await;
        let peer = PeerClient::new(&pem, &key).unwrap();

        for _ in 0..3 {
            let resp = peer.request(&server.addr, get_req("/hello")).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(text(resp).await, "hello");
        }
        let sum: u32 = peer
            .post_json(&server.addr, "/add", &[1, 2, 3], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(sum, 6);
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_server_with_another_certificate_is_refused() {
        let (cert, pem, key) = cluster_cert();
        let stranger = ServerCert::generate("stranger").unwrap();
        let server = TlsServer::start(app(), &stranger, None).await;
        let peer = PeerClient::new(&pem, &key).unwrap();

        let err = peer
            .request(&server.addr, get_req("/hello"))
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Unreachable { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("does not present the cluster certificate"),
            "{message}"
        );
        assert!(message.contains(&server.addr), "{message}");

        // The same client still reaches a member presenting the cluster certificate.
        let member = TlsServer::start(app(), &cert, Some(cert.der().clone())).await;
        let resp = peer.request(&member.addr, get_req("/hello")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_non_2xx_answer_is_an_error_with_status_and_body() {
        let (cert, pem, key) = cluster_cert();
        let server = TlsServer::start(app(), &cert, Some(cert.der().clone())).await;
        let peer = PeerClient::new(&pem, &key).unwrap();

        let err = peer
            .post_json::<_, serde_json::Value>(
                &server.addr,
                "/join",
                &serde_json::json!({"name": "n2"}),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
        assert!(
            matches!(&err, PeerError::Status { body, .. } if body == "already a member"),
            "{err}"
        );

        let err = peer
            .post_json::<_, String>(&server.addr, "/slow", &(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Timeout { .. }), "{err}");
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (_, pem, _) = cluster_cert();
        let (_, _, other_key) = cluster_cert();
        let err = PeerClient::new(&pem, &other_key).unwrap_err();
        assert!(matches!(err, PeerError::Certificate(_)), "{err}");
    }
}
