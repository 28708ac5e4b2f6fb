//! A daemon entering and living in a cluster: enabling clustering on a standalone server
//! (it becomes the founder), issuing join tokens, a new member joining with one (Incus's
//! token flow: `incus cluster add` + `incus admin init --preseed`), accepting it on the
//! leader, and resuming membership at start.
//!
//! The joining member's own database is replaced by the cluster's: its first Raft message
//! is a snapshot, because the founder drops the log behind a snapshot when it enables
//! clustering (its pre-cluster state is in no log entry).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::member::{Identity, Liveness, Member};
use super::peer::PeerClient;
use super::transport::HttpTransport;
use super::types::NodeId;
use crate::daemon::Daemon;
use crate::db::records::{JoinTokenRecord, MemberRecord};
use crate::db::Command;

/// Join tokens expire after this long (Incus: `cluster.join_token_expiry`, 3 h).
const TOKEN_LIFETIME: chrono::Duration = chrono::Duration::hours(3);
pub const JOIN_PATH: &str = "/internal/cluster/join";

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The request cannot be done as asked (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// Refused: bad or expired token (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// The cluster could not do it now (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
}

use MembershipError::{Forbidden, Invalid, Unavailable};

/// Incus's join token: base64 of this JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinToken {
    pub server_name: String,
    pub fingerprint: String,
    pub addresses: Vec<String>,
    pub secret: String,
    pub expires_at: DateTime<Utc>,
}

impl JoinToken {
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(s: &str) -> Result<JoinToken, MembershipError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| Invalid(format!("Invalid cluster join token: {e}")))?;
        serde_json::from_slice(&raw)
            .map_err(|e| Invalid(format!("Invalid cluster join token: {e}")))
    }
}

/// What a joining member sends to a cluster member: the secret of an Incus join token, or
/// (zero-touch formation) a proof that it knows the cluster's join secret.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub secret: String,
    #[serde(default)]
    pub proof: Option<SeedProof>,
    pub architecture: String,
}

/// A join proof (see `discovery::join_proof`), bound to the joiner's TLS certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedProof {
    pub nonce: String,
    pub proof: String,
    /// Fingerprint of the certificate the proof is bound to. Checked against the TLS
    /// connection by the member that first receives the request; members forwarding it
    /// to the leader are trusted for that check (they present the cluster certificate).
    pub fingerprint: String,
}

/// What it gets back: its member id and the cluster certificate with its key.
#[derive(Serialize, Deserialize)]
pub struct JoinAnswer {
    pub id: NodeId,
    pub cluster_certificate: String,
    pub cluster_key: String,
}

/// The address other members reach this one at: `cluster.https_address`, else
/// `core.https_address`; it must name a host, not a wildcard.
pub fn member_address(d: &Daemon) -> Result<String, MembershipError> {
    let addr = d
        .local
        .get("cluster.https_address")
        .or_else(|| d.local.get("core.https_address"))
        .filter(|a| !a.trim().is_empty())
        .ok_or_else(|| Invalid("This server is not available on the network".into()))?;
    let addr = crate::listener::normalize_address(&addr);
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    if matches!(host, "[::]" | "0.0.0.0" | "") {
        return Err(Invalid(format!(
            "Cluster address {addr:?} is a wildcard: set cluster.https_address to this member's address"
        )));
    }
    Ok(addr)
}

fn peer_client(d: &Daemon) -> Result<PeerClient, MembershipError> {
    PeerClient::from_cert(&d.cert()).map_err(|e| Unavailable(format!("cluster client: {e}")))
}

async fn start_member(d: &Arc<Daemon>, identity: Identity) -> Result<Arc<Member>, MembershipError> {
    let liveness = Arc::new(Liveness::default());
    let peer = peer_client(d)?;
    let transport = HttpTransport::new(peer.clone(), liveness.clone());
    let config =
        super::member::member_config(&d.paths.state, identity.id, d.raft_heartbeat.get().copied());
    let rt = Member::start(
        config,
        identity,
        d.db.clone(),
        transport.clone(),
        liveness,
        peer,
        d.events.clone(),
    )
    .await
    .map_err(|e| Unavailable(format!("starting the cluster member: {e}")))?;
    transport.bind(rt.node().downgrade());
    Ok(rt)
}

/// At daemon start: resumes cluster membership if this member has one.
pub async fn resume(d: &Arc<Daemon>) -> Result<(), MembershipError> {
    let identity = Identity::load(&d.paths.state)
        .map_err(|e| Unavailable(format!("reading the cluster identity: {e}")))?;
    let Some(identity) = identity else {
        return Ok(());
    };
    tracing::info!(
        "cluster member {} (id {}) at {}",
        identity.name,
        identity.id,
        identity.address
    );
    let rt = start_member(d, identity).await?;
    d.set_cluster(Some(rt));
    Ok(())
}

