//! Configuration keys cannot write raw LXC configuration, and multi-line cloud-init data
//! reaches the container's NoCloud seed: the real incus CLI and raw requests against cairnd,
//! with real containers.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestDaemon;

/// The hardening issue's key: a newline, then a liblxc hook.
const HOOK_KEY: &str = "environment.PATH\nlxc.hook.pre-start";

/// These tests run containers: without root or the tools they would prove nothing.
fn require_root_and_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "config_keys tests need root: they start LXC containers"
    );
    for tool in ["curl", "lxc-stop"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        assert!(found, "config_keys tests need {tool} on PATH");
    }
}

/// A host file the hook would create if it ever ran.
struct Marker(PathBuf);

impl Marker {
    fn new(d: &TestDaemon) -> Marker {
        let m = Marker(d.root.path().join("hook-ran"));
        let _ = std::fs::remove_file(&m.0);
        m
    }
    fn hook(&self) -> String {
        format!("/bin/sh -c \"id > {}\"", self.0.display())
    }
    fn assert_absent(&self, d: &TestDaemon) {
        assert!(
            !self.0.exists(),
            "the smuggled hook ran on the host: {:?}\n--- cairnd log ---\n{}",
            std::fs::read_to_string(&self.0),
            d.log()
        );
    }
}

fn error_of(body: &str) -> (u64, String) {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["type"], "error", "{body}");
    (
        v["error_code"].as_u64().unwrap_or(0),
        v["error"].as_str().unwrap_or("").to_string(),
    )
}

/// A request that must be refused with 400 and an error naming the key, escaped.
fn assert_refused(d: &TestDaemon, method: &str, path: &str, body: &serde_json::Value, key: &str) {
    let (code, text) = d.http(method, path, Some(body.to_string().as_bytes()));
    assert_eq!(code, 400, "{method} {path}: {text}");
    let (error_code, msg) = error_of(&text);
    assert_eq!(error_code, 400, "{text}");
    let shown = format!("{key:?}");
    assert!(
        msg.contains(&shown),
        "{method} {path}: error {msg:?} does not name {shown}"
    );
    assert!(!msg.contains('\n'), "{msg:?}");
}

#[test]
fn a_newline_in_a_key_is_refused_everywhere_and_no_hook_runs() {
    require_root_and_tools();
    let d = TestDaemon::start();
    d.import_busybox("bb");
    let marker = Marker::new(&d);

    // The exploit itself: create and start in one request.
    let create = serde_json::json!({
        "name": "c1",
        "source": {"type": "image", "alias": "bb"},
        "config": {HOOK_KEY: marker.hook()},
        "start": true,
    });
    assert_refused(&d, "POST", "/1.0/instances", &create, HOOK_KEY);
    let (code, _) = d.http("GET", "/1.0/instances/c1", None);
    assert_eq!(code, 404, "the refused instance was created");

    // The other ways in: instance PUT and PATCH, profiles, devices.
    d.incus_ok(&["init", "bb", "c2"]);
    let inst = "/1.0/instances/c2";
    let (_, current) = d.http("GET", inst, None);
    let current: serde_json::Value = serde_json::from_str(&current).unwrap();
    let current = &current["metadata"];
    // What `incus config edit` sends: the writable fields.
    let mut put = serde_json::json!({
        "config": current["config"],
        "devices": current["devices"],
        "profiles": current["profiles"],
        "description": current["description"],
    });
    put["config"][HOOK_KEY] = marker.hook().into();
    assert_refused(&d, "PUT", inst, &put, HOOK_KEY);
    let patch = serde_json::json!({"config": {HOOK_KEY: marker.hook()}});
    assert_refused(&d, "PATCH", inst, &patch, HOOK_KEY);
    let user_key = "user.x\nlxc.hook.start";
    let patch = serde_json::json!({"config": {user_key: "1"}});
    assert_refused(&d, "PATCH", inst, &patch, user_key);
    let dev_name = "d\nlxc.hook.pre-start";
    let patch = serde_json::json!({"devices": {dev_name: {"type": "none"}}});
    assert_refused(&d, "PATCH", inst, &patch, dev_name);
    let dev_key = "user.k\nlxc.hook.pre-start";
    let patch = serde_json::json!({"devices": {"d": {"type": "none", dev_key: "1"}}});
    assert_refused(&d, "PATCH", inst, &patch, dev_key);

    let profile = serde_json::json!({"name": "p1", "config": {HOOK_KEY: marker.hook()}});
    assert_refused(&d, "POST", "/1.0/profiles", &profile, HOOK_KEY);
    let (code, _) = d.http("GET", "/1.0/profiles/p1", None);
    assert_eq!(code, 404, "the refused profile was created");
    let body = serde_json::json!({"config": {HOOK_KEY: marker.hook()}, "devices": {}});
    assert_refused(&d, "PUT", "/1.0/profiles/default", &body, HOOK_KEY);
    assert_refused(&d, "PATCH", "/1.0/profiles/default", &body, HOOK_KEY);

    // incus config set / profile set send the key as the CLI got it.
    let err = d.incus_err(&["config", "set", "c2", HOOK_KEY, &marker.hook()]);
    assert!(err.contains("Invalid configuration key"), "{err}");
    let err = d.incus_err(&["profile", "set", "default", HOOK_KEY, &marker.hook()]);
    assert!(err.contains("Invalid configuration key"), "{err}");
    let patch = serde_json::json!({"config": {"environment.A=B": "x"}});
    assert_refused(&d, "PATCH", inst, &patch, "environment.A=B");

    // A value with a line break where it would be rendered is refused as well.
    let err = d.incus_err(&[
        "config",
        "set",
        "c2",
        "environment.A",
        &format!("x\nlxc.hook.pre-start = {}", marker.hook()),
    ]);
    assert!(err.contains("environment.A"), "{err}");

    // Nothing of it was stored: the instance starts clean and no hook ever ran.
    d.incus_ok(&["start", "c2"]);
    let config = d.incus_ok(&["config", "show", "c2", "--expanded"]);
    assert!(!config.contains("hook"), "{config}");
    let lxc_config = std::fs::read_to_string(d.state.join("lxc/c2/config")).unwrap();
    assert!(!lxc_config.contains("hook"), "{lxc_config}");
    std::thread::sleep(Duration::from_millis(500));
    marker.assert_absent(&d);
    d.incus_ok(&["delete", "--force", "c2"]);
}

