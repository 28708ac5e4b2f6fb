//! CPUs from /sys/devices/system/cpu (topology, caches, frequencies, online state, NUMA
//! links, the isolated list) and /proc/cpuinfo (vendor, model name, flags).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use super::{dir_names, read_i64, read_opt, read_required, read_u64, under, Result};

/// `api.ResourcesCPU`.
#[derive(Debug, Default, Serialize)]
pub struct Cpu {
    pub architecture: String,
    pub sockets: Vec<Socket>,
    pub total: u64,
}

/// `api.ResourcesCPUSocket`.
#[derive(Debug, Default, Serialize)]
pub struct Socket {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    pub socket: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<Cache>,
    pub cores: Vec<Core>,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency_minimum: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency_turbo: u64,
}

/// `api.ResourcesCPUCache`.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Cache {
    pub level: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
}

/// `api.ResourcesCPUCore`.
#[derive(Debug, Default, Serialize)]
pub struct Core {
    pub core: u64,
    pub die: u64,
    pub threads: Vec<Thread>,
    #[serde(skip_serializing_if = "is_zero")]
    pub frequency: u64,
    pub flags: Vec<String>,
}

/// `api.ResourcesCPUThread`.
#[derive(Debug, Default, Serialize)]
pub struct Thread {
    pub id: i64,
    pub numa_node: u64,
    pub thread: u64,
    pub online: bool,
    pub isolated: bool,
}

pub(super) fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// /proc/cpuinfo as processor number → its `key: value` lines.
fn parse_cpuinfo(text: &str) -> HashMap<i64, HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut current: Option<(i64, HashMap<String, String>)> = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k == "processor" {
            if let Some((n, fields)) = current.take() {
                out.insert(n, fields);
            }
            // s390x writes "processor 0: …" lines after a summary; those are not numbers.
            current = v.parse().ok().map(|n| (n, HashMap::new()));
        } else if let Some((_, fields)) = current.as_mut() {
            fields.insert(k.to_string(), v.to_string());
        }
    }
    if let Some((n, fields)) = current {
        out.insert(n, fields);
    }
    out
}

/// A kernel CPU list (`0-3,8,10-11`).
fn parse_cpu_list(text: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b.min(a.saturating_add(65536)));
                }
            }
            None => out.extend(part.parse::<i64>().ok()),
        }
    }
    out
}

/// A cache `size` file: `32K`, `1024K`, `8M`.
fn parse_cache_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1024),
        'M' => (&s[..s.len() - 1], 1024 * 1024),
        'G' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

fn caches(cpu_dir: &Path) -> Result<Vec<Cache>> {
    let dir = cpu_dir.join("cache");
    let mut out = Vec::new();
    for name in dir_names(&dir)? {
        let entry = dir.join(&name);
        let Some(level) = read_u64(&entry.join("level")) else {
            continue;
        };
        out.push(Cache {
            level,
            kind: read_opt(&entry.join("type")).unwrap_or_default(),
            size: read_opt(&entry.join("size"))
                .and_then(|s| parse_cache_size(&s))
                .unwrap_or(0),
        });
    }
    Ok(out)
}

/// The NUMA node a CPU (or device) directory links to (`node1`); 0 without one.
fn cpu_numa_node(cpu_dir: &Path) -> Result<u64> {
    Ok(dir_names(cpu_dir)?
        .iter()
        .find_map(|n| n.strip_prefix("node").and_then(|n| n.parse().ok()))
        .unwrap_or(0))
}

/// A cpufreq value in kHz as MHz.
fn mhz(path: &Path) -> Option<u64> {
    read_u64(path).map(|k| k / 1000)
}

/// A socket's cores by (die, core id).
type CoresByDieAndId = BTreeMap<(u64, u64), Core>;

