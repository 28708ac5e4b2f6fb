use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_init::control::{Control, ServiceStatus, StatusBoard};
use cairn_init::shutdown::Action;

use super::*;

fn paths(root: &Path) -> OsPaths {
    let p = OsPaths {
        run: root.join("run"),
        log: root.join("log"),
        init_socket: root.join("run/init.sock"),
    };
    std::fs::create_dir_all(&p.run).unwrap();
    std::fs::create_dir_all(&p.log).unwrap();
    p
}

#[tokio::test]
async fn without_the_init_socket_the_files_answer() {
    let t = tempfile::tempdir().unwrap();
    let p = paths(t.path());
    assert!(
        services(&p).await.unwrap().is_empty(),
        "no cairn-init: no services"
    );
    std::fs::write(
        p.run.join("services.json"),
        r#"[{"name":"cairnd","state":"running","pid":42,"failures":0,"log":"/var/log/cairn/cairnd.log"},{"name":"lxcfs","state":"waiting","pid":null,"failures":3,"log":"x"}]"#,
    )
    .unwrap();
    assert_eq!(services(&p).await.unwrap().len(), 2);
    assert_eq!(service(&p, "lxcfs").await.unwrap().failures, 3);
    assert!(matches!(
        service(&p, "nope").await,
        Err(OsError::NoService(_))
    ));

    let long: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(p.log.join("cairnd.log"), &long).unwrap();
    let t = service_log(&p, "cairnd", 100).await.unwrap();
    assert!(t.starts_with("line ") && t.ends_with("line 999\n"), "{t}");
    assert!(service_log(&p, "../../etc/passwd", 100).await.is_err());
    assert!(service_log(&p, "nope", 100).await.is_err());

    std::fs::write(p.log.join("boots"), "boot 1\nboot 2\n").unwrap();
    assert_eq!(boots(&p).await.unwrap(), vec!["boot 1", "boot 2"]);
}

#[tokio::test]
async fn power_is_refused_off_the_appliance() {
    let t = tempfile::tempdir().unwrap();
    assert!(matches!(
        power(&paths(t.path()), PowerAction::Reboot).await,
        Err(OsError::NotAppliance)
    ));
}

/// cairn-init's real D-Bus server on a temporary socket, over a log directory of its own,
/// whose power actions are only recorded.
fn start_init(p: &OsPaths, init_logs: &Path) -> Arc<Mutex<Vec<Action>>> {
    let actions = Arc::new(Mutex::new(Vec::new()));
    let recorded = actions.clone();
    let board = StatusBoard::default();
    board.publish(vec![
        ServiceStatus {
            name: "cairnd".into(),
            state: "running",
            pid: Some(42),
            failures: 0,
            log: init_logs.join("cairnd.log"),
        },
        ServiceStatus {
            name: "lxcfs".into(),
            state: "waiting",
            pid: None,
            failures: 3,
            log: init_logs.join("lxcfs.log"),
        },
    ]);
    cairn_init::control::spawn(
        Control {
            board,
            log_dir: init_logs.to_path_buf(),
            boots: init_logs.join("boots"),
            power: Arc::new(move |a| recorded.lock().unwrap().push(a)),
        },
        p.init_socket.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&p.init_socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "cairn-init's socket never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    actions
}

#[tokio::test]
async fn with_the_init_socket_everything_goes_over_dbus() {
    let t = tempfile::tempdir().unwrap();
    let p = paths(t.path());
    // Files that would say otherwise: with the socket there, they are not read.
    std::fs::write(p.run.join("services.json"), "[]").unwrap();
    std::fs::write(p.log.join("boots"), "stale\n").unwrap();
    let init_logs = t.path().join("init-logs");
    std::fs::create_dir_all(&init_logs).unwrap();
    let actions = start_init(&p, &init_logs);

    let list = services(&p).await.unwrap();
    assert_eq!(
        list,
        vec![
            Service {
                name: "cairnd".into(),
                state: "running".into(),
                pid: Some(42),
                failures: 0,
                log: init_logs.join("cairnd.log").display().to_string(),
            },
            Service {
                name: "lxcfs".into(),
                state: "waiting".into(),
                pid: None,
                failures: 3,
                log: init_logs.join("lxcfs.log").display().to_string(),
            },
        ]
    );
    assert_eq!(service(&p, "lxcfs").await.unwrap().failures, 3);
    assert!(matches!(
        service(&p, "nope").await,
        Err(OsError::NoService(_))
    ));

    let long: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(init_logs.join("cairnd.log"), &long).unwrap();
    let tail = service_log(&p, "cairnd", 100).await.unwrap();
    assert!(
        tail.starts_with("line ") && tail.ends_with("line 999\n"),
        "{tail}"
    );
    for bad in ["nope", "../../etc/passwd", "..", "init/../x"] {
        assert!(
            matches!(service_log(&p, bad, 100).await, Err(OsError::NoService(_))),
            "{bad:?}"
        );
    }
    // lxcfs has no log yet: a failure (500), as from the files.
    assert!(matches!(
        service_log(&p, "lxcfs", 100).await,
        Err(OsError::Io(m)) if m.contains("lxcfs.log")
    ));

    assert!(boots(&p).await.unwrap().is_empty());
    std::fs::write(init_logs.join("boots"), "boot 1\nboot 2\n").unwrap();
    assert_eq!(boots(&p).await.unwrap(), vec!["boot 1", "boot 2"]);

    power(&p, PowerAction::PowerOff).await.unwrap();
    power(&p, PowerAction::Reboot).await.unwrap();
    assert_eq!(
        *actions.lock().unwrap(),
        vec![Action::PowerOff, Action::Reboot]
    );
}

#[tokio::test]
async fn a_dead_init_socket_is_an_error_not_a_fallback() {
    let t = tempfile::tempdir().unwrap();
    let p = paths(t.path());
    std::fs::write(p.run.join("services.json"), "[]").unwrap();
    // Bound, then closed: the file stays and nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&p.init_socket).unwrap());
    let err = services(&p).await.unwrap_err();
    assert!(matches!(err, OsError::InitUnreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("init.sock"), "{err}");
}
