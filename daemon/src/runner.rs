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
    #[error("{program} {args} exited with {status}: {stderr}")]
    Failed {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
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
        return Err(RunError::Failed {
            program: program.to_string(),
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
    fn stdout_is_returned() {
        assert_eq!(run("echo", ["hi"]).unwrap(), "hi\n");
    }
}
