//! The state machine: committed entries applied to the daemon's SQLite database.
//!
//! Invariant: applying is deterministic — no clock, no randomness, no I/O but the SQLite
//! handle ([`Db::apply_entries`]), so every member that applies the same log holds the
//! same database. The applied position is written in the same transaction as the entry's
//! commands, so an entry re-delivered after a restart is skipped, never applied twice.
//!
//! Snapshots are SQLite copies of the whole database (`VACUUM INTO`) kept as files in the
//! member's `snapshots/` directory next to a JSON file with their metadata; a lagging or
//! new member receives the file whole and the database is replaced by it in one step
//! (SQLite's backup API).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};

use super::types::{
    Batch, BatchOutcome, Entry, LogId, Snapshot, SnapshotFile, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::db::{AppliedPosition, Db, EntryOutcome, ReplicatedEntry, ReplicatedRequest};

/// The state machine handed to openraft; also its own snapshot builder (a clone).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Db>,
    dir: PathBuf,
    current: Arc<Mutex<Option<SnapshotMeta>>>,
    /// The index of the last entry in the database, published as soon as its transaction
    /// commits: waiters for "applied here" are woken directly, without a trip through the
    /// Raft task and a copy of its metrics per wait.
    applied: Arc<watch::Sender<u64>>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn blocking_err(e: tokio::task::JoinError) -> StorageError {
    StorageIOError::write_state_machine(&io_err(e)).into()
}

fn decode_position(
    pos: Option<AppliedPosition>,
) -> Result<(Option<LogId>, StoredMembership), io::Error> {
    let Some(pos) = pos else {
        return Ok((None, StoredMembership::default()));
    };
    let log_id = serde_json::from_str(&pos.log_id).map_err(io_err)?;
    let membership = if pos.membership.is_empty() {
        StoredMembership::default()
    } else {
        serde_json::from_str(&pos.membership).map_err(io_err)?
    };
    Ok((Some(log_id), membership))
}

fn snapshot_paths(dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("snapshot-{id}.db")),
        dir.join(format!("snapshot-{id}.json")),
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl StateMachine {
    /// Opens the state machine over `db`, with snapshots in `dir`. If the newest snapshot
    /// is ahead of the database (a crash while installing it), the database is restored
    /// from it first.
    pub fn open(db: Arc<Db>, dir: &Path) -> io::Result<StateMachine> {
        // Owner-only: snapshots are whole copies of the database, secrets included.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)?;
        let mut newest: Option<SnapshotMeta> = None;
        for ent in std::fs::read_dir(dir)? {
            let path = ent?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("building-") || name.starts_with("receiving-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if name.starts_with("snapshot-") && name.ends_with(".json") {
                let meta: SnapshotMeta =
                    serde_json::from_slice(&std::fs::read(&path)?).map_err(io_err)?;
                if newest
                    .as_ref()
                    .is_none_or(|n| meta.last_log_id > n.last_log_id)
                {
                    newest = Some(meta);
                }
            }
        }
        let sm = StateMachine {
            db,
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(None)),
            applied: Arc::new(watch::channel(0).0),
        };
        if let Some(meta) = newest {
            let (applied, _) = decode_position(sm.db.applied_position().map_err(io_err)?)?;
            if meta.last_log_id > applied {
                let (db_path, _) = snapshot_paths(dir, &meta.snapshot_id);
                sm.db.restore_snapshot(&db_path).map_err(io_err)?;
            }
            let mut current = sm.current.lock().unwrap_or_else(|p| p.into_inner());
            sm.set_current(&mut current, meta)?;
        }
        let (applied, _) = decode_position(sm.db.applied_position().map_err(io_err)?)?;
        sm.publish(applied.map(|id| id.index));
        Ok(sm)
    }

    /// Follows the index of the last entry applied to the database.
    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn publish(&self, index: Option<u64>) {
        if let Some(index) = index {
            // Never backwards: a snapshot installed behind what a waiter already saw
            // cannot un-apply what that waiter was told.
            self.applied.send_if_modified(|cur| {
                let newer = index > *cur;
                if newer {
                    *cur = index;
                }
                newer
            });
        }
    }

    /// Makes `meta` the current snapshot (unless a newer one is) and removes the files of
    /// the others. Runs under the lock on `current`, which [`StateMachine::keep`] and
    /// `get_current_snapshot` hold too, so a snapshot's files never go while it is filed or
    /// opened.
    fn set_current(
        &self,
        current: &mut Option<SnapshotMeta>,
        meta: SnapshotMeta,
    ) -> io::Result<()> {
        let meta = match current.take() {
            Some(cur) if cur.last_log_id > meta.last_log_id => cur,
            _ => meta,
        };
        let (keep_db, keep_meta) = snapshot_paths(&self.dir, &meta.snapshot_id);
        *current = Some(meta);
        for ent in std::fs::read_dir(&self.dir)? {
            let path = ent?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("snapshot-") && path != keep_db && path != keep_meta {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// Files the snapshot database at `from` under its id, with its metadata, durably, and
    /// returns it opened.
    fn keep(&self, from: &Path, meta: &SnapshotMeta) -> io::Result<SnapshotFile> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let (path, meta_path) = snapshot_paths(&self.dir, &meta.snapshot_id);
        std::fs::rename(from, &path)?;
        let tmp = meta_path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(meta).map_err(io_err)?)?;
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &meta_path)?;
        sync_dir(&self.dir)?;
        let file = File::open(&path)?;
        self.set_current(&mut current, meta.clone())?;
        Ok(SnapshotFile { path, file })
    }

    fn open_snapshot(&self, meta: SnapshotMeta) -> io::Result<Snapshot> {
        let (path, _) = snapshot_paths(&self.dir, &meta.snapshot_id);
        let file = File::open(&path)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile { path, file }),
        })
    }
}

