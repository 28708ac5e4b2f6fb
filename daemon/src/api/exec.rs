//! `POST /1.0/instances/{name}/exec`: a websocket operation. The client connects one
//! websocket per stream (`0`,`1`,`2` + `control`, or `0` + `control` with a terminal) using
//! the secrets in the operation's metadata; data travels as binary messages, an empty text
//! message marks end of stream (Incus's "barrier"), and the exit code lands in the
//! operation's metadata as `return`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Path, State};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::response::async_op;
use super::websocket::WebsocketTarget;
use super::{ApiError, ApiJson, ApiResult, AppState};
use crate::instance::exec::{self, ExecRequest};
use crate::operations::{resources, NewOp, OpClass, Operation};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// pylxd sends `null` for the fields it leaves unset: every optional field reads null as
/// its default.
pub struct ExecPost {
    command: Vec<String>,
    #[serde(
        rename = "wait-for-websocket",
        default,
        deserialize_with = "crate::api::nullable"
    )]
    wait_for_websocket: bool,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    interactive: bool,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    environment: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    width: i64,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    height: i64,
    #[serde(
        rename = "record-output",
        default,
        deserialize_with = "crate::api::nullable"
    )]
    record_output: bool,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    user: u32,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    group: u32,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    cwd: String,
}

fn secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

struct ExecSession {
    secrets: BTreeMap<String, String>,
    sockets: Mutex<HashMap<String, WebSocket>>,
    /// All data streams are connected (the control stream is optional: pylxd never opens it).
    connected: Notify,
    control: Notify,
}

impl WebsocketTarget for ExecSession {
    fn check_secret(&self, secret: &str) -> Result<(), String> {
        if self.secrets.values().any(|s| s == secret) {
            Ok(())
        } else {
            Err("wrong secret".into())
        }
    }

    fn connect(&self, secret: &str, ws: WebSocket) -> Result<(), String> {
        let fd = self
            .secrets
            .iter()
            .find(|(_, s)| s.as_str() == secret)
            .map(|(fd, _)| fd.clone())
            .ok_or("wrong secret")?;
        let mut socks = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if socks.contains_key(&fd) {
            return Err(format!("stream {fd} is already connected"));
        }
        let is_control = fd == "control";
        socks.insert(fd, ws);
        if is_control {
            self.control.notify_one();
        }
        let data_needed = self.secrets.keys().filter(|k| *k != "control").count();
        let data_connected = socks.keys().filter(|k| *k != "control").count();
        if !is_control && data_connected == data_needed {
            self.connected.notify_one();
        }
        Ok(())
    }
}

impl ExecSession {
    fn take(&self, fd: &str) -> Option<WebSocket> {
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(fd)
    }
}

pub async fn exec(
    State(d): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ExecPost>,
) -> ApiResult {
    crate::instance::get(&d, &name)?;
    if req.record_output && !req.wait_for_websocket {
        return Err(ApiError::bad_request(
            "Recording exec output is not supported; use wait-for-websocket",
        ));
    }
    if !req.wait_for_websocket {
        return Err(ApiError::bad_request(
            "Only wait-for-websocket exec is supported",
        ));
    }
    if req.command.is_empty() {
        return Err(ApiError::bad_request("Command is empty"));
    }
    let ereq = ExecRequest {
        command: req.command.clone(),
        environment: req.environment.clone(),
        cwd: req.cwd.clone(),
        uid: req.user,
        gid: req.group,
        interactive: req.interactive,
        width: req.width.clamp(0, u16::MAX as i64) as u16,
        height: req.height.clamp(0, u16::MAX as i64) as u16,
    };
    let mut secrets = BTreeMap::new();
    let fds: &[&str] = if req.interactive {
        &["0", "control"]
    } else {
        &["0", "1", "2", "control"]
    };
    for fd in fds {
        secrets.insert(fd.to_string(), secret());
    }
    let env_shown: BTreeMap<String, String> = exec::environment(&Default::default(), &ereq)
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let op = d.ops.create(NewOp {
        class: OpClass::Websocket,
        description: "Executing command".into(),
        resources: resources("instances", &[crate::instance::url(&name)]),
        metadata: serde_json::json!({
            "command": req.command,
            "environment": env_shown,
            "interactive": req.interactive,
            "fds": secrets,
        }),
        may_cancel: false,
    });
    let session = Arc::new(ExecSession {
        secrets,
        sockets: Mutex::new(HashMap::new()),
        connected: Notify::new(),
        control: Notify::new(),
    });
    d.register_websocket(&op.id, session.clone());
    let view = op.view();
    let d2 = d.clone();
    tokio::spawn(async move {
        let result = run(&d2, &name, &ereq, &session, &op).await;
        d2.unregister_websocket(&op.id);
        op.remove_metadata("fds");
        match result {
            Ok(code) => {
                op.set_metadata("return", serde_json::json!(code));
                op.finish(Ok(()));
            }
            Err(e) => op.finish(Err(e)),
        }
    });
    async_op(view)
}

async fn run(
    d: &AppState,
    name: &str,
    req: &ExecRequest,
    session: &Arc<ExecSession>,
    _op: &Arc<Operation>,
) -> Result<i32, String> {
    if tokio::time::timeout(Duration::from_secs(30), session.connected.notified())
        .await
        .is_err()
    {
        return Err("Timed out waiting for the exec websockets to connect".into());
    }
    let proc = exec::spawn(d, name, req).map_err(|e| e.to_string())?;
    if req.interactive {
        run_interactive(session, proc).await
    } else {
        run_pipes(session, proc).await
    }
}

