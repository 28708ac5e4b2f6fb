//! The appliance's operating system as the API shows it (`/os/1.0/…`, as IncusOS does): the
//! services cairn-init supervises, their logs, the kernel log, the boot history, and
//! reboot / power-off. The appliance has no shell, so this is how an operator looks inside.
//!
//! cairn-init publishes its state in files (`/run/cairn/services.json`, logs under
//! `/var/log/cairn/`, boot history in `/var/log/cairn/boots`) and takes reboot and power-off
//! as signals to PID 1. On a plain Linux host (development mode) there is no cairn-init:
//! the services list is empty and power actions are refused.

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
}

/// Where cairn-init publishes things; tests point it elsewhere.
#[derive(Debug, Clone)]
pub struct OsPaths {
    pub run: PathBuf,
    pub log: PathBuf,
}

impl Default for OsPaths {
    fn default() -> Self {
        OsPaths {
            run: PathBuf::from("/run/cairn"),
            log: PathBuf::from("/var/log/cairn"),
        }
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

pub fn services(p: &OsPaths) -> Result<Vec<Service>, OsError> {
    match std::fs::read_to_string(p.run.join("services.json")) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| OsError::Io(format!("reading services.json: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(OsError::Io(format!("reading services.json: {e}"))),
    }
}

pub fn service(p: &OsPaths, name: &str) -> Result<Service, OsError> {
    services(p)?
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

/// A service's log (the current file), or `init` for cairn-init's own.
pub fn service_log(p: &OsPaths, name: &str, max_bytes: u64) -> Result<String, OsError> {
    if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
        return Err(OsError::NoService(name.to_string()));
    }
    if name != "init" {
        service(p, name)?;
    }
    tail(&p.log.join(format!("{name}.log")), max_bytes)
}

pub fn boots(p: &OsPaths) -> Result<Vec<String>, OsError> {
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
        let rec = String::from_utf8_lossy(&buf[..n]);
        let msg = rec.split_once(';').map(|(_, m)| m).unwrap_or(&rec);
        out.push_str(msg.lines().next().unwrap_or(""));
        out.push('\n');
    }
    Ok(out)
}

fn on_appliance() -> bool {
    std::fs::read_link("/proc/1/exe")
        .map(|p| p.file_name().is_some_and(|n| n == "cairn-init"))
        .unwrap_or(false)
}

pub enum PowerAction {
    Reboot,
    PowerOff,
}

/// Asks cairn-init to reboot (SIGINT) or power off (SIGTERM).
pub fn power(action: PowerAction) -> Result<(), OsError> {
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
mod tests {
    use super::*;

    #[test]
    fn services_logs_and_boots_from_init_files() {
        let t = tempfile::tempdir().unwrap();
        let p = OsPaths {
            run: t.path().join("run"),
            log: t.path().join("log"),
        };
        std::fs::create_dir_all(&p.run).unwrap();
        std::fs::create_dir_all(&p.log).unwrap();
        assert!(
            services(&p).unwrap().is_empty(),
            "no cairn-init: no services"
        );
        std::fs::write(
            p.run.join("services.json"),
            r#"[{"name":"cairnd","state":"running","pid":42,"failures":0,"log":"/var/log/cairn/cairnd.log"},{"name":"lxcfs","state":"waiting","pid":null,"failures":3,"log":"x"}]"#,
        )
        .unwrap();
        assert_eq!(services(&p).unwrap().len(), 2);
        assert_eq!(service(&p, "lxcfs").unwrap().failures, 3);
        assert!(matches!(service(&p, "nope"), Err(OsError::NoService(_))));

        let long: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(p.log.join("cairnd.log"), &long).unwrap();
        let t = service_log(&p, "cairnd", 100).unwrap();
        assert!(t.starts_with("line ") && t.ends_with("line 999\n"), "{t}");
        assert!(service_log(&p, "../../etc/passwd", 100).is_err());
        assert!(service_log(&p, "nope", 100).is_err());

        std::fs::write(p.log.join("boots"), "boot 1\nboot 2\n").unwrap();
        assert_eq!(boots(&p).unwrap(), vec!["boot 1", "boot 2"]);
    }

    #[test]
    fn power_is_refused_off_the_appliance() {
        assert!(matches!(
            power(PowerAction::Reboot),
            Err(OsError::NotAppliance)
        ));
    }
}
