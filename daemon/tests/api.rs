//! REST details the clients rely on: envelopes, ETag/If-Match, operations and their wait,
//! the events stream.

mod common;

use common::TestDaemon;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn sync_envelope_and_etags_guard_updates() {
    let d = TestDaemon::start();
    let (code, body) = d.http("GET", "/1.0/profiles/default", None);
    assert_eq!(code, 200);
    let v = json(&body);
    assert_eq!(v["type"], "sync");
    assert_eq!(v["error_code"], 0);
    assert_eq!(v["error"], "");
    let etag = d
        .header("/1.0/profiles/default", "etag")
        .expect("ETag on GET");

    let put = br#"{"config":{"limits.processes":"100"},"description":"d","devices":{"root":{"type":"disk","path":"/","pool":"default"}}}"#;
    let (code, body) = d.http_with(
        "PUT",
        "/1.0/profiles/default",
        Some(put),
        &["If-Match: \"0000\""],
    );
    assert_eq!(code, 412, "stale ETag refused: {body}");
    let (code, body) = d.http_with(
        "PUT",
        "/1.0/profiles/default",
        Some(put),
        &[&format!("If-Match: {etag}")],
    );
    assert_eq!(code, 200, "{body}");
    let new_etag = d.header("/1.0/profiles/default", "etag").unwrap();
    assert_ne!(etag, new_etag, "the ETag follows the content");
    let (_, body) = d.http("GET", "/1.0/profiles/default", None);
    assert_eq!(json(&body)["metadata"]["config"]["limits.processes"], "100");
}

#[test]
fn async_operations_can_be_waited_on_and_listed() {
    let d = TestDaemon::start();
    d.import_busybox("bb");
    let (code, body) = d.http(
        "POST",
        "/1.0/instances",
        Some(br#"{"name":"w1","source":{"type":"image","alias":"bb"}}"#),
    );
    assert_eq!(code, 202, "{body}");
    let v = json(&body);
    assert_eq!(v["type"], "async");
    assert_eq!(
        v["metadata"]["resources"]["instances"][0],
        "/1.0/instances/w1"
    );
    let op = v["operation"].as_str().unwrap().to_string();
    let (code, body) = d.http("GET", &format!("{op}/wait?timeout=30"), None);
    assert_eq!(code, 200);
    assert_eq!(json(&body)["metadata"]["status"], "Success", "{body}");
    let (_, body) = d.http("GET", "/1.0/operations?recursion=1", None);
    assert!(
        json(&body)["metadata"]["success"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{body}"
    );
    let (code, _) = d.http(
        "GET",
        "/1.0/operations/00000000-0000-0000-0000-000000000000",
        None,
    );
    assert_eq!(code, 404);

    // A failing operation reports its error through the operation.
    let (_, body) = d.http(
        "PUT",
        "/1.0/instances/w1/state",
        Some(br#"{"action":"stop","force":true}"#),
    );
    let op = json(&body)["operation"].as_str().unwrap().to_string();
    let (_, body) = d.http("GET", &format!("{op}/wait"), None);
    let v = json(&body);
    assert_eq!(v["metadata"]["status"], "Failure", "{body}");
    assert!(v["metadata"]["err"]
        .as_str()
        .unwrap()
        .contains("already stopped"));
}

#[test]
fn events_stream_lifecycle_and_operations() {
    let d = TestDaemon::start();
    d.import_busybox("bb");
    let mut mon = d
        .incus_cmd(&["monitor", "--type=lifecycle", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    d.incus_ok(&["init", "bb", "ev1"]);
    d.incus_ok(&["delete", "ev1"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = mon.kill();
    let out = mon.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("instance-created"), "{text}");
    assert!(text.contains("instance-deleted"), "{text}");
}
