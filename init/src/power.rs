//! The ACPI power button (QEMU `system_powerdown`): a thread reads the "Power Button" input
//! device and turns a key press into SIGPWR for PID 1, which shuts down in order.

use crate::info;
use std::fs::File;
use std::io::Read;
use std::time::Duration;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// Whether a raw `struct input_event` (24 bytes on 64-bit) is a power-key press.
pub fn is_power_press(ev: &[u8; 24]) -> bool {
    let kind = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

fn find_devices() -> Vec<String> {
    std::fs::read_dir("/sys/class/input")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/name"))
                .is_ok_and(|n| n.trim() == "Power Button")
        })
        .map(|e| format!("/dev/input/{}", e.file_name().to_string_lossy()))
        .collect()
}

/// Starts the listener threads (retrying for a while: the devices appear after `button`
/// and `evdev` are loaded).
pub fn listen() {
    let _ = std::thread::Builder::new()
        .name("power-button".into())
        .spawn(|| {
            let mut devices = Vec::new();
            for _ in 0..60 {
                devices = find_devices();
                if !devices.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            if devices.is_empty() {
                info!("no ACPI power button found");
                return;
            }
            for dev in devices {
                let _ = std::thread::Builder::new()
                    .name("power-button".into())
                    .spawn(move || watch(&dev));
            }
        });
}

fn watch(dev: &str) {
    let mut f = match File::open(dev) {
        Ok(f) => f,
        Err(e) => {
            info!("opening {dev}: {e}");
            return;
        }
    };
    info!("power button: {dev}");
    let mut ev = [0u8; 24];
    while f.read_exact(&mut ev).is_ok() {
        if is_power_press(&ev) {
            info!("power button pressed");
            // SAFETY: sending a signal to ourselves.
            unsafe { libc::kill(libc::getpid(), libc::SIGPWR) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_power_key_press() {
        let mut ev = [0u8; 24];
        ev[16..18].copy_from_slice(&EV_KEY.to_ne_bytes());
        ev[18..20].copy_from_slice(&KEY_POWER.to_ne_bytes());
        ev[20..24].copy_from_slice(&1i32.to_ne_bytes());
        assert!(is_power_press(&ev));
        ev[20..24].copy_from_slice(&0i32.to_ne_bytes());
        assert!(!is_power_press(&ev));
    }
}
