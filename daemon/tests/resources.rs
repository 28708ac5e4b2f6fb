//! `/1.0/resources` and `incus storage info` through the real incus CLI, compared with what
//! the host itself says: `nproc`, /proc/meminfo, statvfs of the default dir pool.

mod common;

use common::TestDaemon;

/// Go's `units.GetByteSizeStringIEC(n, 2)`, as the CLI prints sizes.
fn iec(n: u64) -> String {
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"] {
        v /= 1024.0;
        if v < 1024.0 {
            return format!("{v:.2}{unit}");
        }
    }
    format!("{v:.2}EB")
}

fn mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("reading /proc/meminfo");
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kb * 1024
}

fn nproc() -> u64 {
    let out = std::process::Command::new("nproc")
        .output()
        .expect("running nproc");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("nproc prints a number")
}

/// The number in `key: N` of `incus storage info --bytes` (YAML).
fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .and_then(|v| v.trim().trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} in:\n{text}"))
}

#[test]
fn resources_match_the_host() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/resources.rs runs cairnd, which needs root: run it as root"
    );
    let d = TestDaemon::start();
    let cpus = nproc();
    let mem = mem_total();

    // The raw API answer.
    let raw = d.incus_ok(&["query", "/1.0/resources"]);
    let res: serde_json::Value = serde_json::from_str(&raw).expect("JSON from /1.0/resources");
    assert_eq!(res["cpu"]["total"].as_u64(), Some(cpus), "{raw}");
    assert_eq!(res["memory"]["total"].as_u64(), Some(mem), "{raw}");
    let used = res["memory"]["used"].as_u64().expect("memory.used");
    assert!(used > 0 && used < mem, "memory used {used} of {mem}");
    assert!(res["cpu"]["sockets"]
        .as_array()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(
        res["gpu"]["total"].as_u64(),
        res["gpu"]["cards"].as_array().map(|c| c.len() as u64),
        "{raw}"
    );
    assert!(res["load"]["Processes"].as_u64().unwrap_or(0) > 0, "{raw}");
    assert!(!res["system"]["type"].as_str().unwrap_or("").is_empty());

    // `incus info --resources`: one thread line per online CPU, the total memory.
    let info = d.incus_ok(&["info", "--resources"]);
    println!("incus info --resources:\n{info}");
    let online = info.matches(", online: true, NUMA node: ").count() as u64;
    assert_eq!(online, cpus, "{info}");
    let total_line = format!("  Total: {}", iec(mem));
    assert!(
        info.lines().any(|l| l == total_line),
        "want {total_line:?} in:\n{info}"
    );

    // `incus storage info` on the dir pool: statvfs of its directory.
    let out = d.incus_ok(&["storage", "info", "default"]);
    println!("incus storage info default:\n{out}");
    assert!(out.contains("driver: dir"), "{out}");
    let bytes = d.incus_ok(&["storage", "info", "default", "--bytes"]);
    let st = nix::sys::statvfs::statvfs(&d.state.join("storage-pools/default"))
        .expect("statvfs of the default pool");
    let total = st.blocks() * st.fragment_size();
    let free = st.blocks_available() * st.fragment_size();
    assert_eq!(field(&bytes, "total space"), total, "{bytes}");
    let used = field(&bytes, "space used");
    let want = total - free;
    assert!(
        used.abs_diff(want) < 256 << 20,
        "space used {used}, statvfs says {want}"
    );
    assert!(used > 0, "{bytes}");

    // A target on a standalone server is refused, not ignored.
    let e = d.incus_err(&["query", "/1.0/resources?target=elsewhere"]);
    assert!(e.contains("not clustered"), "{e}");
}
