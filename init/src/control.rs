//! The D-Bus interface cairn-init offers cairnd: `org.cairn.Init1` at `/org/cairn/Init1`, on
//! a peer-to-peer unix socket ([`SOCKET`], root only; no bus daemon). cairnd serves it as
//! `/os/1.0/…`, since the appliance has no shell.
//!
//! | method | signature | what |
//! | --- | --- | --- |
//! | `PowerOff` | `() → ()` | orderly shutdown, then power off |
//! | `Reboot` | `() → ()` | orderly shutdown, then reboot |
//! | `Services` | `() → a(ssius)` | name, state, pid (0: none), failures, log file |
//! | `ServiceLog` | `(s name, t max_bytes) → s` | tail of a service's log (`init`: our own) |
//! | `Boots` | `() → as` | the boot history, one line per boot |
//!
//! Errors: `org.cairn.Init1.Error.NoSuchService` (unknown service or log name),
//! `org.cairn.Init1.Error.Failed` (e.g. the log file cannot be read).
//!
//! The server runs in its own thread on a tokio current-thread runtime, so the main loop
//! stays synchronous and single-threaded: it sees the supervisor only through the
//! [`StatusBoard`] snapshot the main loop publishes, and asks for a shutdown through a
//! callback (in PID 1 a signal to itself, which the main loop reads like any other, so there
//! is one shutdown path). A server that fails or panics is restarted with back-off; PID 1
//! never goes down with it.

use crate::backoff::Backoff;
use crate::info;
use crate::shutdown::Action;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub const SOCKET: &str = "/run/cairn/init.sock";
pub const OBJECT_PATH: &str = "/org/cairn/Init1";
pub const INTERFACE: &str = "org.cairn.Init1";
pub const ERROR_NO_SUCH_SERVICE: &str = "org.cairn.Init1.Error.NoSuchService";

/// At most this much of a log in one answer (cairnd asks for at most as much): bounds the
/// memory of one call and stays far below D-Bus's message size limit.
pub const MAX_LOG_BYTES: u64 = 4 << 20;
/// A peer that has not finished the SASL handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// cairnd opens one connection per request; more than this at once is not cairnd.
const MAX_PEERS: usize = 16;
/// After this many accept errors in a row, the server starts over (binds the socket anew).
const MAX_ACCEPT_ERRORS: u32 = 50;

/// One service as `Services()` returns it: name, state (`running`, `waiting`, `stopped`),
/// pid (0 when not running), consecutive quick failures, log file.
pub type ServiceRow = (String, String, i32, u32, String);

/// A supervised service as the main loop last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub state: &'static str,
    pub pid: Option<i32>,
    pub failures: u32,
    pub log: PathBuf,
}

impl ServiceStatus {
    fn row(&self) -> ServiceRow {
        (
            self.name.clone(),
            self.state.to_string(),
            self.pid.unwrap_or(0),
            self.failures,
            self.log.display().to_string(),
        )
    }
}

/// The service status the main loop publishes and the D-Bus thread reads.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard(Arc<Mutex<Vec<ServiceStatus>>>);

impl StatusBoard {
    pub fn publish(&self, services: Vec<ServiceStatus>) {
        // A poisoned lock only means a reader panicked mid-copy: the data is still whole.
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = services;
    }

    pub fn snapshot(&self) -> Vec<ServiceStatus> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Carries out a power action (in PID 1: signals itself; in tests: records it).
pub type PowerFn = Arc<dyn Fn(Action) + Send + Sync>;

/// What the interface serves from.
#[derive(Clone)]
pub struct Control {
    pub board: StatusBoard,
    /// Where `<service>.log` and `init.log` are.
    pub log_dir: PathBuf,
    /// The boot history file.
    pub boots: PathBuf,
    pub power: PowerFn,
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.cairn.Init1.Error")]
pub enum InitError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No service (and no log) of that name.
    NoSuchService(String),
    Failed(String),
}

/// The interface object, one per connection (so it knows its peer for the log).
struct Init1 {
    ctl: Arc<Control>,
    peer_pid: i32,
}

#[zbus::interface(name = "org.cairn.Init1", introspection_docs = false)]
impl Init1 {
    fn power_off(&self) {
        info!(
            "power-off requested over D-Bus (peer pid {})",
            self.peer_pid
        );
        (self.ctl.power)(Action::PowerOff);
    }

    fn reboot(&self) {
        info!("reboot requested over D-Bus (peer pid {})", self.peer_pid);
        (self.ctl.power)(Action::Reboot);
    }

    fn services(&self) -> Vec<ServiceRow> {
        self.ctl
            .board
            .snapshot()
            .iter()
            .map(ServiceStatus::row)
            .collect()
    }

    fn service_log(&self, name: &str, max_bytes: u64) -> Result<String, InitError> {
        // Only names we supervise (or `init`) become a path: nothing else reaches the disk.
        let known = name == "init" || self.ctl.board.snapshot().iter().any(|s| s.name == name);
        if !known || !plain_name(name) {
            return Err(InitError::NoSuchService(format!("no service {name:?}")));
        }
        let path = self.ctl.log_dir.join(format!("{name}.log"));
        tail(&path, max_bytes.min(MAX_LOG_BYTES))
            .map_err(|e| InitError::Failed(format!("reading {}: {e}", path.display())))
    }