const SEED: &str = "/var/lib/cloud/seed/nocloud-net";

fn seed_file(d: &TestDaemon, name: &str, file: &str) -> String {
    d.incus_ok(&["exec", name, "--", "cat", &format!("{SEED}/{file}")])
}

#[test]
fn multi_line_cloud_init_data_reaches_the_nocloud_seed() {
    require_root_and_tools();
    let d = TestDaemon::start();
    d.import_busybox("bb");

    // As `-c cloud-init.user-data="$(printf '#cloud-config\nfoo: bar\n')"` passes it: the
    // shell drops the final newline, the seed file ends with one (as Incus's templates).
    d.incus_ok(&[
        "launch",
        "bb",
        "c1",
        "-c",
        "cloud-init.user-data=#cloud-config\nfoo: bar",
    ]);
    let list = d.incus_ok(&["list", "--format", "csv", "-c", "ns"]);
    assert_eq!(list.trim(), "c1,RUNNING");
    assert_eq!(
        seed_file(&d, "c1", "user-data"),
        "#cloud-config\nfoo: bar\n"
    );
    assert_eq!(
        seed_file(&d, "c1", "meta-data"),
        "instance-id: c1\nlocal-hostname: c1\n\n"
    );
    assert_eq!(seed_file(&d, "c1", "vendor-data"), "#cloud-config\n{}\n");
    let net = seed_file(&d, "c1", "network-config");
    assert!(
        net.starts_with("version: 1\n") && net.contains("name: eth0"),
        "{net}"
    );
    // Regular files of the container's root, mode 0644.
    let ls = d.incus_ok(&["exec", "c1", "--", "ls", "-ln", SEED]);
    let files: Vec<Vec<&str>> = ls
        .lines()
        .filter(|l| !l.starts_with("total"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(files.len(), 4, "{ls}");
    for f in &files {
        assert_eq!((f[0], f[2], f[3]), ("-rw-r--r--", "0", "0"), "{ls}");
    }

    // The container plants symlinks at the seed's names, pointing at host paths; a new
    // value set with `incus config set` replaces them and the host files stay as they were.
    let host_file = d.root.path().join("host-file");
    std::fs::write(&host_file, "host\n").unwrap();
    let target = host_file.display().to_string();
    d.incus_ok(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        &format!("ln -sf {target} {SEED}/user-data && ln -sf {target} {SEED}/.meta-data.cairn-new"),
    ]);
    d.incus_ok(&["stop", "--force", "c1"]);
    let user_data = "#cloud-config\npackages:\n  - hello\nruncmd:\n  - [sh, -c, \"echo a = b\"]\n";
    d.incus_ok(&["config", "set", "c1", "cloud-init.user-data", user_data]);
    d.incus_ok(&["config", "set", "c1", "user.meta-data", "foo: bar\n"]);
    d.incus_ok(&["start", "c1"]);
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host\n");
    assert_eq!(seed_file(&d, "c1", "user-data"), user_data);
    assert_eq!(
        seed_file(&d, "c1", "meta-data"),
        "instance-id: c1\nlocal-hostname: c1\nfoo: bar\n"
    );
    let kind = d.incus_ok(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        &format!("test -L {SEED}/user-data && echo link || echo file"),
    ]);
    assert_eq!(kind.trim(), "file");

    // incus file pull sees the same bytes.
    let pulled = d.root.path().join("pulled-user-data");
    let src = format!("c1{SEED}/user-data");
    d.incus_ok(&["file", "pull", &src, &pulled.display().to_string()]);
    assert_eq!(std::fs::read_to_string(&pulled).unwrap(), user_data);

    // The LXC config holds none of it.
    let lxc_config = std::fs::read_to_string(d.state.join("lxc/c1/config")).unwrap();
    assert!(!lxc_config.contains("cloud-config"), "{lxc_config}");
    assert!(Path::new(&host_file).is_file());
    d.incus_ok(&["delete", "--force", "c1"]);
}
