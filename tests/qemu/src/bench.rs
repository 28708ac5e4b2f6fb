//! Boot benchmark: boots the appliance and, in the same run, the same image (same firmware,
//! boot loader, kernel, initrd and root) with stock systemd as PID 1, alternately, and
//! reports stage times from QEMU start (for the appliance's first boot, which installs, and
//! for its next, regular boot), sizes and memory in use after boot.

use crate::accel::Accel;
use crate::image::ClientCert;
use crate::node::{Node, NodeConfig};
use crate::{gpt_esp_offset, io_err, progress, LabError, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Stage markers of a Cairn boot, in order.
pub const STAGES: &[&str] = &[
    "initrd-start",
    "init-start",
    "data-mounted",
    "network",
    "services-started",
    "api-ready",
];

/// Units of the image's packages that cannot start on the read-only root with no data
/// partition (they crash-loop and multi-user.target is never reached): masked in the
/// reference boot, which therefore does less work than the appliance (no OVS, no lxcfs).
const REFERENCE_MASKS: [&str; 10] = [
    "openvswitch-switch.service",
    "ovsdb-server.service",
    "ovs-vswitchd.service",
    "ovn-central.service",
    "ovn-host.service",
    "ovn-controller.service",
    "ovn-northd.service",
    "ovn-ovsdb-server-nb.service",
    "ovn-ovsdb-server-sb.service",
    "lxcfs.service",
];

/// A finished boot: (stage, seconds since QEMU start) pairs.
#[derive(Debug, Clone, Default)]
pub struct BootTimes {
    pub stages: Vec<(String, f64)>,
    pub kernel_start: Option<f64>,
    pub mem_used_mib: Option<f64>,
}

impl BootTimes {
    pub fn get(&self, stage: &str) -> Option<f64> {
        self.stages
            .iter()
            .find(|(s, _)| s == stage)
            .map(|(_, t)| *t)
    }
}

/// Parses `cairn: stage=NAME t=SECS` (t = guest uptime).
pub fn parse_stage(line: &str) -> Option<(String, f64)> {
    let rest = line.split("cairn: stage=").nth(1)?;
    let mut it = rest.split_whitespace();
    let name = it.next()?.to_string();
    let t = it.find_map(|w| w.strip_prefix("t="))?.parse().ok()?;
    Some((name, t))
}

/// Boots a fresh appliance node twice: the first boot installs (creates the data
/// partition, the daemon's certificate and database), the second is a regular boot of the
/// same disk. Returns both.
fn cairn_boots(
    image: &Path,
    accel: Accel,
    cert: &ClientCert,
    lab: &Path,
    wait_api: bool,
) -> Result<(BootTimes, BootTimes)> {
    let mut cfg = NodeConfig::new("bench-cairn", image, accel);
    cfg.seed = crate::image::seed_for("bench-cairn", cert)?;
    let mut node = Node::create(cfg, lab)?;
    node.start()?;
    let first = cairn_times(&mut node, wait_api)?;
    node.shutdown(Duration::from_secs(60))?;
    node.start()?;
    let again = cairn_times(&mut node, wait_api)?;
    let _ = node.shutdown(Duration::from_secs(60));
    Ok((first, again))
}

/// Waits for the end of a boot of `node` and reads its stage times from the console.
fn cairn_times(node: &mut Node, wait_api: bool) -> Result<BootTimes> {
    let last = if wait_api {
        "cairn: API ready"
    } else {
        "stage=services-started"
    };
    node.wait_for(last, Duration::from_secs(300))?;
    let _ = node.wait_for("cairn: mem used=", Duration::from_secs(30));
    // OVS starts once the background module job is done, after the API: wait for it too,
    // so the report shows when the node is complete.
    let _ = node.wait_for("stage=services-started", Duration::from_secs(90));
    let mut bt = BootTimes::default();
    for l in node.poll_console().to_vec() {
        if let Some((stage, guest_t)) = parse_stage(&l.text) {
            if stage == "initrd-start" {
                bt.kernel_start = Some(l.t - guest_t);
            }
            bt.stages.push((stage, l.t));
        }
        if let Some(m) = l.text.split("cairn: mem used=").nth(1) {
            bt.mem_used_mib = m.split_whitespace().next().and_then(|v| v.parse().ok());
        }
    }
    Ok(bt)
}

/// Makes a copy of the image whose default boot entry runs the same UKI with systemd as
/// PID 1 (a type 1 loader entry with `efi` and `options`).
fn reference_image(image: &Path, lab: &Path) -> Result<PathBuf> {
    let copy = lab.join("reference.raw");
    let st = Command::new("cp")
        .args(["--sparse=always", "-f"])
        .arg(image)
        .arg(&copy)
        .status()
        .map_err(io_err("cp"))?;
    if !st.success() {
        return Err(LabError::Other("copying the image".into()));
    }
    let offset = gpt_esp_offset(&copy)?;
    let target = format!("{}@@{offset}", copy.display());
    let out = Command::new("mdir")
        .args(["-b", "-i", &target, "::/EFI/Linux"])
        .output()
        .map_err(io_err("mdir"))?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let uki = listing
        .lines()
        .map(|l| l.trim().trim_start_matches("::"))
        .find(|l| l.ends_with(".efi"))
        .ok_or_else(|| LabError::Other(format!("no UKI in the ESP: {listing}")))?
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let roothash = uki
        .trim_end_matches(".efi")
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .split('+')
        .next()
        .unwrap_or_default()
        .to_string();
    let entry = format!(
        "title reference systemd\nefi /EFI/Linux/{uki}\noptions roothash={roothash} cairn.slot=a console=ttyS0,115200 quiet loglevel=3 init=/usr/lib/systemd/systemd systemd.unit=multi-user.target {{MASKS}} systemd.log_target=console systemd.log_level=info systemd.show_status=0\n"
    );
    let entry = entry.replace(
        "{MASKS}",
        &REFERENCE_MASKS
            .map(|u| format!("systemd.mask={u}"))
            .join(" "),
    );
    let dir = lab.join("reference-esp");
    std::fs::create_dir_all(&dir).map_err(io_err("reference-esp"))?;
    std::fs::write(dir.join("reference.conf"), entry).map_err(io_err("reference.conf"))?;
    std::fs::write(
        dir.join("loader.conf"),
        "timeout 0\ndefault reference.conf\n",
    )
    .map_err(io_err("loader.conf"))?;
    for (src, dst) in [
        ("reference.conf", "::/loader/entries/reference.conf"),
        ("loader.conf", "::/loader/loader.conf"),
    ] {
        let _ = Command::new("mmd")
            .args(["-i", &target, "::/loader/entries"])
            .output();
        let st = Command::new("mcopy")
            .args(["-o", "-i", &target])
            .arg(dir.join(src))
            .arg(dst)
            .status()
            .map_err(io_err("mcopy"))?;
        if !st.success() {
            return Err(LabError::Other(format!("mcopy {src}")));
        }
    }
    Ok(copy)
}

fn reference_boot(image: &Path, accel: Accel, lab: &Path) -> Result<BootTimes> {
    let cfg = NodeConfig::new("bench-systemd", image, accel);
    let mut node = Node::create(cfg, lab)?;
    node.start()?;
    let reached = node.wait_for("Startup finished in", Duration::from_secs(400))?;
    let mut bt = BootTimes::default();
    for l in node.poll_console().to_vec() {
        if let Some((stage, guest_t)) = parse_stage(&l.text) {
            if stage == "initrd-start" {
                bt.kernel_start = Some(l.t - guest_t);
            }
            bt.stages.push((stage, l.t));
        }
    }
    bt.stages.push(("multi-user".into(), reached.t));
    node.kill9();
    Ok(bt)
}

fn size_of(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .map(|m| (m.len(), m.blocks() * 512))
        .unwrap_or((0, 0))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// Runs `rounds` interleaved pairs of boots and prints a report; returns it as JSON.
pub fn run(
    image: &Path,
    accel: Accel,
    cert: &ClientCert,
    rounds: usize,
    wait_api: bool,
) -> Result<Value> {
    let lab = crate::lab_dir().join("bench");
    std::fs::create_dir_all(&lab).map_err(io_err("bench dir"))?;
    let reference = reference_image(image, &lab)?;
    let mut cairn = Vec::new();
    let mut regular = Vec::new();
    let mut stock = Vec::new();
    for round in 1..=rounds {
        progress(&format!(
            "bench round {round}/{rounds}: cairn-init first boot, then a regular boot"
        ));
        let (first, again) = cairn_boots(image, accel, cert, &lab, wait_api)?;
        cairn.push(first);
        regular.push(again);
        progress(&format!(
            "bench round {round}/{rounds}: reference systemd boot"
        ));
        stock.push(reference_boot(&reference, accel, &lab)?);
    }
    let _ = std::fs::remove_file(&reference);
    let last = if wait_api {
        "api-ready"
    } else {
        "services-started"
    };
    let med = |runs: &[BootTimes], stage: &str| {
        median(runs.iter().filter_map(|b| b.get(stage)).collect())
    };
    let kstart = |runs: &[BootTimes]| median(runs.iter().filter_map(|b| b.kernel_start).collect());
    let cairn_total = med(&cairn, last);
    let regular_total = med(&regular, last);
    let stock_total = med(&stock, "multi-user");
    let ratio = |a: Option<f64>| match (a, stock_total) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };

    let out_dir = image.parent().unwrap_or(Path::new("."));
    let (raw_len, raw_alloc) = size_of(image);
    let (_, root_alloc) = size_of(&out_dir.join("cairn.root-a.raw"));
    let (initrd, _) = size_of(&out_dir.join("cairn.initrd"));
    let (uki, _) = size_of(&out_dir.join("cairn.efi"));
    let compressed = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -q -T0 -3 -c '{}' | wc -c", image.display()))
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        });

    let mut stages = serde_json::Map::new();
    let mut regular_stages = serde_json::Map::new();
    for s in STAGES {
        stages.insert((*s).into(), json!(med(&cairn, s)));
        regular_stages.insert((*s).into(), json!(med(&regular, s)));
    }
    let report = json!({
        "accel": format!("{accel:?}"),
        "rounds": rounds,
        "cairn": {"kernel_start_s": kstart(&cairn), "stages_s": stages, "total_s": cairn_total,
                   "total_stage": last,
                   "mem_used_mib": median(cairn.iter().filter_map(|b| b.mem_used_mib).collect())},
        "cairn_regular_boot": {"kernel_start_s": kstart(&regular), "stages_s": regular_stages,
                   "total_s": regular_total, "total_stage": last,
                   "mem_used_mib": median(regular.iter().filter_map(|b| b.mem_used_mib).collect())},
        "reference_systemd": {"kernel_start_s": kstart(&stock), "multi_user_s": stock_total},
        "ratio": ratio(cairn_total),
        "ratio_regular_boot": ratio(regular_total),
        "sizes_bytes": {"disk_image": raw_len, "disk_image_allocated": raw_alloc,
                         "disk_image_zstd": compressed, "root_slot_fs": root_alloc,
                         "initrd": initrd, "uki": uki},
    });
    eprintln!("\nboot times (median of {rounds}, seconds from QEMU start, {accel:?}):");
    eprintln!("  (first = first boot of a fresh disk, which creates the data partition; again = the next boot)");
    eprintln!(
        "  firmware → kernel        first {:>6.2}   again {:>6.2}   systemd {:>6.2}",
        kstart(&cairn).unwrap_or(f64::NAN),
        kstart(&regular).unwrap_or(f64::NAN),
        kstart(&stock).unwrap_or(f64::NAN)
    );
    for s in STAGES {
        eprintln!(
            "  {s:<24} first {:>6.2}   again {:>6.2}",
            med(&cairn, s).unwrap_or(f64::NAN),
            med(&regular, s).unwrap_or(f64::NAN)
        );
    }
    eprintln!(
        "  reference multi-user     systemd {:>6.2}",
        stock_total.unwrap_or(f64::NAN)
    );
    if let (Some(a), Some(b)) = (ratio(cairn_total), ratio(regular_total)) {
        eprintln!(
            "  ratio cairn {last} / systemd multi-user: first boot {a:.2}, regular boot {b:.2}"
        );
    }
    eprintln!("sizes: image {} MiB ({} MiB allocated, {} MiB zstd), root slot fs {} MiB, initrd {:.1} MiB, UKI {:.1} MiB",
        raw_len >> 20, raw_alloc >> 20, compressed.unwrap_or(0) >> 20, root_alloc >> 20, initrd as f64 / 1048576.0, uki as f64 / 1048576.0);
    if let Some(m) = report["cairn"]["mem_used_mib"].as_f64() {
        eprintln!("memory in use after boot: {m:.0} MiB");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stage_markers() {
        assert_eq!(
            parse_stage("cairn: stage=init-start t=4.390"),
            Some(("init-start".into(), 4.39))
        );
        assert_eq!(
            parse_stage("[x] cairn: stage=shutdown-start action=poweroff t=1.5"),
            Some(("shutdown-start".into(), 1.5))
        );
        assert_eq!(parse_stage("cairn: hostname x"), None);
    }
}
