//! The DHCP client's states (RFC 2131 §4.4), without I/O: messages and timeouts go in,
//! what to send and what to configure come out. Time is passed in, so every transition is
//! tested with no network and no clock.

use super::message::{opt, Kind, Message, BOOTREPLY, FLAG_BROADCAST};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The options asked for: mask, router, DNS, domain, MTU, broadcast, lease and renewal
/// times, server id, classless routes.
const PARAMETERS: [u8; 11] = [
    opt::SUBNET_MASK,
    opt::ROUTER,
    opt::DNS_SERVERS,
    opt::DOMAIN_NAME,
    opt::MTU,
    opt::BROADCAST,
    opt::LEASE_TIME,
    opt::SERVER_ID,
    opt::RENEWAL_TIME,
    opt::REBINDING_TIME,
    opt::CLASSLESS_ROUTES,
];
/// The first retransmission comes after this, then twice as long each time up to
/// [`MAX_RETRY`] (RFC 2131 asks for 4 s first; an appliance booting wants its address
/// sooner, and a lost packet on a quiet link is rare).
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(32);
/// REQUESTs sent for one offer before starting over with a DISCOVER.
const REQUEST_TRIES: u32 = 4;
/// A lease without a lease time (the server must send one) is taken for an hour.
const DEFAULT_LEASE: u32 = 3600;
const INFINITE: u32 = u32::MAX;

/// An address the server gave, as long as it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub server: Ipv4Addr,
    /// The ACK as the server sent it: routes, DNS and MTU are read from it.
    pub ack: Message,
    pub obtained: Instant,
    pub renew_at: Option<Instant>,
    pub rebind_at: Option<Instant>,
    /// None for an infinite lease.
    pub expires_at: Option<Instant>,
}

impl Lease {
    /// Seconds the address stays valid from `now` (None: forever), for the kernel's
    /// address lifetime.
    pub fn remaining_s(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|e| {
            e.saturating_duration_since(now)
                .as_secs()
                .min(u64::from(u32::MAX - 1)) as u32
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send to 255.255.255.255:67 on the NIC.
    Broadcast(Message),
    /// Send to the server, port 67 (renewal: the client has its address).
    Unicast(Ipv4Addr, Message),
    /// Put the lease's address, routes and MTU on the NIC (also after a renewal).
    Configure(Lease),
    /// The lease ended or was refused: take its address off the NIC.
    Deconfigure(Lease),
}

#[derive(Debug, Clone)]
enum State {
    Selecting,
    Requesting { offer: Message, tries: u32 },
    Bound(Lease),
    Renewing(Lease),
    Rebinding(Lease),
}

pub struct Client {
    mac: [u8; 6],
    hostname: Option<String>,
    state: State,
    xid: u32,
    rng: u64,
    deadline: Instant,
    retry: Duration,
    started: Instant,
}

impl Client {
    /// `seed` makes the transaction ids (any value; from the kernel's random pool in use).
    pub fn new(mac: [u8; 6], hostname: Option<String>, seed: u64, now: Instant) -> Client {
        Client {
            mac,
            hostname,
            state: State::Selecting,
            xid: 0,
            rng: seed | 1,
            deadline: now,
            retry: FIRST_RETRY,
            started: now,
        }
    }

    /// When [`Client::on_timeout`] is due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound(l) | State::Renewing(l) | State::Rebinding(l) => Some(l),
            _ => None,
        }
    }

