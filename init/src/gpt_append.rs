//! Appends one partition to a GPT disk in the free space after its last partition, and
//! tells the kernel about it. This is the first boot's data partition: systemd-repart did
//! the same in about four seconds under TCG (its own start, a loop device, mkfs through
//! it); written here it takes milliseconds, and the caller runs mkfs once, on the new
//! partition itself. Both header copies are rewritten, the backup moved to the end of the
//! disk (an image written to a larger disk has it in the middle).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::gpt::GptError;

/// Partitions start and end on 1 MiB boundaries, as repart and fdisk place them.
const ALIGN_BYTES: u64 = 1 << 20;
const HEADER_MIN: usize = 92;

/// The partition added: its number (1-based), and its extent in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub number: u32,
    pub start: u64,
    pub length: u64,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A GUID in its on-disk (mixed-endian) layout, from the text form.
pub fn guid_bytes(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Some(b)
}

/// Seals a header: its CRC is computed with the CRC field zeroed.
fn seal(header: &mut [u8], size: usize) {
    put32(header, 16, 0);
    let crc = crc32fast::hash(&header[..size]);
    put32(header, 16, crc);
}

/// Adds a partition of `type_guid` named `name` over the free space after the last
/// partition of `disk` (a block device or an image file) with `sector`-byte sectors.
/// Refuses when less than `min_bytes` are free or the table does not check out.
pub fn append(
    disk: &Path,
    sector: u64,
    type_guid: [u8; 16],
    unique_guid: [u8; 16],
    name: &str,
    min_bytes: u64,
) -> Result<Added, GptError> {
    let what = disk.display().to_string();
    let io = |source| GptError::Io {
        disk: what.clone(),
        source,
    };
    let bad = |what_: &'static str| GptError::Bad {
        disk: disk.display().to_string(),
        what: what_,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io)?;
    let total = f.seek(SeekFrom::End(0)).map_err(io)? / sector;
    let mut header = vec![0u8; sector as usize];
    f.seek(SeekFrom::Start(sector)).map_err(io)?;
    f.read_exact(&mut header).map_err(io)?;
    if &header[0..8] != b"EFI PART" {
        return Err(GptError::NoGpt { disk: what });
    }
    let hsize = le32(&header, 12) as usize;
    if !(HEADER_MIN..=sector as usize).contains(&hsize) {
        return Err(bad("header size"));
    }
    let stored_crc = le32(&header, 16);
    let mut check = header.clone();
    seal(&mut check, hsize);
    if le32(&check, 16) != stored_crc {
        return Err(bad("header checksum"));
    }
    let entries_lba = le64(&header, 72);
    let count = le32(&header, 80) as u64;
    let esize = le32(&header, 84) as u64;
    if !(128..=4096).contains(&esize) || count == 0 || count * esize > 1 << 20 {
        return Err(bad("entry size or count"));
    }
    let entry_sectors = (count * esize).div_ceil(sector);
    let mut entries = vec![0u8; (count * esize) as usize];
    f.seek(SeekFrom::Start(entries_lba * sector)).map_err(io)?;
    f.read_exact(&mut entries).map_err(io)?;
    if crc32fast::hash(&entries) != le32(&header, 88) {
        return Err(bad("entry array checksum"));
    }

    let mut free_slot = None;
    let mut end = le64(&header, 40); // first usable LBA - 1 … grows to the last used LBA
    end = end.saturating_sub(1);
    for i in 0..count as usize {
        let e = &entries[i * esize as usize..][..128];
        if e[0..16].iter().all(|&b| b == 0) {
            free_slot.get_or_insert(i);
        } else {
            end = end.max(le64(e, 40));
        }
    }
    let slot = free_slot.ok_or_else(|| bad("no free partition entry"))?;
    let align = (ALIGN_BYTES / sector).max(1);
    let first = (end + 1).div_ceil(align) * align;
    // The backup copy: entries just before the last sector, its header on the last.
    let backup_entries_lba = total
        .checked_sub(1 + entry_sectors)
        .ok_or_else(|| bad("disk too small"))?;
    let last_usable = backup_entries_lba - 1;
    let last = ((last_usable + 1) / align * align)
        .checked_sub(1)
        .ok_or_else(|| bad("disk too small"))?;
    if last < first || (last - first + 1) * sector < min_bytes {
        return Err(GptError::Bad {
            disk: disk.display().to_string(),
            what: "not enough free space after the last partition",
        });
    }

    let e = &mut entries[slot * esize as usize..][..esize as usize];
    e.fill(0);
    e[0..16].copy_from_slice(&type_guid);
    e[16..32].copy_from_slice(&unique_guid);
    put64(e, 32, first);
    put64(e, 40, last);
    for (i, unit) in name.encode_utf16().take(36).enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    let entries_crc = crc32fast::hash(&entries);

    put64(&mut header, 32, total - 1); // the backup header's LBA
    put64(&mut header, 48, last_usable);
    put32(&mut header, 88, entries_crc);
    seal(&mut header, hsize);
    let mut backup = header.clone();
    put64(&mut backup, 24, total - 1);
    put64(&mut backup, 32, 1);
    put64(&mut backup, 72, backup_entries_lba);
    seal(&mut backup, hsize);

    // The backup first: until the primary is written, the disk still reads as before.
    let write_at = |f: &mut File, lba: u64, data: &[u8]| -> std::io::Result<()> {
        f.seek(SeekFrom::Start(lba * sector))?;
        f.write_all(data)
    };
    write_at(&mut f, backup_entries_lba, &entries).map_err(io)?;
    write_at(&mut f, total - 1, &backup).map_err(io)?;
    f.sync_data().map_err(io)?;
    write_at(&mut f, entries_lba, &entries).map_err(io)?;
    write_at(&mut f, 1, &header).map_err(io)?;
    fix_protective_mbr(&mut f, total).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(Added {
        number: slot as u32 + 1,
        start: first * sector,
        length: (last - first + 1) * sector,
    })
}

