//! cairn-lab: boot Cairn nodes under QEMU.
//!
//!   cairn-lab up [--nodes N] [--detach] [--no-build]   boot N nodes (default 1); with N > 1
//!       their seeds share a cluster section and they form a cluster by themselves on the
//!       management network; prints one JSON line {"nodes":[{"name","api","token"}]} on
//!       stdout when their APIs are ready (and the cluster formed), then (unless --detach)
//!       waits and powers them off cleanly on Ctrl-C / SIGTERM
//!   cairn-lab down                                     ACPI power-off of every lab node
//!   cairn-lab bench [--rounds N] [--no-api]            boot-time benchmark vs stock systemd

use cairn_lab::node::{Node, NodeConfig};
use cairn_lab::{accel, api, bench, image, lab_dir, progress, LabError, Result};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("up") => up(&args[1..]),
        Some("down") => down(),
        Some("bench") => bench_cmd(&args[1..]),
        Some("hub") if args.len() == 2 => cairn_lab::hub::serve(std::path::Path::new(&args[1])),
        _ => {
            eprintln!("usage: cairn-lab up [--nodes N] [--detach] [--no-build] | down | bench [--rounds N] [--no-api]");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("cairn-lab: error: {e}");
        std::process::exit(1);
    }
}

fn flag_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn image_for(args: &[String]) -> Result<PathBuf> {
    let img = image::default_image();
    if args.iter().any(|a| a == "--no-build") {
        if !img.exists() {
            return Err(LabError::Other(format!(
                "no image at {} (drop --no-build)",
                img.display()
            )));
        }
        return Ok(img);
    }
    image::build()
}

