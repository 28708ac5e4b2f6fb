//! cairnd benchmark: prints figures, it is not a timed test.
//!
//! ```text
//! cargo build --release -p cairnd && cargo run --release -p cairnd --example bench
//! ```
//!
//! Starts a release cairnd (`$CAIRND`, else the `cairnd` next to this example's target
//! directory, else `target/release/cairnd`) in a fresh state dir under /var/tmp, imports
//! the busybox image from tests/fixtures/make-busybox-image.sh and measures, through the
//! REST API on the unix socket:
//! - container create+start (`POST /1.0/instances` with `start: true`, then the
//!   operation's `/wait`), p50/p95 over 20 launches;
//! - `GET /1.0/instances?recursion=1` with 100 running instances and with 1,000 defined;
//! - the daemon's RSS idle, with 100 running and with 1,000 defined.
//!
//! Figures go to stdout as `name value unit`, with the target beside those that have one;
//! progress goes to stderr. Everything is removed at the end, on error, on panic and on
//! Ctrl-C/SIGTERM (leftover containers are killed with `lxc-stop -k`).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

mod http;
mod support;

use http::Client;
use support::{cairnd_path, repo_root};

type Result<T> = std::result::Result<T, String>;

/// Launches measured for create+start.
const MEASURED_LAUNCHES: usize = 20;
/// Running instances for the first list and RSS figures.
const RUNNING: usize = 100;
/// Defined instances for the second list and RSS figures.
const DEFINED: usize = 1000;
/// Requests measured per list figure.
const LIST_REQUESTS: usize = 20;
/// Parallel API clients for the bulk create and delete phases (not measured).
const WORKERS: usize = 4;
const IMAGE_ALIAS: &str = "bb";

