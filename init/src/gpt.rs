//! Reading a GPT partition table: enough to find partitions by unique GUID, type and name.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub const TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
pub const TYPE_ROOT_VERITY_X86_64: &str = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5";
pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("reading the partition table of {disk}: {source}")]
    Io {
        disk: String,
        source: std::io::Error,
    },
    #[error("{disk} has no GPT (no 'EFI PART' signature)")]
    NoGpt { disk: String },
    #[error("{disk}: implausible GPT header ({what})")]
    Bad { disk: String, what: &'static str },
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number, as the kernel names it (nvme0n1p<number>).
    pub number: u32,
    pub type_guid: String,
    pub unique_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

/// Formats a GUID stored in GPT's mixed-endian layout as the usual lower-case string.
pub fn guid_to_string(b: &[u8]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// Formats 32 hex digits (e.g. the first half of a verity root hash) as a UUID string.
pub fn hex_to_uuid(hex: &str) -> Option<String> {
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Parses a partition table from the raw bytes of the header sector and the entry array.
pub fn parse(disk: &str, header: &[u8], entries: &[u8]) -> Result<Vec<Partition>, GptError> {
    if header.len() < 92 || &header[0..8] != b"EFI PART" {
        return Err(GptError::NoGpt { disk: disk.into() });
    }
    let num = u32::from_le_bytes(header[80..84].try_into().unwrap_or_default());
    let size = u32::from_le_bytes(header[84..88].try_into().unwrap_or_default()) as usize;
    if !(128..=4096).contains(&size) || num > 1024 {
        return Err(GptError::Bad {
            disk: disk.into(),
            what: "entry size or count",
        });
    }
    let mut out = Vec::new();
    for i in 0..num as usize {
        let Some(e) = entries.get(i * size..i * size + 128) else {
            break;
        };
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let name_units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(Partition {
            number: i as u32 + 1,
            type_guid: guid_to_string(&e[0..16]),
            unique_guid: guid_to_string(&e[16..32]),
            first_lba: u64::from_le_bytes(e[32..40].try_into().unwrap_or_default()),
            last_lba: u64::from_le_bytes(e[40..48].try_into().unwrap_or_default()),
            name: String::from_utf16_lossy(&name_units),
        });
    }
    Ok(out)
}

/// Reads the primary GPT of a disk (block device or image file).
pub fn read_disk(path: &Path) -> Result<Vec<Partition>, GptError> {
    let disk = path.display().to_string();
    let io = |source| GptError::Io {
        disk: disk.clone(),
        source,
    };
    let sector = sector_size(path);
    let mut f = File::open(path).map_err(io)?;
    let mut header = vec![0u8; sector as usize];
    f.seek(SeekFrom::Start(sector)).map_err(io)?;
    f.read_exact(&mut header).map_err(io)?;
    if &header[0..8] != b"EFI PART" {
        return Err(GptError::NoGpt { disk });
    }
    let lba = u64::from_le_bytes(header[72..80].try_into().unwrap_or_default());
    let num = u32::from_le_bytes(header[80..84].try_into().unwrap_or_default()) as u64;
    let size = u32::from_le_bytes(header[84..88].try_into().unwrap_or_default()) as u64;
    if num * size > 1 << 20 || lba == 0 {
        return Err(GptError::Bad {
            disk,
            what: "entry array too large",
        });
    }
    let mut entries = vec![0u8; (num * size) as usize];
    f.seek(SeekFrom::Start(lba * sector)).map_err(io)?;
    f.read_exact(&mut entries).map_err(io)?;
    parse(&disk, &header, &entries)
}

/// The logical sector size of a block device (512 for image files and when unknown).
/// The logical sector size of block device `path` (512 for files and unknown devices).
pub fn sector_size(path: &Path) -> u64 {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    std::fs::read_to_string(format!("/sys/class/block/{name}/queue/logical_block_size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(512)
}

/// The kernel's name for partition `number` of `disk` (nvme0n1 → nvme0n1p2, vda → vda2).
pub fn partition_name(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_mixed_endian() {
        // The ESP type GUID as stored on disk.
        let raw = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(guid_to_string(&raw), TYPE_ESP);
    }

    #[test]
    fn roothash_halves_become_uuids() {
        assert_eq!(
            hex_to_uuid("0123456789abcdef0123456789ABCDEF").as_deref(),
            Some("01234567-89ab-cdef-0123-456789abcdef")
        );
        assert_eq!(hex_to_uuid("xyz"), None);
    }

    #[test]
    fn parses_entries_and_skips_empty_ones() {
        let mut header = vec![0u8; 512];
        header[0..8].copy_from_slice(b"EFI PART");
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&4u32.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());
        let mut entries = vec![0u8; 4 * 128];
        let e = &mut entries[128..256];
        e[0] = 1;
        e[16] = 2;
        e[32..40].copy_from_slice(&2048u64.to_le_bytes());
        e[40..48].copy_from_slice(&4095u64.to_le_bytes());
        for (i, c) in "root-a".encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        let parts = parse("test", &header, &entries).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].number, 2);
        assert_eq!(parts[0].name, "root-a");
        assert_eq!(parts[0].first_lba, 2048);
        assert!(parse("test", &[0u8; 512], &entries).is_err());
    }

    #[test]
    fn partition_names() {
        assert_eq!(partition_name("nvme0n1", 2), "nvme0n1p2");
        assert_eq!(partition_name("vda", 3), "vda3");
    }
}
