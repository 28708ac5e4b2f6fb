//! Clustering end to end with the real incus CLI: cairnd processes on 127.0.0.1, .2 and .3
//! (one port, as members of a real cluster would share it), formed the way an operator
//! does it (`cluster enable`, `cluster add`, `admin init --preseed`), then placement,
//! forwarding, moves, evacuation, leader failover and the removal of a dead member.
//!
//! Run with `CAIRN_LOG=info,cairnd=debug` for detailed member logs (each member's
//! cairnd.log tail is printed when a step fails).

#[path = "common/cluster.rs"]
mod cluster_fixture;
mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use cluster_fixture::*;
use common::{TempDir, TestDaemon};
use serde_json::Value;

#[test]
fn three_members_through_the_incus_cli() {
    let t0 = Instant::now();
    let mut c = Cluster::start(3);
    let (n1, n2, n3) = (&c.m[0], &c.m[1], &c.m[2]);
    let all = ["node1", "node2", "node3"];

    // 1. Formation.
    c.form();
    c.wait_all_online(n1, &all, Duration::from_secs(10));
    eprintln!("formed in {:?}", t0.elapsed());

    // 2. Placement with --target, seen from any member.
    n1.d.import_busybox("bb");
    c.ok(n1, &["launch", "bb", "c1", "--target", "node2"]);
    c.ok(n1, &["launch", "bb", "c2", "--target", "node3"]);
    assert_eq!(
        c.instances(n3),
        vec![row("c1", "RUNNING", "node2"), row("c2", "RUNNING", "node3")]
    );

    // 3. Forwarded exec (output and exit status) and file transfer.
    assert_eq!(c.ok(n1, &["exec", "c1", "--", "hostname"]).trim(), "c1");
    let tmp = TempDir::new("cairn-cluster-files");
    let dst = tmp.path().join("passwd");
    c.ok(
        n3,
        &["file", "pull", "c1/etc/passwd", dst.to_str().unwrap()],
    );
    let passwd = std::fs::read_to_string(&dst).unwrap();
    assert!(passwd.starts_with("root:"), "{passwd}");
    let out = n1.run(&["exec", "c1", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // 4. Moving a stopped instance to another member.
    c.ok(n1, &["stop", "c1"]);
    c.ok(n1, &["move", "c1", "--target", "node3"]);
    assert_eq!(
        c.instances(n1),
        vec![row("c1", "STOPPED", "node3"), row("c2", "RUNNING", "node3")]
    );
    c.ok(n1, &["start", "c1"]);
    assert_eq!(c.ok(n2, &["exec", "c1", "--", "hostname"]).trim(), "c1");

    // 5. Evacuation and restore of node3, which now has both.
    c.ok(n1, &["cluster", "evacuate", "node3", "--force"]);
    let evacuated = c.instances(n2);
    assert_eq!(evacuated.len(), 2, "{evacuated:?}");
    for (name, state, location) in &evacuated {
        assert_eq!(state, "RUNNING", "{evacuated:?}");
        assert_ne!(location, "node3", "{evacuated:?}");
        assert_eq!(c.ok(n3, &["exec", name, "--", "hostname"]).trim(), *name);
    }
    let status = |list: Vec<(String, String, Vec<String>)>, name: &str| {
        list.into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, s, _)| s)
    };
    assert_eq!(
        status(n1.members().unwrap(), "node3").as_deref(),
        Some("Evacuated")
    );
    c.ok(n2, &["cluster", "restore", "node3", "--force"]);
    assert_eq!(
        c.instances(n1),
        vec![row("c1", "RUNNING", "node3"), row("c2", "RUNNING", "node3")]
    );
    assert_eq!(
        status(n2.members().unwrap(), "node3").as_deref(),
        Some("Online")
    );
    eprintln!(
        "placement, forwarding, move, evacuation done at {:?}",
        t0.elapsed()
    );

    // 6. The leader dies: a survivor takes writes again after an election.
    let leader = n1
        .members()
        .unwrap()
        .into_iter()
        .find(|(_, _, r)| r.iter().any(|r| r == "database-leader"))
        .map(|(n, _, _)| n)
        .expect("a leader");
    let li = c.m.iter().position(|m| m.name == leader).unwrap();
    c.m[li].d.kill9();
    let killed = Instant::now();
    let survivor = c.m.iter().find(|m| m.name != leader).unwrap();
    let mut attempt = 0;
    c.poll(
        "a write after the leader died",
        Duration::from_secs(15),
        || {
            // A new name each try: an attempt cut short may still have been committed.
            attempt += 1;
            let out = survivor
                .d
                .incus_cmd_timeout(10, &["profile", "create", &format!("p6-{attempt}")])
                .output()
                .unwrap();
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| text(&out.stderr))
        },
    );
    eprintln!(
        "leader {leader} killed: writes through {} again after {:?} ({attempt} attempts)",
        survivor.name,
        killed.elapsed()
    );
    c.m[li].d.spawn();
    c.wait_all_online(&c.m[0], &all, Duration::from_secs(30));
    c.wait_all_online(c.member(&leader), &all, Duration::from_secs(30));
    eprintln!("{leader} back online at {:?}", t0.elapsed());

    // 7. node3's machine dies for good: removed by force from the survivors.
    c.m[2].d.kill9();
    stop_containers_of(&c.m[2].d);
    let (n1, n2) = (&c.m[0], &c.m[1]);
    let out = n1.run_with_input(&["cluster", "remove", "node3", "--force"], "yes\n");
    assert!(
        out.status.success(),
        "cluster remove node3 --force: {}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        c.logs()
    );
    let left = n1.members().unwrap();
    let mut names: Vec<_> = left.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["node1", "node2"], "{left:?}");
    // --force dropped the instances that lived there.
    assert_eq!(c.instances(n2), vec![]);
    c.ok(n2, &["profile", "create", "p7"]);
    assert!(c
        .ok(n1, &["profile", "list", "--format", "csv"])
        .contains("p7,"));

    // 8. node3 comes back on a new disk: a fresh daemon on the same address joins again
    // as a new member under its old name.
    let address = c.m[2].address.clone();
    let fresh = Member {
        name: "node3".into(),
        address: address.clone(),
        d: TestDaemon::start(),
    };
    c.ok(&fresh, &["config", "set", "core.https_address", &address]);
    let token = c.token(&c.m[0], "node3");
    let out = fresh.preseed_join(&token);
    assert!(
        out.status.success(),
        "rejoining node3: {}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        c.logs()
    );
    c.m[2] = fresh;
    c.wait_all_online(&c.m[0], &all, Duration::from_secs(30));
    assert!(c
        .ok(&c.m[2], &["profile", "list", "--format", "csv"])
        .contains("p7,"));
    eprintln!("total {:?}", t0.elapsed());
}

