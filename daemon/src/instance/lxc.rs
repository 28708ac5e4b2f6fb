//! liblxc through its C API (lxc-sys bindings generated from Debian's lxc-dev headers).
//!
//! Calls that fork (start, attach) never run inside the multi-threaded daemon: they run in a
//! fresh single-threaded helper process, `cairnd forkstart` / `cairnd forkexec`, as Incus does
//! with `incusd forkstart`. Calls that only talk to a container's monitor over its command
//! socket (state, stop, shutdown, freeze) run in the daemon, on a blocking thread.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr;

use lxc_sys::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LxcError {
    #[error("liblxc: opening container {0}: {1}")]
    Open(String, String),
    #[error("liblxc: {op} container {name} failed")]
    Call { op: &'static str, name: String },
    #[error("invalid argument for liblxc: {0}")]
    Arg(String),
}

/// The power state as liblxc reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LxcState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Aborting,
    Freezing,
    Frozen,
    Thawed,
}

impl LxcState {
    fn parse(s: &str) -> LxcState {
        match s {
            "STARTING" => LxcState::Starting,
            "RUNNING" => LxcState::Running,
            "STOPPING" => LxcState::Stopping,
            "ABORTING" => LxcState::Aborting,
            "FREEZING" => LxcState::Freezing,
            "FROZEN" => LxcState::Frozen,
            "THAWED" => LxcState::Thawed,
            _ => LxcState::Stopped,
        }
    }
}

fn cstr(s: &str) -> Result<CString, LxcError> {
    CString::new(s).map_err(|_| LxcError::Arg(format!("{s:?} contains a NUL byte")))
}

fn cpath(p: &Path) -> Result<CString, LxcError> {
    cstr(&p.to_string_lossy())
}

/// An owned `struct lxc_container *`.
struct Container {
    ptr: *mut lxc_container,
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        // SAFETY: ptr came from lxc_container_new and is released exactly once here.
        unsafe {
            lxc_container_put(self.ptr);
        }
    }
}

impl Container {
    fn open(lxcpath: &Path, name: &str) -> Result<Container, LxcError> {
        let cname = cstr(name)?;
        let cpath = cpath(lxcpath)?;
        // SAFETY: both strings are valid NUL-terminated C strings for the call's duration.
        let ptr = unsafe { lxc_container_new(cname.as_ptr(), cpath.as_ptr()) };
        if ptr.is_null() {
            return Err(LxcError::Open(
                name.to_string(),
                "lxc_container_new returned NULL".into(),
            ));
        }
        Ok(Container {
            ptr,
            name: name.to_string(),
        })
    }

    fn call_bool(
        &self,
        op: &'static str,
        f: Option<unsafe extern "C" fn(*mut lxc_container) -> bool>,
    ) -> Result<(), LxcError> {
        let f = f.ok_or(LxcError::Call {
            op,
            name: self.name.clone(),
        })?;
        // SAFETY: f is one of liblxc's methods of this container, called with its own pointer.
        if unsafe { f(self.ptr) } {
            Ok(())
        } else {
            Err(LxcError::Call {
                op,
                name: self.name.clone(),
            })
        }
    }

    fn c(&self) -> &lxc_container {
        // SAFETY: ptr is non-null and valid while self lives.
        unsafe { &*self.ptr }
    }
}

pub fn state(lxcpath: &Path, name: &str) -> Result<LxcState, LxcError> {
    let c = Container::open(lxcpath, name)?;
    let Some(f) = c.c().state else {
        return Ok(LxcState::Stopped);
    };
    // SAFETY: liblxc returns a pointer to a static string (or NULL).
    let s = unsafe { f(c.ptr) };
    if s.is_null() {
        return Ok(LxcState::Stopped);
    }
    // SAFETY: non-null, NUL-terminated static string from liblxc.
    let s = unsafe { CStr::from_ptr(s) }.to_string_lossy();
    Ok(LxcState::parse(&s))
}

pub fn init_pid(lxcpath: &Path, name: &str) -> Result<Option<i32>, LxcError> {
    let c = Container::open(lxcpath, name)?;
    let Some(f) = c.c().init_pid else {
        return Ok(None);
    };
    // SAFETY: liblxc method on its own container.
    let pid = unsafe { f(c.ptr) };
    Ok((pid > 0).then_some(pid))
}

/// Asks the container's init to power off, waiting up to `timeout_secs`; false on timeout.
pub fn shutdown(lxcpath: &Path, name: &str, timeout_secs: i32) -> Result<bool, LxcError> {
    let c = Container::open(lxcpath, name)?;
    let f = c.c().shutdown.ok_or(LxcError::Call {
        op: "shutdown",
        name: name.into(),
    })?;
    // SAFETY: liblxc method on its own container.
    Ok(unsafe { f(c.ptr, timeout_secs) })
}

/// Kills the container.
pub fn stop(lxcpath: &Path, name: &str) -> Result<(), LxcError> {
    let c = Container::open(lxcpath, name)?;
    c.call_bool("stop", c.c().stop)
}

pub fn freeze(lxcpath: &Path, name: &str) -> Result<(), LxcError> {
    let c = Container::open(lxcpath, name)?;
    c.call_bool("freeze", c.c().freeze)
}

pub fn unfreeze(lxcpath: &Path, name: &str) -> Result<(), LxcError> {
    let c = Container::open(lxcpath, name)?;
    c.call_bool("unfreeze", c.c().unfreeze)
}

pub fn version() -> String {
    // SAFETY: returns a static string.
    let v = unsafe { lxc_get_version() };
    if v.is_null() {
        return String::new();
    }
    // SAFETY: non-null static NUL-terminated string.
    unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned()
}

