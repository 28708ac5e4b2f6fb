//! Cluster members for OVN tests, each in a network namespace of its own with its own Open
//! vSwitch (userspace datapath, what cairn-init runs on the appliance), their management
//! addresses `192.0.2.<i>` on a hub bridge; and what a test needs around cairnd's OVN
//! daemons (which outlive it by design): a reaper and their logs. Included by path, with
//! `cluster_fixture`, `netns` and `ovn`.

#![allow(dead_code)]

use std::process::Command;

use crate::cluster_fixture::{tail, Cluster};
use crate::netns::{ip, Namespaces};
use crate::ovn::OvnStack;

/// `n` members' namespaces `<prefix><pid>m<i>` on hub `<prefix><pid>h`: `(namespace,
/// management address)` each, and their Open vSwitch stacks (stopped on drop).
pub fn hub_members(
    ns: &mut Namespaces,
    prefix: &str,
    n: usize,
) -> (Vec<(String, String)>, Vec<OvnStack>) {
    let pid = std::process::id();
    let hub = format!("{prefix}{pid}h");
    ns.add(&hub);
    ip(&["-n", &hub, "link", "add", "hub0", "type", "bridge"]);
    ip(&["-n", &hub, "link", "set", "hub0", "up"]);
    let mut members = Vec::new();
    let mut stacks = Vec::new();
    for i in 1..=n {
        let m = format!("{prefix}{pid}m{i}");
        ns.add(&m);
        let port = format!("h{i}");
        ip(&[
            "-n", &m, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &hub,
        ]);
        ip(&["-n", &hub, "link", "set", &port, "master", "hub0", "up"]);
        ip(&["-n", &m, "link", "set", "eth0", "up"]);
        ip(&["-n", &m, "link", "set", "lo", "up"]);
        let addr = format!("192.0.2.{i}");
        stacks.push(OvnStack::ovs_only(
            &m,
            &format!("{prefix}m{i}"),
            "eth0",
            &format!("{addr}/24"),
        ));
        members.push((m, addr));
    }
    (members, stacks)
}

/// Each member's environment: its own Open vSwitch.
pub fn ovs_env(stacks: &[OvnStack]) -> Vec<Vec<(String, String)>> {
    stacks
        .iter()
        .map(|s| vec![("OVS_RUNDIR".to_string(), s.dir.display().to_string())])
        .collect()
}

/// Stops the OVN daemons a cairnd started (they outlive it by design), by their pid files.
pub struct OvnReaper(pub std::path::PathBuf);

impl OvnReaper {
    pub fn of(c: &Cluster) -> Vec<OvnReaper> {
        c.m.iter()
            .map(|m| OvnReaper(m.d.state.join("ovn")))
            .collect()
    }

    /// Kills them now, as a machine dying would.
    pub fn kill(&self) {
        let Ok(rd) = std::fs::read_dir(&self.0) else {
            return;
        };
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "pid") {
                if let Ok(pid) = std::fs::read_to_string(e.path()) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).output();
                }
            }
        }
    }
}

impl Drop for OvnReaper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The OVN daemons' logs of every member, for a failure's message.
pub fn ovn_logs(c: &Cluster) -> String {
    let mut out = String::new();
    for m in &c.m {
        let dir = m.d.state.join("ovn");
        for f in ["nb", "sb", "northd", "controller"] {
            let t = std::fs::read_to_string(dir.join(format!("{f}.log"))).unwrap_or_default();
            out += &format!("--- {} {f}.log ---\n{}\n", m.name, tail(&t, 15));
        }
    }
    out
}

/// `cluster/status` of member `m`'s server of `db` (`nb` or `sb`); empty when none answers.
pub fn cluster_status(c: &Cluster, m: usize, db: &str) -> String {
    let name = if db == "nb" {
        "OVN_Northbound"
    } else {
        "OVN_Southbound"
    };
    let ctl = c.m[m].d.state.join(format!("ovn/{db}.ctl"));
    Command::new("ovs-appctl")
        .args(["-t", &ctl.display().to_string(), "cluster/status", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The chassis names in member `m`'s view of the southbound database (`None`: it did not
/// answer).
pub fn chassis_names(c: &Cluster, m: usize) -> Option<Vec<String>> {
    let sb = format!("unix:{}", c.m[m].d.state.join("ovn/sb.sock").display());
    let out = Command::new("ovn-sbctl")
        .args([
            &format!("--db={sb}"),
            "--no-leader-only",
            "--timeout=5",
            "--bare",
            "--columns=name",
            "list",
            "chassis",
        ])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect()
    })
}
