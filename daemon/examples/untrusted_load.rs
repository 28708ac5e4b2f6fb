//! Untrusted-client load: prints figures, it is not a timed test.
//!
//! ```text
//! cargo build --release -p cairnd && cargo run --release -p cairnd --example untrusted_load [-- --sources N]
//! ```
//!
//! Starts a release cairnd (as the `bench` example finds it) in a fresh state dir under
//! /var/tmp with HTTPS on a loopback port, then opens, without a client certificate:
//! - 100 connections that POST `/1.0/certificates` (open to untrusted clients) announcing a
//!   4 MiB body and never finishing it, and
//! - 300 connections that send one header line every 5 s (slow loris),
//!
//! spread over `--sources` loopback source addresses (127.1.0.1 …, default 50, so the
//! per-address limit is not the only one hit). It prints the daemon's RSS before, its peak
//! and last value during the first 15 s, the connections still open after 15 s, and the
//! RSS after they are gone; and checks that a request over the unix socket is answered
//! meanwhile. Only loopback traffic; every loop is bounded.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "bench/support.rs"]
mod support;

type Result<T> = std::result::Result<T, String>;

const BODIES: usize = 100;
const BODY_BYTES: usize = 4 << 20;
const SLOW_HEADERS: usize = 300;
const HEADER_EVERY: Duration = Duration::from_secs(5);
const OBSERVE: Duration = Duration::from_secs(15);

fn main() {
    let sources = parse_sources().unwrap_or_else(|e| {
        eprintln!("untrusted_load: {e}");
        std::process::exit(2);
    });
    match run(sources) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("untrusted_load: {e}");
            std::process::exit(1);
        }
    }
}

fn parse_sources() -> Result<u8> {
    let mut args = std::env::args().skip(1);
    let mut sources = 50u8;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sources" => {
                sources = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n >= 1)
                    .ok_or("--sources takes a number from 1 to 255")?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(sources)
}

