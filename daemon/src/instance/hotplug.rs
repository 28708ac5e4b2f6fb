//! Mounting into and out of a running container: `cairnd forkmount` / `cairnd forkumount`.
//!
//! A multi-threaded process may not enter another mount namespace, so the daemon runs a
//! fresh single-threaded helper (as Incus runs `incusd forkmount`). The helper clones the
//! host directory as a detached mount (`open_tree`) while still in the host's namespace,
//! enters the container's mount namespace (which also makes its root and cwd the
//! container's, so the target path resolves inside the container, never on the host), and
//! attaches the clone there (`move_mount`). No path of the host is ever looked up from
//! inside the container.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{InstanceError, Result};

// From <linux/mount.h>; libc does not export them for glibc targets.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

async fn helper(args: Vec<String>) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let exe = std::env::current_exe()
            .map_err(|e| InstanceError::Failed(format!("finding cairnd's own binary: {e}")))?;
        crate::runner::run(&exe.to_string_lossy(), &args)
            .map(|_| ())
            .map_err(|e| InstanceError::Failed(e.to_string()))
    })
    .await
    .map_err(|e| InstanceError::Failed(format!("internal task failed: {e}")))?
}

/// Mounts host directory `source` at `target` inside the container whose init is `pid`.
pub async fn mount(pid: i32, source: &Path, target: &str, readonly: bool) -> Result<()> {
    helper(vec![
        "forkmount".into(),
        pid.to_string(),
        source.display().to_string(),
        target.to_string(),
        if readonly { "ro" } else { "rw" }.into(),
    ])
    .await
}

/// Unmounts `target` inside the container whose init is `pid` (lazily, as a busy mount
/// must still go away).
pub async fn unmount(pid: i32, target: &str) -> Result<()> {
    helper(vec![
        "forkumount".into(),
        pid.to_string(),
        target.to_string(),
    ])
    .await
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn enter_mount_ns(pid: i32) -> std::result::Result<(), String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| format!("opening the mount namespace of process {pid}: {e}"))?;
    // SAFETY: a valid fd; setns only reads it.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(os_err("entering the container's mount namespace"));
    }
    Ok(())
}

fn target_path(target: &str) -> std::result::Result<CString, String> {
    if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
        return Err(format!("invalid mount path {target:?}"));
    }
    CString::new(target).map_err(|_| format!("invalid mount path {target:?}"))
}

fn forkmount(args: &[String]) -> std::result::Result<(), String> {
    let [pid, source, target, mode] = args else {
        return Err("usage: cairnd forkmount PID SOURCE TARGET ro|rw".into());
    };
    let pid: i32 = pid.parse().map_err(|_| format!("bad pid {pid:?}"))?;
    let target_c = target_path(target)?;
    let source_c = CString::new(source.as_str()).map_err(|_| "bad source path".to_string())?;
    // SAFETY: plain syscall with a valid C string; the returned fd is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(os_err(&format!("cloning {source} as a mount")));
    }
    // SAFETY: fd was just returned by open_tree and is owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if mode == "ro" {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let empty = c"";
        // SAFETY: valid fd, empty path with AT_EMPTY_PATH, attr lives across the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                (libc::AT_EMPTY_PATH | AT_RECURSIVE as libc::c_int) as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r != 0 {
            return Err(os_err("making the mount read-only"));
        }
    }
    let is_dir = std::fs::metadata(source)
        .map_err(|e| format!("reading {source}: {e}"))?
        .is_dir();
    enter_mount_ns(pid)?;
    // The mount point is made as liblxc's `create=dir` / `create=file` would.
    if is_dir {
        std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
    } else {
        if let Some(parent) = Path::new(target).parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("creating {target}: {e}"))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(target)
            .map_err(|e| format!("creating {target}: {e}"))?;
    }
    let empty = c"";
    // SAFETY: valid fd and C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(os_err(&format!("mounting at {target}")));
    }
    Ok(())
}

fn forkumount(args: &[String]) -> std::result::Result<(), String> {
    let [pid, target] = args else {
        return Err("usage: cairnd forkumount PID TARGET".into());
    };
    let pid: i32 = pid.parse().map_err(|_| format!("bad pid {pid:?}"))?;
    let target_c = target_path(target)?;
    enter_mount_ns(pid)?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        // Already gone (the container unmounted it itself): nothing to undo.
        if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        return Err(format!("unmounting {target}: {e}"));
    }
    Ok(())
}

/// The `forkmount` / `forkumount` helper's entry point; prints the error on stderr, where
/// the runner picks it up.
pub fn helper_main(cmd: &str, args: &[String]) -> i32 {
    let r = match cmd {
        "forkmount" => forkmount(args),
        _ => forkumount(args),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
