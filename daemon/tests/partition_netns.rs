//! Writes across network partitions with real cairnd processes: three members, each in a
//! network namespace of its own, plugged into a bridge in another namespace, form a
//! cluster from one seed. A member's link is then cut by unplugging its port from the
//! bridge (packets dropped, not refused), again and again: a follower, then the leader.
//! Each time the first write through the majority after the cut is acknowledged with no
//! error, the isolated member refuses writes, and after the heal every member holds every
//! acknowledged write and none that was refused. Needs root; fails without it.
//!
//! `CAIRN_PARTITION_LEADER_CUTS` sets how many times the leader is cut (default 10).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;

#[path = "common/netns.rs"]
mod netns;
use netns::{ip, Namespaces};

const SECRET: &str = "partition test join secret";
const FOLLOWER_CUTS: usize = 3;

struct Member {
    name: String,
    state: PathBuf,
    child: Child,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a write through the API came to.
#[derive(Debug)]
enum Outcome {
    Acked,
    Refused(String),
}

impl Member {
    fn log(&self) -> String {
        std::fs::read_to_string(self.state.with_extension("log")).unwrap_or_default()
    }

    /// A request over the member's unix socket (reachable from the host's namespace).
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Option<serde_json::Value> {
        let mut c = Command::new("curl");
        c.args(["-s", "-m", "20", "-X", method, "--unix-socket"])
            .arg(self.state.join("unix.socket"))
            .arg(format!("http://cairn{path}"));
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "-d", b]);
        }
        let out = c.output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn get(&self, path: &str) -> Option<serde_json::Value> {
        self.call("GET", path, None)
    }

    /// Creates profile `name`: one replicated write.
    fn write(&self, name: &str) -> Outcome {
        let body = format!(r#"{{"name":"{name}","config":{{}},"devices":{{}}}}"#);
        match self.call("POST", "/1.0/profiles", Some(&body)) {
            Some(v) if v["type"] == "sync" => Outcome::Acked,
            Some(v) => Outcome::Refused(format!("{} {}", v["error_code"], v["error"])),
            None => Outcome::Refused("no answer".into()),
        }
    }

    fn profiles(&self) -> Option<BTreeSet<String>> {
        let v = self.get("/1.0/profiles")?;
        Some(
            v["metadata"]
                .as_array()?
                .iter()
                .filter_map(|p| p.as_str()?.rsplit('/').next().map(String::from))
                .collect(),
        )
    }

    fn online(&self) -> Vec<String> {
        let Some(v) = self.get("/1.0/cluster/members?recursion=1") else {
            return vec![];
        };
        let mut names: Vec<String> = v["metadata"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|m| m["status"] == "Online")
                    .filter_map(|m| m["server_name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The members this member counts as Raft voters (role `database`).
    fn voters(&self) -> Vec<String> {
        let Some(v) = self.get("/1.0/cluster/members?recursion=1") else {
            return vec![];
        };
        let mut names: Vec<String> = v["metadata"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|m| {
                        m["roles"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|r| r == "database"))
                    })
                    .filter_map(|m| m["server_name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The member this member names as the database leader.
    fn leader(&self) -> Option<String> {
        let v = self.get("/1.0/cluster/members?recursion=1")?;
        v["metadata"].as_array()?.iter().find_map(|m| {
            let leads = m["roles"]
                .as_array()?
                .iter()
                .any(|r| r == "database-leader");
            leads.then(|| m["server_name"].as_str().map(String::from))?
        })
    }
}

struct Lab {
    pid: u32,
    bridge_ns: String,
    _ns: Namespaces,
    members: Vec<Member>,
    _root: TempDir,
}

impl Lab {
    fn start() -> Lab {
        let pid = std::process::id();
        let root = TempDir::new("cairn-partition");
        let bridge_ns = format!("cairn-pt-{pid}-br");
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
        let members = (1..=3)
            .map(|i| start_member(root.path(), pid, &bridge_ns, &mut ns, i))
            .collect();
        Lab {
            pid,
            bridge_ns,
            _ns: ns,
            members,
            _root: root,
        }
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {}:\n{}", m.name, tail(&m.log(), 60)))
            .collect()
    }

    fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|m| m.name == name).unwrap()
    }

    fn port(i: usize) -> String {
        format!("v{}", i + 1)
    }

    /// Unplugs member `i` from the bridge: its frames go nowhere and nothing reaches it,
    /// with no error on either side (as a pulled cable or a dead switch port).
    fn cut(&self, i: usize) {
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &Lab::port(i),
            "nomaster",
        ]);
    }

    fn heal(&self, i: usize) {
        ip(&[
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            &Lab::port(i),
            "master",
            "br0",
        ]);
    }

    /// Waits until every member takes a write again and all hold the same profiles,
    /// `acked` among them; the probe writes join `acked`.
    fn converge(&self, acked: &mut BTreeSet<String>, round: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for m in &self.members {
            let name = format!("probe-{round}-{}", m.name);
            loop {
                match m.write(&name) {
                    Outcome::Acked => break,
                    Outcome::Refused(e) if Instant::now() < deadline => {
                        eprintln!("{round}: {} not writable yet: {e}", m.name);
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    Outcome::Refused(e) => panic!(
                        "{round}: {} takes no write after the heal: {e}\n{}",
                        m.name,
                        self.logs()
                    ),
                }
            }
            acked.insert(name);
        }
        loop {
            let views: Vec<Option<BTreeSet<String>>> =
                self.members.iter().map(Member::profiles).collect();
            let same = views.iter().all(|v| v.is_some() && *v == views[0]);
            if same && views[0].as_ref().is_some_and(|v| acked.is_subset(v)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{round}: members disagree after the heal: {views:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn start_member(root: &Path, pid: u32, bridge_ns: &str, ns: &mut Namespaces, i: u8) -> Member {
    let node_ns = format!("cairn-pt-{pid}-n{i}");
    ns.add(&node_ns);
    let port = format!("v{i}");
    ip(&[
        "-n", bridge_ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
        &node_ns,
    ]);
    ip(&["-n", bridge_ns, "link", "set", &port, "master", "br0", "up"]);
    let addr = format!("10.214.10.{i}");
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

    let name = format!("node{i}");
    let state = root.join(&name);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("preseed.yaml"),
        format!(
            "config:\n  core.https_address: \"{addr}:8443\"\nserver_name: {name}\n\
             cluster:\n  name: rack1\n  secret: \"{SECRET}\"\n  founders: 3\n  \
             interface: eth0\n  formation_timeout: 20\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(state.with_extension("log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &node_ns])
        .arg(env!("CARGO_BIN_EXE_cairnd"))
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting cairnd");
    Member { name, state, child }
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    cond()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[test]
fn writes_ride_out_cut_links_and_nothing_refused_survives() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "partition_netns needs root to create network namespaces (scripts/test.sh runs as root)"
    );
    let leader_cuts: usize = std::env::var("CAIRN_PARTITION_LEADER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let lab = Lab::start();
    let three = vec!["node1".to_string(), "node2".into(), "node3".into()];
    let formed = wait_until(Duration::from_secs(60), || {
        lab.members.iter().all(|m| m.online() == three)
    });
    assert!(formed, "no three-member cluster formed:\n{}", lab.logs());
    // Online is the liveness heartbeat; a member may answer it while it is still a
    // learner, and cutting one of two voters leaves no majority. The rounds start
    // once every member counts all three as voters.
    let formed = wait_until(Duration::from_secs(60), || {
        lab.members.iter().all(|m| m.voters() == three)
    });
    assert!(
        formed,
        "the three members never all became voters:\n{}",
        lab.logs()
    );

    let mut acked = BTreeSet::new();
    let mut refused = BTreeSet::new();
    lab.converge(&mut acked, "formed");

    let index = |name: &str| lab.members.iter().position(|m| m.name == name).unwrap();
    let leader_now = || {
        let mut leader = None;
        let found = wait_until(Duration::from_secs(30), || {
            leader = lab.members[0].leader();
            leader.is_some()
        });
        assert!(found, "no leader named:\n{}", lab.logs());
        leader.unwrap()
    };

    let mut follower_cut_acks = Vec::new();
    let mut leader_cut_acks = Vec::new();
    let mut refusals = Vec::new();
    let plan: Vec<bool> = (0..FOLLOWER_CUTS)
        .map(|_| false)
        .chain((0..leader_cuts).map(|_| true))
        .collect();
    for (n, cut_leader) in plan.into_iter().enumerate() {
        let leader = leader_now();
        let cut_name = if cut_leader {
            leader.clone()
        } else {
            lab.members
                .iter()
                .map(|m| m.name.clone())
                .find(|m| *m != leader)
                .unwrap()
        };
        // A member of the majority that is not the leader, if the leader is cut (the
        // write must be forwarded to a leader the member has not heard of yet).
        let writer_name = lab
            .members
            .iter()
            .map(|m| m.name.clone())
            .find(|m| *m != cut_name && (!cut_leader || *m != leader))
            .unwrap();
        let round = format!(
            "round{n}-{}",
            if cut_leader { "leader" } else { "follower" }
        );
        let i = index(&cut_name);

        lab.cut(i);
        let cut_at = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let name = format!("{round}-through-{writer_name}");
        match lab.member(&writer_name).write(&name) {
            Outcome::Acked => {}
            Outcome::Refused(e) => panic!(
                "{round}: the first write after cutting {cut_name} failed through \
                 {writer_name} ({} after the cut): {e}\n{}",
                secs(cut_at.elapsed()),
                lab.logs()
            ),
        }
        let acked_after = cut_at.elapsed();
        acked.insert(name);
        if cut_leader {
            leader_cut_acks.push(acked_after);
        } else {
            follower_cut_acks.push(acked_after);
        }

        // The isolated member cannot commit: it must say so, not pretend.
        let lost = format!("{round}-through-isolated-{cut_name}");
        let t = Instant::now();
        match lab.member(&cut_name).write(&lost) {
            Outcome::Refused(e) => {
                refusals.push(t.elapsed());
                eprintln!(
                    "{round}: isolated {cut_name} refused in {}: {e}",
                    secs(t.elapsed())
                );
            }
            Outcome::Acked => panic!(
                "{round}: isolated {cut_name} acknowledged a write\n{}",
                lab.logs()
            ),
        }
        refused.insert(lost);

        lab.heal(i);
        lab.converge(&mut acked, &round);
        for m in &lab.members {
            let held = m.profiles().unwrap();
            let missing: Vec<_> = acked.difference(&held).collect();
            let survived: Vec<_> = refused.intersection(&held).collect();
            assert!(missing.is_empty(), "{round}: {} lost {missing:?}", m.name);
            assert!(
                survived.is_empty(),
                "{round}: {} holds refused writes {survived:?}\n{}",
                m.name,
                lab.logs()
            );
        }
        println!(
            "{round}: cut {cut_name}, first write through {writer_name} acknowledged {} \
             after the cut",
            secs(acked_after)
        );
    }
    let worst = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    println!(
        "first write after a follower cut: worst {} of {}; after a leader cut: worst {} of {} \
         (median {}); isolated member refused within {} at worst; {} acknowledged writes \
         on every member, {} refused ones on none (pid {})",
        secs(worst(&follower_cut_acks)),
        follower_cut_acks.len(),
        secs(worst(&leader_cut_acks)),
        leader_cut_acks.len(),
        secs({
            let mut v = leader_cut_acks.clone();
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or_default()
        }),
        secs(worst(&refusals)),
        acked.len(),
        refused.len(),
        lab.pid,
    );
}
