//! The one runner of `ovn-nbctl`: a change is a list of commands joined by `--`, sent as one
//! transaction; stderr is kept in the error. `--no-leader-only` is not passed: against a
//! clustered database, writes go to the Raft leader as they must.

use std::process::Command;
use std::time::Duration;

use crate::OvnError;

/// A northbound database, by its OVSDB connection string (`unix:/run/ovn/ovnnb_db.sock`,
/// `tcp:10.0.0.1:6641,tcp:10.0.0.2:6641`, …).
#[derive(Debug, Clone)]
pub struct Northbound {
    db: String,
    timeout: Duration,
}

impl Northbound {
    pub fn new(db: &str) -> Northbound {
        Northbound {
            db: db.to_string(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Northbound {
        self.timeout = timeout;
        self
    }

    pub fn db(&self) -> &str {
        &self.db
    }

    /// Runs `commands` (each a list of arguments) as one transaction; returns stdout.
    pub fn run(&self, commands: &[Vec<String>]) -> Result<String, OvnError> {
        let mut args = vec![
            format!("--db={}", self.db),
            format!("--timeout={}", self.timeout.as_secs().max(1)),
        ];
        for (i, c) in commands.iter().enumerate() {
            if i > 0 {
                args.push("--".into());
            }
            args.extend(c.iter().cloned());
        }
        tracing::debug!(db = %self.db, "ovn-nbctl {}", args.join(" "));
        let out = Command::new("ovn-nbctl").args(&args).output()?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // ovn-nbctl's own words for a database it cannot reach (or a timeout waiting).
        let unreachable = stderr.contains("database connection failed")
            || stderr.contains("Connection refused")
            || stderr.contains("No such file or directory")
            || out.status.code() == Some(142)
            || stderr.contains("timeout");
        if unreachable {
            return Err(OvnError::Unreachable {
                db: self.db.clone(),
                detail: stderr,
            });
        }
        let command = commands.first().map(|c| c.join(" ")).unwrap_or_default();
        Err(OvnError::Refused { command, stderr })
    }

    /// One command.
    pub fn one(&self, args: &[&str]) -> Result<String, OvnError> {
        self.run(&[args.iter().map(|s| s.to_string()).collect()])
    }
}
