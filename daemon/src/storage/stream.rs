//! The file stream an instance's volume travels in between members (dir and btrfs pools):
//! one tar of the volume and its snapshots, owners, modes and xattrs kept. zfs pools send
//! `zfs send` streams instead (`zfs/mod.rs`).

use std::io::Read;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

/// Tar roots: the instance volume and its snapshots.
const VOLUME: &str = "volume";
const SNAPSHOTS: &str = "snapshots";

/// Writes the instance's volume and snapshots as a tar stream into `out`.
pub fn write_tar(volume: &Path, snapshots: &Path, out: impl std::io::Write) -> std::io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(VOLUME, volume)?;
    if snapshots.exists() {
        b.append_dir_all(SNAPSHOTS, snapshots)?;
    }
    b.into_inner()?.flush()
}

/// Unpacks a stream from [`write_tar`] into `volume` and `snapshots` (which must not
/// exist), through a staging directory next to them.
pub fn receive_tar(input: impl Read, volume: &Path, snapshots: &Path) -> std::io::Result<()> {
    let parent = volume
        .parent()
        .ok_or_else(|| std::io::Error::other("instance path has no parent"))?;
    let staging = parent.join(format!(
        ".incoming-{}",
        volume.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let _ = super::tree::remove(&staging);
    std::fs::create_dir_all(&staging)?;
    let unpacked = (|| {
        let mut a = tar::Archive::new(input);
        a.set_preserve_permissions(true);
        a.set_preserve_ownerships(true);
        a.set_unpack_xattrs(true);
        a.set_overwrite(false);
        // `unpack` refuses absolute paths and `..`, and links leaving the directory.
        a.unpack(&staging)?;
        if !staging.join(VOLUME).is_dir() {
            return Err(std::io::Error::other("the stream holds no instance volume"));
        }
        if volume.exists() {
            return Err(std::io::Error::other(format!(
                "{} already exists",
                volume.display()
            )));
        }
        std::fs::rename(staging.join(VOLUME), volume)?;
        if staging.join(SNAPSHOTS).is_dir() {
            if let Some(p) = snapshots.parent() {
                std::fs::create_dir_all(p)?;
            }
            let _ = super::tree::remove(snapshots);
            std::fs::rename(staging.join(SNAPSHOTS), snapshots)?;
        }
        Ok(())
    })();
    let _ = super::tree::remove(&staging);
    unpacked
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn snapshots_dir(volume: &Path) -> PathBuf {
        volume.with_extension("snapshots")
    }

    #[test]
    fn a_volume_and_its_snapshots_travel_with_owners_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let src = tempfile::tempdir().unwrap();
        let vol = src.path().join("containers/c1");
        std::fs::create_dir_all(vol.join("rootfs/etc")).unwrap();
        std::fs::write(vol.join("rootfs/etc/hostname"), "c1\n").unwrap();
        std::fs::set_permissions(
            vol.join("rootfs/etc/hostname"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::chown(
            vol.join("rootfs/etc/hostname"),
            Some(1000123),
            Some(1000123),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/hostname", vol.join("rootfs/link")).unwrap();
        let snaps = snapshots_dir(&vol);
        std::fs::create_dir_all(snaps.join("s1/rootfs")).unwrap();
        std::fs::write(snaps.join("s1/rootfs/x"), "x").unwrap();

        let mut buf = Vec::new();
        write_tar(&vol, &snaps, &mut buf).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let dvol = dst.path().join("containers/c1");
        std::fs::create_dir_all(dvol.parent().unwrap()).unwrap();
        let dsnaps = snapshots_dir(&dvol);
        receive_tar(buf.as_slice(), &dvol, &dsnaps).unwrap();
        let m = std::fs::metadata(dvol.join("rootfs/etc/hostname")).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o777),
            (1000123, 1000123, 0o640)
        );
        assert_eq!(
            std::fs::read_link(dvol.join("rootfs/link")).unwrap(),
            Path::new("/etc/hostname")
        );
        assert_eq!(std::fs::read(dsnaps.join("s1/rootfs/x")).unwrap(), b"x");
        // A second delivery of the same instance is refused, the first stays whole.
        assert!(receive_tar(buf.as_slice(), &dvol, &dsnaps).is_err());
        assert!(dvol.join("rootfs/etc/hostname").exists());
        // Garbage is refused without leaving anything behind.
        let other = dst.path().join("containers/c2");
        assert!(receive_tar(&b"not a tar stream"[..], &other, &snapshots_dir(&other)).is_err());
        assert!(!other.exists());
    }
}
