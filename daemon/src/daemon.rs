//! The daemon's shared state: paths, database, event hub, operations, storage pools, the
//! server certificate and host facts. Services take `&Daemon`; the API layer holds an
//! `Arc<Daemon>`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};

use crate::db::records::{PoolRecord, ProfileRecord};
use crate::db::{Command, Db, DbError};
use crate::events::EventHub;
use crate::instance::idmap::IdShift;
use crate::instance::lxc_config::HostCaps;
use crate::local_config::LocalConfig;
use crate::operations::Operations;
use crate::storage::{self, StorageDriver};
use crate::tls::cert::ServerCert;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating state directory {0}: {1}")]
    StateDir(PathBuf, std::io::Error),
    #[error("opening the database: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("server certificate: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("node-local configuration: {0}")]
    Local(String),
}

/// Where things live under the state dir.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state: PathBuf,
    pub lxc: PathBuf,
    pub logs: PathBuf,
    pub images: PathBuf,
    pub pools: PathBuf,
    /// Managed networks' dnsmasq config, leases and hosts.
    pub networks: PathBuf,
    pub unix_socket: PathBuf,
}

impl Paths {
    pub fn new(state: &Path) -> Paths {
        Paths {
            state: state.to_path_buf(),
            lxc: state.join("lxc"),
            logs: state.join("logs"),
            images: state.join("images"),
            pools: state.join("storage-pools"),
            networks: state.join("networks"),
            unix_socket: state.join("unix.socket"),
        }
    }
}

pub struct Daemon {
    pub paths: Paths,
    /// Reads go here directly. Writes go through [`Daemon::write`]: in a cluster this
    /// database is the Raft state machine and must not be written to any other way.
    pub db: Arc<Db>,
    /// Node-local settings (`core.https_address`, `cluster.https_address`): never replicated.
    pub local: LocalConfig,
    /// Keys from the cluster seed, to check join proofs (zero-touch formation).
    pub seed_keys: std::sync::OnceLock<Arc<crate::cluster::autojoin::SeedKeys>>,
    /// The Raft heartbeat from the cluster seed, read at each start before membership
    /// resumes (else the default of `cluster::node::Config`).
    pub raft_heartbeat: std::sync::OnceLock<std::time::Duration>,
    /// Whether this daemon runs the OVN control plane (the preseed's `ovn:` part).
    pub ovn_services: std::sync::OnceLock<bool>,
    /// The cluster this member belongs to, once enabled or joined.
    cluster: RwLock<Option<Arc<crate::cluster::member::Member>>>,
    pub events: EventHub,
    pub ops: Operations,
    pub pools: RwLock<BTreeMap<String, Arc<dyn StorageDriver>>>,
    pub networks: crate::network::manage::Networks,
    /// The HTTPS certificate; in a cluster, the cluster certificate shared by all members.
    cert: RwLock<Arc<ServerCert>>,
    pub host: HostCaps,
    pub idmap: IdShift,
    pub hostname: String,
    pub started_at: DateTime<Utc>,
    /// One async lock per instance: state changes of one instance never interleave.
    instance_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub https: crate::listener::HttpsSlot,
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

fn make_dir(p: &Path, mode: u32) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).map_err(|e| StartError::StateDir(p.to_path_buf(), e))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| StartError::StateDir(p.to_path_buf(), e))
}

/// What holds state or secrets directly in the state directory: the database (its WAL and
/// shared memory take the database file's mode when SQLite creates them), the node-local
/// settings, the server certificate and key, and the seed and preseed cairn-init keeps
/// there (both carry the cluster's join secret).
const PRIVATE_FILES: &[&str] = &[
    "cairn.db",
    "cairn.db-wal",
    "cairn.db-shm",
    "cairn.db-journal",
    "local.json",
    "server.crt",
    "server.key",
    "preseed.yaml",
    "seed.yaml",
];

