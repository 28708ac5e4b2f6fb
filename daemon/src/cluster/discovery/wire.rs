//! The announcement's wire format (version 1), all integers big-endian:
//!
//! ```text
//! "CRND"  version=1  flags      cluster          member           api address
//! 4 bytes 1 byte     1 byte     len:u8 + bytes   len:u8 + bytes   family:u8 (4|6) + 4|16 bytes + port:u16
//! fingerprint  boot nonce  seq    tag
//! 32 bytes     16 bytes    u64    32 bytes: HMAC-SHA256(announcement key, every byte before it)
//! ```
//!
//! `flags` bit 0 is "formed" (the sender belongs to a formed cluster and takes joins); the
//! other bits must be zero. Names are 1 to 63 bytes of `[A-Za-z0-9._-]`, which also keeps
//! what a stranger puts in them harmless in logs. At most [`MAX_PACKET`] bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::Mac;

use super::keys::ClusterKeys;

const MAGIC: &[u8; 4] = b"CRND";
const VERSION: u8 = 1;
const FLAG_FORMED: u8 = 1;
const TAG_LEN: usize = 32;
/// The longest member or cluster name.
pub const MAX_NAME: usize = 63;
/// The largest packet accepted; a version-1 announcement is at most 241 bytes.
pub const MAX_PACKET: usize = 512;

/// What a member announces about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub cluster: String,
    /// The member's (server) name.
    pub member: String,
    /// Where its HTTPS API listens.
    pub api_address: SocketAddr,
    /// SHA-256 of its server certificate, lowercase hex.
    pub fingerprint: String,
    /// Random per process start: tells a restart from a replay of older messages.
    pub boot_nonce: [u8; 16],
    /// Increases with every message of one boot.
    pub seq: u64,
    /// The sender already belongs to a formed cluster and takes joins.
    pub formed: bool,
}

/// Why a packet is not an acceptable announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("packet of {0} bytes is larger than {MAX_PACKET}")]
    Oversized(usize),
    #[error("not a cairn announcement")]
    BadMagic,
    #[error("unsupported announcement version {0}")]
    Version(u8),
    #[error("truncated announcement")]
    Truncated,
    #[error("invalid {0} in announcement")]
    Invalid(&'static str),
    #[error("{0} bytes after the announcement")]
    Trailing(usize),
    #[error("announcement for another cluster, {0:?}")]
    OtherCluster(String),
    #[error("announcement from {member:?} has a bad tag: wrong cluster secret")]
    BadTag { member: String },
}

/// Member and cluster names: what Incus and DNS allow, bounded.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A concrete address a peer can connect to.
pub fn valid_api_address(a: &SocketAddr) -> bool {
    a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast()
}

impl Announcement {
    /// Serializes and authenticates. Fails only on values a peer would refuse.
    pub fn seal(&self, keys: &ClusterKeys) -> Result<Vec<u8>, WireError> {
        if self.cluster != keys.cluster() {
            return Err(WireError::OtherCluster(self.cluster.clone()));
        }
        for (field, n) in [("cluster", &self.cluster), ("member", &self.member)] {
            if !valid_name(n) {
                return Err(WireError::Invalid(field));
            }
        }
        if !valid_api_address(&self.api_address) {
            return Err(WireError::Invalid("api address"));
        }
        let fingerprint = parse_fingerprint(&self.fingerprint)?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(if self.formed { FLAG_FORMED } else { 0 });
        for n in [&self.cluster, &self.member] {
            // valid_name bounds the length to 63.
            out.push(n.len() as u8);
            out.extend_from_slice(n.as_bytes());
        }
        match self.api_address.ip() {
            IpAddr::V4(ip) => {
                out.push(4);
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&self.api_address.port().to_be_bytes());
        out.extend_from_slice(&fingerprint);
        out.extend_from_slice(&self.boot_nonce);
        out.extend_from_slice(&self.seq.to_be_bytes());
        let mut mac = keys.announce_mac();
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        Ok(out)
    }

    /// Parses and authenticates a packet from the network. The cluster name is checked
    /// before the tag so that a neighbouring cluster is told apart from a wrong secret.
    pub fn open(packet: &[u8], keys: &ClusterKeys) -> Result<Announcement, WireError> {
        if packet.len() > MAX_PACKET {
            return Err(WireError::Oversized(packet.len()));
        }
        let signed_len = packet
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(WireError::Truncated)?;
        let (signed, tag) = packet.split_at(signed_len);
        let mut r = Reader(signed);
        if r.take(4)? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let flags = r.u8()?;
        if flags & !FLAG_FORMED != 0 {
            return Err(WireError::Invalid("flags"));
        }
        let cluster = r.name("cluster")?;
        let member = r.name("member")?;
        let ip = match r.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
            _ => return Err(WireError::Invalid("address family")),
        };
        let port = u16::from_be_bytes(r.array()?);
        let api_address = SocketAddr::new(ip, port);
        if !valid_api_address(&api_address) {
            return Err(WireError::Invalid("api address"));
        }
        let fingerprint = hex::encode(r.array::<32>()?);
        let boot_nonce = r.array::<16>()?;
        let seq = u64::from_be_bytes(r.array()?);
        if !r.0.is_empty() {
            return Err(WireError::Trailing(r.0.len()));
        }
        if cluster != keys.cluster() {
            return Err(WireError::OtherCluster(cluster));
        }
        let mut mac = keys.announce_mac();
        mac.update(signed);
        // verify_slice compares in constant time.
        if mac.verify_slice(tag).is_err() {
            return Err(WireError::BadTag { member });
        }
        Ok(Announcement {
            cluster,
            member,
            api_address,
            fingerprint,
            boot_nonce,
            seq,
            formed: flags & FLAG_FORMED != 0,
        })
    }
}

