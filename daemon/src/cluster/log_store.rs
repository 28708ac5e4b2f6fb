//! The durable Raft log: one append-only file of checksummed records, fsync'd before
//! anything is acknowledged, with every entry also kept in memory until it is purged
//! behind a snapshot.
//!
//! A record is `[len: u32 LE][crc32: u32 LE][JSON]`. The file is replayed on open; a torn
//! tail (a record cut short or failing its checksum, i.e. one that was never acknowledged)
//! is cut off. One writer thread does all file I/O: it takes every write queued since its
//! last fsync, writes them at once and fsyncs once (group commit), then acknowledges them
//! all; a group that nobody waits for (only committed hints and purges) is written without
//! an fsync, which the next acknowledged group's covers. Each time the file grew by a threshold (64 MiB by default) it is rewritten with only
//! the live state (write to a temporary file, fsync, rename, fsync the directory).
//!
//! The file is kept zero-filled ahead of the last record (in steps of a sixteenth of the
//! threshold): writing inside the file's length, on blocks already written, lets
//! `fdatasync` flush just the data, without the inode (and on ext4 a journal commit) that
//! a growing file needs every time. A zero length word therefore ends the log; on open,
//! whatever follows the intact prefix (a torn record, or later ones written but never
//! acknowledged) is zeroed again so it can never be mistaken for records.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::RangeBounds;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The log file's name in the member's directory.
pub const LOG_FILE: &str = "raft.log";
/// The default size past which the log file is compacted.
pub const DEFAULT_COMPACT_BYTES: u64 = 64 << 20;
/// Records larger than this are taken for corruption, not for data.
const MAX_RECORD: u32 = 1 << 30;

#[derive(Serialize, Deserialize)]
enum Record {
    Vote(Vote),
    Committed(Option<LogId>),
    Entries(Vec<Entry>),
    /// Removes the entries at this index and after (a conflicting suffix).
    TruncateFrom(u64),
    /// Removes the entries up to and including this log id (they are in a snapshot).
    PurgeUpTo(LogId),
}

#[derive(Default)]
struct Mem {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

impl Mem {
    fn apply(&mut self, rec: Record) {
        match rec {
            Record::Vote(v) => self.vote = Some(v),
            Record::Committed(c) => self.committed = c,
            Record::Entries(es) => {
                for e in es {
                    self.entries.insert(e.log_id.index, e);
                }
            }
            Record::TruncateFrom(i) => drop(self.entries.split_off(&i)),
            Record::PurgeUpTo(id) => {
                self.entries = self.entries.split_off(&(id.index + 1));
                self.purged = Some(id);
            }
        }
    }

    /// The whole live state as records, for compaction.
    fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        if let Some(v) = self.vote {
            out.push(Record::Vote(v));
        }
        if let Some(p) = self.purged {
            out.push(Record::PurgeUpTo(p));
        }
        out.push(Record::Committed(self.committed));
        out.push(Record::Entries(self.entries.values().cloned().collect()));
        out
    }
}

fn encode(rec: &Record, buf: &mut Vec<u8>) -> io::Result<()> {
    let body = serde_json::to_vec(rec).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or_else(|| io::Error::other("log record too large"))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    buf.extend_from_slice(&body);
    Ok(())
}

/// Reads the records of `data`; returns the state and the length of the intact prefix.
fn replay(data: &[u8]) -> io::Result<(Mem, usize)> {
    let mut mem = Mem::default();
    let mut at = 0;
    while data.len() - at >= 8 {
        let word = |o: usize| u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
        let (len, crc) = (word(at), word(at + 4));
        let end = at + 8 + len as usize;
        if len == 0 {
            break; // the zero-filled space ahead of the last record
        }
        if len > MAX_RECORD || end > data.len() || crc32fast::hash(&data[at + 8..end]) != crc {
            break; // a torn write: never acknowledged
        }
        let rec: Record = serde_json::from_slice(&data[at + 8..end]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("log record at byte {at}: {e}"),
            )
        })?;
        mem.apply(rec);
        at = end;
    }
    Ok((mem, at))
}

type Ack = Box<dyn FnOnce(io::Result<()>) + Send>;

