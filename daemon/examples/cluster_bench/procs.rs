//! The cairnd processes of a run, each in its own state dir under one root in /var/tmp,
//! and their cleanup: every child is killed with SIGKILL and the root removed, from main,
//! from a drop guard (error or panic) or on Ctrl-C/SIGTERM.

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::Client;
use crate::Result;

/// What cleanup needs: the root and the pids of the children that may be alive.
pub struct Registry {
    root: PathBuf,
    cairnd: PathBuf,
    /// Pids by member slot; `None` once killed and reaped. The lock is held through the
    /// whole cleanup, so that a second caller waits for the first.
    pids: Mutex<Vec<Option<i32>>>,
}

impl Registry {
    /// Creates the root (0711: cairnd's state must stay reachable as for real containers)
    /// and arms the signal handler.
    pub fn new(cairnd: PathBuf) -> Result<Arc<Registry>> {
        let root = PathBuf::from(format!(
            "/var/tmp/cairn-cluster-bench-{}",
            std::process::id()
        ));
        make_dir(&root)?;
        let reg = Arc::new(Registry {
            root,
            cairnd,
            pids: Mutex::new(Vec::new()),
        });
        reg.on_signal();
        Ok(reg)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pids(&self) -> std::sync::MutexGuard<'_, Vec<Option<i32>>> {
        self.pids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last `n` lines of every member's log, for an error report.
    pub fn log_tails(&self, n: usize) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        let mut out = String::new();
        for p in logs {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- last lines of {} ---\n", p.display()));
            for l in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Kills every child with SIGKILL, reaps it, removes the root. Idempotent.
    pub fn cleanup(&self) {
        let mut pids = self.pids();
        for pid in pids.iter_mut().filter_map(Option::take) {
            kill9(pid);
        }
        if self.root.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.root) {
                eprintln!("cluster_bench: removing {}: {e}", self.root.display());
            }
        }
    }

    /// Ctrl-C or SIGTERM: clean up, then exit 130.
    fn on_signal(self: &Arc<Self>) {
        let me = self.clone();
        crate::support::on_interrupt(move || me.cleanup());
    }
}

/// Runs the cleanup when dropped: the error and panic paths of main.
pub struct CleanupOnDrop(pub Arc<Registry>);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

/// One cairnd: `name` is its cluster member name, `ip` the loopback address it listens on.
pub struct Member {
    pub name: String,
    pub ip: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
    slot: usize,
    reg: Arc<Registry>,
}

impl Member {
    /// Registers a member; its state dir is `<root>/<name>`. Not started yet.
    pub fn new(reg: &Arc<Registry>, name: &str, ip: &str) -> Result<Member> {
        let dir = reg.root.join(name);
        make_dir(&dir)?;
        let mut pids = reg.pids();
        pids.push(None);
        Ok(Member {
            name: name.to_string(),
            ip: ip.to_string(),
            socket: dir.join("unix.socket"),
            log: reg.root.join(format!("{name}.log")),
            dir,
            slot: pids.len() - 1,
            reg: reg.clone(),
        })
    }

    pub fn pid(&self) -> Option<i32> {
        self.reg.pids()[self.slot]
    }

    /// Starts (or restarts, on the same state dir) the daemon; does not wait for it.
    pub fn spawn(&self) -> Result<()> {
        if self.pid().is_some() {
            return Err(format!("{} is already running", self.name));
        }
        // Appending: a restarted member's log follows its previous life.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("opening {}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.reg.cairnd)
            .arg("--state-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: Ctrl-C reaches only the bench, which then kills it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.reg.cairnd.display()))?;
        self.reg.pids()[self.slot] = Some(child.id() as i32);
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&self) {
        if let Some(pid) = self.reg.pids()[self.slot].take() {
            kill9(pid);
        }
    }

    /// Waits until the API answers on the unix socket.
    pub fn wait_ready(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.reap_if_exited() {
                return Err(format!(
                    "{} exited at start; log:\n{}",
                    self.name,
                    self.log_tail(20)
                ));
            }
            if self.socket.exists() {
                let mut c = Client::with_timeout(&self.socket, Duration::from_secs(2));
                if matches!(c.send("GET", "/internal/ready", "", b""), Ok(r) if r.status == 200) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{} did not answer within {limit:?}; log:\n{}",
            self.name,
            self.log_tail(20)
        ))
    }

    /// Whether the daemon has exited; if so it is reaped and forgotten, so that its pid,
    /// which the system may reuse, is never signalled.
    fn reap_if_exited(&self) -> bool {
        let mut pids = self.reg.pids();
        let Some(pid) = pids[self.slot] else {
            return false;
        };
        let mut status = 0;
        // SAFETY: waitpid on our own child with WNOHANG never blocks.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            pids[self.slot] = None;
            return true;
        }
        false
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Resident set size in MiB.
    pub fn rss(&self) -> Result<f64> {
        let pid = self
            .pid()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or("no VmRSS in /proc/PID/status")?;
        Ok(kib / 1024.0)
    }
}

fn make_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("chmod 0711 {}: {e}", dir.display()))
}

fn kill9(pid: i32) {
    let mut status = 0;
    // SAFETY: plain syscalls on our own child's pid, not reaped yet (callers take it out
    // of the registry first), so it cannot have been reused.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
}
