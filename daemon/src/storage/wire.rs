//! Several `zfs send` or `btrfs send` streams in one byte stream (the body of a move or
//! copy between members), each fed to its own `receive`; this framing says where each
//! ends. A zfs clone's volume cannot travel as one `zfs send -R` stream: that stream names
//! the image snapshot the clone came from, which the other member does not have. It
//! travels as a full stream of its first snapshot, then an incremental one (`-I`) up to
//! the last. A btrfs volume travels as one stream per snapshot, each incremental to the
//! one before, then the volume itself.
//!
//! Format: per stream, `S`, then chunks (`u32` big-endian length, bytes), then a chunk of
//! length 0; after the last stream, `E`.

use std::io::{self, Read, Write};

const MAX_CHUNK: usize = 1 << 20;

/// Writes one stream's bytes as chunks into `out`.
pub struct StreamWriter<'a> {
    out: &'a mut dyn Write,
}

impl<'a> StreamWriter<'a> {
    pub fn start(out: &'a mut dyn Write) -> io::Result<StreamWriter<'a>> {
        out.write_all(b"S")?;
        Ok(StreamWriter { out })
    }

    pub fn finish(self) -> io::Result<()> {
        self.out.write_all(&0u32.to_be_bytes())
    }
}

impl Write for StreamWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_CHUNK);
        if n == 0 {
            return Ok(0);
        }
        self.out.write_all(&(n as u32).to_be_bytes())?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Ends the whole byte stream.
pub fn end(out: &mut dyn Write) -> io::Result<()> {
    out.write_all(b"E")?;
    out.flush()
}

/// Whether another stream follows (`S`) or the byte stream ended (`E`).
pub fn next(input: &mut dyn Read) -> io::Result<bool> {
    let mut tag = [0u8; 1];
    input.read_exact(&mut tag)?;
    match &tag {
        b"S" => Ok(true),
        b"E" => Ok(false),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a volume stream (bad frame tag)",
        )),
    }
}

/// Reads one stream's bytes, up to its end chunk.
pub struct StreamReader<'a> {
    input: &'a mut dyn Read,
    left: usize,
    done: bool,
}

impl<'a> StreamReader<'a> {
    pub fn new(input: &'a mut dyn Read) -> StreamReader<'a> {
        StreamReader {
            input,
            left: 0,
            done: false,
        }
    }

    /// Reads what the receiver left unread, so the next stream starts at its tag.
    pub fn drain(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink()).map(|_| ())
    }
}

impl Read for StreamReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut len = [0u8; 4];
            self.input.read_exact(&mut len)?;
            let n = u32::from_be_bytes(len) as usize;
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            if n > MAX_CHUNK {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "volume stream: chunk too large",
                ));
            }
            self.left = n;
        }
        let want = buf.len().min(self.left);
        let got = self.input.read(&mut buf[..want])?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= got;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_come_back_apart() {
        let mut body = Vec::new();
        let big = vec![7u8; 3 * MAX_CHUNK + 5];
        for data in [&b"first"[..], &big[..], &b""[..]] {
            let mut w = StreamWriter::start(&mut body).unwrap();
            w.write_all(data).unwrap();
            w.finish().unwrap();
        }
        end(&mut body).unwrap();
        let mut input = body.as_slice();
        let mut got = Vec::new();
        while next(&mut input).unwrap() {
            let mut r = StreamReader::new(&mut input);
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            r.drain().unwrap();
            got.push(v);
        }
        assert_eq!(got, vec![b"first".to_vec(), big, vec![]]);
        assert!(input.is_empty());
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(next(&mut &b"X"[..]).is_err());
        let mut body = Vec::new();
        let mut w = StreamWriter::start(&mut body).unwrap();
        w.write_all(b"abcdef").unwrap();
        body.truncate(body.len() - 2);
        let mut input = &body[1..];
        let mut v = Vec::new();
        assert!(StreamReader::new(&mut input).read_to_end(&mut v).is_err());
    }
}
