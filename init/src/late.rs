//! What the boot starts only once the API answers: udev with its coldplug, and the job that
//! loads the host's software modules (bridge, OVS, nf_tables, ZFS…). Both are seconds of
//! CPU under TCG and nothing on the way to the API needs them, so they would only slow
//! cairnd's start. They start anyway after [`AT_THE_LATEST`], so a daemon that never comes
//! up does not keep the hardware unprobed. (Where the seed's NICs need drivers from
//! coldplug, i.e. real hardware, bring-up starts udev itself first: see
//! [`start_udev_now`].)
//!
//! Nothing here blocks the main loop: udevd's control socket is waited for across loop
//! turns before the coldplug trigger runs (events triggered before udevd listens are lost).

use crate::info;
use crate::kmod;
use crate::services::{self, ServiceSpec};
use crate::supervisor::Supervisor;
use std::path::Path;
use std::time::{Duration, Instant};

pub const AT_THE_LATEST: Duration = Duration::from_secs(20);
const UDEV_CONTROL: &str = "/run/udev/control";
const UDEV_LISTEN_LIMIT: Duration = Duration::from_secs(5);

enum Udev {
    NotStarted,
    /// udevd started; the trigger runs once it listens, or at this instant.
    Starting(Instant),
    Done,
}

pub struct Late {
    udev: Udev,
    modules_started: bool,
    due: Instant,
}

impl Late {
    /// `udev_started`: bring-up already started udev and its coldplug.
    pub fn new(udev_started: bool, now: Instant) -> Late {
        Late {
            udev: if udev_started {
                Udev::Done
            } else {
                Udev::NotStarted
            },
            modules_started: false,
            due: now + AT_THE_LATEST,
        }
    }

    /// Whether the main loop should come back soon (waiting for udevd to listen).
    pub fn busy(&self) -> bool {
        matches!(self.udev, Udev::Starting(_))
    }

    /// One main-loop turn: starts what is due once `api_ready` (or the deadline passed).
    pub fn poll(&mut self, sup: &mut Supervisor, api_ready: bool, now: Instant) {
        if !api_ready && now < self.due {
            return;
        }
        if !self.modules_started {
            self.modules_started = true;
            sup.add(modprobe_job());
        }
        match self.udev {
            Udev::NotStarted => {
                sup.add(services::udevd());
                self.udev = if services::udevd().binary_exists() {
                    Udev::Starting(now + UDEV_LISTEN_LIMIT)
                } else {
                    Udev::Done
                };
            }
            Udev::Starting(limit) => {
                let listening = Path::new(UDEV_CONTROL).exists();
                if listening || now >= limit {
                    if !listening {
                        info!("udevd is not listening after 5 s: coldplug may miss devices");
                    }
                    sup.add(trigger_job());
                    self.udev = Udev::Done;
                }
            }
            Udev::Done => {}
        }
    }
}

/// Starts udevd and its coldplug at once, waiting (bounded) for udevd to listen: for NICs
/// whose drivers only coldplug loads.
pub fn start_udev_now(sup: &mut Supervisor) {
    sup.add(services::udevd());
    if services::udevd().binary_exists()
        && !crate::wait_for_path(Path::new(UDEV_CONTROL), UDEV_LISTEN_LIMIT)
    {
        info!("udevd is not listening after 5 s: coldplug may miss devices");
    }
    sup.add(trigger_job());
}

/// Coldplug: hardware drivers load from it; device links (/dev/disk/by-*) settle there.
fn trigger_job() -> ServiceSpec {
    let mut trigger = ServiceSpec::job(
        "udev-settle",
        &[
            "/usr/bin/udevadm",
            "trigger",
            "--type=all",
            "--action=add",
            "--settle",
        ],
    );
    trigger.nice = 5;
    trigger
}

/// The host modules, at the lowest priority.
fn modprobe_job() -> ServiceSpec {
    let mut argv = vec!["/usr/sbin/modprobe", "-a", "-b", "-q"];
    argv.extend_from_slice(kmod::HOST_MODULES);
    let mut job = ServiceSpec::job("modprobe", &argv);
    job.nice = 19;
    job
}