fn main() {
    let run = match Run::start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    let result = run.measure();
    if let Err(e) = &result {
        eprintln!("bench: {e}");
        eprintln!("--- last lines of the cairnd log ---\n{}", run.log_tail(40));
    }
    progress(&run.t0, "cleaning up");
    if let Err(e) = run.remove_instances() {
        eprintln!("bench: removing the instances through the API: {e} (killing them instead)");
    }
    run.cleanup.run();
    progress(&run.t0, "done");
    if result.is_err() {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// The run: a daemon in its own state dir, and the measurements.

struct Run {
    t0: Instant,
    dir: PathBuf,
    socket: PathBuf,
    pid: i32,
    cleanup: Arc<Cleanup>,
    /// Cleans up if main never gets to (a panic outside `measure`).
    _guard: CleanupOnDrop,
}

impl Run {
    fn start() -> Result<Run> {
        let t0 = Instant::now();
        let cairnd = cairnd_path()?;
        let dir = PathBuf::from(format!("/var/tmp/cairn-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // Unprivileged containers must traverse every parent of their rootfs.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("chmod 0711 {}: {e}", dir.display()))?;
        let state = dir.join("state");
        let cleanup = Arc::new(Cleanup {
            dir: dir.clone(),
            lxc: state.join("lxc"),
            pid: Mutex::new(None),
        });
        // From here on the guard removes the directory whatever happens.
        let guard = CleanupOnDrop(cleanup.clone());
        cleanup.on_signal();

        let log = std::fs::File::create(dir.join("cairnd.log"))
            .map_err(|e| format!("creating the daemon log: {e}"))?;
        let child = Command::new(&cairnd)
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            // Its own process group: Ctrl-C reaches the bench, which then cleans up in order.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", cairnd.display()))?;
        let pid = child.id() as i32;
        *cleanup.pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid);
        eprintln!(
            "# cairnd {} pid {pid}, state {}",
            cairnd.display(),
            state.display()
        );

        let run = Run {
            t0,
            dir,
            socket: state.join("unix.socket"),
            pid,
            cleanup,
            _guard: guard,
        };
        run.wait_ready()?;
        Ok(run)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.socket.exists() {
                let mut c = Client::new(&self.socket);
                if matches!(c.send("GET", "/internal/ready", "", b""), Ok(r) if r.status == 200) {
                    progress(&self.t0, "cairnd ready");
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "cairnd did not become ready in 30 s; log:\n{}",
            self.log_tail(40)
        ))
    }

    fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("cairnd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn rss(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map_err(|e| format!("reading /proc/{}/status: {e}", self.pid))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or("no VmRSS in /proc/PID/status")?;
        Ok(kib / 1024.0)
    }

    /// CPU time the daemon has used so far (user + system), in milliseconds.
    fn cpu_ms(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map_err(|e| format!("reading /proc/{}/stat: {e}", self.pid))?;
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(ticks * 1000.0 / hz)
    }

    /// List latencies plus the daemon CPU time per request, which the load of other
    /// processes on the machine does not inflate as it does wall time.
    fn list_figures(&self, api: &mut Client, want: usize, label: &str, target: bool) -> Result<()> {
        let cpu0 = self.cpu_ms()?;
        let list = list_latencies(api, want)?;
        let cpu = (self.cpu_ms()? - cpu0) / (LIST_REQUESTS + 1) as f64;
        figure(
            &format!("list_recursion1_{label}_p50"),
            ms(percentile(&list, 50.0)),
            "ms",
            target.then_some(Target::AtMost(50.0)),
        );
        figure(
            &format!("list_recursion1_{label}_p95"),
            ms(percentile(&list, 95.0)),
            "ms",
            None,
        );
        figure(
            &format!("list_recursion1_{label}_daemon_cpu"),
            cpu,
            "ms",
            None,
        );
        Ok(())
    }

    /// Runs the measurements; a panic inside counts as an error so that cleanup still runs.
    fn measure(&self) -> Result<()> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.measure_inner())) {
            Ok(r) => r,
            Err(_) => Err("the benchmark panicked".into()),
        }
    }

    fn measure_inner(&self) -> Result<()> {
        let mut api = Client::new(&self.socket);

        std::thread::sleep(Duration::from_secs(2));
        figure("rss_idle", self.rss()?, "MiB", Some(Target::AtMost(15.0)));

        self.import_image(&mut api)?;
        figure("rss_after_image_import", self.rss()?, "MiB", None);

        // (a) create+start, measured.
        let mut launches = Vec::with_capacity(MEASURED_LAUNCHES);
        for i in 0..MEASURED_LAUNCHES {
            launches.push(launch(&mut api, &name(i), true)?);
        }
        launches.sort();
        progress(
            &self.t0,
            &format!("{MEASURED_LAUNCHES} measured launches done"),
        );
        figure(
            "create_start_p50",
            ms(percentile(&launches, 50.0)),
            "ms",
            Some(Target::AtMost(250.0)),
        );
        figure(
            "create_start_p95",
            ms(percentile(&launches, 95.0)),
            "ms",
            None,
        );

        // The rest of the running set: launched one by one as well, reported apart.
        let mut more = Vec::with_capacity(RUNNING - MEASURED_LAUNCHES);
        for i in MEASURED_LAUNCHES..RUNNING {
            more.push(launch(&mut api, &name(i), true)?);
        }
        more.sort();
        progress(&self.t0, &format!("{RUNNING} instances running"));
        figure(
            &format!(
                "create_start_p50_launches_{}_to_{RUNNING}",
                MEASURED_LAUNCHES + 1
            ),
            ms(percentile(&more, 50.0)),
            "ms",
            None,
        );
        let running = count_running(&mut api)?;
        if running != RUNNING {
            return Err(format!("{running} instances running, want {RUNNING}"));
        }

        // (b) and (c) with 100 running.
        std::thread::sleep(Duration::from_secs(2));
        self.list_figures(&mut api, RUNNING, &format!("{RUNNING}_running"), false)?;
        figure(&format!("rss_{RUNNING}_running"), self.rss()?, "MiB", None);

        // 900 more, created but not started, by a few clients in parallel.
        let created = create_many(&self.socket, RUNNING..DEFINED)?;
        progress(&self.t0, &format!("{DEFINED} instances defined"));
        figure(
            &format!("create_p50_stopped_{WORKERS}_parallel"),
            ms(percentile(&created, 50.0)),
            "ms",
            None,
        );
        figure(
            &format!("create_p95_stopped_{WORKERS}_parallel"),
            ms(percentile(&created, 95.0)),
            "ms",
            None,
        );
        figure(
            &format!("create_max_stopped_{WORKERS}_parallel"),
            ms(percentile(&created, 100.0)),
            "ms",
            None,
        );
        std::thread::sleep(Duration::from_secs(2));
        self.list_figures(&mut api, DEFINED, &format!("{DEFINED}_defined"), true)?;
        figure(&format!("rss_{DEFINED}_defined"), self.rss()?, "MiB", None);
        Ok(())
    }

    fn import_image(&self, api: &mut Client) -> Result<()> {
        let tarball = self.dir.join("busybox.tar.gz");
        let script = repo_root().join("tests/fixtures/make-busybox-image.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&tarball)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "building the busybox image: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let bytes =
            std::fs::read(&tarball).map_err(|e| format!("reading {}: {e}", tarball.display()))?;
        let reply = api
            .send("POST", "/1.0/images", "application/octet-stream", &bytes)?
            .json("POST /1.0/images")?;
        let op = api.wait(&reply, "importing the busybox image")?;
        let fingerprint = op["metadata"]["fingerprint"]
            .as_str()
            .ok_or("the import operation carries no fingerprint")?
            .to_string();
        api.call(
            "POST",
            "/1.0/images/aliases",
            Some(json!({"name": IMAGE_ALIAS, "target": fingerprint})),
        )?;
        progress(
            &self.t0,
            &format!(
                "image {} imported as {IMAGE_ALIAS} ({} KiB)",
                &fingerprint[..12],
                bytes.len() / 1024
            ),
        );
        Ok(())
    }

    /// Force-stops everything and deletes every instance through the API.
    fn remove_instances(&self) -> Result<()> {
        let mut api = Client::new(&self.socket);
        let reply = api.call(
            "PUT",
            "/1.0/instances",
            Some(json!({"state": {"action": "stop", "force": true}})),
        )?;
        if reply["type"] == "async" {
            api.wait(&reply, "stopping every instance")?;
        }
        let names: Vec<String> = api.call("GET", "/1.0/instances", None)?["metadata"]
            .as_array()
            .ok_or("GET /1.0/instances: metadata is not a list")?
            .iter()
            .filter_map(|u| u.as_str()?.rsplit('/').next().map(str::to_string))
            .collect();
        let next = AtomicUsize::new(0);
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..WORKERS {
                s.spawn(|| {
                    let mut api = Client::new(&self.socket);
                    while let Some(n) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let path = format!("/1.0/instances/{n}");
                        let r = api
                            .call("DELETE", &path, None)
                            .and_then(|r| api.wait(&r, &format!("deleting {n}")));
                        if let Err(e) = r {
                            errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                        }
                    }
                });
            }
        });
        let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
        progress(
            &self.t0,
            &format!(
                "{} instances deleted, {} failed",
                names.len() - errors.len(),
                errors.len()
            ),
        );
        match errors.first() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

