//! cairn-init's own DHCPv4 client: one thread per NIC that the seed puts on DHCP.
//!
//! It replaced a supervised dhcpcd, which took 2.5 s under TCG from its start to its first
//! DISCOVER (loading, privilege separation, its own timers) while the API waited for the
//! address; this client sends its DISCOVER within milliseconds of the link coming up.
//! What it does: DISCOVER → OFFER → REQUEST → ACK, then the address with the lease's
//! lifetime (so the kernel drops it if nobody renews), the routes (classless static routes,
//! else the first router as the default route) and the MTU; renewal at T1 by unicast,
//! rebinding at T2 by broadcast, and giving the address up when the lease ends or the
//! server says NAK. The ACK is kept in [`LEASE_DIR`] for resolv.conf (see `lease.rs`).
//! Not done: ARP probing of the offered address, INIT-REBOOT, releasing at shutdown (a
//! node that comes back wants the same address).
//!
//! The protocol logic is in [`machine`] (no I/O), the wire format in [`message`], the
//! sockets in [`socket`].

pub mod machine;
pub mod message;
pub mod socket;

use crate::{info, netlink};
use machine::{Action, Client, Lease};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where each NIC's current lease (the server's ACK, as sent) is kept: `IFACE.lease`.
pub const LEASE_DIR: &str = "/run/cairn/dhcp";

/// Starts the client for `iface` in a thread of its own (in the caller's network
/// namespace), keeping its lease in `lease_dir`; it runs for the life of the process and
/// starts over (after a pause) if anything fails or panics.
pub fn spawn(iface: String, hostname: Option<String>, lease_dir: std::path::PathBuf) {
    let name = format!("dhcp-{iface}");
    let r = std::thread::Builder::new().name(name).spawn(move || loop {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(&iface, hostname.clone(), &lease_dir)
        }));
        match run {
            Ok(Err(e)) => info!("dhcp {iface}: {e}; starting over in 5 s"),
            Ok(Ok(())) => {}
            Err(_) => info!("dhcp {iface}: the client panicked; starting over in 5 s"),
        }
        std::thread::sleep(Duration::from_secs(5));
    });
    if let Err(e) = r {
        info!("dhcp: starting the client thread: {e}");
    }
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a local buffer of its length; GRND_NONBLOCK never waits for
    // the pool (transaction ids need no secrecy).
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 8, libc::GRND_NONBLOCK) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u64::from(std::process::id()) ^ t.as_nanos() as u64
    }
}

fn run(iface: &str, hostname: Option<String>, lease_dir: &Path) -> std::io::Result<()> {
    let index = netlink::index(iface)?;
    let mac = netlink::mac(iface)?;
    let sockets = socket::Sockets::open(iface, index)?;
    // Bounded: a NIC without carrier still gets its DISCOVERs, retransmitted.
    let until = Instant::now() + Duration::from_secs(3);
    while !netlink::oper_up(iface).unwrap_or(true) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut client = Client::new(mac, hostname, seed(), Instant::now());
    let mut actions = client.start(Instant::now());
    loop {
        for a in actions.drain(..) {
            perform(iface, &sockets, lease_dir, a);
        }
        let now = Instant::now();
        let wait = client
            .deadline()
            .saturating_duration_since(now)
            .min(Duration::from_secs(60));
        match sockets.receive(wait)? {
            Some(m) => actions = client.on_message(&m, Instant::now()),
            None => actions = client.on_timeout(Instant::now()),
        }
    }
}

fn perform(iface: &str, sockets: &socket::Sockets, lease_dir: &Path, a: Action) {
    let sent = match &a {
        Action::Broadcast(m) => Some(sockets.broadcast(m)),
        Action::Unicast(to, m) => Some(sockets.send(*to, m)),
        _ => None,
    };
    if let Some(Err(e)) = sent {
        info!("dhcp {iface}: sending: {e}");
    }
    match a {
        Action::Configure(lease) => configure(iface, &lease, lease_dir),
        Action::Deconfigure(lease) => {
            info!("dhcp {iface}: lease on {} ended", lease.address);
            if let Err(e) = netlink::delete_address(iface, lease.address.into(), lease.prefix) {
                info!("dhcp {iface}: {e}");
            }
            let _ = std::fs::remove_file(lease_dir.join(format!("{iface}.lease")));
        }
        _ => {}
    }
}

fn configure(iface: &str, lease: &Lease, dir: &Path) {
    let now = Instant::now();
    let log = |r: std::io::Result<()>| {
        if let Err(e) = r {
            info!("dhcp {iface}: {e}");
        }
    };
    if let Some(mtu) = lease.ack.mtu() {
        log(netlink::set_mtu(iface, u32::from(mtu)));
    }
    log(netlink::replace_address(
        iface,
        lease.address.into(),
        lease.prefix,
        lease.remaining_s(now),
    ));
    // RFC 3442: with classless static routes, the router option is ignored.
    match lease.ack.classless_routes() {
        Some(routes) => {
            for r in routes {
                let gw = (!r.gateway.is_unspecified()).then_some(IpAddr::V4(r.gateway));
                log(netlink::replace_route(iface, r.dest, r.prefix, gw));
            }
        }
        None => {
            if let Some(gw) = lease.ack.routers().first() {
                log(netlink::replace_default_route(iface, (*gw).into()));
            }
        }
    }
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{iface}.lease"));
    let tmp = dir.join(format!(".{iface}.lease.tmp"));
    if let Err(e) =
        std::fs::write(&tmp, lease.ack.encode()).and_then(|_| std::fs::rename(&tmp, &path))
    {
        info!("dhcp {iface}: keeping the lease in {}: {e}", path.display());
    }
    let time = match lease.remaining_s(now) {
        Some(s) => format!("for {s} seconds"),
        None => "for ever".to_string(),
    };
    info!(
        "dhcp {iface}: leased {}/{} from {} {time}",
        lease.address, lease.prefix, lease.server
    );
}
