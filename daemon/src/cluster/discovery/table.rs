//! The receiving side, without I/O: turns packets into the table of peers seen, dropping
//! everything that is not a fresh, authentic announcement of this cluster. Every map here
//! is bounded, so hostile traffic cannot grow memory: only authenticated announcements
//! create peer or replay entries, and the log limiter forgets old sources.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::keys::ClusterKeys;
use super::wire::{Announcement, WireError};

/// How many members the table (and the replay cache) tracks at most. Incus clusters are far
/// smaller; past this an authenticated but unknown member is dropped.
pub const MAX_MEMBERS: usize = 1024;
/// Retired boot nonces remembered per member.
const RETIRED_BOOTS: usize = 8;
/// One log line per source and kind of problem per this long.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Sources remembered by the log limiter.
const LOG_SOURCES: usize = 1024;

/// A member seen on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Where its HTTPS API listens ("ip:port").
    pub api_address: SocketAddr,
    /// SHA-256 of its server certificate, lowercase hex.
    pub fingerprint: String,
    /// It already belongs to a formed cluster and takes joins.
    pub formed: bool,
    /// When its latest announcement arrived.
    pub last_seen: Instant,
    /// The address its announcements come from.
    pub source: SocketAddr,
}

impl Peer {
    /// Equal but for the times: what watchers of the table are woken for.
    fn same_as(&self, o: &Peer) -> bool {
        self.name == o.name
            && self.api_address == o.api_address
            && self.fingerprint == o.fingerprint
            && self.formed == o.formed
            && self.source == o.source
    }
}

/// True if two tables differ in more than the last-seen times.
pub(crate) fn differ(a: &BTreeMap<String, Peer>, b: &BTreeMap<String, Peer>) -> bool {
    a.len() != b.len() || a.values().zip(b.values()).any(|(x, y)| !x.same_as(y))
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// Not a well-formed version-1 announcement (or too large).
    Malformed,
    /// A well-formed announcement of another cluster.
    OtherCluster,
    /// The tag does not verify: another secret (or tampering).
    WrongSecret,
    /// A sequence number not above the last one of the same boot.
    Replayed,
    /// From a boot of the member that a newer boot replaced.
    StaleBoot,
    /// Another process announces our own member name.
    NameConflict,
    /// The table is full.
    TooManyMembers,
}

/// What became of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Our own announcement, looped back.
    Own,
    Dropped(Dropped),
}

/// Counters of what was received, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    pub accepted: u64,
    pub malformed: u64,
    pub other_cluster: u64,
    pub wrong_secret: u64,
    pub replayed: u64,
    pub stale_boot: u64,
    pub name_conflict: u64,
    pub too_many_members: u64,
    pub send_errors: u64,
}

/// The boots of one member seen so far.
#[derive(Debug)]
struct Boots {
    current: [u8; 16],
    last_seq: u64,
    retired: VecDeque<[u8; 16]>,
    last_seen: Instant,
}

/// Per member, the current boot nonce with its last sequence number, and the boots it
/// replaced: an announcement is fresh only if it is of the current boot with a higher
/// sequence number, or of a boot never seen (a restart). Replays of older boots that are
/// still remembered are refused; without synchronized clocks older ones cannot be told
/// from a restart, and they only repeat what that member once said.
#[derive(Debug, Default)]
struct ReplayCache {
    members: HashMap<String, Boots>,
}