fn name(i: usize) -> String {
    format!("b{i:04}")
}

/// Creates (and maybe starts) one instance; the time from the POST to the operation's end.
fn launch(api: &mut Client, name: &str, start: bool) -> Result<Duration> {
    let t = Instant::now();
    let reply = api.call(
        "POST",
        "/1.0/instances",
        Some(json!({
            "name": name,
            "source": {"type": "image", "alias": IMAGE_ALIAS},
            "start": start,
        })),
    )?;
    api.wait(&reply, &format!("creating {name}"))?;
    Ok(t.elapsed())
}

fn create_many(socket: &Path, range: std::ops::Range<usize>) -> Result<Vec<Duration>> {
    let next = AtomicUsize::new(range.start);
    let times = Mutex::new(Vec::with_capacity(range.len()));
    let failed: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                let mut api = Client::new(socket);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= range.end || failed.lock().map_or(true, |f| f.is_some()) {
                        return;
                    }
                    match launch(&mut api, &name(i), false) {
                        Ok(d) => times.lock().unwrap_or_else(|p| p.into_inner()).push(d),
                        Err(e) => {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut times = times.into_inner().unwrap_or_else(|p| p.into_inner());
    times.sort();
    Ok(times)
}

fn count_running(api: &mut Client) -> Result<usize> {
    let list = api.call("GET", "/1.0/instances?recursion=1", None)?;
    Ok(list["metadata"]
        .as_array()
        .ok_or("GET /1.0/instances?recursion=1: metadata is not a list")?
        .iter()
        .filter(|i| i["status"] == "Running")
        .count())
}

/// `GET /1.0/instances?recursion=1` on a kept-alive connection: one warm-up, then
/// LIST_REQUESTS timed requests (request written to body fully read), sorted.
fn list_latencies(api: &mut Client, want: usize) -> Result<Vec<Duration>> {
    let path = "/1.0/instances?recursion=1";
    let mut times = Vec::with_capacity(LIST_REQUESTS);
    for i in 0..=LIST_REQUESTS {
        let t = Instant::now();
        let reply = api.send("GET", path, "", b"")?;
        let elapsed = t.elapsed();
        if reply.status != 200 {
            return Err(format!("GET {path}: HTTP {}", reply.status));
        }
        if i == 0 {
            let n = reply.json(path)?["metadata"].as_array().map_or(0, Vec::len);
            if n != want {
                return Err(format!("GET {path} lists {n} instances, want {want}"));
            }
            eprintln!("# list response: {} KiB", reply.body.len() / 1024);
            continue;
        }
        times.push(elapsed);
    }
    times.sort();
    Ok(times)
}

// ---------------------------------------------------------------------------------------
// Figures.

enum Target {
    AtMost(f64),
}

fn figure(name: &str, value: f64, unit: &str, target: Option<Target>) {
    let verdict = match target {
        Some(Target::AtMost(limit)) => format!(
            "   target <= {limit} {unit}: {}",
            if value <= limit { "met" } else { "MISSED" }
        ),
        None => String::new(),
    };
    println!("{name:<40} {value:>9.1} {unit}{verdict}");
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn progress(t0: &Instant, what: &str) {
    eprintln!("# [{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// Cleanup: the daemon, leftover containers, the state dir. Runs once, from main, from the
// signal thread or from a drop guard.

struct Cleanup {
    dir: PathBuf,
    lxc: PathBuf,
    /// The daemon's pid while it may be alive; `None` once it is gone.
    pid: Mutex<Option<i32>>,
}

impl Cleanup {
    fn run(&self) {
        // Holding the lock for the whole cleanup makes a second caller wait for the first.
        let mut pid = self.pid.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pid.take() {
            stop_daemon(p);
        }
        if !self.dir.exists() {
            return;
        }
        for name in running_containers(&self.lxc) {
            eprintln!("# killing leftover container {name}");
            let _ = Command::new("lxc-stop")
                .arg("-P")
                .arg(&self.lxc)
                .args(["-n", &name, "-k"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("bench: removing {}: {e}", self.dir.display());
        }
    }

    /// Ctrl-C or SIGTERM: clean up, then exit 130.
    fn on_signal(self: &Arc<Self>) {
        let me = self.clone();
        support::on_interrupt(move || me.run());
    }
}

struct CleanupOnDrop(Arc<Cleanup>);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        self.0.run();
    }
}

/// SIGTERM, up to 10 s to go, then SIGKILL; reaps it.
fn stop_daemon(pid: i32) {
    // SAFETY: plain syscalls on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut status = 0;
        // SAFETY: as above; WNOHANG never blocks.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid || r < 0 {
            return;
        }
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn running_containers(lxc: &Path) -> Vec<String> {
    if !lxc.exists() {
        return Vec::new();
    }
    let out = Command::new("lxc-ls")
        .arg("-P")
        .arg(lxc)
        .args(["--running", "-1"])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}
