//! pylxd (PyPI) drives cairnd over HTTPS: a client certificate trusted through a trust
//! token, then create, start, exec, file push/pull, stop and delete an instance. The
//! Python side is tests/pylxd_client.py; it runs in the venv made by
//! scripts/install-deps.sh.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{free_port, TestDaemon};

const VENV_PYTHON: &str = "/var/cache/cairn/venv/bin/python";

/// The venv's python if pylxd imports there; `None` when the test should be skipped.
fn pylxd_python() -> Option<PathBuf> {
    let skip = std::env::var("CAIRN_SKIP_PYLXD").is_ok_and(|v| v == "1");
    let python = PathBuf::from(VENV_PYTHON);
    let importable = python.exists()
        && Command::new(&python)
            .args(["-c", "import pylxd"])
            .output()
            .is_ok_and(|o| o.status.success());
    match (importable, skip) {
        (true, _) => Some(python),
        (false, true) => {
            eprintln!("pylxd not installed in {VENV_PYTHON}; skipped (CAIRN_SKIP_PYLXD=1)");
            None
        }
        (false, false) => panic!(
            "pylxd is not importable by {VENV_PYTHON}: run scripts/install-deps.sh \
             (or set CAIRN_SKIP_PYLXD=1 to skip this test)"
        ),
    }
}

/// A self-signed P-384 client certificate, as `incus remote generate-certificate` makes.
fn client_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join("client.crt"), dir.join("client.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:secp384r1", "-nodes"])
        .args(["-subj", "/CN=pylxd", "-days", "1", "-keyout"])
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

#[test]
fn pylxd_over_https_with_a_trust_token() {
    let Some(python) = pylxd_python() else {
        return;
    };
    let d = TestDaemon::start();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    d.incus_ok(&["config", "set", "core.https_address", &address]);
    d.import_busybox("bb");
    let (crt, key) = client_certificate(d.root.path());

    let printed = d.incus_ok(&["config", "trust", "add", "pylxd"]);
    let token = printed
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("no token in `incus config trust add` output: {printed:?}"))
        .to_string();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pylxd_client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(format!("https://{address}"))
        .arg(&crt)
        .arg(&key)
        .arg(&token)
        .args(["bb", "py1"])
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .env("PYLXD_WARNINGS", "none")
        .env("PYTHONWARNINGS", "ignore")
        .env("HOME", &d.home)
        .output()
        .expect("running pylxd_client.py");
    assert!(
        out.status.success(),
        "pylxd_client.py failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- cairnd log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );

    // What pylxd did is visible to the incus CLI too: the certificate is trusted, and the
    // instance is gone.
    let trusted = d.incus_ok(&["config", "trust", "list", "--format", "csv"]);
    assert!(
        trusted.contains("pylxd"),
        "pylxd's certificate is not in the trust store: {trusted}"
    );
    let list = d.incus_ok(&["list", "--format", "csv", "-c", "n"]);
    assert!(
        !list.lines().any(|l| l.trim() == "py1"),
        "py1 is still listed: {list}"
    );
}