    /// Starts over from nothing: a DISCOVER.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.state = State::Selecting;
        self.xid = self.next_xid();
        self.started = now;
        self.retry = FIRST_RETRY;
        self.deadline = now + self.retry;
        vec![Action::Broadcast(self.discover(now))]
    }

    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        if now < self.deadline {
            return Vec::new();
        }
        match self.state.clone() {
            State::Selecting => {
                self.backoff(now);
                vec![Action::Broadcast(self.discover(now))]
            }
            State::Requesting { offer, tries } => {
                if tries >= REQUEST_TRIES {
                    return self.start(now);
                }
                self.state = State::Requesting {
                    offer: offer.clone(),
                    tries: tries + 1,
                };
                self.backoff(now);
                vec![Action::Broadcast(self.select(&offer, now))]
            }
            State::Bound(lease) => {
                self.xid = self.next_xid();
                self.state = State::Renewing(lease.clone());
                self.renewal_step(&lease, now)
            }
            State::Renewing(lease) | State::Rebinding(lease) => {
                if lease.expires_at.is_some_and(|e| now >= e) {
                    let mut out = vec![Action::Deconfigure(lease)];
                    out.extend(self.start(now));
                    return out;
                }
                if matches!(self.state, State::Renewing(_))
                    && lease.rebind_at.is_some_and(|r| now >= r)
                {
                    self.state = State::Rebinding(lease.clone());
                }
                self.renewal_step(&lease, now)
            }
        }
    }

    pub fn on_message(&mut self, m: &Message, now: Instant) -> Vec<Action> {
        if m.op != BOOTREPLY || m.xid != self.xid || m.chaddr != self.mac {
            return Vec::new();
        }
        match (self.state.clone(), m.kind()) {
            (State::Selecting, Some(Kind::Offer)) if m.server_id().is_some() => {
                self.state = State::Requesting {
                    offer: m.clone(),
                    tries: 1,
                };
                self.retry = FIRST_RETRY;
                self.deadline = now + self.retry;
                vec![Action::Broadcast(self.select(m, now))]
            }
            (State::Requesting { offer, .. }, Some(Kind::Ack)) => {
                self.bind(m, offer.server_id(), now)
            }
            (State::Renewing(l) | State::Rebinding(l), Some(Kind::Ack)) => {
                let mut out = Vec::new();
                if m.yiaddr != l.address {
                    out.push(Action::Deconfigure(l.clone()));
                }
                out.extend(self.bind(m, m.server_id().or(Some(l.server)), now));
                out
            }
            (State::Requesting { .. }, Some(Kind::Nak)) => self.start(now),
            (State::Renewing(l) | State::Rebinding(l), Some(Kind::Nak)) => {
                let mut out = vec![Action::Deconfigure(l)];
                out.extend(self.start(now));
                out
            }
            _ => Vec::new(),
        }
    }

    fn bind(&mut self, ack: &Message, server: Option<Ipv4Addr>, now: Instant) -> Vec<Action> {
        let Some(server) = ack.server_id().or(server) else {
            return Vec::new();
        };
        if ack.yiaddr.is_unspecified() {
            return Vec::new();
        }
        let lease_s = ack.lease_time().unwrap_or(DEFAULT_LEASE);
        let (renew_at, rebind_at, expires_at) = if lease_s == INFINITE {
            (None, None, None)
        } else {
            let lease = u64::from(lease_s);
            let t2 = ack
                .rebinding_time()
                .map(u64::from)
                .filter(|t| *t < lease)
                .unwrap_or(lease * 7 / 8);
            let t1 = ack
                .renewal_time()
                .map(u64::from)
                .filter(|t| *t < t2)
                .unwrap_or(lease / 2)
                .min(t2);
            let at = |s: u64| Some(now + Duration::from_secs(s));
            (at(t1), at(t2), at(lease))
        };
        let lease = Lease {
            address: ack.yiaddr,
            prefix: ack.prefix().unwrap_or_else(|| classful_prefix(ack.yiaddr)),
            server,
            ack: ack.clone(),
            obtained: now,
            renew_at,
            rebind_at,
            expires_at,
        };
        self.deadline = renew_at.unwrap_or(now + Duration::from_secs(u64::from(u32::MAX)));
        self.state = State::Bound(lease.clone());
        vec![Action::Configure(lease)]
    }

    /// One try to extend the lease: unicast to its server while renewing, broadcast once
    /// rebinding; the next try halfway to the next deadline (at least a minute apart).
    fn renewal_step(&mut self, lease: &Lease, now: Instant) -> Vec<Action> {
        let rebinding = matches!(self.state, State::Rebinding(_));
        let limit = if rebinding {
            lease.expires_at
        } else {
            lease.rebind_at
        }
        .unwrap_or(now + MAX_RETRY);
        let half = limit.saturating_duration_since(now) / 2;
        self.deadline = (now + half.max(Duration::from_secs(60))).min(limit);
        if self.deadline <= now {
            self.deadline = now + Duration::from_secs(1);
        }
        let mut m = self.base(Kind::Request, now);
        m.ciaddr = lease.address;
        if rebinding {
            vec![Action::Broadcast(m)]
        } else {
            vec![Action::Unicast(lease.server, m)]
        }
    }

    fn backoff(&mut self, now: Instant) {
        self.retry = (self.retry * 2).min(MAX_RETRY);
        self.deadline = now + self.retry;
    }

    fn base(&self, kind: Kind, now: Instant) -> Message {
        let mut m = Message::request(kind, self.xid, self.mac);
        m.secs = now
            .saturating_duration_since(self.started)
            .as_secs()
            .min(u64::from(u16::MAX)) as u16;
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(&self.mac);
        m.push(opt::CLIENT_ID, client_id);
        m.push(opt::MAX_SIZE, 1500u16.to_be_bytes().to_vec());
        if let Some(h) = &self.hostname {
            m.push(opt::HOSTNAME, h.as_bytes().to_vec());
        }
        m.push(opt::PARAMETERS, PARAMETERS.to_vec());
        m
    }

    fn discover(&self, now: Instant) -> Message {
        let mut m = self.base(Kind::Discover, now);
        m.flags = FLAG_BROADCAST;
        m
    }

    /// The REQUEST that takes an offer (SELECTING state: broadcast, naming the server).
    fn select(&self, offer: &Message, now: Instant) -> Message {
        let mut m = self.base(Kind::Request, now);
        m.flags = FLAG_BROADCAST;
        m.push(opt::REQUESTED_IP, offer.yiaddr.octets().to_vec());
        if let Some(s) = offer.server_id() {
            m.push(opt::SERVER_ID, s.octets().to_vec());
        }
        m
    }

    fn next_xid(&mut self) -> u32 {
        // xorshift64*: transaction ids only need to differ from other clients'.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
}

