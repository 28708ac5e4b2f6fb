//! Incus's size strings (`units.ParseByteSizeString`): a whole number and an optional unit,
//! decimal (`kB`, `MB`, `GB`…) or binary (`KiB`, `MiB`, `GiB`…); a bare number is bytes.

/// Bytes in `s`, or why it does not parse.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("Invalid value: {s:?}"));
    }
    let n: u64 = num.parse().map_err(|_| format!("Invalid value: {s:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "PB" => 1000u64.pow(5),
        "EB" => 1000u64.pow(6),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "PiB" => 1 << 50,
        "EiB" => 1 << 60,
        u => return Err(format!("Invalid unit {u:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("Size {s:?} is too large"))
}

/// `n` bytes the way Incus shows a size (`units.GetByteSizeStringIEC(n, 2)`): `512B`,
/// `1.00KiB`, `256.00MiB`, so an error message reads like Incus's.
pub fn format_iec(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    // f64 keeps the two decimals shown exact enough for any u64.
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iec_strings() {
        assert_eq!(format_iec(0), "0B");
        assert_eq!(format_iec(1023), "1023B");
        assert_eq!(format_iec(1024), "1.00KiB");
        assert_eq!(format_iec(256 << 20), "256.00MiB");
        assert_eq!(format_iec(16 << 30), "16.00GiB");
        assert_eq!(format_iec(1536 << 20), "1.50GiB");
        assert_eq!(format_iec(u64::MAX), "16.00EiB");
    }

    #[test]
    fn units() {
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert_eq!(parse_bytes("10 MiB").unwrap(), 10 << 20);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "GiB", "2 lots", "-1GiB", "1.5.2GB", "99999999999EiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
