//! The Incus 6.0 `/1.0/instances/{name}/files` semantics: [`FileHeaders`], pull (GET), push (POST).

use std::fs::File;
use std::io::Read;

use super::path::{clean_path, join};
use super::{Entry, FileKind, FsError, NewAttrs, RootfsAccess, WriteMode, MAX_SYMLINK_TARGET};

/// `X-Incus-type` of a POST.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PushKind {
    #[default]
    File,
    Directory,
    Symlink,
}

/// The `X-Incus-*` (or pylxd's `X-LXD-*`) headers of a files API request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileHeaders {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits (`0o777`; Incus drops the others).
    pub mode: Option<u32>,
    pub kind: PushKind,
    pub write_mode: WriteMode,
}

impl FileHeaders {
    /// Parses the headers as Incus 6.0 does (`X-Incus-` first, then
    /// `X-LXD-`): a missing, empty or `-1` uid/gid/mode means "not given",
    /// the mode is parsed like Go's `ParseInt(s, 0, 0)` (`0644` is octal),
    /// type defaults to `file` and write to `overwrite`. Values Incus would
    /// silently ignore (non-numbers) are refused here.
    ///
    /// `header` looks a header up by name, case-insensitively; with axum:
    /// `FileHeaders::from_lookup(|n| headers.get(n).map(|v| v.as_bytes()))`.
    /// (This module sees no HTTP types.)
    pub fn from_lookup<'a>(
        header: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<FileHeaders, FsError> {
        let get = |key: &str| -> Result<Option<(String, String)>, FsError> {
            for prefix in ["X-Incus-", "X-LXD-"] {
                let name = format!("{prefix}{key}");
                if let Some(value) = header(&name) {
                    let text = std::str::from_utf8(value).map_err(|_| FsError::InvalidHeader {
                        name: name.clone(),
                        value: String::from_utf8_lossy(value).into_owned(),
                    })?;
                    let text = text.trim();
                    if !text.is_empty() {
                        return Ok(Some((name, text.to_string())));
                    }
                }
            }
            Ok(None)
        };
        let id = |key: &str| -> Result<Option<u32>, FsError> {
            let Some((name, value)) = get(key)? else {
                return Ok(None);
            };
            match value.parse::<i64>() {
                Ok(-1) => Ok(None),
                Ok(n) if (0..i64::from(u32::MAX)).contains(&n) => Ok(Some(n as u32)),
                _ => Err(FsError::InvalidHeader { name, value }),
            }
        };
        let mode = match get("mode")? {
            None => None,
            Some((_, v)) if v == "-1" => None,
            Some((name, value)) => match parse_go_int(&value) {
                Some(m) if m >= 0 => Some((m as u32) & 0o777),
                _ => return Err(FsError::InvalidHeader { name, value }),
            },
        };
        let kind = match get("type")? {
            None => PushKind::File,
            Some((name, value)) => match value.as_str() {
                "file" => PushKind::File,
                "directory" => PushKind::Directory,
                "symlink" => PushKind::Symlink,
                _ => return Err(FsError::InvalidHeader { name, value }),
            },
        };
        let write_mode = match get("write")? {
            None => WriteMode::Overwrite,
            Some((name, value)) => match value.as_str() {
                "overwrite" => WriteMode::Overwrite,
                "append" => WriteMode::Append,
                _ => return Err(FsError::InvalidHeader { name, value }),
            },
        };
        Ok(FileHeaders {
            uid: id("uid")?,
            gid: id("gid")?,
            mode,
            kind,
            write_mode,
        })
    }

    /// The owner and mode these headers give to what a push creates.
    pub fn new_attrs(&self) -> NewAttrs {
        NewAttrs {
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
        }
    }

