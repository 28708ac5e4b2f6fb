//! The write load: `POST /1.0/profiles` with a new name each time, sequential on one kept-
//! alive connection or from many clients at once, and the probe that times a failover.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::http::Client;
use crate::Result;

/// Creates profile `name`; the time from writing the request to reading the whole answer.
fn create_profile(c: &mut Client, name: &str) -> Result<Duration> {
    let body = json!({ "name": name }).to_string();
    let t = Instant::now();
    let reply = c.send("POST", "/1.0/profiles", "application/json", body.as_bytes())?;
    let elapsed = t.elapsed();
    if reply.status != 201 {
        return Err(format!(
            "POST /1.0/profiles {name}: HTTP {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)])
        ));
    }
    Ok(elapsed)
}

/// `warmup` unmeasured writes, then `n` measured ones, one after the other; sorted.
pub fn sequential(socket: &Path, prefix: &str, warmup: usize, n: usize) -> Result<Vec<Duration>> {
    let mut c = Client::new(socket);
    for i in 0..warmup {
        create_profile(&mut c, &format!("{prefix}-w{i}"))?;
    }
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        times.push(create_profile(&mut c, &format!("{prefix}-{i}"))?);
    }
    times.sort();
    Ok(times)
}

/// What `concurrent` measured.
pub struct Throughput {
    pub writes: usize,
    pub elapsed: Duration,
    /// Every write's latency, sorted.
    pub latencies: Vec<Duration>,
}

/// `clients` clients, each on its own connection, write for `seconds` after starting
/// together; a client stops at the first write that starts past the deadline.
pub fn concurrent(socket: &Path, prefix: &str, clients: usize, seconds: f64) -> Result<Throughput> {
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::new());
    let failed: Mutex<Option<String>> = Mutex::new(None);
    let start = Barrier::new(clients + 1);
    let mut began = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let mut c = Client::new(socket);
                // Connect before the start, so that connection setup is not measured.
                let _ = c.send("GET", "/internal/ready", "", b"");
                start.wait();
                let deadline = Instant::now() + Duration::from_secs_f64(seconds);
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    match create_profile(&mut c, &format!("{prefix}-{i}")) {
                        Ok(d) => mine.push(d),
                        Err(e) => {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            break;
                        }
                    }
                }
                latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(mine);
            });
        }
        start.wait();
        began = Instant::now();
    });
    let elapsed = began.elapsed();
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut latencies = latencies.into_inner().unwrap_or_else(|p| p.into_inner());
    latencies.sort();
    Ok(Throughput {
        writes: latencies.len(),
        elapsed,
        latencies,
    })
}

/// What `first_success` saw.
pub struct Probe {
    /// From `since` to the first successful answer.
    pub elapsed: Duration,
    pub tries: usize,
    /// The last failed try's error, with the time it ended, if any failed.
    pub last_failure: Option<String>,
}

/// Tries a write every 10 ms until one succeeds. Each try is a new connection and a new
/// profile name: a try cut off by its timeout may still take effect.
pub fn first_success(
    socket: &Path,
    prefix: &str,
    since: Instant,
    try_timeout: Duration,
    limit: Duration,
) -> Result<Probe> {
    let mut last = String::new();
    for attempt in 1.. {
        let mut c = Client::with_timeout(socket, try_timeout);
        match create_profile(&mut c, &format!("{prefix}-{attempt}")) {
            Ok(_) => {
                return Ok(Probe {
                    elapsed: since.elapsed(),
                    tries: attempt,
                    last_failure: (attempt > 1).then_some(last),
                })
            }
            Err(e) => last = format!("{e} (at {} ms)", since.elapsed().as_millis()),
        }
        if since.elapsed() >= limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("no write succeeded within {limit:?}; last: {last}"))
}
