//! The daemon's state: one SQLite database in the state dir.
//!
//! Invariant: nothing writes to the database but a typed [`Command`] sent through
//! `Daemon::write`. Standalone that ends in [`Db::apply_unreplicated`]; in a cluster the Raft
//! state machine (`crate::cluster`) applies the committed commands through
//! [`Db::apply_entries`]. Reads go through the query functions here.

mod checkpoint;
mod command;
mod images;
mod instances;
mod members;
mod networks;
mod pools;
mod profiles;
pub mod records;
mod replicated;
mod schema;
mod server_config;
mod snapshots;
mod sql;
mod trust;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};
use serde::de::DeserializeOwned;

pub use command::{Command, Resource};
pub use replicated::{
    AppliedPosition, EntryOutcome, RejectKind, ReplicatedEntry, ReplicatedRequest, RequestOutcome,
};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("encoding a record: {0}")]
    Encode(String),
    /// A command handed to another resource's applier (a bug in `Command::resource`):
    /// refused the same way on every member.
    #[error("{0}")]
    Misrouted(String),
    #[error("decoding a stored record: {0}")]
    Decode(String),
    #[error("applying schema migration {0}: {1}")]
    Migration(u32, String),
    #[error("database schema version {have} is newer than this cairnd knows ({want})")]
    TooNew { have: u32, want: u32 },
    /// The cluster refused the write as invalid (the same on every member).
    #[error("{0}")]
    Invalid(String),
    /// The write could not be committed: no quorum, or this member is stopping. It may
    /// still take effect later.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
}

pub struct Db {
    /// Shared with the background checkpointer, which briefly holds it to finish a
    /// checkpoint (see `checkpoint.rs`).
    conn: Arc<Mutex<Connection>>,
    /// Serializes checkpoints between `conn` and the background checkpointer.
    checkpoint_lock: Arc<checkpoint::CheckpointLock>,
    /// Runs while the database is a cluster member's (see `Db::set_replicated`).
    checkpointer: Mutex<Option<checkpoint::Checkpointer>>,
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let mut conn = Connection::open(path)?;
        // WAL with synchronous=FULL: every acknowledged command is on disk, and readers do
        // not block the writer.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )?;
        schema::migrate(&mut conn)?;
        // Room for every statement the commands use (the default 16 would evict them).
        conn.set_prepared_statement_cache_capacity(256);
        Ok(Db::with(conn))
    }

    pub fn open_in_memory() -> Result<Db, DbError> {
        let mut conn = Connection::open_in_memory()?;
        schema::migrate(&mut conn)?;
        // Room for every statement the commands use (the default 16 would evict them).
        conn.set_prepared_statement_cache_capacity(256);
        Ok(Db::with(conn))
    }

    fn with(conn: Connection) -> Db {
        Db {
            conn: Arc::new(Mutex::new(conn)),
            checkpoint_lock: Arc::default(),
            checkpointer: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied transaction behind
        // (SQLite rolls it back), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies several commands in one transaction: all or none, on this database only.
    ///
    /// Named for what it skips: in a cluster this database is the Raft state machine, and a
    /// command applied here never reaches the other members. Everything else writes through
    /// `Daemon::write`; the only callers are `Daemon::write` itself when standalone, the
    /// first-start seeding in `daemon.rs`, and tests (`tests/layering.rs` checks this).
    pub(crate) fn apply_unreplicated(&self, cmds: &[Command]) -> Result<(), DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for cmd in cmds {
            command::apply(&tx, cmd).map_err(|e| match e {
                DbError::Sqlite(ref s) if is_unique_violation(s) => {
                    DbError::Exists(format!("{cmd:?}").chars().take(120).collect())
                }
                e => e,
            })?;
        }
        tx.commit()?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, sql: &str, key: &[&str]) -> Result<Option<T>, DbError> {
        let conn = self.lock();
        let data: Option<String> = conn
            .query_row(sql, rusqlite::params_from_iter(key.iter()), |r| r.get(0))
            .optional()?;
        data.map(|d| serde_json::from_str(&d).map_err(|e| DbError::Decode(e.to_string())))
            .transpose()
    }

    fn list<T: DeserializeOwned>(&self, sql: &str, key: &[&str]) -> Result<Vec<T>, DbError> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(key.iter()), |r| {
            r.get::<_, String>(0)
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?).map_err(|e| DbError::Decode(e.to_string()))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
