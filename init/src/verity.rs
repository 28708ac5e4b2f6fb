//! dm-verity without userspace libraries: read the verity superblock that systemd-repart
//! (through libcryptsetup) writes at the start of the hash partition, and create the
//! device-mapper target with the DM ioctls.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("reading the verity superblock of {dev}: {source}")]
    Read { dev: String, source: std::io::Error },
    #[error("{dev} has no verity superblock")]
    NoSuperblock { dev: String },
    #[error("device-mapper {op} for {name}: {source}")]
    Dm {
        op: &'static str,
        name: String,
        source: std::io::Error,
    },
}

/// The on-disk verity superblock (cryptsetup's `struct verity_sb`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub hash_type: u32,
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl Superblock {
    pub fn parse(dev: &str, b: &[u8]) -> Result<Superblock, VerityError> {
        if b.len() < 512 || &b[0..8] != b"verity\0\0" {
            return Err(VerityError::NoSuperblock { dev: dev.into() });
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let alg_raw = &b[32..64];
        let alg_len = alg_raw.iter().position(|&c| c == 0).unwrap_or(32);
        let salt_size = u16::from_le_bytes([b[80], b[81]]) as usize;
        let mut data_blocks = [0u8; 8];
        data_blocks.copy_from_slice(&b[72..80]);
        Ok(Superblock {
            hash_type: u32_at(12),
            algorithm: String::from_utf8_lossy(&alg_raw[..alg_len]).into_owned(),
            data_block_size: u32_at(64),
            hash_block_size: u32_at(68),
            data_blocks: u64::from_le_bytes(data_blocks),
            salt: b[88..88 + salt_size.min(256)].to_vec(),
        })
    }

    pub fn read(dev: &Path) -> Result<Superblock, VerityError> {
        let name = dev.display().to_string();
        let mut b = vec![0u8; 512];
        File::open(dev)
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(|source| VerityError::Read {
                dev: name.clone(),
                source,
            })?;
        Superblock::parse(&name, &b)
    }

    /// The dm-verity table line. The hash tree starts at the first hash block after the
    /// superblock, as libcryptsetup lays it out.
    pub fn table(&self, data_dev: &str, hash_dev: &str, root_hash: &str) -> (u64, String) {
        let sectors = self.data_blocks * (self.data_block_size as u64 / 512);
        let hash_start = 512u64.div_ceil(self.hash_block_size as u64);
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            self.salt.iter().map(|b| format!("{b:02x}")).collect()
        };
        (
            sectors,
            format!(
                "{} {data_dev} {hash_dev} {} {} {} {hash_start} {} {root_hash} {salt}",
                self.hash_type,
                self.data_block_size,
                self.hash_block_size,
                self.data_blocks,
                self.algorithm
            ),
        )
    }
}

const DM_IOCTL_SIZE: usize = 312;
const DM_SPEC_SIZE: usize = 40;
const DM_READONLY_FLAG: u32 = 1;

fn dm_ioctl_nr(cmd: u32) -> libc::c_ulong {
    // _IOWR(0xfd, cmd, struct dm_ioctl)
    ((3u32 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (0xfd << 8) | cmd) as libc::c_ulong
}

fn dm_header(name: &str, total: usize, flags: u32, targets: u32) -> Vec<u8> {
    let mut b = vec![0u8; total];
    b[0..4].copy_from_slice(&4u32.to_ne_bytes()); // version 4.0.0
    b[12..16].copy_from_slice(&(total as u32).to_ne_bytes()); // data_size
    b[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes()); // data_start
    b[20..24].copy_from_slice(&targets.to_ne_bytes());
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    let n = name.as_bytes();
    b[48..48 + n.len().min(127)].copy_from_slice(&n[..n.len().min(127)]);
    b
}

fn dm_call(
    ctl: &File,
    cmd: u32,
    buf: &mut [u8],
    op: &'static str,
    name: &str,
) -> Result<(), VerityError> {
    // SAFETY: buf is at least DM_IOCTL_SIZE bytes and its data_size field says how large it is.
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), dm_ioctl_nr(cmd), buf.as_mut_ptr()) };
    if r < 0 {
        return Err(VerityError::Dm {
            op,
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Creates a read-only device-mapper device `name` with one target and activates it.
/// Returns the device number (kernel encoding, as in /sys/.../dev major:minor).
pub fn dm_create(
    name: &str,
    target: &str,
    sectors: u64,
    params: &str,
) -> Result<(u32, u32), VerityError> {
    let dm_err = |op, source| VerityError::Dm {
        op,
        name: name.into(),
        source,
    };
    let ctl = File::options()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .map_err(|e| dm_err("opening /dev/mapper/control", e))?;

    let mut create = dm_header(name, DM_IOCTL_SIZE, 0, 0);
    dm_call(&ctl, 3, &mut create, "create", name)?;
    let dev = u64::from_ne_bytes(create[40..48].try_into().unwrap_or_default());

    let mut p = params.as_bytes().to_vec();
    p.push(0);
    let spec_len = (DM_SPEC_SIZE + p.len()).div_ceil(8) * 8;
    let total = DM_IOCTL_SIZE + spec_len;
    let mut load = dm_header(name, total, DM_READONLY_FLAG, 1);
    let s = &mut load[DM_IOCTL_SIZE..];
    s[8..16].copy_from_slice(&sectors.to_ne_bytes());
    s[20..24].copy_from_slice(&(spec_len as u32).to_ne_bytes());
    let t = target.as_bytes();
    s[24..24 + t.len().min(15)].copy_from_slice(&t[..t.len().min(15)]);
    s[DM_SPEC_SIZE..DM_SPEC_SIZE + p.len()].copy_from_slice(&p);
    dm_call(&ctl, 9, &mut load, "table load", name)?;

    let mut resume = dm_header(name, DM_IOCTL_SIZE, 0, 0);
    dm_call(&ctl, 6, &mut resume, "resume", name)?;

    // new_encode_dev: minor low 8 bits, major next 12, minor high bits above.
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    Ok((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..8].copy_from_slice(b"verity\0\0");
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&4096u32.to_le_bytes());
        b[68..72].copy_from_slice(&4096u32.to_le_bytes());
        b[72..80].copy_from_slice(&1000u64.to_le_bytes());
        b[80..82].copy_from_slice(&2u16.to_le_bytes());
        b[88] = 0xab;
        b[89] = 0xcd;
        b
    }

    #[test]
    fn parses_superblock_and_builds_table() {
        let sb = Superblock::parse("t", &sample()).unwrap();
        assert_eq!(sb.algorithm, "sha256");
        assert_eq!(sb.data_blocks, 1000);
        let (sectors, table) = sb.table("259:2", "259:3", "ff00");
        assert_eq!(sectors, 8000);
        assert_eq!(table, "1 259:2 259:3 4096 4096 1000 1 sha256 ff00 abcd");
    }

    #[test]
    fn rejects_missing_superblock() {
        assert!(Superblock::parse("t", &[0u8; 512]).is_err());
        assert!(Superblock::parse("t", &[0u8; 10]).is_err());
    }
}
