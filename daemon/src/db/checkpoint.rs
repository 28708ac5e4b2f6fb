//! WAL checkpoints of a cluster member's database, kept off the apply path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, so
//! every thousandth page or so one apply paid for copying the whole WAL into the database
//! file and two fsyncs: the slowest commits of the replicated write path. A replicated
//! database runs with `wal_autocheckpoint = 0` instead, and a background thread with its
//! own connection checkpoints every [`CHECKPOINT_EVERY`].
//!
//! A PASSIVE checkpoint neither waits for nor blocks the applying connection, but under a
//! steady stream of commits it never catches up with the WAL's end, and SQLite restarts
//! the WAL from its start only when a checkpoint has copied all of it: the WAL then grows
//! without end, and every page lookup searches more of its index (throughput fell by
//! two thirds in the benchmark). So each round is two passes: the bulk is copied without
//! any lock, then, holding the database's connection lock for a moment (no apply runs),
//! the few frames committed meanwhile; the next commit starts the WAL over.
//!
//! Checkpoints that must be durable before the Raft log behind them is purged (snapshots)
//! go through [`durable_checkpoint`], serialized with the background one by a shared lock:
//! SQLite refuses a second checkpointer outright, without waiting.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::DbError;

/// How often the background thread checkpoints. Each round holds the applying connection
/// for the second pass's two fsyncs (a few ms under load): every 100 ms that was seen in
/// the benchmark's p99 (35 ms), every 500 ms it was not. The WAL stays below what half a
/// second of commits writes (about 30 MiB at the benchmark's peak).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// How long a durable checkpoint retries while readers hold old snapshots of the WAL.
const DURABLE_RETRY_FOR: Duration = Duration::from_secs(5);

/// Held while a checkpoint runs on any connection of the database.
#[derive(Default)]
pub struct CheckpointLock(Mutex<()>);

impl CheckpointLock {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // Guards no data; a panic while holding it leaves nothing torn.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Copies the whole WAL into the database file and fsyncs both, on `conn`. Fails unless
/// the checkpoint completed.
pub fn durable_checkpoint(conn: &Connection, lock: &CheckpointLock) -> Result<(), DbError> {
    let _held = lock.lock();
    let started = std::time::Instant::now();
    loop {
        // The first column is 1 when the checkpoint could not complete (SQLite reports
        // that in the row, not as an error).
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        if started.elapsed() > DURABLE_RETRY_FOR {
            return Err(DbError::Unavailable(format!(
                "WAL checkpoint still blocked after {DURABLE_RETRY_FOR:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// The background checkpoint thread; stopped and joined on drop.
pub struct Checkpointer {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the WAL of the database at `path` every `every`; `main` is the
    /// connection that writes it.
    pub fn start(
        path: &Path,
        main: Weak<Mutex<Connection>>,
        lock: Arc<CheckpointLock>,
        every: Duration,
    ) -> Result<Checkpointer, DbError> {
        let conn = Connection::open(path)?;
        let stop = Arc::new(Stop::default());
        let thread = {
            let stop = stop.clone();
            let path = path.to_path_buf();
            std::thread::Builder::new()
                .name("db-checkpoint".into())
                .spawn(move || {
                    let ckpt = Round { conn, main, lock };
                    run(&ckpt, &path, &stop, every)
                })
                .map_err(|e| DbError::Unavailable(format!("starting the checkpointer: {e}")))?
        };
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

struct Round {
    conn: Connection,
    main: Weak<Mutex<Connection>>,
    lock: Arc<CheckpointLock>,
}

impl Round {
    /// One PASSIVE checkpoint; how many frames the WAL held when it began (all of them
    /// are in the database file when it returns without error).
    fn passive(&self) -> Result<i64, rusqlite::Error> {
        let _held = self.lock.lock();
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
    }

    fn run(&self) -> Result<(), rusqlite::Error> {
        if self.passive()? <= 0 {
            return Ok(()); // an empty WAL (restarted by the last round), or not WAL at all
        }
        let Some(main) = self.main.upgrade() else {
            return Ok(());
        };
        let _writer = main.lock().unwrap_or_else(|p| p.into_inner());
        self.passive().map(drop)
    }
}

fn run(round: &Round, path: &Path, stop: &Stop, every: Duration) {
    loop {
        {
            let stopped = stop.stopped.lock().unwrap_or_else(|p| p.into_inner());
            let (stopped, _) = stop
                .wake
                .wait_timeout_while(stopped, every, |s| !*s)
                .unwrap_or_else(|p| p.into_inner());
            if *stopped {
                return;
            }
        }
        if let Err(e) = round.run() {
            // Not fatal: the WAL only grows until a later checkpoint succeeds.
            tracing::warn!("checkpointing {path:?}: {e}");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self.stop.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Round;
    use crate::db::{Command, Db, ReplicatedEntry, ReplicatedRequest};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// The WAL header's checkpoint sequence number, which SQLite increments each time a
    /// writer starts the WAL over from its beginning.
    fn wal_restarts(wal: &std::path::Path) -> u32 {
        let header = std::fs::read(wal).unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    fn wait_for(count: &AtomicU64, at_least: u64) {
        let started = Instant::now();
        while count.load(Ordering::SeqCst) < at_least {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the writer stalled"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    // Rounds are driven by the test, not the background thread's clock, so a loaded
    // machine only makes the test slower, never wrong.
    #[test]
    fn the_wal_starts_over_under_steady_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = Db::open(&path).unwrap();
        db.lock()
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;")
            .unwrap();
        let round = Round {
            conn: rusqlite::Connection::open(&path).unwrap(),
            main: Arc::downgrade(&db.conn),
            lock: db.checkpoint_lock.clone(),
        };
        let commits = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let rounds = 3;
        std::thread::scope(|s| {
            s.spawn(|| {
                let cmds = [Command::SetServerConfig {
                    key: "k".into(),
                    value: Some("v".into()),
                }];
                let mut index = 0;
                while !stop.load(Ordering::SeqCst) {
                    index += 1;
                    let id = format!("r{}", index % 1000);
                    let entry = ReplicatedEntry {
                        index,
                        log_id: format!("id{index}"),
                        membership: None,
                        requests: vec![ReplicatedRequest {
                            id: &id,
                            commands: &cmds,
                        }],
                    };
                    db.apply_entries(&[entry]).unwrap();
                    commits.store(index, Ordering::SeqCst);
                }
            });
            wait_for(&commits, 500);
            for _ in 0..rounds {
                round.run().unwrap();
                // The commit after a completed checkpoint is the one that starts over.
                let now = commits.load(Ordering::SeqCst);
                wait_for(&commits, now + 50);
            }
            stop.store(true, Ordering::SeqCst);
        });
        // A PASSIVE checkpoint alone, racing the writer, would never have copied the
        // whole WAL: the sequence number would not have moved.
        let restarts = wal_restarts(&dir.path().join("state.db-wal"));
        assert!(
            restarts >= rounds,
            "the WAL started over {restarts} times in {rounds} rounds"
        );
    }
}
