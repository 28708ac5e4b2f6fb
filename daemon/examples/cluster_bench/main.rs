//! cairnd cluster benchmark: prints the API figures of a standalone daemon and of a
//! 3-member cluster. It prints figures; it is not a timed test.
//!
//! ```text
//! cargo build --release -p cairnd
//! cargo run --release -p cairnd --example cluster_bench [-- --writes N --seconds S]
//! ```
//!
//! Starts real release cairnd processes (`$CAIRND`, else the `cairnd` beside this example's
//! target directory, else `target/release/cairnd`), each in its own state dir under
//! /var/tmp, and talks to each over its unix socket with raw HTTP/1.1:
//! - standalone, then on the leader and on a follower of a 3-member cluster (members on
//!   127.0.0.1-3, formed through the API as `incus admin init` and `incus cluster add` do):
//!   `POST /1.0/profiles` latency p50/p99 over N sequential writes (default 1,000, after
//!   a warm-up), and writes/s with p50/p99 from 16 clients on their own connections for
//!   S seconds (default 5);
//! - the cluster's formation time, from starting the processes to all members Online;
//! - each member's RSS after the writes;
//! - leader failover, 3 rounds: the leader is killed with SIGKILL and the time until a
//!   write on a surviving member first succeeds is measured (a try every 10 ms, each
//!   with a 1 s timeout); the killed member is restarted on its state dir between rounds.
//!
//! Targets (this 2-core machine, 3 members): sequential p50 <= 1.5 ms, >= 2,500 writes/s
//! from 16 clients, failover <= 1.5 s. For reference, Incus 6.0.4 on the same machine
//! with 3 members on 127.0.0.1-3: 6.4 ms p50 / 38.5 ms p99, 244 writes/s, 6 s failover.
//!
//! Figures go to stdout as `name value unit`, with the target and its verdict beside
//! those that have one; progress goes to stderr. Every daemon is killed with SIGKILL and
//! every state dir removed at the end, on error, on panic and on Ctrl-C/SIGTERM.

use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// Shared with the single-daemon bench; this one uses only part of it.
#[allow(dead_code)]
#[path = "../bench/http.rs"]
mod http;
#[path = "../bench/support.rs"]
mod support;

mod cluster;
mod load;
mod procs;

use procs::{CleanupOnDrop, Member, Registry};
use support::cairnd_path;

type Result<T> = std::result::Result<T, String>;

const MEMBERS: usize = 3;
const CLIENTS: usize = 16;
const FAILOVER_ROUNDS: usize = 3;
/// Per-try timeout of the failover probe: short against a hung try, long enough for the
/// daemon's own retry through the election to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

struct Args {
    writes: usize,
    seconds: f64,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            writes: 1000,
            seconds: 5.0,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = |v: Option<String>| v.ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--writes" => {
                    a.writes = value(it.next())?
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or("--writes needs a positive integer")?
                }
                "--seconds" => {
                    a.seconds = value(it.next())?
                        .parse()
                        .ok()
                        .filter(|s: &f64| *s > 0.0 && s.is_finite())
                        .ok_or("--seconds needs a positive number")?
                }
                _ => {
                    return Err(format!(
                        "usage: cluster_bench [--writes N] [--seconds S] (not {flag:?})"
                    ))
                }
            }
        }
        Ok(a)
    }

    fn warmup(&self) -> usize {
        (self.writes / 10).max(10)
    }
}

fn main() {
    started();
    let result = Args::parse().and_then(|args| {
        let reg = Registry::new(cairnd_path()?)?;
        // From here on the guard kills the daemons and removes their dirs whatever happens.
        let _guard = CleanupOnDrop(reg.clone());
        progress(&format!("state dirs under {}", reg.root().display()));
        let r = run(&reg, &args);
        if r.is_err() {
            eprintln!("{}", reg.log_tails(15));
        }
        progress("cleaning up");
        r
    });
    if let Err(e) = result {
        eprintln!("cluster_bench: {e}");
        std::process::exit(1);
    }
    progress("done");
}

fn run(reg: &std::sync::Arc<Registry>, args: &Args) -> Result<()> {
    standalone(reg, args)?;

    let port = free_port()?;
    let members: Vec<Member> = (1..=MEMBERS)
        .map(|i| Member::new(reg, &format!("node{i}"), &format!("127.0.0.{i}")))
        .collect::<Result<_>>()?;
    let t = Instant::now();
    for m in &members {
        m.spawn()?;
    }
    for m in &members {
        m.wait_ready(Duration::from_secs(30))?;
    }
    cluster::form(&members, port)?;
    cluster::wait_settled(&[&members[0]], MEMBERS, Duration::from_secs(120))?;
    figure("cluster3_formation", t.elapsed().as_secs_f64(), "s", None);
    progress(&format!("{MEMBERS} members Online on port {port}"));

    let leader_name = cluster::leader(&members[0])?;
    let leader = find(&members, &leader_name)?;
    let follower = members
        .iter()
        .find(|m| m.name != leader_name)
        .ok_or("no follower")?;
    progress(&format!(
        "leader {}, follower {}",
        leader.name, follower.name
    ));

    for (m, role) in [(leader, "leader"), (follower, "follower")] {
        let label = format!("cluster3_{role}");
        let lat = load::sequential(&m.socket, &format!("s{role}"), args.warmup(), args.writes)?;
        progress(&format!("{} sequential writes on the {role}", args.writes));
        latency_figures(&format!("{label}_seq"), &lat, Some(Target::AtMost(1.5)));
    }
    for (m, role) in [(leader, "leader"), (follower, "follower")] {
        let label = format!("cluster3_{role}_{CLIENTS}clients");
        let tp = load::concurrent(&m.socket, &format!("c{role}"), CLIENTS, args.seconds)?;
        progress(&format!(
            "{} writes from {CLIENTS} clients on the {role}",
            tp.writes
        ));
        throughput_figures(&label, &tp, Some(Target::AtLeast(2500.0)));
    }
    for m in &members {
        figure(&format!("rss_{}", m.name), m.rss()?, "MiB", None);
    }

    let mut worst = Duration::ZERO;
    for round in 1..=FAILOVER_ROUNDS {
        let d = failover(&members, round)?;
        worst = worst.max(d);
    }
    figure(
        "failover_max",
        ms(worst),
        "ms",
        Some(Target::AtMost(1500.0)),
    );
    Ok(())
}

