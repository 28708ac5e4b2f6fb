//! Raft scenarios with in-process members on real files: a [`TestCluster`] starts members
//! with short timeouts over a [`LocalRouter`], and can kill, restart and partition them.

mod history;
mod scenarios;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;

use super::node::{Config, Node};
use super::raft_net::LocalRouter;
use super::types::NodeId;
use crate::db::{Command, Db};

pub(super) fn set(key: &str, value: &str) -> Command {
    Command::SetServerConfig {
        key: key.to_string(),
        value: Some(value.to_string()),
    }
}

pub(super) struct TestCluster {
    pub dir: tempfile::TempDir,
    pub router: Arc<LocalRouter>,
    nodes: Mutex<BTreeMap<NodeId, Node>>,
    tune: fn(&mut Config),
}

fn fast(_: &mut Config) {}

impl TestCluster {
    /// Starts members `1..=n` and forms the cluster with all of them as voters.
    pub async fn new(n: u64) -> TestCluster {
        TestCluster::with(n, fast).await
    }

    pub async fn with(n: u64, tune: fn(&mut Config)) -> TestCluster {
        let c = TestCluster::empty(tune);
        for id in 1..=n {
            c.start(id).await;
        }
        let members = (1..=n)
            .map(|id| (id, BasicNode::new(format!("member{id}"))))
            .collect();
        c.node(1).initialize(members).await.unwrap();
        c.wait_leader(&(1..=n).collect::<Vec<_>>()).await;
        c
    }

    pub fn empty(tune: fn(&mut Config)) -> TestCluster {
        // RUST_LOG=openraft=debug,cairnd=debug shows what the members do.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        TestCluster {
            dir: tempfile::Builder::new()
                .prefix("cairn-raft-")
                .tempdir_in(std::env::temp_dir())
                .unwrap(),
            router: LocalRouter::new(),
            nodes: Mutex::new(BTreeMap::new()),
            tune,
        }
    }

    pub fn config(&self, id: NodeId) -> Config {
        let mut c = Config::new(id, self.dir.path().join(format!("member{id}")));
        c.heartbeat = Duration::from_millis(40);
        c.election_timeout_min = Duration::from_millis(200);
        c.election_timeout_max = Duration::from_millis(400);
        c.write_timeout = Duration::from_millis(2500);
        c.snapshot_every = 400;
        c.keep_after_snapshot = 100;
        (self.tune)(&mut c);
        c
    }

    pub async fn start(&self, id: NodeId) -> Node {
        let config = self.config(id);
        std::fs::create_dir_all(&config.dir).unwrap();
        let db = Arc::new(Db::open_replicated(&config.dir.join("state.db")).unwrap());
        let node = Node::start(config, db, self.router.clone()).await.unwrap();
        self.router.register(&node);
        self.nodes.lock().unwrap().insert(id, node.clone());
        node
    }

    /// Stops a member as if its process died: it drops off the network and its tasks end.
    pub async fn kill(&self, id: NodeId) {
        self.router.unregister(id);
        let node = self.nodes.lock().unwrap().remove(&id);
        if let Some(node) = node {
            node.shutdown().await;
        }
    }

    pub fn node(&self, id: NodeId) -> Node {
        self.nodes.lock().unwrap()[&id].clone()
    }

    pub fn try_node(&self, id: NodeId) -> Option<Node> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }

    pub fn live(&self) -> Vec<NodeId> {
        self.nodes.lock().unwrap().keys().copied().collect()
    }

    /// Waits until every member of `among` names the same leader, itself one of `among`.
    pub async fn wait_leader(&self, among: &[NodeId]) -> NodeId {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leaders: BTreeSet<Option<NodeId>> =
                among.iter().map(|id| self.node(*id).leader()).collect();
            if leaders.len() == 1 {
                if let Some(Some(l)) = leaders.into_iter().next() {
                    let node = self.node(l);
                    let confirmed = tokio::time::timeout(
                        Duration::from_secs(1),
                        node.raft().ensure_linearizable(),
                    );
                    if among.contains(&l) && matches!(confirmed.await, Ok(Ok(_))) {
                        return l;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader agreed on by {among:?} within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every live member applied the leader's last log entry.
    pub async fn wait_converged(&self) {
        let live = self.live();
        let leader = self.wait_leader(&live).await;
        let last = self.node(leader).metrics().last_log_index;
        for id in live {
            self.node(id)
                .raft()
                .wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(last, "converge")
                .await
                .unwrap_or_else(|e| panic!("member {id} did not catch up to {last:?}: {e}"));
        }
    }

    /// A member's server config table: what the tests write.
    pub fn rows(&self, id: NodeId) -> BTreeMap<String, String> {
        self.node(id).db().server_config().unwrap()
    }

    /// Asserts that every live member holds the same database and applied position.
    pub fn assert_same_state(&self) {
        let live = self.live();
        let first = live[0];
        let want = self.rows(first);
        let want_pos = self.node(first).db().applied_position().unwrap();
        for id in &live[1..] {
            assert_eq!(
                self.rows(*id),
                want,
                "member {id} differs from member {first}"
            );
            assert_eq!(
                self.node(*id).db().applied_position().unwrap(),
                want_pos,
                "member {id} applied position"
            );
        }
    }

    pub async fn shutdown(&self) {
        for id in self.live() {
            self.kill(id).await;
        }
    }
}
