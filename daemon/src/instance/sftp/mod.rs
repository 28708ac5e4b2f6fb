//! The SFTP server behind `GET /1.0/instances/{name}/sftp`.
//!
//! The Incus 6.0 CLI does `incus file push/pull/delete/create` and
//! `file mount` by upgrading that request (`Upgrade: sftp`, answered with
//! `101 Switching Protocols`) and then speaking raw SFTP version 3 over the
//! connection, with no SSH around it (github.com/pkg/sftp's client; sshfs for
//! `mount`). [`serve`] answers such a stream from a container's rootfs through
//! [`RootfsAccess`], so every path stays inside the container and owners are
//! shown and set in container ids.
//!
//! Protocol notes:
//! - requests are answered one at a time, in order (clients pipeline reads
//!   and writes; answers in order are what they expect);
//! - `SSH_FXP_SYMLINK` takes its arguments in OpenSSH's order (target
//!   first, then link path), as pkg/sftp and OpenSSH's `sftp` send them;
//! - `realpath` is lexical (as pkg/sftp's server, which Incus runs);
//! - a plain `rename` refuses to replace an existing file (SFTP v3);
//!   `posix-rename@openssh.com` replaces;
//! - extensions: `posix-rename@openssh.com`, `hardlink@openssh.com`,
//!   `statvfs@openssh.com`, `fstatvfs@openssh.com`, `fsync@openssh.com`;
//! - names travel as UTF-8 strings (russh-sftp's types): names that are not
//!   UTF-8 are listed lossily.
//!
//! Code map: [`serve`] (here) frames requests and answers; `session` holds a
//! client's open handles and dispatches each request; `handler` answers each
//! request type from the rootfs; `wire` converts between rootfs types and
//! SFTP's (statuses, attributes, `ls -l` lines, extension payloads).

mod handler;
mod session;
#[cfg(test)]
mod tests;
mod wire;

use std::io;

use bytes::Bytes;
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::rootfs_access::RootfsAccess;
use session::Session;
use wire::status_packet;

/// Largest request accepted (OpenSSH's limit; pkg/sftp sends up to 128 KiB
/// of data per write as Incus configures it).
const MAX_PACKET: u32 = 256 * 1024 + 1024;
/// Largest read answered (clients ask for 32 KiB (OpenSSH) or 128 KiB (Incus)).
const MAX_READ: u32 = 255 * 1024;
/// Directory entries per `SSH_FXP_NAME` answer.
const READDIR_BATCH: usize = 128;
/// Applied to the modes clients give to `open` and `mkdir` (OpenSSH's
/// `sftp` asks 0777 for new directories and relies on the server's umask);
/// `setstat` modes are applied as given.
const UMASK: u32 = 0o022;
/// Open handles per session.
const MAX_HANDLES: usize = 1024;

/// Why a session ended other than by the client closing it.
#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    #[error("sftp connection: {0}")]
    Io(#[from] io::Error),
    #[error("sftp protocol: {0}")]
    Protocol(String),
}

/// Serves SFTP v3 over `stream` (an upgraded HTTP connection) from the
/// container's rootfs until the client closes it. Open files are closed when
/// it returns.
pub async fn serve<S>(stream: S, access: RootfsAccess) -> Result<(), SftpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Buffered reads: a request is a length, then its body.
    let mut stream = BufReader::with_capacity(64 * 1024, stream);
    let mut session = Session::new(access);
    loop {
        let len = match stream.read_u32().await {
            Ok(len) => len,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if len == 0 || len > MAX_PACKET {
            return Err(SftpError::Protocol(format!("request of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        stream.read_exact(&mut buf).await?;
        let request_id = match buf.get(1..5) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        };
        let mut bytes = Bytes::from(buf);
        let response = match Packet::try_from(&mut bytes) {
            Ok(packet) => session.dispatch(packet).await,
            Err(e) => status_packet(
                request_id,
                StatusCode::BadMessage.with_message(format!("malformed request: {e}")),
            ),
        };
        let out = Bytes::try_from(response)
            .map_err(|e| SftpError::Protocol(format!("encoding an answer: {e}")))?;
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
}
