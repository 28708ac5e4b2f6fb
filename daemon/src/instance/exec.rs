//! Running a command inside a container: spawns `cairnd forkexec`, which attaches through
//! liblxc, with either pipes (non-interactive) or a pseudo-terminal (interactive). The
//! websocket plumbing lives in the API layer; this only makes the process and its streams.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;

use super::lxc::{ExecSpec, LxcState};
use super::{expand, get, InstanceError, Result};
use crate::daemon::Daemon;

#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub interactive: bool,
    pub width: u16,
    pub height: u16,
}

pub struct ExecProcess {
    pub child: tokio::process::Child,
    /// The pty master, for interactive sessions: both directions and resizes go through it.
    pub pty: Option<OwnedFd>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment as Incus builds it: defaults, then the instance's `environment.*` keys,
/// then what the client asked for.
pub fn environment(config: &crate::db::records::ConfigMap, req: &ExecRequest) -> Vec<String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
    env.insert("LANG".into(), "C.UTF-8".into());
    if req.uid == 0 {
        env.insert("HOME".into(), "/root".into());
        env.insert("USER".into(), "root".into());
    }
    if req.interactive {
        env.insert("TERM".into(), "xterm".into());
    }
    for (k, v) in config {
        if let Some(var) = k.strip_prefix("environment.") {
            env.insert(var.to_string(), v.clone());
        }
    }
    for (k, v) in &req.environment {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter()
        .filter(|(k, _)| !k.is_empty() && !k.contains('=') && !k.contains('\0'))
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

pub fn resize(pty: &OwnedFd, width: u16, height: u16) {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer on an open pty fd.
    unsafe {
        libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

pub fn spawn(d: &Daemon, name: &str, req: &ExecRequest) -> Result<ExecProcess> {
    let rec = get(d, name)?;
    match super::lxc_state(d, name) {
        LxcState::Running | LxcState::Thawed => {}
        LxcState::Frozen | LxcState::Freezing => {
            return Err(InstanceError::Conflict("Instance is frozen".into()))
        }
        _ => return Err(InstanceError::Conflict("Instance is not running".into())),
    }
    if req.command.is_empty() {
        return Err(InstanceError::Invalid("Command is empty".into()));
    }
    if req
        .command
        .iter()
        .chain(req.environment.values())
        .any(|s| s.contains('\0'))
        || req.cwd.contains('\0')
    {
        return Err(InstanceError::Invalid(
            "Command and environment must not contain NUL bytes".into(),
        ));
    }
    let (ec, _) = expand(d, &rec)?;
    let spec = ExecSpec {
        lxcpath: d.paths.lxc.to_string_lossy().into_owned(),
        name: name.to_string(),
        command: req.command.clone(),
        env: environment(&ec, req),
        cwd: req.cwd.clone(),
        uid: req.uid,
        gid: req.gid,
    };
    let spec_json = serde_json::to_string(&spec)
        .map_err(|e| InstanceError::Failed(format!("encoding exec spec: {e}")))?;
    let exe = std::env::current_exe()
        .map_err(|e| InstanceError::Failed(format!("finding cairnd's own binary: {e}")))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("forkexec").arg(spec_json).kill_on_drop(false);

    let pty = if req.interactive {
        let pty = nix::pty::openpty(None, None)
            .map_err(|e| InstanceError::Failed(format!("allocating a pty: {e}")))?;
        resize(&pty.master, req.width.max(1), req.height.max(1));
        let slave = pty.slave;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| InstanceError::Failed(format!("duplicating pty: {e}")))
        };
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        Some(pty.master)
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        None
    };
    let child = cmd
        .spawn()
        .map_err(|e| InstanceError::Failed(format!("starting forkexec for {name}: {e}")))?;
    Ok(ExecProcess { child, pty })
}

/// Sends a signal to the command (forkexec forwards it to the attached process).
pub fn signal(child_pid: u32, sig: i32) -> Result<()> {
    let sig = nix::sys::signal::Signal::try_from(sig)
        .map_err(|_| InstanceError::Invalid(format!("invalid signal {sig}")))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child_pid as i32), sig)
        .map_err(|e| InstanceError::Failed(format!("signalling exec process: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_layers_defaults_config_and_request() {
        let mut config = crate::db::records::ConfigMap::new();
        config.insert("environment.FOO".into(), "bar".into());
        config.insert("environment.LANG".into(), "de_DE".into());
        let req = ExecRequest {
            command: vec!["sh".into()],
            environment: [
                ("FOO".to_string(), "baz".to_string()),
                ("BAD=X".to_string(), "1".to_string()),
            ]
            .into(),
            cwd: String::new(),
            uid: 0,
            gid: 0,
            interactive: false,
            width: 0,
            height: 0,
        };
        let env = environment(&config, &req);
        assert!(env.contains(&"FOO=baz".to_string()));
        assert!(env.contains(&"LANG=de_DE".to_string()));
        assert!(env.contains(&"HOME=/root".to_string()));
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        assert!(!env.iter().any(|e| e.starts_with("BAD")));
    }
}
