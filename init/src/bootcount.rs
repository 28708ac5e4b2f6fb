//! Boot counting (systemd-boot's scheme): the UKI is installed as `NAME+3.efi`; the boot
//! loader renames it `NAME+2-1.efi`, … on each attempt and gives up on it (falls back to the
//! other slot's entry) when no tries are left. Once a boot is healthy (the API answers),
//! PID 1 blesses it: renames the booted entry to `NAME.efi`, which ends the counting.

use crate::{gpt, info};
use nix::mount::{mount, umount, MsFlags};
use std::path::Path;

const ESP_MOUNT: &str = "/run/cairn/esp-rw";
const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// `cairn-6.12+2-1.efi` → `cairn-6.12.efi`; None if the name has no boot counter.
pub fn blessed_name(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".efi")?;
    let (base, counter) = stem.rsplit_once('+')?;
    let valid = counter
        .split('-')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (valid && counter.split('-').count() <= 2).then(|| format!("{base}.efi"))
}

/// The booted entry's file name from the LoaderBootCountPath EFI variable, if set.
fn booted_counted_entry() -> Option<String> {
    let raw = std::fs::read(format!(
        "/sys/firmware/efi/efivars/LoaderBootCountPath-{LOADER_GUID}"
    ))
    .ok()?;
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let path = String::from_utf16_lossy(&units);
    path.rsplit('\\').next().map(str::to_string)
}

/// Blesses the booted entry on the ESP of `disk`. Errors are logged, never fatal.
pub fn bless(disk: &str) {
    let _ = mount(
        Some("efivarfs"),
        "/sys/firmware/efi/efivars",
        Some("efivarfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    let Some(esp) = gpt::read_disk(&Path::new("/dev").join(disk))
        .ok()
        .and_then(|parts| parts.into_iter().find(|p| p.type_guid == gpt::TYPE_ESP))
    else {
        info!("bless: no ESP on {disk}");
        return;
    };
    let dev = Path::new("/dev").join(gpt::partition_name(disk, esp.number));
    let _ = std::fs::create_dir_all(ESP_MOUNT);
    if let Err(e) = mount(
        Some(&dev),
        ESP_MOUNT,
        Some("vfat"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        info!("bless: mounting the ESP {}: {e}", dev.display());
        return;
    }
    let dir = Path::new(ESP_MOUNT).join("EFI/Linux");
    let booted = booted_counted_entry();
    let counted: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| blessed_name(n).is_some())
        .collect();
    let target = match booted {
        Some(b) if counted.contains(&b) => Some(b),
        Some(_) => None,
        None if counted.len() == 1 => counted.first().cloned(),
        None => None,
    };
    match target {
        Some(name) => {
            let new = blessed_name(&name).unwrap_or_default();
            match std::fs::rename(dir.join(&name), dir.join(&new)) {
                Ok(()) => crate::console::line(&format!("boot blessed: {name} -> {new}")),
                Err(e) => info!("bless: renaming {name}: {e}"),
            }
        }
        None => crate::console::line("boot already blessed"),
    }
    nix::unistd::sync();
    let _ = umount(ESP_MOUNT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_boot_counter() {
        assert_eq!(
            blessed_name("cairn-6.12-abc+3.efi").as_deref(),
            Some("cairn-6.12-abc.efi")
        );
        assert_eq!(
            blessed_name("cairn-6.12-abc+2-1.efi").as_deref(),
            Some("cairn-6.12-abc.efi")
        );
        assert_eq!(blessed_name("cairn-6.12+deb13-amd64-abc.efi"), None);
        assert_eq!(blessed_name("cairn-abc.efi"), None);
        assert_eq!(blessed_name("x+1-2-3.efi"), None);
    }
}
