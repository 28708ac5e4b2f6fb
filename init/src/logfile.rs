//! Size-rotated log files: `name.log`, then `name.log.1` … `name.log.<keep>`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    written: u64,
}

impl LogFile {
    pub fn new(path: &Path, max_bytes: u64, keep: u32) -> LogFile {
        let mut l = LogFile {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            file: None,
            written: 0,
        };
        l.open();
        l
    }

    fn open(&mut self) {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
        }
        // Owner-only: services log what they are told (addresses, names, errors quoting
        // requests), which is no one else's to read.
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .ok();
        // A log an older cairn-init made readable to others is fixed as it is reopened.
        if let Some(f) = &self.file {
            let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        self.written = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        if self.keep > 0 {
            let _ = std::fs::rename(&self.path, self.rotated(1));
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
        self.open();
    }

    /// Appends one line (a newline is added). Errors are swallowed: logging must not stop
    /// the supervisor.
    pub fn write_line(&mut self, line: &[u8]) {
        if self.written + line.len() as u64 + 1 > self.max_bytes && self.written > 0 {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(line).and_then(|_| f.write_all(b"\n")).is_ok() {
                self.written += line.len() as u64 + 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_a_bounded_number() {
        let dir = std::env::temp_dir().join(format!("cairn-logfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("svc.log");
        let mut l = LogFile::new(&path, 100, 2);
        for i in 0..20 {
            l.write_line(format!("line {i:03} xxxxxxxxxxxxxxxxxxxxxxx").as_bytes());
        }
        let cur = std::fs::read_to_string(&path).unwrap();
        assert!(cur.len() <= 100, "current file is bounded: {}", cur.len());
        assert!(cur.contains("line 019"));
        assert!(dir.join("svc.log.1").exists());
        assert!(dir.join("svc.log.2").exists());
        assert!(!dir.join("svc.log.3").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn logs_are_owner_only_and_an_older_readable_one_is_fixed() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("cairn");
        let mut l = LogFile::new(&logs.join("svc.log"), 100, 2);
        l.write_line(b"first");
        assert_eq!(mode(&logs), 0o700);
        assert_eq!(mode(&logs.join("svc.log")), 0o600);
        // Rotation renames the file; the new current one is owner-only too.
        for _ in 0..10 {
            l.write_line(b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        }
        assert_eq!(mode(&logs.join("svc.log")), 0o600);
        assert_eq!(mode(&logs.join("svc.log.1")), 0o600);

        let old = logs.join("old.log");
        std::fs::write(&old, b"from an older cairn-init\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        LogFile::new(&old, 100, 2).write_line(b"next");
        assert_eq!(mode(&old), 0o600);
    }
}
