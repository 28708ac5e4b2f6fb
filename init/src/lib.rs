//! cairn-init: one static binary with two roles.
//!
//! - In the initrd (`/etc/initrd-release` exists) it loads the few modules needed to reach the
//!   root, finds root slot and verity partitions from `roothash=`, sets up dm-verity, mounts
//!   the erofs root read-only and switches root into itself ([`initrd`]).
//! - As PID 1 of the root it mounts the API filesystems, the data partition on /var, starts
//!   udev and the network, supervises the fixed set of services and shuts down in order
//!   ([`pid1`]).
//!
//! It never panics on input; a panic in the main loop is caught and logged, and supervision
//! goes on. The main loop is synchronous; only the D-Bus interface for cairnd ([`control`])
//! runs on an async runtime, in a thread of its own that is restarted if it fails.

pub mod api_watch;
pub mod backoff;
pub mod bootcount;
pub mod cgroup;
pub mod console;
pub mod control;
pub mod data;
pub mod dhcp;
pub mod gpt;
pub mod gpt_append;
pub mod initrd;
pub mod kmod;
pub mod late;
pub mod lease;
pub mod logfile;
pub mod mount;
pub mod net;
pub mod netlink;
pub mod pid1;
pub mod power;
pub mod seedsource;
pub mod services;
pub mod shutdown;
pub mod storage;
pub mod supervisor;
pub mod verity;

use std::path::Path;

/// Dispatches on the role: initrd stage, PID 1, or (for tests and debugging) a one-off tool.
pub fn entry() {
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() == 1 {
        if Path::new("/etc/initrd-release").exists() {
            initrd::run();
        }
        pid1::run();
    }
    match args.get(1).map(String::as_str) {
        Some("gpt") if args.len() == 3 => match gpt::read_disk(Path::new(&args[2])) {
            Ok(parts) => {
                for p in parts {
                    println!(
                        "{} {} {} {}..{} {}",
                        p.number, p.type_guid, p.unique_guid, p.first_lba, p.last_lba, p.name
                    );
                }
            }
            Err(e) => {
                eprintln!("cairn-init: {e}");
                std::process::exit(1);
            }
        },
        Some("verity-sb") if args.len() == 3 => {
            match verity::Superblock::read(Path::new(&args[2])) {
                Ok(sb) => println!("{sb:?}"),
                Err(e) => {
                    eprintln!("cairn-init: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => {
            eprintln!(
                "cairn-init: runs as PID 1 only (debug: cairn-init gpt DISK | verity-sb DEV)"
            );
            std::process::exit(2);
        }
    }
}

/// Waits (bounded, polling every 10 ms) until `path` exists: device nodes, sockets.
pub fn wait_for_path(path: &Path, limit: std::time::Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    while !path.exists() {
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// Replaces `path` with `contents` so that a power cut leaves the old file or the new one,
/// never an empty one: ext4 (data=ordered, delayed allocation) may otherwise keep a freshly
/// created file's name but not its blocks when power goes within the commit interval — the
/// first boot reaches the API in seconds, and a node cut off then lost its seed and identity.
pub fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_durably_with_mode(path, contents, 0o644)
}

/// [`write_durably`] for a file that holds secrets (the seed's join secret): created with
/// `mode` (e.g. 0600), so it is never readable by others, not even for a moment.
pub fn write_durably_with_mode(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: no file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A temporary left by a power cut is replaced, so the new file gets `mode`.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_owner_only_even_over_a_stale_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("preseed.yaml");
        // A temporary left readable by a crash of an older writer.
        std::fs::write(dir.path().join(".preseed.yaml.tmp"), b"old").unwrap();
        write_durably_with_mode(&p, b"secret", 0o600).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
    }

    #[test]
    fn write_durably_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed.yaml");
        write_durably(&p, b"one").unwrap();
        write_durably(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("seed.yaml")]);
        assert!(write_durably(&dir.path().join("missing/x"), b"x").is_err());
    }
}
