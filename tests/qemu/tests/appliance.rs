//! The QEMU tier: boots the real appliance image. These tests are `#[ignore]`d so the fast
//! `cargo test` tier skips them; CI runs them with
//! `cargo test -p cairn-lab --test appliance --test cluster -- --ignored --test-threads=1`
//! after building the image (image/build.sh). Each test boots its own node from a qcow2
//! overlay of the image, so they never change the image itself.

mod common;

use cairn_lab::image;
use cairn_lab::node::{Node, NodeConfig};
use cairn_lab::{accel, api};
use common::{lab, wait_for_ipv4, BOOT};
use std::process::Command;
use std::time::Duration;

#[test]
#[ignore = "QEMU tier: needs the built image"]
fn fresh_node_boots_to_api_and_incus_cli_trusts_it() {
    let lab = lab("api");
    assert!(
        lab.api,
        "the image has no cairnd: build it with a cairnd binary"
    );
    let mut node = lab.node("api");
    lab.boot(&mut node);
    api::wait_trusted(&lab.cert, &node.api_url(), Duration::from_secs(30))
        .expect("the seed's client certificate is trusted");
    let token = api::trust_token(&lab.cert, &node.api_url(), "cli").expect("trust token");
    let incus = image::incus_client().expect("incus client");
    let conf = lab.dir.join("incus-config");
    let _ = std::fs::remove_dir_all(&conf);
    let run = |args: &[&str]| {
        Command::new(&incus)
            .args(args)
            .env("INCUS_CONF", &conf)
            .output()
            .expect("running incus")
    };
    let add = run(&[
        "remote",
        "add",
        "lab",
        &node.api_url(),
        "--token",
        &token,
        "--accept-certificate",
    ]);
    assert!(
        add.status.success(),
        "incus remote add: {}",
        String::from_utf8_lossy(&add.stderr)
    );
    let info = run(&["info", "lab:"]);
    assert!(
        info.status.success(),
        "incus info: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(String::from_utf8_lossy(&info.stdout).contains("api_version"));
    node.shutdown(Duration::from_secs(90)).expect("power off");
}

#[test]
#[ignore = "QEMU tier: needs the built image"]
fn root_is_read_only_and_a_flipped_byte_refuses_the_boot() {
    let lab = lab("verity");
    let mut node = lab.node("verity");
    lab.boot(&mut node);
    node.wait_for("root read-only=1", Duration::from_secs(10))
        .expect("cairn-init reports that writing to the root fails");
    node.shutdown(Duration::from_secs(90)).expect("power off");

    // A copy of the image with one byte of root slot A flipped (in its first block, which
    // the boot always reads): the initrd must refuse it.
    let copy = lab.dir.join("corrupt.raw");
    let st = Command::new("cp")
        .args(["--sparse=always", "-f"])
        .arg(&lab.image)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let (start, _) = cairn_lab::gpt_partition_range(&copy, "root-a").expect("root-a partition");
    flip_byte(&copy, start + 1024 + 17);
    let mut cfg = NodeConfig::new("verity-corrupt", &copy, accel::detect());
    cfg.seed = image::seed_for("verity-corrupt", &lab.cert).unwrap();
    let mut bad = Node::create(cfg, &lab.dir).unwrap();
    bad.start().unwrap();
    bad.wait_for("boot refused", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    bad.wait_exit(Duration::from_secs(60))
        .expect("the refused node powers off");
    assert!(
        !bad.saw("stage=init-start"),
        "PID 1 never ran from the corrupted root"
    );
    let _ = std::fs::remove_file(copy);
}

fn flip_byte(path: &std::path::Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
}

/// The value of `cairn: KEY=VALUE …` from the last console line that has it.
fn console_value(node: &mut Node, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    node.poll_console().iter().rev().find_map(|l| {
        l.text
            .split(&pat)
            .nth(1)
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
    })
}

#[test]
#[ignore = "QEMU tier: needs the built image"]
fn state_persists_across_a_reboot() {
    let lab = lab("persist");
    let mut node = lab.node("persist");
    lab.boot(&mut node);
    let machine = console_value(&mut node, "machine").expect("machine id on the console");
    if lab.api {
        let put = api::request(
            &lab.cert,
            &node.api_url(),
            "PATCH",
            "/1.0",
            Some(&serde_json::json!({"config": {"images.auto_update_interval": "13"}})),
        );
        assert!(put.is_ok(), "setting a server config key: {put:?}");
    }
    let before = node.mark();
    node.ctrl_alt_del().expect("ctrl-alt-del");
    node.wait_for_from(before, "shutdown-complete clean=1", Duration::from_secs(90))
        .expect("clean reboot");
    let marker = if lab.api {
        "cairn: API ready"
    } else {
        "stage=services-started"
    };
    // The same QEMU process boots again; wait for the second boot's markers.
    let second = node.mark();
    node.wait_for_from(second, "stage=init-start", BOOT)
        .expect("second boot");
    node.wait_for_from(second, marker, BOOT)
        .expect("second boot up");
    assert_eq!(
        console_value(&mut node, "machine").as_deref(),
        Some(machine.as_str()),
        "same machine id from /var"
    );
    node.wait_for_from(second, "data fs clean=1", Duration::from_secs(1))
        .expect("the reboot left a clean data filesystem");
    if lab.api {
        // The first healthy boot ended the boot counting; the second finds nothing to do.
        assert!(node.poll_console()[..second]
            .iter()
            .any(|l| l.text.contains("boot blessed:")));
        node.wait_for_from(second, "boot already blessed", Duration::from_secs(30))
            .expect("second boot: entry already blessed");
    }
    if lab.api {
        let v = api::request(&lab.cert, &node.api_url(), "GET", "/1.0", None).expect("GET /1.0");
        assert_eq!(v["metadata"]["config"]["images.auto_update_interval"], "13");
    }
    node.shutdown(Duration::from_secs(90)).expect("power off");
}

#[test]
#[ignore = "QEMU tier: needs the built image"]
fn acpi_power_down_is_clean_and_quick() {
    let lab = lab("acpi");
    let mut node = lab.node("acpi");
    lab.boot(&mut node);
    let took = node
        .shutdown(Duration::from_secs(60))
        .expect("ACPI power-down within 60 s");
    assert!(
        node.saw("shutdown-complete clean=1"),
        "clean unmount:\n{}",
        node.tail(20)
    );
    eprintln!("ACPI power-down took {:.1}s", took.as_secs_f64());
    lab.boot(&mut node);
    assert!(
        node.saw("data fs clean=1"),
        "the next boot finds a clean data filesystem"
    );
    node.shutdown(Duration::from_secs(60)).expect("power off");
}

#[test]
#[ignore = "QEMU tier: needs the built image"]
fn power_cut_then_healthy_boot() {
    let lab = lab("powercut");
    let mut node = lab.node("powercut");
    lab.boot(&mut node);
    // The cut comes right after the first boot's API is up: what the install wrote (seed,
    // machine id, trust) must already be on disk then.
    let machine = node
        .wait_for("cairn: machine=", Duration::from_secs(1))
        .expect("machine id on the console")
        .text;
    node.kill9();
    lab.boot(&mut node);
    assert!(
        node.saw("data: /dev/"),
        "the data partition is mounted after the power cut"
    );
    assert!(
        node.saw(&machine),
        "the machine id survives the power cut ({machine}); console:\n{}",
        node.tail(40)
    );
    assert!(
        node.saw("hostname powercut") && !node.saw("seed imported"),
        "the kept seed is read again, not imported anew; console:\n{}",
        node.tail(40)
    );
    node.shutdown(Duration::from_secs(60)).expect("power off");
}

/// The first boot makes the `default` pool ZFS on the empty data disk; a container is a
/// clone on it; snapshots, a custom volume with a quota, and a reboot that finds it all.
#[test]
#[ignore = "QEMU tier: needs the built image"]
fn launch_on_the_zfs_default_pool_and_a_volume_survives_a_reboot() {
    let lab = lab("container");
    assert!(
        lab.api,
        "the image has no cairnd: build it with a cairnd binary"
    );
    let mut node = lab.node("container");
    lab.boot(&mut node);
    api::wait_trusted(&lab.cert, &node.api_url(), Duration::from_secs(30)).expect("trusted");
    let token = api::trust_token(&lab.cert, &node.api_url(), "cli").expect("trust token");
    let run = lab.incus();
    run(&[
        "remote",
        "add",
        "lab",
        &node.api_url(),
        "--token",
        &token,
        "--accept-certificate",
    ]);
    let pools = run(&["storage", "list", "lab:", "--format", "csv"]);
    assert!(pools.contains("default,zfs"), "storage list: {pools}");
    let res = api::request(
        &lab.cert,
        &node.api_url(),
        "GET",
        "/1.0/storage-pools/default/resources",
        None,
    )
    .expect("pool resources");
    let info = run(&["storage", "info", "lab:default"]);
    println!("incus storage info lab:default:\n{info}");
    let space = &res["metadata"]["space"];
    println!(
        "default pool: {} used of {} bytes",
        space["used"], space["total"]
    );
    // The 8 GiB data disk, less what zfs keeps for itself.
    assert!(
        space["total"].as_u64().unwrap_or(0) > 6 << 30,
        "pool space: {res}"
    );

    let tarball = lab.busybox_image();
    run(&[
        "image",
        "import",
        tarball.to_str().unwrap(),
        "lab:",
        "--alias",
        "busybox",
    ]);
    // With nothing in the seed, the instances' network is a NAT bridge made at first boot,
    // and the default profile's eth0 is on it.
    let nets = run(&["network", "list", "lab:", "--format", "csv"]);
    assert!(nets.contains("cairnbr0,bridge,YES"), "network list: {nets}");
    let launch = std::time::Instant::now();
    run(&["launch", "lab:busybox", "lab:c1"]);
    println!("launch on zfs: {:.1} s", launch.elapsed().as_secs_f64());
    let addr = wait_for_ipv4(&run, "lab:c1", Duration::from_secs(90));
    println!(
        "launch -> IPv4 on cairnbr0: {:.1} s ({addr})",
        launch.elapsed().as_secs_f64()
    );
    let os = run(&["exec", "lab:c1", "--", "cat", "/etc/os-release"]);
    assert!(os.contains("ID=busybox"), "exec output: {os}");

    // A snapshot, a change, a restore: the change is gone.
    run(&["snapshot", "create", "lab:c1", "s1"]);
    run(&["exec", "lab:c1", "--", "touch", "/after-s1"]);
    run(&["stop", "--force", "lab:c1"]);
    run(&["snapshot", "restore", "lab:c1", "s1"]);
    run(&["start", "lab:c1"]);
    let ls = run(&["exec", "lab:c1", "--", "ls", "/"]);
    assert!(
        !ls.contains("after-s1"),
        "restored root still has the later file: {ls}"
    );

    // A custom volume with a quota, attached live and written.
    run(&[
        "storage",
        "volume",
        "create",
        "lab:default",
        "data",
        "size=64MiB",
    ]);
    run(&[
        "config",
        "device",
        "add",
        "lab:c1",
        "data",
        "disk",
        "pool=default",
        "source=data",
        "path=/data",
    ]);
    run(&[
        "exec",
        "lab:c1",
        "--",
        "sh",
        "-c",
        "echo hello > /data/hello",
    ]);
    let full = lab.incus_status(&[
        "exec",
        "lab:c1",
        "--",
        "dd",
        "if=/dev/urandom",
        "of=/data/big",
        "bs=1M",
        "count=100",
    ]);
    // Random data: zeros would compress to nothing (compression=on).
    assert!(!full.0, "a 100 MiB write into a 64 MiB volume succeeded");
    println!("100 MiB into a 64 MiB zfs volume: {}", full.1.trim());
    run(&["exec", "lab:c1", "--", "rm", "/data/big"]);
    // The data disk holds the pool: a second pool on it is refused.
    let taken = lab.incus_status(&[
        "storage",
        "create",
        "lab:again",
        "zfs",
        "source=/dev/nvme1n1",
    ]);
    assert!(!taken.0, "a second pool on the data disk was accepted");
    println!("second pool on the data disk: {}", taken.1.trim());

    assert!(
        taken.1.contains("not empty"),
        "the refusal should say the disk holds something: {}",
        taken.1
    );

    // A small pool filled to the end: the write fails inside the container, the pool and
    // the node keep serving, and deleting frees it.
    run(&["storage", "create", "lab:small", "zfs", "size=256MiB"]);
    run(&["launch", "lab:busybox", "lab:f1", "--storage", "small"]);
    let fill = lab.incus_status(&[
        "exec",
        "lab:f1",
        "--",
        "dd",
        "if=/dev/urandom",
        "of=/fill",
        "bs=1M",
        "count=400",
    ]);
    assert!(!fill.0, "400 MiB fitted into a 256 MiB pool");
    println!(
        "filling a 256 MiB zfs pool: {}",
        fill.1.lines().next().unwrap_or_default()
    );
    let after = run(&["exec", "lab:c1", "--", "cat", "/data/hello"]);
    assert_eq!(
        after.trim(),
        "hello",
        "the default pool after the other one filled"
    );
    // The full pool grows (its loop file, then `zpool online -e`). zfs keeps at least
    // 128 MiB of a pool back (its slop space), so the totals are below the file sizes.
    let total = |lab_run: &dyn Fn(&[&str]) -> String| {
        let res = lab_run(&["query", "lab:/1.0/storage-pools/small/resources"]);
        let res: serde_json::Value = serde_json::from_str(&res).expect("resources JSON");
        res["space"]["total"].as_u64().unwrap_or(0)
    };
    let before = total(&run);
    run(&["storage", "set", "lab:small", "size=512MiB"]);
    let after = total(&run);
    println!("small pool grown from 256MiB to 512MiB: {before} -> {after} bytes usable");
    assert!(after >= before + (200 << 20), "{before} -> {after}");
    run(&[
        "exec",
        "lab:f1",
        "--",
        "dd",
        "if=/dev/urandom",
        "of=/more",
        "bs=1M",
        "count=50",
    ]);
    run(&["delete", "--force", "lab:f1"]);
    run(&["storage", "delete", "lab:small"]);

    let before = node.mark();
    node.ctrl_alt_del().expect("ctrl-alt-del");
    node.wait_for_from(
        before,
        "shutdown-complete clean=1",
        Duration::from_secs(120),
    )
    .expect("clean reboot");
    let second = node.mark();
    node.wait_for_from(second, "cairn: API ready", BOOT)
        .expect("second boot up");
    api::wait_trusted(&lab.cert, &node.api_url(), Duration::from_secs(60)).expect("trusted");
    let pools = run(&["storage", "list", "lab:", "--format", "csv"]);
    assert!(
        pools.contains("default,zfs") && pools.contains("CREATED"),
        "after reboot: {pools}"
    );
    // c1 was running at the shutdown: cairnd starts it again once its networks are up.
    let start = std::time::Instant::now();
    while !run(&["list", "lab:c1", "-c", "s", "--format", "csv"]).contains("RUNNING") {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "c1 was not started again after the reboot"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let hello = run(&["exec", "lab:c1", "--", "cat", "/data/hello"]);
    assert_eq!(hello.trim(), "hello", "the volume's file after the reboot");
    let snaps = run(&["snapshot", "list", "lab:c1", "--format", "csv"]);
    assert!(snaps.contains("s1"), "snapshots after the reboot: {snaps}");

    run(&["delete", "--force", "lab:c1"]);
    run(&["storage", "volume", "delete", "lab:default", "data"]);
    run(&["image", "delete", "lab:busybox"]);
    node.shutdown(Duration::from_secs(90)).expect("power off");
}

#[test]
#[ignore = "QEMU tier: needs the built image"]
fn operator_reads_services_and_logs_and_powers_off_through_the_os_api() {
    let lab = lab("os-api");
    assert!(
        lab.api,
        "the image has no cairnd: build it with a cairnd binary"
    );
    let mut node = lab.node("os-api");
    lab.boot(&mut node);
    let url = node.api_url();
    let services = api::request(&lab.cert, &url, "GET", "/os/1.0/services", None)
        .expect("GET /os/1.0/services");
    let list = services["metadata"].as_array().cloned().unwrap_or_default();
    let cairnd = list.iter().find(|s| s["name"] == "cairnd");
    assert_eq!(
        cairnd.map(|s| s["state"].clone()),
        Some(serde_json::json!("running")),
        "services: {services}"
    );
    // "cairnd ready" follows the API by the network restore (about a second under TCG).
    let start = std::time::Instant::now();
    loop {
        let log =
            api::get_text(&lab.cert, &url, "/os/1.0/services/cairnd/log").expect("cairnd log");
        if log.contains("cairnd ready") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "cairnd's log: {log}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // cairn-init refuses names it does not supervise (404), path tricks included.
    for bad in ["nope", "..%2Finit"] {
        let path = format!("/os/1.0/services/{bad}/log");
        assert!(
            api::get_text(&lab.cert, &url, &path).is_err(),
            "GET {path} should fail"
        );
    }
    let own = api::get_text(&lab.cert, &url, "/os/1.0/services/init/log").expect("init log");
    assert!(own.contains("API ready"), "cairn-init's log: {own}");
    let boots = api::request(&lab.cert, &url, "GET", "/os/1.0/boots", None).expect("boots");
    assert!(
        boots["metadata"].to_string().contains("machine="),
        "boots: {boots}"
    );

    let off = api::request(
        &lab.cert,
        &url,
        "POST",
        "/os/1.0/system",
        Some(&serde_json::json!({"action": "poweroff"})),
    );
    assert!(off.is_ok(), "POST /os/1.0/system: {off:?}");
    node.wait_exit(Duration::from_secs(90))
        .expect("the node powers off when asked through the API");
    // All of it went through cairn-init's D-Bus interface, not the old signal contract.
    assert!(
        node.saw("D-Bus interface org.cairn.Init1 on /run/cairn/init.sock"),
        "{}",
        node.tail(40)
    );
    assert!(
        node.saw("power-off requested over D-Bus"),
        "{}",
        node.tail(40)
    );
    assert!(node.saw("shutdown-complete clean=1"), "{}", node.tail(20));
}
