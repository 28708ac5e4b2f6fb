//! A minimal QMP client: connect, negotiate capabilities, run a command.

use crate::{LabError, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub struct Qmp {
    node: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    pub fn connect(node: &str, socket: &Path) -> Result<Qmp> {
        let err = |detail: String| LabError::Qmp {
            node: node.into(),
            detail,
        };
        let s = UnixStream::connect(socket)
            .map_err(|e| err(format!("connecting to {}: {e}", socket.display())))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let writer = s.try_clone().map_err(|e| err(e.to_string()))?;
        let mut q = Qmp {
            node: node.into(),
            reader: BufReader::new(s),
            writer,
        };
        q.read_message()?; // greeting
        q.execute("qmp_capabilities", Value::Null)?;
        Ok(q)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| LabError::Qmp {
                node: self.node.clone(),
                detail: format!("reading: {e}"),
            })?;
        serde_json::from_str(&line).map_err(|e| LabError::Qmp {
            node: self.node.clone(),
            detail: format!("parsing {line:?}: {e}"),
        })
    }

    /// Runs a command and returns its `return` value (events in between are skipped).
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut msg = serde_json::json!({ "execute": command });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let text = format!("{msg}\n");
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| LabError::Qmp {
                node: self.node.clone(),
                detail: format!("sending {command}: {e}"),
            })?;
        loop {
            let v = self.read_message()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(LabError::Qmp {
                    node: self.node.clone(),
                    detail: format!("{command}: {e}"),
                });
            }
        }
    }
}