/// Makes what an older cairnd (or cairn-init) left readable to others owner-only: the
/// files in [`PRIVATE_FILES`], and `cluster/` with everything under it (Raft log,
/// snapshots, membership). New files are created so from the start; this only fixes what
/// exists.
fn restrict_existing(state: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &Path, mode: u32| match std::fs::symlink_metadata(p) {
        Ok(md) if md.permissions().mode() & 0o7777 != mode && !md.file_type().is_symlink() => {
            tracing::info!("making {} owner-only ({mode:o})", p.display());
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| StartError::StateDir(p.to_path_buf(), e))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StartError::StateDir(p.to_path_buf(), e)),
    };
    for name in PRIVATE_FILES {
        chmod(&state.join(name), 0o600)?;
    }
    // Directories first, so nothing below is reachable while its own mode is fixed.
    let mut dirs = vec![state.join("cluster")];
    while let Some(dir) = dirs.pop() {
        if !dir.is_dir() {
            continue;
        }
        chmod(&dir, 0o700)?;
        let entries = std::fs::read_dir(&dir).map_err(|e| StartError::StateDir(dir.clone(), e))?;
        for ent in entries {
            let ent = ent.map_err(|e| StartError::StateDir(dir.clone(), e))?;
            let ft = ent
                .file_type()
                .map_err(|e| StartError::StateDir(ent.path(), e))?;
            if ft.is_dir() {
                dirs.push(ent.path());
            } else if ft.is_file() {
                chmod(&ent.path(), 0o600)?;
            }
        }
    }
    Ok(())
}

/// Creates the database file owner-only if it is missing: SQLite then creates its WAL and
/// shared-memory files with the same mode, so none of them is ever readable by others.
fn create_private_file(p: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(p)
        .map(drop)
        .map_err(|e| StartError::StateDir(p.to_path_buf(), e))
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "cairn".into())
}

impl Daemon {
    pub fn open(state: &Path) -> Result<Arc<Daemon>, StartError> {
        let paths = Paths::new(state);
        // 0711: unprivileged containers must traverse to their rootfs, but not list.
        make_dir(&paths.state, 0o711)?;
        make_dir(&paths.lxc, 0o711)?;
        make_dir(&paths.logs, 0o700)?;
        make_dir(&paths.images, 0o700)?;
        make_dir(&paths.pools, 0o711)?;
        // dnsmasq, once it drops root, must reach its hosts dir under here.
        make_dir(&paths.networks, 0o711)?;
        restrict_existing(&paths.state)?;
        let hostname = hostname();
        // The certificate (made at the first start: key generation, two durable writes)
        // and the database (made or migrated) do not depend on each other: on a slow
        // first boot they take their time side by side.
        let cert = {
            let (dir, host) = (state.to_path_buf(), hostname.clone());
            std::thread::Builder::new()
                .name("server-cert".into())
                .spawn(move || ServerCert::load_or_generate(&dir, &host))
                .map_err(|e| StartError::StateDir(state.to_path_buf(), e))?
        };
        let db_path = state.join("cairn.db");
        create_private_file(&db_path)?;
        let db = Arc::new(Db::open(&db_path)?);
        let local = LocalConfig::open(&state.join("local.json"), &db)?;
        let cert = cert
            .join()
            .map_err(|_| StartError::Local("the certificate thread panicked".into()))??;
        let events = EventHub::new();
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let d = Daemon {
            ops: Operations::new(events.clone()),
            events,
            db,
            local,
            cluster: RwLock::new(None),
            seed_keys: std::sync::OnceLock::new(),
            raft_heartbeat: std::sync::OnceLock::new(),
            ovn_services: std::sync::OnceLock::new(),
            pools: RwLock::new(BTreeMap::new()),
            networks: crate::network::manage::Networks::new(&paths.networks),
            cert: RwLock::new(Arc::new(cert)),
            host: HostCaps::detect(),
            idmap: IdShift::host_default(),
            hostname,
            started_at: Utc::now(),
            instance_locks: Mutex::new(HashMap::new()),
            https: Default::default(),
            shutdown,
            paths,
        };
        d.seed_defaults()?;
        d.open_pools()?;
        Ok(Arc::new(d))
    }

