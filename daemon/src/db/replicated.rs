//! Applying replicated log entries. This is the state machine's half of the database: the
//! Raft layer (`crate::cluster`) hands over committed entries in log order, and each batch
//! is applied in one transaction together with the position of the last entry applied, so
//! the database and its applied position never disagree.
//!
//! Deterministic like [`super::Command`]: no clock, no randomness, no I/O but SQLite. An
//! entry at or below the stored position is skipped (a re-delivery after a restart), and a
//! request id already seen returns its first outcome without running again (a client retry
//! after a leader change), so no write is applied twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use super::checkpoint::{durable_checkpoint, Checkpointer, CHECKPOINT_EVERY};
use super::{command, is_unique_violation, schema, Command, Db, DbError};

/// How many log entries a request id is remembered for. A retry arriving later than this
/// would run again; clients give up long before (seconds, not a hundred thousand entries).
const DEDUP_WINDOW: u64 = 100_000;
/// Old request ids are pruned when the applied index crosses a multiple of this.
const PRUNE_EVERY: u64 = 1024;

/// Where the state machine stands: the last log entry applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPosition {
    pub index: u64,
    /// The entry's log id, serialized by the Raft layer (opaque here).
    pub log_id: String,
    /// The last membership applied, serialized by the Raft layer; empty before any.
    pub membership: String,
    /// How many client requests have taken effect so far (duplicates and rejected requests
    /// not counted): a check that no request was applied twice.
    pub applied_requests: u64,
}

/// One committed log entry, in the database's terms.
pub struct ReplicatedEntry<'a> {
    pub index: u64,
    pub log_id: String,
    /// Set when the entry changes the membership.
    pub membership: Option<String>,
    pub requests: Vec<ReplicatedRequest<'a>>,
}

/// A client request: commands that take effect together or not at all.
pub struct ReplicatedRequest<'a> {
    pub id: &'a str,
    pub commands: &'a [Command],
}

