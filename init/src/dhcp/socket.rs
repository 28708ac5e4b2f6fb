//! The DHCP client's two sockets on one NIC: a UDP socket on port 68 bound to the NIC for
//! sending (broadcasts work before the NIC has an address), and a packet socket that
//! receives every IPv4 packet reaching the NIC, because a server may answer to the offered
//! address by unicast before the kernel would accept packets for it.

use super::message::Message;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

pub struct Sockets {
    udp: UdpSocket,
    packet: OwnedFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Sockets {
    pub fn open(iface: &str, ifindex: u32) -> io::Result<Sockets> {
        // SAFETY: plain socket calls on descriptors owned here; option values are locals
        // whose sizes are passed along.
        unsafe {
            let fd = cvt(libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                0,
            ))?;
            let udp = UdpSocket::from_raw_fd(fd);
            let one: libc::c_int = 1;
            for o in [libc::SO_REUSEADDR, libc::SO_BROADCAST] {
                cvt(libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    o,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of_val(&one) as libc::socklen_t,
                ))?;
            }
            cvt(libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                iface.as_ptr() as *const libc::c_void,
                iface.len() as libc::socklen_t,
            ))?;
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: CLIENT_PORT.to_be(),
                sin_addr: libc::in_addr { s_addr: 0 },
                sin_zero: [0; 8],
            };
            cvt(libc::bind(
                fd,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&addr) as libc::socklen_t,
            ))?;
            udp.set_nonblocking(true)?;

            let pfd = cvt(libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                (libc::ETH_P_IP as u16).to_be() as libc::c_int,
            ))?;
            let packet = OwnedFd::from_raw_fd(pfd);
            let mut ll: libc::sockaddr_ll = std::mem::zeroed();
            ll.sll_family = libc::AF_PACKET as u16;
            ll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            ll.sll_ifindex = ifindex as libc::c_int;
            cvt(libc::bind(
                pfd,
                &ll as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&ll) as libc::socklen_t,
            ))?;
            Ok(Sockets { udp, packet })
        }
    }

    pub fn broadcast(&self, m: &Message) -> io::Result<()> {
        self.send(Ipv4Addr::BROADCAST, m)
    }

    pub fn send(&self, to: Ipv4Addr, m: &Message) -> io::Result<()> {
        self.udp
            .send_to(&m.encode(), SocketAddrV4::new(to, SERVER_PORT))
            .map(drop)
    }

    /// Waits up to `timeout` for a DHCP reply on the NIC.
    pub fn receive(&self, timeout: Duration) -> io::Result<Option<Message>> {
        // What the kernel also queued on the UDP socket (unicast replies once the address
        // is up) is read on the packet socket; drop it here so the queue never fills.
        let mut sink = [0u8; 1500];
        while self.udp.recv_from(&mut sink).is_ok() {}
        let mut pfd = libc::pollfd {
            fd: self.packet.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one pollfd on a descriptor we own.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            return nothing_unless_other_than(io::ErrorKind::Interrupted);
        }
        if n == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 4096];
        // SAFETY: recv into a buffer of the given length.
        let len = unsafe {
            libc::recv(
                self.packet.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if len < 0 {
            return nothing_unless_other_than(io::ErrorKind::WouldBlock);
        }
        Ok(udp_payload(&buf[..len as usize]).and_then(Message::decode))
    }
}

/// The payload of an IPv4 UDP packet from port 67 to port 68, if that is what `ip` is.
pub fn udp_payload(ip: &[u8]) -> Option<&[u8]> {
    let first = *ip.first()?;
    if first >> 4 != 4 || ip.get(9) != Some(&17) {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    // Fragments are not reassembled: a DHCP reply fits one packet.
    let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
    if ihl < 20 || total > ip.len() || total < ihl + 8 || frag & 0x3fff != 0 {
        return None;
    }
    let udp = &ip[ihl..total];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if sport != SERVER_PORT || dport != CLIENT_PORT || ulen < 8 || ulen > udp.len() {
        return None;
    }
    Some(&udp[8..ulen])
}

/// After a failed syscall: nothing received if it failed with `benign` (a signal, no
/// packet after all), else the error.
fn nothing_unless_other_than<T>(benign: io::ErrorKind) -> io::Result<Option<T>> {
    let e = io::Error::last_os_error();
    if e.kind() == benign {
        Ok(None)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 2, 2, 255, 255, 255, 255,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn takes_only_server_to_client_udp() {
        assert_eq!(udp_payload(&packet(67, 68, b"hi")), Some(&b"hi"[..]));
        assert_eq!(udp_payload(&packet(68, 67, b"hi")), None, "our own request");
        assert_eq!(udp_payload(&packet(53, 68, b"hi")), None);
        let mut tcp = packet(67, 68, b"hi");
        tcp[9] = 6;
        assert_eq!(udp_payload(&tcp), None);
        let mut frag = packet(67, 68, b"hi");
        frag[6] = 0x20; // more fragments
        assert_eq!(udp_payload(&frag), None);
        let p = packet(67, 68, b"hello");
        for n in 0..p.len() {
            assert_eq!(udp_payload(&p[..n]), None, "cut at {n}");
        }
        assert_eq!(udp_payload(&[]), None);
    }
}
