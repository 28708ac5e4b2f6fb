//! The appliance's operating system as the API shows it (`/os/1.0/…`, as IncusOS does): the
//! services cairn-init supervises, their logs, the kernel log, the boot history, and
//! reboot / power-off. The appliance has no shell, so this is how an operator looks inside.
//!
//! On the appliance all of it comes from cairn-init's D-Bus interface (`org.cairn.Init1` on
//! the peer-to-peer socket `/run/cairn/init.sock`, see [`init_bus`]); the kernel log is read
//! here. Without that socket (cairnd on a plain Linux host, or an older cairn-init) the
//! earlier file-and-signal contract answers: `/run/cairn/services.json`, logs under
//! `/var/log/cairn/`, the boot history in `/var/log/cairn/boots`, and power actions as
//! signals to PID 1, refused unless PID 1 is cairn-init. On a development host that means
//! no services, no logs and no power actions.

mod init_bus;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("Service {0:?} not found")]
    NoService(String),
    #[error("Not running on the Cairn appliance (PID 1 is not cairn-init)")]
    NotAppliance,
    #[error("{0}")]
    Io(String),
    #[error("Connecting to cairn-init at {path}: {source}")]
    InitUnreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Asking cairn-init over D-Bus ({what}): {source}")]
    Init {
        what: &'static str,
        /// Boxed: zbus errors are large, and every `Result` here carries this type.
        #[source]
        source: Box<zbus::Error>,
    },
}

/// Where cairn-init is reached and, without its socket, where it published things; tests
/// point these elsewhere.
#[derive(Debug, Clone)]
pub struct OsPaths {
    pub run: PathBuf,
    pub log: PathBuf,
    /// cairn-init's D-Bus socket: when it exists, everything goes through it.
    pub init_socket: PathBuf,
}

impl Default for OsPaths {
    fn default() -> Self {
        OsPaths {
            run: PathBuf::from("/run/cairn"),
            log: PathBuf::from("/var/log/cairn"),
            init_socket: PathBuf::from(init_bus::SOCKET),
        }
    }
}

impl OsPaths {
    /// A D-Bus connection to cairn-init, or None when its socket is absent (then the files
    /// answer). A socket that is there but does not answer is an error, not a fallback: the
    /// files would be stale or missing.
    async fn init(&self) -> Result<Option<init_bus::Init>, OsError> {
        if !self.init_socket.exists() {
            return Ok(None);
        }
        init_bus::Init::connect(&self.init_socket).await.map(Some)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub name: String,
    pub state: String,
    pub pid: Option<i64>,
    #[serde(default)]
    pub failures: u64,
    #[serde(default)]
    pub log: String,
}

pub async fn services(p: &OsPaths) -> Result<Vec<Service>, OsError> {
    match p.init().await? {
        Some(init) => init.services().await,
        None => services_from_file(p),
    }
}

fn services_from_file(p: &OsPaths) -> Result<Vec<Service>, OsError> {
    match std::fs::read_to_string(p.run.join("services.json")) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| OsError::Io(format!("reading services.json: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(OsError::Io(format!("reading services.json: {e}"))),
    }
}

pub async fn service(p: &OsPaths, name: &str) -> Result<Service, OsError> {
    services(p)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| OsError::NoService(name.to_string()))
}

/// The last `max_bytes` of a file, starting at a line boundary.
fn tail(path: &Path, max_bytes: u64) -> Result<String, OsError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| OsError::Io(format!("opening {}: {e}", path.display())))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    f.seek(SeekFrom::Start(start))
        .map_err(|e| OsError::Io(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(max_bytes)
        .read_to_end(&mut buf)
        .map_err(|e| OsError::Io(e.to_string()))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(if start > 0 {
        text.split_once('\n')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or(text)
    } else {
        text
    })
}

/// The end of a service's log (the current file), or `init` for cairn-init's own.
pub async fn service_log(p: &OsPaths, name: &str, max_bytes: u64) -> Result<String, OsError> {
    if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
        return Err(OsError::NoService(name.to_string()));
    }
    if let Some(init) = p.init().await? {
        return init.service_log(name, max_bytes).await;
    }
    if name != "init" {
        service(p, name).await?;
    }
    tail(&p.log.join(format!("{name}.log")), max_bytes)
}

pub async fn boots(p: &OsPaths) -> Result<Vec<String>, OsError> {
    if let Some(init) = p.init().await? {
        return init.boots().await;
    }
    match std::fs::read_to_string(p.log.join("boots")) {
        Ok(t) => Ok(t.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(OsError::Io(e.to_string())),
    }
}

/// The kernel log ring buffer, as dmesg prints it (raw records).
pub fn kernel_log() -> Result<String, OsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .map_err(|e| OsError::Io(format!("opening /dev/kmsg: {e}")))?;
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    // One record per read; EAGAIN marks the end of the buffer.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.push_str(&kmsg_line(&String::from_utf8_lossy(&buf[..n])));
        out.push('\n');
    }
    Ok(out)
}

/// One /dev/kmsg record (`prio,seq,usec,flags;message` then continuation lines) as dmesg
/// prints it: `[   12.345678] message`, so a slow boot step shows where the time went.
fn kmsg_line(rec: &str) -> String {
    let Some((head, body)) = rec.split_once(';') else {
        return rec.lines().next().unwrap_or("").to_string();
    };
    let msg = body.lines().next().unwrap_or("");
    match head.split(',').nth(2).and_then(|u| u.parse::<u64>().ok()) {
        Some(us) => format!("[{:5}.{:06}] {msg}", us / 1_000_000, us % 1_000_000),
        None => msg.to_string(),
    }
}

fn on_appliance() -> bool {
    std::fs::read_link("/proc/1/exe")
        .map(|p| p.file_name().is_some_and(|n| n == "cairn-init"))
        .unwrap_or(false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

/// Asks cairn-init to reboot or power off: over D-Bus, or without its socket by signalling
/// PID 1 (SIGINT, SIGTERM) if that is cairn-init.
pub async fn power(p: &OsPaths, action: PowerAction) -> Result<(), OsError> {
    if let Some(init) = p.init().await? {
        return init.power(action).await;
    }
    if !on_appliance() {
        return Err(OsError::NotAppliance);
    }
    let sig = match action {
        PowerAction::Reboot => nix::sys::signal::Signal::SIGINT,
        PowerAction::PowerOff => nix::sys::signal::Signal::SIGTERM,
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), sig)
        .map_err(|e| OsError::Io(format!("signalling PID 1: {e}")))
}

#[cfg(test)]
mod tests;
