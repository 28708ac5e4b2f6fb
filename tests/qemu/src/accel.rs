//! Choosing the accelerator: KVM only if a short probe boot survives (on some hosts
//! /dev/kvm opens but every guest dies with "KVM internal error"), else multi-threaded TCG.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn qemu_args(self) -> Vec<String> {
        match self {
            Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
            Accel::Tcg => vec![
                "-accel".into(),
                "tcg,thread=multi".into(),
                "-cpu".into(),
                "max".into(),
            ],
        }
    }

    /// The Raft heartbeat a lab cluster's seed asks for. Under TCG, several emulated
    /// nodes share the host's cores and a member's answer can take several hundred
    /// milliseconds while another boots, loads ZFS or runs coldplug: with the default
    /// 100 ms heartbeat (also openraft's AppendEntries timeout) they depose each other's
    /// leaders and writes time out.
    pub fn raft_heartbeat_ms(self) -> Option<u64> {
        match self {
            Accel::Kvm => None,
            Accel::Tcg => Some(500),
        }
    }
}

/// `CAIRN_LAB_ACCEL=kvm|tcg` overrides the probe.
pub fn detect() -> Accel {
    match std::env::var("CAIRN_LAB_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    if kvm_probe() {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Boots OVMF under KVM for a few seconds: KVM works if QEMU neither exits nor reports an
/// internal error in that time.
fn kvm_probe() -> bool {
    let Ok(mut child) = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "none",
            "-monitor",
            "none",
            "-bios",
            "/usr/share/ovmf/OVMF.fd",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(6);
    let ok = loop {
        match child.try_wait() {
            Ok(Some(_)) => break false,
            Ok(None) if Instant::now() >= deadline => break true,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    ok && !err.contains("KVM internal error") && !err.contains("emulation failure")
}
