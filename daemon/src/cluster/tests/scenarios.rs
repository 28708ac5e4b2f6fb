//! One scenario per test: elections, leader loss, partitions, snapshots, restarts,
//! membership and request deduplication.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{set, TestCluster};
use crate::cluster::{ClusterError, Config, Request};
use crate::db::{Command, RejectKind};

async fn elects_and_replicates(n: u64) {
    let c = TestCluster::new(n).await;
    let all: Vec<u64> = (1..=n).collect();
    let leader = c.wait_leader(&all).await;
    // A write through a follower is forwarded to the leader and lands everywhere.
    let follower = all.iter().copied().find(|id| *id != leader).unwrap();
    c.node(follower)
        .write(vec![set("greeting", "hello")])
        .await
        .unwrap();
    assert_eq!(c.rows(follower)["greeting"], "hello", "read-your-writes");
    c.wait_converged().await;
    c.assert_same_state();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_one_leader_and_replicate() {
    elects_and_replicates(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_elect_one_leader_and_replicate() {
    elects_and_replicates(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_writes_resume() {
    let c = TestCluster::new(3).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    c.node(old).write(vec![set("before", "1")]).await.unwrap();
    c.kill(old).await;
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let killed_at = Instant::now();
    // The survivor's write waits through the election and then commits.
    c.node(survivors[0])
        .write(vec![set("after", "2")])
        .await
        .unwrap();
    let resumed = killed_at.elapsed();
    let new = c.wait_leader(&survivors).await;
    assert_ne!(new, old);
    // 200-400 ms election timeouts here; the margin is for a loaded 2-core machine.
    assert!(
        resumed < Duration::from_secs(3),
        "writes resumed after {resumed:?}"
    );
    eprintln!("writes resumed {resumed:?} after the leader was killed");
    c.wait_converged().await;
    for id in &survivors {
        let rows = c.rows(*id);
        assert_eq!(
            (rows["before"].as_str(), rows["after"].as_str()),
            ("1", "2")
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_refuses_writes_and_catches_up_when_healed() {
    let c = TestCluster::with(3, |cfg| cfg.write_timeout = Duration::from_millis(800)).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    let majority: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    c.router.isolate(old);

    // The isolated leader cannot commit: a clear error after a bounded wait.
    let t = Instant::now();
    let err = c.node(old).write(vec![set("lost", "x")]).await.unwrap_err();
    assert!(matches!(err, ClusterError::NoQuorum { .. }), "{err:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        t.elapsed()
    );
    let err = c.node(old).linearizable_barrier().await.unwrap_err();
    assert!(matches!(err, ClusterError::NoQuorum { .. }), "{err:?}");

    // The majority elects a leader of its own and goes on.
    let new = c.wait_leader(&majority).await;
    c.node(new).write(vec![set("kept", "y")]).await.unwrap();

    // A follower cut off alone refuses too.
    let lone = majority.iter().copied().find(|id| *id != new).unwrap();
    c.router.heal();
    c.wait_converged().await;
    c.router.isolate(lone);
    let err = c
        .node(lone)
        .write(vec![set("lost2", "z")])
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::NoQuorum { .. }), "{err:?}");

    c.router.heal();
    c.wait_converged().await;
    c.node(old).linearizable_barrier().await.unwrap();
    let rows = c.rows(old);
    assert_eq!(rows.get("kept").map(String::as_str), Some("y"));
    assert!(
        !rows.contains_key("lost"),
        "an unacknowledged minority write survived"
    );
    c.assert_same_state();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_rides_out_a_silently_cut_leader() {
    // A write must not wait out its whole timeout on a leader whose link went dead.
    let c = TestCluster::with(3, |cfg| cfg.write_timeout = Duration::from_secs(10)).await;
    c.router.drop_silently();
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        let old = c.wait_leader(&[1, 2, 3]).await;
        let majority: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
        c.router.isolate(old);
        let cut = Instant::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let key = format!("after-cut-{round}");
        c.node(majority[0])
            .write(vec![set(&key, "1")])
            .await
            .unwrap();
        worst = worst.max(cut.elapsed());

        // The old leader, alone, refuses at once rather than holding the write.
        let t = Instant::now();
        let err = c
            .node(old)
            .write(vec![set(&format!("refused-{round}"), "x")])
            .await
            .unwrap_err();
        assert!(matches!(err, ClusterError::NoQuorum { .. }), "{err:?}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "held {:?}",
            t.elapsed()
        );

        c.router.heal();
        c.wait_converged().await;
        for id in 1..=3 {
            let rows = c.rows(id);
            assert_eq!(rows.get(&key).map(String::as_str), Some("1"), "member {id}");
            assert!(
                !rows.contains_key(&format!("refused-{round}")),
                "member {id}"
            );
        }
    }
    // A heartbeat of 40 ms and elections at 200-400 ms: the new leader comes within about
    // a second; the margin is for a loaded 2-core machine.
    eprintln!("worst first write after a silent leader cut: {worst:?}");
    c.assert_same_state();
    c.shutdown().await;
}

fn snapshot_often(cfg: &mut Config) {
    cfg.snapshot_every = 50;
    cfg.keep_after_snapshot = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_member_installs_a_snapshot() {
    let c = TestCluster::with(3, snapshot_often).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    c.router.isolate(lagging);
    let before = c.node(lagging).metrics().last_log_index.unwrap_or(0);
    for i in 0..200 {
        c.node(leader)
            .write(vec![set(&format!("k{i}"), &i.to_string())])
            .await
            .unwrap();
    }
    // The leader's log behind its snapshot is gone: only a snapshot can catch the member up.
    let purged = c
        .node(leader)
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index > before), "purged")
        .await
        .unwrap();
    assert!(purged.snapshot.is_some());
    c.router.heal();
    c.wait_converged().await;
    let m = c.node(lagging).metrics();
    assert!(
        m.snapshot.is_some_and(|s| s.index > before),
        "member {lagging} caught up without a snapshot: {m:?}"
    );
    assert_eq!(c.rows(lagging).len(), 200);
    c.assert_same_state();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_restart_from_their_disk() {
    let c = TestCluster::with(3, snapshot_often).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    for i in 0..120 {
        c.node(leader)
            .write(vec![set(&format!("a{i}"), "1")])
            .await
            .unwrap();
    }
    c.wait_converged().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    c.kill(follower).await;
    for i in 0..30 {
        c.node(leader)
            .write(vec![set(&format!("b{i}"), "1")])
            .await
            .unwrap();
    }
    // Back from its own disk (snapshot + log + database) before it hears from anyone.
    c.router.isolate(follower);
    let node = c.start(follower).await;
    let rows = c.rows(follower);
    assert_eq!(rows.keys().filter(|k| k.starts_with('a')).count(), 120);
    node.raft()
        .wait(Some(Duration::from_secs(2)))
        .log_index_at_least(Some(120), "log replayed from disk")
        .await
        .unwrap();
    c.router.heal();
    c.wait_converged().await;
    c.assert_same_state();

    // The whole cluster stopped and started again keeps everything and takes writes.
    c.shutdown().await;
    for id in 1..=3 {
        c.start(id).await;
    }
    c.node(2)
        .write(vec![set("after-restart", "1")])
        .await
        .unwrap();
    c.wait_converged().await;
    assert_eq!(c.rows(3).len(), 151);
    c.assert_same_state();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_takes_effect_once_and_refusals_are_typed() {
    let c = TestCluster::new(3).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let node = c.node(leader);
    let counted = || {
        node.db()
            .applied_position()
            .unwrap()
            .unwrap()
            .applied_requests
    };
    let before = counted();
    let req = Request {
        id: "retry-me".into(),
        commands: vec![set("once", "1")],
    };
    node.write_request(req.clone()).await.unwrap();
    node.write_request(req).await.unwrap();
    assert_eq!(counted(), before + 1);

    let profile: crate::db::records::ProfileRecord = serde_json::from_value(serde_json::json!({
        "name": "p1", "description": "", "config": {}, "devices": {}
    }))
    .unwrap();
    node.write(vec![Command::CreateProfile(profile.clone())])
        .await
        .unwrap();
    let err = c
        .node((1..=3).find(|id| *id != leader).unwrap())
        .write(vec![set("half", "1"), Command::CreateProfile(profile)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::Rejected {
                kind: RejectKind::Exists,
                ..
            }
        ),
        "{err:?}"
    );
    c.wait_converged().await;
    assert!(
        !c.rows(1).contains_key("half"),
        "a refused request left a trace"
    );
    c.assert_same_state();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_as_learners_get_promoted_and_leave() {
    let c = TestCluster::new(3).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    c.node(leader).write(vec![set("early", "1")]).await.unwrap();
    c.start(4).await;
    c.node(leader)
        .add_learner(4, "member4".into())
        .await
        .unwrap();
    c.node(leader)
        .change_membership(BTreeSet::from([1, 2, 3, 4]))
        .await
        .unwrap();
    c.node(4).linearizable_barrier().await.unwrap();
    assert_eq!(c.rows(4)["early"], "1");

    let gone = (1..=3).find(|id| *id != leader).unwrap();
    c.node(leader)
        .remove_members(BTreeSet::from([gone]))
        .await
        .unwrap();
    c.kill(gone).await;
    let voters: BTreeSet<u64> = c
        .node(leader)
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters.len(), 3);
    assert!(!voters.contains(&gone));
    c.node(4).write(vec![set("late", "1")]).await.unwrap();
    c.wait_converged().await;
    c.assert_same_state();
    c.shutdown().await;
}
