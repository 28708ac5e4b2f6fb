//! Every change of replicated state reaches every member: three cairnd on 127.0.0.1-3 formed
//! with the real incus CLI, a scripted run of every kind of write spread over the members,
//! then each member's `cairn.db` opened read-only (WAL readers do not disturb the running
//! daemons) and every replicated table compared row for row.
//!
//! A write applied to one member's SQLite instead of going through `Daemon::write` (issue
//! 17: image properties given at import stayed on the importing member) shows up here as
//! a table that differs between members.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::TestDaemon;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

/// Every incus call is killed after this long: a wedged cluster fails the test.
const CALL_TIMEOUT: u64 = 120;

/// Raft bookkeeping: the applied position and the request ids are each member's own (a
/// joiner starts from a snapshot, so its recent request ids differ). Everything else in the
/// database is replicated state and must be the same everywhere.
const NOT_REPLICATED: &[&str] = &["raft_applied", "raft_requests"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port free on every given loopback address (the tests of one binary run in parallel).
fn free_port_on(addrs: &[&str]) -> u16 {
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

struct Member {
    name: String,
    address: String,
    d: TestDaemon,
}

impl Member {
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, "")
    }

    fn run_with_input(&self, args: &[&str], input: &str) -> Output {
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

    /// The member's replicated tables, each as its sorted rows.
    fn tables(&self) -> Result<BTreeMap<String, Vec<Vec<String>>>, String> {
        dump(&self.d.state.join("cairn.db"))
    }
}

/// Reads every table but [`NOT_REPLICATED`] from the database at `path`, read-only.
fn dump(path: &Path) -> Result<BTreeMap<String, Vec<Vec<String>>>, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let names: Vec<String> = {
        let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .map_err(|e| e.to_string())?;
        let rows = st.query_map([], |r| r.get(0)).map_err(|e| e.to_string())?;
        rows.collect::<Result<_, _>>().map_err(|e| e.to_string())?
    };
    let mut out = BTreeMap::new();
    for t in names
        .into_iter()
        .filter(|t| !t.starts_with("sqlite_") && !NOT_REPLICATED.contains(&t.as_str()))
    {
        let mut st = conn
            .prepare(&format!("SELECT * FROM \"{t}\""))
            .map_err(|e| e.to_string())?;
        let n = st.column_count();
        let mut rows: Vec<Vec<String>> = st
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            ValueRef::Null => "NULL".to_string(),
                            ValueRef::Integer(v) => v.to_string(),
                            ValueRef::Real(v) => v.to_string(),
                            ValueRef::Text(v) => String::from_utf8_lossy(v).into_owned(),
                            ValueRef::Blob(v) => format!("x'{}'", hex::encode(v)),
                        })
                    })
                    .collect()
            })
            .map_err(|e| e.to_string())?
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        rows.sort();
        out.insert(t, rows);
    }
    Ok(out)
}

struct Cluster {
    m: Vec<Member>,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
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