    fn boots(&self) -> Result<Vec<String>, InitError> {
        match std::fs::read_to_string(&self.ctl.boots) {
            Ok(t) => Ok(t.lines().map(str::to_string).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(InitError::Failed(format!(
                "reading {}: {e}",
                self.ctl.boots.display()
            ))),
        }
    }
}

/// A name that is a single path component (defence in depth: names come from our own list).
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0'])
}

/// The last `max_bytes` of a file, starting at a line boundary.
fn tail(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max_bytes);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(max_bytes).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(match text.split_once('\n') {
        Some((_, rest)) if start > 0 => rest.to_string(),
        _ => text,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("creating the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("binding {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{MAX_ACCEPT_ERRORS} accept errors in a row, the last: {0}")]
    Accept(#[source] std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("reading the peer's credentials: {0}")]
    Credentials(#[source] std::io::Error),
    #[error("peer uid {uid} refused (only uid {ours} may connect)")]
    Refused { uid: u32, ours: u32 },
    #[error("D-Bus handshake: {0}")]
    Handshake(#[from] zbus::Error),
    #[error("D-Bus handshake took over {}s", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout,
}

/// Starts the server thread on `socket`; it restarts the server whenever it fails.
pub fn spawn(ctl: Control, socket: PathBuf) {
    let ctl = Arc::new(ctl);
    let started = std::thread::Builder::new()
        .name("dbus".into())
        .spawn(move || supervise(&ctl, &socket));
    if let Err(e) = started {
        info!("D-Bus: starting its thread: {e}");
    }
}

fn supervise(ctl: &Arc<Control>, socket: &Path) {
    let backoff = Backoff::default();
    let mut failures = 0;
    loop {
        let began = Instant::now();
        let why =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(ctl, socket))) {
                Ok(Err(e)) => e.to_string(),
                Err(_) => "panicked".to_string(),
            };
        failures = backoff.failures_after(failures, began.elapsed());
        let delay = backoff.delay(failures);
        info!(
            "D-Bus server on {}: {why}; restarting in {:.1}s",
            socket.display(),
            delay.as_secs_f64()
        );
        std::thread::sleep(delay);
    }
}

/// Binds `socket` (root only) and serves connections until something breaks for good.
pub fn serve(ctl: &Arc<Control>, socket: &Path) -> Result<Infallible, ServeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let listener = bind(socket).map_err(|source| ServeError::Bind {
        path: socket.to_path_buf(),
        source,
    })?;
    info!("D-Bus interface {INTERFACE} on {}", socket.display());
    rt.block_on(accept_loop(ctl.clone(), listener))
}

fn bind(socket: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by an earlier server goes; anything else there is not ours to delete.
    if std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(socket)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn accept_loop(
    ctl: Arc<Control>,
    listener: std::os::unix::net::UnixListener,
) -> Result<Infallible, ServeError> {
    let listener = tokio::net::UnixListener::from_std(listener).map_err(ServeError::Accept)?;
    let guid = zbus::Guid::generate();
    let peers = Arc::new(AtomicUsize::new(0));
    let mut errors = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                errors += 1;
                if errors >= MAX_ACCEPT_ERRORS {
                    return Err(ServeError::Accept(e));
                }
                // EMFILE and the like pass; don't spin on them.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        errors = 0;
        if peers.load(Ordering::Relaxed) >= MAX_PEERS {
            info!("D-Bus: {MAX_PEERS} peers connected already, one more refused");
            continue;
        }
        let slot = PeerSlot::take(&peers);
        let (ctl, guid) = (ctl.clone(), guid.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_peer(ctl, stream, guid).await {
                info!("D-Bus peer: {e}");
            }
        });
    }
}

/// One connected peer, counted until dropped (also when its task panics).
struct PeerSlot(Arc<AtomicUsize>);

impl PeerSlot {
    fn take(peers: &Arc<AtomicUsize>) -> PeerSlot {
        peers.fetch_add(1, Ordering::Relaxed);
        PeerSlot(peers.clone())
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one peer until it hangs up. Only a peer running as our own user (root in PID 1)
/// is served; the socket's mode says the same, this holds even if the mode were wrong.
pub async fn serve_peer(
    ctl: Arc<Control>,
    stream: tokio::net::UnixStream,
    guid: zbus::Guid<'static>,
) -> Result<(), PeerError> {
    let cred = stream.peer_cred().map_err(PeerError::Credentials)?;
    let ours = nix::unistd::geteuid().as_raw();
    if cred.uid() != ours {
        return Err(PeerError::Refused {
            uid: cred.uid(),
            ours,
        });
    }
    let iface = Init1 {
        ctl,
        peer_pid: cred.pid().unwrap_or(0),
    };
    let build = zbus::connection::Builder::unix_stream(stream)
        .server(guid)?
        .p2p()
        .serve_at(OBJECT_PATH, iface)?
        .build();
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, build)
        .await
        .map_err(|_| PeerError::Timeout)??;
    // The object server answers calls in tasks of its own; the connection lives until then.
    conn.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests;
