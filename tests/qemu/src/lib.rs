//! cairn-lab: boots Cairn nodes under QEMU (q35, OVMF, NVMe system and data disks, virtio
//! NICs) and drives them: wait for console lines, ACPI power-down through QMP, power cut,
//! reboot. Used by the `cairn-lab` binary and the QEMU-tier tests in `tests/`.

pub mod accel;
pub mod api;
pub mod bench;
pub mod hub;
pub mod image;
pub mod node;
pub mod qmp;

/// Everything that can go wrong driving a node.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("node {node}: timed out after {secs}s waiting for {what}")]
    Timeout {
        node: String,
        secs: u64,
        what: String,
    },
    #[error("QMP on {node}: {detail}")]
    Qmp { node: String, detail: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, LabError>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Where the lab keeps node state (disks, logs, sockets): `$CAIRN_LAB_DIR` or
/// /var/tmp/cairn-lab.
pub fn lab_dir() -> std::path::PathBuf {
    std::env::var_os("CAIRN_LAB_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/var/tmp/cairn-lab".into())
}

/// Progress for humans goes to stderr.
pub fn progress(msg: &str) {
    eprintln!("cairn-lab: {msg}");
}

/// Byte offset of the ESP in a GPT disk image (for mtools' `-i image@@offset`).
pub fn gpt_esp_offset(image: &std::path::Path) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f =
        std::fs::File::open(image).map_err(io_err(format!("opening {}", image.display())))?;
    let mut hdr = [0u8; 512];
    f.seek(SeekFrom::Start(512))
        .and_then(|_| f.read_exact(&mut hdr))
        .map_err(io_err("reading the GPT header"))?;
    if &hdr[0..8] != b"EFI PART" {
        return Err(LabError::Other(format!("{} has no GPT", image.display())));
    }
    let lba = u64::from_le_bytes(hdr[72..80].try_into().unwrap_or_default());
    let num = u32::from_le_bytes(hdr[80..84].try_into().unwrap_or_default()) as usize;
    let size = u32::from_le_bytes(hdr[84..88].try_into().unwrap_or_default()) as usize;
    let mut entries = vec![0u8; num.min(256) * size];
    f.seek(SeekFrom::Start(lba * 512))
        .and_then(|_| f.read_exact(&mut entries))
        .map_err(io_err("reading GPT entries"))?;
    // ESP type c12a7328-f81f-11d2-ba4b-00a0c93ec93b, as stored (mixed endian).
    const ESP: [u8; 16] = [
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ];
    entries
        .chunks(size)
        .find(|e| e[0..16] == ESP)
        .map(|e| u64::from_le_bytes(e[32..40].try_into().unwrap_or_default()) * 512)
        .ok_or_else(|| LabError::Other("no ESP in the image".into()))
}

/// A GPT partition's byte range in an image, by partition name (label).
pub fn gpt_partition_range(image: &std::path::Path, label: &str) -> Result<(u64, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f =
        std::fs::File::open(image).map_err(io_err(format!("opening {}", image.display())))?;
    let mut hdr = [0u8; 512];
    f.seek(SeekFrom::Start(512))
        .and_then(|_| f.read_exact(&mut hdr))
        .map_err(io_err("reading the GPT header"))?;
    let lba = u64::from_le_bytes(hdr[72..80].try_into().unwrap_or_default());
    let num = u32::from_le_bytes(hdr[80..84].try_into().unwrap_or_default()) as usize;
    let size = u32::from_le_bytes(hdr[84..88].try_into().unwrap_or_default()) as usize;
    let mut entries = vec![0u8; num.min(256) * size];
    f.seek(SeekFrom::Start(lba * 512))
        .and_then(|_| f.read_exact(&mut entries))
        .map_err(io_err("reading GPT entries"))?;
    for e in entries.chunks(size) {
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        if String::from_utf16_lossy(&name) == label {
            let first = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
            let last = u64::from_le_bytes(e[40..48].try_into().unwrap_or_default());
            return Ok((first * 512, (last + 1) * 512));
        }
    }
    Err(LabError::Other(format!(
        "no partition {label:?} in {}",
        image.display()
    )))
}