    /// The pool keys that describe one member's share (its disk, loop file, zpool), as Incus
    /// keeps them per member.
    /// First start: a `default` profile with a root disk on the `default` dir pool and a p2p
    /// NIC, as `incus admin init --auto` would give (minus a managed bridge, which comes later).
    fn seed_defaults(&self) -> Result<(), StartError> {
        // A cluster member's database is the cluster's replica, written only through the
        // Raft log: its defaults came with the founder's snapshot, and a default pool the
        // cluster deleted must not come back in one member's copy at its next start.
        let identity = crate::cluster::member::Identity::load(&self.paths.state);
        if !matches!(identity, Ok(None)) {
            return Ok(());
        }
        // One transaction for both: one commit on the first start.
        let mut first = Vec::new();
        // The preseed's networks (the appliance's NAT bridge; in a cluster its uplink and
        // OVN network), recorded in order before the profile that puts eth0 on one of
        // them: each may need the one before (a subnet not to overlap, an uplink).
        // First start only (no default profile yet): a network the operator deleted later
        // stays deleted.
        let mut made: Vec<(String, String)> = Vec::new();
        let first_start = self.db.profile("default")?.is_none();
        let preseed = crate::preseed::load(&self.paths.state.join("preseed.yaml"));
        let mut wanted_nic = None;
        if let (true, Ok(Some(p))) = (first_start, preseed) {
            wanted_nic = p.default_network.clone();
            for n in p.networks {
                if self.db.network(&n.name)?.is_some() {
                    continue;
                }
                match crate::network::manage::first_start_record(
                    self,
                    &n.name,
                    &n.kind,
                    &n.description,
                    n.config,
                ) {
                    Ok(writes) => {
                        self.db.apply_unreplicated(&writes)?;
                        made.push((n.name.clone(), n.kind.clone()));
                    }
                    Err(e) => tracing::error!(network = %n.name, "the preseed's network: {e}"),
                }
            }
        }
        // eth0 on the preseed's default_network, else on its first network that takes NICs.
        let on = match &wanted_nic {
            Some(w) => made.iter().find(|(n, k)| n == w && k != "physical"),
            None => made.iter().find(|(_, k)| k != "physical"),
        };
        if let (Some(w), None) = (&wanted_nic, on) {
            tracing::error!("the preseed's default_network {w:?} was not made: eth0 stays p2p");
        }
        let nic: BTreeMap<String, String> = match on {
            Some((n, _)) => [("type", "nic"), ("network", n.as_str()), ("name", "eth0")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            None => [("type", "nic"), ("nictype", "p2p"), ("name", "eth0")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        if self.db.profile("default")?.is_none() {
            let mut devices = BTreeMap::new();
            devices.insert(
                "root".to_string(),
                [("type", "disk"), ("path", "/"), ("pool", "default")]
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            );
            devices.insert("eth0".to_string(), nic);
            first.push(Command::CreateProfile(ProfileRecord {
                name: "default".into(),
                description: "Default Cairn profile".into(),
                config: BTreeMap::new(),
                devices,
            }));
        }
        if self.db.pools()?.is_empty() {
            let made = self.preseed_pools();
            let has_default = made.iter().any(|p| p.name == "default");
            first.extend(made.into_iter().map(Command::CreatePool));
            if !has_default {
                let source = self.paths.pools.join("default");
                first.push(Command::CreatePool(PoolRecord {
                    name: "default".into(),
                    driver: "dir".into(),
                    description: String::new(),
                    config: [("source".to_string(), source.display().to_string())].into(),
                    ..PoolRecord::default()
                }));
            }
        }
        if !first.is_empty() {
            self.db.apply_unreplicated(&first)?;
        }
        Ok(())
    }

    /// The first start's pools from the preseed (the appliance's `default` on its data
    /// disk), made on this member. One that cannot be made is logged and left out: the
    /// daemon still comes up, with the dir `default` in its place.
    fn preseed_pools(&self) -> Vec<PoolRecord> {
        let pools = match crate::preseed::load(&self.paths.state.join("preseed.yaml")) {
            Ok(Some(p)) => p.storage_pools,
            Ok(None) => return Vec::new(),
            // apply_local reports it (and refuses the start) right after.
            Err(_) => return Vec::new(),
        };
        let mut made = Vec::new();
        for p in pools {
            let created = storage::kind(&p.driver)
                .and_then(|k| (k.create)(&p.name, &p.config, &self.pool_paths(&p.name)));
            match created {
                Ok(config) => {
                    tracing::info!(pool = %p.name, driver = %p.driver, "storage pool created from the preseed");
                    self.record_local_share(&p.name, &p.driver, &config);
                    made.push(PoolRecord {
                        name: p.name,
                        driver: p.driver,
                        description: p.description,
                        config,
                        ..PoolRecord::default()
                    });
                }
                Err(e) => {
                    tracing::error!(pool = %p.name, "creating the preseed's storage pool: {e}")
                }
            }
        }
        made
    }

    /// Writes `cmds` as one request: all take effect or none. Standalone, straight to the
    /// database; in a cluster, through Raft, returning once committed on a majority and
    /// applied here.
    pub async fn write(&self, cmds: Vec<Command>) -> Result<(), DbError> {
        match self.cluster() {
            None => self.db.apply_unreplicated(&cmds),
            Some(c) => c.write(cmds).await,
        }
    }

    /// [`Daemon::write`] for code running on a blocking thread (`spawn_blocking`).
    pub fn write_blocking(&self, cmds: Vec<Command>) -> Result<(), DbError> {
        match self.cluster() {
            None => self.db.apply_unreplicated(&cmds),
            Some(c) => tokio::runtime::Handle::try_current()
                .map_err(|e| DbError::Unavailable(format!("no runtime for a cluster write: {e}")))?
                .block_on(c.write(cmds)),
        }
    }

    pub fn cluster(&self) -> Option<Arc<crate::cluster::member::Member>> {
        self.cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_cluster(&self, c: Option<Arc<crate::cluster::member::Member>>) {
        *self.cluster.write().unwrap_or_else(|p| p.into_inner()) = c;
    }

    pub fn cert(&self) -> Arc<ServerCert> {
        self.cert.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the HTTPS certificate (joining a cluster: the cluster's certificate), on
    /// disk and for new connections.
    pub fn replace_cert(&self, cert_pem: &str, key_pem: &str) -> Result<(), crate::tls::TlsError> {
        let cert = ServerCert::install(&self.paths.state, cert_pem, key_pem)?;
        *self.cert.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cert);
        Ok(())
    }

    /// This member's name: the cluster member name, or the hostname when standalone.
    pub fn server_name(&self) -> String {
        self.cluster()
            .map(|c| c.name())
            .unwrap_or_else(|| self.hostname.clone())
    }

    /// (Re)opens the storage pools the database lists (after joining a cluster, the
    /// cluster's pools replace this member's own).
    pub fn reopen_pools(&self) -> Result<(), StartError> {
        self.pools_mut().clear();
        self.open_pools()
    }

    fn open_pools(&self) -> Result<(), StartError> {
        for p in self.db.pools()? {
            // A pending pool has no share to open yet.
            if p.status != crate::db::records::PoolStatus::Created {
                continue;
            }
            // A pool that cannot be opened (its loop file or device gone) leaves the pool
            // Unavailable; the daemon and the other pools keep serving.
            match storage::open(
                &p.name,
                &p.driver,
                &self.pool_config(&p),
                &self.pool_paths(&p.name),
            ) {
                Ok(driver) => {
                    self.pools_mut().insert(p.name.clone(), Arc::from(driver));
                }
                Err(e) if p.driver != "dir" => {
                    tracing::error!(pool = %p.name, "storage pool unavailable: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    pub fn pool_paths(&self, pool: &str) -> storage::PoolPaths {
        storage::PoolPaths::new(&self.paths.state, pool)
    }

    /// Where this member keeps the member-specific keys of a pool share it made itself.
    pub fn local_share_path(&self, pool: &str) -> std::path::PathBuf {
        self.paths.pools.join(format!("{pool}.member.json"))
    }

    /// Remembers what this member made for `pool` (its disk, loop size, zpool name): in a
    /// cluster the pool's record is the founder's, and a member whose disk has another
    /// name still opens its own share.
    fn record_local_share(&self, pool: &str, driver: &str, config: &storage::PoolConfig) {
        let keys: BTreeMap<&str, &str> = config
            .iter()
            .filter(|(k, _)| crate::pool::MEMBER_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(std::iter::once(("driver", driver)))
            .collect();
        let path = self.local_share_path(pool);
        let written = serde_json::to_vec(&keys)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::owner_only::write(&path, &b));
        if let Err(e) = written {
            tracing::warn!(
                pool,
                "recording this member's pool share in {}: {e}",
                path.display()
            );
        }
    }

    /// A pool's config as this member's driver opens it: the shared keys, then this
    /// member's own (its share in the record, or what it made from its preseed).
    pub fn pool_config(&self, p: &PoolRecord) -> storage::PoolConfig {
        let mut c = p.config.clone();
        let own = self
            .cluster()
            .and_then(|rt| p.members.get(&rt.name()).map(|s| s.config.clone()))
            .or_else(|| {
                let text = std::fs::read(self.local_share_path(&p.name)).ok()?;
                let mut mine: BTreeMap<String, String> = serde_json::from_slice(&text).ok()?;
                (mine.remove("driver").as_ref() == Some(&p.driver)).then_some(mine)
            });
        if let Some(own) = own {
            for k in crate::pool::MEMBER_KEYS {
                match own.get(*k) {
                    Some(v) => c.insert(k.to_string(), v.clone()),
                    None => c.remove(*k),
                };
            }
        }
        // A dir pool's source is a path on one member; in a cluster each member keeps the
        // pool's data in its own state dir.
        if self.cluster().is_some() && p.driver == "dir" {
            c.insert(
                "source".into(),
                self.paths.pools.join(&p.name).display().to_string(),
            );
        }
        c
    }

    pub fn pools_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<dyn StorageDriver>>> {
        self.pools.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pool(&self, name: &str) -> Option<Arc<dyn StorageDriver>> {
        self.pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn instance_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .instance_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    pub fn instance_log_dir(&self, name: &str) -> PathBuf {
        self.paths.logs.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preseed_pool_is_made_and_this_members_share_wins_over_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("data");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            dir.path().join("preseed.yaml"),
            format!(
                "storage_pools:\n- {{name: default, driver: dir, config: {{source: {}}}}}\n",
                src.display()
            ),
        )
        .unwrap();
        let d = Daemon::open(dir.path()).unwrap();
        let rec = d.db.pool("default").unwrap().unwrap();
        assert_eq!(rec.config["source"], src.display().to_string());
        // The cluster's record names another member's disk: this member opens its own.
        let mut founders = rec.clone();
        founders.config.insert("source".into(), "/elsewhere".into());
        assert_eq!(
            d.pool_config(&founders)["source"],
            src.display().to_string()
        );
        // A record of another driver is not this member's share.
        founders.driver = "btrfs".into();
        assert_eq!(d.pool_config(&founders)["source"], "/elsewhere");
    }
}
