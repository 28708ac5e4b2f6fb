//! This member of a cluster, inside the daemon: its identity on disk, its Raft [`Node`]
//! over the daemon's database, what it knows of the other members' liveness, and — while it
//! leads — the keeping of database roles (voters, standbys) as Incus does with
//! `cluster.max_voters` and `cluster.max_standby`.
//!
//! Invariants: membership changes go through one lock, on the leader; the database's member
//! table is the source of truth for who belongs, Raft's membership follows it; a member's
//! id is never given out again (see `db::members`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::node::{Config, Node};
use super::raft_net::{Reply, Rpc, Transport};
use super::types::{ClusterError, NodeId};
use crate::db::records::MemberRecord;
use crate::db::{Command, Db, DbError, RejectKind};

/// Voting members (`cluster.max_voters`, default).
pub const MAX_VOTERS: usize = 3;
/// Members kept ready to vote (`cluster.max_standby`, default).
pub const MAX_STANDBY: usize = 2;
/// A member not heard from for this long is offline (`cluster.offline_threshold`, default).
pub const OFFLINE_THRESHOLD: Duration = Duration::from_secs(20);

/// The cluster's role settings, from the (replicated) server configuration, as Incus names
/// them; out-of-range values fall back to the defaults (the API refuses them anyway).
#[derive(Debug, Clone, Copy)]
pub struct RoleSettings {
    pub max_voters: usize,
    pub max_standby: usize,
    pub offline_threshold: Duration,
}

impl RoleSettings {
    pub fn of(db: &Db) -> RoleSettings {
        let config = db.server_config().unwrap_or_default();
        let num = |k: &str| config.get(k).and_then(|v| v.parse::<u64>().ok());
        RoleSettings {
            max_voters: num("cluster.max_voters")
                .filter(|v| *v >= 3 && v % 2 == 1)
                .map_or(MAX_VOTERS, |v| v as usize),
            max_standby: num("cluster.max_standby")
                .filter(|v| *v <= 5)
                .map_or(MAX_STANDBY, |v| v as usize),
            offline_threshold: num("cluster.offline_threshold")
                .filter(|v| *v >= 1)
                .map_or(OFFLINE_THRESHOLD, Duration::from_secs),
        }
    }
}
/// A learner this close to the leader's log may be promoted.
const CAUGHT_UP_ENTRIES: u64 = 64;

/// Who this member is in its cluster; kept in `<state>/cluster/member.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub id: NodeId,
    pub name: String,
    /// `host:port` other members reach this one at.
    pub address: String,
}

pub fn cluster_dir(state: &Path) -> PathBuf {
    state.join("cluster")
}

impl Identity {
    fn path(state: &Path) -> PathBuf {
        cluster_dir(state).join("member.json")
    }

    pub fn load(state: &Path) -> std::io::Result<Option<Identity>> {
        match std::fs::read(Self::path(state)) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, state: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = cluster_dir(state);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let tmp = dir.join("member.json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(tmp, Self::path(state))
    }
}

/// When each member was last heard from (a reply to this member's call, or a call from it).
#[derive(Default)]
pub struct Liveness {
    seen: Mutex<HashMap<NodeId, Instant>>,
}

impl Liveness {
    pub fn touch(&self, id: NodeId) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
    }

    pub fn age(&self, id: NodeId) -> Option<Duration> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|t| t.elapsed())
    }

    /// Milliseconds since each member was heard from.
    pub fn view(&self) -> BTreeMap<NodeId, u64> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, t)| (*id, t.elapsed().as_millis() as u64))
            .collect()
    }
}

pub struct Member {
    identity: Identity,
    /// The member's name; renaming it changes this and the identity file.
    name: Mutex<String>,
    node: Node,
    liveness: Arc<Liveness>,
    /// The member-to-member HTTPS client (cluster certificate).
    peer: super::peer::PeerClient,
    /// Other members' events, relayed into this member's hub.
    relays: super::events_relay::EventRelays,
    events: crate::events::EventHub,
    /// Which member runs each operation started through a forwarded request, so that
    /// `/1.0/operations/{id}…` asked here reaches it.
    remote_ops: Mutex<HashMap<String, String>>,
    membership: tokio::sync::Mutex<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What the API shows of a member's database role and health.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    pub roles: Vec<String>,
    pub database: bool,
    pub status: &'static str,
    pub message: String,
}