    /// The headers of a GET (or HEAD) answer: uid, gid, mode (`%04o`), type
    /// and modified (Go's time format), under both `X-Incus-` and `X-LXD-`.
    pub fn response_headers(entry: &Entry) -> Vec<(String, String)> {
        let values = [
            ("uid", entry.uid.to_string()),
            ("gid", entry.gid.to_string()),
            ("mode", format!("{:04o}", entry.mode & 0o777)),
            ("type", entry.kind.api_name().to_string()),
            ("modified", go_time_string(entry.mtime.0, entry.mtime.1)),
        ];
        ["X-Incus-", "X-LXD-"]
            .iter()
            .flat_map(|prefix| {
                values
                    .iter()
                    .map(move |(k, v)| (format!("{prefix}{k}"), v.clone()))
            })
            .collect()
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, `0x`/`0o`/`0b` prefixes,
/// a leading `0` means octal, `_` separators after a prefix.
fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(b) = lower.strip_prefix("0x") {
        (16, b.to_string())
    } else if let Some(b) = lower.strip_prefix("0o") {
        (8, b.to_string())
    } else if let Some(b) = lower.strip_prefix("0b") {
        (2, b.to_string())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string())
    } else {
        (10, lower.clone())
    };
    let body = if radix != 10 {
        body.replace('_', "")
    } else {
        body
    };
    if body.is_empty() || body.starts_with(['+', '-']) {
        return None;
    }
    let n = i64::from_str_radix(&body, radix).ok()?;
    Some(if neg { -n } else { n })
}

/// Go's `time.Time.UTC().String()`: `2006-01-02 15:04:05.999999999 +0000 UTC`.
pub(super) fn go_time_string(secs: i64, nsec: u32) -> String {
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    );
    if nsec != 0 {
        let frac = format!("{nsec:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

/// What a files API GET answers.
#[derive(Debug)]
pub enum Pulled {
    /// A regular file (or another non-directory, non-symlink type): its
    /// `lstat` and the open file to stream.
    File { entry: Entry, file: File },
    /// A directory: its names, to answer as a JSON list.
    Directory { entry: Entry, names: Vec<String> },
    /// A symlink: its target made absolute (lexically, as Incus does); the
    /// body of the answer.
    Symlink { entry: Entry, target: String },
}

impl Pulled {
    pub fn entry(&self) -> &Entry {
        match self {
            Pulled::File { entry, .. }
            | Pulled::Directory { entry, .. }
            | Pulled::Symlink { entry, .. } => entry,
        }
    }
}

impl RootfsAccess {
    /// GET /1.0/instances/{name}/files?path=: `lstat` the path, then open the
    /// file, list the directory or read the symlink.
    pub fn pull(&self, path: &str) -> Result<Pulled, FsError> {
        let entry = self.lstat(path)?;
        match entry.kind {
            FileKind::Directory => {
                let names = self.read_dir(path)?;
                Ok(Pulled::Directory { entry, names })
            }
            FileKind::Symlink => {
                let stored = entry.target.clone().unwrap_or_default();
                let target = if stored.starts_with('/') {
                    clean_path(&stored)
                } else {
                    let dir = clean_path(path);
                    let parent =
                        dir.rsplit_once('/')
                            .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
                    clean_path(&join(parent, &stored))
                };
                Ok(Pulled::Symlink { entry, target })
            }
            FileKind::File => {
                let file = self.open_read(path)?;
                Ok(Pulled::File { entry, file })
            }
            _ => Err(FsError::NotRegular { path: path.into() }),
        }
    }

    /// POST /1.0/instances/{name}/files?path= with Incus 6.0 semantics:
    /// - `file`: written (overwrite truncates, append appends; created if
    ///   missing); uid/gid/mode apply only when the file is created;
    /// - `directory`: created with uid/gid/mode (default 0755), nothing
    ///   happens if something exists there already;
    /// - `symlink`: the body is the target; nothing happens if the same
    ///   symlink exists, an error if anything else does.
    pub fn push(&self, path: &str, headers: &FileHeaders, body: impl Read) -> Result<(), FsError> {
        let attrs = headers.new_attrs();
        match headers.kind {
            PushKind::File => {
                self.write_file(path, body, &attrs, headers.write_mode)?;
                Ok(())
            }
            PushKind::Directory => match self.stat(path) {
                Ok(_) => Ok(()),
                Err(FsError::NotFound { .. }) => self.mkdir(path, &attrs),
                Err(e) => Err(e),
            },
            PushKind::Symlink => {
                let mut target = Vec::new();
                body.take(MAX_SYMLINK_TARGET as u64 + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| FsError::from_io("reading symlink target", path, e))?;
                let target = String::from_utf8(target).map_err(|_| FsError::InvalidPath {
                    path: path.into(),
                    reason: "symlink target is not UTF-8",
                })?;
                if let Ok(existing) = self.lstat(path) {
                    if existing.target.as_deref() == Some(target.as_str()) {
                        return Ok(());
                    }
                }
                self.symlink(path, &target, &attrs)
            }
        }
    }
}