fn up(args: &[String]) -> Result<()> {
    let n: usize = flag_value(args, "--nodes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let img = image_for(args)?;
    let accel = accel::detect();
    progress(&format!("accelerator: {accel:?}"));
    let lab = lab_dir();
    down_quiet();
    let cert = image::client_cert(&lab.join("client"))?;
    let wait_api = image::has_cairnd(&img);
    if !wait_api {
        progress("WARNING: the image has no cairnd; nodes will boot without an API");
    }
    let hub = start_hub(&lab)?;
    // More than one node: they form a cluster by themselves from a shared seed section.
    let secret = if n > 1 {
        Some(image::new_cluster_secret()?)
    } else {
        None
    };
    let mut nodes = Vec::new();
    for i in 1..=n {
        let name = format!("node{i}");
        let mut cfg = NodeConfig::new(&name, &img, accel);
        cfg.index = i as u8;
        cfg.mgmt_hub = Some(hub.clone());
        cfg.seed = image::seed_for_node(&cfg, &cert)?;
        if let Some(s) = &secret {
            cfg.seed = image::with_cluster(&cfg.seed, s, n, accel);
        }
        let mut node = Node::create(cfg, &lab)?;
        node.start()?;
        progress(&format!(
            "{name}: QEMU started, console log {}",
            node.serial_log().display()
        ));
        nodes.push(node);
    }
    for node in nodes.iter_mut() {
        let marker = if wait_api {
            "cairn: API ready"
        } else {
            "stage=services-started"
        };
        let line = node.wait_for(marker, Duration::from_secs(600))?;
        progress(&format!("{}: {} after {:.1}s", node.name(), marker, line.t));
    }
    // Tokens after the cluster formed: a joining node's certificate becomes the cluster's,
    // and a token names the certificate the client must find.
    if let (true, Some(first)) = (wait_api && n > 1, nodes.first()) {
        let members = api::wait_cluster(&cert, &first.api_url(), n, Duration::from_secs(300))?;
        progress(&format!("cluster formed: {} Online", members.join(", ")));
    }
    let mut out = Vec::new();
    for node in nodes.iter_mut() {
        let token = if wait_api {
            let trusted = api::wait_trusted(&cert, &node.api_url(), Duration::from_secs(30));
            // A member that just joined may answer 503 while the cluster promotes it (a
            // membership change under TCG takes seconds): ask again for a while.
            let got = trusted.and_then(|_| {
                api::trust_token_retrying(
                    &cert,
                    &node.api_url(),
                    "operator",
                    Duration::from_secs(60),
                )
            });
            match got {
                Ok(t) => t,
                Err(e) => {
                    progress(&format!(
                        "{}: could not get a trust token: {e}",
                        node.name()
                    ));
                    String::new()
                }
            }
        } else {
            String::new()
        };
        out.push(serde_json::json!({"name": node.name(), "api": node.api_url(), "token": token}));
    }
    println!("{}", serde_json::json!({ "nodes": out }));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if args.iter().any(|a| a == "--detach") {
        for node in nodes {
            node.detach();
        }
        progress("nodes left running; `cairn-lab down` powers them off");
        return Ok(());
    }
    progress("running; Ctrl-C powers the nodes off");
    wait_for_interrupt();
    for node in nodes.iter_mut() {
        progress(&format!("{}: ACPI power-off", node.name()));
        match node.shutdown(Duration::from_secs(90)) {
            Ok(d) => progress(&format!(
                "{}: off after {:.1}s",
                node.name(),
                d.as_secs_f64()
            )),
            Err(e) => progress(&format!("{}: {e}", node.name())),
        }
    }
    stop_hub();
    Ok(())
}

/// Starts the management L2 hub as its own process (it outlives `up --detach`).
fn start_hub(lab: &std::path::Path) -> Result<PathBuf> {
    let dir = lab.join("hub");
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::Other(format!("creating {}: {e}", dir.display())))?;
    let socket = dir.join("mgmt-hub.sock");
    let _ = std::fs::remove_file(&socket);
    let exe =
        std::env::current_exe().map_err(|e| LabError::Other(format!("finding cairn-lab: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("hub")
        .arg(&socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .map_err(|e| LabError::Other(format!("starting the hub: {e}")))?;
    std::fs::write(dir.join("qemu.pid"), child.id().to_string()).ok();
    for _ in 0..100 {
        if socket.exists() {
            return Ok(socket);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(LabError::Other("the management hub did not start".into()))
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_interrupt() {
    // SAFETY: plain libc signal-set calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

/// Lab nodes left running (their QEMU pid files under the lab directory).
fn running_nodes() -> Vec<(String, PathBuf, i32)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(lab_dir()).into_iter().flatten().flatten() {
        let dir = e.path();
        let Ok(pid) = std::fs::read_to_string(dir.join("qemu.pid")) else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } == 0 {
            v.push((e.file_name().to_string_lossy().into_owned(), dir, pid));
        }
    }
    v
}

fn stop_hub() {
    let pidfile = lab_dir().join("hub/qemu.pid");
    if let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        // SAFETY: the pid is the hub we started (from its pid file).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let _ = std::fs::remove_file(pidfile);
}

fn down_quiet() {
    for (name, dir, pid) in running_nodes().into_iter().filter(|(n, _, _)| n != "hub") {
        progress(&format!(
            "{name}: still running from an earlier `up`: powering it off"
        ));
        power_off(&name, &dir, pid);
    }
    stop_hub();
}

fn power_off(name: &str, dir: &std::path::Path, pid: i32) {
    let sent = cairn_lab::qmp::Qmp::connect(name, &dir.join("qmp.sock"))
        .and_then(|mut q| q.execute("system_powerdown", serde_json::Value::Null))
        .is_ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(if sent { 90 } else { 0 });
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: the pid is the QEMU we started (from its pid file).
    if unsafe { libc::kill(pid, 0) } == 0 {
        progress(&format!("{name}: did not power off in time: killing QEMU"));
        unsafe { libc::kill(pid, libc::SIGKILL) };
    } else {
        progress(&format!("{name}: powered off"));
    }
    let _ = std::fs::remove_file(dir.join("qemu.pid"));
}

fn down() -> Result<()> {
    let nodes = running_nodes();
    if nodes.is_empty() {
        progress("no lab nodes running");
    }
    for (name, dir, pid) in nodes {
        if name != "hub" {
            power_off(&name, &dir, pid);
        }
    }
    stop_hub();
    Ok(())
}

fn bench_cmd(args: &[String]) -> Result<()> {
    let rounds: usize = flag_value(args, "--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let img = image_for(args)?;
    let accel = accel::detect();
    let cert = image::client_cert(&lab_dir().join("client"))?;
    let wait_api = image::has_cairnd(&img) && !args.iter().any(|a| a == "--no-api");
    let report = bench::run(&img, accel, &cert, rounds, wait_api)?;
    println!("{report}");
    Ok(())
}
