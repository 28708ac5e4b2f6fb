//! The tar stream as read: decompressed by magic bytes, guarded against unseen header data.

use std::cell::Cell;
use std::io::{self, Cursor, Read};
use std::rc::Rc;

use super::UnpackError;

/// Bytes the tar reader may pull from the stream without the unpacker seeing
/// them: headers, padding and GNU long-name / PAX extension records, which
/// the tar crate buffers whole in memory. Real ones are a few KiB.
pub(super) const UNACCOUNTED_READ_LIMIT: u64 = 8 * 1024 * 1024;

/// Counts bytes pulled from the decompressed stream since the unpacker last
/// accounted for them, and fails the read once that passes
/// [`UNACCOUNTED_READ_LIMIT`]. File data is accounted chunk by chunk, so only
/// what the tar crate reads on its own (a 10 GiB "long name") trips it.
pub(super) struct GuardedReader<R> {
    pub(super) inner: R,
    pub(super) unaccounted: Rc<Cell<u64>>,
    pub(super) tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for GuardedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.unaccounted.get().saturating_add(n as u64);
        self.unaccounted.set(total);
        if total > UNACCOUNTED_READ_LIMIT {
            self.tripped.set(true);
            return Err(io::Error::other("tar header data over the limit"));
        }
        Ok(n)
    }
}

/// Detects the compression from the magic bytes and returns the tar stream.
pub(super) fn decompress<'a, R: Read + 'a>(mut src: R) -> Result<Box<dyn Read + 'a>, UnpackError> {
    let mut magic = [0u8; 6];
    let mut filled = 0;
    while filled < magic.len() {
        match src.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(UnpackError::Read(err)),
        }
    }
    let head = &magic[..filled];
    let stream = Cursor::new(head.to_vec()).chain(src);
    if head.starts_with(&[0x1f, 0x8b]) {
        // Multi-member: parallel compressors (pigz) write several members.
        Ok(Box::new(flate2::read::MultiGzDecoder::new(stream)))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Ok(Box::new(xz2::read::XzDecoder::new_multi_decoder(stream)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(UnpackError::UnsupportedCompression {
            compression: "zstd",
        })
    } else if head.starts_with(b"BZh") {
        Err(UnpackError::UnsupportedCompression {
            compression: "bzip2",
        })
    } else if head.starts_with(&[0x5d, 0x00, 0x00]) {
        Err(UnpackError::UnsupportedCompression {
            compression: "lzma",
        })
    } else {
        // Plain tar, or garbage that the tar reader will refuse.
        Ok(Box::new(stream))
    }
}
