//! The one way cairnd runs external programs: arguments are passed as a list (never through
//! a shell), and a failure carries the program, its exit status and what it printed on
//! stderr, so errors say what was run and why it failed.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The bytes between the program and the caller's stream did not get through.
    #[error("streaming {program}: {source}")]
    Stream {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} {args} exited with {status}: {stderr}")]
    Failed {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
}

impl RunError {
    /// `program args…` exited with `status`, saying `stderr`.
    pub fn failed<S: AsRef<OsStr>>(
        program: &str,
        args: &[S],
        status: std::process::ExitStatus,
        stderr: &[u8],
    ) -> RunError {
        RunError::Failed {
            program: program.to_string(),
            args: args
                .iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            status: status.to_string(),
            stderr: String::from_utf8_lossy(stderr).trim().to_string(),
        }
    }
}

/// Runs `program args…`, waits, and returns its stdout; non-zero exit is an error with stderr.
pub fn run<I, S>(program: &str, args: I) -> Result<String, RunError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RunError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(RunError::failed(program, &args, out.status, &out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `a | b` without a shell (`zfs send … | zfs receive …`): `a`'s stdout feeds `b`'s
/// stdin. Either failing is an error carrying that program's stderr; `a` is waited for even
/// when `b` fails first, so no process is left behind.
pub fn pipe(a: (&str, &[&OsStr]), b: (&str, &[&OsStr])) -> Result<String, RunError> {
    let spawn_err = |program: &str| {
        let program = program.to_string();
        move |source| RunError::Spawn { program, source }
    };
    let mut first = Command::new(a.0)
        .args(a.1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err(a.0))?;
    let Some(out) = first.stdout.take() else {
        let _ = first.kill();
        let _ = first.wait();
        return Err(RunError::Spawn {
            program: a.0.to_string(),
            source: std::io::Error::other("no stdout pipe"),
        });
    };
    let second = Command::new(b.0).args(b.1).stdin(Stdio::from(out)).output();
    let second = match second {
        Ok(o) => o,
        Err(source) => {
            let _ = first.kill();
            let _ = first.wait();
            return Err(RunError::Spawn {
                program: b.0.to_string(),
                source,
            });
        }
    };
    // b has exited, so a's writes fail from here on: wait cannot block for long.
    let first_out = first.wait_with_output().map_err(spawn_err(a.0))?;
    let failed = RunError::failed::<&OsStr>;
    // When both fail, b's error leads (a killed by SIGPIPE only says b stopped reading)
    // and a's own complaint, if it made one, follows.
    if !second.status.success() {
        let mut err = second.stderr.clone();
        if !first_out.status.success() && !first_out.stderr.is_empty() {
            err.extend_from_slice(format!("; {}: ", a.0).as_bytes());
            err.extend_from_slice(&first_out.stderr);
        }
        return Err(failed(b.0, b.1, second.status, &err));
    }
    if !first_out.status.success() {
        return Err(failed(a.0, a.1, first_out.status, &first_out.stderr));
    }
    Ok(String::from_utf8_lossy(&second.stdout).into_owned())
}

/// Runs `program args…` with its stdout copied into `out` (`zfs send`, `btrfs send`).
pub fn stream_out(
    program: &str,
    args: &[&OsStr],
    out: &mut dyn std::io::Write,
) -> Result<(), RunError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.to_string(),
            source,
        })?;
    let copied = match child.stdout.take() {
        Some(mut stdout) => std::io::copy(&mut stdout, out).map(|_| ()),
        None => Err(std::io::Error::other("no stdout pipe")),
    };
    if copied.is_err() {
        let _ = child.kill();
    }
    finish(program, args, child, copied)
}

/// Runs `program args…` with `input` copied into its stdin (`zfs receive`, `btrfs
/// receive`); the end of `input` is the end of its stdin.
pub fn stream_in(
    program: &str,
    args: &[&OsStr],
    input: &mut dyn std::io::Read,
) -> Result<(), RunError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.to_string(),
            source,
        })?;
    let copied = match child.stdin.take() {
        // Dropping stdin at the end of the copy closes the program's input.
        Some(mut stdin) => std::io::copy(input, &mut stdin).map(|_| ()),
        None => Err(std::io::Error::other("no stdin pipe")),
    };
    if copied.is_err() {
        let _ = child.kill();
    }
    finish(program, args, child, copied)
}

/// Waits for a streaming program: its own failure (with stderr) before the copy's.
fn finish(
    program: &str,
    args: &[&OsStr],
    child: std::process::Child,
    copied: std::io::Result<()>,
) -> Result<(), RunError> {
    let stream = |source| RunError::Stream {
        program: program.to_string(),
        source,
    };
    let out = child.wait_with_output().map_err(stream)?;
    if !out.status.success() {
        return Err(RunError::failed(program, args, out.status, &out.stderr));
    }
    copied.map_err(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr_and_status() {
        let err = run("sh", ["-c", "echo boom >&2; exit 3"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains('3'), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        assert!(matches!(
            run("/nonexistent/program", ["x"]),
            Err(RunError::Spawn { .. })
        ));
    }

    #[test]
    fn pipe_feeds_one_into_the_other_and_reports_either_failure() {
        let sh = |c: &'static str| -> Vec<&'static OsStr> { vec!["-c".as_ref(), c.as_ref()] };
        let out = pipe(("sh", &sh("echo one; echo two")), ("sh", &sh("wc -l"))).unwrap();
        assert_eq!(out.trim(), "2");
        let e = pipe(("sh", &sh("echo bad >&2; exit 4")), ("sh", &sh("cat"))).unwrap_err();
        assert!(e.to_string().contains("bad"), "{e}");
        let e = pipe(("sh", &sh("yes")), ("sh", &sh("echo nope >&2; exit 5"))).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn stdout_is_returned() {
        assert_eq!(run("echo", ["hi"]).unwrap(), "hi\n");
    }
}
