//! PID 1: bring the system up in stages, then supervise until asked to shut down.

use crate::api_watch::{self, Watchdog};
use crate::late::{self, Late};
use crate::services::{self, ServiceSpec};
use crate::shutdown::{self, Action};
use crate::supervisor::Supervisor;
use crate::{cgroup, console, control, data, info, kmod, mount, net, power, seedsource};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOG_DIR: &str = "/var/log/cairn";

pub fn run() -> ! {
    // The kernel starts PID 1 without PATH; the tools it runs (repart → mkfs) need one.
    std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    console::attach();
    console::stage("init-start");
    std::panic::set_hook(Box::new(|p| {
        console::line(&format!("PANIC (caught, supervision goes on): {p}"));
    }));
    // Ctrl-Alt-Del becomes SIGINT for us instead of an immediate reboot.
    let _ = nix::sys::reboot::set_cad_enabled(false);

    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    let _ = mask.thread_block();
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok();

    mount::api_filesystems();
    console::stage("api-filesystems");
    cgroup::setup();
    console::stage("mounts");
    services::prefetch();

    let mut sup = Supervisor::new(PathBuf::from(LOG_DIR));
    let boot = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bring_up(&mut sup)));
    let boot = match boot {
        Ok(b) => b,
        Err(_) => {
            info!("bring-up panicked; supervising what was started");
            BringUp {
                api_probe: true,
                udev_started: false,
                modules_pending: true,
                nics: 1,
                dns_from_dhcp: Vec::new(),
            }
        }
    };
    start_control(&sup);
    main_loop(&mut sup, sfd, boot)
}

/// Serves the D-Bus interface for cairnd (after bring-up, which made /run/cairn; also when
/// bring-up panicked, so the operator can still read logs and power off).
fn start_control(sup: &Supervisor) {
    let power: control::PowerFn = Arc::new(|action| {
        // The main loop reads this from its signalfd like any other shutdown request.
        let sig = match action {
            Action::PowerOff => Signal::SIGTERM,
            Action::Reboot => Signal::SIGINT,
        };
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::this(), sig) {
            info!("signalling ourselves {sig}: {e}");
        }
    });
    control::spawn(
        control::Control {
            board: sup.status_board(),
            log_dir: PathBuf::from(LOG_DIR),
            boots: Path::new(LOG_DIR).join("boots"),
            power,
        },
        PathBuf::from(control::SOCKET),
    );
}

