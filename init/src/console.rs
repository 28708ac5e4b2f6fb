//! Logging to the console (and, once /var is mounted, to /var/log/cairn/init.log), and the
//! boot-stage markers the test harness and the boot benchmark read:
//! `cairn: stage=NAME t=SECONDS` where t is CLOCK_BOOTTIME (time since the kernel started).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

static FILE_LOG: Mutex<Option<File>> = Mutex::new(None);

/// Seconds since the kernel started.
pub fn uptime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Makes /dev/console our stdin, stdout and stderr (PID 1 may start with none).
pub fn attach() {
    if let Ok(f) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let fd = f.as_raw_fd();
        for target in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; fd stays valid until f drops.
            unsafe { libc::dup2(fd, target) };
        }
    }
}

/// Starts copying our log lines to a file too (called once /var is mounted).
///
/// The log directory and file are owner-only, made so if an older cairn-init left them
/// readable: logs quote addresses, names and errors that are no one else's to read.
pub fn log_to_file(path: &std::path::Path) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if let Ok(f) = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
    {
        let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        if let Ok(mut g) = FILE_LOG.lock() {
            *g = Some(f);
        }
    }
}

pub fn stop_file_log() {
    if let Ok(mut g) = FILE_LOG.lock() {
        *g = None;
    }
}

/// Writes one line to the console and to the file log. Never fails.
pub fn line(msg: &str) {
    let text = format!("cairn: {msg}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
    if let Ok(mut g) = FILE_LOG.lock() {
        if let Some(f) = g.as_mut() {
            let _ = f.write_all(format!("[{:10.3}] {text}", uptime()).as_bytes());
        }
    }
}

/// A boot-stage marker.
pub fn stage(name: &str) {
    line(&format!("stage={name} t={:.3}", uptime()));
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::console::line(&format!($($arg)*)) };
}
