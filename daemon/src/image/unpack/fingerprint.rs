//! Image fingerprints: the SHA-256 of the image file(s), as Incus computes them.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// SHA-256 of a file, lowercase hex: the fingerprint of a unified image.
pub fn fingerprint_file(path: &Path) -> io::Result<String> {
    fingerprint_files(&[path])
}

/// SHA-256 over the concatenated bytes of `paths`, lowercase hex. For a split
/// image Incus hashes the metadata tarball followed by the rootfs tarball.
pub fn fingerprint_files(paths: &[&Path]) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    for path in paths {
        let mut file = File::open(path)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}
