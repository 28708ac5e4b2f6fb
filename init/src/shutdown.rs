//! Orderly shutdown: stop services in reverse order, end every other process, sync,
//! unmount /var and everything below it, then power off or reboot.

use crate::supervisor::Supervisor;
use crate::{console, info};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PowerOff,
    Reboot,
}

/// Reaps children until none is left or `timeout` passes; tells the supervisor of its own.
pub fn reap_for(sup: &mut Supervisor, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    sup.on_exit(pid, &describe(&status));
                }
            }
            Err(nix::errno::Errno::ECHILD) => return true,
            Err(_) => return false,
        }
    }
}

pub fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("signal {sig}"),
        other => format!("{other:?}"),
    }
}

/// Mount points at or below /var, deepest first.
pub fn mounts_below_var(mountinfo: &str) -> Vec<String> {
    let mut v: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| *m == "/var" || m.starts_with("/var/"))
        .map(|m| m.to_string())
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v.dedup();
    v
}

pub fn run(sup: &mut Supervisor, action: Action) -> ! {
    console::stage(&format!(
        "shutdown-start action={}",
        match action {
            Action::PowerOff => "poweroff",
            Action::Reboot => "reboot",
        }
    ));
    sup.stop_all(&mut |s, t| {
        reap_for(s, t);
    });

    info!("ending remaining processes");
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    if !reap_for(sup, Duration::from_secs(3)) {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        reap_for(sup, Duration::from_secs(2));
    }

    if !sup.wait_log_threads(Duration::from_secs(3)) {
        info!("some service output is still being written");
    }
    console::stop_file_log();
    nix::unistd::sync();
    let mut clean = true;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts_below_var(&mountinfo) {
        if let Err(e) = umount2(m.as_str(), MntFlags::empty()) {
            if m == "/var" {
                info!("unmounting /var: {e}; remounting it read-only");
                if let Err(e) = mount(
                    None::<&str>,
                    "/var",
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                ) {
                    info!("remounting /var read-only: {e}");
                    clean = false;
                }
            } else {
                let _ = umount2(m.as_str(), MntFlags::MNT_DETACH);
            }
        }
    }
    nix::unistd::sync();
    console::stage(&format!("shutdown-complete clean={}", u8::from(clean)));
    let mode = match action {
        Action::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        Action::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
    };
    let _ = nix::sys::reboot::reboot(mode);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmounts_deepest_first() {
        let mi = "1 0 0:1 / / ro - erofs x ro\n2 1 0:2 / /var rw - ext4 x rw\n3 2 0:3 / /var/lib/lxcfs rw - fuse x rw\n4 1 0:4 / /varnish rw - tmpfs x rw\n";
        assert_eq!(mounts_below_var(mi), ["/var/lib/lxcfs", "/var"]);
    }
}
