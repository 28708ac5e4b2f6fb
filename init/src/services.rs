//! The fixed, ordered set of services the appliance runs, and the one-shot steps that
//! prepare them. A service whose binary is absent from the image is skipped with a note.

use crate::info;
use std::path::Path;
use std::time::Duration;

/// What to run and how to treat it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub argv: Vec<String>,
    /// Runs in the delegated cgroup subtree (cairnd and its containers).
    pub delegated_cgroup: bool,
    /// How long to wait after the stop signal before SIGKILL on shutdown.
    pub stop_timeout: Duration,
    /// What asks it to stop at shutdown: SIGTERM, but SIGPWR for cairnd, which then stops
    /// its containers cleanly (on SIGTERM it would leave them running, as for a restart).
    pub stop_signal: nix::sys::signal::Signal,
    /// Whether output also goes to the console (it always goes to /var/log/cairn/NAME.log).
    pub console: bool,
    /// Attach stdin/stdout/stderr to /dev/console as a controlling terminal (debug shell).
    pub on_console_tty: bool,
    /// A job that runs once to completion (never restarted); see `Supervisor::job_result`.
    pub oneshot: bool,
    /// Scheduling niceness (0 normal, 19 lowest): background work that must not slow the
    /// path to the API.
    pub nice: i32,
}

impl ServiceSpec {
    pub fn new(name: &str, argv: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            delegated_cgroup: false,
            stop_timeout: Duration::from_secs(5),
            stop_signal: nix::sys::signal::Signal::SIGTERM,
            console: true,
            on_console_tty: false,
            oneshot: false,
            nice: 0,
        }
    }

    /// A one-shot job run under the supervisor (so PID 1's reaping never races a waiter).
    pub fn job(name: &str, argv: &[&str]) -> ServiceSpec {
        let mut s = ServiceSpec::new(name, argv);
        s.oneshot = true;
        s.console = false;
        s
    }

    pub fn binary_exists(&self) -> bool {
        self.argv.first().is_some_and(|b| Path::new(b).exists())
    }
}

pub const CAIRND: &str = "/usr/bin/cairnd";
pub const STATE_DIR: &str = "/var/lib/cairn";

pub fn udevd() -> ServiceSpec {
    let mut s = ServiceSpec::new("udevd", &["/usr/lib/systemd/systemd-udevd"]);
    s.console = false;
    s
}

/// Files read at the first start of the services on the way to the API: read ahead in a
/// thread of their own while PID 1 mounts /var and sets up the network, so that cairnd's
/// start does not wait on the root's reads (each block also checked by dm-verity, a
/// second of CPU under TCG for cairnd alone).
const PREFETCH: &[&str] = &[
    CAIRND,
    "/usr/lib/x86_64-linux-gnu/liblxc.so.1",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libm.so.6",
    "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
    "/usr/lib/x86_64-linux-gnu/libseccomp.so.2",
    "/usr/lib/x86_64-linux-gnu/libapparmor.so.1",
    "/usr/lib/x86_64-linux-gnu/libcap.so.2",
    "/usr/lib/x86_64-linux-gnu/libselinux.so.1",
    "/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0",
    "/usr/bin/lxcfs",
];

pub fn prefetch() {
    let _ = std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(|| {
            let mut buf = vec![0u8; 1 << 20];
            for path in PREFETCH {
                if let Ok(mut f) = std::fs::File::open(path) {
                    use std::io::Read;
                    while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
        });
}

/// Services that need no extra kernel modules: started as soon as the network is up
/// (cairnd first, so the API comes up early).
pub fn after_network(debug_shell: bool) -> Vec<ServiceSpec> {
    let mut cairnd = ServiceSpec::new("cairnd", &[CAIRND, "--state-dir", STATE_DIR]);
    cairnd.delegated_cgroup = true;
    cairnd.stop_timeout = Duration::from_secs(30);
    cairnd.stop_signal = nix::sys::signal::Signal::SIGPWR;
    let mut v = vec![
        ServiceSpec::new("lxcfs", &["/usr/bin/lxcfs", "/var/lib/lxcfs"]),
        cairnd,
    ];
    if debug_shell {
        let mut sh = ServiceSpec::new("debug-shell", &["/bin/bash", "-i"]);
        sh.on_console_tty = true;
        sh.console = false;
        v.push(sh);
    }
    v
}

/// Services that need the host's modules (openvswitch): started once they are loaded.
pub fn after_modules() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec::new(
            "ovsdb-server",
            &[
                "/usr/sbin/ovsdb-server",
                "/var/lib/openvswitch/conf.db",
                "--remote=punix:/run/openvswitch/db.sock",
                "--pidfile=/run/openvswitch/ovsdb-server.pid",
                "--unixctl=/run/openvswitch/ovsdb-server.ctl",
            ],
        ),
        ServiceSpec::new(
            "ovs-vswitchd",
            &[
                "/usr/sbin/ovs-vswitchd",
                "unix:/run/openvswitch/db.sock",
                "--pidfile=/run/openvswitch/ovs-vswitchd.pid",
            ],
        ),
    ]
}

/// One-shot preparation before the services start (e.g. the OVS database).
pub fn prepare() {
    let db = Path::new("/var/lib/openvswitch/conf.db");
    let schema = "/usr/share/openvswitch/vswitch.ovsschema";
    if !db.exists() && Path::new(schema).exists() {
        run_once(
            "ovsdb-tool",
            &[
                "/usr/bin/ovsdb-tool",
                "create",
                "/var/lib/openvswitch/conf.db",
                schema,
            ],
        );
    }
}

/// Runs a short command to completion, logging a failure.
pub fn run_once(what: &str, argv: &[&str]) -> bool {
    let Some((prog, args)) = argv.split_first() else {
        return false;
    };
    match crate::supervisor::command(prog).args(args).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            info!(
                "{what} {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            info!("{what}: running {prog}: {e}");
            false
        }
    }
}