    fn logs(&self) -> String {
        self.m
            .iter()
            .map(|m| {
                let log = m.d.log();
                // A panic scrolls out of the tail behind its backtrace: keep it in view.
                let lines: Vec<&str> = log.lines().collect();
                let panics: String = lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.contains("panicked"))
                    .take(3)
                    .map(|(i, _)| lines[i..(i + 3).min(lines.len())].join("\n") + "\n")
                    .collect();
                format!(
                    "--- {} cairnd.log (panics, then tail) ---\n{panics}{}",
                    m.name,
                    tail(&log, 30)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn ok_with_input(&self, m: &Member, args: &[&str], input: &str) -> String {
        let out = m.run_with_input(args, input);
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

    fn ok(&self, m: &Member, args: &[&str]) -> String {
        self.ok_with_input(m, args, "")
    }

    fn poll<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
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

    /// Clustering enabled on the first member, the others joined with tokens, then all
    /// online voters.
    fn form(&self) {
        let first = &self.m[0];
        self.ok(first, &["cluster", "enable", &first.name]);
        for m in &self.m[1..] {
            let out = self.ok(first, &["cluster", "add", &m.name]);
            let token = out.lines().last().unwrap_or("").trim().to_string();
            let yaml = format!(
                "cluster:\n  enabled: true\n  server_name: {}\n  server_address: {}\n  cluster_token: {}\n",
                m.name, m.address, token
            );
            self.ok_with_input(m, &["admin", "init", "--preseed"], &yaml);
        }
        self.poll("all members online voters", Duration::from_secs(20), || {
            let out = first.run(&["cluster", "list", "--format", "json"]);
            let list: serde_json::Value = serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("{e}: {}", text(&out.stderr)))?;
            let members = list.as_array().cloned().unwrap_or_default();
            let ready = members.len() == self.m.len()
                && members.iter().all(|m| {
                    m["status"] == "Online"
                        && m["roles"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|r| r == "database"))
                });
            ready.then_some(()).ok_or_else(|| list.to_string())
        });
    }

    /// Waits until every member holds the same replicated tables, and returns them.
    fn converged(&self, limit: Duration) -> BTreeMap<String, Vec<Vec<String>>> {
        self.poll("the members' replicated tables agree", limit, || {
            let all: Vec<_> = self
                .m
                .iter()
                .map(|m| m.tables().map(|t| (m.name.as_str(), t)))
                .collect::<Result<_, _>>()?;
            let (first, reference) = &all[0];
            for (name, tables) in &all[1..] {
                if tables != reference {
                    return Err(differences(first, reference, name, tables));
                }
            }
            Ok(reference.clone())
        })
    }
}

/// Which tables differ between two members, and how.
fn differences(
    a: &str,
    ta: &BTreeMap<String, Vec<Vec<String>>>,
    b: &str,
    tb: &BTreeMap<String, Vec<Vec<String>>>,
) -> String {
    let names: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    let mut out = String::new();
    for t in names {
        let (ra, rb) = (ta.get(t), tb.get(t));
        if ra != rb {
            out.push_str(&format!(
                "table {t}:\n  {a}: {ra:?}\n  {b}: {rb:?}\n",
                ra = ra.map(|r| r.as_slice()).unwrap_or_default(),
                rb = rb.map(|r| r.as_slice()).unwrap_or_default(),
            ));
        }
    }
    out
}

fn rows_containing<'a>(
    tables: &'a BTreeMap<String, Vec<Vec<String>>>,
    table: &str,
    needle: &str,
) -> Vec<&'a Vec<String>> {
    tables
        .get(table)
        .map(|rows| {
            rows.iter()
                .filter(|r| r.iter().any(|v| v.contains(needle)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_write_leaves_the_same_rows_on_every_member() {
    let c = Cluster::start(3);
    c.form();
    let (n1, n2, n3) = (&c.m[0], &c.m[1], &c.m[2]);
    // Reading a running member's database works (WAL, read-only) and agrees after formation.
    c.converged(Duration::from_secs(10));

    // Images: import with a property through member 2 (issue 17), then edits elsewhere.
    let img = common::busybox_image().to_string_lossy().into_owned();
    c.ok(
        n2,
        &["image", "import", &img, "--alias", "bb", "cairnprop=x"],
    );
    for m in &c.m {
        c.poll(
            &format!("{} shows the imported property", m.name),
            Duration::from_secs(10),
            || {
                let out = m.run(&["image", "get-property", "bb", "cairnprop"]);
                let v = text(&out.stdout);
                (v.trim() == "x")
                    .then_some(())
                    .ok_or(text(&out.stderr) + &v)
            },
        );
    }
    c.ok(n3, &["image", "set-property", "bb", "cairnprop", "two"]);
    let shown = c.ok(n1, &["image", "show", "bb"]);
    assert!(shown.contains("cairnprop: two"), "{shown}");
    let edited = shown.replace("cairnprop: two", "cairnprop: three");
    c.ok_with_input(n1, &["image", "edit", "bb"], &edited);
    let fp = c
        .ok(n2, &["image", "list", "bb", "--format", "csv", "-c", "F"])
        .trim()
        .to_string();
    assert_eq!(fp.len(), 64, "fingerprint {fp:?}");
    c.ok(n3, &["image", "alias", "create", "bb2", &fp]);
    c.ok(n1, &["image", "alias", "rename", "bb2", "bb3"]);

    // Profiles.
    c.ok(n2, &["profile", "create", "p1"]);
    c.ok(n3, &["profile", "set", "p1", "user.x=1"]);
    c.ok(n1, &["profile", "rename", "p1", "p2"]);

    // Instances, on other members than the one asked (forwarded), one fetching the image.
    c.ok(n1, &["init", "bb", "c1", "--target", "node2"]);
    c.ok(n2, &["init", "bb", "c2", "--target", "node3"]);
    c.ok(n3, &["config", "set", "c1", "user.a=b"]);
    c.ok(n1, &["snapshot", "create", "c1", "s1"]);
    c.ok(n1, &["delete", "c2"]);

    // Server configuration and storage pools.
    c.ok(n3, &["config", "set", "user.foo=bar"]);
    c.ok(n3, &["storage", "create", "p2", "dir"]);
    c.ok(n1, &["storage", "set", "p2", "user.k=v"]);

    // Certificates: a client certificate and a trust token.
    c.ok(n2, &["remote", "generate-certificate"]);
    let crt = n2.d.home.join(".config/incus/client.crt");
    assert!(crt.exists(), "incus did not write {}", crt.display());
    c.ok(
        n2,
        &[
            "config",
            "trust",
            "add-certificate",
            crt.to_str().unwrap(),
            "--name",
            "ci",
        ],
    );
    c.ok(n3, &["config", "trust", "add", "tok1"]);

    let t = c.converged(Duration::from_secs(10));
    // The run left its mark in every table it touched (the same on every member).
    let images = &t["images"];
    assert_eq!(images.len(), 1, "{images:?}");
    assert!(
        images[0][1].contains(r#""cairnprop":"three""#),
        "{images:?}"
    );
    let aliases: Vec<&str> = t["image_aliases"].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(aliases, ["bb", "bb3"]);
    assert_eq!(rows_containing(&t, "profiles", r#""user.x":"1""#).len(), 1);
    assert!(t["profiles"].iter().any(|r| r[0] == "p2"));
    let instances: Vec<&str> = t["instances"].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(instances, ["c1"]);
    assert!(t["instances"][0][1].contains(r#""user.a":"b""#));
    assert_eq!(t["snapshots"].len(), 1, "{:?}", t["snapshots"]);
    assert!(t["config"]
        .iter()
        .any(|r| r[0] == "user.foo" && r[1] == "bar"));
    assert_eq!(
        rows_containing(&t, "storage_pools", r#""user.k":"v""#).len(),
        1
    );
    assert_eq!(
        rows_containing(&t, "certificates", r#""name":"ci""#).len(),
        1
    );
    assert_eq!(t["tokens"].len(), 1, "{:?}", t["tokens"]);
    assert_eq!(t["cluster_members"].len(), 3);
}
