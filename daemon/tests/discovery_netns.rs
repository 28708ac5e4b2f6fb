//! Cluster discovery on a real (virtual) link: a bridge in its own network namespace and
//! four member namespaces plugged into it with veth pairs. Three members share the secret,
//! a fourth has another one. Needs root (namespaces); skipped with a note otherwise.
//! Nothing leaves the namespaces this test creates.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use cairnd::cluster::discovery::{self, Decision, Discovery, DiscoveryConfig, Peer, DEFAULT_GROUP};
use nix::sched::CloneFlags;

#[path = "common/netns.rs"]
mod netns;
use netns::{ip, Namespaces};

const CLUSTER: &str = "rack1";
const SECRET: &str = "correct horse battery staple";
const WRONG_SECRET: &str = "some other secret entirely";
const PORT: u16 = 8444;
const FOUNDERS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A discovery socket created inside namespace `ns`: a thread enters it, binds, and hands
/// the socket back (a socket stays in the namespace it was created in).
fn socket_in(ns: &str) -> UdpSocket {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
        discovery::bind_socket("eth0", DEFAULT_GROUP, PORT).expect("bind_socket")
    })
    .join()
    .expect("socket thread")
}

fn fingerprint(i: u8) -> String {
    format!("{i:02x}").repeat(32)
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond()
}

fn names(peers: &BTreeMap<String, Peer>) -> Vec<String> {
    peers.keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_find_each_other_and_agree_on_a_founder() {
    // Shows discovery's own logs (e.g. the wrong-secret warning) in a failure's output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED discovery_netns: needs root to create network namespaces");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIPPED discovery_netns: needs ip (iproute2)");
        return;
    }
    let pid = std::process::id();
    let bridge_ns = format!("cairn-disc-{pid}-br");
    let mut ns = Namespaces(Vec::new());
    ns.add(&bridge_ns);
    ip(&[
        "-n",
        &bridge_ns,
        "link",
        "add",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "0",
    ]);
    ip(&["-n", &bridge_ns, "link", "set", "br0", "up"]);

    // node-a has the wrong secret and the smallest name: were it accepted, it would be
    // chosen as founder, so the founder check below also catches a leak.
    let members = ["node-a", "node-b", "node-c", "node-d"];
    let mut discoveries = Vec::new();
    for (i, member) in members.iter().enumerate() {
        let i = i as u8 + 1;
        let node_ns = format!("cairn-disc-{pid}-n{i}");
        ns.add(&node_ns);
        let port = format!("v{i}");
        ip(&[
            "-n", &bridge_ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
            "netns", &node_ns,
        ]);
        ip(&[
            "-n", &bridge_ns, "link", "set", &port, "master", "br0", "up",
        ]);
        let addr = Ipv4Addr::new(10, 213, 7, i);
        ip(&[
            "-n",
            &node_ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &node_ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &node_ns, "link", "set", "lo", "up"]);

        let secret = if *member == "node-a" {
            WRONG_SECRET
        } else {
            SECRET
        };
        let mut config = DiscoveryConfig::new(
            CLUSTER,
            secret,
            member,
            (addr, 8443).into(),
            &fingerprint(i),
        );
        config.interface = Some("eth0".into());
        config.port = PORT;
        let d = Discovery::from_socket(config, socket_in(&node_ns)).expect("from_socket");
        discoveries.push(d);
    }
    let wrong = &discoveries[0];
    let good = &discoveries[1..];

    // The three with the right secret see each other, and only each other. node-a's
    // first announcement may leave before a later member's socket exists, so wait for
    // one of its periodic ones to reach everybody too.
    let all_see_two = wait_for(Duration::from_secs(8), || {
        good.iter()
            .all(|d| d.peers().borrow().len() == 2 && d.stats().wrong_secret > 0)
    })
    .await;
    for (d, me) in good.iter().zip(&members[1..]) {
        let peers = d.peers().borrow().clone();
        let expected: Vec<String> = members[1..]
            .iter()
            .filter(|m| *m != me)
            .map(|m| m.to_string())
            .collect();
        assert!(
            all_see_two,
            "{me} sees {:?}, stats {:?}",
            names(&peers),
            d.stats()
        );
        assert_eq!(names(&peers), expected, "{me}");
        for p in peers.values() {
            let i = members.iter().position(|m| *m == p.name).unwrap() as u8 + 1;
            assert_eq!(p.api_address, (Ipv4Addr::new(10, 213, 7, i), 8443).into());
            assert_eq!(p.fingerprint, fingerprint(i));
            assert_eq!(p.source.ip(), std::net::IpAddr::from([10, 213, 7, i]));
        }
        // node-a's announcements did arrive, and were refused.
        assert!(d.stats().wrong_secret > 0, "{me}: {:?}", d.stats());
        assert_eq!(d.stats().malformed, 0, "{me}: {:?}", d.stats());
    }
    // The wrong secret sees nobody, although it receives everything.
    assert!(
        wrong.peers().borrow().is_empty(),
        "{:?}",
        wrong.peers().borrow()
    );
    assert!(wrong.stats().wrong_secret > 0, "{:?}", wrong.stats());
    assert_eq!(wrong.stats().accepted, 0);

    // Everyone with the secret picks the same founder once settled; node-a waits forever.
    assert!(
        wait_for(Duration::from_secs(5), || good
            .iter()
            .all(|d| d.decide(FOUNDERS, TIMEOUT) != Decision::Wait))
        .await
    );
    for d in good {
        assert_eq!(
            d.decide(FOUNDERS, TIMEOUT),
            Decision::Founder("node-b".into())
        );
    }
    assert_eq!(wrong.decide(FOUNDERS, TIMEOUT), Decision::Wait);

    // The founder announces that it formed the cluster; the others learn it.
    good[0].set_formed(true);
    assert!(
        wait_for(Duration::from_secs(3), || good[1..].iter().all(|d| d
            .peers()
            .borrow()
            .get("node-b")
            .is_some_and(|p| p.formed)))
        .await
    );

    // A member that stops is forgotten after the peer timeout (5 s).
    drop(discoveries.pop()); // node-d
    assert!(
        wait_for(Duration::from_secs(8), || discoveries[1..]
            .iter()
            .all(|d| !d.peers().borrow().contains_key("node-d")))
        .await,
        "node-d still seen"
    );
    drop(discoveries);
    drop(ns);
}