struct Op {
    bytes: Vec<u8>,
    ack: Option<Ack>,
}

struct Shared {
    mem: Mutex<Mem>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Mem> {
        // The state is updated in single assignments; a panic elsewhere cannot tear it.
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The log store handed to openraft. Cheap to clone readers from.
pub struct LogStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
}

/// A reader of the in-memory log, used by replication tasks concurrently.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// Writes zeros over `from..to` of `file` (real blocks, not a hole or unwritten extents,
/// which a later write would have to convert in the metadata).
fn zero_fill(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = CHUNK.min(to - at) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes the log file's exclusive lock, so two processes (or a member restarted before its
/// old writer finished) never append to one log. Waits a few seconds for a holder that is
/// shutting down.
fn lock_exclusive(file: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    for _ in 0..500 {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        format!("raft log {path:?} is in use by another process"),
    ))
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying what is on disk.
    pub fn open(dir: &Path, compact_bytes: u64) -> io::Result<LogStore> {
        // Owner-only: the log carries every write, secrets included.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)?;
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        lock_exclusive(&file, &path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let (mem, intact) = replay(&data)?;
        if let Some(last) = data[intact..].iter().rposition(|b| *b != 0) {
            tracing::warn!(
                "raft log {path:?}: clearing a torn tail of {} bytes",
                last + 1
            );
            file.write_all_at(&vec![0; last + 1], intact as u64)?;
            file.sync_all()?;
        }
        sync_dir(dir)?;
        let compact_every = compact_bytes.max(1 << 16);
        let shared = Arc::new(Shared {
            mem: Mutex::new(mem),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            file,
            path,
            size: intact as u64,
            allocated: data.len() as u64,
            prealloc: (compact_every / 16).clamp(4096, 4 << 20),
            compact_at: compact_every,
            compact_every,
            shared: shared.clone(),
            broken: None,
        };
        std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(LogStore { shared, tx })
    }

    /// Updates the memory state and queues the record, in one step so the file sees
    /// records in the order the state changed.
    fn submit(&self, rec: Record, ack: Option<Ack>) -> io::Result<()> {
        let mut bytes = Vec::new();
        encode(&rec, &mut bytes)?;
        let mut mem = self.shared.lock();
        mem.apply(rec);
        self.tx
            .send(Op { bytes, ack })
            .map_err(|_| io::Error::other("raft log writer stopped"))
    }

    /// Queues the record and waits until it is on disk.
    async fn submit_durable(&self, rec: Record) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ack: Ack = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.submit(rec, Some(ack))?;
        rx.await
            .map_err(|_| io::Error::other("raft log writer stopped"))?
    }
}

struct Writer {
    file: File,
    path: PathBuf,
    /// Where the next record goes: the end of the intact records.
    size: u64,
    /// The file's length; the bytes from `size` to here are zeros.
    allocated: u64,
    /// How far ahead of `size` the file is zero-filled when it has to grow.
    prealloc: u64,
    compact_at: u64,
    /// Growth between rewrites.
    compact_every: u64,
    shared: Arc<Shared>,
    /// Set after a failed write or fsync: the file's state is unknown, so nothing more is
    /// acknowledged (openraft stops the member on the error).
    broken: Option<String>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            while let Ok(op) = rx.try_recv() {
                ops.push(op);
            }
            // Records nobody waits for (the committed hint, purges) are written but not
            // fsync'd on their own: the next acknowledged write's fsync covers them, and a
            // crash before it loses only hints that are re-derived.
            let sync = ops.iter().any(|o| o.ack.is_some());
            let result = self.write(&mut ops, sync);
            for op in ops {
                if let Some(ack) = op.ack {
                    ack(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    });
                }
            }
            if result.is_ok() && self.size > self.compact_at {
                if let Err(e) = self.compact() {
                    tracing::error!("compacting raft log {:?}: {e}", self.path);
                    self.broken = Some(format!("compaction failed: {e}"));
                }
            }
        }
    }

    fn write(&mut self, ops: &mut [Op], sync: bool) -> io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(io::Error::other(format!("raft log unusable: {why}")));
        }
        let mut buf = Vec::with_capacity(ops.iter().map(|o| o.bytes.len()).sum());
        for op in ops.iter_mut() {
            buf.append(&mut op.bytes);
        }
        let result = self.write_at_end(&buf, sync);
        match &result {
            Ok(()) => self.size += buf.len() as u64,
            Err(e) => self.broken = Some(e.to_string()),
        }
        result
    }

    /// Writes `buf` after the last record, and makes it durable with everything before it
    /// when `sync`; grows the zero-filled space first when it does not fit (durably, even
    /// without `sync`: the file's length must never lag behind records written in it).
    fn write_at_end(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        let end = self.size + buf.len() as u64;
        let grown = end > self.allocated;
        if grown {
            let to = end.div_ceil(self.prealloc) * self.prealloc + self.prealloc;
            zero_fill(&self.file, self.allocated, to)?;
            self.allocated = to;
        }
        self.file.write_all_at(buf, self.size)?;
        if grown {
            self.file.sync_all()
        } else if sync {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }

    /// Rewrites the file with only the live state. Records queued meanwhile are written
    /// after it again; replaying them over a state that already holds them changes nothing
    /// (each sets or removes entries by index), so the result is the same.
    fn compact(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        for rec in self.shared.lock().records() {
            encode(&rec, &mut buf)?;
        }
        let tmp = self.path.with_extension("compacting");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&tmp)?;
        lock_exclusive(&f, &tmp)?;
        f.set_len(0)?;
        f.write_all_at(&buf, 0)?;
        let allocated = (buf.len() as u64).div_ceil(self.prealloc) * self.prealloc + self.prealloc;
        zero_fill(&f, buf.len() as u64, allocated)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        self.file = f;
        self.size = buf.len() as u64;
        self.allocated = allocated;
        // The next rewrite after as much growth again, so a large live log is not rewritten
        // on every write.
        self.compact_at = self.size.saturating_add(self.compact_every);
        tracing::debug!("raft log {:?} compacted to {} bytes", self.path, self.size);
        Ok(())
    }
}

