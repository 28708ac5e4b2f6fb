//! resolv.conf from the DHCP leases: the client (`dhcp`) keeps each NIC's last ACK as
//! sent, and the DNS servers and domain come from there.

use crate::dhcp::message::Message;
use std::net::Ipv4Addr;
use std::path::Path;

pub use crate::dhcp::LEASE_DIR;

/// What a lease says about name resolution.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
}

/// Reads the DNS options of a BOOTP/DHCP message; `None` if it is not one.
pub fn parse(msg: &[u8]) -> Option<Dns> {
    let m = Message::decode(msg)?;
    Some(Dns {
        servers: m.dns_servers(),
        domain: m.domain(),
    })
}

/// resolv.conf's text for the leases of `ifaces` (in that order); empty if none has DNS.
pub fn resolv_conf(dir: &Path, ifaces: &[String]) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for iface in ifaces {
        let Ok(msg) = std::fs::read(dir.join(format!("{iface}.lease"))) else {
            continue;
        };
        let Some(dns) = parse(&msg) else { continue };
        if let Some(d) = &dns.domain {
            if !out.contains("search ") {
                out.push_str(&format!("search {d}\n"));
            }
        }
        for s in dns.servers {
            if !seen.contains(&s) {
                seen.push(s);
                out.push_str(&format!("nameserver {s}\n"));
            }
        }
    }
    out
}

/// Keeps resolv.conf in step with the leases: when a renewal (or a lease on another
/// network) brings other DNS servers, resolv.conf follows. Checked on PID 1's loop; a lease file is a few hundred bytes.
pub struct DnsFollower {
    ifaces: Vec<String>,
    written: String,
    next: std::time::Instant,
}

impl DnsFollower {
    /// How often the leases are read again.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// `written`: what resolv.conf holds now.
    pub fn new(ifaces: Vec<String>, written: String) -> DnsFollower {
        DnsFollower {
            ifaces,
            written,
            next: std::time::Instant::now() + Self::EVERY,
        }
    }

    /// The new resolv.conf text when it is due and the leases changed it. A lease without
    /// DNS (or none at all, between two leases) keeps what was written.
    pub fn poll(&mut self, dir: &Path, now: std::time::Instant) -> Option<String> {
        if self.ifaces.is_empty() || now < self.next {
            return None;
        }
        self.next = now + Self::EVERY;
        let text = resolv_conf(dir, &self.ifaces);
        if text.is_empty() || text == self.written {
            return None;
        }
        self.written = text.clone();
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS_AT: usize = 240;

    fn reply(options: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; OPTIONS_AT];
        m[0] = 2; // BOOTREPLY
        m[1] = 1; // Ethernet
        m[2] = 6;
        m[236..240].copy_from_slice(&[99, 130, 83, 99]);
        m.extend_from_slice(options);
        m
    }

    #[test]
    fn reads_servers_and_domain() {
        let m = reply(&[
            53, 1, 5, // ACK
            0, // pad
            6, 8, 10, 0, 2, 3, 1, 1, 1, 1, // two servers
            15, 4, b'l', b'a', b'b', 0, // NUL-terminated, as some servers send it
            255,
        ]);
        assert_eq!(
            parse(&m),
            Some(Dns {
                servers: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
                domain: Some("lab".into()),
            })
        );
    }

    #[test]
    fn refuses_what_is_not_a_lease_and_survives_truncation() {
        assert_eq!(parse(b"hello"), None);
        let mut m = reply(&[6, 8, 10, 0, 2, 3]); // length runs past the end
        assert_eq!(parse(&m), None);
        m.truncate(OPTIONS_AT);
        assert_eq!(parse(&m), Some(Dns::default()));
        // A domain that would inject a second line into resolv.conf is dropped.
        let m = reply(&[15, 5, b'a', b'\n', b'n', b's', b' ', 255]);
        assert_eq!(parse(&m).unwrap().domain, None);
    }

    #[test]
    fn writes_resolv_conf_from_leases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("eth0.lease"),
            reply(&[6, 4, 10, 0, 2, 3, 15, 3, b'l', b'a', b'b', 255]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("eth1.lease"),
            reply(&[6, 4, 10, 0, 2, 3, 255]),
        )
        .unwrap();
        let text = resolv_conf(dir.path(), &["eth0".into(), "eth1".into(), "eth2".into()]);
        assert_eq!(text, "search lab\nnameserver 10.0.2.3\n");
        assert_eq!(resolv_conf(dir.path(), &["eth9".into()]), "");
    }

    #[test]
    fn follows_a_renewal_that_changes_the_servers() {
        let dir = tempfile::tempdir().unwrap();
        let lease = dir.path().join("eth0.lease");
        std::fs::write(&lease, reply(&[6, 4, 10, 0, 2, 3, 255])).unwrap();
        let first = resolv_conf(dir.path(), &["eth0".into()]);
        let mut f = DnsFollower::new(vec!["eth0".into()], first);
        let t0 = std::time::Instant::now();
        let later = |n: u32| t0 + DnsFollower::EVERY * n;
        assert_eq!(f.poll(dir.path(), later(1)), None, "unchanged");
        std::fs::write(&lease, reply(&[6, 4, 10, 0, 2, 53, 255])).unwrap();
        assert_eq!(f.poll(dir.path(), t0), None, "not due yet");
        assert_eq!(
            f.poll(dir.path(), later(2)).as_deref(),
            Some("nameserver 10.0.2.53\n")
        );
        std::fs::remove_file(&lease).unwrap();
        assert_eq!(
            f.poll(dir.path(), later(3)),
            None,
            "no lease: keep the last"
        );
        assert_eq!(
            DnsFollower::new(vec![], String::new()).poll(dir.path(), later(9)),
            None
        );
    }
}
