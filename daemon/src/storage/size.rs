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

#[cfg(test)]
mod tests {
    use super::*;

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
