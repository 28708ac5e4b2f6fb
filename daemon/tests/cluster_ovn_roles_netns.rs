//! The OVN databases follow the cluster's Raft voters, with the real incus CLI: four
//! members in network namespaces of their own (see `common/ovn_cluster.rs`), cairnd running
//! the OVN control plane (the appliance's `ovn:` preseed). The three voters hold the
//! clustered northbound and southbound databases and the standby none; when a voter's
//! machine dies the standby is promoted and joins the databases while the dead one is
//! kicked; the dead member, back, finds itself a standby and drops its stale files; a
//! member removed from the cluster while running stops all its OVN daemons and its chassis
//! goes, and the member promoted in its place joins the databases again. The northbound
//! database takes writes, and keeps them, through all of it.
//! Needs root and Debian's ovn-central, ovn-host and openvswitch-switch.

#[path = "common/cluster.rs"]
mod cluster_fixture;
mod common;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/ovn.rs"]
mod ovn;
#[path = "common/ovn_cluster.rs"]
mod ovn_cluster;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use cluster_fixture::*;
use netns::{in_ns, tools_present, Namespaces};
use ovn_cluster::{chassis_names, cluster_status, hub_members, ovn_logs, ovs_env, OvnReaper};

/// The member names with the `database` (voter) role, once all listed members are online.
fn voters(c: &Cluster, via: usize) -> Result<BTreeSet<String>, String> {
    let list = c.m[via].members()?;
    Ok(list
        .iter()
        .filter(|(_, s, r)| s == "Online" && r.iter().any(|r| r == "database"))
        .map(|(n, _, _)| n.clone())
        .collect())
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The Raft addresses' hosts of the servers in member `m`'s `cluster/status` of `db`.
fn servers(c: &Cluster, m: usize, db: &str) -> BTreeSet<String> {
    cluster_status(c, m, db)
        .lines()
        .filter_map(|l| l.split(" at tcp:").nth(1)?.split(':').next())
        .map(String::from)
        .collect()
}

/// Whether the daemon of member `m`'s pid file `name` (`nb`, `sb`, `northd`, `controller`)
/// runs.
fn runs(c: &Cluster, m: usize, name: &str) -> bool {
    let pidfile = c.m[m].d.state.join(format!("ovn/{name}.pid"));
    std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
}

fn hosts(v: &[u8]) -> BTreeSet<String> {
    v.iter().map(|i| format!("192.0.2.{i}")).collect()
}

/// An `ovn-nbctl` write through the northbound servers at `hosts`, run in `ns`.
fn nb_write(ns: &str, hosts: &[u8], args: &[&str]) -> String {
    let db = hosts
        .iter()
        .map(|i| format!("tcp:192.0.2.{i}:6641"))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = vec!["ovn-nbctl", "--timeout=30"];
    let dbarg = format!("--db={db}");
    cmd.push(&dbarg);
    cmd.extend(args);
    in_ns(ns, &cmd)
}

fn wait(c: &Cluster, what: &str, secs: u64, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let r = f();
        match r {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => panic!(
                "timed out waiting for {what}: {e}\n{}\n{}",
                c.logs(),
                ovn_logs(c)
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn expect<T: PartialEq + std::fmt::Debug>(got: T, want: &T) -> Result<(), String> {
    (got == *want)
        .then_some(())
        .ok_or_else(|| format!("{got:?}, want {want:?}"))
}

#[test]
fn the_ovn_databases_follow_the_raft_voters() {
    tools_present();
    ovn::need_tools();
    let mut ns = Namespaces(vec![]);
    let (members, stacks) = hub_members(&mut ns, "cairnor", 4);
    let mut c = Cluster::start_in_netns_with(&members, Some("ovn: {}\n"), &ovs_env(&stacks));
    let reapers = OvnReaper::of(&c);
    c.form();
    let started = std::time::Instant::now();

    // Three voters hold the databases; the standby runs only ovn-controller.
    wait(&c, "voters node1-3", 90, || {
        expect(voters(&c, 0)?, &names(&["node1", "node2", "node3"]))
    });
    for db in ["nb", "sb"] {
        wait(&c, &format!("{db} servers on node1-3"), 90, || {
            expect(servers(&c, 0, db), &hosts(&[1, 2, 3]))
        });
    }
    eprintln!(
        "OVN databases on the three voters {:.1} s after the cluster formed",
        started.elapsed().as_secs_f64()
    );
    wait(&c, "node4's ovn-controller", 60, || {
        expect(runs(&c, 3, "controller"), &true)
    });
    for f in ["nb", "sb", "northd"] {
        assert!(!runs(&c, 3, f), "the standby runs {f}");
    }
    assert!(!c.m[3].d.state.join("ovn/nb.db").exists());
    nb_write(&members[0].0, &[1, 2, 3], &["ls-add", "probe1"]);

    // node3's machine dies: node4 is promoted, joins the databases, and node3's servers
    // are kicked, so the majority counts live servers.
    c.ok(
        &c.m[0],
        &["config", "set", "cluster.offline_threshold", "5"],
    );
    c.m[2].d.kill9();
    reapers[2].kill();
    let cut = std::time::Instant::now();
    wait(&c, "node4 promoted", 90, || {
        expect(voters(&c, 0)?, &names(&["node1", "node2", "node4"]))
    });
    for db in ["nb", "sb"] {
        wait(
            &c,
            &format!("{db} servers on node1, node2, node4"),
            90,
            || expect(servers(&c, 0, db), &hosts(&[1, 2, 4])),
        );
    }
    eprintln!(
        "a dead voter's database servers replaced {:.1} s after it died",
        cut.elapsed().as_secs_f64()
    );
    assert!(runs(&c, 3, "northd"), "the new voter runs no ovn-northd");
    nb_write(&members[0].0, &[1, 2, 4], &["ls-add", "probe2"]);

    // node3 comes back as a standby: its stale database files go, its chassis stays.
    c.m[2].d.spawn();
    wait(&c, "node3's stale databases dropped", 90, || {
        let left: Vec<&str> = ["nb", "sb", "northd"]
            .into_iter()
            .filter(|f| runs(&c, 2, f))
            .collect();
        let files = c.m[2].d.state.join("ovn/nb.db").exists();
        expect((left, files), &(vec![], false))
    });
    wait(&c, "node3's ovn-controller", 60, || {
        expect(runs(&c, 2, "controller"), &true)
    });

    // node4 is removed while running: it stops every OVN daemon, its chassis goes, and
    // node3, promoted again, joins the databases afresh (it held them once: a join, not
    // a new cluster).
    let out = c.m[0].run_with_input(&["cluster", "remove", "node4"], "yes\n");
    assert!(
        out.status.success(),
        "cluster remove node4: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    wait(&c, "node3 promoted again", 90, || {
        expect(voters(&c, 0)?, &names(&["node1", "node2", "node3"]))
    });
    for db in ["nb", "sb"] {
        wait(&c, &format!("{db} servers on node1-3 again"), 90, || {
            expect(servers(&c, 0, db), &hosts(&[1, 2, 3]))
        });
    }
    wait(&c, "node4's OVN daemons stopped", 60, || {
        let left: Vec<&str> = ["nb", "sb", "northd", "controller"]
            .into_iter()
            .filter(|f| runs(&c, 3, f))
            .collect();
        expect(left, &vec![])
    });
    wait(&c, "node4's chassis gone", 60, || {
        let chassis: BTreeSet<String> = chassis_names(&c, 0)
            .ok_or("the southbound database did not answer")?
            .into_iter()
            .collect();
        expect(chassis, &names(&["node1", "node2", "node3"]))
    });
    nb_write(&members[0].0, &[1, 2, 3], &["ls-add", "probe3"]);
    let switches = nb_write(&members[1].0, &[1, 2, 3], &["ls-list"]);
    for p in ["probe1", "probe2", "probe3"] {
        assert!(switches.contains(p), "{p} lost: {switches}");
    }
    drop(reapers);
    drop(c);
    drop(stacks);
}