/// One daemon without a cluster: the same writes, for comparison.
fn standalone(reg: &std::sync::Arc<Registry>, args: &Args) -> Result<()> {
    let solo = Member::new(reg, "solo", "127.0.0.1")?;
    solo.spawn()?;
    solo.wait_ready(Duration::from_secs(30))?;
    progress("standalone cairnd ready");
    let lat = load::sequential(&solo.socket, "ssolo", args.warmup(), args.writes)?;
    latency_figures("standalone_seq", &lat, None);
    let tp = load::concurrent(&solo.socket, "csolo", CLIENTS, args.seconds)?;
    throughput_figures(&format!("standalone_{CLIENTS}clients"), &tp, None);
    figure("rss_standalone", solo.rss()?, "MiB", None);
    solo.kill();
    Ok(())
}

/// Kills the leader, times the first successful write on a survivor, restarts the killed
/// member and waits until the cluster is whole again.
fn failover(members: &[Member], round: usize) -> Result<Duration> {
    let leader_name = cluster::leader(&members[0])?;
    let leader = find(members, &leader_name)?;
    let survivor = members
        .iter()
        .find(|m| m.name != leader_name)
        .ok_or("no surviving member")?;
    progress(&format!(
        "failover {round}: killing leader {leader_name}, writing on {}",
        survivor.name
    ));
    let t = Instant::now();
    leader.kill();
    let probe = load::first_success(
        &survivor.socket,
        &format!("f{round}"),
        t,
        PROBE_TIMEOUT,
        Duration::from_secs(30),
    )?;
    let d = probe.elapsed;
    figure(
        &format!("failover_round{round}"),
        ms(d),
        "ms",
        Some(Target::AtMost(1500.0)),
    );
    progress(&format!(
        "failover {round}: first write after {} tries; last failure: {}",
        probe.tries,
        probe.last_failure.as_deref().unwrap_or("none")
    ));

    leader.spawn()?;
    leader.wait_ready(Duration::from_secs(30))?;
    let all: Vec<&Member> = members.iter().collect();
    cluster::wait_settled(&all, members.len(), Duration::from_secs(60))?;
    // A write through the restarted member: it is back in the cluster, not only up.
    load::sequential(&leader.socket, &format!("r{round}"), 0, 1)?;
    progress(&format!("failover {round}: {leader_name} back"));
    Ok(d)
}

fn find<'a>(members: &'a [Member], name: &str) -> Result<&'a Member> {
    members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| format!("the leader {name:?} is none of the bench's members"))
}

/// A TCP port free on 127.0.0.1-MEMBERS. Another process may take it before cairnd binds
/// it; the bench then fails with cairnd's bind error.
fn free_port() -> Result<u16> {
    for _ in 0..20 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let free = (1..=MEMBERS).all(|i| TcpListener::bind(format!("127.0.0.{i}:{port}")).is_ok());
        if free {
            return Ok(port);
        }
    }
    Err("no port free on all member addresses after 20 tries".into())
}

// ---------------------------------------------------------------------------------------
// Figures.

enum Target {
    AtMost(f64),
    AtLeast(f64),
}

fn figure(name: &str, value: f64, unit: &str, target: Option<Target>) {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let target = match target {
        Some(Target::AtMost(t)) => format!("   target <= {t} {unit}: {}", verdict(value <= t)),
        Some(Target::AtLeast(t)) => format!("   target >= {t} {unit}: {}", verdict(value >= t)),
        None => String::new(),
    };
    println!("{name:<40} {value:>10.2} {unit}{target}");
}

fn latency_figures(label: &str, sorted: &[Duration], p50_target: Option<Target>) {
    figure(
        &format!("{label}_p50"),
        ms(percentile(sorted, 50.0)),
        "ms",
        p50_target,
    );
    figure(
        &format!("{label}_p99"),
        ms(percentile(sorted, 99.0)),
        "ms",
        None,
    );
}

fn throughput_figures(label: &str, tp: &load::Throughput, target: Option<Target>) {
    figure(
        &format!("{label}_writes_per_s"),
        tp.writes as f64 / tp.elapsed.as_secs_f64(),
        "writes/s",
        target,
    );
    latency_figures(label, &tp.latencies, None);
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn started() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn progress(what: &str) {
    eprintln!("# [{:>6.1}s] {what}", started().elapsed().as_secs_f64());
}
