//! User-namespace id maps: container uid/gid N is host id `base + N`. Unprivileged
//! containers use root's range from /etc/subuid and /etc/subgid (as Incus does, since
//! liblxc insists on it when newuidmap is installed); privileged ones use the identity.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdShift {
    pub uid_base: u32,
    pub gid_base: u32,
    pub range: u32,
}

/// Incus's default when no subordinate range is configured.
const DEFAULT_BASE: u32 = 1_000_000;
const DEFAULT_RANGE: u32 = 1_000_000_000;

impl IdShift {
    pub const IDENTITY: IdShift = IdShift {
        uid_base: 0,
        gid_base: 0,
        range: u32::MAX,
    };

    pub fn is_identity(&self) -> bool {
        self.uid_base == 0 && self.gid_base == 0
    }

    /// Root's subordinate ranges from the given subuid/subgid file contents.
    pub fn from_subid(subuid: &str, subgid: &str) -> IdShift {
        let pick = |text: &str| {
            text.lines()
                .filter_map(|l| {
                    let mut f = l.trim().split(':');
                    let (user, start, count) = (f.next()?, f.next()?, f.next()?);
                    if user != "root" && user != "0" {
                        return None;
                    }
                    Some((start.parse::<u32>().ok()?, count.parse::<u32>().ok()?))
                })
                .filter(|(_, count)| *count >= 65536)
                .max_by_key(|(_, count)| *count)
        };
        match (pick(subuid), pick(subgid)) {
            (Some((u, ur)), Some((g, gr))) => IdShift {
                uid_base: u,
                gid_base: g,
                range: ur.min(gr),
            },
            _ => IdShift {
                uid_base: DEFAULT_BASE,
                gid_base: DEFAULT_BASE,
                range: DEFAULT_RANGE,
            },
        }
    }

    pub fn host_default() -> IdShift {
        let read = |p| std::fs::read_to_string(p).unwrap_or_default();
        IdShift::from_subid(&read("/etc/subuid"), &read("/etc/subgid"))
    }

    /// Maps a container id to a host id; None when outside the range.
    pub fn uid_to_host(&self, id: u32) -> Option<u32> {
        (id < self.range)
            .then(|| self.uid_base.checked_add(id))
            .flatten()
    }
    pub fn gid_to_host(&self, id: u32) -> Option<u32> {
        (id < self.range)
            .then(|| self.gid_base.checked_add(id))
            .flatten()
    }

    /// The map in Incus's `volatile.idmap.*` JSON form, which clients display.
    pub fn to_incus_json(&self) -> String {
        if self.is_identity() {
            return "[]".into();
        }
        serde_json::json!([
            {"Isuid": true, "Isgid": false, "Hostid": self.uid_base, "Nsid": 0, "Maprange": self.range},
            {"Isuid": false, "Isgid": true, "Hostid": self.gid_base, "Nsid": 0, "Maprange": self.range},
        ])
        .to_string()
    }

    pub fn from_incus_json(s: &str) -> Option<IdShift> {
        let v: serde_json::Value = serde_json::from_str(s).ok()?;
        let arr = v.as_array()?;
        if arr.is_empty() {
            return Some(IdShift::IDENTITY);
        }
        let mut shift = IdShift {
            uid_base: 0,
            gid_base: 0,
            range: 0,
        };
        for e in arr {
            let host = e.get("Hostid")?.as_u64()? as u32;
            let range = e.get("Maprange")?.as_u64()? as u32;
            if e.get("Isuid")?.as_bool()? {
                shift.uid_base = host;
            }
            if e.get("Isgid")?.as_bool()? {
                shift.gid_base = host;
            }
            shift.range = range;
        }
        Some(shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_roots_range() {
        let s = IdShift::from_subid(
            "user:100000:65536\nroot:1000000:1000000000\n",
            "root:2000000:1000000000\n",
        );
        assert_eq!(s.uid_base, 1_000_000);
        assert_eq!(s.gid_base, 2_000_000);
        assert_eq!(s.uid_to_host(0), Some(1_000_000));
        assert_eq!(s.uid_to_host(1_000_000_000), None);
    }

    #[test]
    fn falls_back_to_incus_default() {
        let s = IdShift::from_subid("", "");
        assert_eq!((s.uid_base, s.range), (1_000_000, 1_000_000_000));
    }

    #[test]
    fn incus_json_round_trip() {
        let s = IdShift::from_subid("", "");
        assert_eq!(IdShift::from_incus_json(&s.to_incus_json()), Some(s));
        assert_eq!(IdShift::from_incus_json("[]"), Some(IdShift::IDENTITY));
    }
}