pub fn read(root: &Path, arch: &str) -> Result<Cpu> {
    let base = under(root, "/sys/devices/system/cpu");
    let cpuinfo = parse_cpuinfo(&read_required(&under(root, "/proc/cpuinfo"))?);
    let isolated = read_opt(&base.join("isolated"))
        .map(|s| parse_cpu_list(&s))
        .unwrap_or_default();

    // socket → (die, core) → core, as Incus groups them.
    let mut sockets: BTreeMap<u64, (Socket, CoresByDieAndId)> = BTreeMap::new();
    let mut total = 0;
    for name in dir_names(&base)? {
        let Some(id) = name.strip_prefix("cpu").and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let dir = base.join(&name);
        let topo = dir.join("topology");
        if !topo.is_dir() {
            // Offline CPUs lose their topology: Incus does not count them either.
            continue;
        }
        let id_of = |f: &str| {
            read_i64(&topo.join(f))
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)
        };
        let (socket_id, core_id, die_id) = (
            id_of("physical_package_id"),
            id_of("core_id"),
            id_of("die_id"),
        );
        let info = cpuinfo.get(&id);
        let field = |k: &str| info.and_then(|f| f.get(k)).cloned().unwrap_or_default();

        let (_, cores) = sockets.entry(socket_id).or_insert_with(|| {
            let name = [field("model name"), field("cpu")]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or_default();
            let freq = dir.join("cpufreq");
            let socket = Socket {
                name,
                vendor: field("vendor_id"),
                socket: socket_id,
                cache: caches(&dir).unwrap_or_default(),
                frequency_minimum: mhz(&freq.join("cpuinfo_min_freq"))
                    .or_else(|| mhz(&freq.join("scaling_min_freq")))
                    .unwrap_or(0),
                frequency_turbo: mhz(&freq.join("cpuinfo_max_freq"))
                    .or_else(|| mhz(&freq.join("scaling_max_freq")))
                    .unwrap_or(0),
                ..Default::default()
            };
            (socket, BTreeMap::new())
        });
        let core = cores.entry((die_id, core_id)).or_insert_with(|| {
            let flags = [field("flags"), field("Features")]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or_default();
            Core {
                core: core_id,
                die: die_id,
                frequency: mhz(&dir.join("cpufreq/scaling_cur_freq")).unwrap_or(0),
                flags: flags.split_whitespace().map(String::from).collect(),
                ..Default::default()
            }
        });
        core.threads.push(Thread {
            id,
            numa_node: cpu_numa_node(&dir)?,
            thread: core.threads.len() as u64,
            // cpu0 often has no `online` file: it cannot be taken offline.
            online: read_u64(&dir.join("online")).is_none_or(|n| n != 0),
            isolated: isolated.contains(&id),
        });
        total += 1;
    }

    let sockets = sockets
        .into_values()
        .map(|(mut socket, cores)| {
            socket.cores = cores.into_values().collect();
            let freqs: Vec<u64> = socket
                .cores
                .iter()
                .map(|c| c.frequency)
                .filter(|f| *f > 0)
                .collect();
            if !freqs.is_empty() {
                socket.frequency = freqs.iter().sum::<u64>() / freqs.len() as u64;
            }
            socket
        })
        .collect();
    Ok(Cpu {
        architecture: arch.to_string(),
        sockets,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_tree::{link, write};
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU @ 2.00GHz\nflags\t\t: fpu vme sse\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU @ 2.00GHz\nflags\t\t: fpu vme sse\n\nprocessor\t: 2\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU @ 2.00GHz\nflags\t\t: fpu vme sse\n";

    fn cpu(root: &Path, n: u32, core: u32, online: Option<&str>) {
        let d = format!("sys/devices/system/cpu/cpu{n}");
        write(root, &format!("{d}/topology/physical_package_id"), "0\n");
        write(root, &format!("{d}/topology/core_id"), &format!("{core}\n"));
        write(root, &format!("{d}/topology/die_id"), "0\n");
        write(root, &format!("{d}/cpufreq/scaling_cur_freq"), "2000000\n");
        write(root, &format!("{d}/cpufreq/cpuinfo_max_freq"), "3500000\n");
        write(root, &format!("{d}/cpufreq/cpuinfo_min_freq"), "800000\n");
        write(root, &format!("{d}/cache/index0/level"), "1\n");
        write(root, &format!("{d}/cache/index0/type"), "Data\n");
        write(root, &format!("{d}/cache/index0/size"), "32K\n");
        link(root, &format!("{d}/node0"), "../../node/node0");
        if let Some(o) = online {
            write(root, &format!("{d}/online"), o);
        }
    }

    #[test]
    fn sockets_cores_and_threads_from_a_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "proc/cpuinfo", CPUINFO);
        cpu(root, 0, 0, None);
        cpu(root, 1, 0, Some("1\n"));
        cpu(root, 2, 1, Some("1\n"));
        // An offline CPU: no topology, not counted.
        write(root, "sys/devices/system/cpu/cpu3/online", "0\n");
        write(root, "sys/devices/system/cpu/isolated", "2\n");
        write(root, "sys/devices/system/cpu/possible", "0-3\n");

        let c = read(root, "x86_64").unwrap();
        assert_eq!(c.total, 3);
        assert_eq!(c.architecture, "x86_64");
        assert_eq!(c.sockets.len(), 1);
        let s = &c.sockets[0];
        assert_eq!(s.vendor, "GenuineIntel");
        assert_eq!(s.name, "Test CPU @ 2.00GHz");
        assert_eq!(
            (s.frequency, s.frequency_minimum, s.frequency_turbo),
            (2000, 800, 3500)
        );
        assert_eq!(
            s.cache,
            [Cache {
                level: 1,
                kind: "Data".into(),
                size: 32 * 1024
            }]
        );
        assert_eq!(s.cores.len(), 2);
        assert_eq!(s.cores[0].threads.len(), 2);
        assert_eq!(s.cores[0].threads[1].thread, 1);
        assert_eq!(s.cores[0].flags, ["fpu", "vme", "sse"]);
        let t2 = &s.cores[1].threads[0];
        assert!(t2.online && t2.isolated && t2.id == 2);
    }

    #[test]
    fn cpu_lists_and_cache_sizes() {
        assert_eq!(parse_cpu_list("0-2,5,7-8\n"), [0, 1, 2, 5, 7, 8]);
        assert_eq!(parse_cpu_list(""), Vec::<i64>::new());
        assert_eq!(parse_cpu_list("x,3"), [3]);
        assert_eq!(parse_cache_size("8M"), Some(8 << 20));
        assert_eq!(parse_cache_size("bogus"), None);
        assert_eq!(parse_cache_size(""), None);
    }

    #[test]
    fn missing_cpuinfo_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        assert!(read(t.path(), "x86_64").is_err());
    }
}
