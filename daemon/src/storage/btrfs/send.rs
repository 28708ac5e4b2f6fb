//! An instance's btrfs volume between members: `btrfs send` of each snapshot, oldest first,
//! each incremental to the one before (`-p`), then of a read-only snapshot of the volume
//! as it is now, incremental to the newest snapshot; framed by `storage::wire`. The other
//! member feeds each to `btrfs receive`, so what arrives are subvolumes sharing extents as
//! they did here — not a directory tree a later snapshot would have to copy.
//!
//! Nested subvolumes a container made inside its root are not sent (btrfs send does not
//! recurse); they arrive as empty directories.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use super::BtrfsPool;
use crate::runner;
use crate::storage::{wire, StorageDriver, StorageError};

impl BtrfsPool {
    /// Where the read-only picture of a volume being sent lives (instance names cannot
    /// start with a dot, so it names no instance).
    fn migrate_path(&self, name: &str) -> PathBuf {
        self.root
            .join("containers")
            .join(format!(".{name}.migrate"))
    }

    /// The instance's snapshots, oldest first (by the generation each was made in).
    fn snapshots_oldest_first(&self, name: &str) -> Result<Vec<PathBuf>, StorageError> {
        let dir = self.snapshots_path(name);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e, format!("listing snapshots of {name}"))),
        };
        let mut snaps = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let shown = self.btrfs(
                format!("reading subvolume {}", path.display()),
                &["subvolume".as_ref(), "show".as_ref(), path.as_os_str()],
            )?;
            let made_at = shown
                .lines()
                .find_map(|l| l.trim().strip_prefix("Gen at creation:"))
                .and_then(|g| g.trim().parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            snaps.push((made_at, path));
        }
        snaps.sort();
        Ok(snaps.into_iter().map(|(_, p)| p).collect())
    }

    pub(super) fn send_stream(
        &self,
        name: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<(), StorageError> {
        let now = self.migrate_path(name);
        self.subvolume_delete(&now)?;
        self.snapshot(&self.instance_path(name), &now, true)?;
        let sent = (|| {
            let mut parent: Option<PathBuf> = None;
            for subvol in self
                .snapshots_oldest_first(name)?
                .into_iter()
                .chain(std::iter::once(now.clone()))
            {
                self.framed_send(&subvol, parent.as_deref(), out)?;
                parent = Some(subvol);
            }
            wire::end(out).map_err(|e| self.io(e, format!("sending {name}")))
        })();
        let _ = self.subvolume_delete(&now);
        sent
    }

    fn framed_send(
        &self,
        subvol: &Path,
        parent: Option<&Path>,
        out: &mut dyn std::io::Write,
    ) -> Result<(), StorageError> {
        let what = format!("btrfs send {}", subvol.display());
        let mut args: Vec<&OsStr> = vec!["send".as_ref(), "-q".as_ref()];
        if let Some(p) = parent {
            args.extend(["-p".as_ref(), p.as_os_str()]);
        }
        args.push(subvol.as_os_str());
        let mut w = wire::StreamWriter::start(out).map_err(|e| self.io(e, what.clone()))?;
        runner::stream_out("btrfs", &args, &mut w).map_err(|e| self.stream_error(&what, e))?;
        w.finish().map_err(|e| self.io(e, what))
    }

    fn stream_error(&self, what: &str, e: runner::RunError) -> StorageError {
        match e {
            runner::RunError::Stream { source, .. } => self.io(source, what.to_string()),
            e => StorageError::Run {
                pool: self.name.clone(),
                what: what.to_string(),
                source: Box::new(e),
            },
        }
    }

    /// Receives straight into the instance's snapshots directory: a read-only subvolume
    /// cannot be moved to another directory afterwards.
    pub(super) fn receive_stream(
        &self,
        name: &str,
        input: &mut dyn std::io::Read,
    ) -> Result<(), StorageError> {
        let volume = self.instance_path(name);
        if volume.exists() {
            return Err(StorageError::Invalid(
                self.name.clone(),
                format!("volume for instance {name} already exists"),
            ));
        }
        // Leftovers of an earlier receive that failed half way.
        let _ = self.delete_instance(name);
        let dir = self.snapshots_dir(name)?;
        let placed = self
            .receive_into(name, &dir, input)
            .and_then(|subvols| self.place(name, &dir, subvols));
        if placed.is_err() {
            let _ = self.delete_instance(name);
        }
        placed
    }

    /// Receives every framed stream into `dir`; returns the subvolumes made, in order
    /// (the last one is the volume).
    fn receive_into(
        &self,
        name: &str,
        dir: &Path,
        input: &mut dyn std::io::Read,
    ) -> Result<Vec<String>, StorageError> {
        let what = format!("receiving {name}");
        let mut made: Vec<String> = Vec::new();
        while wire::next(input).map_err(|e| self.io(e, what.clone()))? {
            let mut one = wire::StreamReader::new(input);
            let args: [&OsStr; 3] = ["receive".as_ref(), "-q".as_ref(), dir.as_os_str()];
            runner::stream_in("btrfs", &args, &mut one)
                .map_err(|e| self.stream_error(&format!("btrfs receive for {name}"), e))?;
            one.drain().map_err(|e| self.io(e, what.clone()))?;
            let new = fs::read_dir(dir)
                .map_err(|e| self.io(e, what.clone()))?
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .find(|n| !made.contains(n))
                .ok_or_else(|| {
                    StorageError::Invalid(
                        self.name.clone(),
                        format!("the stream for {name} made no subvolume"),
                    )
                })?;
            made.push(new);
        }
        if made.is_empty() {
            return Err(StorageError::Invalid(
                self.name.clone(),
                format!("the stream for {name} holds no volume"),
            ));
        }
        Ok(made)
    }

    /// The volume becomes a writable snapshot of the last received subvolume (a received
    /// subvolume made writable in place would lose what makes it a base for later
    /// incremental streams); the others are the instance's snapshots already.
    fn place(&self, name: &str, dir: &Path, mut subvols: Vec<String>) -> Result<(), StorageError> {
        let last = subvols.pop().unwrap_or_default();
        self.snapshot(&dir.join(&last), &self.instance_path(name), false)?;
        self.subvolume_delete(&dir.join(&last))?;
        if subvols.is_empty() {
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }
}
