//! Supervision: start services, restart them with back-off when they exit, send their
//! output line by line to the console and to rotated files, and stop them in reverse order.

use crate::backoff::Backoff;
use crate::control::{ServiceStatus, StatusBoard};
use crate::logfile::LogFile;
use crate::services::ServiceSpec;
use crate::{cgroup, info};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LOG_MAX_BYTES: u64 = 4 << 20;
const LOG_KEEP: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    /// Waiting for its back-off delay to pass.
    Waiting,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Waiting => "waiting",
            State::Stopped => "stopped",
        }
    }
}

struct Service {
    spec: ServiceSpec,
    pid: Option<Pid>,
    started: Instant,
    failures: u32,
    next_start: Option<Instant>,
    stopping: bool,
    /// How a one-shot job ended.
    exit: Option<String>,
}

pub struct Supervisor {
    services: Vec<Service>,
    backoff: Backoff,
    log_dir: PathBuf,
    status_dirty: bool,
    board: StatusBoard,
    /// The threads copying service output into files on /var: shutdown waits for them
    /// so /var can be unmounted.
    log_threads: Vec<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    pub fn new(log_dir: PathBuf) -> Supervisor {
        Supervisor {
            services: Vec::new(),
            backoff: Backoff::default(),
            log_dir,
            status_dirty: true,
            board: StatusBoard::default(),
            log_threads: Vec::new(),
        }
    }

    /// Adds a service and starts it now (a missing binary is noted and skipped).
    pub fn add(&mut self, spec: ServiceSpec) {
        if !spec.binary_exists() {
            info!(
                "service {}: {} not in the image, skipped",
                spec.name, spec.argv[0]
            );
            return;
        }
        self.services.push(Service {
            spec,
            pid: None,
            started: Instant::now(),
            failures: 0,
            next_start: Some(Instant::now()),
            stopping: false,
            exit: None,
        });
        self.start_due(Instant::now());
    }

