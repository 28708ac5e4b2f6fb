//! Zero-touch cluster formation: a daemon started with a cluster seed (the `cluster:`
//! section of the appliance seed, handed over in `<state>/preseed.yaml`) announces itself
//! with [`super::discovery`], and once the founder is chosen either enables clustering
//! (it is the founder) or joins the founder with a join proof instead of an Incus token.
//! A member keeps announcing after it formed or joined (with `formed` set), so that
//! members started later find the cluster and join it straight away.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::discovery::{self, ClusterKeys, Decision, Discovery, DiscoveryConfig, NonceCache};
use super::membership::{self, JoinRequest, SeedProof};
use super::peer::PeerClient;
use crate::daemon::Daemon;

/// How long a join nonce is accepted, and how many are remembered.
const NONCE_MAX_AGE: Duration = Duration::from_secs(300);
const NONCE_CAPACITY: usize = 4096;
/// Between two formation decisions, and after a failed join.
const POLL: Duration = Duration::from_millis(200);
const RETRY: Duration = Duration::from_secs(1);

/// What a member needs to check join proofs: the keys derived from the seed's secret.
pub struct SeedKeys {
    keys: ClusterKeys,
    nonces: Mutex<NonceCache>,
}

/// Checks a join proof presented by member `name` (the TLS fingerprint was checked by the
/// caller). Refused when this member has no cluster seed.
pub fn verify(d: &Daemon, name: &str, p: &SeedProof) -> Result<(), String> {
    let sk = d
        .seed_keys
        .get()
        .ok_or("This member was not started with a cluster seed: join proofs are refused")?;
    if !discovery::verify_join_proof(&sk.keys, name, &p.fingerprint, &p.nonce, &p.proof) {
        tracing::warn!("refusing a join of {name:?}: bad join proof (wrong cluster secret?)");
        return Err("Invalid join proof".into());
    }
    sk.nonces
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .check_and_remember(&p.nonce, SystemTime::now())
        .map_err(|e| format!("Join proof refused: {e}"))
}

/// The IPv4 address of `interface`, to announce when the API listens on a wildcard.
fn interface_address(interface: &str) -> Option<std::net::Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != interface {
            return None;
        }
        ifa.address?.as_sockaddr_in().map(|a| a.ip())
    })
}

/// This member's API address as other members must reach it.
fn api_address(d: &Daemon, interface: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = membership::member_address(d) {
        if let Ok(sa) = a.parse() {
            return Ok(sa);
        }
    }
    let core = d
        .local
        .get("core.https_address")
        .ok_or("core.https_address is not set: the member has no API to be reached at")?;
    let port = crate::listener::normalize_address(&core)
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(8443);
    let ip = interface_address(interface)
        .ok_or_else(|| format!("interface {interface} has no IPv4 address"))?;
    let addr = std::net::SocketAddr::from((ip, port));
    // Members reach this one there: make it the member's cluster address.
    d.local
        .set("cluster.https_address", Some(&addr.to_string()))
        .map_err(|e| format!("saving cluster.https_address: {e}"))?;
    Ok(addr)
}

/// Starts formation (or, for a member already clustered, announcing) in the background.
pub fn start(d: Arc<Daemon>, seed: cairn_seed::Cluster, member: String) {
    let keys = ClusterKeys::derive(&seed.name, &seed.secret);
    let _ = d.seed_keys.set(Arc::new(SeedKeys {
        keys,
        nonces: Mutex::new(NonceCache::new(NONCE_CAPACITY, NONCE_MAX_AGE)),
    }));
    tokio::spawn(async move {
        if let Err(e) = run(d, seed, member).await {
            tracing::error!("cluster formation: {e}");
        }
    });
}

async fn run(d: Arc<Daemon>, seed: cairn_seed::Cluster, member: String) -> Result<(), String> {
    let interface = match &seed.interface {
        Some(i) => i.clone(),
        None => discovery::default_interface().map_err(|e| e.to_string())?,
    };
    let api = api_address(&d, &interface)?;
    let mut config = DiscoveryConfig::new(
        &seed.name,
        &seed.secret,
        &member,
        api,
        d.cert().fingerprint(),
    );
    config.interface = Some(interface);
    config.port = seed.port;
    let disc = Discovery::start(config).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(seed.formation_timeout);
    tracing::info!(
        "cluster {}: announcing {member} at {api}, {} founders",
        seed.name,
        seed.founders
    );
    let mut shutdown = d.shutdown.subscribe();
    loop {
        if d.cluster().is_some() {
            disc.set_formed(true);
            break;
        }
        match disc.decide(seed.founders, timeout) {
            Decision::Wait => {}
            Decision::Founder(f) if f == member => {
                tracing::info!("cluster {}: founding it as {member}", seed.name);
                match membership::enable(&d, &member).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!("founding the cluster: {e}");
                        tokio::time::sleep(RETRY).await;
                    }
                }
                continue;
            }
            Decision::Founder(f) => {
                let peer = disc.peers().borrow().get(&f).cloned();
                if let Some(p) = peer.filter(|p| p.formed) {
                    tracing::info!("cluster {}: joining {f} at {}", seed.name, p.api_address);
                    if let Err(e) = join(&d, &disc, &member, &p).await {
                        tracing::warn!("joining {f}: {e}");
                        tokio::time::sleep(RETRY).await;
                    }
                    continue;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    // Keep announcing (formed) for members that come later, until the daemon stops.
    let _ = shutdown.wait_for(|s| *s).await;
    drop(disc);
    Ok(())
}

async fn join(
    d: &Arc<Daemon>,
    disc: &Discovery,
    member: &str,
    founder: &discovery::Peer,
) -> Result<(), String> {
    let own = d.cert();
    let client =
        PeerClient::pinned_fingerprint(&founder.fingerprint, &own).map_err(|e| e.to_string())?;
    let nonce = discovery::new_join_nonce();
    let fingerprint = own.fingerprint().to_string();
    let proof = discovery::join_proof(disc.keys(), member, &fingerprint, &nonce);
    let address = membership::member_address(d).map_err(|e| e.to_string())?;
    let req = JoinRequest {
        name: member.to_string(),
        address,
        secret: String::new(),
        proof: Some(SeedProof {
            nonce,
            proof,
            fingerprint,
        }),
        architecture: crate::instance::host_architecture(),
    };
    membership::complete_join(d, client, &[founder.api_address.to_string()], req)
        .await
        .map_err(|e| e.to_string())
}