impl ReplayCache {
    fn check(&mut self, a: &Announcement, now: Instant) -> Result<(), Dropped> {
        if let Some(b) = self.members.get_mut(&a.member) {
            if b.current == a.boot_nonce {
                if a.seq <= b.last_seq {
                    return Err(Dropped::Replayed);
                }
            } else if b.retired.contains(&a.boot_nonce) {
                return Err(Dropped::StaleBoot);
            } else {
                if b.retired.len() >= RETIRED_BOOTS {
                    b.retired.pop_front();
                }
                b.retired.push_back(b.current);
                b.current = a.boot_nonce;
            }
            b.last_seq = a.seq;
            b.last_seen = now;
            return Ok(());
        }
        if self.members.len() >= MAX_MEMBERS {
            // Forget the member heard from least recently; only authenticated members
            // get here, so this takes a misbehaving secret holder.
            let oldest = self
                .members
                .iter()
                .min_by_key(|(_, b)| b.last_seen)
                .map(|(n, _)| n.clone());
            if let Some(n) = oldest {
                self.members.remove(&n);
            }
        }
        self.members.insert(
            a.member.clone(),
            Boots {
                current: a.boot_nonce,
                last_seq: a.seq,
                retired: VecDeque::new(),
                last_seen: now,
            },
        );
        Ok(())
    }
}

/// Allows one log line per (source, kind) per minute.
#[derive(Debug, Default)]
struct LogLimiter {
    last: HashMap<(IpAddr, Dropped), Instant>,
}

impl LogLimiter {
    fn allow(&mut self, source: IpAddr, kind: Dropped, now: Instant) -> bool {
        if let Some(t) = self.last.get(&(source, kind)) {
            if now.duration_since(*t) < LOG_EVERY {
                return false;
            }
        } else if self.last.len() >= LOG_SOURCES {
            self.last.retain(|_, t| now.duration_since(*t) < LOG_EVERY);
            if self.last.len() >= LOG_SOURCES {
                return false;
            }
        }
        self.last.insert((source, kind), now);
        true
    }
}

/// The peers of this cluster seen on the network.
#[derive(Debug)]
pub(crate) struct PeerTable {
    keys: ClusterKeys,
    me: String,
    my_boot: [u8; 16],
    peers: BTreeMap<String, Peer>,
    replay: ReplayCache,
    log: LogLimiter,
    pub(crate) stats: DiscoveryStats,
}

impl PeerTable {
    pub(crate) fn new(keys: ClusterKeys, me: String, my_boot: [u8; 16]) -> PeerTable {
        PeerTable {
            keys,
            me,
            my_boot,
            peers: BTreeMap::new(),
            replay: ReplayCache::default(),
            log: LogLimiter::default(),
            stats: DiscoveryStats::default(),
        }
    }

    pub(crate) fn peers(&self) -> &BTreeMap<String, Peer> {
        &self.peers
    }

    /// Handles one received packet.
    pub(crate) fn receive(&mut self, packet: &[u8], from: SocketAddr, now: Instant) -> Verdict {
        let verdict = self.judge(packet, from, now);
        if let Verdict::Dropped(d) = verdict {
            let s = &mut self.stats;
            match d {
                Dropped::Malformed => s.malformed += 1,
                Dropped::OtherCluster => s.other_cluster += 1,
                Dropped::WrongSecret => s.wrong_secret += 1,
                Dropped::Replayed => s.replayed += 1,
                Dropped::StaleBoot => s.stale_boot += 1,
                Dropped::NameConflict => s.name_conflict += 1,
                Dropped::TooManyMembers => s.too_many_members += 1,
            }
        } else if verdict == Verdict::Accepted {
            self.stats.accepted += 1;
        }
        verdict
    }