fn db_error(e: ClusterError) -> DbError {
    match e {
        ClusterError::Rejected { kind, message } => match kind {
            RejectKind::NotFound => DbError::NotFound(message),
            RejectKind::Exists => DbError::Exists(message),
            RejectKind::Invalid => DbError::Invalid(message),
        },
        e => DbError::Unavailable(e.to_string()),
    }
}

/// The Raft configuration of member `id`: its log and snapshots in `<state>/cluster/raft`,
/// the default timing unless the seed asked for another heartbeat.
pub fn member_config(state: &Path, id: NodeId, heartbeat: Option<Duration>) -> Config {
    let config = Config::new(id, cluster_dir(state).join("raft"));
    match heartbeat {
        Some(h) => config.with_heartbeat(h),
        None => config,
    }
}

impl Member {
    /// Starts this member's Raft node over `db` (the daemon's database), resuming from
    /// its log (`config.dir`) if it ran before.
    pub async fn start(
        config: Config,
        identity: Identity,
        db: Arc<Db>,
        transport: Arc<dyn Transport>,
        liveness: Arc<Liveness>,
        peer: super::peer::PeerClient,
        events: crate::events::EventHub,
    ) -> Result<Arc<Member>, ClusterError> {
        db.set_replicated().map_err(|e| ClusterError::Start {
            id: identity.id,
            detail: e.to_string(),
        })?;
        let node = Node::start(config, db, transport).await?;
        let rt = Arc::new(Member {
            name: Mutex::new(identity.name.clone()),
            identity,
            node,
            liveness,
            relays: super::events_relay::EventRelays::new(peer.clone(), events.clone()),
            events,
            peer,
            remote_ops: Mutex::new(HashMap::new()),
            membership: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
        });
        rt.events.set_location(&rt.name());
        let keeper = tokio::spawn(keep_roles(Arc::downgrade(&rt)));
        rt.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(keeper);
        Ok(rt)
    }

    pub fn id(&self) -> NodeId {
        self.identity.id
    }
    pub fn name(&self) -> String {
        self.name.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Renames this member (its record was renamed through Raft).
    pub fn rename(&self, state: &Path, to: &str) -> std::io::Result<()> {
        let identity = Identity {
            name: to.to_string(),
            ..self.identity.clone()
        };
        identity.save(state)?;
        *self.name.lock().unwrap_or_else(|p| p.into_inner()) = to.to_string();
        self.events.set_location(to);
        Ok(())
    }
    pub fn address(&self) -> &str {
        &self.identity.address
    }
    pub fn node(&self) -> &Node {
        &self.node
    }
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }
    pub fn peer(&self) -> &super::peer::PeerClient {
        &self.peer
    }

    /// Remembers that operation `id` runs on the member at `addr`.
    pub fn note_remote_op(&self, id: &str, addr: &str) {
        let mut ops = self.remote_ops.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: operations are short-lived; forget the oldest half past a limit.
        if ops.len() > 10_000 {
            let drop: Vec<String> = ops.keys().take(5_000).cloned().collect();
            for k in drop {
                ops.remove(&k);
            }
        }
        ops.insert(id.to_string(), addr.to_string());
    }

    pub fn remote_op(&self, id: &str) -> Option<String> {
        self.remote_ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The address of the member named `name`, if it is another member.
    pub fn member_address(&self, name: &str) -> Option<String> {
        if name == self.name() {
            return None;
        }
        self.node
            .db()
            .member(name)
            .ok()
            .flatten()
            .map(|m| m.address)
    }

    /// Writes through Raft; see [`crate::daemon::Daemon::write`].
    pub async fn write(&self, cmds: Vec<Command>) -> Result<(), DbError> {
        self.node.write(cmds).await.map(|_| ()).map_err(db_error)
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.node.leader()
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id())
    }

