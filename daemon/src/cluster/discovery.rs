//! Zero-touch cluster formation, the discovery half: members started with the same seed
//! `cluster:` section find each other on the management network with no API call.
//!
//! Each member multicasts an [`Announcement`] of itself (name, API address, certificate
//! fingerprint) every 300–500 ms, authenticated with a key derived from the join secret
//! ([`ClusterKeys`]); the secret is never sent. Receivers keep the [`Peer`]s of their
//! cluster in a [`watch`] channel and drop everything else: other clusters, wrong secrets
//! (logged once a minute per source), replays, garbage. [`decide`] picks the founder
//! deterministically; the others join it with a [`join_proof`] instead of an Incus join
//! token.
//!
//! # Why IPv4 multicast (239.255.67.78, TTL 1)
//! The seed configures the management network in IPv4 (static CIDR or DHCP) and the API
//! address peers connect to is IPv4, so discovery depends on nothing else: IPv6 may be
//! disabled on an appliance, and a link-local address is tentative (DAD) for a while after
//! the link comes up, which would delay formation for no gain. 239.255.0.0/16 is the
//! IPv4 Local Scope (RFC 2365), and TTL 1 keeps the packets on the link. The socket is
//! bound to the group and to the interface (`SO_BINDTODEVICE`), joins the group on that
//! interface and sends through it (`IP_MULTICAST_IF` by index), so other NICs never see or
//! send announcements. Multicast loopback is off and our own messages are filtered anyway.

mod founder;
mod keys;
mod table;
mod wire;

pub use founder::{choose_founder, decide, Decision, SETTLE};
pub use keys::{
    join_proof, new_join_nonce, verify_join_proof, ClusterKeys, NonceCache, NonceError,
};
pub use table::{DiscoveryStats, Dropped, Peer, Verdict, MAX_MEMBERS};
pub use wire::{Announcement, WireError, MAX_NAME, MAX_PACKET};

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, RngCore};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use table::PeerTable;

/// The default discovery group, in the IPv4 Local Scope.
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 67, 78);
/// The default discovery port (UDP).
pub const DEFAULT_PORT: u16 = 8444;
/// The shortest join secret accepted (as the seed requires).
pub const MIN_SECRET_CHARS: usize = 16;
/// Announcements go out at a random interval in this range, so that members started
/// together do not stay in lockstep.
const INTERVAL_MS: std::ops::RangeInclusive<u64> = 300..=500;
/// Large enough to see that a datagram is over [`MAX_PACKET`] (it is then dropped).
const RECV_BUFFER: usize = 2048;

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("invalid discovery configuration: {0}")]
    Config(String),
    #[error("no interface to announce on: none is up, multicast-capable and not loopback")]
    NoInterface,
    #[error("listing network interfaces: {0}")]
    ListInterfaces(#[source] nix::Error),
    #[error("discovery interface {interface:?}: {source}")]
    Interface {
        interface: String,
        #[source]
        source: nix::Error,
    },
    #[error("discovery socket on {interface:?}: {what}: {source}")]
    Socket {
        interface: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What a member announces, and how.
#[derive(Clone)]
pub struct DiscoveryConfig {
    pub cluster: String,
    /// The join secret (at least [`MIN_SECRET_CHARS`] characters).
    pub secret: String,
    /// This member's name.
    pub member: String,
    /// Where this member's HTTPS API listens: a concrete address peers can reach.
    pub api_address: SocketAddr,
    /// SHA-256 of this member's server certificate, hex.
    pub fingerprint: String,
    /// The management interface; `None`: [`default_interface`]. Used by [`Discovery::start`].
    pub interface: Option<String>,
    pub group: Ipv4Addr,
    pub port: u16,
    /// Peers not heard from for this long are dropped from the table.
    pub peer_timeout: Duration,
}

// Written by hand so that the secret never reaches a log.
impl std::fmt::Debug for DiscoveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryConfig")
            .field("cluster", &self.cluster)
            .field("member", &self.member)
            .field("api_address", &self.api_address)
            .field("fingerprint", &self.fingerprint)
            .field("interface", &self.interface)
            .field("group", &self.group)
            .field("port", &self.port)
            .field("peer_timeout", &self.peer_timeout)
            .finish_non_exhaustive()
    }
}