/// Boot stages up to starting the services.
fn bring_up(sup: &mut Supervisor) -> BringUp {
    let disk = match data::mount_var() {
        Ok(state) => {
            let clean = match state.clean {
                None => "new".to_string(),
                Some(c) => u8::from(c).to_string(),
            };
            info!(
                "data: {} on /var (created={} clean={clean})",
                state.device, state.created
            );
            console::line(&format!("data fs clean={clean}"));
            data::boot_disk().ok()
        }
        Err(e) => {
            info!("data partition unavailable, state will not persist: {e}");
            let _ = nix::mount::mount(
                Some("tmpfs"),
                "/var",
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID,
                Some("mode=0755"),
            );
            None
        }
    };
    data::layout();
    console::log_to_file(Path::new("/var/log/cairn/init.log"));
    let machine_id = data::machine_id();
    record_boot(&machine_id);
    console::line(&format!("machine={machine_id}"));
    console::line(&format!("root read-only={}", u8::from(root_is_read_only())));
    console::stage("data-mounted");

    power::listen();
    // The seed may come through QEMU fw_cfg or the ESP; lxcfs needs fuse; a virtual NIC's
    // driver is loaded here rather than waiting for coldplug (all four come with the
    // initrd, so this normally finds them loaded).
    kmod::ensure(&["qemu_fw_cfg", "vfat", "fuse", "virtio_net"]);
    // cairnd imports (or, on the first boot, makes) its zfs pools as it starts: the module
    // loads meanwhile, while the seed is read and the network set up.
    if crate::storage::image_has_zfs() {
        let _ = std::thread::Builder::new()
            .name("zfs-module".into())
            .spawn(|| kmod::ensure(&["zfs"]));
    }

    let loaded = seedsource::load(disk.as_deref());
    let seed = loaded.seed;

    let hostname = seed
        .hostname
        .clone()
        .unwrap_or_else(|| format!("cairn-{}", &machine_id[..8.min(machine_id.len())]));
    let _ = nix::unistd::sethostname(&hostname);
    let _ = std::fs::write("/run/cairn/hostname", format!("{hostname}\n"));
    info!("hostname {hostname}");
    if !Path::new("/run/cairn/resolv.conf").exists() {
        let _ = std::fs::write("/run/cairn/resolv.conf", "");
    }
    // The API comes first: cairnd starts as soon as the network it is told about is set
    // up, and udev's coldplug and the host modules come once it answers (`late`). Only
    // NICs whose drivers are not loaded yet (real hardware) need coldplug first.
    let mut udev_started = false;
    if net::nics().len() < seed.network.interfaces.len().max(1) {
        late::start_udev_now(sup);
        udev_started = true;
    }
    let net = net::setup(&seed);
    // After the network: a cluster seed without an interface announces on the management
    // network, the first NIC the seed gives a static address.
    if loaded.imported_from.is_some() {
        let preseed = Path::new(services::STATE_DIR).join("preseed.yaml");
        let mgmt = net.static_nics.first().map(String::as_str);
        let pool = crate::storage::choose(&seed.storage, crate::storage::image_has_zfs(), || {
            crate::storage::find_empty_disk(
                Path::new("/sys/block"),
                Path::new("/dev"),
                disk.as_deref(),
            )
        });
        info!("default storage pool: {pool:?}");
        // zpool labels a whole disk and then waits for udev to announce the new partition:
        // on the boot that makes the pool on a disk, udevd must run before cairnd.
        let on_disk = pool
            .as_ref()
            .is_some_and(|p| p.driver == "zfs" && p.config.iter().any(|(k, _)| k == "source"));
        if on_disk && !udev_started {
            late::start_udev_now(sup);
            udev_started = true;
        }
        if let Err(e) =
            // Owner-only: it carries the cluster's join secret.
            crate::write_durably_with_mode(
                &preseed,
                seedsource::preseed_yaml(&seed, mgmt, pool.as_ref()).as_bytes(),
                0o600,
            )
        {
            info!("writing {}: {e}", preseed.display());
        }
    }
    let debug = std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .any(|w| w == "cairn.debug=1");
    // A supervised job (PID 1's reaping would race a thread's own wait), at normal
    // priority, next to cairnd: its first bridge needs them within seconds.
    if seed.network.instances.resolved_kind(seed.cluster.is_some()) != "none" {
        let mut argv = vec!["/usr/sbin/modprobe", "-a", "-b", "-q"];
        argv.extend_from_slice(kmod::BRIDGE_MODULES);
        sup.add(ServiceSpec::job("bridge-modules", &argv));
    }
    let specs: Vec<ServiceSpec> = services::after_network(debug);
    let has_cairnd = specs
        .iter()
        .any(|s| s.name == "cairnd" && s.binary_exists());
    for spec in specs {
        sup.add(spec);
    }
    if !has_cairnd {
        info!("no cairnd in this image: the API will not come up");
    }
    for iface in net.dhcp {
        crate::dhcp::spawn(iface, Some(hostname.clone()), crate::dhcp::LEASE_DIR.into());
    }
    console::stage("network");

    BringUp {
        api_probe: has_cairnd,
        udev_started,
        modules_pending: true,
        nics: net.nics,
        dns_from_dhcp: net.dns_from_dhcp,
    }
}

/// What the main loop still has to finish after [`bring_up`].
struct BringUp {
    api_probe: bool,
    /// Whether bring-up started udev already (else `late` does, once the API answers).
    udev_started: bool,
    /// The services that need modules start when the `modprobe` job is done.
    modules_pending: bool,
    /// How many NICs were configured: the addresses are recorded once each has one.
    nics: usize,
    /// NICs whose DHCP leases give resolv.conf (written once they have addresses).
    dns_from_dhcp: Vec<String>,
}

/// Starts the module-dependent services once the background module load is done.
fn finish_modules(sup: &mut Supervisor, pending: &mut bool) {
    if !*pending {
        return;
    }
    let Some(result) = sup.job_result("modprobe").map(str::to_string) else {
        return;
    };
    *pending = false;
    if result != "exit 0" {
        info!("some host modules did not load (modprobe {result})");
    }
    console::stage("modules");
    mount::late_filesystems();
    services::prepare();
    for spec in services::after_modules() {
        sup.add(spec);
    }
    console::stage("services-started");
}

/// Self-check: creating a file on the root must fail with EROFS.
fn root_is_read_only() -> bool {
    match std::fs::File::create("/usr/.cairn-write-probe") {
        Ok(_) => {
            let _ = std::fs::remove_file("/usr/.cairn-write-probe");
            false
        }
        Err(e) => e.raw_os_error() == Some(libc::EROFS),
    }
}

fn record_boot(machine_id: &str) {
    let line = format!(
        "boot machine={machine_id} uptime={:.3} cmdline={}\n",
        console::uptime(),
        std::fs::read_to_string("/proc/cmdline")
            .unwrap_or_default()
            .trim()
    );
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(LOG_DIR).join("boots"))
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Memory in use (MemTotal - MemAvailable), in MiB.
fn mem_used_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("MemTotal:")? - field("MemAvailable:")?) / 1024)
}

