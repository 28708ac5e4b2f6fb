//! The management L2 shared by the nodes of a lab: a tiny Ethernet hub on a unix socket.
//! Each node's management NIC is a QEMU `stream` netdev connected to it; QEMU frames each
//! packet with a 4-byte big-endian length, and the hub repeats every frame to all other
//! ports. No host interface and no IP address is involved, so nodes reach only each other.

use crate::{io_err, Result};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type Ports = Arc<Mutex<Vec<(usize, UnixStream)>>>;

/// Reads one length-prefixed frame; None at end of stream or on a malformed length.
pub fn read_frame(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > 65536 + 64 {
        return None;
    }
    let mut frame = vec![0u8; n];
    r.read_exact(&mut frame).ok()?;
    Some(frame)
}

/// Serves the hub on `socket` until the process ends (runs on the calling thread).
pub fn serve(socket: &Path) -> Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).map_err(io_err(format!("binding {}", socket.display())))?;
    let ports: Ports = Arc::new(Mutex::new(Vec::new()));
    for (id, conn) in listener.incoming().flatten().enumerate() {
        let Ok(writer) = conn.try_clone() else {
            continue;
        };
        if let Ok(mut p) = ports.lock() {
            p.push((id, writer));
        }
        let ports = ports.clone();
        std::thread::spawn(move || forward(id, conn, ports));
    }
    Ok(())
}

fn forward(id: usize, mut conn: UnixStream, ports: Ports) {
    while let Some(frame) = read_frame(&mut conn) {
        let mut msg = (frame.len() as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&frame);
        if let Ok(mut p) = ports.lock() {
            p.retain_mut(|(other, w)| *other == id || w.write_all(&msg).is_ok());
        }
    }
    if let Ok(mut p) = ports.lock() {
        p.retain(|(other, _)| *other != id);
    }
}

/// Starts the hub on a background thread (for tests); returns the socket path.
pub fn spawn_in_thread(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let socket = dir.join("mgmt-hub.sock");
    let _ = std::fs::remove_file(&socket);
    let listener_ready = socket.clone();
    std::thread::spawn(move || serve(&listener_ready));
    for _ in 0..50 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_frames_to_the_other_ports_only() {
        let dir = std::env::temp_dir().join(format!("cairn-hub-{}", std::process::id()));
        let sock = spawn_in_thread(&dir).unwrap();
        let mut a = UnixStream::connect(&sock).unwrap();
        let mut b = UnixStream::connect(&sock).unwrap();
        let mut c = UnixStream::connect(&sock).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        a.write_all(&[0, 0, 0, 3, 1, 2, 3]).unwrap();
        assert_eq!(read_frame(&mut b).unwrap(), [1, 2, 3]);
        assert_eq!(read_frame(&mut c).unwrap(), [1, 2, 3]);
        a.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        assert!(read_frame(&mut a).is_none(), "no echo to the sender");
        let _ = std::fs::remove_dir_all(dir);
    }
}
