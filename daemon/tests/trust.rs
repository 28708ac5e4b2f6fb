//! The trust boundary with the real incus CLI and curl: revoked trust and join tokens
//! refused (standalone and on every member of a three-member cluster), restricted
//! certificates refused until projects exist, and client certificates outside their
//! validity period refused with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{free_port, TempDir, TestDaemon};
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A client of its own (its own config dir and certificate), as another user's incus.
struct Client {
    home: TempDir,
}

impl Client {
    fn new() -> Client {
        Client {
            home: TempDir::new("cairn-trust-client"),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("60")
            .arg(common::incus_bin())
            .args(args)
            .env("HOME", self.home.path())
            .env("INCUS_CONF", self.home.path().join("conf"))
            .env_remove("INCUS_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("running incus")
    }

    /// `incus remote add r https://addr --token TOKEN`.
    fn remote_add(&self, addr: &str, token: &str) -> Output {
        let url = format!("https://{addr}");
        self.run(&[
            "remote",
            "add",
            "r",
            &url,
            "--token",
            token,
            "--accept-certificate",
        ])
    }
}

/// The token `incus config trust add` / `incus cluster add` prints last.
fn last_line(out: &str) -> String {
    out.lines().last().unwrap_or("").trim().to_string()
}

/// A client certificate valid from `not_before` to `not_after` (Unix seconds), written as
/// PEM files; also its DER in base64, as the API takes it.
fn client_cert(
    dir: &Path,
    name: &str,
    not_before: u64,
    not_after: u64,
) -> (PathBuf, PathBuf, String) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    params.not_before = epoch + Duration::from_secs(not_before);
    params.not_after = epoch + Duration::from_secs(not_after);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (crt, keyf) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.der());
    (crt, keyf, b64)
}

