//! DHCPv4 messages (RFC 2131, options from RFC 2132 and RFC 3442): the fixed BOOTP header,
//! the magic cookie and the options, encoded and decoded without trusting the peer —
//! every length is checked, and what does not parse is dropped, never a panic.

use std::net::Ipv4Addr;

const HEADER: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
pub const BOOTREQUEST: u8 = 1;
pub const BOOTREPLY: u8 = 2;
/// The "please broadcast your answer" flag: a client without an address cannot receive a
/// unicast before its address is configured.
pub const FLAG_BROADCAST: u16 = 0x8000;

pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS_SERVERS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const MTU: u8 = 26;
    pub const BROADCAST: u8 = 28;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETERS: u8 = 55;
    pub const MAX_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const CLASSLESS_ROUTES: u8 = 121;
    pub const END: u8 = 255;
}

/// Option 53.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Discover,
            2 => Kind::Offer,
            3 => Kind::Request,
            4 => Kind::Decline,
            5 => Kind::Ack,
            6 => Kind::Nak,
            7 => Kind::Release,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    /// In the order they came; a code may appear more than once (RFC 3396 concatenation).
    pub options: Vec<(u8, Vec<u8>)>,
}

/// A static route of option 121.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dest: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

impl Message {
    /// A client request from the NIC with MAC `mac`.
    pub fn request(kind: Kind, xid: u32, mac: [u8; 6]) -> Message {
        Message {
            op: BOOTREQUEST,
            xid,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: mac,
            options: vec![(opt::MESSAGE_TYPE, vec![kind as u8])],
        }
    }

    pub fn push(&mut self, code: u8, value: Vec<u8>) {
        self.options.push((code, value));
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER];
        b[0] = self.op;
        b[1] = 1; // Ethernet
        b[2] = 6;
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[8..10].copy_from_slice(&self.secs.to_be_bytes());
        b[10..12].copy_from_slice(&self.flags.to_be_bytes());
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[16..20].copy_from_slice(&self.yiaddr.octets());
        b[20..24].copy_from_slice(&self.siaddr.octets());
        b[24..28].copy_from_slice(&self.giaddr.octets());
        b[28..34].copy_from_slice(&self.chaddr);
        b.extend_from_slice(&MAGIC);
        for (code, value) in &self.options {
            // Longer values are split over several instances of the option (RFC 3396).
            for chunk in value.chunks(255) {
                b.push(*code);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
            if value.is_empty() {
                b.extend_from_slice(&[*code, 0]);
            }
        }
        b.push(opt::END);
        // The minimum BOOTP size some relays and servers insist on.
        if b.len() < 300 {
            b.resize(300, 0);
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Message> {
        if b.len() < HEADER + 4 || b[HEADER..HEADER + 4] != MAGIC || b[1] != 1 || b[2] != 6 {
            return None;
        }
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(&b[28..34]);
        let mut options = Vec::new();
        let mut at = HEADER + 4;
        while at < b.len() {
            let code = b[at];
            if code == opt::PAD {
                at += 1;
                continue;
            }
            if code == opt::END {
                break;
            }
            let len = *b.get(at + 1)? as usize;
            let value = b.get(at + 2..at + 2 + len)?;
            options.push((code, value.to_vec()));
            at += 2 + len;
        }
        Some(Message {
            op: b[0],
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            secs: u16::from_be_bytes([b[8], b[9]]),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: ip_at(b, 12),
            yiaddr: ip_at(b, 16),
            siaddr: ip_at(b, 20),
            giaddr: ip_at(b, 24),
            chaddr,
            options,
        })
    }

    /// The value of option `code`, its instances concatenated (RFC 3396).
    pub fn option(&self, code: u8) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for (c, v) in &self.options {
            if *c == code {
                out.get_or_insert_with(Vec::new).extend_from_slice(v);
            }
        }
        out
    }

    pub fn kind(&self) -> Option<Kind> {
        self.option(opt::MESSAGE_TYPE)
            .and_then(|v| v.first().copied())
            .and_then(Kind::from_u8)
    }

    fn ip_option(&self, code: u8) -> Option<Ipv4Addr> {
        self.option(code)
            .filter(|v| v.len() >= 4)
            .map(|v| ip_at(&v, 0))
    }

    fn ips_option(&self, code: u8) -> Vec<Ipv4Addr> {
        self.option(code)
            .map(|v| v.chunks_exact(4).map(|c| ip_at(c, 0)).collect())
            .unwrap_or_default()
    }

    fn u32_option(&self, code: u8) -> Option<u32> {
        self.option(code)
            .filter(|v| v.len() >= 4)
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }

    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.ip_option(opt::SERVER_ID)
    }