fn read_entries<RB: RangeBounds<u64>>(shared: &Shared, range: RB) -> Vec<Entry> {
    shared
        .lock()
        .entries
        .range(range)
        .map(|(_, e)| e.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_entries(&self.shared, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_entries(&self.shared, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let mem = self.shared.lock();
        let last = mem.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: mem.purged,
            last_log_id: last.or(mem.purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.submit_durable(Record::Vote(*vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.shared.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint for restarts (re-apply up to here at once); losing it is harmless.
        self.submit(Record::Committed(committed), None)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.shared.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let ack: Ack = Box::new(move |r| callback.log_io_completed(r));
        self.submit(Record::Entries(entries), Some(ack))
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.submit_durable(Record::TruncateFrom(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Not waited for: if it is lost in a crash the entries are purged again later.
        self.submit(Record::PurgeUpTo(log_id), None)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn replay_stops_at_a_torn_tail_and_keeps_the_prefix() {
        let mut buf = Vec::new();
        encode(&Record::Entries(vec![entry(1, 1), entry(1, 2)]), &mut buf).unwrap();
        let good = buf.len();
        encode(&Record::Entries(vec![entry(1, 3)]), &mut buf).unwrap();
        buf.truncate(buf.len() - 3);
        let (mem, intact) = replay(&buf).unwrap();
        assert_eq!(intact, good);
        assert_eq!(mem.entries.keys().copied().collect::<Vec<_>>(), vec![1, 2]);

        // A flipped bit in the last record is a torn write too.
        let mut buf2 = buf[..good].to_vec();
        encode(&Record::Entries(vec![entry(1, 3)]), &mut buf2).unwrap();
        let last = buf2.len() - 2;
        buf2[last] ^= 0x40;
        assert_eq!(replay(&buf2).unwrap().1, good);
    }

    #[tokio::test]
    async fn a_compacted_log_reopens_with_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), 1 << 16).unwrap();
        let put = |from, to| {
            for i in from..=to {
                store
                    .submit(Record::Entries(vec![entry(1, i)]), None)
                    .unwrap();
            }
        };
        put(1, 2000);
        store
            .submit(Record::PurgeUpTo(entry(1, 1990).log_id), None)
            .unwrap();
        // More than the threshold after the purge: at least one rewrite drops 1..=1990.
        put(2001, 2800);
        let vote = Vote::new(3, 2);
        store.submit_durable(Record::Vote(vote)).await.unwrap();
        // A rewrite runs after the acknowledgement; the next write waits for it.
        store.submit_durable(Record::Committed(None)).await.unwrap();
        let written = 2800 * 100;
        let size = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        assert!(size < written / 2, "log not compacted: {size} bytes");
        drop(store);

        let mut again = LogStore::open(dir.path(), 1 << 16).unwrap();
        let state = again.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(1, 1990).log_id));
        assert_eq!(state.last_log_id, Some(entry(1, 2800).log_id));
        assert_eq!(again.read_vote().await.unwrap(), Some(vote));
        let left = again.try_get_log_entries(0..).await.unwrap();
        assert_eq!(left.len(), 810);
        assert_eq!(left[0].log_id, entry(1, 1991).log_id);
    }

    #[test]
    fn replay_ends_at_the_zero_filled_space() {
        let mut buf = Vec::new();
        encode(&Record::Entries(vec![entry(1, 1)]), &mut buf).unwrap();
        let good = buf.len();
        buf.resize(good + 4096, 0);
        let (mem, intact) = replay(&buf).unwrap();
        assert_eq!(intact, good);
        assert_eq!(mem.entries.len(), 1);
    }

    #[tokio::test]
    async fn a_torn_record_in_the_preallocated_space_is_cleared_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let store = LogStore::open(dir.path(), 1 << 16).unwrap();
        for i in 1..=3 {
            store
                .submit_durable(Record::Entries(vec![entry(1, i)]))
                .await
                .unwrap();
        }
        drop(store);
        let data = std::fs::read(&path).unwrap();
        let end = replay(&data).unwrap().1;
        assert!(
            data.len() > end,
            "no zero-filled space ahead of the records"
        );
        assert!(data[end..].iter().all(|b| *b == 0));

        // A record cut short, and one after it that reached the disk although the one
        // before did not: neither was acknowledged.
        let mut torn = Vec::new();
        encode(&Record::Entries(vec![entry(1, 4)]), &mut torn).unwrap();
        let cut = torn.len() - 5;
        let mut later = Vec::new();
        encode(&Record::Entries(vec![entry(1, 5)]), &mut later).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&torn[..cut], end as u64).unwrap();
        f.write_all_at(&later, (end + torn.len()) as u64).unwrap();
        drop(f);

        let store = LogStore::open(dir.path(), 1 << 16).unwrap();
        let data = std::fs::read(&path).unwrap();
        assert!(data[end..].iter().all(|b| *b == 0), "torn tail not cleared");
        store
            .submit_durable(Record::Entries(vec![entry(2, 4)]))
            .await
            .unwrap();
        drop(store);
        let mut again = LogStore::open(dir.path(), 1 << 16).unwrap();
        let ids: Vec<_> = again
            .try_get_log_entries(0..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id)
            .collect();
        let want: Vec<_> = [entry(1, 1), entry(1, 2), entry(1, 3), entry(2, 4)]
            .iter()
            .map(|e| e.log_id)
            .collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn truncate_and_purge_replay_in_order() {
        let mut mem = Mem::default();
        let mut buf = Vec::new();
        for rec in [
            Record::Entries((1..=5).map(|i| entry(1, i)).collect()),
            Record::TruncateFrom(4),
            Record::Entries(vec![entry(2, 4)]),
            Record::PurgeUpTo(entry(1, 2).log_id),
        ] {
            encode(&rec, &mut buf).unwrap();
        }
        let (replayed, _) = replay(&buf).unwrap();
        for rec in replayed.records() {
            mem.apply(rec);
        }
        let ids: Vec<_> = mem.entries.values().map(|e| e.log_id).collect();
        assert_eq!(ids, vec![entry(1, 3).log_id, entry(2, 4).log_id]);
        assert_eq!(mem.purged, Some(entry(1, 2).log_id));
    }
}
