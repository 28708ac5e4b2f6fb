//! Versioned schema migrations. Each entry upgrades the schema by one version; the version
//! lives in SQLite's `user_version`, so an old database is brought forward on open and a
//! database from a newer cairnd is refused rather than misread.

use rusqlite::Connection;

use super::DbError;

const MIGRATIONS: &[&str] = &[
    // 1: the first schema. Objects are stored as JSON documents keyed by their identity;
    // columns exist only for what is looked up or joined on.
    "CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE images (fingerprint TEXT PRIMARY KEY, data TEXT NOT NULL);
     CREATE TABLE image_aliases (name TEXT PRIMARY KEY, target TEXT NOT NULL, description TEXT NOT NULL DEFAULT '');
     CREATE TABLE profiles (name TEXT PRIMARY KEY, data TEXT NOT NULL);
     CREATE TABLE instances (name TEXT PRIMARY KEY, data TEXT NOT NULL);
     CREATE TABLE snapshots (instance TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
                             PRIMARY KEY (instance, name));
     CREATE TABLE storage_pools (name TEXT PRIMARY KEY, data TEXT NOT NULL);
     CREATE TABLE certificates (fingerprint TEXT PRIMARY KEY, data TEXT NOT NULL);
     CREATE TABLE tokens (secret TEXT PRIMARY KEY, data TEXT NOT NULL);",
    // 2: Raft replication. `raft_applied` holds the position of the last log entry applied
    // (one row), written in the same transaction as the entry's commands, so a re-delivered
    // entry is recognised and skipped. `raft_requests` remembers recent client request ids
    // with their outcome, so a request retried after a leader change is applied once.
    "CREATE TABLE raft_applied (id INTEGER PRIMARY KEY CHECK (id = 1),
                                log_index INTEGER NOT NULL, log_id TEXT NOT NULL,
                                membership TEXT NOT NULL, applied_requests INTEGER NOT NULL);
     CREATE TABLE raft_requests (id TEXT PRIMARY KEY, log_index INTEGER NOT NULL, outcome TEXT);
     CREATE INDEX raft_requests_by_index ON raft_requests (log_index);",
    // 3: cluster members (id = Raft node id, never reused: `cluster_meta.next_member_id`
    // only grows) and pending join tokens.
    "CREATE TABLE cluster_members (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
     CREATE TABLE cluster_join_tokens (name TEXT PRIMARY KEY, data TEXT NOT NULL);
     CREATE TABLE cluster_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 4: managed networks (bridges), as JSON documents like the other objects.
    "CREATE TABLE networks (name TEXT PRIMARY KEY, data TEXT NOT NULL);",
    // 5: custom storage volumes, by pool.
    "CREATE TABLE storage_volumes (pool TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
                                   PRIMARY KEY (pool, name));",
];

pub fn current_version() -> u32 {
    MIGRATIONS.len() as u32
}

pub fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let have: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let want = current_version();
    if have > want {
        return Err(DbError::TooNew { have, want });
    }
    if have == want {
        return Ok(());
    }
    // All pending steps in one transaction: a new database is made with one commit (one
    // fsync, where the first boot of an appliance under emulation paid for each), and a
    // failing step leaves the database as it was.
    let tx = conn.transaction()?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        tx.execute_batch(sql)
            .map_err(|e| DbError::Migration(i as u32 + 1, e.to_string()))?;
    }
    tx.pragma_update(None, "user_version", want)?;
    tx.commit()?;
    Ok(())
}
