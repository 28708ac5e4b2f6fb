//! Network namespaces for tests that need a real (virtual) link: created with `ip netns`,
//! deleted on drop even when the test fails. Included by path by the tests that use it.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Network namespaces created by this test, deleted on drop even when the test fails.
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    pub fn add(&mut self, name: &str) {
        // A namespace left over by a killed run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        self.0.push(name.to_string());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces, and a veth pair with either end.
        for n in self.0.iter().rev() {
            match Command::new("ip").args(["netns", "del", n]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "cleanup: ip netns del {n}: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("cleanup: ip netns del {n}: {e}"),
            }
        }
    }
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {args:?} in {ns}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn in_ns_fails(ns: &str, args: &[&str]) -> bool {
    !Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("running ip netns exec")
        .status
        .success()
}

/// Ends the dnsmasq processes the daemon started (they outlive cairnd by design), by the
/// pids it recorded, so the namespace can go.
pub struct DnsmasqReaper(pub std::path::PathBuf);
impl Drop for DnsmasqReaper {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.0) else {
            return;
        };
        for e in rd.flatten() {
            let pidf = e.path().join("dnsmasq.pid");
            if let Some(pid) = std::fs::read_to_string(&pidf)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&e.path().display().to_string()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// Polls `f` every 100 ms until it holds; fails the test after `secs`.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// Root and the tools the bridge tests run; fails loudly without them.
pub fn tools_present() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, bridges, nftables); run it as root"
    );
    for t in ["ip", "nft", "dnsmasq", "curl", "setpriv"] {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
            .any(|d| Path::new(d).join(t).exists());
        assert!(
            found,
            "this test needs {t} (scripts/install-deps.sh installs it)"
        );
    }
}