impl DiscoveryConfig {
    /// A configuration with the defaults: first interface up, [`DEFAULT_GROUP`],
    /// [`DEFAULT_PORT`], peers forgotten after 5 s of silence (10+ missed announcements).
    pub fn new(
        cluster: &str,
        secret: &str,
        member: &str,
        api_address: SocketAddr,
        fingerprint: &str,
    ) -> DiscoveryConfig {
        DiscoveryConfig {
            cluster: cluster.into(),
            secret: secret.into(),
            member: member.into(),
            api_address,
            fingerprint: fingerprint.into(),
            interface: None,
            group: DEFAULT_GROUP,
            port: DEFAULT_PORT,
            peer_timeout: Duration::from_secs(5),
        }
    }

    fn validate(&self) -> Result<(), DiscoveryError> {
        let bad = |m: String| Err(DiscoveryError::Config(m));
        if !wire::valid_name(&self.cluster) {
            return bad(format!("cluster name {:?}", self.cluster));
        }
        if !wire::valid_name(&self.member) {
            return bad(format!("member name {:?}", self.member));
        }
        if self.secret.chars().count() < MIN_SECRET_CHARS {
            return bad(format!("secret shorter than {MIN_SECRET_CHARS} characters"));
        }
        if !wire::valid_api_address(&self.api_address) {
            return bad(format!(
                "API address {} is not one peers can connect to",
                self.api_address
            ));
        }
        if wire::parse_fingerprint(&self.fingerprint).is_err() {
            return bad(format!(
                "fingerprint {:?} is not SHA-256 hex",
                self.fingerprint
            ));
        }
        if !self.group.is_multicast() || self.port == 0 {
            return bad(format!("group {}:{}", self.group, self.port));
        }
        Ok(())
    }
}

/// A running discovery: announces this member and tracks the others until dropped.
#[derive(Debug)]
pub struct Discovery {
    peers: watch::Receiver<BTreeMap<String, Peer>>,
    stats: Arc<Mutex<DiscoveryStats>>,
    formed: Arc<AtomicBool>,
    keys: ClusterKeys,
    member: String,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery {
    /// Binds the discovery socket on the configured (or default) interface and starts
    /// announcing. Must be called within a tokio runtime.
    pub fn start(config: DiscoveryConfig) -> Result<Discovery, DiscoveryError> {
        config.validate()?;
        let interface = match &config.interface {
            Some(i) => i.clone(),
            None => default_interface()?,
        };
        let socket = bind_socket(&interface, config.group, config.port)?;
        info!(
            "cluster discovery for {:?} on {interface}, group {}:{}",
            config.cluster, config.group, config.port
        );
        Discovery::from_socket(config, socket)
    }

    /// Starts with a socket already bound by [`bind_socket`] (possibly in another network
    /// namespace); announcements go to `config.group:config.port`. Must be called within a
    /// tokio runtime.
    pub fn from_socket(
        config: DiscoveryConfig,
        socket: StdUdpSocket,
    ) -> Result<Discovery, DiscoveryError> {
        config.validate()?;
        let socket_error = |what, source| DiscoveryError::Socket {
            interface: config.interface.clone().unwrap_or_default(),
            what,
            source,
        };
        socket
            .set_nonblocking(true)
            .map_err(|e| socket_error("set non-blocking", e))?;
        let socket = UdpSocket::from_std(socket).map_err(|e| socket_error("register", e))?;
        let keys = ClusterKeys::derive(&config.cluster, &config.secret);
        let mut boot_nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut boot_nonce);
        let (tx, rx) = watch::channel(BTreeMap::new());
        let stats = Arc::new(Mutex::new(DiscoveryStats::default()));
        let formed = Arc::new(AtomicBool::new(false));
        let announcement = Announcement {
            cluster: config.cluster.clone(),
            member: config.member.clone(),
            api_address: config.api_address,
            fingerprint: config.fingerprint.to_ascii_lowercase(),
            boot_nonce,
            seq: 0,
            formed: false,
        };
        let run = Run {
            socket,
            destination: SocketAddrV4::new(config.group, config.port).into(),
            table: PeerTable::new(keys.clone(), config.member.clone(), boot_nonce),
            announcement,
            keys: keys.clone(),
            peer_timeout: config.peer_timeout,
            peers: tx,
            stats: stats.clone(),
            formed: formed.clone(),
        };
        Ok(Discovery {
            peers: rx,
            stats,
            formed,
            keys,
            member: config.member,
            started: Instant::now(),
            task: tokio::spawn(run.run()),
        })
    }

