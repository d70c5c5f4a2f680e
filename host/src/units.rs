//! Parsing of human-friendly sizes (`64MiB`, `512KiB`, `1000`) and durations
//! (`500ms`, `2s`, `1m 30s`) shared by the CLI and the API.

use std::time::Duration;

/// Parses a byte size such as `64MiB`, `1.5 GB`, `4096` (plain bytes).
///
/// Binary (`KiB`, `MiB`, `GiB`) and decimal (`KB`, `MB`, `GB`) suffixes are
/// accepted, case-insensitively.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty size: expected a number of bytes such as `64MiB` or `4096`".into());
    }
    trimmed.parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|e| {
        format!(
            "invalid size `{text}` ({e}): expected a number with an optional unit such as `64MiB`, `512KiB` or `4096`"
        )
    })
}

/// Parses a duration such as `500ms`, `2s`, `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration `{text}` ({e}): expected a number with a unit such as `500ms`, `2s` or `1m`")
    })?;
    if d.is_zero() {
        return Err(format!("invalid duration `{text}`: must be greater than zero"));
    }
    Ok(d)
}

/// Formats a byte count for people: `64 MiB` when exact, else `1.5 MiB`.
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("512 KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        let err = parse_size("lots").unwrap_err();
        assert!(err.contains("invalid size `lots`"), "{err}");
        assert!(parse_size("").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(3 << 30), "3 GiB");
        assert_eq!(format_size(1536 << 10), "1536 KiB");
        assert_eq!(format_size(100), "100 B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("0s").unwrap_err().contains("greater than zero"));
        assert!(parse_duration("soon").unwrap_err().contains("invalid duration `soon`"));
    }
}
