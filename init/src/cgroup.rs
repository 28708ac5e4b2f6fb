//! The cgroup2 layout: every controller enabled from the root down; one leaf per service
//! under `system/`, and a delegated subtree `cairn/` for cairnd and its containers
//! (cairnd itself runs in `cairn/daemon`, containers go in siblings it creates).

use crate::info;
use std::path::{Path, PathBuf};

pub const ROOT: &str = "/sys/fs/cgroup";
pub const DELEGATED: &str = "/sys/fs/cgroup/cairn";

/// Enables all available controllers in `dir`'s subtree.
fn enable_controllers(dir: &Path) {
    let Ok(avail) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let want: String = avail.split_whitespace().map(|c| format!("+{c} ")).collect();
    if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), want.trim()) {
        // Fall back one controller at a time (some refuse when processes are in the way).
        for c in avail.split_whitespace() {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
        info!("cgroup: enabling controllers in {}: {e}", dir.display());
    }
}

/// Creates the layout. PID 1 stays in the root cgroup (allowed for the root).
pub fn setup() {
    let root = Path::new(ROOT);
    enable_controllers(root);
    for d in ["system", "cairn"] {
        let _ = std::fs::create_dir_all(root.join(d));
        enable_controllers(&root.join(d));
    }
}

/// The leaf cgroup for a service (created if needed).
pub fn service_leaf(service: &str, delegated: bool) -> PathBuf {
    let dir = if delegated {
        Path::new(DELEGATED).join("daemon")
    } else {
        Path::new(ROOT).join("system").join(service)
    };
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Moves a process into a cgroup.
pub fn attach(cgroup: &Path, pid: i32) {
    if let Err(e) = std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()) {
        info!("cgroup: moving {pid} to {}: {e}", cgroup.display());
    }
}

/// Kills every process left in a cgroup (cgroup.kill, kernel ≥ 5.14).
pub fn kill_all(cgroup: &Path) {
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
}
