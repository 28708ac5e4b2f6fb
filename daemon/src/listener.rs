//! The two ways in: the local unix socket (root only, always trusted) and HTTPS with TLS
//! client certificates (trusted when the certificate's fingerprint is in the trust store).
//! Each connection is served by hyper with upgrades (websockets, SFTP), and every request is
//! tagged with the [`Peer`] it came from.
//!
//! Clients the daemon does not trust cannot hold it: TLS handshakes time out, and once a
//! handshake tells who the client is, an untrusted connection needs a slot of its own gate
//! (in all and per source address) and gets a short header/idle timeout. Trusted
//! connections never wait for those slots.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt;

use crate::daemon::Daemon;

/// Who is on the other end of a request's connection.
#[derive(Debug, Clone)]
pub enum Peer {
    Unix,
    Tls {
        fingerprint: Option<String>,
        /// The client certificate (DER), kept to store it when a trust token is redeemed.
        cert_der: Option<Arc<Vec<u8>>>,
        remote: SocketAddr,
    },
}

/// How long a connection may take to send a request's headers, counted from when the
/// server starts waiting for them: hyper starts that clock on an idle keep-alive connection
/// too, so it is also the idle timeout.
#[derive(Debug, Clone, Copy)]
struct ConnTimeouts {
    header_read: Duration,
}

/// Trusted clients (and the root-only unix socket) keep idle connections longer than the
/// 90 s after which Go's transport and our own peer pool drop theirs, so the client always
/// closes first and never sends a request into a connection the server is closing.
const TRUSTED: ConnTimeouts = ConnTimeouts {
    header_read: Duration::from_secs(120),
};

/// An untrusted client must send each request's headers within 10 s, and an idle one is
/// dropped after as long: slow-header clients cannot hold connections.
const UNTRUSTED: ConnTimeouts = ConnTimeouts {
    header_read: Duration::from_secs(10),
};

/// A TLS handshake not done by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of clients whose certificate is not trusted, in all and from one address.
/// Trusted connections never count against these, so untrusted ones cannot starve them.
pub const UNTRUSTED_MAX_CONNECTIONS: usize = 64;
pub const UNTRUSTED_MAX_PER_ADDRESS: usize = 8;

/// TLS handshakes in flight, in all and from one address: bounds the file descriptors and
/// memory that connections still to be classified hold.
const HANDSHAKES_MAX: usize = 512;
const HANDSHAKES_MAX_PER_ADDRESS: usize = 64;

async fn serve_connection<I>(io: I, router: Router, peer: Peer, timeouts: ConnTimeouts)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let r = router.clone();
        async move {
            let resp = r
                .oneshot(req.map(axum::body::Body::new))
                .await
                .unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!("connection ended: {e}");
    }
}

/// Counts connections in all and per source address against limits; a slot is given back
/// when its [`Slot`] drops.
struct Gate {
    max: usize,
    max_per_address: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

struct Slot {
    gate: Arc<Gate>,
    addr: IpAddr,
}

/// What counts as one source address: an IPv4 address (also when it arrives IPv4-mapped
/// on a dual-stack socket), or an IPv6 /64, the least a site is given, so one host cannot
/// take every slot by cycling through the addresses of its prefix.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl Gate {
    fn new(max: usize, max_per_address: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max,
            max_per_address,
            counts: Mutex::new((0, HashMap::new())),
        })
    }

    fn try_enter(self: &Arc<Gate>, ip: IpAddr) -> Option<Slot> {
        let addr = source_of(ip);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *c;
        let here = per.entry(addr).or_insert(0);
        if *total >= self.max || *here >= self.max_per_address {
            if *here == 0 {
                per.remove(&addr);
            }
            return None;
        }
        *here += 1;
        *total += 1;
        Some(Slot {
            gate: self.clone(),
            addr,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.gate.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *c;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.addr);
            }
        }
    }
}

pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        // A socket left by a killed daemon: connecting tells whether someone still serves it.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by a running daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

pub async fn serve_unix(listener: UnixListener, router: Router) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(
                    stream,
                    router.clone(),
                    Peer::Unix,
                    TRUSTED,
                ));
            }
            Err(e) => {
                tracing::warn!("unix socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The HTTPS listener currently bound (if `core.https_address` is set) and the router it
/// serves, so a config change can rebind it.
#[derive(Default)]
pub struct HttpsSlot {
    router: OnceLock<Router>,
    current: Mutex<Option<(String, tokio::task::JoinHandle<()>)>>,
    /// Read at each handshake, so a new certificate (joining a cluster) applies to new
    /// connections without rebinding the port.
    tls: SharedTls,
    /// `core.https_tls12`: whether TLS 1.2 is offered besides 1.3.
    tls12: AtomicBool,
}

type SharedTls = Arc<std::sync::RwLock<Option<Arc<rustls::ServerConfig>>>>;

impl HttpsSlot {
    pub fn set_router(&self, r: Router) {
        let _ = self.router.set(r);
    }

    /// Rebuilds the TLS configuration from the daemon's current certificate.
    pub fn refresh_tls(&self, cert: &crate::tls::cert::ServerCert) -> Result<(), String> {
        let tls = crate::tls::server_config_with(cert, self.tls12.load(Ordering::Relaxed))
            .map_err(|e| e.to_string())?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(tls);
        Ok(())
    }

    /// Offers TLS 1.2 besides 1.3 (or stops), from the next handshake on.
    pub fn set_tls12(
        &self,
        allow: bool,
        cert: &crate::tls::cert::ServerCert,
    ) -> Result<(), String> {
        self.tls12.store(allow, Ordering::Relaxed);
        self.refresh_tls(cert)
    }

    pub fn address(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(a, _)| a.clone())
    }
}

/// Normalizes `core.https_address`: ":8443" → "[::]:8443", "host" → "host:8443".
pub fn normalize_address(addr: &str) -> String {
    let addr = addr.trim();
    if addr.parse::<SocketAddr>().is_ok() {
        return addr.to_string();
    }
    if addr.parse::<std::net::IpAddr>().is_ok() {
        return if addr.contains(':') {
            format!("[{addr}]:8443")
        } else {
            format!("{addr}:8443")
        };
    }
    if let Some(port) = addr.strip_prefix(':') {
        return format!("[::]:{port}");
    }
    if addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        return addr.to_string();
    }
    format!("{addr}:8443")
}

