//! cairnd's API as PID 1 sees it: whether it answers (the "API ready" probe of the boot) and
//! the watchdog that restarts a cairnd whose API stopped answering.
//!
//! A probe never holds up the main loop for long: the connect is non-blocking (a daemon
//! that stopped accepting fills its listen backlog, and a blocking connect would then wait
//! forever), reads and writes time out. An appliance whose daemon hangs cannot be managed
//! at all, so after [`HUNG_AFTER`] without an answer ([`STARTUP_GRACE`] before its first) the watchdog writes where each of
//! cairnd's threads is waiting to the console (so the hang can be diagnosed from the
//! serial log) and kills it; the supervisor starts it again. Containers keep running.

use crate::info;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub const API_SOCKET: &str = "/var/lib/cairn/unix.socket";
/// How long cairnd may go without answering (also after its start) before it is restarted.
pub const HUNG_AFTER: Duration = Duration::from_secs(120);
/// How long a freshly started cairnd may take to answer at all: a first start makes the
/// preseed's pool (a zpool on a data disk waits for udev, which a loaded first boot keeps
/// busy) before it listens, and killing it part way leaves a disk it then refuses.
pub const STARTUP_GRACE: Duration = Duration::from_secs(600);
/// How often the watchdog asks once the boot's own probing is over.
const PROBE_EVERY: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the daemon on the unix socket `path` answers `GET /1.0` with 200.
pub fn answers(path: &Path) -> bool {
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    // A unix-socket connect completes at once or fails (EAGAIN: the backlog is full).
    if connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).is_err() {
        return false;
    }
    let mut s = UnixStream::from(fd);
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || s.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return false;
    }
    if s.write_all(b"GET /1.0 HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")
}

/// Whether something listens on the HTTPS port of the node itself.
pub fn https_listening() -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], 8443)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// Tracks when cairnd last answered; see the module documentation.
pub struct Watchdog {
    pid: Option<Pid>,
    last_ok: Instant,
    next_probe: Instant,
    /// Whether this process has answered once: until then [`STARTUP_GRACE`] applies.
    has_answered: bool,
}

impl Watchdog {
    pub fn new(now: Instant) -> Watchdog {
        Watchdog {
            pid: None,
            last_ok: now,
            next_probe: now,
            has_answered: false,
        }
    }

    /// The boot's own probe saw an answer.
    pub fn answered(&mut self, now: Instant) {
        self.last_ok = now;
        self.has_answered = true;
    }

    /// Called each main-loop turn with cairnd's pid (None while it is not running). Returns
    /// the pid of a cairnd that has not answered for [`HUNG_AFTER`], once per hang.
    pub fn poll(
        &mut self,
        now: Instant,
        pid: Option<Pid>,
        probe: impl Fn() -> bool,
    ) -> Option<Pid> {
        if pid != self.pid {
            // A new process gets the whole grace period from its start.
            self.pid = pid;
            self.last_ok = now;
            self.next_probe = now + PROBE_EVERY;
            self.has_answered = false;
        }
        let pid = pid?;
        if now < self.next_probe {
            return None;
        }
        self.next_probe = now + PROBE_EVERY;
        if probe() {
            self.last_ok = now;
            self.has_answered = true;
            return None;
        }
        let limit = if self.has_answered {
            HUNG_AFTER
        } else {
            STARTUP_GRACE
        };
        if now.duration_since(self.last_ok) < limit {
            return None;
        }
        self.last_ok = now;
        Some(pid)
    }
}

/// Writes where each thread of `pid` waits (state, kernel wait channel, kernel stack) to the
/// console, then kills it.
pub fn restart_hung(pid: Pid) {
    info!("cairnd (pid {pid}) has not answered on {API_SOCKET} in time: restarting it");
    for line in thread_report(pid.as_raw()) {
        info!("cairnd hung: {line}");
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}

fn thread_report(pid: i32) -> Vec<String> {
    let task_dir = format!("/proc/{pid}/task");
    let Ok(tasks) = std::fs::read_dir(&task_dir) else {
        return vec![format!("{task_dir}: unreadable")];
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        // The state follows the parenthesised command name, which may contain spaces.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        let stack: Vec<String> = read("stack")
            .lines()
            .take(8)
            .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
            .collect();
        out.push(format!(
            "thread {} ({}) state {state} wchan {} stack {}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim(),
            stack.join(" < ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_daemon_is_restarted_once_per_hang_and_a_new_one_gets_its_grace() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(t0);
        let pid = Some(Pid::from_raw(42));
        let silent = || false;
        assert_eq!(w.poll(t0, pid, silent), None);
        assert_eq!(w.poll(t0 + Duration::from_secs(60), pid, silent), None);
        // Before its first answer it has the startup grace, not the hang limit.
        assert_eq!(w.poll(t0 + HUNG_AFTER, pid, silent), None);
        assert_eq!(w.poll(t0 + STARTUP_GRACE, pid, silent), pid);
        // The same hang is not reported again right away.
        assert_eq!(w.poll(t0 + STARTUP_GRACE + PROBE_EVERY, pid, silent), None);
        // A restarted daemon has the whole grace period again.
        let new = Some(Pid::from_raw(43));
        let t1 = t0 + STARTUP_GRACE * 2;
        assert_eq!(w.poll(t1, new, silent), None);
        assert_eq!(w.poll(t1 + STARTUP_GRACE - PROBE_EVERY, new, silent), None);
        // Answers keep it alive however long it runs.
        let t2 = t1 + STARTUP_GRACE;
        assert_eq!(w.poll(t2, new, || true), None);
        assert_eq!(w.poll(t2 + HUNG_AFTER - PROBE_EVERY, new, silent), None);
        assert_eq!(w.poll(t2 + HUNG_AFTER + PROBE_EVERY, new, silent), new);
        assert_eq!(w.poll(t2 + HUNG_AFTER * 3, None, silent), None);
    }

    #[test]
    fn probing_a_socket_nobody_accepts_on_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        assert!(!answers(&path), "no socket");
        // A listener that never accepts: connects queue up until the backlog is full, and
        // then the probe must fail fast instead of blocking.
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let addr = UnixAddr::new(&path).unwrap();
        let mut queued = Vec::new();
        loop {
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK,
                None,
            )
            .unwrap();
            if connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).is_err() {
                break;
            }
            queued.push(fd);
            assert!(queued.len() < 100_000, "the backlog never filled");
        }
        let t = Instant::now();
        assert!(!answers(&path));
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[test]
    fn the_thread_report_names_each_thread_of_a_process() {
        let me = std::process::id() as i32;
        let report = thread_report(me);
        assert!(!report.is_empty());
        assert!(
            report.iter().all(|l| l.starts_with("thread ")),
            "{report:?}"
        );
    }
}
