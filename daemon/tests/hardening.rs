//! Hardening scenarios (issue 18): state files no other local user can read, untrusted
//! HTTPS clients that cannot hold the daemon's connections or memory, file pushes streamed
//! into the instance, and TLS 1.3 unless TLS 1.2 is asked for.
//!
//! These run a real cairnd as root and use `setpriv`, `openssl` and `curl`; a missing
//! privilege or tool fails the test, it never passes silently.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

/// Asserts that `nobody` can read no file under the state dir, and no readable file holds
/// any of `secrets`; returns how many files were checked.
fn assert_nothing_readable_by_nobody(d: &TestDaemon, secrets: &[String]) -> usize {
    let files = files_under(&d.state);
    let mut readable = Vec::new();
    for f in &files {
        if let Some(data) = read_as_nobody(f) {
            for s in secrets {
                assert!(
                    !contains(&data, s.as_bytes()),
                    "{f:?} is readable by nobody and holds a trust token's secret"
                );
            }
            readable.push(f.clone());
        }
    }
    assert!(
        readable.is_empty(),
        "files under the state dir readable by nobody: {readable:?}"
    );
    files.len()
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
    let checked = assert_nothing_readable_by_nobody(&d, &secrets);
    eprintln!("{checked} files under the state dir, none readable by nobody");

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
    for name in SECRET_FILES {
        assert_eq!(mode(&d.state.join(name)), 0o600, "{name} after a restart");
    }
    assert_nothing_readable_by_nobody(&d, &secrets);
}
