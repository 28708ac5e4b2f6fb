//! Zero-touch cluster formation with real cairnd processes: each runs in its own network
//! namespace, all plugged into a bridge in another namespace, each given the same cluster
//! seed in its preseed. With no API call they form a three-member cluster; a fourth
//! started later joins by itself; one with another secret stays out. Needs root; skipped
//! with a note otherwise. Nothing leaves the namespaces the test creates.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;

#[path = "common/netns.rs"]
mod netns;
use netns::{ip, Namespaces};

const SECRET: &str = "correct horse battery staple";
const WRONG_SECRET: &str = "not the cluster's secret at all";

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

impl Member {
    fn log(&self) -> String {
        std::fs::read_to_string(self.state.with_extension("log")).unwrap_or_default()
    }

    /// GET over the member's unix socket (reachable from the host's namespace).
    fn get(&self, path: &str) -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-s", "-m", "3", "--unix-socket"])
            .arg(self.state.join("unix.socket"))
            .arg(format!("http://cairn{path}"))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Members this member sees as Online in its cluster.
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
}

fn start_member(
    root: &Path,
    pid: u32,
    bridge_ns: &str,
    ns: &mut Namespaces,
    i: u8,
    secret: &str,
) -> Member {
    let node_ns = format!("cairn-aj-{pid}-n{i}");
    ns.add(&node_ns);
    let port = format!("v{i}");
    ip(&[
        "-n", bridge_ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
        &node_ns,
    ]);
    ip(&["-n", bridge_ns, "link", "set", &port, "master", "br0", "up"]);
    let addr = format!("10.214.9.{i}");
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
             cluster:\n  name: rack1\n  secret: \"{secret}\"\n  founders: 3\n  \
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

#[test]
fn members_with_one_seed_form_a_cluster_by_themselves() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED autojoin_netns: needs root to create network namespaces");
        return;
    }
    let pid = std::process::id();
    let root = TempDir::new("cairn-autojoin");
    let bridge_ns = format!("cairn-aj-{pid}-br");
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

    let started = Instant::now();
    let mut members: Vec<Member> = (1..=3)
        .map(|i| start_member(root.path(), pid, &bridge_ns, &mut ns, i, SECRET))
        .collect();
    let three = vec!["node1".to_string(), "node2".into(), "node3".into()];
    let formed = wait_until(Duration::from_secs(60), || {
        members.iter().all(|m| m.online() == three)
    });
    let logs = |ms: &[Member]| {
        ms.iter()
            .map(|m| format!("--- {}:\n{}", m.name, m.log()))
            .collect::<String>()
    };
    assert!(
        formed,
        "no three-member cluster formed; logs:\n{}",
        logs(&members)
    );
    println!(
        "three members formed their cluster, all Online, {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    // node1 has the smallest name: it founded the cluster.
    let v = members[0].get("/1.0/cluster").unwrap();
    assert_eq!(v["metadata"]["server_name"], "node1");

    // A fourth member started later joins by itself.
    let late = Instant::now();
    members.push(start_member(
        root.path(),
        pid,
        &bridge_ns,
        &mut ns,
        4,
        SECRET,
    ));
    let four = vec![
        "node1".to_string(),
        "node2".into(),
        "node3".into(),
        "node4".into(),
    ];
    let joined = wait_until(Duration::from_secs(60), || members[0].online() == four);
    assert!(joined, "node4 did not join; logs:\n{}", logs(&members));
    println!(
        "a fourth member joined, all Online, {:.1} s after its start",
        late.elapsed().as_secs_f64()
    );

    // One with another secret is ignored: it forms nothing and joins nothing.
    let stranger = start_member(root.path(), pid, &bridge_ns, &mut ns, 5, WRONG_SECRET);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        members[0].online(),
        four,
        "a member with another secret got in"
    );
    let v = stranger.get("/1.0/cluster").expect("the stranger answers");
    assert_eq!(v["metadata"]["enabled"], false, "{}", stranger.log());

    // A restarted member comes back by itself.
    let restarted = members.remove(1);
    drop(restarted);
    members.insert(1, {
        let state = root.path().join("node2");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(state.with_extension("log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("cairn-aj-{pid}-n2")])
            .arg(env!("CARGO_BIN_EXE_cairnd"))
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("restarting cairnd");
        Member {
            name: "node2".into(),
            state,
            child,
        }
    });
    let back = wait_until(Duration::from_secs(60), || members[1].online() == four);
    assert!(back, "node2 did not come back; logs:\n{}", logs(&members));
    drop(stranger);
    drop(members);
}