    /// The prefix length of option 1; a mask that is not contiguous is no mask.
    pub fn prefix(&self) -> Option<u8> {
        let m = u32::from(self.ip_option(opt::SUBNET_MASK)?);
        let ones = m.leading_ones();
        (m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
    }

    pub fn routers(&self) -> Vec<Ipv4Addr> {
        self.ips_option(opt::ROUTER)
    }

    pub fn dns_servers(&self) -> Vec<Ipv4Addr> {
        self.ips_option(opt::DNS_SERVERS)
    }

    /// Option 15, if it is one word of name characters (it goes into resolv.conf).
    pub fn domain(&self) -> Option<String> {
        let v = self.option(opt::DOMAIN_NAME)?;
        let name = String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .to_string();
        (!name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        .then_some(name)
    }

    pub fn lease_time(&self) -> Option<u32> {
        self.u32_option(opt::LEASE_TIME)
    }

    pub fn renewal_time(&self) -> Option<u32> {
        self.u32_option(opt::RENEWAL_TIME)
    }

    pub fn rebinding_time(&self) -> Option<u32> {
        self.u32_option(opt::REBINDING_TIME)
    }

    /// Option 26, if it is a usable MTU (68 is IPv4's minimum).
    pub fn mtu(&self) -> Option<u16> {
        self.option(opt::MTU)
            .filter(|v| v.len() >= 2)
            .map(|v| u16::from_be_bytes([v[0], v[1]]))
            .filter(|m| *m >= 68)
    }

    /// Option 121: each route is a prefix length, the significant octets of the
    /// destination, and the gateway. A malformed list is ignored as a whole.
    pub fn classless_routes(&self) -> Option<Vec<Route>> {
        let v = self.option(opt::CLASSLESS_ROUTES)?;
        let mut out = Vec::new();
        let mut at = 0;
        while at < v.len() {
            let prefix = v[at];
            if prefix > 32 {
                return None;
            }
            let n = usize::from(prefix).div_ceil(8);
            let dest = v.get(at + 1..at + 1 + n)?;
            let gw = v.get(at + 1 + n..at + 5 + n)?;
            let mut d = [0u8; 4];
            d[..n].copy_from_slice(dest);
            out.push(Route {
                dest: Ipv4Addr::from(d),
                prefix,
                gateway: ip_at(gw, 0),
            });
            at += 5 + n;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kind: Kind, options: &[(u8, &[u8])]) -> Message {
        let mut m = Message::request(kind, 7, [2, 0, 0, 0, 0, 1]);
        m.op = BOOTREPLY;
        m.yiaddr = Ipv4Addr::new(10, 0, 2, 15);
        for (c, v) in options {
            m.push(*c, v.to_vec());
        }
        m
    }

    #[test]
    fn round_trips_and_reads_the_options_a_lease_needs() {
        let m = reply(
            Kind::Ack,
            &[
                (opt::SUBNET_MASK, &[255, 255, 255, 0]),
                (opt::ROUTER, &[10, 0, 2, 2, 10, 0, 2, 1]),
                (opt::DNS_SERVERS, &[10, 0, 2, 3]),
                (opt::DOMAIN_NAME, b"lab\0"),
                (opt::LEASE_TIME, &86400u32.to_be_bytes()),
                (opt::SERVER_ID, &[10, 0, 2, 2]),
                (opt::MTU, &1400u16.to_be_bytes()),
            ],
        );
        let bytes = m.encode();
        assert!(bytes.len() >= 300);
        let back = Message::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.kind(), Some(Kind::Ack));
        assert_eq!(back.prefix(), Some(24));
        assert_eq!(
            back.routers(),
            vec![Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 1)]
        );
        assert_eq!(back.dns_servers(), vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(back.domain().as_deref(), Some("lab"));
        assert_eq!(back.lease_time(), Some(86400));
        assert_eq!(back.server_id(), Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(back.mtu(), Some(1400));
        assert_eq!(back.renewal_time(), None);
    }

    #[test]
    fn hostile_or_broken_messages_are_refused_without_panicking() {
        assert_eq!(Message::decode(b""), None);
        assert_eq!(Message::decode(&[0u8; 239]), None);
        let good = reply(Kind::Offer, &[(opt::DNS_SERVERS, &[1, 2, 3, 4])]).encode();
        // Every truncation either parses or is refused.
        for n in 0..good.len() {
            let _ = Message::decode(&good[..n]);
        }
        let mut bad_magic = good.clone();
        bad_magic[236] = 0;
        assert_eq!(Message::decode(&bad_magic), None);
        // An option whose length runs past the end.
        let mut m = good[..240].to_vec();
        m.extend_from_slice(&[opt::DNS_SERVERS, 200, 1, 2]);
        assert_eq!(Message::decode(&m), None);
        // A mask with holes, a domain that would add a line to resolv.conf, a tiny MTU.
        let m = reply(
            Kind::Ack,
            &[
                (opt::SUBNET_MASK, &[255, 0, 255, 0]),
                (opt::DOMAIN_NAME, b"a\nnameserver 6.6.6.6"),
                (opt::MTU, &[0, 10]),
            ],
        );
        assert_eq!(m.prefix(), None);
        assert_eq!(m.domain(), None);
        assert_eq!(m.mtu(), None);
    }

    #[test]
    fn long_options_are_split_and_joined_again() {
        let mut m = reply(Kind::Ack, &[]);
        let long: Vec<u8> = (0..=255u8).chain(0..100).collect();
        m.push(opt::CLIENT_ID, long.clone());
        let back = Message::decode(&m.encode()).unwrap();
        assert_eq!(back.option(opt::CLIENT_ID), Some(long));
    }

    #[test]
    fn classless_static_routes() {
        let m = reply(
            Kind::Ack,
            &[(
                opt::CLASSLESS_ROUTES,
                &[
                    0, 10, 0, 2, 1, // default via 10.0.2.1
                    24, 192, 168, 7, 10, 0, 2, 9, // 192.168.7.0/24 via 10.0.2.9
                    32, 1, 2, 3, 4, 10, 0, 2, 8, // a host route
                ],
            )],
        );
        assert_eq!(
            m.classless_routes().unwrap(),
            vec![
                Route {
                    dest: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: Ipv4Addr::new(10, 0, 2, 1)
                },
                Route {
                    dest: Ipv4Addr::new(192, 168, 7, 0),
                    prefix: 24,
                    gateway: Ipv4Addr::new(10, 0, 2, 9)
                },
                Route {
                    dest: Ipv4Addr::new(1, 2, 3, 4),
                    prefix: 32,
                    gateway: Ipv4Addr::new(10, 0, 2, 8)
                },
            ]
        );
        let cut = reply(Kind::Ack, &[(opt::CLASSLESS_ROUTES, &[24, 192, 168])]);
        assert_eq!(cut.classless_routes(), None);
        let wide = reply(Kind::Ack, &[(opt::CLASSLESS_ROUTES, &[33, 0, 0, 0, 0, 0])]);
        assert_eq!(wide.classless_routes(), None);
    }
}
