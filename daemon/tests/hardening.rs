//! Hardening scenarios (issue 18): state files no other local user can read, untrusted
//! HTTPS clients that cannot hold the daemon's connections or memory, file pushes streamed
//! into the instance, and TLS 1.3 unless TLS 1.2 is asked for.
//!
//! These run a real cairnd as root and use `setpriv`, `openssl` and `curl`; a missing
//! privilege or tool fails the test, it never passes silently.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{free_port, TestDaemon};

fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root: run the hardening tests as root"
    );
}

fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is needed by this test: install it (scripts/install-deps.sh)"
    );
}

/// Starts a daemon listening on HTTPS at 127.0.0.1:<free port>; returns it and the address.
fn https_daemon() -> (TestDaemon, String) {
    let d = TestDaemon::start();
    let addr = format!("127.0.0.1:{}", free_port());
    d.incus_ok(&["config", "set", "core.https_address", &addr]);
    (d, addr)
}

/// The secret a trust token carries (base64 JSON, as Incus makes it).
fn token_secret(printed: &str) -> String {
    let token = printed
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("no token in {printed:?}"));
    let json = base64::engine::general_purpose::STANDARD
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(token))
        .unwrap_or_else(|e| panic!("token {token:?} is not base64: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&json).expect("token is JSON");
    v["secret"]
        .as_str()
        .filter(|s| s.len() >= 16)
        .unwrap_or_else(|| panic!("token without a secret: {v}"))
        .to_string()
}

/// Every regular file under `dir` (symlinks not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for ent in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("listing {d:?}: {e}")) {
            let ent = ent.unwrap();
            let ft = ent.file_type().unwrap();
            if ft.is_dir() {
                dirs.push(ent.path());
            } else if ft.is_file() {
                out.push(ent.path());
            }
        }
    }
    out.sort();
    out
}

