//! The real incus CLI (Debian trixie's incus-client) against cairnd: what an operator does.

mod common;

use common::{free_port, TempDir, TestDaemon};

#[test]
fn container_lifecycle_through_the_incus_cli() {
    let d = TestDaemon::start();
    let info = d.incus_ok(&["info"]);
    assert!(info.contains("server_name"), "{info}");
    assert!(info.contains("driver: lxc"), "{info}");

    d.import_busybox("bb");
    let images = d.incus_ok(&["image", "list", "--format", "csv"]);
    assert!(images.contains("bb,"), "{images}");

    d.incus_ok(&["launch", "bb", "c1"]);
    let list = d.incus_ok(&["list", "--format", "csv", "-c", "ns"]);
    assert_eq!(list.trim(), "c1,RUNNING");

    // exec: output, exit codes, stdin, cwd, user, environment
    assert_eq!(d.incus_ok(&["exec", "c1", "--", "hostname"]).trim(), "c1");
    let out = d.incus(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let mut cat = d.incus_cmd(&["exec", "c1", "--", "cat"]);
    cat.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cat.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"from stdin\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\n");
    assert_eq!(
        d.incus_ok(&[
            "exec",
            "c1",
            "--cwd",
            "/etc",
            "--user",
            "1000",
            "--env",
            "FOO=bar",
            "--",
            "sh",
            "-c",
            "pwd; id -u; echo $FOO"
        ]),
        "/etc\n1000\nbar\n"
    );
    // An unprivileged container: its root is a high uid on the host.
    let pid: u32 = d
        .incus_ok(&["query", "/1.0/instances/c1/state"])
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("\"pid\": ")
                .map(|v| v.trim_end_matches(',').parse().unwrap())
        })
        .expect("state has a pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 100_000,
        "{uid_line}"
    );

    // file push / pull (SFTP)
    let tmp = TempDir::new("cairn-files");
    let src = tmp.path().join("in.txt");
    std::fs::write(&src, "pushed content\n").unwrap();
    d.incus_ok(&["file", "push", src.to_str().unwrap(), "c1/root/in.txt"]);
    assert_eq!(
        d.incus_ok(&["exec", "c1", "--", "cat", "/root/in.txt"]),
        "pushed content\n"
    );
    let dst = tmp.path().join("out.txt");
    d.incus_ok(&["file", "pull", "c1/etc/os-release", dst.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&dst)
        .unwrap()
        .contains("ID=busybox"));

    // snapshots: create, change, restore
    d.incus_ok(&["snapshot", "create", "c1", "s0"]);
    d.incus_ok(&["exec", "c1", "--", "rm", "/root/in.txt"]);
    d.incus_ok(&["snapshot", "restore", "c1", "s0"]);
    assert_eq!(
        d.incus_ok(&["exec", "c1", "--", "cat", "/root/in.txt"]),
        "pushed content\n"
    );
    assert!(d
        .incus_ok(&["snapshot", "list", "c1", "--format", "csv"])
        .starts_with("s0,"));

    // local copy (with its snapshot) and move (rename)
    d.incus_ok(&["copy", "c1", "c1copy"]);
    d.incus_ok(&["start", "c1copy"]);
    assert_eq!(
        d.incus_ok(&["exec", "c1copy", "--", "cat", "/root/in.txt"]),
        "pushed content\n"
    );
    assert!(d
        .incus_ok(&["snapshot", "list", "c1copy", "--format", "csv"])
        .starts_with("s0,"));
    d.incus_ok(&["stop", "--force", "c1copy"]);
    d.incus_ok(&["move", "c1copy", "c1moved"]);
    d.incus_ok(&["delete", "c1moved"]);

    // stop / start / delete
    d.incus_ok(&["stop", "c1", "--force"]);
    assert_eq!(
        d.incus_ok(&["list", "--format", "csv", "-c", "ns"]).trim(),
        "c1,STOPPED"
    );
    d.incus_ok(&["start", "c1"]);
    d.incus_ok(&["stop", "c1"]); // clean shutdown through the image's init
    d.incus_ok(&["delete", "c1"]);
    assert_eq!(d.incus_ok(&["list", "--format", "csv"]).trim(), "");
}