struct Daemon {
    dir: PathBuf,
    pid: i32,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(self.pid);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stop(pid: i32) {
    // SAFETY: plain syscalls on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: as above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

fn run(sources: u8) -> Result<()> {
    let cairnd = support::cairnd_path()?;
    let dir = PathBuf::from(format!("/var/tmp/cairn-untrusted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let state = dir.join("state");
    let log = std::fs::File::create(dir.join("cairnd.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&cairnd)
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", cairnd.display()))?;
    let daemon = Daemon {
        dir: dir.clone(),
        pid: child.id() as i32,
    };
    {
        let (pid, dir) = (daemon.pid, dir.clone());
        support::on_interrupt(move || {
            stop(pid);
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
    let socket = state.join("unix.socket");
    wait_ready(&socket)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let body = format!(r#"{{"config":{{"core.https_address":"{addr}"}}}}"#);
    let status = unix_request(&socket, "PATCH", "/1.0", body.as_bytes())?;
    if status != 200 {
        return Err(format!("setting core.https_address: HTTP {status}"));
    }
    let tls = tls_config(&state)?;
    eprintln!(
        "# cairnd pid {}, HTTPS on {addr}, {sources} source addresses",
        daemon.pid
    );
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_mib(daemon.pid)?;

    let stop_all = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    // When each connection was closed by the server, from the start of the load.
    let closed_at = Arc::new(Mutex::new(Vec::new()));
    let failed_connects = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut threads = Vec::new();
    for i in 0..BODIES + SLOW_HEADERS {
        let source = IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1 + (i % sources as usize) as u8));
        let (tls, stop_all, open) = (tls.clone(), stop_all.clone(), open.clone());
        let (closed_at, failed_connects) = (closed_at.clone(), failed_connects.clone());
        let slow = i >= BODIES;
        threads.push(std::thread::spawn(move || {
            let conn = connect(source, addr, &tls);
            let Ok(mut conn) = conn else {
                failed_connects.fetch_add(1, Ordering::SeqCst);
                return;
            };
            open.fetch_add(1, Ordering::SeqCst);
            let closed_by_server = if slow {
                slow_headers(&mut conn, &stop_all)
            } else {
                unfinished_body(&mut conn, &stop_all)
            };
            if closed_by_server {
                closed_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(started.elapsed());
            }
            open.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    let mut peak = before;
    let mut trusted_ok = 0usize;
    let mut trusted_failed = 0usize;
    while started.elapsed() < OBSERVE {
        peak = peak.max(rss_mib(daemon.pid)?);
        match unix_request(&socket, "GET", "/1.0/instances", b"") {
            Ok(200) => trusted_ok += 1,
            _ => trusted_failed += 1,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let during = rss_mib(daemon.pid)?;
    let still_open = open.load(Ordering::SeqCst);
    stop_all.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_mib(daemon.pid)?;

    println!("rss_before {before:.1} MiB");
    println!("rss_peak_during {peak:.1} MiB");
    println!("rss_at_15s {during:.1} MiB");
    println!("rss_after {after:.1} MiB");
    println!(
        "still_open_after_15s {still_open} of {} connections",
        BODIES + SLOW_HEADERS
    );
    let closed_at = closed_at.lock().unwrap_or_else(|p| p.into_inner());
    let at_once = closed_at
        .iter()
        .filter(|t| **t < Duration::from_secs(2))
        .count();
    let slowest = closed_at.iter().max().copied().unwrap_or_default();
    println!(
        "closed_by_server {} (within 2 s: {at_once}, slowest after {:.1} s)",
        closed_at.len(),
        slowest.as_secs_f64()
    );
    println!(
        "failed_handshakes {}",
        failed_connects.load(Ordering::SeqCst)
    );
    println!("unix_requests_answered_during {trusted_ok} ok, {trusted_failed} failed");
    Ok(())
}

fn wait_ready(socket: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if matches!(unix_request(socket, "GET", "/internal/ready", b""), Ok(200)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("cairnd did not become ready in 30 s".into())
}

/// One request over the unix socket (`Connection: close`); returns the status.
fn unix_request(socket: &Path, method: &str, path: &str, body: &[u8]) -> Result<u16> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut reply = Vec::new();
    s.take(64 << 10)
        .read_to_end(&mut reply)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path}: no status in {text:?}"))
}

fn rss_mib(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

/// A client without a certificate, pinning the daemon's own certificate.
fn tls_config(state: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(state.join("server.crt")).map_err(|e| format!("server.crt: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(source: IpAddr, addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Result<Tls> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    sock.bind(&SocketAddr::new(source, 0).into())
        .map_err(|e| format!("binding {source}: {e}"))?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(tls.clone(), name).map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.conn.is_handshaking() {
        match s.conn.complete_io(&mut s.sock) {
            Ok(_) => {}
            Err(e) if would_block(&e) && Instant::now() < deadline => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(s)
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Whether the server has closed the connection (reads what it sent meanwhile).
fn closed(s: &mut Tls) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if would_block(&e) => return false,
            Err(_) => return true,
        }
    }
    false
}

/// Sends a header line every 5 s until the server closes the connection (true) or the
/// load ends (false).
fn slow_headers(s: &mut Tls, stop_all: &AtomicBool) -> bool {
    if s.write_all(b"GET /1.0 HTTP/1.1\r\nHost: cairn\r\n")
        .and_then(|_| s.flush())
        .is_err()
    {
        return true;
    }
    let mut line = 0u32;
    let mut last = Instant::now();
    // Bounded by the stop flag, which the main thread sets after OBSERVE.
    while !stop_all.load(Ordering::SeqCst) {
        if closed(s) {
            return true;
        }
        if last.elapsed() >= HEADER_EVERY {
            line += 1;
            let h = format!("X-Slow-{line}: 1\r\n");
            if s.write_all(h.as_bytes()).and_then(|_| s.flush()).is_err() {
                return true;
            }
            last = Instant::now();
        }
    }
    false
}

/// Announces a 4 MiB body and sends all of it but its last byte, then waits until the
/// server closes the connection (true) or the load ends (false).
fn unfinished_body(s: &mut Tls, stop_all: &AtomicBool) -> bool {
    let head = format!(
        "POST /1.0/certificates HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\n\
         Content-Length: {BODY_BYTES}\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).is_err() {
        return true;
    }
    // All of the body but its last byte, as fast as the server takes it.
    let chunk = vec![b' '; 64 << 10];
    let mut sent = 0usize;
    while !stop_all.load(Ordering::SeqCst) {
        if sent < BODY_BYTES - 1 {
            let n = chunk.len().min(BODY_BYTES - 1 - sent);
            match s.write(&chunk[..n]) {
                Ok(w) => sent += w,
                Err(e) if would_block(&e) => {}
                Err(_) => return true,
            }
            let _ = s.flush();
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
        if closed(s) {
            return true;
        }
    }
    false
}