    /// The voting members as the replicated membership has them (during a change, the
    /// voters of both configurations).
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.node
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// The address of member `id` as Raft knows it.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        self.node
            .metrics()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// Forms a new cluster with this member alone, and makes its database the cluster's.
    pub async fn bootstrap(&self) -> Result<(), ClusterError> {
        let members = BTreeMap::from([(
            self.id(),
            BasicNode {
                addr: self.address().to_string(),
            },
        )]);
        self.node.initialize(members).await?;
        self.node
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .current_leader(self.id(), "bootstrap")
            .await
            .map_err(|e| ClusterError::Start {
                id: self.id(),
                detail: format!("waiting for leadership: {e}"),
            })?;
        Ok(())
    }

    /// Takes a snapshot and drops the log behind it, so that members joining later start
    /// from the snapshot: the database held state from before the cluster existed, which no
    /// log entry carries.
    pub async fn compact(&self) -> Result<(), ClusterError> {
        let raft = self.node.raft();
        let applied = self.node.metrics().last_applied.map_or(0, |l| l.index);
        let start = |detail: String| ClusterError::Start {
            id: self.id(),
            detail,
        };
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| start(format!("snapshot: {e}")))?;
        raft.wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "snapshot taken",
            )
            .await
            .map_err(|e| start(format!("waiting for the snapshot: {e}")))?;
        raft.trigger()
            .purge_log(applied)
            .await
            .map_err(|e| start(format!("purging the log: {e}")))
    }

    /// Ms since each member was last heard from, as the leader sees it (it hears from
    /// everyone); this member's own view if the leader cannot be asked.
    pub async fn liveness_view(&self) -> BTreeMap<NodeId, u64> {
        if let Some(l) = self.leader().filter(|l| *l != self.id()) {
            let asked =
                tokio::time::timeout(Duration::from_secs(2), self.node.call(l, Rpc::Liveness))
                    .await;
            if let Ok(Ok(Reply::Liveness(mut view))) = asked {
                view.insert(l, 0);
                return view;
            }
        }
        self.liveness.view()
    }

    /// Roles and status of each member, for the API.
    pub async fn member_views(&self, members: &[MemberRecord]) -> BTreeMap<NodeId, MemberView> {
        let live = self.liveness_view().await;
        let settings = RoleSettings::of(self.node.db());
        let m = self.node.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let online = |id: NodeId| {
            id == self.id()
                || live
                    .get(&id)
                    .is_some_and(|ms| *ms < settings.offline_threshold.as_millis() as u64)
        };
        let standby: BTreeSet<NodeId> = members
            .iter()
            .map(|m| m.id)
            .filter(|id| !voters.contains(id) && membership.get_node(id).is_some() && online(*id))
            .take(settings.max_standby)
            .collect();
        members
            .iter()
            .map(|rec| {
                let mut roles = Vec::new();
                if m.current_leader == Some(rec.id) {
                    roles.push("database-leader".to_string());
                }
                if voters.contains(&rec.id) {
                    roles.push("database".to_string());
                } else if standby.contains(&rec.id) {
                    roles.push("database-standby".to_string());
                }
                let (status, message) = if !online(rec.id) {
                    let age = live.get(&rec.id).map(|ms| ms / 1000);
                    (
                        "Offline",
                        match age {
                            Some(s) => format!("No heartbeat for {s}s"),
                            None => "No heartbeat yet".to_string(),
                        },
                    )
                } else if rec.evacuated {
                    ("Evacuated", "Unavailable due to maintenance".to_string())
                } else {
                    ("Online", "Fully operational".to_string())
                };
                let view = MemberView {
                    database: voters.contains(&rec.id),
                    roles,
                    status,
                    message,
                };
                (rec.id, view)
            })
            .collect()
    }

    /// Whether member `id` answered recently (this member: always).
    pub fn is_online(&self, id: NodeId) -> bool {
        let threshold = RoleSettings::of(self.node.db()).offline_threshold;
        id == self.id() || self.liveness.age(id).is_some_and(|a| a < threshold)
    }

    /// Adds a member that joined: it receives the log (a snapshot first) as a learner; the
    /// role keeper promotes it once it caught up.
    pub async fn add_learner(&self, id: NodeId, address: &str) -> Result<(), ClusterError> {
        let _serial = self.membership.lock().await;
        let r = self
            .node
            .raft()
            .add_learner(
                id,
                BasicNode {
                    addr: address.to_string(),
                },
                false,
            )
            .await;
        r.map(|_| ())
            .map_err(|e| ClusterError::Membership(e.to_string()))
    }

    /// Takes members out of Raft altogether.
    pub async fn remove(&self, ids: BTreeSet<NodeId>) -> Result<(), ClusterError> {
        let _serial = self.membership.lock().await;
        self.node.remove_members(ids).await
    }

    /// One round of role keeping on the leader: every member of the database is in Raft,
    /// nothing else is; the voter set is kept at `MAX_VOTERS` with live, caught-up members,
    /// replacing lost voters.
    async fn keep_roles_once(&self) -> Result<(), ClusterError> {
        if !self.is_leader() {
            return Ok(());
        }
        let _serial = self.membership.lock().await;
        let members = self.node.db().members().map_err(|e| ClusterError::Start {
            id: self.id(),
            detail: e.to_string(),
        })?;
        let m = self.node.metrics();
        let membership = m.membership_config.membership().clone();
        let in_raft: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        let in_db: BTreeSet<NodeId> = members.iter().map(|m| m.id).collect();
        for rec in members.iter().filter(|r| !in_raft.contains(&r.id)) {
            tracing::info!("cluster: adding member {} ({}) to raft", rec.name, rec.id);
            self.node
                .raft()
                .add_learner(
                    rec.id,
                    BasicNode {
                        addr: rec.address.clone(),
                    },
                    false,
                )
                .await
                .map_err(|e| ClusterError::Membership(e.to_string()))?;
        }
        let gone: BTreeSet<NodeId> = in_raft.difference(&in_db).copied().collect();
        // A member record appears only after bootstrap wrote it: until then the founder's
        // own id is in raft alone and must stay.
        let gone: BTreeSet<NodeId> = gone
            .into_iter()
            .filter(|id| *id != self.id() && !in_db.is_empty())
            .collect();
        if !gone.is_empty() {
            tracing::info!("cluster: removing {gone:?} from raft");
            return self.node.remove_members(gone).await;
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let settings = RoleSettings::of(self.node.db());
        let last = m.last_log_index.unwrap_or(0);
        let matched = |id: NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map_or(0, |l| l.index)
        };
        let mut want: BTreeSet<NodeId> = voters
            .iter()
            .copied()
            .filter(|v| self.is_online(*v))
            .collect();
        let candidates = in_raft.iter().copied().filter(|id| {
            !voters.contains(id)
                && in_db.contains(id)
                && self.is_online(*id)
                && matched(*id) + CAUGHT_UP_ENTRIES >= last
        });
        for c in candidates {
            if want.len() >= settings.max_voters {
                break;
            }
            want.insert(c);
        }
        // Lost voters stay voters until someone can take their place: dropping one without
        // a replacement would only shrink the quorum's margin.
        for v in &voters {
            if want.len() >= settings.max_voters {
                break;
            }
            want.insert(*v);
        }
        if want != voters && !want.is_empty() {
            tracing::info!("cluster: voters {voters:?} -> {want:?}");
            self.node.change_membership(want).await?;
        }
        Ok(())
    }

    /// Relays the events of every other member known to the database.
    fn sync_relays(&self) {
        let me = self.name();
        if let Ok(members) = self.node.db().members() {
            let peers: Vec<(String, String)> = members
                .into_iter()
                .filter(|m| m.name != me)
                .map(|m| (m.name, m.address))
                .collect();
            let mut peers = peers;
            peers.sort();
            if peers != self.relays.peers() {
                self.relays.set_peers(peers);
            }
        }
    }

    pub async fn shutdown(&self) {
        self.relays.shutdown();
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.node.shutdown().await;
    }
}

async fn keep_roles(rt: std::sync::Weak<Member>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(rt) = rt.upgrade() else { return };
        rt.sync_relays();
        if let Err(e) = rt.keep_roles_once().await {
            tracing::debug!("cluster role keeping: {e}");
        }
    }
}