    fn judge(&mut self, packet: &[u8], from: SocketAddr, now: Instant) -> Verdict {
        let a = match Announcement::open(packet, &self.keys) {
            Ok(a) => a,
            Err(WireError::BadTag { member }) => {
                if self.log.allow(from.ip(), Dropped::WrongSecret, now) {
                    warn!(
                        "ignoring announcement from {from} (member {member:?}): \
                         wrong cluster secret"
                    );
                }
                return Verdict::Dropped(Dropped::WrongSecret);
            }
            Err(WireError::OtherCluster(cluster)) => {
                if self.log.allow(from.ip(), Dropped::OtherCluster, now) {
                    debug!("ignoring announcement from {from}: cluster {cluster:?}");
                }
                return Verdict::Dropped(Dropped::OtherCluster);
            }
            Err(e) => {
                if self.log.allow(from.ip(), Dropped::Malformed, now) {
                    debug!("ignoring packet from {from}: {e}");
                }
                return Verdict::Dropped(Dropped::Malformed);
            }
        };
        if a.member == self.me {
            if a.boot_nonce == self.my_boot {
                return Verdict::Own;
            }
            if self.log.allow(from.ip(), Dropped::NameConflict, now) {
                warn!(
                    "another member announces our name {:?} from {from}: duplicate name \
                     (or a replay); ignoring it",
                    self.me
                );
            }
            return Verdict::Dropped(Dropped::NameConflict);
        }
        if !self.peers.contains_key(&a.member) && self.peers.len() >= MAX_MEMBERS {
            return Verdict::Dropped(Dropped::TooManyMembers);
        }
        if let Err(d) = self.replay.check(&a, now) {
            if d == Dropped::StaleBoot && self.log.allow(from.ip(), d, now) {
                warn!(
                    "announcement of {:?} from {from} is from a replaced boot: two members \
                     with the same name, or a replay; ignoring it",
                    a.member
                );
            } else if self.log.allow(from.ip(), d, now) {
                debug!(
                    "ignoring replayed announcement of {:?} from {from}",
                    a.member
                );
            }
            return Verdict::Dropped(d);
        }
        let peer = Peer {
            name: a.member.clone(),
            api_address: a.api_address,
            fingerprint: a.fingerprint,
            formed: a.formed,
            last_seen: now,
            source: from,
        };
        match self.peers.get(&a.member) {
            Some(old) if old.same_as(&peer) => {}
            Some(_) => debug!("member {:?} changed: {peer:?}", a.member),
            None => debug!(
                "discovered member {:?} at {} (from {from})",
                a.member, a.api_address
            ),
        }
        self.peers.insert(a.member, peer);
        Verdict::Accepted
    }

