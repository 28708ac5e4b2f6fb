//! Streams in and out of zfs: copies within a pool (`zfs send | zfs receive`) and the
//! framed streams an instance travels in between members.

use super::{ZfsPool, MIGRATE};
use crate::runner;
use crate::storage::wire;
use crate::storage::{StorageDriver, StorageError};
use std::ffi::OsStr;

impl ZfsPool {
    /// Sends `from` (its `snapshots`, oldest first, then its current state) to the new
    /// dataset `to`: full independent copies, which is Incus's `zfs.clone_copy=false`.
    pub(super) fn send_copy(
        &self,
        from: &str,
        snapshots: &[String],
        to: &str,
    ) -> Result<(), StorageError> {
        if self.exists(to) {
            return Err(StorageError::Invalid(
                self.name.clone(),
                format!("dataset {to} already exists"),
            ));
        }
        let tmp = format!("copy-{}", std::process::id());
        let now = format!("{from}@{tmp}");
        self.zfs(format!("snapshotting {from}"), &["snapshot", &now])?;
        // Only the snapshots asked for, in the order zfs made them (an incremental stream
        // needs its base to be older).
        let wanted: Vec<String> = self
            .snapshots_of(from)?
            .into_iter()
            .filter(|s| snapshots.contains(s))
            .chain(std::iter::once(tmp.clone()))
            .collect();
        let sent = (|| {
            let mut prev: Option<&String> = None;
            for s in &wanted {
                let full = format!("{from}@{s}");
                let base = prev.map(|p| format!("@{p}"));
                let mut send: Vec<&OsStr> = vec!["send".as_ref()];
                if let Some(b) = &base {
                    send.push("-i".as_ref());
                    send.push(b.as_ref());
                }
                send.push(full.as_ref());
                let mut recv: Vec<&OsStr> = vec!["receive".as_ref()];
                if prev.is_some() {
                    recv.push("-F".as_ref());
                }
                recv.push(to.as_ref());
                runner::pipe(("zfs", &send), ("zfs", &recv))
                    .map_err(|e| self.run_error(format!("sending {full} to {to}"), e))?;
                prev = Some(s);
            }
            self.zfs(
                format!("removing {to}@{tmp}"),
                &["destroy", &format!("{to}@{tmp}")],
            )
            .map(|_| ())
        })();
        let _ = self.zfs(format!("removing {now}"), &["destroy", &now]);
        if sent.is_err() {
            let _ = self.destroy_ds(to);
        }
        sent
    }

    /// Sends one snapshot's content to the new dataset `to`, without the snapshot.
    pub(super) fn send_snapshot_copy(&self, snapshot: &str, to: &str) -> Result<(), StorageError> {
        if self.exists(to) {
            return Err(StorageError::Invalid(
                self.name.clone(),
                format!("dataset {to} already exists"),
            ));
        }
        let send: [&OsStr; 2] = ["send".as_ref(), snapshot.as_ref()];
        let recv: [&OsStr; 2] = ["receive".as_ref(), to.as_ref()];
        runner::pipe(("zfs", &send), ("zfs", &recv))
            .map_err(|e| self.run_error(format!("sending {snapshot} to {to}"), e))?;
        let received = match snapshot.split_once('@') {
            Some((_, s)) => format!("{to}@{s}"),
            None => return Ok(()),
        };
        self.zfs(format!("removing {received}"), &["destroy", &received])
            .map(|_| ())
    }

    /// [`StorageDriver::send_instance`]: see `wire.rs` for why two streams.
    pub(super) fn send_stream(
        &self,
        name: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<(), StorageError> {
        let ds = self.ds("containers", name);
        let now = format!("{ds}@{MIGRATE}");
        let _ = self.zfs(format!("removing {now}"), &["destroy", &now]);
        self.zfs(format!("snapshotting {ds}"), &["snapshot", &now])?;
        let sent = (|| {
            let snaps = self.snapshots_of(&ds)?;
            let first = snaps.first().cloned().unwrap_or_else(|| MIGRATE.into());
            // A full stream of the oldest snapshot (self-contained even for a clone), then
            // everything after it up to now in one incremental stream. -p: the dataset's
            // own properties (its refquota) travel too.
            let full = format!("{ds}@{first}");
            self.framed_send(&["send", "-p", &full], out)?;
            if first != MIGRATE {
                let base = format!("@{first}");
                self.framed_send(&["send", "-p", "-I", &base, &now], out)?;
            }
            wire::end(out).map_err(|e| self.io(e, format!("sending {name}")))
        })();
        let _ = self.zfs(format!("removing {now}"), &["destroy", &now]);
        sent
    }

    /// [`StorageDriver::receive_instance`].
    pub(super) fn receive_stream(
        &self,
        name: &str,
        input: &mut dyn std::io::Read,
    ) -> Result<(), StorageError> {
        let ds = self.ds("containers", name);
        if self.exists(&ds) {
            return Err(StorageError::Invalid(
                self.name.clone(),
                format!("volume for instance {name} already exists"),
            ));
        }
        let received = (|| {
            let mut first = true;
            while wire::next(input).map_err(|e| self.io(e, format!("receiving {name}")))? {
                let mut one = wire::StreamReader::new(input);
                let args: &[&str] = if first {
                    &["receive", &ds]
                } else {
                    &["receive", "-F", &ds]
                };
                self.stream_in(args, &mut one)?;
                one.drain()
                    .map_err(|e| self.io(e, format!("receiving {name}")))?;
                first = false;
            }
            self.zfs(
                format!("removing {ds}@{MIGRATE}"),
                &["destroy", &format!("{ds}@{MIGRATE}")],
            )?;
            self.set_root_mode(&self.instance_path(name))
        })();
        if received.is_err() {
            let _ = self.destroy_ds(&ds);
        }
        received
    }

    /// `zfs send args…` as one framed stream of `out`.
    fn framed_send(&self, args: &[&str], out: &mut dyn std::io::Write) -> Result<(), StorageError> {
        let what = format!("zfs {}", args.join(" "));
        let mut w = wire::StreamWriter::start(out).map_err(|e| self.io(e, what.clone()))?;
        self.stream_out(args, &mut w)?;
        w.finish().map_err(|e| self.io(e, what))
    }

    /// Runs `zfs args…` with its stdout copied into `out` (`zfs send`).
    fn stream_out(&self, args: &[&str], out: &mut dyn std::io::Write) -> Result<(), StorageError> {
        let os: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        runner::stream_out("zfs", &os, out).map_err(|e| self.stream_error(args, e))
    }

    /// Runs `zfs args…` with `input` copied into its stdin (`zfs receive`).
    fn stream_in(&self, args: &[&str], input: &mut dyn std::io::Read) -> Result<(), StorageError> {
        let os: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        runner::stream_in("zfs", &os, input).map_err(|e| self.stream_error(args, e))
    }

    fn stream_error(&self, args: &[&str], e: runner::RunError) -> StorageError {
        let what = format!("zfs {}", args.join(" "));
        match e {
            runner::RunError::Stream { source, .. } => self.io(source, what),
            e => self.run_error(what, e),
        }
    }
}
