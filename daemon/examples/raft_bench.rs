//! Replicated commit throughput and latency of the Raft core, in-process.
//!
//! `cargo run --release -p cairnd --example raft_bench [-- SECONDS [MEMBERSxWRITERS ...]]`
//!
//! For 1, 3 and 5 members (each with its own log and SQLite database on a real disk under
//! /var/tmp, not tmpfs; `BENCH_DIR=/dev/shm/x` shows what fsync costs) and 1 and 64
//! concurrent writers, every write is one request of one
//! `SetServerConfig` command sent to the leader; it is acknowledged once its log entry is
//! fsync'd on a majority and applied. Prints commits/s and p50/p99 latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairnd::cluster::{Config, LocalRouter, Node};
use cairnd::db::{Command, Db};
use openraft::BasicNode;

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    leader: Node,
}

async fn cluster(members: u64) -> Result<Cluster, Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new()
        .prefix("cairn-raft-bench-")
        .tempdir_in(std::env::var("BENCH_DIR").unwrap_or("/var/tmp".into()))?;
    let router = LocalRouter::new();
    let mut nodes = Vec::new();
    for id in 1..=members {
        let cfg = Config::new(id, dir.path().join(format!("member{id}")));
        std::fs::create_dir_all(&cfg.dir)?;
        let db = Arc::new(Db::open_replicated(&cfg.dir.join("state.db"))?);
        let node = Node::start(cfg, db, router.clone()).await?;
        router.register(&node);
        nodes.push(node);
    }
    let all: BTreeMap<u64, BasicNode> = (1..=members)
        .map(|id| (id, BasicNode::new(format!("member{id}"))))
        .collect();
    nodes[0].initialize(all).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(l) = nodes[0].leader() {
            break nodes[(l - 1) as usize].clone();
        }
        if Instant::now() > deadline {
            return Err("no leader within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Ok(Cluster {
        _dir: dir,
        nodes,
        leader,
    })
}

fn set(writer: usize, i: u64) -> Vec<Command> {
    vec![Command::SetServerConfig {
        key: format!("bench.w{writer}.k{}", i % 1000),
        value: Some(i.to_string()),
    }]
}

async fn run(
    members: u64,
    writers: usize,
    secs: f64,
) -> Result<(f64, Duration, Duration, f64), Box<dyn std::error::Error>> {
    let c = cluster(members).await?;
    let leader = c.leader.clone();
    for i in 0..200 {
        leader.write(set(0, i)).await?; // warm-up
    }
    let first_index = leader.metrics().last_log_index.unwrap_or(0);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let leader = leader.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < until {
                    let t = Instant::now();
                    leader.write(set(w, i)).await?;
                    lat.push(t.elapsed());
                    i += 1;
                }
                Ok::<_, cairnd::cluster::ClusterError>(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let entries = leader.metrics().last_log_index.unwrap_or(0) - first_index;
    for n in &c.nodes {
        n.shutdown().await;
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let per_entry = lat.len() as f64 / entries.max(1) as f64;
    Ok((lat.len() as f64 / elapsed, pct(0.50), pct(0.99), per_entry))
}

fn fsync_latency() -> std::io::Result<Duration> {
    use std::io::Write;
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let mut f = std::fs::File::create(dir.path().join("f"))?;
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        f.write_all(&[0u8; 256])?;
        f.sync_data()?;
    }
    Ok(t.elapsed() / n)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    println!(
        "append + fdatasync on /var/tmp: {:.3} ms",
        fsync_latency()?.as_secs_f64() * 1e3
    );
    // Further arguments pick runs, as MEMBERSxWRITERS (e.g. 3x64); by default all six.
    let mut runs: Vec<(u64, usize)> = std::env::args()
        .skip(2)
        .filter_map(|a| {
            let (m, w) = a.split_once('x')?;
            Some((m.parse().ok()?, w.parse().ok()?))
        })
        .collect();
    if runs.is_empty() {
        runs = [1, 3, 5]
            .into_iter()
            .flat_map(|m| [(m, 1), (m, 64)])
            .collect();
    }
    println!("members  writers  commits/s      p50 ms   p99 ms  requests/entry");
    for (members, writers) in runs {
        let (rate, p50, p99, per_entry) = run(members, writers, secs).await?;
        println!(
            "{members:>7}  {writers:>7}  {rate:>9.0}  {:>10.3}  {:>7.3}  {per_entry:>14.1}",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