/// Client → process: binary messages are data; a text message or close is end of input.
async fn ws_to_writer<W: AsyncWrite + Unpin>(
    mut rx: futures::stream::SplitStream<WebSocket>,
    mut w: W,
) {
    while let Some(Ok(msg)) = rx.next().await {
        match msg {
            Message::Binary(b) => {
                if w.write_all(&b).await.is_err() {
                    break;
                }
                let _ = w.flush().await;
            }
            Message::Text(_) | Message::Close(_) => break,
            _ => {}
        }
    }
    let _ = w.shutdown().await;
}

/// Process → client: data as binary messages, then the barrier.
async fn reader_to_ws<R: AsyncRead + Unpin>(
    mut r: R,
    tx: &mut futures::stream::SplitSink<WebSocket, Message>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send(Message::Binary(buf[..n].to_vec().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Message::Text(String::new().into())).await;
}

#[derive(Deserialize)]
struct ControlMsg {
    command: String,
    #[serde(default, deserialize_with = "crate::api::nullable")]
    args: BTreeMap<String, String>,
    #[serde(default)]
    signal: i32,
}

/// Reads control messages (`window-resize`, `signal`) until the socket closes.
async fn control_loop(ws: WebSocket, pid: Option<u32>, pty: Option<Arc<std::os::fd::OwnedFd>>) {
    let (_tx, mut rx) = ws.split();
    while let Some(Ok(msg)) = rx.next().await {
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(c) = serde_json::from_str::<ControlMsg>(&text) else {
            continue;
        };
        match c.command.as_str() {
            "window-resize" => {
                if let Some(pty) = &pty {
                    let w = c
                        .args
                        .get("width")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(80);
                    let h = c
                        .args
                        .get("height")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(24);
                    exec::resize(pty, w, h);
                }
            }
            "signal" => {
                if let Some(pid) = pid {
                    let _ = exec::signal(pid, c.signal);
                }
            }
            _ => {}
        }
    }
}

/// Serves the control stream whenever (if ever) the client connects it.
fn spawn_control(
    session: &Arc<ExecSession>,
    pid: Option<u32>,
    pty: Option<Arc<std::os::fd::OwnedFd>>,
) -> tokio::task::JoinHandle<()> {
    let session = session.clone();
    tokio::spawn(async move {
        loop {
            if let Some(ws) = session.take("control") {
                control_loop(ws, pid, pty).await;
                return;
            }
            session.control.notified().await;
        }
    })
}

async fn close(ws: &mut futures::stream::SplitSink<WebSocket, Message>) {
    let _ = ws.send(Message::Close(None)).await;
    let _ = ws.close().await;
}

fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(_) => 255,
    }
}

async fn run_pipes(session: &Arc<ExecSession>, mut proc: exec::ExecProcess) -> Result<i32, String> {
    let (ws0, ws1, ws2) = match (session.take("0"), session.take("1"), session.take("2")) {
        (Some(a), Some(b), Some(c)) => (a, b, c),
        _ => return Err("exec streams missing".into()),
    };
    let stdin = proc.child.stdin.take().ok_or("no stdin pipe")?;
    let stdout = proc.child.stdout.take().ok_or("no stdout pipe")?;
    let stderr = proc.child.stderr.take().ok_or("no stderr pipe")?;
    let (mut tx0, rx0) = ws0.split();
    let (mut tx1, _rx1) = ws1.split();
    let (mut tx2, _rx2) = ws2.split();
    let input = tokio::spawn(ws_to_writer(rx0, stdin));
    let control = spawn_control(session, proc.child.id(), None);
    let out = tokio::spawn(async move {
        reader_to_ws(stdout, &mut tx1).await;
        tx1
    });
    let err = tokio::spawn(async move {
        reader_to_ws(stderr, &mut tx2).await;
        tx2
    });
    let code = exit_code(proc.child.wait().await);
    // Background processes may keep the pipes open: give the output a moment, then go.
    let drain = Duration::from_secs(2);
    if let Ok(Ok(mut tx1)) = tokio::time::timeout(drain, out).await {
        close(&mut tx1).await;
    }
    if let Ok(Ok(mut tx2)) = tokio::time::timeout(drain, err).await {
        close(&mut tx2).await;
    }
    input.abort();
    control.abort();
    close(&mut tx0).await;
    Ok(code)
}

async fn run_interactive(
    session: &Arc<ExecSession>,
    mut proc: exec::ExecProcess,
) -> Result<i32, String> {
    let ws0 = session.take("0").ok_or("exec stream missing")?;
    let master = Arc::new(proc.pty.take().ok_or("no pty")?);
    let (mut tx, rx) = ws0.split();
    // The pty master is a plain blocking fd: one thread reads it, writes go through a
    // cloned File; the slave closing (process gone) ends the reader with EIO.
    let reader = std::fs::File::from(master.try_clone().map_err(|e| e.to_string())?);
    let writer = std::fs::File::from(master.try_clone().map_err(|e| e.to_string())?);
    let (data_tx, mut data_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut reader = reader;
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || data_tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let input = tokio::spawn(ws_to_writer(rx, tokio::fs::File::from_std(writer)));
    let control = spawn_control(session, proc.child.id(), Some(master.clone()));
    let output = tokio::spawn(async move {
        while let Some(chunk) = data_rx.recv().await {
            if tx.send(Message::Binary(chunk.into())).await.is_err() {
                break;
            }
        }
        tx
    });
    let code = exit_code(proc.child.wait().await);
    // Our copy of the master keeps the reader alive only until the slave side is gone.
    drop(master);
    if let Ok(Ok(mut tx)) = tokio::time::timeout(Duration::from_secs(2), output).await {
        close(&mut tx).await;
    }
    input.abort();
    control.abort();
    Ok(code)
}