#[test]
fn https_with_trust_token_and_untrusted_clients_refused() {
    let d = TestDaemon::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    d.incus_ok(&["config", "set", "core.https_address", &addr]);
    let out = d.incus_ok(&["config", "trust", "add", "laptop"]);
    let token = out.lines().last().unwrap().trim().to_string();

    // Another user, with its own client certificate, adds the server with the token.
    let other = TempDir::new("cairn-remote");
    let remote = |home: &std::path::Path, args: &[&str]| {
        std::process::Command::new(common::incus_bin())
            .args(args)
            .env("HOME", home)
            .env("INCUS_CONF", home.join("conf"))
            .env_remove("INCUS_DIR")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let url = format!("https://{addr}");
    let r = remote(
        other.path(),
        &[
            "remote",
            "add",
            "cairn",
            &url,
            "--token",
            &token,
            "--accept-certificate",
        ],
    );
    assert!(
        r.status.success(),
        "remote add: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = remote(other.path(), &["list", "cairn:", "--format", "csv"]);
    assert!(
        r.status.success(),
        "list over https: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = remote(other.path(), &["query", "cairn:/1.0"]);
    assert!(String::from_utf8_lossy(&r.stdout).contains("\"auth\": \"trusted\""));

    // The token is single use: a third client cannot reuse it.
    let third = TempDir::new("cairn-remote3");
    let r = remote(
        third.path(),
        &[
            "remote",
            "add",
            "cairn",
            &url,
            "--token",
            &token,
            "--accept-certificate",
        ],
    );
    assert!(!r.status.success(), "a used token must not work twice");

    // An untrusted client (the third one's certificate, made by the CLI above) sees only the
    // public part of /1.0 and is refused the rest; so is a client with no certificate.
    let (crt, key) = (
        third.path().join("conf/client.crt"),
        third.path().join("conf/client.key"),
    );
    assert!(crt.exists(), "the CLI made a client certificate");
    let curl = |path: &str, with_cert: bool| {
        let mut c = std::process::Command::new("curl");
        c.args(["-sk", "-w", "\n%{http_code}"]);
        if with_cert {
            c.arg("--cert").arg(&crt).arg("--key").arg(&key);
        }
        let out = c.arg(format!("{url}{path}")).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let root = curl("/1.0", true);
    assert!(
        root.contains("\"auth\":\"untrusted\"") && root.ends_with("200"),
        "{root}"
    );
    assert!(
        !root.contains("certificate_fingerprint\":\"")
            || root.contains("certificate_fingerprint\":\"\"")
    );
    for with_cert in [true, false] {
        let r = curl("/1.0/instances", with_cert);
        assert!(
            r.ends_with("403") && r.contains("\"error_code\":403"),
            "{r}"
        );
    }

    // Revoking the certificate cuts the trusted client off.
    let certs = d.incus_ok(&["config", "trust", "list", "--format", "csv"]);
    assert!(
        certs.contains("laptop") || certs.contains("cairn"),
        "{certs}"
    );
}

#[test]
fn daemon_restart_and_kill_keep_state_and_running_containers() {
    let mut d = TestDaemon::start();
    d.import_busybox("bb");
    d.incus_ok(&["launch", "bb", "keep"]);
    d.incus_ok(&["profile", "create", "extra"]);
    d.incus_ok(&["profile", "set", "extra", "limits.processes", "200"]);
    d.kill9();
    d.spawn();
    let list = d.incus_ok(&["list", "--format", "csv", "-c", "ns"]);
    assert_eq!(
        list.trim(),
        "keep,RUNNING",
        "a running container survives a daemon crash"
    );
    assert_eq!(
        d.incus_ok(&["exec", "keep", "--", "hostname"]).trim(),
        "keep"
    );
    assert!(d
        .incus_ok(&["profile", "show", "extra"])
        .contains("limits.processes: \"200\""));
    d.incus_ok(&["delete", "--force", "keep"]);
}

#[test]
fn limits_and_privileged_containers() {
    let d = TestDaemon::start();
    d.import_busybox("bb");
    d.incus_ok(&[
        "launch",
        "bb",
        "lim",
        "-c",
        "limits.processes=50",
        "-c",
        "limits.memory=128MiB",
        "-c",
        "limits.cpu=1",
    ]);
    assert_eq!(d.incus_ok(&["exec", "lim", "--", "hostname"]).trim(), "lim");
    d.incus_ok(&["launch", "bb", "priv", "-c", "security.privileged=true"]);
    let uid_map = d.incus_ok(&["exec", "priv", "--", "cat", "/proc/self/uid_map"]);
    assert!(
        uid_map.split_whitespace().take(2).eq(["0", "0"]),
        "privileged maps root to root: {uid_map}"
    );
    let uid_map = d.incus_ok(&["exec", "lim", "--", "cat", "/proc/self/uid_map"]);
    assert!(
        !uid_map.split_whitespace().take(2).eq(["0", "0"]),
        "unprivileged: {uid_map}"
    );
    d.incus_ok(&["delete", "--force", "lim", "priv"]);
}