/// The prefix of an address's class, for a server that sends no mask.
fn classful_prefix(a: Ipv4Addr) -> u8 {
    match a.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0, 1];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const MINE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    fn sent(actions: &[Action]) -> &Message {
        match actions.last() {
            Some(Action::Broadcast(m)) | Some(Action::Unicast(_, m)) => m,
            other => panic!("nothing sent: {other:?}"),
        }
    }

    fn reply(to: &Message, kind: Kind, lease_s: u32) -> Message {
        let mut m = Message::request(kind, to.xid, MAC);
        m.op = BOOTREPLY;
        m.yiaddr = MINE;
        m.push(opt::SERVER_ID, SERVER.octets().to_vec());
        m.push(opt::SUBNET_MASK, vec![255, 255, 255, 0]);
        m.push(opt::LEASE_TIME, lease_s.to_be_bytes().to_vec());
        m
    }

    fn bound(lease_s: u32) -> (Client, Instant) {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, Some("node1".into()), 42, t0);
        let d = c.start(t0);
        let discover = sent(&d).clone();
        assert_eq!(discover.kind(), Some(Kind::Discover));
        assert_eq!(discover.flags, FLAG_BROADCAST);
        assert_eq!(
            discover.option(opt::HOSTNAME).as_deref(),
            Some(&b"node1"[..])
        );
        let r = c.on_message(&reply(&discover, Kind::Offer, lease_s), t0);
        let request = sent(&r).clone();
        assert_eq!(request.kind(), Some(Kind::Request));
        assert_eq!(
            request.option(opt::REQUESTED_IP),
            Some(MINE.octets().to_vec())
        );
        assert_eq!(
            request.option(opt::SERVER_ID),
            Some(SERVER.octets().to_vec())
        );
        let a = c.on_message(&reply(&request, Kind::Ack, lease_s), t0);
        match &a[..] {
            [Action::Configure(l)] => {
                assert_eq!((l.address, l.prefix, l.server), (MINE, 24, SERVER));
            }
            other => panic!("{other:?}"),
        }
        (c, t0)
    }

    #[test]
    fn discover_offer_request_ack_binds_the_address() {
        let (c, t0) = bound(86400);
        let l = c.lease().unwrap();
        assert_eq!(l.renew_at, Some(t0 + Duration::from_secs(43200)));
        assert_eq!(l.rebind_at, Some(t0 + Duration::from_secs(75600)));
        assert_eq!(l.remaining_s(t0), Some(86400));
        assert_eq!(c.deadline(), t0 + Duration::from_secs(43200));
    }

    #[test]
    fn replies_to_others_are_ignored_and_lost_packets_are_sent_again() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, None, 7, t0);
        let discover = sent(&c.start(t0)).clone();
        let mut other = reply(&discover, Kind::Offer, 600);
        other.xid ^= 1;
        assert!(c.on_message(&other, t0).is_empty());
        let mut other = reply(&discover, Kind::Offer, 600);
        other.chaddr[5] ^= 1;
        assert!(c.on_message(&other, t0).is_empty());
        // No answer: DISCOVER again after 1 s, then 2 s, 4 s …
        assert!(c.on_timeout(t0).is_empty(), "not due");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(sent(&c.on_timeout(t1)).kind(), Some(Kind::Discover));
        assert_eq!(c.deadline(), t1 + Duration::from_secs(2));
        // An offer, then REQUESTs that get no answer: back to DISCOVER after four.
        let request = sent(&c.on_message(&reply(&discover, Kind::Offer, 600), t1)).clone();
        for _ in 1..REQUEST_TRIES {
            let t = c.deadline();
            assert_eq!(sent(&c.on_timeout(t)).xid, request.xid);
        }
        let t = c.deadline();
        assert_eq!(sent(&c.on_timeout(t)).kind(), Some(Kind::Discover));
    }

    #[test]
    fn renews_by_unicast_then_rebinds_by_broadcast_then_gives_the_address_up() {
        let (mut c, t0) = bound(1000);
        let t1 = t0 + Duration::from_secs(500);
        let renew = c.on_timeout(t1);
        match &renew[..] {
            [Action::Unicast(s, m)] => {
                assert_eq!(*s, SERVER);
                assert_eq!(m.ciaddr, MINE);
                assert_eq!(m.option(opt::REQUESTED_IP), None);
            }
            other => panic!("{other:?}"),
        }
        // No answer until T2 (875 s): a broadcast REQUEST.
        let mut t;
        loop {
            t = c.deadline();
            let a = c.on_timeout(t);
            if let [Action::Broadcast(m)] = &a[..] {
                assert_eq!(m.ciaddr, MINE);
                break;
            }
            assert!(t < t0 + Duration::from_secs(875), "never rebinding");
        }
        assert!(t >= t0 + Duration::from_secs(875));
        // Nobody answers before the lease ends: the address goes, and it starts over.
        while !c
            .on_timeout(c.deadline())
            .iter()
            .any(|a| matches!(a, Action::Deconfigure(_)))
        {
            assert!(c.deadline() <= t0 + Duration::from_secs(1000));
        }
        assert!(c.lease().is_none());
    }

    #[test]
    fn a_renewal_ack_extends_the_lease_and_a_nak_ends_it() {
        let (mut c, t0) = bound(1000);
        let t1 = t0 + Duration::from_secs(500);
        let req = sent(&c.on_timeout(t1)).clone();
        let a = c.on_message(&reply(&req, Kind::Ack, 1000), t1);
        match &a[..] {
            [Action::Configure(l)] => assert_eq!(l.remaining_s(t1), Some(1000)),
            other => panic!("{other:?}"),
        }
        let t2 = t1 + Duration::from_secs(500);
        let req = sent(&c.on_timeout(t2)).clone();
        let a = c.on_message(&reply(&req, Kind::Nak, 0), t2);
        assert!(matches!(&a[0], Action::Deconfigure(l) if l.address == MINE));
        assert!(matches!(&a[1], Action::Broadcast(m) if m.kind() == Some(Kind::Discover)));
    }

    #[test]
    fn odd_server_timers_and_infinite_leases() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, None, 9, t0);
        let discover = sent(&c.start(t0)).clone();
        let req = sent(&c.on_message(&reply(&discover, Kind::Offer, 100), t0)).clone();
        // T1 past T2 and T2 past the lease are ignored for the defaults.
        let mut ack = reply(&req, Kind::Ack, 100);
        ack.push(opt::RENEWAL_TIME, 200u32.to_be_bytes().to_vec());
        ack.push(opt::REBINDING_TIME, 300u32.to_be_bytes().to_vec());
        c.on_message(&ack, t0);
        let l = c.lease().unwrap();
        assert_eq!(l.renew_at, Some(t0 + Duration::from_secs(50)));
        assert_eq!(l.rebind_at, Some(t0 + Duration::from_secs(87)));

        let mut c = Client::new(MAC, None, 9, t0);
        let discover = sent(&c.start(t0)).clone();
        let req = sent(&c.on_message(&reply(&discover, Kind::Offer, INFINITE), t0)).clone();
        c.on_message(&reply(&req, Kind::Ack, INFINITE), t0);
        let l = c.lease().unwrap();
        assert_eq!(
            (l.renew_at, l.expires_at, l.remaining_s(t0)),
            (None, None, None)
        );
        assert!(c
            .on_timeout(t0 + Duration::from_secs(86400 * 365))
            .is_empty());
    }
}
