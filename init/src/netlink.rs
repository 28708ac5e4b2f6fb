//! Links, addresses and routes through rtnetlink, synchronously (PID 1's main loop is
//! synchronous). Each call is one request on a fresh socket, answered by the kernel's
//! acknowledgement: exec'ing iproute2 instead costs most of a second per call under TCG,
//! and the boot made a dozen of them on its way to the API.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// The kernel's index of interface `name` (in this thread's network namespace).
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

/// Sets interface `name` up.
pub fn link_up(name: &str) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index(name)?;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("setting {name} up")))
}

/// Adds `addr/prefix` to interface `name`, or refreshes it if it is there (`ip addr
/// replace`). A lifetime in seconds (a DHCP lease) lets the kernel drop the address when
/// it runs out, should nobody renew it.
pub fn replace_address(
    name: &str,
    addr: IpAddr,
    prefix: u8,
    lifetime_s: Option<u32>,
) -> io::Result<()> {
    let mut msg = address_message(name, addr, prefix)?;
    msg.attributes.push(AddressAttribute::Address(addr));
    match addr {
        // /31 and /32 have no broadcast address (RFC 3021).
        IpAddr::V4(v4) if prefix <= 30 => msg
            .attributes
            .push(AddressAttribute::Broadcast(broadcast(v4, prefix))),
        _ => {}
    }
    if let Some(s) = lifetime_s {
        let mut ci = netlink_packet_route::address::CacheInfo::default();
        ci.ifa_valid = s;
        ci.ifa_preferred = s;
        msg.attributes.push(AddressAttribute::CacheInfo(ci));
    }
    request(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(drop)
    .map_err(|e| context(e, &format!("setting {addr}/{prefix} on {name}")))
}

/// Removes `addr/prefix` from interface `name` (a lease that ended).
pub fn delete_address(name: &str, addr: IpAddr, prefix: u8) -> io::Result<()> {
    let msg = address_message(name, addr, prefix)?;
    request(RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("removing {addr}/{prefix} from {name}")))
}

/// The part of an address message that names `addr/prefix` on `name`.
fn address_message(name: &str, addr: IpAddr, prefix: u8) -> io::Result<AddressMessage> {
    let mut msg = AddressMessage::default();
    msg.header.family = family(addr);
    msg.header.prefix_len = prefix;
    msg.header.index = index(name)?;
    msg.attributes.push(AddressAttribute::Local(addr));
    Ok(msg)
}

/// Makes `gateway` on `name` the default route (`ip route replace default via …`).
pub fn replace_default_route(name: &str, gateway: IpAddr) -> io::Result<()> {
    replace_route(name, Ipv4Addr::UNSPECIFIED, 0, Some(gateway))
}

/// Adds or replaces the IPv4 route to `dest/prefix` on `name`, through `gateway` or (None)
/// directly on the link.
pub fn replace_route(
    name: &str,
    dest: Ipv4Addr,
    prefix: u8,
    gateway: Option<IpAddr>,
) -> io::Result<()> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = if gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    msg.header.kind = RouteType::Unicast;
    if prefix > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dest)));
    }
    if let Some(gw) = gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    msg.attributes.push(RouteAttribute::Oif(index(name)?));
    let what = match gateway {
        Some(gw) if prefix == 0 => format!("default route via {gw} on {name}"),
        Some(gw) => format!("route to {dest}/{prefix} via {gw} on {name}"),
        None => format!("route to {dest}/{prefix} on {name}"),
    };
    request(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(drop)
    .map_err(|e| context(e, &what))
}

/// Sets the MTU of interface `name`.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index(name)?;
    msg.attributes.push(LinkAttribute::Mtu(mtu));
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
        .map(drop)
        .map_err(|e| context(e, &format!("setting the MTU of {name} to {mtu}")))
}

fn link_attributes(name: &str) -> io::Result<Vec<LinkAttribute>> {
    let mut msg = LinkMessage::default();
    msg.header.index = index(name)?;
    let replies = request(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK)?;
    Ok(replies
        .into_iter()
        .find_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => Some(l.attributes),
            _ => None,
        })
        .unwrap_or_default())
}

/// The hardware (MAC) address of interface `name`.
pub fn mac(name: &str) -> io::Result<[u8; 6]> {
    link_attributes(name)?
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => {
                let mut out = [0u8; 6];
                out.copy_from_slice(m);
                Some(out)
            }
            _ => None,
        })
        .ok_or_else(|| io::Error::other(format!("{name} has no Ethernet address")))
}

/// Whether interface `name` is operationally up. Set up, a link still drops what it is
/// given until the kernel has noticed its carrier and activated its queue (a moment
/// later): a DHCP DISCOVER sent in between is lost and costs a retransmission.
pub fn oper_up(name: &str) -> io::Result<bool> {
    Ok(link_attributes(name)?
        .iter()
        .any(|a| matches!(a, LinkAttribute::OperState(State::Up))))
}

/// The global-scope IPv4 addresses of every interface, as "name=a.b.c.d/n" (what
/// `ip -4 -o addr show scope global` lists).
pub fn global_ipv4() -> io::Result<Vec<String>> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    let replies = request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
    let mut out = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewAddress(a) = r else {
            continue;
        };
        if a.header.scope != AddressScope::Universe {
            continue;
        }
        let local = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        let Some(ip) = local else { continue };
        let name = interface_name(a.header.index).unwrap_or_else(|| a.header.index.to_string());
        out.push(format!("{name}={ip}/{}", a.header.prefix_len));
    }
    Ok(out)
}

fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The directed broadcast address of `addr/prefix` (what `ip addr add … brd +` sets).
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
    fn broadcast_addresses() {
        let a = Ipv4Addr::new(10, 77, 0, 1);
        assert_eq!(broadcast(a, 24), Ipv4Addr::new(10, 77, 0, 255));
        assert_eq!(broadcast(a, 16), Ipv4Addr::new(10, 77, 255, 255));
        assert_eq!(broadcast(a, 32), a);
        assert_eq!(broadcast(a, 0), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn loopback_has_no_global_address_and_lo_has_an_index() {
        assert_eq!(index("lo").unwrap(), 1);
        // Whatever this host has, the dump parses and never lists loopback's host scope.
        let addrs = global_ipv4().unwrap();
        assert!(addrs.iter().all(|a| !a.starts_with("lo=127.")), "{addrs:?}");
        assert!(index("cairn-no-such-if").is_err());
    }

    /// In a network namespace of its own (one thread's): up, address, route, removal.
    #[test]
    fn configures_loopback_in_a_namespace_of_its_own() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root for a network namespace");
            return;
        }
        let t = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            link_up("lo").unwrap();
            let a: IpAddr = "10.201.0.7".parse().unwrap();
            replace_address("lo", a, 24, Some(600)).unwrap();
            replace_address("lo", a, 24, Some(600)).unwrap();
            assert_eq!(global_ipv4().unwrap(), vec!["lo=10.201.0.7/24".to_string()]);
            replace_default_route("lo", "10.201.0.1".parse().unwrap()).unwrap();
            let e = replace_default_route("lo", "192.0.2.1".parse().unwrap()).unwrap_err();
            assert!(
                e.to_string().contains("default route via 192.0.2.1 on lo"),
                "{e}"
            );
            delete_address("lo", a, 24).unwrap();
            assert!(global_ipv4().unwrap().is_empty());
        });
        t.join().unwrap();
    }
}
