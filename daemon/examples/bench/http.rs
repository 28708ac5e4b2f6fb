//! A small HTTP/1.1 client over cairnd's unix socket for the benchmark, keeping its
//! connection alive (hyper has no client feature in this crate).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::Result;

pub struct Client {
    socket: PathBuf,
    conn: Option<BufReader<UnixStream>>,
    /// How long a read or write may block before the exchange fails.
    timeout: Duration,
}

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self, what: &str) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "{what}: HTTP {} with a body that is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client::with_timeout(socket, Duration::from_secs(600))
    }

    /// A client whose requests give up after `timeout` without an answer (the cluster
    /// bench probes a cluster that may have no leader).
    pub fn with_timeout(socket: &Path, timeout: Duration) -> Client {
        Client {
            socket: socket.to_path_buf(),
            conn: None,
            timeout,
        }
    }

    /// A JSON request; an HTTP error status becomes an error carrying Incus's message.
    pub fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let what = format!("{method} {path}");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let reply = self.send(method, path, "application/json", body.as_bytes())?;
        let v = reply.json(&what)?;
        if reply.status >= 400 {
            return Err(format!("{what}: HTTP {}: {}", reply.status, v["error"]));
        }
        Ok(v)
    }

    /// Waits for the operation an async reply names; fails unless it succeeded.
    pub fn wait(&mut self, reply: &Value, what: &str) -> Result<Value> {
        let op = reply["operation"]
            .as_str()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| format!("{what}: the reply names no operation: {reply}"))?;
        let done = self.call("GET", &format!("{op}/wait?timeout=300"), None)?;
        let meta = &done["metadata"];
        if meta["status"] != "Success" {
            return Err(format!(
                "{what}: operation ended {}: {}",
                meta["status"], meta["err"]
            ));
        }
        Ok(meta.clone())
    }

    pub fn send(&mut self, method: &str, path: &str, ctype: &str, body: &[u8]) -> Result<Reply> {
        // A kept-alive connection the server has closed fails before any reply byte: retry
        // once on a fresh one.
        let reused = self.conn.is_some();
        match self.exchange(method, path, ctype, body) {
            Ok(r) => Ok(r),
            Err(Failure::BeforeReply(_)) if reused => {
                self.conn = None;
                self.exchange(method, path, ctype, body)
                    .map_err(|e| format!("{method} {path}: {}", e.message()))
            }
            Err(e) => {
                self.conn = None;
                Err(format!("{method} {path}: {}", e.message()))
            }
        }
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        ctype: &str,
        body: &[u8],
    ) -> std::result::Result<Reply, Failure> {
        use Failure::{BeforeReply, DuringReply};
        if self.conn.is_none() {
            let s = UnixStream::connect(&self.socket).map_err(|e| {
                BeforeReply(format!("connecting to {}: {e}", self.socket.display()))
            })?;
            let _ = s.set_read_timeout(Some(self.timeout));
            let _ = s.set_write_timeout(Some(self.timeout));
            self.conn = Some(BufReader::with_capacity(64 * 1024, s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: cairn\r\nUser-Agent: cairn-bench\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str(&format!("Content-Type: {ctype}\r\n"));
        }
        head.push_str("\r\n");
        let stream = conn.get_mut();
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .map_err(|e| BeforeReply(format!("writing the request: {e}")))?;

        let mut line = String::new();
        match conn.read_line(&mut line) {
            Ok(0) => return Err(BeforeReply("connection closed".into())),
            Ok(_) => {}
            Err(e) => return Err(BeforeReply(format!("reading the status line: {e}"))),
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| DuringReply(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            conn.read_line(&mut line)
                .map_err(|e| DuringReply(format!("reading headers: {e}")))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        let read = |e: std::io::Error| DuringReply(format!("reading the body: {e}"));
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).map_err(read)?;
                let size_hex = line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| DuringReply(format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        line.clear();
                        if conn.read_line(&mut line).map_err(read)? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                conn.read_exact(&mut body[start..]).map_err(read)?;
                line.clear();
                conn.read_line(&mut line).map_err(read)?;
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            conn.read_exact(&mut body).map_err(read)?;
        } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
            conn.read_to_end(&mut body).map_err(read)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok(Reply { status, body })
    }
}

enum Failure {
    /// Nothing of a reply was read: the request may be retried on a fresh connection.
    BeforeReply(String),
    DuringReply(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::BeforeReply(m) | Failure::DuringReply(m) => m,
        }
    }
}
