//! Memory from /proc/meminfo, per NUMA node from /sys/devices/system/node/node*/meminfo.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::{dir_names, parse_err, read_required, under, Result};

/// `api.ResourcesMemory`.
#[derive(Debug, Default, Serialize)]
pub struct Memory {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<MemoryNode>,
    pub hugepages_total: u64,
    pub hugepages_used: u64,
    pub hugepages_size: u64,
    pub used: u64,
    pub total: u64,
}

/// `api.ResourcesMemoryNode`.
#[derive(Debug, Default, Serialize)]
pub struct MemoryNode {
    pub numa_node: u64,
    pub hugepages_used: u64,
    pub hugepages_total: u64,
    pub used: u64,
    pub total: u64,
}

/// A meminfo file as key → value, in bytes for `kB` values and as counts otherwise. The
/// per-node files prefix every key with `Node N`, which is dropped.
fn parse_meminfo(text: &str, path: &Path) -> Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((key, value)) = line.split_once(':') else {
            return Err(parse_err(path, format!("no ':' in {line:?}")));
        };
        let key = key.split_whitespace().last().unwrap_or_default();
        let mut words = value.split_whitespace();
        let n: u64 = words
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| parse_err(path, format!("bad value in {line:?}")))?;
        let n = match words.next() {
            Some("kB") => n.saturating_mul(1024),
            None => n,
            Some(u) => return Err(parse_err(path, format!("unknown unit {u:?}"))),
        };
        out.insert(key.to_string(), n);
    }
    Ok(out)
}

fn get(m: &HashMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

/// Used as Incus counts it: total less free, page cache and buffers.
fn used(m: &HashMap<String, u64>) -> u64 {
    if let Some(u) = m.get("MemUsed") {
        return *u;
    }
    get(m, "MemTotal")
        .saturating_sub(get(m, "MemFree"))
        .saturating_sub(get(m, "Cached"))
        .saturating_sub(get(m, "Buffers"))
}

pub fn read(root: &Path) -> Result<Memory> {
    let path = under(root, "/proc/meminfo");
    let info = parse_meminfo(&read_required(&path)?, &path)?;
    let page = get(&info, "Hugepagesize");
    let huge_total = get(&info, "HugePages_Total");
    let huge_free = get(&info, "HugePages_Free");

    let mut nodes = Vec::new();
    let base = under(root, "/sys/devices/system/node");
    for name in dir_names(&base)? {
        let Some(n) = name.strip_prefix("node").and_then(|n| n.parse().ok()) else {
            continue;
        };
        let path = base.join(&name).join("meminfo");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let m = parse_meminfo(&text, &path)?;
        nodes.push(MemoryNode {
            numa_node: n,
            hugepages_used: get(&m, "HugePages_Total")
                .saturating_sub(get(&m, "HugePages_Free"))
                .saturating_mul(page),
            hugepages_total: get(&m, "HugePages_Total").saturating_mul(page),
            used: used(&m),
            total: get(&m, "MemTotal"),
        });
    }
    Ok(Memory {
        nodes,
        hugepages_total: huge_total.saturating_mul(page),
        hugepages_used: huge_total.saturating_sub(huge_free).saturating_mul(page),
        hugepages_size: page,
        used: used(&info),
        total: get(&info, "MemTotal"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_tree::write;
    use super::*;

    const MEMINFO: &str = "MemTotal:        8000000 kB\nMemFree:         1000000 kB\nMemAvailable:    5000000 kB\nBuffers:          100000 kB\nCached:          2000000 kB\nHugePages_Total:      10\nHugePages_Free:        4\nHugepagesize:       2048 kB\n";

    const NODE0: &str = "Node 0 MemTotal:       8000000 kB\nNode 0 MemFree:        1000000 kB\nNode 0 MemUsed:        7000000 kB\nNode 0 HugePages_Total:    10\nNode 0 HugePages_Free:      4\n";

    #[test]
    fn totals_used_and_hugepages() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "proc/meminfo", MEMINFO);
        write(t.path(), "sys/devices/system/node/node0/meminfo", NODE0);
        write(t.path(), "sys/devices/system/node/online", "0\n");
        let m = read(t.path()).unwrap();
        assert_eq!(m.total, 8_000_000 * 1024);
        assert_eq!(m.used, (8_000_000 - 1_000_000 - 2_000_000 - 100_000) * 1024);
        assert_eq!(m.hugepages_size, 2 << 20);
        assert_eq!(m.hugepages_total, 10 * (2 << 20));
        assert_eq!(m.hugepages_used, 6 * (2 << 20));
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.nodes[0].used, 7_000_000 * 1024);
        assert_eq!(m.nodes[0].hugepages_used, 6 * (2 << 20));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let p = Path::new("/x");
        assert!(parse_meminfo("MemTotal: lots kB\n", p).is_err());
        assert!(parse_meminfo("no colon\n", p).is_err());
        assert!(parse_meminfo("MemTotal: 1 MB\n", p).is_err());
        assert!(parse_meminfo("", p).unwrap().is_empty());
        let t = tempfile::tempdir().unwrap();
        assert!(read(t.path()).is_err(), "no /proc/meminfo");
    }
}