/// The protective MBR's partition covers the whole disk (as far as 32 bits reach).
fn fix_protective_mbr(f: &mut File, total: u64) -> std::io::Result<()> {
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut mbr)?;
    if mbr[510..512] != [0x55, 0xAA] || mbr[446 + 4] != 0xEE {
        return Ok(());
    }
    let size = u32::try_from(total - 1).unwrap_or(u32::MAX);
    put32(&mut mbr, 446 + 12, size);
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&mbr)
}

/// Tells the kernel about partition `added` of the block device `disk` (BLKPG), without
/// rereading the whole table, which fails while the root partition is in use.
pub fn announce(disk: &Path, added: &Added) -> std::io::Result<()> {
    #[repr(C)]
    struct BlkpgPartition {
        start: i64,
        length: i64,
        pno: libc::c_int,
        devname: [libc::c_char; 64],
        volname: [libc::c_char; 64],
    }
    #[repr(C)]
    struct BlkpgIoctlArg {
        op: libc::c_int,
        flags: libc::c_int,
        datalen: libc::c_int,
        data: *mut libc::c_void,
    }
    const BLKPG: libc::c_ulong = 0x1269;
    const BLKPG_ADD_PARTITION: libc::c_int = 1;
    let f = File::open(disk)?;
    let mut part = BlkpgPartition {
        start: added.start as i64,
        length: added.length as i64,
        pno: added.number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_ADD_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut part as *mut BlkpgPartition as *mut libc::c_void,
    };
    // SAFETY: BLKPG reads `arg` and the partition record it points to, both alive here.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKPG as _, &mut arg) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

    fn sfdisk(args: &[&str], stdin: Option<&str>, path: &Path) -> Option<String> {
        let mut cmd = Command::new("sfdisk");
        cmd.args(args).arg(path);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().ok()?;
        if let Some(s) = stdin {
            child.stdin.take()?.write_all(s.as_bytes()).ok()?;
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().ok()?;
        Some(
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[test]
    fn guid_text_round_trips() {
        let b = guid_bytes(LINUX).unwrap();
        assert_eq!(crate::gpt::guid_to_string(&b), LINUX);
        assert_eq!(guid_bytes("nope"), None);
    }

    #[test]
    fn appends_after_the_last_partition_on_a_grown_image() {
        if Command::new("sfdisk").arg("--version").output().is_err() {
            eprintln!("SKIPPED: needs sfdisk");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        // An image of 40 MiB with two partitions, then written to a 100 MiB disk: its
        // backup GPT now sits in the middle.
        File::create(&img).unwrap().set_len(40 << 20).unwrap();
        sfdisk(
            &["-q"],
            Some("label: gpt\nsize=8MiB, type=uefi\nsize=16MiB, type=linux, name=root\n"),
            &img,
        )
        .unwrap();
        File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(100 << 20)
            .unwrap();

        let uuid = guid_bytes("11111111-2222-3333-4444-555555555555").unwrap();
        let added = append(
            &img,
            512,
            guid_bytes(LINUX).unwrap(),
            uuid,
            "cairn-data",
            32 << 20,
        )
        .unwrap();
        assert_eq!(added.number, 3);
        assert_eq!(added.start % (1 << 20), 0);
        assert_eq!((added.start + added.length) % (1 << 20), 0);
        assert!(added.start >= 25 << 20, "{added:?}");
        assert!(added.length >= 70 << 20, "{added:?}");

        // sfdisk finds both copies consistent, and the new partition as written.
        let verify = sfdisk(&["--verify"], None, &img).unwrap();
        assert!(verify.contains("No errors detected"), "{verify}");
        let dump = sfdisk(&["--dump"], None, &img).unwrap();
        let line = dump.lines().find(|l| l.contains("cairn-data")).unwrap();
        let field = |key: &str| -> u64 {
            line.split(key)
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        assert_eq!(field("start="), added.start / 512, "{dump}");
        assert_eq!(field("size="), added.length / 512, "{dump}");
        assert!(line.to_ascii_lowercase().contains(LINUX), "{dump}");
        assert!(
            line.contains("11111111-2222-3333-4444-555555555555"),
            "{dump}"
        );
        // Our reader agrees.
        let parts = crate::gpt::read_disk(&img).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].name, "cairn-data");

        // No room for a second one.
        let err = append(&img, 512, guid_bytes(LINUX).unwrap(), uuid, "x", 1 << 20).unwrap_err();
        assert!(err.to_string().contains("free space"), "{err}");
    }

    #[test]
    fn refuses_a_damaged_table() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        File::create(&img).unwrap().set_len(40 << 20).unwrap();
        let r = append(&img, 512, [1; 16], [2; 16], "x", 0);
        assert!(matches!(r, Err(GptError::NoGpt { .. })), "{r:?}");
        if sfdisk(&["-q"], Some("label: gpt\nsize=8MiB, type=linux\n"), &img).is_none() {
            return;
        }
        // Flip a byte of the primary header: its checksum no longer holds.
        let mut f = File::options().read(true).write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(512 + 40)).unwrap();
        f.write_all(&[0x7f]).unwrap();
        drop(f);
        let r = append(&img, 512, [1; 16], [2; 16], "x", 0);
        assert!(r.unwrap_err().to_string().contains("checksum"));
    }
}