/// `PUT /1.0/cluster` with `enabled` on a standalone server: it becomes a cluster of one,
/// named `name`.
pub async fn enable(d: &Arc<Daemon>, name: &str) -> Result<(), MembershipError> {
    if d.cluster().is_some() {
        return Err(Invalid("This server is already clustered".into()));
    }
    crate::validate::object_name(name).map_err(|e| Invalid(e.to_string()))?;
    let address = member_address(d)?;
    let id =
        d.db.next_member_id()
            .map_err(|e| Unavailable(e.to_string()))?;
    let identity = Identity {
        id,
        name: name.to_string(),
        address: address.clone(),
    };
    let rt = start_member(d, identity.clone()).await?;
    let bootstrapped = async {
        rt.bootstrap()
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        let mut cmds = vec![Command::AddMember(MemberRecord {
            id,
            name: name.to_string(),
            address: address.clone(),
            architecture: crate::instance::host_architecture(),
            description: String::new(),
            failure_domain: "default".into(),
            config: Default::default(),
            groups: vec!["default".into()],
            evacuated: false,
        })];
        for mut inst in d.db.instances().map_err(|e| Unavailable(e.to_string()))? {
            inst.location = name.to_string();
            cmds.push(Command::UpdateInstance(inst));
        }
        cmds.extend(
            crate::pool::cluster::founder_shares(d, name)
                .map_err(|e| Unavailable(e.to_string()))?,
        );
        rt.write(cmds)
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        rt.compact().await.map_err(|e| Unavailable(e.to_string()))
    };
    if let Err(e) = bootstrapped.await {
        rt.shutdown().await;
        let _ = std::fs::remove_dir_all(super::member::cluster_dir(&d.paths.state));
        return Err(e);
    }
    identity
        .save(&d.paths.state)
        .map_err(|e| Unavailable(format!("saving the cluster identity: {e}")))?;
    d.local
        .set("cluster.https_address", Some(&address))
        .map_err(|e| Unavailable(format!("saving cluster.https_address: {e}")))?;
    d.set_cluster(Some(rt));
    tracing::info!("clustering enabled: member {name} (id {id}) at {address}");
    Ok(())
}

/// `POST /1.0/cluster/members`: a join token for member `name`, recorded cluster-wide.
pub async fn issue_token(
    d: &Arc<Daemon>,
    name: &str,
    operation_id: &str,
) -> Result<JoinToken, MembershipError> {
    let rt = d
        .cluster()
        .ok_or_else(|| Invalid("This server is not clustered".into()))?;
    crate::validate::object_name(name).map_err(|e| Invalid(e.to_string()))?;
    let db_err = |e: crate::db::DbError| Unavailable(e.to_string());
    if d.db.member(name).map_err(db_err)?.is_some() {
        return Err(Invalid(format!(
            "The cluster already has a member with name: {name}"
        )));
    }
    let mut cmds = Vec::new();
    match d.db.join_token(name).map_err(db_err)? {
        // An expired token is worth nothing: a new one replaces it rather than the name
        // staying blocked until someone revokes the old one.
        Some(old) if old.expires_at <= Utc::now() => {
            cmds.push(Command::DeleteJoinToken { name: old.name })
        }
        Some(_) => {
            return Err(Invalid(format!(
                "A join token for member {name:?} already exists"
            )))
        }
        None => {}
    }
    let rec = JoinTokenRecord {
        name: name.to_string(),
        secret: crate::tls::new_secret(),
        operation_id: operation_id.to_string(),
        expires_at: Utc::now() + TOKEN_LIFETIME,
    };
    cmds.push(Command::CreateJoinToken(rec.clone()));
    d.write(cmds)
        .await
        .map_err(|e| Unavailable(e.to_string()))?;
    let mut addresses = vec![rt.address().to_string()];
    for m in d.db.members().map_err(db_err)? {
        if !addresses.contains(&m.address) && rt.is_online(m.id) {
            addresses.push(m.address);
        }
    }
    Ok(JoinToken {
        server_name: name.to_string(),
        fingerprint: d.cert().fingerprint().to_string(),
        addresses,
        secret: rec.secret,
        expires_at: rec.expires_at,
    })
}