    /// Each service's state as the D-Bus interface reports it (see `control`).
    pub fn snapshot(&self) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|s| {
                let state = match (s.pid, s.next_start) {
                    (Some(_), _) => State::Running,
                    (None, Some(_)) => State::Waiting,
                    (None, None) => State::Stopped,
                };
                ServiceStatus {
                    name: s.spec.name.clone(),
                    state: state.as_str(),
                    pid: s.pid.map(Pid::as_raw),
                    failures: s.failures,
                    log: self.log_dir.join(format!("{}.log", s.spec.name)),
                }
            })
            .collect()
    }

    /// Where the snapshot is published for the D-Bus thread.
    pub fn status_board(&self) -> StatusBoard {
        self.board.clone()
    }

    /// How a one-shot job ended, once it has.
    pub fn job_result(&self, name: &str) -> Option<&str> {
        self.services
            .iter()
            .find(|s| s.spec.name == name)
            .and_then(|s| s.exit.as_deref())
    }

    /// The pid of a running service.
    pub fn pid_of(&self, name: &str) -> Option<Pid> {
        self.services
            .iter()
            .find(|s| s.spec.name == name)
            .and_then(|s| s.pid)
    }

    /// Starts every service whose back-off delay has passed.
    pub fn start_due(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            let due = {
                let s = &self.services[i];
                s.pid.is_none() && !s.stopping && s.next_start.is_some_and(|t| t <= now)
            };
            if due {
                self.spawn(i);
            }
        }
    }

    /// Waits (bounded) until every log thread has seen its service's output end, so no
    /// log file on /var stays open. Returns whether all finished.
    pub fn wait_log_threads(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.log_threads.retain(|h| !h.is_finished());
            if self.log_threads.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publishes the status for the D-Bus interface if anything changed since the last call.
    pub fn flush_status(&mut self) {
        if self.status_dirty {
            self.status_dirty = false;
            self.board.publish(self.snapshot());
        }
    }

    /// When the main loop should wake up next to start a waiting service.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter(|s| s.pid.is_none() && !s.stopping)
            .filter_map(|s| s.next_start)
            .min()
    }

    fn spawn(&mut self, i: usize) {
        let log_path = self
            .log_dir
            .join(format!("{}.log", self.services[i].spec.name));
        let s = &mut self.services[i];
        s.next_start = None;
        let spec = &s.spec;
        let nice = spec.nice;
        let mut cmd = Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..]);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        let mut reader = None;
        if spec.on_console_tty {
            match console_stdio() {
                Ok((a, b, c)) => {
                    cmd.stdin(a).stdout(b).stderr(c);
                }
                Err(e) => info!("service {}: opening the console: {e}", spec.name),
            }
            // SAFETY: setsid, setpriority and ioctl are async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    unblock_signals();
                    libc::setsid();
                    libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                    libc::ioctl(0, libc::TIOCSCTTY, 1);
                    Ok(())
                });
            }
        } else {
            match nix::unistd::pipe() {
                Ok((r, w)) => {
                    let w2 = w.try_clone().ok();
                    cmd.stdin(Stdio::null()).stdout(Stdio::from(w));
                    if let Some(w2) = w2 {
                        cmd.stderr(Stdio::from(w2));
                    }
                    reader = Some(File::from(r));
                }
                Err(e) => info!("service {}: pipe: {e}", spec.name),
            }
            // SAFETY: setsid and setpriority are async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    unblock_signals();
                    libc::setsid();
                    libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                    Ok(())
                });
            }
        }
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id() as i32;
                // Dropping the Child does not wait or kill; we reap through waitpid(-1).
                drop(child);
                drop(cmd);
                let cg = cgroup::service_leaf(&spec.name, spec.delegated_cgroup);
                cgroup::attach(&cg, pid);
                s.pid = Some(Pid::from_raw(pid));
                s.started = Instant::now();
                info!("service {} started (pid {pid})", spec.name);
                self.status_dirty = true;
                if let Some(r) = reader {
                    let name = spec.name.clone();
                    let echo = spec.console;
                    if let Ok(h) = std::thread::Builder::new()
                        .name(format!("log-{name}"))
                        .spawn(move || copy_output(r, &name, echo, log_path))
                    {
                        self.log_threads.push(h);
                    }
                }
            }
            Err(e) => {
                info!("service {}: starting {}: {e}", spec.name, spec.argv[0]);
                s.failures = s.failures.saturating_add(1);
                s.next_start = Some(Instant::now() + self.backoff.delay(s.failures));
                self.status_dirty = true;
            }
        }
    }

    /// Handles the exit of `pid`. Returns false if it is not one of ours (an orphan).
    pub fn on_exit(&mut self, pid: Pid, how: &str) -> bool {
        let backoff = self.backoff;
        let Some(s) = self.services.iter_mut().find(|s| s.pid == Some(pid)) else {
            return false;
        };
        s.pid = None;
        self.status_dirty = true;
        let ran = s.started.elapsed();
        if s.stopping {
            info!("service {} stopped ({how})", s.spec.name);
            return true;
        }
        if s.spec.oneshot {
            info!(
                "job {} finished ({how}) after {:.1}s",
                s.spec.name,
                ran.as_secs_f64()
            );
            s.exit = Some(how.to_string());
            return true;
        }
        s.failures = backoff.failures_after(s.failures, ran);
        let delay = backoff.delay(s.failures);
        info!(
            "service {} exited ({how}) after {:.1}s; restart in {:.1}s",
            s.spec.name,
            ran.as_secs_f64(),
            delay.as_secs_f64()
        );
        s.next_start = Some(Instant::now() + delay);
        true
    }

    /// Sends its stop signal to every running service, one at a time, waiting up to its stop
    /// timeout (reaping through `reap`) before SIGKILL: cairnd (the delegated service,
    /// which stops the containers) first, then the others in reverse start order.
    pub fn stop_all(&mut self, reap: &mut dyn FnMut(&mut Supervisor, Duration)) {
        for s in self.services.iter_mut() {
            s.stopping = true;
            s.next_start = None;
        }
        let mut order: Vec<usize> = (0..self.services.len()).rev().collect();
        order.sort_by_key(|&i| !self.services[i].spec.delegated_cgroup);
        for i in order {
            let Some(pid) = self.services[i].pid else {
                continue;
            };
            let name = self.services[i].spec.name.clone();
            let timeout = self.services[i].spec.stop_timeout;
            info!("stopping {name}");
            let _ = kill(pid, self.services[i].spec.stop_signal);
            let deadline = Instant::now() + timeout;
            while self.services[i].pid.is_some() && Instant::now() < deadline {
                reap(self, Duration::from_millis(100));
            }
            if self.services[i].pid.is_some() {
                info!("{name} did not stop in {}s: killing it", timeout.as_secs());
                let _ = kill(pid, Signal::SIGKILL);
                let cg = cgroup::service_leaf(&name, self.services[i].spec.delegated_cgroup);
                cgroup::kill_all(&cg);
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.services[i].pid.is_some() && Instant::now() < deadline {
                    reap(self, Duration::from_millis(100));
                }
            }
        }
    }
}

/// PID 1 blocks the signals it reads through signalfd; children must not inherit that.
/// Only async-signal-safe calls: this runs between fork and exec.
pub fn unblock_signals() {
    // SAFETY: sigemptyset/sigprocmask on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// A Command whose child starts with no blocked signals.
pub fn command(prog: &str) -> Command {
    let mut c = Command::new(prog);
    // SAFETY: unblock_signals is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            unblock_signals();
            Ok(())
        });
    }
    c
}

fn console_stdio() -> std::io::Result<(File, File, File)> {
    let open = || File::options().read(true).write(true).open("/dev/console");
    Ok((open()?, open()?, open()?))
}

/// Copies a service's output to its log file and (optionally) the console, line by line.
fn copy_output(r: File, name: &str, echo: bool, log_path: PathBuf) {
    let mut log = LogFile::new(&log_path, LOG_MAX_BYTES, LOG_KEEP);
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while buf.last() == Some(&b'\n') || buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                log.write_line(&buf);
                if echo {
                    use std::io::Write;
                    let mut line = format!("[{name}] ").into_bytes();
                    line.extend_from_slice(&buf);
                    line.push(b'\n');
                    let _ = std::io::stderr().write_all(&line);
                }
            }
        }
    }
}