    /// The members of this cluster seen recently (not this one), by name. Woken when a
    /// member appears, disappears or changes; `last_seen` is refreshed without waking.
    pub fn peers(&self) -> watch::Receiver<BTreeMap<String, Peer>> {
        self.peers.clone()
    }

    /// The keys of this cluster, for join proofs.
    pub fn keys(&self) -> &ClusterKeys {
        &self.keys
    }

    /// Announce from now on that this member belongs to a formed cluster (it founded or
    /// joined one), so that late members join instead of founding another.
    pub fn set_formed(&self, formed: bool) {
        self.formed.store(formed, Ordering::Relaxed);
    }

    /// Time since discovery started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// [`decide`] over the peers seen so far.
    pub fn decide(&self, founders: u32, timeout: Duration) -> Decision {
        decide(
            &self.peers.borrow(),
            &self.member,
            founders,
            self.elapsed(),
            timeout,
        )
    }

    /// What was received and dropped so far.
    pub fn stats(&self) -> DiscoveryStats {
        // A poisoned lock only means a panic elsewhere mid-update of plain counters.
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The announcing and receiving task.
struct Run {
    socket: UdpSocket,
    destination: SocketAddr,
    table: PeerTable,
    announcement: Announcement,
    keys: ClusterKeys,
    peer_timeout: Duration,
    peers: watch::Sender<BTreeMap<String, Peer>>,
    stats: Arc<Mutex<DiscoveryStats>>,
    formed: Arc<AtomicBool>,
}

impl Run {
    async fn run(mut self) {
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut next = Instant::now();
        let mut send_errors: u64 = 0;
        let mut send_logged: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    if let Err(e) = self.announce().await {
                        // Typically no address yet (DHCP pending) or the link is down:
                        // keep trying, log once a minute.
                        if send_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            warn!("sending cluster announcement to {}: {e}", self.destination);
                            send_logged = Some(Instant::now());
                        }
                        send_errors += 1;
                    }
                    self.table.expire(Instant::now().into_std(), self.peer_timeout);
                    self.publish(send_errors);
                    next = Instant::now()
                        + Duration::from_millis(rand::thread_rng().gen_range(INTERVAL_MS));
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let packet = buf.get(..n).unwrap_or_default();
                        self.table.receive(packet, from, Instant::now().into_std());
                        self.publish(send_errors);
                    }
                    Err(e) => {
                        debug!("receiving cluster announcements: {e}");
                        // Do not spin on a persistent error.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    async fn announce(&mut self) -> io::Result<()> {
        self.announcement.seq += 1;
        self.announcement.formed = self.formed.load(Ordering::Relaxed);
        let packet = self
            .announcement
            .seal(&self.keys)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.socket.send_to(&packet, self.destination).await?;
        Ok(())
    }

    fn publish(&mut self, send_errors: u64) {
        let table = self.table.peers();
        self.peers.send_if_modified(|current| {
            let changed = table::differ(current, table);
            // Refresh last_seen either way; wake watchers only for real changes.
            current.clone_from(table);
            changed
        });
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        *stats = DiscoveryStats {
            send_errors,
            ..self.table.stats
        };
    }
}

/// The first interface (by index) that is up, multicast-capable and not loopback.
pub fn default_interface() -> Result<String, DiscoveryError> {
    use nix::net::if_::InterfaceFlags as F;
    let mut best: Option<(u32, String)> = None;
    for ifa in nix::ifaddrs::getifaddrs().map_err(DiscoveryError::ListInterfaces)? {
        let f = ifa.flags;
        if !f.contains(F::IFF_UP) || !f.contains(F::IFF_MULTICAST) || f.contains(F::IFF_LOOPBACK) {
            continue;
        }
        let Ok(index) = nix::net::if_::if_nametoindex(ifa.interface_name.as_str()) else {
            continue;
        };
        match &best {
            Some((i, _)) if *i <= index => {}
            _ => best = Some((index, ifa.interface_name)),
        }
    }
    best.map(|(_, name)| name)
        .ok_or(DiscoveryError::NoInterface)
}

/// A UDP socket for discovery on `interface`, in the calling thread's network namespace:
/// bound to `group:port` (only datagrams to the group) and to the interface, member of the
/// group there, sending through it with TTL 1 and no loopback. Non-blocking.
pub fn bind_socket(
    interface: &str,
    group: Ipv4Addr,
    port: u16,
) -> Result<StdUdpSocket, DiscoveryError> {
    let err = |what: &'static str| {
        move |source: io::Error| DiscoveryError::Socket {
            interface: interface.to_string(),
            what,
            source,
        }
    };
    if !group.is_multicast() {
        return Err(DiscoveryError::Config(format!("{group} is not multicast")));
    }
    let index =
        nix::net::if_::if_nametoindex(interface).map_err(|source| DiscoveryError::Interface {
            interface: interface.to_string(),
            source,
        })?;
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("create"))?;
    // A restarted daemon can bind while the old socket lingers.
    s.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
    s.bind_device(Some(interface.as_bytes()))
        .map_err(err("SO_BINDTODEVICE"))?;
    s.bind(&SocketAddrV4::new(group, port).into())
        .map_err(err("bind"))?;
    s.join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(index))
        .map_err(err("join group"))?;
    // Linux otherwise also delivers groups joined by other sockets on this port.
    s.set_multicast_all_v4(false)
        .map_err(err("IP_MULTICAST_ALL"))?;
    set_multicast_if_index(&s, index).map_err(err("IP_MULTICAST_IF"))?;
    s.set_multicast_ttl_v4(1).map_err(err("IP_MULTICAST_TTL"))?;
    s.set_multicast_loop_v4(false)
        .map_err(err("IP_MULTICAST_LOOP"))?;
    s.set_nonblocking(true).map_err(err("set non-blocking"))?;
    Ok(s.into())
}