/// `POST /internal/cluster/join` on any member: checks the token and, on the leader, adds
/// the member (a learner until it caught up).
/// `caller` is the TLS client certificate fingerprint of whoever sent the request, and
/// `from_member` whether that is another member of this cluster (forwarding it).
pub async fn accept(
    d: &Arc<Daemon>,
    req: JoinRequest,
    caller: Option<&str>,
    from_member: bool,
) -> Result<JoinAnswer, MembershipError> {
    let rt = d
        .cluster()
        .ok_or_else(|| Invalid("This server is not clustered".into()))?;
    if let Some(p) = &req.proof {
        if !from_member {
            if caller != Some(p.fingerprint.as_str()) {
                return Err(Forbidden(
                    "The join proof is bound to another certificate".into(),
                ));
            }
            super::autojoin::verify(d, &req.name, p).map_err(Forbidden)?;
        }
    }
    if !rt.is_leader() {
        let leader = rt
            .leader()
            .and_then(|l| rt.address_of(l))
            .ok_or_else(|| Unavailable("The cluster has no leader right now".into()))?;
        return peer_client(d)?
            .post_json(&leader, JOIN_PATH, &req, Duration::from_secs(30))
            .await
            .map_err(|e| Unavailable(format!("forwarding the join to the leader: {e}")));
    }
    let db_err = |e: crate::db::DbError| Unavailable(e.to_string());
    let token = if req.proof.is_some() {
        None
    } else {
        let token = d
            .db
            .join_token(&req.name)
            .map_err(db_err)?
            .filter(|t| !req.secret.is_empty() && crate::tls::secrets_equal(&t.secret, &req.secret))
            .ok_or_else(|| Forbidden(format!("No valid join token for member {:?}", req.name)))?;
        if token.expires_at <= Utc::now() {
            let _ = d
                .write(vec![Command::DeleteJoinToken {
                    name: req.name.clone(),
                }])
                .await;
            return Err(Forbidden("The join token has expired".into()));
        }
        Some(token)
    };
    let members = d.db.members().map_err(db_err)?;
    if members.iter().any(|m| m.name == req.name) {
        return Err(Invalid(format!(
            "The cluster already has a member with name: {}",
            req.name
        )));
    }
    if members.iter().any(|m| m.address == req.address) {
        return Err(Invalid(format!(
            "The cluster already has a member with address: {}",
            req.address
        )));
    }
    let id = d.db.next_member_id().map_err(db_err)?;
    let mut cmds = Vec::new();
    if token.is_some() {
        cmds.push(Command::DeleteJoinToken {
            name: req.name.clone(),
        });
    }
    cmds.push(Command::AddMember(MemberRecord {
        id,
        name: req.name.clone(),
        address: req.address.clone(),
        architecture: req.architecture.clone(),
        description: String::new(),
        failure_domain: "default".into(),
        config: Default::default(),
        groups: vec!["default".into()],
        evacuated: false,
    }));
    d.write(cmds).await.map_err(|e| match e {
        // The token was redeemed or revoked (on any member) after it was read here.
        crate::db::DbError::NotFound(_) if token.is_some() => {
            Forbidden(format!("No valid join token for member {:?}", req.name))
        }
        e => Unavailable(format!("recording member {}: {e}", req.name)),
    })?;
    if let Err(e) = rt.add_learner(id, &req.address).await {
        // The role keeper adds members missing from raft; the join still stands.
        tracing::warn!("adding member {} to raft: {e}", req.name);
    }
    if let Some(op) = token.and_then(|t| d.ops.get(&t.operation_id)) {
        op.finish(Ok(()));
    }
    d.events.lifecycle(
        "cluster-member-added",
        &format!("/1.0/cluster/members/{}", req.name),
        serde_json::json!({}),
    );
    let cert = d.cert();
    Ok(JoinAnswer {
        id,
        cluster_certificate: cert.pem().to_string(),
        cluster_key: cert.key_pem(),
    })
}

/// What `PUT /1.0/cluster` carries to join (Incus's `ClusterPut`).
pub struct JoinParams {
    pub server_name: String,
    pub server_address: String,
    pub cluster_certificate: String,
    pub cluster_token: String,
}