fn main_loop(sup: &mut Supervisor, sfd: Option<SignalFd>, boot: BringUp) -> ! {
    let mut api_probe = boot.api_probe;
    let mut modules = boot.modules_pending;
    let mut settle_pending = true;
    let mut panics = 0u32;
    // Memory is reported once the API is ready, or 10 s after the services started.
    let mut mem_due = (!api_probe).then(|| Instant::now() + Duration::from_secs(10));
    let mut addresses_logged = false;
    let mut dns: Option<crate::lease::DnsFollower> = None;
    let started = Instant::now();
    let mut watchdog = Watchdog::new(started);
    let mut late = Late::new(boot.udev_started, started);
    loop {
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let now = Instant::now();
            let mut timeout = Duration::from_secs(5);
            if let Some(t) = sup.next_wakeup() {
                timeout = timeout.min(t.saturating_duration_since(now));
            }
            if api_probe || late.busy() {
                // The API's first answer is the boot's end: notice it soon.
                timeout = timeout.min(Duration::from_millis(50));
            } else if !addresses_logged || mem_due.is_some() || modules {
                timeout = timeout.min(Duration::from_millis(250));
            }
            let action = wait_signals(sfd.as_ref(), timeout);
            shutdown::reap_for(sup, Duration::ZERO);
            late.poll(sup, !api_probe, Instant::now());
            finish_modules(sup, &mut modules);
            if settle_pending && sup.job_result("udev-settle").is_some() {
                settle_pending = false;
                console::stage("udev-settled");
            }
            sup.start_due(Instant::now());
            sup.flush_status();
            if !addresses_logged {
                let addrs = net::addresses();
                if addrs.len() >= boot.nics || started.elapsed() > Duration::from_secs(60) {
                    let _ = std::fs::write("/run/cairn/addresses", addrs.join("\n") + "\n");
                    info!("addresses {}", addrs.join(" "));
                    addresses_logged = true;
                    let resolv = crate::lease::resolv_conf(
                        Path::new(crate::lease::LEASE_DIR),
                        &boot.dns_from_dhcp,
                    );
                    if !resolv.is_empty() {
                        write_resolv_conf(&resolv);
                    }
                    dns = Some(crate::lease::DnsFollower::new(
                        boot.dns_from_dhcp.clone(),
                        resolv,
                    ));
                }
            }
            let renewed = dns
                .as_mut()
                .and_then(|f| f.poll(Path::new(crate::lease::LEASE_DIR), Instant::now()));
            if let Some(text) = renewed {
                info!("DNS servers changed with a lease: resolv.conf rewritten");
                write_resolv_conf(&text);
            }
            // "API ready" means reachable: the management address is up too.
            if api_probe
                && addresses_logged
                && api_watch::answers(Path::new(api_watch::API_SOCKET))
                && api_watch::https_listening()
            {
                watchdog.answered(Instant::now());
                console::stage("api-ready");
                console::line("API ready");
                api_probe = false;
                if let Ok(disk) = data::boot_disk() {
                    crate::bootcount::bless(&disk);
                }
                // What the services wrote on the way up (on a first boot: the whole install)
                // is on disk before anyone relies on the node; off the main loop, which
                // must keep reaping.
                std::thread::spawn(|| {
                    if let Ok(f) = std::fs::File::open("/var") {
                        let _ = nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f));
                    }
                });
                mem_due = Some(Instant::now());
            }
            if boot.api_probe {
                let hung = watchdog.poll(Instant::now(), sup.pid_of("cairnd"), || {
                    api_watch::answers(Path::new(api_watch::API_SOCKET))
                });
                if let Some(pid) = hung {
                    api_watch::restart_hung(pid);
                }
            }
            if mem_due.is_some_and(|t| Instant::now() >= t) {
                if let Some(m) = mem_used_mib() {
                    console::line(&format!("mem used={m} MiB"));
                }
                mem_due = None;
            }
            action
        }));
        match step {
            Ok(Some(action)) => shutdown::run(sup, action),
            Ok(None) => {}
            Err(_) => {
                panics += 1;
                if panics > 20 {
                    info!("too many panics in the main loop: rebooting");
                    shutdown::run(sup, Action::Reboot);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Replaces resolv.conf in one step (/etc/resolv.conf links to it): a resolver never
/// reads a half-written file.
fn write_resolv_conf(text: &str) {
    if let Err(e) = crate::write_durably(Path::new("/run/cairn/resolv.conf"), text.as_bytes()) {
        info!("writing resolv.conf: {e}");
    }
}

/// Waits for signals up to `timeout`; returns a shutdown action if one was asked for.
fn wait_signals(sfd: Option<&SignalFd>, timeout: Duration) -> Option<Action> {
    let Some(sfd) = sfd else {
        std::thread::sleep(timeout);
        return None;
    };
    let mut fds = [nix::poll::PollFd::new(
        sfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = timeout.as_millis().min(u16::MAX as u128) as u16;
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
    let mut action = None;
    while let Ok(Some(info)) = sfd.read_signal() {
        let sig = info.ssi_signo as i32;
        action = match sig {
            libc::SIGTERM | libc::SIGPWR | libc::SIGUSR2 => Some(Action::PowerOff),
            libc::SIGINT | libc::SIGUSR1 => Some(Action::Reboot),
            _ => action,
        };
        if action.is_some() {
            info!("signal {sig}: shutting down");
        }
    }
    action
}