/// Unix seconds at midnight UTC on January 1st of `year`.
fn ymd(year: i32) -> u64 {
    chrono::NaiveDate::from_ymd_opt(year, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp() as u64
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// curl over HTTPS with a client certificate: (status, body).
fn curl_tls(
    url: &str,
    cert: &(PathBuf, PathBuf),
    method: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sk", "-w", "\n%{http_code}", "-X", method])
        .arg("--cert")
        .arg(&cert.0)
        .arg("--key")
        .arg(&cert.1);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c.arg(url).output().expect("running curl");
    assert!(out.status.success(), "curl {url}: {}", text(&out.stderr));
    let all = text(&out.stdout);
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The error of an Incus error envelope, checking its shape and code.
fn envelope_error(body: &str, code: u16) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["type"], "error", "{body}");
    assert_eq!(v["error_code"], code, "{body}");
    v["error"].as_str().unwrap_or("").to_string()
}

fn standalone_with_https() -> (TestDaemon, String) {
    let d = TestDaemon::start();
    let addr = format!("127.0.0.1:{}", free_port());
    d.incus_ok(&["config", "set", "core.https_address", &addr]);
    (d, addr)
}

#[test]
fn revoked_and_used_certificate_tokens_are_refused() {
    let (d, addr) = standalone_with_https();

    // Revoked: gone from the list, and refused when presented.
    let token = last_line(&d.incus_ok(&["config", "trust", "add", "laptop"]));
    let out = d.incus_ok(&["config", "trust", "revoke-token", "laptop"]);
    assert!(
        out.contains("Certificate add token for laptop deleted"),
        "{out}"
    );
    let list = d.incus_ok(&["config", "trust", "list-tokens", "--format", "csv"]);
    assert_eq!(list.trim(), "", "{list}");
    let laptop = Client::new();
    let r = laptop.remote_add(&addr, &token);
    assert!(!r.status.success(), "a revoked token let a client in");
    let e = text(&r.stderr);
    assert!(e.contains("No matching certificate add operation"), "{e}");
    let certs = d.incus_ok(&["config", "trust", "list", "--format", "csv"]);
    assert!(!certs.contains("laptop"), "{certs}");

    // Used: works once, then never again.
    let token = last_line(&d.incus_ok(&["config", "trust", "add", "laptop"]));
    let r = laptop.remote_add(&addr, &token);
    assert!(r.status.success(), "remote add: {}", text(&r.stderr));
    let r = Client::new().remote_add(&addr, &token);
    assert!(!r.status.success(), "a used token let a second client in");
    assert!(d
        .incus_ok(&["config", "trust", "list", "--format", "csv"])
        .contains("laptop"));
}

#[test]
fn restricted_certificates_are_refused_until_projects_exist() {
    let (d, addr) = standalone_with_https();
    let dir = TempDir::new("cairn-trust-restricted");
    let (crt, key, b64) = client_cert(dir.path(), "alice", ymd(2024), ymd(2040));

    // Adding a restricted certificate, and minting a restricted token: 400, and nothing made.
    let body = format!(
        r#"{{"type":"client","name":"alice","certificate":"{b64}","restricted":true,"projects":["default"]}}"#
    );
    let (code, resp) = d.http("POST", "/1.0/certificates", Some(body.as_bytes()));
    assert_eq!(code, 400, "{resp}");
    let e = envelope_error(&resp, 400);
    assert!(e.contains("Restricted certificates need projects"), "{e}");
    let body =
        r#"{"type":"client","name":"bob","token":true,"restricted":true,"projects":["default"]}"#;
    let (code, resp) = d.http("POST", "/1.0/certificates", Some(body.as_bytes()));
    assert_eq!(code, 400, "{resp}");
    assert!(envelope_error(&resp, 400).contains("Restricted certificates need projects"));
    let tokens = d.incus_ok(&["config", "trust", "list-tokens", "--format", "csv"]);
    assert_eq!(tokens.trim(), "", "{tokens}");
    let certs = d.incus_ok(&["config", "trust", "list", "--format", "csv"]);
    assert_eq!(certs.trim(), "", "{certs}");

    // Trusted unrestricted; the admin may not restrict it either (yet).
    let body = format!(r#"{{"type":"client","name":"alice","certificate":"{b64}"}}"#);
    let (code, resp) = d.http("POST", "/1.0/certificates", Some(body.as_bytes()));
    assert_eq!(code, 201, "{resp}");
    let fp = last_line(&d.incus_ok(&["config", "trust", "list", "--format", "csv", "-c", "f"]));
    let path = format!("/1.0/certificates/{fp}");
    for method in ["PATCH", "PUT"] {
        let body = br#"{"restricted":true,"projects":["default"]}"#;
        let (code, resp) = d.http(method, &path, Some(body));
        assert_eq!(code, 400, "{method}: {resp}");
    }

    // The certificate itself cannot change its own restrictions, even towards less.
    let url = format!("https://{addr}{path}");
    let me = (crt, key);
    let (code, resp) = curl_tls(&format!("https://{addr}/1.0/instances"), &me, "GET", None);
    assert_eq!(code, 200, "{resp}");
    for (method, body) in [
        ("PATCH", r#"{"restricted":true}"#),
        ("PATCH", r#"{"projects":["default"]}"#),
        (
            "PUT",
            r#"{"name":"alice","restricted":true,"projects":["default"]}"#,
        ),
    ] {
        let (code, resp) = curl_tls(&url, &me, method, Some(body));
        assert_eq!(code, 403, "{method} {body}: {resp}");
        let e = envelope_error(&resp, 403);
        assert!(e.contains("cannot change its own restrictions"), "{e}");
    }
    // Other fields of its own entry it may still edit.
    let (code, resp) = curl_tls(&url, &me, "PATCH", Some(r#"{"description":"mine"}"#));
    assert_eq!(code, 200, "{resp}");

    // The redeemer of a token gets what the admin issued: its name and restrictions, not
    // the ones in its request.
    let token = last_line(&d.incus_ok(&["config", "trust", "add", "laptop"]));
    let (lcrt, lkey, lb64) = client_cert(dir.path(), "laptop", ymd(2024), ymd(2040));
    let body = format!(
        r#"{{"type":"client","name":"evil","certificate":"{lb64}","trust_token":"{token}","restricted":false,"projects":["other"]}}"#
    );
    let (code, resp) = curl_tls(
        &format!("https://{addr}/1.0/certificates"),
        &(lcrt, lkey),
        "POST",
        Some(&body),
    );
    assert_eq!(code, 201, "{resp}");
    let (_, resp) = d.http("GET", "/1.0/certificates?recursion=1", None);
    let v: Value = serde_json::from_str(&resp).unwrap();
    let laptop = v["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] != "alice")
        .cloned()
        .unwrap_or_else(|| panic!("no laptop certificate in {resp}"));
    assert_eq!(laptop["name"], "laptop", "{laptop}");
    assert_eq!(laptop["restricted"], false, "{laptop}");
    assert_eq!(laptop["projects"], serde_json::json!([]), "{laptop}");
}

#[test]
fn certificates_outside_their_validity_period_are_refused() {
    let (mut d, addr) = standalone_with_https();
    let dir = TempDir::new("cairn-trust-period");
    let (ecrt, ekey, eb64) = client_cert(dir.path(), "old", ymd(2020), ymd(2021));
    let (fcrt, fkey, fb64) = client_cert(dir.path(), "future", ymd(2035), ymd(2036));
    let (rcrt, rkey, _) = client_cert(dir.path(), "restricted", ymd(2024), ymd(2040));

    // Adding them is refused, as Incus's certificatesPost does.
    for (b64, why) in [(&eb64, "is expired"), (&fb64, "isn't valid yet")] {
        let body = format!(r#"{{"type":"client","name":"x","certificate":"{b64}"}}"#);
        let (code, resp) = d.http("POST", "/1.0/certificates", Some(body.as_bytes()));
        assert_eq!(code, 400, "{resp}");
        let e = envelope_error(&resp, 400);
        assert!(e.contains(why), "{e}");
    }
    // So is redeeming a token with one, and the token is not spent by that.
    let token = last_line(&d.incus_ok(&["config", "trust", "add", "old"]));
    let body = format!(r#"{{"type":"client","trust_token":"{token}"}}"#);
    let certs_url = format!("https://{addr}/1.0/certificates");
    let old = (ecrt.clone(), ekey.clone());
    let (code, resp) = curl_tls(&certs_url, &old, "POST", Some(&body));
    assert_eq!(code, 400, "{resp}");
    assert!(envelope_error(&resp, 400).contains("is expired"));
    let tokens = d.incus_ok(&["config", "trust", "list-tokens", "--format", "csv"]);
    assert!(tokens.contains("old"), "{tokens}");

    // Already in the trust store (from before these checks, or put there by hand): refused
    // per request, with the reason, but still shown the public /1.0.
    d.kill9();
    let db = rusqlite::Connection::open(d.state.join("cairn.db")).unwrap();
    for (name, crt, restricted) in [
        ("old", &ecrt, false),
        ("future", &fcrt, false),
        ("restricted", &rcrt, true),
    ] {
        let pem = std::fs::read_to_string(crt).unwrap();
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let fp = cairnd::tls::cert_fingerprint(&der);
        let rec = serde_json::json!({
            "fingerprint": fp, "name": name, "cert_type": "client", "certificate": pem,
            "restricted": restricted, "projects": ["default"], "description": "",
        });
        db.execute(
            "INSERT INTO certificates (fingerprint, data) VALUES (?1, ?2)",
            rusqlite::params![fp, rec.to_string()],
        )
        .unwrap();
    }
    drop(db);
    d.spawn();
    let instances = format!("https://{addr}/1.0/instances");
    for (cert, why) in [
        ((ecrt, ekey), "Certificate is expired"),
        ((fcrt, fkey), "Certificate is not valid yet"),
        // Stored restricted before restrictions were refused: no admin until projects
        // exist to restrict it to.
        ((rcrt, rkey), "Restricted certificates need projects"),
    ] {
        let (code, resp) = curl_tls(&instances, &cert, "GET", None);
        assert_eq!(code, 403, "{resp}");
        let e = envelope_error(&resp, 403);
        assert!(e.contains(why), "{e}");
        let (code, resp) = curl_tls(&format!("https://{addr}/1.0"), &cert, "GET", None);
        assert_eq!(code, 200, "{resp}");
        assert!(resp.contains("\"auth\":\"untrusted\""), "{resp}");
    }

    // A certificate that expires while trusted: served until then, refused after.
    let now = unix_now();
    let (scrt, skey, sb64) = client_cert(dir.path(), "short", now - 86_400, now + 3);
    let body = format!(r#"{{"type":"client","name":"short","certificate":"{sb64}"}}"#);
    let (code, resp) = d.http("POST", "/1.0/certificates", Some(body.as_bytes()));
    assert_eq!(code, 201, "{resp}");
    let short = (scrt, skey);
    let (code, resp) = curl_tls(&instances, &short, "GET", None);
    assert_eq!(code, 200, "{resp}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, resp) = curl_tls(&instances, &short, "GET", None);
        if code == 403 {
            assert!(envelope_error(&resp, 403).contains("Certificate is expired"));
            break;
        }
        assert_eq!(code, 200, "{resp}");
        assert!(Instant::now() < deadline, "still trusted after it expired");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One member of the test cluster: a cairnd on 127.0.0.<n>.
struct Member {
    name: String,
    address: String,
    d: TestDaemon,
}

impl Member {
    fn run(&self, args: &[&str]) -> Output {
        self.d
            .incus_cmd_timeout(120, args)
            .output()
            .expect("running incus")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "incus {args:?} on {} failed: {}\n--- cairnd log tail ---\n{}",
            self.name,
            text(&out.stderr),
            tail(&self.d.log(), 30)
        );
        text(&out.stdout)
    }

    fn preseed_join(&self, token: &str) -> Output {
        let yaml = format!(
            "cluster:\n  enabled: true\n  server_name: {}\n  server_address: {}\n  cluster_token: {}\n",
            self.name, self.address, token
        );
        let mut child = self
            .d
            .incus_cmd_timeout(120, &["admin", "init", "--preseed"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running incus");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port free on 127.0.0.1-3.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
            .iter()
            .all(|a| std::net::TcpListener::bind((*a, port)).is_ok())
        {
            return port;
        }
    }
}

#[test]
fn revoked_tokens_are_refused_on_every_member_of_a_cluster() {
    let port = cluster_port();
    let mut m: Vec<Member> = (1..=3)
        .map(|i| Member {
            name: format!("node{i}"),
            address: format!("127.0.0.{i}:{port}"),
            d: TestDaemon::start(),
        })
        .collect();
    let (n1, n2, n3) = (&m[0], &m[1], &m[2]);
    for x in &m {
        x.ok(&["config", "set", "core.https_address", &x.address]);
    }
    n1.ok(&["cluster", "enable", "node1"]);
    let token = last_line(&n1.ok(&["cluster", "add", "node2"]));
    let out = n2.preseed_join(&token);
    assert!(out.status.success(), "node2 joining: {}", text(&out.stderr));

    // A join token issued on node1, revoked through node2 (which does not hold its
    // operation), is refused; the list on every member agrees it is gone.
    let token = last_line(&n1.ok(&["cluster", "add", "node3"]));
    let listed = n2.ok(&["cluster", "list-tokens", "--format", "csv"]);
    assert!(
        listed.contains("node3"),
        "node2 lists node1's token: {listed}"
    );
    let out = n2.ok(&["cluster", "revoke-token", "node3"]);
    assert!(out.contains("deleted"), "{out}");
    for x in [n1, n2] {
        let listed = x.ok(&["cluster", "list-tokens", "--format", "csv"]);
        assert!(!listed.contains("node3"), "{}: {listed}", x.name);
    }
    let out = n3.preseed_join(&token);
    assert!(!out.status.success(), "a revoked join token let node3 in");
    let e = text(&out.stderr);
    assert!(e.contains("join token"), "{e}");
    let members = n1.ok(&["cluster", "list", "--format", "csv"]);
    assert!(!members.contains("node3"), "{members}");

    // A certificate add token issued on node1 and revoked through node2 is refused by
    // both members.
    let token = last_line(&n1.ok(&["config", "trust", "add", "laptop"]));
    let out = n2.ok(&["config", "trust", "revoke-token", "laptop"]);
    assert!(
        out.contains("Certificate add token for laptop deleted"),
        "{out}"
    );
    for x in [n1, n2] {
        let r = Client::new().remote_add(&x.address, &token);
        assert!(
            !r.status.success(),
            "a revoked token let a client in through {}",
            x.name
        );
        let listed = x.ok(&["config", "trust", "list-tokens", "--format", "csv"]);
        assert!(!listed.contains("laptop"), "{}: {listed}", x.name);
    }

    // Single use across members: redeemed through node2, refused through node1.
    let token = last_line(&n1.ok(&["config", "trust", "add", "laptop"]));
    let r = Client::new().remote_add(&n2.address, &token);
    assert!(
        r.status.success(),
        "remote add via node2: {}",
        text(&r.stderr)
    );
    let r = Client::new().remote_add(&n1.address, &token);
    assert!(!r.status.success(), "a used token worked again on node1");
    let listed = n1.ok(&["config", "trust", "list-tokens", "--format", "csv"]);
    assert!(!listed.contains("laptop"), "{listed}");

    // A fresh join token for node3 still works: the refusal above was the revocation.
    let token = last_line(&n2.ok(&["cluster", "add", "node3"]));
    let out = n3.preseed_join(&token);
    assert!(
        out.status.success(),
        "node3 joining: {}\n{}",
        text(&out.stderr),
        tail(&n1.d.log(), 30)
    );

    // The member that issued a token is gone: the others still revoke it, from its record.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = n1.ok(&["cluster", "list", "--format", "json"]);
        let v: Value = serde_json::from_str(&list).unwrap();
        let voters = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                m["roles"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r == "database"))
            })
            .count();
        if voters == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node3 never became a voter: {list}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let token = last_line(&n1.ok(&["config", "trust", "add", "late"]));
    m[0].d.kill9();
    let (n2, n3) = (&m[1], &m[2]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Until the two left elect a leader, the revoke cannot be written.
        let out = n2.run(&["config", "trust", "revoke-token", "late"]);
        if out.status.success() {
            assert!(
                text(&out.stdout).contains("deleted"),
                "{}",
                text(&out.stdout)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revoke-token with node1 down: {}\n{}",
            text(&out.stderr),
            tail(&n2.d.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for x in [n2, n3] {
        let r = Client::new().remote_add(&x.address, &token);
        assert!(
            !r.status.success(),
            "a token revoked while its issuer was down let a client in through {}",
            x.name
        );
        let listed = x.ok(&["config", "trust", "list-tokens", "--format", "csv"]);
        assert!(!listed.contains("late"), "{}: {listed}", x.name);
    }
}