/// `PUT /1.0/cluster` with a join token, on the joining server.
pub async fn join(d: &Arc<Daemon>, p: JoinParams) -> Result<(), MembershipError> {
    if d.cluster().is_some() {
        return Err(Invalid("This server is already clustered".into()));
    }
    let token = JoinToken::decode(&p.cluster_token)?;
    let name = if p.server_name.is_empty() {
        token.server_name.clone()
    } else {
        p.server_name.clone()
    };
    if name != token.server_name {
        return Err(Invalid(format!(
            "The join token is for member {:?}, not {name:?}",
            token.server_name
        )));
    }
    if token.expires_at <= Utc::now() {
        return Err(Invalid("The join token has expired".into()));
    }
    if !d
        .db
        .instances()
        .map_err(|e| Unavailable(e.to_string()))?
        .is_empty()
    {
        return Err(Invalid(
            "The joining server has instances: only an empty server can join a cluster".into(),
        ));
    }
    if !p.server_address.is_empty() && d.local.get("core.https_address").is_none() {
        crate::listener::apply_https_address(d, Some(&p.server_address))
            .await
            .map_err(Invalid)?;
        d.local
            .set("core.https_address", Some(&p.server_address))
            .map_err(|e| Unavailable(e.to_string()))?;
    }
    if !p.server_address.is_empty() {
        d.local
            .set("cluster.https_address", Some(&p.server_address))
            .map_err(|e| Unavailable(e.to_string()))?;
    }
    let address = member_address(d)?;
    let pin = if p.cluster_certificate.trim().is_empty() {
        return Err(Invalid("The cluster certificate is missing".into()));
    } else {
        crate::tls::parse_cert_pem(&p.cluster_certificate, "cluster certificate")
            .map_err(|e| Invalid(e.to_string()))?
    };
    if crate::tls::cert_fingerprint(&pin) != token.fingerprint {
        return Err(Invalid(
            "The cluster certificate does not match the join token's fingerprint".into(),
        ));
    }
    let client = PeerClient::pinned(&pin, &d.cert())
        .map_err(|e| Unavailable(format!("cluster client: {e}")))?;
    let req = JoinRequest {
        name: name.clone(),
        address: address.clone(),
        secret: token.secret.clone(),
        proof: None,
        architecture: crate::instance::host_architecture(),
    };
    complete_join(d, client, &token.addresses, req).await
}

/// Sends `req` to the first member in `addresses` that answers, then becomes a member:
/// installs the cluster certificate, starts Raft and waits for the cluster's database.
pub async fn complete_join(
    d: &Arc<Daemon>,
    client: PeerClient,
    addresses: &[String],
    req: JoinRequest,
) -> Result<(), MembershipError> {
    let (name, address) = (req.name.clone(), req.address.clone());
    let mut last = String::from("no address to join at");
    let mut answer = None;
    for addr in addresses {
        match client
            .post_json::<_, JoinAnswer>(addr, JOIN_PATH, &req, Duration::from_secs(60))
            .await
        {
            Ok(a) => {
                answer = Some(a);
                break;
            }
            // The member's own error says what is wrong (token, name); keep just that.
            Err(super::peer::PeerError::Status { body, .. }) => {
                last = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(String::from))
                    .unwrap_or(body);
            }
            Err(e) => last = e.to_string(),
        }
    }
    let answer = answer.ok_or(Unavailable(last))?;
    d.replace_cert(&answer.cluster_certificate, &answer.cluster_key)
        .map_err(|e| Unavailable(format!("installing the cluster certificate: {e}")))?;
    d.https
        .refresh_tls(&d.cert())
        .map_err(|e| Unavailable(format!("serving the cluster certificate: {e}")))?;
    let identity = Identity {
        id: answer.id,
        name: name.clone(),
        address,
    };
    identity
        .save(&d.paths.state)
        .map_err(|e| Unavailable(format!("saving the cluster identity: {e}")))?;
    let rt = start_member(d, identity).await?;
    // Before the wait: the snapshot arrives through this member's API, which hands Raft
    // messages only once its `Member` is set.
    d.set_cluster(Some(rt));
    // The leader sends the cluster's database as a snapshot first; wait until it is here.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if matches!(d.db.member(&name), Ok(Some(m)) if m.id == answer.id) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Unavailable(
                "Joined, but the cluster's database did not arrive within 60 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Err(e) = d.reopen_pools() {
        tracing::warn!("opening the cluster's storage pools: {e}");
    }
    crate::pool::cluster::adopt_shares(d).await;
    let d2 = d.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || crate::network::manage::resync(&d2)).await {
        tracing::warn!("making the cluster's networks here: {e}");
    }
    tracing::info!("joined the cluster as {name} (id {})", answer.id);
    Ok(())
}

/// After this member was renamed: its identity file follows.
pub fn renamed_self(d: &Daemon, to: &str) -> Result<(), MembershipError> {
    let rt = d
        .cluster()
        .ok_or_else(|| Invalid("This server is not clustered".into()))?;
    rt.rename(&d.paths.state, to)
        .map_err(|e| Unavailable(format!("saving the cluster identity: {e}")))
}