/// What `nobody` reads of `path`, or None when it may not.
fn read_as_nobody(path: &Path) -> Option<Vec<u8>> {
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("running setpriv");
    out.status.success().then_some(out.stdout)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The files no other user may read, relative to the state dir, that this scenario makes.
const SECRET_FILES: &[&str] = &[
    "cairn.db",
    "cairn.db-wal",
    "cairn.db-shm",
    "local.json",
    "server.key",
    "server.crt",
    "cluster/member.json",
    "cluster/raft/raft.log",
];

/// Asserts that `nobody` can read no file under the state dir but a container's own files
/// (its rootfs, which its unprivileged root must reach, and its logs), and that no
/// readable file holds any of `secrets`; returns (files checked, readable ones).
fn assert_nothing_readable_by_nobody(d: &TestDaemon, secrets: &[String]) -> (usize, usize) {
    let files = files_under(&d.state);
    let containers = [d.state.join("storage-pools"), d.state.join("lxc")];
    let lxc_config = d.state.join("lxc/c1/config");
    assert!(lxc_config.is_file(), "the running container's LXC config");
    assert!(
        read_as_nobody(&lxc_config).is_none(),
        "the LXC config holds environment values: owner-only"
    );
    let mut readable = Vec::new();
    let mut unexpected = Vec::new();
    for f in &files {
        if let Some(data) = read_as_nobody(f) {
            for s in secrets {
                assert!(
                    !contains(&data, s.as_bytes()),
                    "{f:?} is readable by nobody and holds a trust token's secret"
                );
            }
            if !containers.iter().any(|c| f.starts_with(c)) {
                unexpected.push(f.clone());
            }
            readable.push(f.clone());
        }
    }
    assert!(
        unexpected.is_empty(),
        "files under the state dir readable by nobody: {unexpected:?}"
    );
    (files.len(), readable.len())
}

#[test]
fn state_files_are_not_readable_by_other_users() {
    require_root("reading files as another user");
    require_tool("setpriv");
    let (mut d, _addr) = https_daemon();
    // A token made before and one after clustering is enabled: the first lives in the
    // database (and its WAL), the second passes through the Raft log too.
    let mut secrets = vec![token_secret(
        &d.incus_ok(&["config", "trust", "add", "before"]),
    )];
    d.incus_ok(&["cluster", "enable", "node1"]);
    secrets.push(token_secret(
        &d.incus_ok(&["config", "trust", "add", "after"]),
    ));
    d.incus_ok(&["profile", "create", "p1"]);
    // A running container: its files must stay reachable for its unprivileged root.
    d.import_busybox("bb");
    d.incus_ok(&["launch", "bb", "c1"]);

    // The secret is really on disk as root sees it, so the check below means something.
    let wal = std::fs::read(d.state.join("cairn.db-wal")).unwrap_or_default();
    let db = std::fs::read(d.state.join("cairn.db")).unwrap();
    assert!(
        contains(&wal, secrets[0].as_bytes()) || contains(&db, secrets[0].as_bytes()),
        "the first token's secret should be in the database files"
    );
    for name in SECRET_FILES {
        let p = d.state.join(name);
        assert!(p.is_file(), "{name} should exist in this scenario");
        assert_eq!(mode(&p), 0o600, "{name}");
    }
    let snapshots = d.state.join("cluster/raft/snapshots");
    assert!(
        files_under(&snapshots)
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "db")),
        "enabling clustering writes a snapshot"
    );
    for dir in [
        "cluster",
        "cluster/raft",
        "cluster/raft/snapshots",
        "logs",
        "images",
    ] {
        assert_eq!(mode(&d.state.join(dir)), 0o700, "{dir}");
    }
    // What containers must traverse stays traversable, not listable.
    for dir in ["", "lxc", "storage-pools"] {
        assert_eq!(mode(&d.state.join(dir)), 0o711, "state dir {dir:?}");
    }
    let (checked, readable) = assert_nothing_readable_by_nobody(&d, &secrets);
    eprintln!(
        "{checked} files under the state dir; {readable} readable by nobody, all the \
         container's own (rootfs, logs), none holding a secret"
    );

    // An older cairnd's state: everything readable. The next start fixes it.
    d.kill9();
    for name in SECRET_FILES {
        std::fs::set_permissions(d.state.join(name), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    for dir in ["cluster", "cluster/raft", "cluster/raft/snapshots"] {
        std::fs::set_permissions(d.state.join(dir), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    for f in files_under(&snapshots) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    d.spawn();
    d.incus_ok(&["profile", "create", "p2"]);
    let out = d.incus_ok(&["exec", "c1", "--", "echo", "still-running"]);
    assert_eq!(out.trim(), "still-running");
    for name in SECRET_FILES {
        assert_eq!(mode(&d.state.join(name)), 0o600, "{name} after a restart");
    }
    assert_nothing_readable_by_nobody(&d, &secrets);
}

// ---------------------------------------------------------------------------------------
// Untrusted connections.

/// A self-signed client certificate made by openssl, and its key.
fn client_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    require_tool("openssl");
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:secp384r1", "-nodes"])
        .args(["-subj", &format!("/CN={name}"), "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (crt, key)
}

/// A rustls client pinning the daemon's certificate, optionally presenting a client one.
fn tls_client(state: &Path, client: Option<&(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    let server_pem = std::fs::read(state.join("server.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut server_pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((crt, key)) => {
            let crt = std::fs::read(crt).unwrap();
            let key = std::fs::read(key).unwrap();
            let chain = rustls_pemfile::certs(&mut crt.as_slice())
                .map(Result::unwrap)
                .collect();
            let key = rustls_pemfile::private_key(&mut key.as_slice())
                .unwrap()
                .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(addr: &str, config: &Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Drives the handshake to its end.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Whether the server closed the connection, waiting up to `wait` for it (answers read
/// meanwhile are skipped: a closing server may send an error first).
fn closed_within(tls: &mut Tls, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
        if Instant::now() >= until {
            return false;
        }
    }
}

/// A client that sends a request's headers one line every 2 s, as a slow-loris attack
/// does. Returns when the server closed it, or None if it is still open after `give_up`.
fn slow_headers(
    addr: &str,
    config: &Arc<rustls::ClientConfig>,
    give_up: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let Ok(mut tls) = tls_connect(addr, config) else {
        return Some(start.elapsed());
    };
    if tls
        .write_all(b"GET /1.0 HTTP/1.1\r\nHost: cairn\r\n")
        .and_then(|_| tls.flush())
        .is_err()
    {
        return Some(start.elapsed());
    }
    let mut line = 0;
    while start.elapsed() < give_up {
        if closed_within(&mut tls, Duration::from_secs(2)) {
            return Some(start.elapsed());
        }
        line += 1;
        let header = format!("X-Slow-{line}: 1\r\n");
        if tls
            .write_all(header.as_bytes())
            .and_then(|_| tls.flush())
            .is_err()
        {
            return Some(start.elapsed());
        }
    }
    None
}

/// `curl` over HTTPS with the given client certificate: (status, body).
fn curl_https(
    addr: &str,
    cert: Option<&(PathBuf, PathBuf)>,
    args: &[&str],
    path: &str,
) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sk", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some((crt, key)) = cert {
        c.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    let out = c
        .args(args)
        .arg(format!("https://{addr}{path}"))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn slow_untrusted_connections_are_closed_while_trusted_clients_keep_working() {
    require_tool("curl");
    let (d, addr) = https_daemon();
    let trusted = client_certificate(d.root.path(), "trusted");
    d.incus_ok(&[
        "config",
        "trust",
        "add-certificate",
        trusted.0.to_str().unwrap(),
    ]);
    let (code, body) = curl_https(&addr, Some(&trusted), &[], "/1.0");
    assert!(
        code == 200 && body.contains("\"auth\":\"trusted\""),
        "{code} {body}"
    );

    let anonymous = tls_client(&d.state, None);
    let with_cert = tls_client(&d.state, Some(&trusted));
    let started = Instant::now();
    let give_up = Duration::from_secs(30);
    // A trusted client sending slow headers is given far longer than untrusted ones. It
    // connects before the flood: the flood's handshakes from the same address would fill
    // the per-address handshake slots, and which connection wins one is a race.
    let trusted_slow = {
        let (addr, config) = (addr.clone(), with_cert.clone());
        std::thread::spawn(move || slow_headers(&addr, &config, Duration::from_secs(16)))
    };
    std::thread::sleep(Duration::from_millis(500));
    let untrusted: Vec<_> = (0..50)
        .map(|_| {
            let (addr, config) = (addr.clone(), anonymous.clone());
            std::thread::spawn(move || slow_headers(&addr, &config, give_up))
        })
        .collect();
    // Meanwhile a trusted client keeps working, every request answered.
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(14) {
        let (code, body) = curl_https(&addr, Some(&trusted), &[], "/1.0/instances");
        assert_eq!(code, 200, "trusted request during the attack: {body}");
        answered += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let closed: Vec<Option<Duration>> = untrusted.into_iter().map(|t| t.join().unwrap()).collect();
    let still_open = closed.iter().filter(|c| c.is_none()).count();
    let late = closed
        .iter()
        .flatten()
        .filter(|t| **t >= Duration::from_secs(5))
        .count();
    let slowest = closed.iter().flatten().max().copied().unwrap_or_default();
    eprintln!(
        "untrusted slow-header connections: {still_open} still open after {give_up:?}, \
         {late} closed by the header timeout, the others refused at once (limit per \
         address); slowest closed after {slowest:?}; {answered} trusted requests answered"
    );
    assert_eq!(still_open, 0, "untrusted slow-header connections left open");
    assert!(
        slowest < Duration::from_secs(20),
        "an untrusted slow-header connection lived {slowest:?} (header timeout 10 s)"
    );
    assert!(
        (1..=8).contains(&late),
        "{late} untrusted connections were served (at most 8 per address)"
    );
    assert_eq!(
        trusted_slow.join().unwrap(),
        None,
        "the trusted slow connection was closed like an untrusted one"
    );

    // A 4 MiB body to the one write untrusted clients reach is refused unread, announced
    // (Content-Length) or not (chunked: cut off past 64 KiB).
    let big = d.root.path().join("big.json");
    std::fs::write(&big, vec![b' '; 4 << 20]).unwrap();
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-X", "POST", "-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", big.display()))
        .arg(format!("https://{addr}/1.0/certificates"))
        .output()
        .expect("running curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "413",
        "a 4 MiB untrusted body: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tls = tls_connect(&addr, &anonymous).unwrap();
    tls.write_all(
        b"POST /1.0/certificates HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    let chunk = vec![b' '; 16 << 10];
    let mut sent = 0;
    let mut reply = Vec::new();
    // Until the server answers; it must before 4 MiB are sent.
    while sent < 4 << 20 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if tls.write_all(&framed).and_then(|_| tls.flush()).is_err() {
            break;
        }
        sent += chunk.len();
        let mut buf = [0u8; 1024];
        if let Ok(n) = tls.read(&mut buf) {
            reply.extend_from_slice(&buf[..n]);
            if n == 0 || !reply.is_empty() {
                break;
            }
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    eprintln!(
        "chunked untrusted body: answered after {} KiB sent",
        sent >> 10
    );
    assert!(
        sent < 1 << 20,
        "the server took {sent} bytes of an untrusted chunked body (limit 64 KiB)"
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
        "answer to an oversized chunked body: {reply}"
    );

    // An untrusted body that never arrives whole is answered and the connection closed.
    let mut tls = tls_connect(&addr, &anonymous).unwrap();
    tls.write_all(
        b"POST /1.0/certificates HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"trust_token\":",
    )
    .unwrap();
    tls.flush().unwrap();
    let t = Instant::now();
    assert!(
        closed_within(&mut tls, Duration::from_secs(25)),
        "an unfinished untrusted body held its connection"
    );
    eprintln!(
        "unfinished untrusted body: connection closed after {:?}",
        t.elapsed()
    );

    // An untrusted keep-alive connection left idle after its request is closed too.
    let mut tls = tls_connect(&addr, &anonymous).unwrap();
    tls.write_all(b"GET /1.0 HTTP/1.1\r\nHost: cairn\r\n\r\n")
        .unwrap();
    tls.flush().unwrap();
    let mut head = [0u8; 12];
    let t = Instant::now();
    let mut got = 0;
    while got < head.len() && t.elapsed() < Duration::from_secs(10) {
        match tls.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => {}
        }
    }
    assert_eq!(&head[..got], b"HTTP/1.1 200", "an untrusted GET /1.0");
    let t = Instant::now();
    assert!(
        closed_within(&mut tls, Duration::from_secs(25)),
        "an idle untrusted keep-alive connection stayed open"
    );
    eprintln!(
        "idle untrusted keep-alive connection: closed after {:?}",
        t.elapsed()
    );

    // Trusted clients still work after all that.
    let (code, _) = curl_https(&addr, Some(&trusted), &[], "/1.0/instances");
    assert_eq!(code, 200);
}

// ---------------------------------------------------------------------------------------
// TLS versions.

/// Whether `openssl s_client` completes a handshake with only `version` (-tls1_2, -tls1_3).
fn handshake_with(addr: &str, version: &str) -> bool {
    let out = Command::new("timeout")
        .args([
            "10", "openssl", "s_client", "-brief", "-connect", addr, version,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.contains("CONNECTION ESTABLISHED")
}

#[test]
fn tls13_only_unless_tls12_is_enabled() {
    require_tool("openssl");
    let (d, addr) = https_daemon();
    assert!(handshake_with(&addr, "-tls1_3"), "TLS 1.3 refused");
    assert!(
        !handshake_with(&addr, "-tls1_2"),
        "TLS 1.2 accepted by default"
    );

    d.incus_ok(&["config", "set", "core.https_tls12", "true"]);
    assert!(
        handshake_with(&addr, "-tls1_2"),
        "TLS 1.2 refused with core.https_tls12"
    );
    assert!(
        handshake_with(&addr, "-tls1_3"),
        "TLS 1.3 refused with core.https_tls12"
    );
    let err = d.incus_err(&["config", "set", "core.https_tls12", "maybe"]);
    assert!(err.contains("core.https_tls12"), "{err}");

    d.incus_ok(&["config", "set", "core.https_tls12", "false"]);
    assert!(
        !handshake_with(&addr, "-tls1_2"),
        "TLS 1.2 accepted after core.https_tls12=false"
    );
    d.incus_ok(&["config", "set", "core.https_tls12", "true"]);
    d.incus_ok(&["config", "unset", "core.https_tls12"]);
    assert!(
        !handshake_with(&addr, "-tls1_2"),
        "TLS 1.2 accepted after unsetting the key"
    );
}

// ---------------------------------------------------------------------------------------
// File push.

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the daemon's peak RSS (VmHWM) to its current RSS, and returns that.
fn reset_peak_rss(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting VmHWM");
    status_kib(pid, "VmRSS:")
}

/// A 600 MiB sparse file: no disk space, zeros when read.
fn sparse_file(dir: &Path) -> PathBuf {
    let p = dir.join("push-600M");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(600 << 20)
        .unwrap();
    p
}

/// POSTs `file` to the files API over the unix socket: (status, bytes curl uploaded).
fn push_files_api(d: &TestDaemon, instance: &str, file: &Path, path: &str) -> (u16, u64) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}"])
        .arg("--unix-socket")
        .arg(d.state.join("unix.socket"))
        .args(["-X", "POST", "-H", "X-Incus-type: file", "-T"])
        .arg(file)
        .arg(format!(
            "http://cairn/1.0/instances/{instance}/files?path={path}"
        ))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = text.split_whitespace();
    let code = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let sent = it
        .next()
        .and_then(|s| s.split('.').next()?.parse().ok())
        .unwrap_or(u64::MAX);
    (code, sent)
}

/// The most a 600 MiB push may add to the daemon's peak RSS.
const PUSH_RSS_BOUND_KIB: u64 = 64 << 10;

#[test]
fn a_600_mib_push_streams_and_a_missing_instance_is_refused_unread() {
    require_root("resetting the daemon's peak RSS (/proc/PID/clear_refs)");
    require_tool("curl");
    let d = TestDaemon::start();
    d.import_busybox("bb");
    d.incus_ok(&["launch", "bb", "c1"]);
    let pid = d.pid();
    let file = sparse_file(d.root.path());

    // A missing instance: refused before the body is read, so curl sends none of it.
    let base = reset_peak_rss(pid);
    let (code, sent) = push_files_api(&d, "missing", &file, "/big");
    let grew = status_kib(pid, "VmHWM:").saturating_sub(base);
    eprintln!("push to a missing instance: {code}, {sent} bytes sent, peak RSS +{grew} KiB");
    assert_eq!(code, 404);
    assert!(
        sent < 64 << 20,
        "{sent} bytes of the body were taken before the 404"
    );
    assert!(grew < PUSH_RSS_BOUND_KIB, "peak RSS grew {grew} KiB");

    // The files API (pylxd, older clients).
    let base = reset_peak_rss(pid);
    let (code, sent) = push_files_api(&d, "c1", &file, "/big");
    let grew = status_kib(pid, "VmHWM:").saturating_sub(base);
    eprintln!("600 MiB push through the files API: {code}, peak RSS {base} KiB +{grew} KiB");
    assert_eq!(code, 200);
    assert_eq!(sent, 600 << 20);
    assert!(
        grew < PUSH_RSS_BOUND_KIB,
        "peak RSS grew {grew} KiB over {base} KiB"
    );
    let size = d.incus_ok(&["exec", "c1", "--", "stat", "-c", "%s", "/big"]);
    assert_eq!(size.trim(), (600u64 << 20).to_string());
    d.incus_ok(&["exec", "c1", "--", "rm", "/big"]);

    // The incus CLI (SFTP).
    let base = reset_peak_rss(pid);
    d.incus_ok(&["file", "push", file.to_str().unwrap(), "c1/big2"]);
    let grew = status_kib(pid, "VmHWM:").saturating_sub(base);
    eprintln!("600 MiB `incus file push` (SFTP): peak RSS {base} KiB +{grew} KiB");
    assert!(
        grew < PUSH_RSS_BOUND_KIB,
        "peak RSS grew {grew} KiB over {base} KiB"
    );
    let size = d.incus_ok(&["exec", "c1", "--", "stat", "-c", "%s", "/big2"]);
    assert_eq!(size.trim(), (600u64 << 20).to_string());
    d.incus_ok(&["delete", "-f", "c1"]);
}