/// Turns an openraft entry into the database's terms.
fn replicated(entry: &Entry) -> Result<ReplicatedEntry<'_>, io::Error> {
    let log_id = serde_json::to_string(&entry.log_id).map_err(io_err)?;
    let (membership, requests) = match &entry.payload {
        EntryPayload::Blank => (None, Vec::new()),
        EntryPayload::Normal(Batch { requests }) => (
            None,
            requests
                .iter()
                .map(|r| ReplicatedRequest {
                    id: &r.id,
                    commands: &r.commands,
                })
                .collect(),
        ),
        EntryPayload::Membership(m) => {
            let stored = StoredMembership::new(Some(entry.log_id), m.clone());
            (
                Some(serde_json::to_string(&stored).map_err(io_err)?),
                Vec::new(),
            )
        }
    };
    Ok(ReplicatedEntry {
        index: entry.log_id.index,
        log_id,
        membership,
        requests,
    })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let pos = self
            .db
            .applied_position()
            .map_err(|e| StorageIOError::read_state_machine(&io_err(e)))?;
        decode_position(pos).map_err(|e| StorageIOError::read_state_machine(&e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.db.clone();
        let last = entries.last().map(|e| e.log_id);
        let outcomes = tokio::task::spawn_blocking(move || -> io::Result<Vec<EntryOutcome>> {
            let batch = entries
                .iter()
                .map(replicated)
                .collect::<Result<Vec<_>, _>>()?;
            db.apply_entries(&batch).map_err(io_err)
        })
        .await
        .map_err(blocking_err)?
        .map_err(|e| -> StorageError {
            match last {
                Some(id) => StorageIOError::apply(id, &e).into(),
                None => StorageIOError::write_state_machine(&e).into(),
            }
        })?;
        self.publish(last.map(|id| id.index));
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                EntryOutcome::Skipped => BatchOutcome::default(),
                EntryOutcome::Applied(outcomes) => BatchOutcome { outcomes },
            })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let path = self
            .dir
            .join(format!("receiving-{}.db", uuid::Uuid::new_v4().simple()));
        let file = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(&path)
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(SnapshotFile { path, file }))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let sm = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let SnapshotFile { path, file } = *snapshot;
            file.sync_all()?;
            drop(file);
            let pos = sm.db.restore_snapshot(&path).map_err(io_err)?;
            let (applied, _) = decode_position(pos)?;
            if applied != meta.last_log_id {
                return Err(io_err(format!(
                    "snapshot {} holds log position {applied:?}, its metadata says {:?}",
                    meta.snapshot_id, meta.last_log_id
                )));
            }
            sm.keep(&path, &meta)?;
            sm.publish(applied.map(|id| id.index));
            Ok(())
        })
        .await
        .map_err(blocking_err)?
        .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.clone() {
            None => Ok(None),
            Some(meta) => self
                .open_snapshot(meta)
                .map(Some)
                .map_err(|e| StorageIOError::read_snapshot(None, &e).into()),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let sm = self.clone();
        tokio::task::spawn_blocking(move || -> io::Result<Snapshot> {
            let tmp = sm
                .dir
                .join(format!("building-{}.db", uuid::Uuid::new_v4().simple()));
            let pos = sm.db.write_snapshot(&tmp).map_err(io_err)?;
            let (last_log_id, last_membership) = decode_position(pos)?;
            let snapshot_id = match last_log_id {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term,
                    id.index,
                    uuid::Uuid::new_v4().simple()
                ),
                None => format!("0-0-{}", uuid::Uuid::new_v4().simple()),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            };
            let file = sm.keep(&tmp, &meta)?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(file),
            })
        })
        .await
        .map_err(blocking_err)?
        .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}