/// A SHA-256 fingerprint in hex (either case).
pub fn parse_fingerprint(fp: &str) -> Result<[u8; 32], WireError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(fp, &mut out).map_err(|_| WireError::Invalid("fingerprint"))?;
    Ok(out)
}

/// A bounds-checked cursor: every read fails cleanly past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn name(&mut self, field: &'static str) -> Result<String, WireError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        let name = std::str::from_utf8(bytes).map_err(|_| WireError::Invalid(field))?;
        if !valid_name(name) {
            return Err(WireError::Invalid(field));
        }
        Ok(name.to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn keys() -> ClusterKeys {
        ClusterKeys::derive("rack1", "0123456789abcdef")
    }

    pub(crate) fn announcement(member: &str, seq: u64) -> Announcement {
        Announcement {
            cluster: "rack1".into(),
            member: member.into(),
            api_address: "10.213.7.1:8443".parse().unwrap(),
            fingerprint: "ab".repeat(32),
            boot_nonce: [7; 16],
            seq,
            formed: false,
        }
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let mut a = announcement("n1", 42);
        let p = a.seal(&k).unwrap();
        assert_eq!(Announcement::open(&p, &k), Ok(a.clone()));
        a.api_address = "[fd00::1]:8443".parse().unwrap();
        a.formed = true;
        a.member = "a".repeat(MAX_NAME);
        let p = a.seal(&k).unwrap();
        assert!(p.len() <= MAX_PACKET);
        assert_eq!(Announcement::open(&p, &k), Ok(a));
    }

    #[test]
    fn fingerprint_is_normalized_to_lowercase() {
        let k = keys();
        let mut a = announcement("n1", 1);
        a.fingerprint = "AB".repeat(32);
        let b = Announcement::open(&a.seal(&k).unwrap(), &k).unwrap();
        assert_eq!(b.fingerprint, "ab".repeat(32));
    }

    #[test]
    fn every_tampered_byte_is_rejected() {
        let k = keys();
        let p = announcement("n1", 1).seal(&k).unwrap();
        for i in 0..p.len() {
            for bit in [0x01u8, 0x80] {
                let mut q = p.clone();
                q[i] ^= bit;
                assert!(
                    Announcement::open(&q, &k).is_err(),
                    "byte {i} flipped with {bit:#x} was accepted"
                );
            }
        }
    }

    #[test]
    fn wrong_secret_and_other_cluster() {
        let p = announcement("n1", 1).seal(&keys()).unwrap();
        let wrong = ClusterKeys::derive("rack1", "another secret!!");
        assert_eq!(
            Announcement::open(&p, &wrong),
            Err(WireError::BadTag {
                member: "n1".into()
            })
        );
        let other = ClusterKeys::derive("rack2", "0123456789abcdef");
        assert_eq!(
            Announcement::open(&p, &other),
            Err(WireError::OtherCluster("rack1".into()))
        );
    }

    #[test]
    fn garbage_truncated_and_oversized_are_rejected() {
        let k = keys();
        let p = announcement("n1", 1).seal(&k).unwrap();
        for n in 0..p.len() {
            assert!(Announcement::open(&p[..n], &k).is_err(), "prefix of {n}");
        }
        let mut long = p.clone();
        long.push(0);
        assert!(Announcement::open(&long, &k).is_err());
        assert_eq!(
            Announcement::open(&vec![0u8; MAX_PACKET + 1], &k),
            Err(WireError::Oversized(MAX_PACKET + 1))
        );
        // Deterministic pseudo-random garbage, also with a valid header in front.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..600 {
            let mut g: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert!(Announcement::open(&g, &k).is_err());
            if g.len() > 6 {
                g[..6].copy_from_slice(b"CRND\x01\x00");
                assert!(Announcement::open(&g, &k).is_err());
            }
        }
    }

    #[test]
    fn refuses_to_seal_what_peers_would_refuse() {
        let k = keys();
        let mut a = announcement("bad name", 1);
        assert_eq!(a.seal(&k), Err(WireError::Invalid("member")));
        a = announcement("n1", 1);
        a.api_address = "0.0.0.0:8443".parse().unwrap();
        assert!(a.seal(&k).is_err());
        a = announcement("n1", 1);
        a.fingerprint = "abc".into();
        assert!(a.seal(&k).is_err());
        a = announcement("n1", 1);
        a.cluster = "rack2".into();
        assert!(a.seal(&k).is_err());
    }
}
