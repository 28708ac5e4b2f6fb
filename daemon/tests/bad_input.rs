//! Bad input: every malformed or hostile request gets an Incus-style error with the right
//! status, nothing is written outside the state dir, and the daemon keeps serving.

mod common;

use std::path::Path;

use common::{TempDir, TestDaemon};

fn error_of(body: &str) -> (u64, String) {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["type"], "error", "{body}");
    (
        v["error_code"].as_u64().unwrap_or(0),
        v["error"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn malformed_requests_get_incus_errors() {
    let d = TestDaemon::start();
    d.import_busybox("bb");
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/1.0/instances",
            "{not json",
            400,
            "Invalid request body",
        ),
        (
            "POST",
            "/1.0/instances",
            r#"{"name":"c1","source":{"type":"image","alias":"bb"},"bogus":1}"#,
            400,
            "unknown field",
        ),
        (
            "POST",
            "/1.0/instances",
            r#"{"name":"c1","source":{"type":"image","alias":"bb"},"config":{"no.such.key":"1"}}"#,
            400,
            "Unknown configuration key",
        ),
        (
            "POST",
            "/1.0/instances",
            r#"{"name":"c1","source":{"type":"image","alias":"bb"},"config":{"limits.memory":"lots"}}"#,
            400,
            "limits.memory",
        ),
        (
            "POST",
            "/1.0/instances",
            r#"{"name":"../etc","source":{"type":"image","alias":"bb"}}"#,
            400,
            "Invalid name",
        ),
        (
            "POST",
            "/1.0/instances",
            r#"{"name":"c1","source":{"type":"image","alias":"missing"}}"#,
            404,
            "not found",
        ),
        (
            "POST",
            "/1.0/instances",
            r#"{"name":"c1","source":{"type":"image","alias":"bb"},"devices":{"x":{"type":"nic","nictype":"ipvlan"}}}"#,
            400,
            "nictype",
        ),
        ("GET", "/1.0/instances/nope", "", 404, "not found"),
        (
            "PUT",
            "/1.0/instances/nope/state",
            r#"{"action":"start"}"#,
            404,
            "not found",
        ),
        (
            "POST",
            "/1.0/profiles",
            r#"{"name":"a/b"}"#,
            400,
            "Invalid name",
        ),
        (
            "PUT",
            "/1.0",
            r#"{"config":{"core.bogus":"1"}}"#,
            400,
            "Unknown configuration key",
        ),
        (
            "PUT",
            "/1.0",
            r#"{"config":{"core.https_address":"256.1.1.1:1"}}"#,
            400,
            "listen",
        ),
        ("GET", "/1.0/no/such/endpoint", "", 404, "not found"),
        (
            "DELETE",
            "/1.0/profiles/default",
            "",
            400,
            "cannot be deleted",
        ),
        (
            "GET",
            "/1.0/instances/x/logs/..%2f..%2fcairn.db",
            "",
            404,
            "",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let (code, text) = d.http(method, path, (!body.is_empty()).then_some(body.as_bytes()));
        assert_eq!(code, *status, "{method} {path} {body}: {text}");
        let (error_code, msg) = error_of(&text);
        assert_eq!(error_code, *status as u64, "{text}");
        assert!(
            msg.to_lowercase().contains(&needle.to_lowercase()),
            "{method} {path}: {msg:?} lacks {needle:?}"
        );
    }

    // An oversized JSON body is refused without being read whole.
    let big = vec![b'x'; 8 << 20];
    let (code, text) = d.http("POST", "/1.0/profiles", Some(&big));
    assert_eq!(code, 413, "{text}");

    // Wrong state transitions.
    d.incus_ok(&["init", "bb", "st"]);
    assert!(d
        .incus_err(&["stop", "st"])
        .to_lowercase()
        .contains("already stopped"));
    d.incus_ok(&["start", "st"]);
    assert!(d
        .incus_err(&["start", "st"])
        .to_lowercase()
        .contains("already running"));
    assert!(d
        .incus_err(&["delete", "st"])
        .to_lowercase()
        .contains("running"));
    d.incus_ok(&["delete", "--force", "st"]);

    // Still serving, nothing lost.
    assert!(d
        .incus_ok(&["image", "list", "--format", "csv"])
        .contains("bb,"));
}

/// Writes a gzip tarball with raw entry names (the tar crate's builder refuses hostile ones).
fn raw_tarball(path: &Path, entries: &[(&str, u8, &str, &[u8])]) {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let put = |h: &mut [u8; 512], off: usize, s: &str| {
            h[off..off + s.len()].copy_from_slice(s.as_bytes())
        };
        put(&mut h, 100, "0000755\0");
        put(&mut h, 108, "0000000\0");
        put(&mut h, 116, "0000000\0");
        put(&mut h, 124, &format!("{:011o}\0", data.len()));
        put(&mut h, 136, "00000000000\0");
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        put(&mut h, 257, "ustar\0");
        put(&mut h, 263, "00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        put(&mut h, 148, &format!("{sum:06o}\0 "));
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &out).unwrap();
    gz.finish().unwrap();
}

/// A tar entry as written raw: name, type flag, link target, contents.
type RawEntry = (String, u8, String, Vec<u8>);

#[test]
fn hostile_image_tarballs_are_refused_and_write_nothing_outside() {
    let d = TestDaemon::start();
    let tmp = TempDir::new("cairn-hostile");
    let meta: &[u8] = b"architecture: x86_64\ncreation_date: 1\n";
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let victim_s = victim.to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<RawEntry>)> = vec![
        (
            "absolute path",
            vec![
                ("metadata.yaml".into(), b'0', "".into(), meta.to_vec()),
                ("rootfs/".into(), b'5', "".into(), vec![]),
                (format!("{victim_s}/abs"), b'0', "".into(), b"x".to_vec()),
            ],
        ),
        (
            "dot-dot",
            vec![
                ("metadata.yaml".into(), b'0', "".into(), meta.to_vec()),
                ("rootfs/".into(), b'5', "".into(), vec![]),
                (
                    "rootfs/../../../../../../../../tmp/dotdot".into(),
                    b'0',
                    "".into(),
                    b"x".to_vec(),
                ),
            ],
        ),
        (
            "symlink escape",
            vec![
                ("metadata.yaml".into(), b'0', "".into(), meta.to_vec()),
                ("rootfs/".into(), b'5', "".into(), vec![]),
                ("rootfs/evil".into(), b'2', victim_s.clone(), vec![]),
                ("rootfs/evil/pwned".into(), b'0', "".into(), b"x".to_vec()),
            ],
        ),
        (
            "device node",
            vec![
                ("metadata.yaml".into(), b'0', "".into(), meta.to_vec()),
                ("rootfs/".into(), b'5', "".into(), vec![]),
                ("rootfs/dev/sda".into(), b'4', "".into(), vec![]),
            ],
        ),
        (
            "no metadata",
            vec![("rootfs/".into(), b'5', "".into(), vec![])],
        ),
    ];
    for (what, entries) in &cases {
        let path = tmp.path().join("bad.tar.gz");
        let refs: Vec<(&str, u8, &str, &[u8])> = entries
            .iter()
            .map(|(n, k, l, data)| (n.as_str(), *k, l.as_str(), data.as_slice()))
            .collect();
        raw_tarball(&path, &refs);
        let err = d.incus_err(&["image", "import", path.to_str().unwrap(), "--alias", "bad"]);
        assert!(!err.is_empty(), "{what}: refused with a message");
        assert_eq!(
            std::fs::read_dir(&victim).unwrap().count(),
            0,
            "{what}: wrote outside"
        );
    }
    assert!(!Path::new("/tmp/dotdot").exists());

    // A corrupt stream. (Decompression bombs are refused by the unpacker's byte limit while
    // streaming; its unit tests run them against small limits.)
    let path = tmp.path().join("corrupt.tar.gz");
    std::fs::write(&path, b"\x1f\x8b\x08\x00garbage").unwrap();
    d.incus_err(&["image", "import", path.to_str().unwrap()]);

    // After all that the daemon still serves and holds no image.
    assert_eq!(d.incus_ok(&["image", "list", "--format", "csv"]).trim(), "");
    let leftovers: Vec<_> = std::fs::read_dir(d.state.join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "upload leftovers: {leftovers:?}");
}
