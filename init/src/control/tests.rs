use super::*;
use std::os::unix::fs::MetadataExt;

/// A control over a temporary log directory whose power actions are only recorded.
fn fixture() -> (Control, Arc<Mutex<Vec<Action>>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let actions = Arc::new(Mutex::new(Vec::new()));
    let recorded = actions.clone();
    let board = StatusBoard::default();
    board.publish(vec![
        ServiceStatus {
            name: "cairnd".into(),
            state: "running",
            pid: Some(42),
            failures: 0,
            log: dir.path().join("cairnd.log"),
        },
        ServiceStatus {
            name: "lxcfs".into(),
            state: "waiting",
            pid: None,
            failures: 3,
            log: dir.path().join("lxcfs.log"),
        },
    ]);
    let ctl = Control {
        board,
        log_dir: dir.path().to_path_buf(),
        boots: dir.path().join("boots"),
        power: Arc::new(move |a| recorded.lock().expect("lock").push(a)),
    };
    (ctl, actions, dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A client connection to the interface served on the other end of a socket pair.
async fn connect_pair(ctl: Control) -> zbus::Connection {
    let (server, client) = tokio::net::UnixStream::pair().expect("socket pair");
    tokio::spawn(serve_peer(Arc::new(ctl), server, zbus::Guid::generate()));
    zbus::connection::Builder::unix_stream(client)
        .p2p()
        .build()
        .await
        .expect("client handshake")
}

async fn call<B>(conn: &zbus::Connection, method: &str, body: &B) -> zbus::Result<zbus::Message>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    conn.call_method(None::<&str>, OBJECT_PATH, Some(INTERFACE), method, body)
        .await
}

#[test]
fn lists_services() {
    let (ctl, _, _dir) = fixture();
    runtime().block_on(async {
        let conn = connect_pair(ctl).await;
        let reply = call(&conn, "Services", &()).await.expect("Services");
        let rows: Vec<ServiceRow> = reply.body().deserialize().expect("a(ssius)");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, "cairnd");
        assert_eq!((rows[0].1.as_str(), rows[0].2), ("running", 42));
        assert_eq!(
            (rows[1].1.as_str(), rows[1].2, rows[1].3),
            ("waiting", 0, 3)
        );
        assert!(rows[1].4.ends_with("/lxcfs.log"), "{}", rows[1].4);
    });
}

#[test]
fn tails_a_service_log_and_our_own() {
    let (ctl, _, dir) = fixture();
    let long: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(dir.path().join("cairnd.log"), &long).expect("write log");
    std::fs::write(dir.path().join("init.log"), "init here\n").expect("write log");
    runtime().block_on(async {
        let conn = connect_pair(ctl).await;
        let reply = call(&conn, "ServiceLog", &("cairnd", 100u64))
            .await
            .expect("ServiceLog");
        let text: String = reply.body().deserialize().expect("s");
        assert!(text.len() <= 100, "{}", text.len());
        assert!(
            text.starts_with("line ") && text.ends_with("line 999\n"),
            "{text}"
        );
        let whole: String = call(&conn, "ServiceLog", &("cairnd", u64::MAX))
            .await
            .expect("ServiceLog")
            .body()
            .deserialize()
            .expect("s");
        assert_eq!(whole, long, "a short log comes whole");
        let own: String = call(&conn, "ServiceLog", &("init", 1000u64))
            .await
            .expect("ServiceLog init")
            .body()
            .deserialize()
            .expect("s");
        assert_eq!(own, "init here\n");
    });
}

#[test]
fn refuses_unknown_services_and_path_tricks() {
    let (ctl, _, dir) = fixture();
    std::fs::write(dir.path().join("secret.log"), "not a service\n").expect("write");
    runtime().block_on(async {
        let conn = connect_pair(ctl).await;
        for name in ["nope", "secret", "../secret", "/etc/passwd", "", ".hidden"] {
            match call(&conn, "ServiceLog", &(name, 100u64)).await {
                Err(zbus::Error::MethodError(err, _, _)) => {
                    assert_eq!(err.as_str(), ERROR_NO_SUCH_SERVICE, "{name:?}")
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        // A known service whose log is missing is a failure, not "no such service".
        match call(&conn, "ServiceLog", &("lxcfs", 100u64)).await {
            Err(zbus::Error::MethodError(err, Some(msg), _)) => {
                assert_eq!(err.as_str(), "org.cairn.Init1.Error.Failed");
                assert!(msg.contains("lxcfs.log"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn power_calls_reach_the_power_callback() {
    let (ctl, actions, _dir) = fixture();
    runtime().block_on(async {
        let conn = connect_pair(ctl).await;
        call(&conn, "Reboot", &()).await.expect("Reboot");
        call(&conn, "PowerOff", &()).await.expect("PowerOff");
    });
    assert_eq!(
        *actions.lock().expect("lock"),
        vec![Action::Reboot, Action::PowerOff]
    );
}

#[test]
fn boot_history_is_empty_before_the_first_boot_is_recorded() {
    let (ctl, _, dir) = fixture();
    let boots_file = ctl.boots.clone();
    runtime().block_on(async {
        let conn = connect_pair(ctl).await;
        let boots: Vec<String> = call(&conn, "Boots", &())
            .await
            .expect("Boots")
            .body()
            .deserialize()
            .expect("as");
        assert!(boots.is_empty());
        std::fs::write(&boots_file, "boot 1\nboot 2\n").expect("write");
        let boots: Vec<String> = call(&conn, "Boots", &())
            .await
            .expect("Boots")
            .body()
            .deserialize()
            .expect("as");
        assert_eq!(boots, ["boot 1", "boot 2"]);
    });
    drop(dir);
}

#[test]
fn serves_on_a_root_only_socket_and_replaces_a_stale_one() {
    let (ctl, actions, dir) = fixture();
    let socket = dir.path().join("run/init.sock");
    // A socket left by an earlier run (nobody listens on it) is replaced.
    std::fs::create_dir_all(dir.path().join("run")).expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    spawn(ctl, socket.clone());
    runtime().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match tokio::net::UnixStream::connect(&socket).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("connecting to {}: {e}", socket.display()),
            }
        };
        let mode = std::fs::metadata(&socket).expect("socket").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let conn = zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await
            .expect("handshake");
        let rows: Vec<ServiceRow> = call(&conn, "Services", &())
            .await
            .expect("Services")
            .body()
            .deserialize()
            .expect("a(ssius)");
        assert_eq!(rows.len(), 2);
        call(&conn, "PowerOff", &()).await.expect("PowerOff");
    });
    assert_eq!(*actions.lock().expect("lock"), vec![Action::PowerOff]);
}

#[test]
fn tail_starts_at_a_line_boundary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path().join("x.log");
    std::fs::write(&p, "aaaa\nbbbb\ncccc\n").expect("write");
    assert_eq!(tail(&p, 7).expect("tail"), "cccc\n");
    assert_eq!(tail(&p, 100).expect("tail"), "aaaa\nbbbb\ncccc\n");
    assert!(tail(&dir.path().join("missing"), 10).is_err());
}
