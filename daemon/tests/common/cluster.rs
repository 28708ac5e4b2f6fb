//! The cluster fixture the cluster tests share: cairnd processes on 127.0.0.1, .2, .3 (one
//! port, as members of a real cluster would share it) driven through the real incus CLI.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::{self, TestDaemon};
use serde_json::Value;
/// Every incus call is killed after this long: a wedged cluster fails the test instead of
/// hanging it (evacuation stops and moves containers, hence the margin).
pub const CALL_TIMEOUT: u64 = 180;

/// A port free on every given loopback address; never the same twice in this process,
/// because the tests here run in parallel and each forms its own cluster.
pub fn free_port_on(addrs: &[&str]) -> u16 {
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = common::free_port();
        let free = addrs
            .iter()
            .all(|a| std::net::TcpListener::bind((*a, port)).is_ok());
        let mut taken = TAKEN.lock().unwrap();
        if free && taken.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub struct Member {
    pub name: String,
    pub address: String,
    pub d: TestDaemon,
}

impl Member {
    pub fn run(&self, args: &[&str]) -> Output {
        self.d
            .incus_cmd_timeout(CALL_TIMEOUT, args)
            .output()
            .expect("running incus")
    }

    /// `incus` with `input` on its stdin.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .d
            .incus_cmd_timeout(CALL_TIMEOUT, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running incus");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn preseed_join(&self, token: &str) -> Output {
        let yaml = format!(
            "cluster:\n  enabled: true\n  server_name: {}\n  server_address: {}\n  cluster_token: {}\n",
            self.name, self.address, token
        );
        self.run_with_input(&["admin", "init", "--preseed"], &yaml)
    }

    /// `incus cluster list` as (name, status, roles).
    pub fn members(&self) -> Result<Vec<(String, String, Vec<String>)>, String> {
        let out = self.run(&["cluster", "list", "--format", "json"]);
        if !out.status.success() {
            return Err(format!("cluster list: {}", text(&out.stderr)));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let list = v.as_array().ok_or("cluster list is not an array")?;
        Ok(list
            .iter()
            .map(|m| {
                let roles = m["roles"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    m["server_name"].as_str().unwrap_or("").to_string(),
                    m["status"].as_str().unwrap_or("").to_string(),
                    roles,
                )
            })
            .collect())
    }
}

pub struct Cluster {
    pub m: Vec<Member>,
}

impl Cluster {
    /// `n` standalone daemons, each listening on 127.0.0.<i>:`port`.
    pub fn start(n: usize) -> Cluster {
        let addrs: Vec<String> = (1..=n).map(|i| format!("127.0.0.{i}")).collect();
        let port = free_port_on(&addrs.iter().map(String::as_str).collect::<Vec<_>>());
        let m = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Member {
                name: format!("node{}", i + 1),
                address: format!("{a}:{port}"),
                d: TestDaemon::start(),
            })
            .collect();
        let c = Cluster { m };
        for m in &c.m {
            c.ok(m, &["config", "set", "core.https_address", &m.address]);
        }
        c
    }

    /// One daemon per network namespace, `(namespace, address)` each, all on one port:
    /// what each does to links, routes and nftables stays in its namespace.
    pub fn start_in_netns(members: &[(String, String)]) -> Cluster {
        let none: Vec<Vec<(String, String)>> = members.iter().map(|_| vec![]).collect();
        Self::start_in_netns_with(members, None, &none)
    }

    /// As [`Cluster::start_in_netns`], each daemon with `preseed` and its own `env`.
    pub fn start_in_netns_with(
        members: &[(String, String)],
        preseed: Option<&str>,
        env: &[Vec<(String, String)>],
    ) -> Cluster {
        let m = members
            .iter()
            .zip(env)
            .enumerate()
            .map(|(i, ((ns, addr), env))| Member {
                name: format!("node{}", i + 1),
                address: format!("{addr}:8443"),
                d: TestDaemon::start_in_netns_full(ns, preseed, env.clone()),
            })
            .collect();
        let c = Cluster { m };
        for m in &c.m {
            c.ok(m, &["config", "set", "core.https_address", &m.address]);
        }
        c
    }

    pub fn logs(&self) -> String {
        self.m
            .iter()
            .map(|m| {
                let log = m.d.log();
                // A panic scrolls out of the tail behind what follows it: keep it in view.
                let panics: String = log
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| l.contains("panicked"))
                    .take(3)
                    .map(|(i, l)| format!("line {i}: {l}\n"))
                    .collect();
                format!(
                    "--- {} cairnd.log (panics, then tail) ---\n{panics}{}",
                    m.name,
                    tail(&log, 40)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn ok(&self, m: &Member, args: &[&str]) -> String {
        let out = m.run(args);
        assert!(
            out.status.success(),
            "incus {args:?} on {} failed ({}): {}\n{}",
            m.name,
            out.status,
            text(&out.stderr),
            self.logs()
        );
        text(&out.stdout)
    }

    pub fn err(&self, m: &Member, args: &[&str]) -> String {
        let out = m.run(args);
        assert!(
            !out.status.success(),
            "incus {args:?} on {} should have failed but printed: {}",
            m.name,
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    /// Retries `f` every 200 ms until it gives a value or `limit` passed.
    pub fn poll<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let start = Instant::now();
        loop {
            match f() {
                Ok(v) => return v,
                Err(e) if start.elapsed() > limit => {
                    panic!("{what}: not within {limit:?}: {e}\n{}", self.logs())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// A join token for `name` from member `via` (`incus cluster add` prints it last).
    pub fn token(&self, via: &Member, name: &str) -> String {
        let out = self.ok(via, &["cluster", "add", name]);
        out.lines().last().unwrap_or("").trim().to_string()
    }

    /// Clustering enabled on the first member, the others joined with tokens.
    pub fn form(&self) {
        let first = &self.m[0];
        self.ok(first, &["cluster", "enable", &first.name]);
        for m in &self.m[1..] {
            let token = self.token(first, &m.name);
            let out = m.preseed_join(&token);
            assert!(
                out.status.success(),
                "{} joining: {}{}\n{}",
                m.name,
                text(&out.stdout),
                text(&out.stderr),
                self.logs()
            );
        }
    }

    /// Polls member `via`'s cluster list until it shows the expected members all online,
    /// one leader, and every member a database (voter) once the role keeper promoted them.
    pub fn wait_all_online(&self, via: &Member, expected: &[&str], limit: Duration) {
        self.poll("all members online voters", limit, || {
            let list = via.members()?;
            let mut names: Vec<&str> = list.iter().map(|(n, _, _)| n.as_str()).collect();
            names.sort();
            let leaders = list
                .iter()
                .filter(|(_, _, r)| r.iter().any(|r| r == "database-leader"))
                .count();
            let ok = names == expected
                && leaders == 1
                && list
                    .iter()
                    .all(|(_, s, r)| s == "Online" && r.iter().any(|r| r == "database"));
            ok.then_some(()).ok_or_else(|| format!("{list:?}"))
        });
    }

    /// `incus list` through member `via` as sorted (name, state, location).
    pub fn instances(&self, via: &Member) -> Vec<(String, String, String)> {
        let out = self.ok(via, &["list", "--format", "csv", "-c", "nsL"]);
        let mut v: Vec<_> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                assert_eq!(f.len(), 3, "unexpected list line {l:?}");
                (f[0].to_string(), f[1].to_string(), f[2].to_string())
            })
            .collect();
        v.sort();
        v
    }

    pub fn member(&self, name: &str) -> &Member {
        self.m.iter().find(|m| m.name == name).expect("a member")
    }
}

pub fn row(name: &str, state: &str, location: &str) -> (String, String, String) {
    (name.into(), state.into(), location.into())
}

pub fn stop_containers_of(d: &TestDaemon) {
    let lxc = d.state.join("lxc");
    for e in std::fs::read_dir(&lxc).into_iter().flatten().flatten() {
        // An entry that is no running container makes lxc-stop fail: nothing to stop.
        let _ = Command::new("lxc-stop")
            .arg("-k")
            .arg("-P")
            .arg(&lxc)
            .arg("-n")
            .arg(e.file_name())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