/// Body of `cairnd forkstart LXCPATH NAME`: starts the container daemonized and returns
/// once liblxc reports it RUNNING. Runs in its own single-threaded process.
pub fn forkstart_main(lxcpath: &Path, name: &str) -> i32 {
    let c = match Container::open(lxcpath, name) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let cc = c.c();
    // SAFETY: liblxc methods on its own container, with valid arguments.
    unsafe {
        if let Some(f) = cc.want_daemonize {
            f(c.ptr, true);
        }
        if let Some(f) = cc.want_close_all_fds {
            f(c.ptr, true);
        }
        match cc.start {
            Some(f) if f(c.ptr, 0, ptr::null()) => 0,
            _ => {
                eprintln!("liblxc could not start container {name}");
                1
            }
        }
    }
}

/// What `cairnd forkexec` runs: passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    pub lxcpath: String,
    pub name: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

/// Body of `cairnd forkexec SPEC`: attaches the command to the container with this process's
/// stdin/stdout/stderr, forwards signals it receives to the command, and exits with the
/// command's exit code (128 + signal when killed), as a shell would.
pub fn forkexec_main(spec_json: &str) -> i32 {
    let spec: ExecSpec = match serde_json::from_str(spec_json) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("forkexec: bad spec: {e}");
            return 255;
        }
    };
    match attach_and_wait(&spec) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("forkexec: {e}");
            255
        }
    }
}

fn cvec(items: &[String]) -> Result<Vec<CString>, LxcError> {
    items.iter().map(|s| cstr(s)).collect()
}

fn attach_and_wait(spec: &ExecSpec) -> Result<i32, LxcError> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;

    if spec.command.is_empty() {
        return Err(LxcError::Arg("empty command".into()));
    }
    let c = Container::open(Path::new(&spec.lxcpath), &spec.name)?;
    let argv_c = cvec(&spec.command)?;
    let mut argv: Vec<*mut libc::c_char> = argv_c.iter().map(|s| s.as_ptr() as *mut _).collect();
    argv.push(ptr::null_mut());
    let env_c = cvec(&spec.env)?;
    let mut env: Vec<*mut libc::c_char> = env_c.iter().map(|s| s.as_ptr() as *mut _).collect();
    env.push(ptr::null_mut());
    let cwd = if spec.cwd.is_empty() {
        None
    } else {
        Some(cstr(&spec.cwd)?)
    };

    let mut cmd = lxc_attach_command_t {
        program: argv[0],
        argv: argv.as_mut_ptr(),
    };
    // SAFETY: zero is a valid bit pattern for this plain C struct; every field liblxc reads
    // is set below as LXC_ATTACH_OPTIONS_DEFAULT would, then overridden where we need.
    let mut opts: lxc_attach_options_t = unsafe { std::mem::zeroed() };
    opts.attach_flags = LXC_ATTACH_DEFAULT as i32;
    // With a terminal on stdin, let liblxc allocate the pty inside the container's devpts and
    // relay it: programs then see a real tty of their own (tty(1), job control).
    // SAFETY: isatty only inspects fd 0.
    if unsafe { libc::isatty(0) } == 1 {
        opts.attach_flags |= LXC_ATTACH_TERMINAL as i32;
    }
    opts.namespaces = -1;
    opts.personality = LXC_ATTACH_DETECT_PERSONALITY as libc::c_long;
    opts.initial_cwd = cwd
        .as_ref()
        .map_or(ptr::null_mut(), |c| c.as_ptr() as *mut _);
    opts.uid = spec.uid;
    opts.gid = spec.gid;
    opts.env_policy = lxc_attach_env_policy_t_LXC_ATTACH_CLEAR_ENV;
    opts.extra_env_vars = env.as_mut_ptr();
    opts.extra_keep_env = ptr::null_mut();
    opts.stdin_fd = 0;
    opts.stdout_fd = 1;
    opts.stderr_fd = 2;
    opts.log_fd = -libc::EBADF;

    let attach = c.c().attach.ok_or(LxcError::Call {
        op: "attach",
        name: spec.name.clone(),
    })?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer in cmd/opts points into CStrings/Vecs alive until after the call;
    // lxc_attach_run_command is liblxc's own exec function for lxc_attach_command_t payloads.
    let rc = unsafe {
        attach(
            c.ptr,
            Some(lxc_attach_run_command),
            &mut cmd as *mut _ as *mut libc::c_void,
            &mut opts,
            &mut pid,
        )
    };
    if rc < 0 || pid <= 0 {
        return Err(LxcError::Call {
            op: "attach to",
            name: spec.name.clone(),
        });
    }

    // Block the signals we forward (and SIGCHLD) only now: the attached command must not
    // inherit a blocked mask. A child that already exited is caught by the WNOHANG below.
    let forwarded = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCONT,
        Signal::SIGTSTP,
    ];
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in forwarded {
        set.add(s);
    }
    let _ = set.thread_block();
    let child = Pid::from_raw(pid);
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => return Ok(255),
            Err(_) => {}
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => continue,
            Ok(sig) => {
                let _ = nix::sys::signal::kill(child, sig);
            }
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_container_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(state(dir.path(), "nothere").unwrap(), LxcState::Stopped);
        assert_eq!(init_pid(dir.path(), "nothere").unwrap(), None);
    }

    #[test]
    fn nul_bytes_are_refused_not_passed_to_c() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(state(dir.path(), "a\0b"), Err(LxcError::Arg(_))));
    }

    #[test]
    fn version_is_known() {
        assert!(!version().is_empty());
    }
}