/// Binds (or unbinds with None/empty) the HTTPS listener. Returns an error, and keeps the old
/// listener, if the new address cannot be bound.
pub async fn apply_https_address(d: &Arc<Daemon>, addr: Option<&str>) -> Result<(), String> {
    let slot = &d.https;
    let want = addr.filter(|a| !a.trim().is_empty()).map(normalize_address);
    if slot.address() == want {
        return Ok(());
    }
    let listener = match &want {
        Some(a) => Some(
            TcpListener::bind(a.as_str())
                .await
                .map_err(|e| format!("Failed to listen on {a}: {e}"))?,
        ),
        None => None,
    };
    let mut cur = slot.current.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, h)) = cur.take() {
        h.abort();
    }
    if let (Some(l), Some(a)) = (listener, want) {
        let router = slot
            .router
            .get()
            .cloned()
            .ok_or_else(|| "the API router is not ready".to_string())?;
        slot.refresh_tls(&d.cert())?;
        let handle = tokio::spawn(serve_https(l, router, slot.tls.clone(), Arc::downgrade(d)));
        tracing::info!("HTTPS API on {a}");
        *cur = Some((a, handle));
    }
    Ok(())
}

async fn serve_https(listener: TcpListener, router: Router, tls: SharedTls, d: Weak<Daemon>) {
    let handshakes = Gate::new(HANDSHAKES_MAX, HANDSHAKES_MAX_PER_ADDRESS);
    let untrusted = Gate::new(UNTRUSTED_MAX_CONNECTIONS, UNTRUSTED_MAX_PER_ADDRESS);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("https accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(config) = tls.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            continue;
        };
        let Some(handshake_slot) = handshakes.try_enter(remote.ip()) else {
            tracing::debug!("{remote}: too many TLS handshakes in flight, connection dropped");
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let router = router.clone();
        let untrusted = untrusted.clone();
        let d = d.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
            let stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake with {remote}: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake with {remote}: no handshake within {TLS_HANDSHAKE_TIMEOUT:?}");
                    return;
                }
            };
            drop(handshake_slot);
            let cert_der = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.to_vec()));
            let fingerprint = cert_der.as_ref().map(|c| crate::tls::cert_fingerprint(c));
            let peer = Peer::Tls {
                fingerprint,
                cert_der,
                remote,
            };
            let Some(d) = d.upgrade() else {
                return;
            };
            let trusted = crate::peer_trust::peer_is_trusted(&d, &peer);
            drop(d);
            // Held for as long as the connection is served.
            let _slot = if trusted {
                None
            } else {
                match untrusted.try_enter(remote.ip()) {
                    Some(s) => Some(s),
                    None => {
                        tracing::debug!(
                            "{remote}: too many untrusted connections, connection dropped"
                        );
                        return;
                    }
                }
            };
            let timeouts = if trusted { TRUSTED } else { UNTRUSTED };
            serve_connection(stream, router, peer, timeouts).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{normalize_address, source_of, Gate};
    use std::net::IpAddr;

    #[test]
    fn a_gate_bounds_connections_in_all_and_per_source() {
        let gate = Gate::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let a1 = gate.try_enter(a).unwrap();
        let _a2 = gate.try_enter(a).unwrap();
        assert!(gate.try_enter(a).is_none(), "a third from one address");
        let _b1 = gate.try_enter(b).unwrap();
        assert!(gate.try_enter(c).is_none(), "a fourth in all");
        drop(a1);
        let _c1 = gate.try_enter(c).unwrap();
        assert!(
            gate.try_enter("2001:db8:1:2:ffff::1".parse().unwrap())
                .is_none(),
            "the total is reached again"
        );
        assert_eq!(source_of(b), "192.0.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            source_of("2001:db8:1:2:ffff::1".parse().unwrap()),
            source_of(c),
            "one IPv6 /64 is one source"
        );
    }

    #[test]
    fn https_addresses_like_incus() {
        assert_eq!(normalize_address(":8443"), "[::]:8443");
        assert_eq!(normalize_address("127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(normalize_address("127.0.0.1"), "127.0.0.1:8443");
        assert_eq!(normalize_address("::1"), "[::1]:8443");
        assert_eq!(normalize_address("localhost:1234"), "localhost:1234");
    }
}
