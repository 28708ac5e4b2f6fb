//! A randomized run: concurrent clients write through random members while a fault
//! schedule kills leaders, restarts them and cuts members off. The workload (which member
//! each write and read goes to) and the sequence of faults come from one seed
//! (`CAIRN_RAFT_SEED` to run another); when each fault starts depends on the clients'
//! progress and the clock, so runs with one seed are alike, not identical. The history is then
//! checked: no acknowledged write lost, none applied twice, every linearizable read saw
//! every write acknowledged before it began.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{set, TestCluster};
use crate::cluster::{ClusterError, Request};

const MEMBERS: u64 = 3;
const CLIENTS: u64 = 8;
const WRITES_PER_CLIENT: u64 = 125;

#[derive(Default)]
struct History {
    /// Keys whose write was acknowledged, in acknowledgement order.
    acked: Vec<String>,
    /// Writes whose outcome stayed unknown (every retry failed).
    unknown: Vec<String>,
    reads: usize,
    violations: Vec<String>,
}

fn seed() -> u64 {
    std::env::var("CAIRN_RAFT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_ca1e)
}

async fn client(c: Arc<TestCluster>, n: u64, seed: u64, history: Arc<Mutex<History>>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (n << 32));
    for i in 0..WRITES_PER_CLIENT {
        let key = format!("c{n}-{i}");
        let req = Request {
            id: format!("req-{key}"),
            commands: vec![set(&key, &i.to_string())],
        };
        let mut acked = false;
        for _attempt in 0..6 {
            let live = c.live();
            let Some(node) = c.try_node(live[rng.gen_range(0..live.len())]) else {
                continue;
            };
            match node.write_request(req.clone()).await {
                Ok(_) => {
                    acked = true;
                    break;
                }
                Err(ClusterError::NoQuorum { .. } | ClusterError::Stopped(_)) => {}
                Err(ClusterError::NotLeader { .. } | ClusterError::Transport { .. }) => {}
                Err(e) => panic!("write {key}: {e}"),
            }
        }
        {
            let mut h = history.lock().unwrap();
            if !acked {
                h.unknown.push(key.clone());
                continue;
            }
            h.acked.push(key.clone());
        }
        if rng.gen_bool(0.3) {
            // Every write acknowledged before the read starts must be visible to it.
            let must_see: Vec<String> = history.lock().unwrap().acked.clone();
            let live = c.live();
            let Some(node) = c.try_node(live[rng.gen_range(0..live.len())]) else {
                continue;
            };
            if node.linearizable_barrier().await.is_err() {
                continue; // refused (minority, stopped): allowed, not a stale read
            }
            let rows = node.db().server_config().unwrap();
            let mut h = history.lock().unwrap();
            h.reads += 1;
            if let Some(missing) = must_see.iter().find(|k| !rows.contains_key(*k)) {
                h.violations.push(format!(
                    "read on member {} after {key} missed {missing}",
                    node.id()
                ));
            }
        }
    }
}

/// Faults one at a time, so a majority always exists: kill the leader (and restart it
/// later), isolate a member, isolate the leader, heal. A new fault replaces the last one
/// once the clients got another 40 to 100 writes acknowledged, or after 200 to 600 ms
/// without that progress.
async fn chaos(
    c: Arc<TestCluster>,
    seed: u64,
    done: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = 0;
    let mut killed: Option<u64> = None;
    let mut mark = 0;
    while !done.load(Ordering::Relaxed) {
        mark += rng.gen_range(40..100);
        let until = Instant::now() + Duration::from_millis(rng.gen_range(200..600));
        while history.lock().unwrap().acked.len() < mark
            && Instant::now() < until
            && !done.load(Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.router.heal();
        if let Some(id) = killed.take() {
            c.start(id).await;
        }
        if done.load(Ordering::Relaxed) {
            break;
        }
        let leader = c.live().into_iter().find_map(|id| c.node(id).leader());
        match rng.gen_range(0..4) {
            0 => {
                if let Some(l) = leader.filter(|l| c.try_node(*l).is_some()) {
                    c.kill(l).await;
                    killed = Some(l);
                    faults += 1;
                }
            }
            1 => {
                c.router.isolate(rng.gen_range(1..=MEMBERS));
                faults += 1;
            }
            2 => {
                if let Some(l) = leader {
                    c.router.isolate(l);
                    faults += 1;
                }
            }
            _ => {}
        }
    }
    c.router.heal();
    if let Some(id) = killed {
        c.start(id).await;
    }
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_writes_through_faults_keep_a_correct_history() {
    run(false).await;
}

/// The same with cut links that drop what crosses them (calls hang until their timeout)
/// instead of refusing it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_writes_through_silent_partitions_keep_a_correct_history() {
    run(true).await;
}

async fn run(silent: bool) {
    let seed = seed();
    let c = Arc::new(
        TestCluster::with(MEMBERS, |cfg| cfg.write_timeout = Duration::from_secs(1)).await,
    );
    if silent {
        c.router.drop_silently();
    }
    let history = Arc::new(Mutex::new(History::default()));
    let done = Arc::new(AtomicBool::new(false));
    let chaos_task = tokio::spawn(chaos(c.clone(), seed, done.clone(), history.clone()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(c.clone(), n, seed, history.clone())))
        .collect();
    for t in clients {
        t.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let faults = chaos_task.await.unwrap();

    c.wait_converged().await;
    c.assert_same_state();
    {
        let h = history.lock().unwrap();
        let rows = c.rows(c.live()[0]);
        let lost: Vec<_> = h.acked.iter().filter(|k| !rows.contains_key(*k)).collect();
        assert!(
            lost.is_empty(),
            "acknowledged writes lost: {lost:?} (seed {seed})"
        );
        // Each request writes its own key: had one been applied twice, the count of requests
        // that took effect would exceed the keys present.
        let applied = c
            .node(c.live()[0])
            .db()
            .applied_position()
            .unwrap()
            .unwrap()
            .applied_requests;
        let keys = rows.keys().filter(|k| k.starts_with('c')).count() as u64;
        assert_eq!(
            applied, keys,
            "requests applied vs keys present (seed {seed})"
        );
        assert!(
            h.violations.is_empty(),
            "stale reads: {:?} (seed {seed})",
            h.violations
        );
        assert_eq!(
            h.acked.len() + h.unknown.len(),
            (CLIENTS * WRITES_PER_CLIENT) as usize
        );
        assert!(
            h.acked.len() >= 900,
            "only {} of 1000 writes acknowledged",
            h.acked.len()
        );
        assert!(faults >= 8, "only {faults} faults injected");
        eprintln!(
            "seed {seed} (silent cuts: {silent}): {} acked, {} unknown, {} linearizable reads checked, {faults} faults",
            h.acked.len(),
            h.unknown.len(),
            h.reads
        );
    }
    c.shutdown().await;
}