/// `IP_MULTICAST_IF` by interface index (`ip_mreqn`): socket2 only takes an address, and
/// the interface may have none yet when discovery starts.
fn set_multicast_if_index(s: &Socket, index: u32) -> io::Result<()> {
    let mreqn = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr { s_addr: 0 },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: i32::try_from(index)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?,
    };
    // SAFETY: a valid fd, a pointer to a live ip_mreqn and its exact size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&mreqn as *const libc::ip_mreqn).cast(),
            std::mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DiscoveryConfig {
        DiscoveryConfig::new(
            "rack1",
            "0123456789abcdef",
            "n1",
            "10.0.0.1:8443".parse().unwrap(),
            &"ab".repeat(32),
        )
    }

    #[test]
    fn config_is_validated_and_secret_not_printed() {
        assert!(config().validate().is_ok());
        assert!(!format!("{:?}", config()).contains("0123456789abcdef"));
        let mut c = config();
        c.secret = "short".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.api_address = "0.0.0.0:8443".parse().unwrap();
        assert!(c.validate().is_err());
        let mut c = config();
        c.member = "a b".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.fingerprint = "xyz".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.group = Ipv4Addr::new(10, 0, 0, 1);
        assert!(c.validate().is_err());
    }

    #[test]
    fn bind_socket_refuses_unknown_interface() {
        let e = bind_socket("nosuchif0", DEFAULT_GROUP, 0).unwrap_err();
        assert!(e.to_string().contains("nosuchif0"), "{e}");
    }
}
