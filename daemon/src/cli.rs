//! The command line: `cairnd [--state-dir DIR] [--debug]` runs the daemon; `forkstart` and
//! `forkexec` are the internal single-threaded helpers that call liblxc where it forks;
//! `forkmount`/`forkumount` mount into a running container's mount namespace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;
use crate::instance::lxc::{self, LxcState};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/cairn";

struct Options {
    state_dir: PathBuf,
    debug: bool,
}

fn usage() -> ExitCode {
    eprintln!("usage: cairnd [--state-dir DIR] [--debug]");
    ExitCode::from(2)
}

pub fn main() -> ExitCode {
    let _ = STARTED.set(std::time::Instant::now());
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("forkstart") => {
            let (Some(path), Some(name)) = (args.get(1), args.get(2)) else {
                return usage();
            };
            return ExitCode::from(lxc::forkstart_main(path.as_ref(), name) as u8);
        }
        Some("forkexec") => {
            let Some(spec) = args.get(1) else {
                return usage();
            };
            return ExitCode::from(lxc::forkexec_main(spec).clamp(0, 255) as u8);
        }
        Some(cmd @ ("forkmount" | "forkumount")) => {
            let code = crate::instance::hotplug::helper_main(cmd, &args[1..]);
            return ExitCode::from(code as u8);
        }
        Some("--version" | "version") => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let mut opts = Options {
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        debug: false,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--state-dir" => match it.next() {
                Some(d) => opts.state_dir = PathBuf::from(d),
                None => return usage(),
            },
            "--debug" | "-d" => opts.debug = true,
            "-h" | "--help" => {
                usage();
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }
    init_logging(opts.debug);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairnd: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("cairnd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// When the process started: the ready line says how long the daemon took to come up (on
/// a slow machine, as against the time spent loading the binary before `main`).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// How long each start-up step took, for the ready line: on a slow machine (an appliance
/// under emulation, a loaded host) it says where the time to the first answer went.
struct Steps {
    last: std::time::Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((step, now - self.last));
        self.last = now;
    }

    fn summary(&self) -> String {
        self.done
            .iter()
            .map(|(s, d)| format!("{s} {} ms", d.as_millis()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn run(opts: Options) -> Result<(), String> {
    let mut steps = Steps::new();
    let d = Daemon::open(&opts.state_dir).map_err(|e| e.to_string())?;
    steps.mark("state");
    crate::trust::restore_tokens(&d).map_err(|e| e.to_string())?;
    let preseed = crate::preseed::apply_local(&d).map_err(|e| e.to_string())?;
    steps.mark("preseed");
    if let Some(ms) = preseed
        .as_ref()
        .and_then(|p| p.cluster.as_ref())
        .and_then(|c| c.heartbeat_ms)
    {
        let ms = ms.clamp(
            *cairn_seed::HEARTBEAT_MS.start(),
            *cairn_seed::HEARTBEAT_MS.end(),
        );
        let _ = d.raft_heartbeat.set(Duration::from_millis(ms));
    }
    if preseed.as_ref().is_some_and(|p| p.ovn.is_some()) {
        let _ = d.ovn_services.set(true);
    }
    let router = crate::api::router(d.clone());
    d.https.set_router(router.clone());
    let unix = crate::listener::bind_unix(&d.paths.unix_socket)
        .map_err(|e| format!("binding {}: {e}", d.paths.unix_socket.display()))?;
    tokio::spawn(crate::listener::serve_unix(unix, router));
    let tls12 = d.local.get("core.https_tls12").as_deref() == Some("true");
    if let Err(e) = d.https.set_tls12(tls12, &d.cert()) {
        tracing::error!("core.https_tls12: {e}");
    }
    if let Some(addr) = d.local.get("core.https_address") {
        if let Err(e) = crate::listener::apply_https_address(&d, Some(&addr)).await {
            tracing::error!("core.https_address: {e}");
        }
    }
    steps.mark("listeners");
    if let Err(e) = crate::cluster::membership::resume(&d).await {
        tracing::error!("resuming cluster membership: {e}");
    }
    steps.mark("cluster");
    if let Some(p) = &preseed {
        if let Err(e) = crate::preseed::apply_shared(&d, p).await {
            // A member that cannot reach a majority right now must still come up (and
            // answer, and rejoin); a standalone server refuses a broken preseed as before.
            if d.cluster().is_none() {
                return Err(e.to_string());
            }
            tracing::error!("applying the preseed through the cluster: {e}");
        }
    }
    if let Some(p) = preseed {
        if let Some(seed) = p.cluster {
            let member = d
                .cluster()
                .map(|c| c.name())
                .or(p.server_name)
                .unwrap_or_else(|| d.hostname.clone());
            crate::cluster::autojoin::start(d.clone(), seed, member);
        }
    }
    // Before the instances resume: their NICs attach to these bridges.
    {
        let d2 = d.clone();
        if let Err(e) =
            tokio::task::spawn_blocking(move || crate::network::manage::restore(&d2)).await
        {
            tracing::error!("restoring networks: {e}");
        }
    }
    steps.mark("networks");
    tracing::info!(
        "cairnd ready in {} ms ({}): unix socket {}{}",
        STARTED.get().map_or(0, |t| t.elapsed().as_millis()),
        steps.summary(),
        d.paths.unix_socket.display(),
        d.https
            .address()
            .map(|a| format!(", HTTPS on {a}"))
            .unwrap_or_default()
    );
    tokio::spawn(resume_instances(d.clone()));
    if crate::network::ovn_services::enabled(&d) {
        tokio::spawn(crate::network::ovn_services::run_loop(d.clone()));
    }
    tokio::spawn(raft_watchdog(d.clone()));

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut pwr = signal(SignalKind::from_raw(libc::SIGPWR)).map_err(|e| e.to_string())?;
    let mut shutdown = d.shutdown.subscribe();
    tokio::select! {
        // SIGTERM/SIGINT: the daemon goes, its containers keep running (as Incus).
        _ = term.recv() => tracing::info!("SIGTERM: exiting, containers keep running"),
        _ = int.recv() => tracing::info!("SIGINT: exiting, containers keep running"),
        // SIGPWR: the host is going down: stop the containers first.
        _ = pwr.recv() => {
            tracing::info!("SIGPWR: stopping containers");
            stop_all(&d).await;
        }
        // /internal/shutdown stopped the containers before it signalled.
        _ = shutdown.wait_for(|s| *s) => {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let _ = std::fs::remove_file(&d.paths.unix_socket);
    Ok(())
}

/// A member whose Raft core stopped on a fatal error (storage failure, an internal panic)
/// can no longer take part in the cluster: exit so the supervisor (cairn-init) restarts the
/// daemon, which resumes from its log and database on disk. Containers keep running.
async fn raft_watchdog(d: Arc<Daemon>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(rt) = d.cluster() {
            if let Err(fatal) = &rt.node().metrics().running_state {
                tracing::error!(
                    "the cluster member's Raft core stopped ({fatal}): exiting to be restarted"
                );
                std::process::exit(75);
            }
        }
    }
}

/// Starts instances that were running when the daemon last stopped them, and those with
/// `boot.autostart`.
async fn resume_instances(d: Arc<Daemon>) {
    let Ok(instances) = d.db.instances() else {
        return;
    };
    let here = d.cluster().map(|c| c.name());
    for rec in instances {
        // In a cluster, only what lives on this member.
        if here
            .as_ref()
            .is_some_and(|h| !rec.location.is_empty() && *h != rec.location)
        {
            continue;
        }
        let should = rec
            .config
            .get("volatile.last_state.power")
            .map(String::as_str)
            == Some("RUNNING")
            || crate::validate::is_true(rec.config.get("boot.autostart"));
        if should && crate::instance::lxc_state(&d, &rec.name) == LxcState::Stopped {
            if let Err(e) = crate::instance::lifecycle::start(d.clone(), &rec.name).await {
                tracing::warn!("restarting instance {}: {e}", rec.name);
            }
        }
    }
}

/// Stops every running container (clean shutdown, then kill after 20 s: within cairn-init's
/// 30 s grace for cairnd at power-off), keeping their
/// `volatile.last_state.power` so they come back with the daemon.
pub async fn stop_all(d: &Arc<Daemon>) {
    let Ok(instances) = d.db.instances() else {
        return;
    };
    let mut tasks = Vec::new();
    for rec in instances {
        if crate::instance::lxc_state(d, &rec.name) == LxcState::Stopped {
            continue;
        }
        let lxcpath = d.paths.lxc.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            let clean = lxc::shutdown(&lxcpath, &rec.name, 20).unwrap_or(false);
            if !clean {
                let _ = lxc::stop(&lxcpath, &rec.name);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
