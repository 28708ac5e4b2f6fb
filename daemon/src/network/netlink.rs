//! Links, addresses and routes through rtnetlink, synchronously: one request per fresh
//! socket, in the calling thread's network namespace. The same raw shape as
//! `init/src/netlink.rs` (cairn-init links no async runtime, and the daemon calls these from
//! blocking threads), plus what a bridge needs: creating and deleting links, and dumps of
//! addresses and routes to choose a free subnet without sending a packet.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    MacVlanMode,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// One address on one interface, as a dump lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddress {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
    pub scope: &'static str,
}

/// The kernel's index of interface `name`.
pub fn index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::other(format!("interface name {name:?}")))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {name}"),
        )),
        i => Ok(i),
    }
}

pub fn exists(name: &str) -> bool {
    index(name).is_ok()
}

/// Creates bridge `name`; fails if any link of that name exists.
pub fn create_bridge(name: &str) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    request(
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(drop)
    .map_err(|e| context(e, &format!("creating bridge {name}")))
}

/// Creates veth pair `host` and `peer`, both in this namespace, down.
pub fn create_veth(host: &str, peer: &str) -> io::Result<()> {
    let mut peer_msg = LinkMessage::default();
    peer_msg
        .attributes
        .push(LinkAttribute::IfName(peer.to_string()));
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(host.to_string()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
    ]));
    request(
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(drop)
    .map_err(|e| context(e, &format!("creating veth pair {host}/{peer}")))
}

/// Creates macvlan `name` on `parent`, in bridge mode (Incus's), down.
pub fn create_macvlan(name: &str, parent: &str) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::Link(index(parent)?));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::MacVlan),
        LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
            MacVlanMode::Bridge,
        )])),
    ]));
    request(
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(drop)
    .map_err(|e| context(e, &format!("creating macvlan {name} on {parent}")))
}

/// Moves link `name` into the network namespace of process `pid`.
pub fn move_to_netns_of(name: &str, pid: i32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index(name)?;
    msg.attributes.push(LinkAttribute::NetNsPid(pid as u32));
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("moving {name} into the netns of {pid}")))
}

/// Makes link `name` a port of bridge `bridge`.
pub fn set_master(name: &str, bridge: &str) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index(name)?;
    msg.attributes
        .push(LinkAttribute::Controller(index(bridge)?));
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("adding {name} to bridge {bridge}")))
}

/// Takes link `name` out of the bridge it is a port of.
pub fn set_nomaster(name: &str) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index(name)?;
    msg.attributes.push(LinkAttribute::Controller(0));
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("releasing {name} from its bridge")))
}

/// Renames link `name` to `new_name` and sets its MAC (`aa:bb:…`); the link must be down.
pub fn rename_with_mac(name: &str, new_name: &str, mac: &str) -> io::Result<()> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("MAC {mac:?}")))?;
    let mut msg = LinkMessage::default();
    msg.header.index = index(name)?;
    msg.attributes
        .push(LinkAttribute::IfName(new_name.to_string()));
    msg.attributes.push(LinkAttribute::Address(bytes));
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("renaming {name} to {new_name}")))
}

/// Deletes link `name` (a bridge: its ports are released, not deleted).
pub fn delete_link(name: &str) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index(name)?;
    request(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("deleting {name}")))
}

pub fn link_up(name: &str) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index(name)?;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("setting {name} up")))
}

pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index(name)?;
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("setting the MTU of {name} to {mtu}")))
}

/// Adds `addr/prefix` to `name`, or refreshes it (`ip addr replace … brd +`).
pub fn replace_address(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let mut msg = address_message(name, IpAddr::V4(addr), prefix)?;
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr)));
    if prefix <= 30 {
        msg.attributes
            .push(AddressAttribute::Broadcast(broadcast(addr, prefix)));
    }
    request(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(drop)
    .map_err(|e| context(e, &format!("setting {addr}/{prefix} on {name}")))
}

/// Adds the IPv6 `addr/prefix` to `name`, or refreshes it (`ip -6 addr replace`).
pub fn replace_address6(name: &str, addr: std::net::Ipv6Addr, prefix: u8) -> io::Result<()> {
    let mut msg = address_message(name, IpAddr::V6(addr), prefix)?;
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V6(addr)));
    request(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(drop)
    .map_err(|e| context(e, &format!("setting {addr}/{prefix} on {name}")))
}

pub fn delete_address(name: &str, addr: IpAddr, prefix: u8) -> io::Result<()> {
    let msg = address_message(name, addr, prefix)?;
    request(RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("removing {addr}/{prefix} from {name}")))
}

fn address_message(name: &str, addr: IpAddr, prefix: u8) -> io::Result<AddressMessage> {
    let mut msg = AddressMessage::default();
    msg.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = prefix;
    msg.header.index = index(name)?;
    msg.attributes.push(AddressAttribute::Local(addr));
    Ok(msg)
}

/// Every address of every interface (both families).
pub fn addresses() -> io::Result<Vec<IfAddress>> {
    let msg = AddressMessage::default();
    let replies = request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewAddress(a) = r else {
            continue;
        };
        // IPv4 names its own address in Local (Address is the peer's on point-to-point
        // links); IPv6 has only Address.
        let local = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = local.or_else(|| {
            a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        let Some(addr) = addr else { continue };
        let scope = match a.header.scope {
            AddressScope::Universe => "global",
            AddressScope::Link => "link",
            AddressScope::Host => "local",
            _ => "other",
        };
        out.push(IfAddress {
            index: a.header.index,
            addr,
            prefix: a.header.prefix_len,
            scope,
        });
    }
    Ok(out)
}

/// One interface as the kernel counts it: what `incus info` shows of a NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub hwaddr: String,
    pub up: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// The index of the bridge (or bond) the link is a port of.
    pub master: Option<u32>,
}