/// Mistakes an operator makes: a broken token, a taken name, enabling twice. Each is
/// refused with a clear error and leaves the daemons working.
#[test]
fn joining_errors() {
    let c = Cluster::start(2);
    let (n1, n2) = (&c.m[0], &c.m[1]);
    c.ok(n1, &["cluster", "enable", "node1"]);

    let e = c.err(n1, &["cluster", "enable", "node1"]);
    assert!(e.contains("already clustered"), "{e}");
    let e = c.err(n1, &["cluster", "add", "node1"]);
    assert!(e.contains("already has a member with name"), "{e}");

    // Not a token at all: the CLI itself refuses it, and so does the daemon when asked
    // directly.
    let out = n2.preseed_join("garbage");
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let e = text(&out.stderr);
    assert!(e.contains("Invalid cluster join token"), "{e}");
    let body = r#"{"enabled": true, "server_name": "node2", "cluster_token": "garbage"}"#;
    let e = c.err(
        n2,
        &["query", "--wait", "-X", "PUT", "/1.0/cluster", "-d", body],
    );
    assert!(e.contains("Invalid cluster join token"), "{e}");
    c.ok(n2, &["info"]);

    // A well-formed token with a wrong secret: the cluster refuses it.
    let token = c.token(n1, "node2");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forged: Value = serde_json::from_slice(&b64.decode(&token).unwrap()).unwrap();
    forged["secret"] = Value::from("0".repeat(64));
    let forged = b64.encode(serde_json::to_vec(&forged).unwrap());
    let out = n2.preseed_join(&forged);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let e = text(&out.stderr);
    assert!(e.contains("join token"), "{e}");
    c.ok(n2, &["info"]);
    let e = c.err(n2, &["cluster", "list"]);
    assert!(e.contains("isn't part of a cluster"), "{e}");

    // The real token still works after both failures.
    let out = n2.preseed_join(&token);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), c.logs());
    c.wait_all_online(n2, &["node1", "node2"], Duration::from_secs(10));

    // Per-member reads: `target=node2` asked of node1 is answered by node2 (node1 itself
    // refuses a target that is not its own name), and a member that does not exist is a 400.
    let res: Value =
        serde_json::from_str(&c.ok(n1, &["query", "/1.0/resources?target=node2"])).unwrap();
    assert!(res["cpu"]["total"].as_u64().unwrap_or(0) >= 1, "{res}");
    let info = c.ok(n1, &["info", "--resources", "--target", "node2"]);
    assert!(info.contains("Threads:"), "{info}");
    let pool = c.ok(n1, &["storage", "info", "default", "--target", "node2"]);
    assert!(pool.contains("total space:"), "{pool}");
    let e = c.err(n1, &["query", "/1.0/resources?target=nosuch"]);
    assert!(e.contains("\"nosuch\" not found"), "{e}");
}