    /// Forgets peers not heard from for `ttl`.
    pub(crate) fn expire(&mut self, now: Instant, ttl: Duration) {
        self.peers.retain(|name, p| {
            let live = now.duration_since(p.last_seen) < ttl;
            if !live {
                debug!("member {name:?} not heard from for {ttl:?}; forgetting it");
            }
            live
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::tests::{announcement, keys};
    use super::*;

    const FROM: &str = "10.213.7.2:8444";

    fn table() -> PeerTable {
        PeerTable::new(keys(), "me".into(), [1; 16])
    }

    fn packet(member: &str, boot: u8, seq: u64) -> Vec<u8> {
        let mut a = announcement(member, seq);
        a.boot_nonce = [boot; 16];
        a.seal(&keys()).unwrap()
    }

    #[test]
    fn accepts_fresh_and_rejects_replayed_sequence_numbers() {
        let mut t = table();
        let now = Instant::now();
        let from = FROM.parse().unwrap();
        assert_eq!(t.receive(&packet("n2", 2, 5), from, now), Verdict::Accepted);
        assert_eq!(t.peers()["n2"].api_address.to_string(), "10.213.7.1:8443");
        for seq in [5, 4, 0] {
            assert_eq!(
                t.receive(&packet("n2", 2, seq), from, now),
                Verdict::Dropped(Dropped::Replayed),
                "seq {seq}"
            );
        }
        assert_eq!(t.receive(&packet("n2", 2, 6), from, now), Verdict::Accepted);
        // A restart: a new boot nonce starts a new sequence.
        assert_eq!(t.receive(&packet("n2", 3, 1), from, now), Verdict::Accepted);
        // The replaced boot is now refused, even with a higher sequence number.
        assert_eq!(
            t.receive(&packet("n2", 2, 100), from, now),
            Verdict::Dropped(Dropped::StaleBoot)
        );
        assert_eq!(t.stats.accepted, 3);
        assert_eq!(t.stats.replayed, 3);
        assert_eq!(t.stats.stale_boot, 1);
    }

    #[test]
    fn drops_own_wrong_secret_other_cluster_and_garbage() {
        let mut t = table();
        let now = Instant::now();
        let from = FROM.parse().unwrap();
        let mut own = announcement("me", 1);
        own.boot_nonce = [1; 16];
        assert_eq!(
            t.receive(&own.seal(&keys()).unwrap(), from, now),
            Verdict::Own
        );
        assert_eq!(
            t.receive(&packet("me", 9, 1), from, now),
            Verdict::Dropped(Dropped::NameConflict)
        );
        let wrong = ClusterKeys::derive("rack1", "some other secret");
        let p = announcement("n3", 1).seal(&wrong).unwrap();
        assert_eq!(
            t.receive(&p, from, now),
            Verdict::Dropped(Dropped::WrongSecret)
        );
        let other = ClusterKeys::derive("rack2", "0123456789abcdef");
        let mut a = announcement("n3", 1);
        a.cluster = "rack2".into();
        assert_eq!(
            t.receive(&a.seal(&other).unwrap(), from, now),
            Verdict::Dropped(Dropped::OtherCluster)
        );
        assert_eq!(
            t.receive(b"hello", from, now),
            Verdict::Dropped(Dropped::Malformed)
        );
        assert_eq!(
            t.receive(&[0u8; 4096], from, now),
            Verdict::Dropped(Dropped::Malformed)
        );
        assert!(t.peers().is_empty());
    }

    #[test]
    fn peers_expire() {
        let mut t = table();
        let now = Instant::now();
        let from = FROM.parse().unwrap();
        t.receive(&packet("n2", 2, 1), from, now);
        t.receive(&packet("n3", 2, 1), from, now + Duration::from_secs(4));
        t.expire(now + Duration::from_secs(5), Duration::from_secs(5));
        assert_eq!(t.peers().keys().collect::<Vec<_>>(), ["n3"]);
    }

    #[test]
    fn maps_stay_bounded() {
        let mut t = table();
        let now = Instant::now();
        let from: SocketAddr = FROM.parse().unwrap();
        for i in 0..MAX_MEMBERS + 10 {
            t.receive(&packet(&format!("m{i}"), 2, 1), from, now);
        }
        assert_eq!(t.peers().len(), MAX_MEMBERS);
        assert!(t.replay.members.len() <= MAX_MEMBERS);
        assert_eq!(t.stats.too_many_members, 10);
        let mut l = LogLimiter::default();
        for i in 0..(LOG_SOURCES as u32 + 10) {
            let ip = IpAddr::from(i.to_be_bytes());
            l.allow(ip, Dropped::WrongSecret, now);
        }
        assert!(l.last.len() <= LOG_SOURCES);
    }

    #[test]
    fn log_limiter_allows_once_a_minute_per_source() {
        let mut l = LogLimiter::default();
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.allow(a, Dropped::WrongSecret, now));
        assert!(!l.allow(a, Dropped::WrongSecret, now + Duration::from_secs(59)));
        assert!(l.allow(b, Dropped::WrongSecret, now));
        assert!(l.allow(a, Dropped::Malformed, now));
        assert!(l.allow(a, Dropped::WrongSecret, now + Duration::from_secs(61)));
    }

    #[test]
    fn differ_ignores_last_seen_only() {
        let mut t = table();
        let now = Instant::now();
        let from = FROM.parse().unwrap();
        t.receive(&packet("n2", 2, 1), from, now);
        let before = t.peers().clone();
        t.receive(&packet("n2", 2, 2), from, now + Duration::from_secs(1));
        assert!(!differ(&before, t.peers()));
        let mut a = announcement("n2", 3);
        a.boot_nonce = [2; 16];
        a.formed = true;
        t.receive(&a.seal(&keys()).unwrap(), from, now);
        assert!(differ(&before, t.peers()));
    }
}