/// Every interface of the calling thread's network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let replies = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_DUMP,
    )?;
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewLink(m) = r else {
            continue;
        };
        let mut l = Link {
            index: m.header.index,
            up: m.header.flags.contains(LinkFlags::Up),
            ..Link::default()
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Controller(i) if *i != 0 => l.master = Some(*i),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    l.hwaddr = b
                        .iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                }
                LinkAttribute::Stats64(s) => {
                    l.rx_bytes = s.rx_bytes;
                    l.tx_bytes = s.tx_bytes;
                    l.rx_packets = s.rx_packets;
                    l.tx_packets = s.tx_packets;
                }
                _ => {}
            }
        }
        out.push(l);
    }
    Ok(out)
}

/// One route of the main table: its destination, prefix and the interface it goes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<A> {
    pub dest: A,
    pub prefix: u8,
    pub oif: Option<u32>,
}

/// The main table's routes of one family, less the default route.
fn routes(family: AddressFamily) -> io::Result<Vec<Route<IpAddr>>> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    let replies = request(RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewRoute(m) = r else {
            continue;
        };
        if m.header.table != RouteHeader::RT_TABLE_MAIN || m.header.destination_prefix_length == 0 {
            continue;
        }
        let mut dest = None;
        let mut oif = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(v4)) => dest = Some(IpAddr::V4(*v4)),
                RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                    dest = Some(IpAddr::V6(*v6))
                }
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if let Some(dest) = dest {
            out.push(Route {
                dest,
                prefix: m.header.destination_prefix_length,
                oif,
            });
        }
    }
    Ok(out)
}

/// The IPv4 destinations of the main table's routes, less the default route.
pub fn ipv4_routes() -> io::Result<Vec<Route<Ipv4Addr>>> {
    Ok(routes(AddressFamily::Inet)?
        .into_iter()
        .filter_map(|r| match r.dest {
            IpAddr::V4(dest) => Some(Route {
                dest,
                prefix: r.prefix,
                oif: r.oif,
            }),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// The IPv6 destinations of the main table's routes, less the default route, link-local
/// and multicast ones.
pub fn ipv6_routes() -> io::Result<Vec<Route<std::net::Ipv6Addr>>> {
    Ok(routes(AddressFamily::Inet6)?
        .into_iter()
        .filter_map(|r| match r.dest {
            IpAddr::V6(dest) => {
                let link_local = (dest.segments()[0] & 0xffc0) == 0xfe80;
                (!link_local && !dest.is_multicast() && !dest.is_loopback()).then_some(Route {
                    dest,
                    prefix: r.prefix,
                    oif: r.oif,
                })
            }
            IpAddr::V4(_) => None,
        })
        .collect())
}

/// Runs `f` in the network namespace of process `pid`, on a thread of its own: `setns`
/// moves only the calling thread, and that thread ends with `f`, so no daemon thread is
/// ever left in a container's namespace.
pub fn in_netns_of<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::Builder::new()
        .name("netns-query".into())
        .spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("entering the netns of {pid}: {e}")))?;
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("the netns query thread panicked"))?
}

/// The directed broadcast address of `addr/prefix`.
pub fn broadcast(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let host_bits = 32u32.saturating_sub(u32::from(prefix.min(32)));
    let mask = if host_bits == 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    };
    Ipv4Addr::from(u32::from(addr) | mask)
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Sends one request and collects the kernel's answers until its acknowledgement (or the
/// end of a dump).
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut at = 0;
        while at < n {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Error(err) => {
                    return match err.code {
                        None => Ok(out),
                        Some(_) => Err(err.to_io()),
                    }
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_parse_and_loopback_is_there() {
        assert_eq!(index("lo").unwrap(), 1);
        assert!(!exists("cairn-no-such"));
        let a = addresses().unwrap();
        assert!(a
            .iter()
            .any(|x| x.index == 1 && x.addr == IpAddr::V4(Ipv4Addr::LOCALHOST)));
        ipv4_routes().unwrap();
    }

    /// A bridge created, addressed and deleted in a namespace of this thread's own.
    #[test]
    fn bridge_in_a_namespace_of_its_own() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (a network namespace of its own); run it as root"
        );
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            create_bridge("cbtest0").unwrap();
            assert!(create_bridge("cbtest0").is_err());
            link_up("cbtest0").unwrap();
            set_mtu("cbtest0", 1400).unwrap();
            let ip = Ipv4Addr::new(10, 99, 0, 1);
            replace_address("cbtest0", ip, 24).unwrap();
            let i = index("cbtest0").unwrap();
            assert!(addresses()
                .unwrap()
                .iter()
                .any(|a| a.index == i && a.addr == IpAddr::V4(ip) && a.prefix == 24));
            assert!(ipv4_routes()
                .unwrap()
                .iter()
                .any(|r| r.dest == Ipv4Addr::new(10, 99, 0, 0) && r.prefix == 24));
            delete_link("cbtest0").unwrap();
            assert!(!exists("cbtest0"));
        })
        .join()
        .unwrap();
    }
}