/// Why a request's commands were refused. Deterministic: every member refuses it alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectKind {
    NotFound,
    Exists,
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOutcome {
    Applied,
    Rejected { kind: RejectKind, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// The entry was at or below the applied position: already in the database.
    Skipped,
    /// One outcome per request, in order.
    Applied(Vec<RequestOutcome>),
}

fn rejected(cmds: &[Command], e: DbError) -> Result<RequestOutcome, DbError> {
    let what = || {
        format!("{:?}", cmds.first())
            .chars()
            .take(120)
            .collect::<String>()
    };
    let (kind, message) = match e {
        DbError::NotFound(m) => (RejectKind::NotFound, format!("not found: {m}")),
        DbError::Exists(m) => (RejectKind::Exists, format!("already exists: {m}")),
        DbError::Sqlite(ref s) if is_unique_violation(s) => {
            (RejectKind::Exists, format!("already exists: {}", what()))
        }
        DbError::Encode(m) | DbError::Decode(m) | DbError::Misrouted(m) => (RejectKind::Invalid, m),
        // Anything else (I/O, a full disk) is not a property of the command: fail the batch.
        e => return Err(e),
    };
    Ok(RequestOutcome::Rejected { kind, message })
}

fn position(conn: &rusqlite::Connection) -> Result<Option<AppliedPosition>, DbError> {
    Ok(conn
        .prepare_cached(
            "SELECT log_index, log_id, membership, applied_requests FROM raft_applied WHERE id = 1",
        )?
        .query_row([], |r| {
            Ok(AppliedPosition {
                index: r.get::<_, i64>(0)? as u64,
                log_id: r.get(1)?,
                membership: r.get(2)?,
                applied_requests: r.get::<_, i64>(3)? as u64,
            })
        })
        .optional()?)
}

fn apply_request(
    tx: &Transaction<'_>,
    index: u64,
    req: &ReplicatedRequest<'_>,
) -> Result<(RequestOutcome, bool), DbError> {
    // Statements are prepared once per connection: this runs for every request. The id
    // is claimed first; only a duplicate pays for reading the stored outcome.
    let fresh = tx
        .prepare_cached(
            "INSERT INTO raft_requests (id, log_index, outcome) VALUES (?1, ?2, NULL)
             ON CONFLICT(id) DO NOTHING",
        )?
        .execute(params![req.id, index as i64])?
        == 1;
    if !fresh {
        let stored: Option<String> = tx
            .prepare_cached("SELECT outcome FROM raft_requests WHERE id = ?1")?
            .query_row(params![req.id], |r| r.get(0))?;
        let outcome = match stored {
            None => RequestOutcome::Applied,
            Some(s) => serde_json::from_str(&s).map_err(|e| DbError::Decode(e.to_string()))?,
        };
        return Ok((outcome, false));
    }
    // A savepoint per request (inside which the id is already claimed): a refused request
    // leaves no trace, the others stand.
    tx.prepare_cached("SAVEPOINT request")?.execute([])?;
    let mut result = Ok(());
    for cmd in req.commands {
        result = command::apply(tx, cmd);
        if result.is_err() {
            break;
        }
    }
    match result {
        Ok(()) => {
            tx.prepare_cached("RELEASE request")?.execute([])?;
            Ok((RequestOutcome::Applied, true))
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO request; RELEASE request")?;
            let outcome = rejected(req.commands, e)?;
            let stored =
                serde_json::to_string(&outcome).map_err(|e| DbError::Encode(e.to_string()))?;
            tx.prepare_cached("UPDATE raft_requests SET outcome = ?2 WHERE id = ?1")?
                .execute(params![req.id, stored])?;
            Ok((outcome, false))
        }
    }
}

impl Db {
    /// Opens the database of a cluster member (see [`Db::set_replicated`]).
    pub fn open_replicated(path: &Path) -> Result<Db, DbError> {
        let db = Db::open(path)?;
        db.set_replicated()?;
        Ok(db)
    }

    /// Switches the database to a cluster member's rules. Commits are not fsync'd one by
    /// one (`synchronous = NORMAL`): the Raft log is the durable record, and what SQLite
    /// loses in a crash is applied again from the log, since the applied position is
    /// stored in the same transactions. [`Db::write_snapshot`] makes everything durable
    /// before the log behind a snapshot may be purged. WAL checkpoints run in the
    /// background (`checkpoint.rs`), never inside an apply.
    pub fn set_replicated(&self) -> Result<(), DbError> {
        let conn = self.lock();
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        // An in-memory database has no WAL to checkpoint.
        let Some(path) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
            return Ok(());
        };
        let mut checkpointer = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
        if checkpointer.is_none() {
            *checkpointer = Some(Checkpointer::start(
                &path,
                Arc::downgrade(&self.conn),
                self.checkpoint_lock.clone(),
                CHECKPOINT_EVERY,
            )?);
            conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        }
        Ok(())
    }

    /// The last log entry applied, or `None` for a database that never applied one.
    pub fn applied_position(&self) -> Result<Option<AppliedPosition>, DbError> {
        position(&self.lock())
    }

    /// Applies committed entries in one transaction, with the new applied position.
    pub fn apply_entries(
        &self,
        entries: &[ReplicatedEntry<'_>],
    ) -> Result<Vec<EntryOutcome>, DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut pos = position(&tx)?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            if pos.as_ref().is_some_and(|p| entry.index <= p.index) {
                out.push(EntryOutcome::Skipped);
                continue;
            }
            let mut outcomes = Vec::with_capacity(entry.requests.len());
            let mut took_effect = 0;
            for req in &entry.requests {
                let (outcome, applied) = apply_request(&tx, entry.index, req)?;
                took_effect += u64::from(applied);
                outcomes.push(outcome);
            }
            let (membership, before) = match &pos {
                Some(p) => (p.membership.clone(), p.applied_requests),
                None => (String::new(), 0),
            };
            pos = Some(AppliedPosition {
                index: entry.index,
                log_id: entry.log_id.clone(),
                membership: entry.membership.clone().unwrap_or(membership),
                applied_requests: before + took_effect,
            });
            if entry.index % PRUNE_EVERY == 0 && entry.index > DEDUP_WINDOW {
                tx.prepare_cached("DELETE FROM raft_requests WHERE log_index < ?1")?
                    .execute(params![(entry.index - DEDUP_WINDOW) as i64])?;
            }
            out.push(EntryOutcome::Applied(outcomes));
        }
        if let Some(p) = &pos {
            tx.prepare_cached(
                "INSERT INTO raft_applied (id, log_index, log_id, membership, applied_requests)
                 VALUES (1, ?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET log_index = excluded.log_index,
                   log_id = excluded.log_id, membership = excluded.membership,
                   applied_requests = excluded.applied_requests",
            )?
            .execute(params![
                p.index as i64,
                p.log_id,
                p.membership,
                p.applied_requests as i64
            ])?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Writes a consistent copy of the whole database to `path` (which must not exist) and
    /// makes the live database durable up to the same point. Returns the position the copy
    /// holds.
    pub fn write_snapshot(&self, path: &Path) -> Result<Option<AppliedPosition>, DbError> {
        let conn = self.lock();
        let pos = position(&conn)?;
        let target = path
            .to_str()
            .ok_or_else(|| DbError::Encode(format!("snapshot path {path:?} is not UTF-8")))?;
        conn.execute("VACUUM INTO ?1", params![target])?;
        // Copies the WAL into the database file and fsyncs both: what the snapshot holds is
        // now durable in the live database too, so the log behind it can go.
        durable_checkpoint(&conn, &self.checkpoint_lock)?;
        drop(conn);
        let f = std::fs::File::open(path)
            .map_err(|e| DbError::Encode(format!("opening snapshot {path:?}: {e}")))?;
        f.sync_all()
            .map_err(|e| DbError::Encode(format!("syncing snapshot {path:?}: {e}")))?;
        Ok(pos)
    }

    /// Replaces the whole database with the snapshot at `path` (written by
    /// [`Db::write_snapshot`], possibly on another member) in one step, durably.
    pub fn restore_snapshot(&self, path: &Path) -> Result<Option<AppliedPosition>, DbError> {
        let src = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut conn = self.lock();
        {
            use rusqlite::backup::{Backup, StepResult};
            let backup = Backup::new(&src, &mut conn)?;
            // All pages in one step: the destination changes in one transaction.
            while backup.step(-1)? != StepResult::Done {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        schema::migrate(&mut conn)?;
        durable_checkpoint(&conn, &self.checkpoint_lock)?;
        position(&conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str) -> Command {
        Command::SetServerConfig {
            key: key.into(),
            value: Some("v".into()),
        }
    }

    fn entry<'a>(index: u64, requests: Vec<ReplicatedRequest<'a>>) -> ReplicatedEntry<'a> {
        ReplicatedEntry {
            index,
            log_id: format!("id{index}"),
            membership: None,
            requests,
        }
    }

    #[test]
    fn a_redelivered_entry_and_a_repeated_request_apply_once() {
        let db = Db::open_in_memory().unwrap();
        let a = [set("a")];
        let b = [set("b")];
        let first = db
            .apply_entries(&[entry(
                1,
                vec![ReplicatedRequest {
                    id: "r1",
                    commands: &a,
                }],
            )])
            .unwrap();
        assert_eq!(
            first,
            vec![EntryOutcome::Applied(vec![RequestOutcome::Applied])]
        );
        // Entry 1 again (a restart re-delivers it), then request r1 again in entry 2.
        let again = db
            .apply_entries(&[
                entry(
                    1,
                    vec![ReplicatedRequest {
                        id: "r1",
                        commands: &a,
                    }],
                ),
                entry(
                    2,
                    vec![
                        ReplicatedRequest {
                            id: "r1",
                            commands: &a,
                        },
                        ReplicatedRequest {
                            id: "r2",
                            commands: &b,
                        },
                    ],
                ),
            ])
            .unwrap();
        assert_eq!(again[0], EntryOutcome::Skipped);
        let pos = db.applied_position().unwrap().unwrap();
        assert_eq!((pos.index, pos.log_id.as_str()), (2, "id2"));
        assert_eq!(pos.applied_requests, 2);
    }

    #[test]
    fn a_refused_request_leaves_no_trace_and_its_outcome_is_remembered() {
        let db = Db::open_in_memory().unwrap();
        let bad = [
            set("half"),
            Command::DeleteProfile {
                name: "missing".into(),
            },
        ];
        let out = db
            .apply_entries(&[entry(
                1,
                vec![ReplicatedRequest {
                    id: "r",
                    commands: &bad,
                }],
            )])
            .unwrap();
        let EntryOutcome::Applied(o) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(matches!(
            o[0],
            RequestOutcome::Rejected {
                kind: RejectKind::NotFound,
                ..
            }
        ));
        assert!(db.server_config().unwrap().is_empty());
        let retry = db
            .apply_entries(&[entry(
                2,
                vec![ReplicatedRequest {
                    id: "r",
                    commands: &bad,
                }],
            )])
            .unwrap();
        assert_eq!(retry, out);
        assert_eq!(db.applied_position().unwrap().unwrap().applied_requests, 0);
    }

    #[test]
    fn a_snapshot_restores_the_database_and_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let src = Db::open_replicated(&dir.path().join("a.db")).unwrap();
        let a = [set("a")];
        src.apply_entries(&[entry(
            7,
            vec![ReplicatedRequest {
                id: "r",
                commands: &a,
            }],
        )])
        .unwrap();
        let snap = dir.path().join("snap.db");
        let pos = src.write_snapshot(&snap).unwrap();
        let dst = Db::open_replicated(&dir.path().join("b.db")).unwrap();
        dst.apply_entries(&[entry(1, vec![])]).unwrap();
        assert_eq!(dst.restore_snapshot(&snap).unwrap(), pos);
        assert!(dst.server_config().unwrap().contains_key("a"));
    }
}
