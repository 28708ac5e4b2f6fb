//! Who founds the cluster.
//!
//! # Why this is safe enough
//! Every member applies the same pure rule to the names it has seen: once `founders`
//! members are seen (counting itself), the lexicographically smallest name founds the
//! cluster, and everyone else joins it. When the expected founders all start with the same
//! seed on one link, each announces every ~0.4 s, so within a second or two every member
//! has seen the same set and computes the same founder; nobody decides before
//! [`SETTLE`] has passed, which is several announcement periods.
//!
//! After `formation_timeout`, a strict majority of `founders` is enough. Two groups that
//! cannot hear each other cannot both hold a strict majority of the same founders, so at
//! most one of them forms a cluster this way; the other keeps waiting.
//!
//! A member that formed or joined a cluster announces `formed`. [`decide`] lets any member
//! that sees a formed peer join it at once, so a founder that starts late (after a
//! majority formed without it), or a member added later with the same seed, joins the
//! existing cluster instead of founding a second one.
//!
//! What it cannot prevent: more members than `founders` starting at the same instant with
//! the same seed while some of them cannot yet hear the others may pick different founders
//! (each sees "enough" members, but not the same ones). The settle time makes that
//! unlikely on one link; the seed's `founders` should be the number actually started.

use std::collections::BTreeMap;
use std::time::Duration;

use super::table::Peer;

/// How long [`decide`] listens before deciding anything: several announcement periods,
/// so that every member already announcing (formed or not) has been heard.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The outcome of [`choose_founder`] or [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not enough members seen yet.
    Wait,
    /// This member founds (if it is us) or is joined (otherwise).
    Founder(String),
}

/// The pure founder rule. `seen` are the names of the members seen (with or without
/// `me`); `elapsed` is the time since discovery started, `timeout` the formation timeout.
///
/// - at least `founders` members seen, counting `me` → the smallest name;
/// - else after `timeout`, with a strict majority of `founders` seen → the smallest name
///   among those seen;
/// - else → [`Decision::Wait`].
///
/// Use [`decide`] in the daemon: it adds the settle time and joins formed clusters.
pub fn choose_founder<S: AsRef<str>>(
    seen: &[S],
    me: &str,
    founders: u32,
    elapsed: Duration,
    timeout: Duration,
) -> Decision {
    let mut names: Vec<&str> = seen.iter().map(AsRef::as_ref).collect();
    names.push(me);
    names.sort_unstable();
    names.dedup();
    let count = names.len() as u64;
    let founders = u64::from(founders.max(1));
    let enough = count >= founders || (elapsed >= timeout && count * 2 > founders);
    match names.first() {
        Some(first) if enough => Decision::Founder((*first).to_string()),
        _ => Decision::Wait,
    }
}

/// The daemon's rule over the table of peers seen ([`super::Discovery::peers`]): after
/// [`SETTLE`], a formed peer is joined at once (the smallest formed name); else
/// [`choose_founder`] among the peers seen.
pub fn decide(
    peers: &BTreeMap<String, Peer>,
    me: &str,
    founders: u32,
    elapsed: Duration,
    timeout: Duration,
) -> Decision {
    if elapsed < SETTLE {
        return Decision::Wait;
    }
    // BTreeMap iterates in name order: the first formed peer is the smallest.
    if let Some(p) = peers.values().find(|p| p.formed && p.name != me) {
        return Decision::Founder(p.name.clone());
    }
    let names: Vec<&str> = peers.keys().map(String::as_str).collect();
    choose_founder(&names, me, founders, elapsed, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const T: Duration = Duration::from_secs(30);
    const EARLY: Duration = Duration::from_secs(3);
    const LATE: Duration = Duration::from_secs(31);

    fn founder(n: &str) -> Decision {
        Decision::Founder(n.into())
    }

    #[test]
    fn all_founders_seen_smallest_name_wins() {
        assert_eq!(
            choose_founder(&["n2", "n3"], "n1", 3, EARLY, T),
            founder("n1")
        );
        assert_eq!(
            choose_founder(&["n3", "n1"], "n2", 3, EARLY, T),
            founder("n1")
        );
        // `me` in `seen` is not counted twice.
        assert_eq!(
            choose_founder(&["n1", "n2"], "n2", 3, EARLY, T),
            Decision::Wait
        );
        // Byte order, not length or numeric order.
        assert_eq!(
            choose_founder(&["n10", "n9"], "n2", 3, EARLY, T),
            founder("n10")
        );
        // More than expected: still the smallest of all seen.
        assert_eq!(
            choose_founder(&["b", "c", "a"], "d", 3, EARLY, T),
            founder("a")
        );
    }

    #[test]
    fn single_founder_founds_alone() {
        let none: [&str; 0] = [];
        assert_eq!(
            choose_founder(&none, "solo", 1, Duration::ZERO, T),
            founder("solo")
        );
        // founders = 0 is treated as 1 rather than dividing by anything.
        assert_eq!(
            choose_founder(&none, "solo", 0, Duration::ZERO, T),
            founder("solo")
        );
    }

    #[test]
    fn majority_only_after_timeout() {
        assert_eq!(choose_founder(&["n3"], "n2", 3, EARLY, T), Decision::Wait);
        assert_eq!(choose_founder(&["n3"], "n2", 3, LATE, T), founder("n2"));
        assert_eq!(choose_founder(&["n3"], "n2", 3, T, T), founder("n2"));
        // No strict majority: 2 of 4, 1 of 3, 1 of 2.
        assert_eq!(choose_founder(&["b"], "a", 4, LATE, T), Decision::Wait);
        let none: [&str; 0] = [];
        assert_eq!(choose_founder(&none, "a", 3, LATE, T), Decision::Wait);
        assert_eq!(choose_founder(&none, "a", 2, LATE, T), Decision::Wait);
        assert_eq!(choose_founder(&["b", "c"], "a", 4, LATE, T), founder("a"));
    }

    #[test]
    fn every_member_computes_the_same_founder() {
        let all = ["n4", "n2", "n3"];
        for me in all {
            let others: Vec<&str> = all.iter().copied().filter(|n| *n != me).collect();
            assert_eq!(choose_founder(&others, me, 3, EARLY, T), founder("n2"));
        }
    }

    fn peer(name: &str, formed: bool) -> (String, Peer) {
        (
            name.to_string(),
            Peer {
                name: name.into(),
                api_address: "10.0.0.1:8443".parse().unwrap(),
                fingerprint: "ab".repeat(32),
                formed,
                last_seen: Instant::now(),
                source: "10.0.0.1:8444".parse().unwrap(),
            },
        )
    }

    #[test]
    fn decide_settles_then_prefers_a_formed_cluster() {
        let peers: BTreeMap<_, _> = [peer("b", false), peer("c", false)].into();
        assert_eq!(
            decide(&peers, "a", 3, Duration::from_secs(1), T),
            Decision::Wait
        );
        assert_eq!(decide(&peers, "a", 3, SETTLE, T), founder("a"));
        // A late founder: `a` would win by name, but `c` already formed a cluster.
        let peers: BTreeMap<_, _> = [peer("b", false), peer("c", true), peer("d", true)].into();
        assert_eq!(decide(&peers, "a", 3, SETTLE, T), founder("c"));
        // Even alone with a formed peer, well before the timeout.
        let peers: BTreeMap<_, _> = [peer("z", true)].into();
        assert_eq!(decide(&peers, "a", 5, SETTLE, T), founder("z"));
        let peers: BTreeMap<_, _> = [peer("z", false)].into();
        assert_eq!(decide(&peers, "a", 5, SETTLE, T), Decision::Wait);
    }
}
