//! Durations (`"30s"`, `"1h30m"`) and sizes (`"64KiB"`) as written in policies.
//!
//! Parsing returns the byte range of the offending part on error, so a diagnostic can point
//! inside the string.

use std::time::Duration;

/// Why a duration or size did not parse, and where in the text.
#[derive(Debug, PartialEq, Eq)]
pub struct UnitError {
    pub start: usize,
    pub end: usize,
    pub reason: String,
}

const DURATION_UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

const SIZE_UNITS: [(&str, u64); 7] = [
    ("B", 1),
    ("KB", 1_000),
    ("KiB", 1 << 10),
    ("MB", 1_000_000),
    ("MiB", 1 << 20),
    ("GB", 1_000_000_000),
    ("GiB", 1 << 30),
];

/// Parses one or more `<integer><unit>` groups: `500ms`, `30s`, `5m`, `1h30m`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let groups = split_groups(text)?;
    let mut total_ms: u64 = 0;
    for (number, unit, start, end) in groups {
        let Some((_, scale)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(UnitError {
                start,
                end,
                reason: if unit.is_empty() {
                    "a duration needs a unit".into()
                } else {
                    format!("unknown duration unit `{unit}`")
                },
            });
        };
        total_ms = number
            .checked_mul(*scale)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| UnitError {
                start,
                end,
                reason: "duration is too long".into(),
            })?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses `<integer><unit>`: `512B`, `64KiB`, `10MB`, `1GiB`.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let groups = split_groups(text)?;
    if groups.len() > 1 {
        let (_, _, start, _) = groups[1];
        return Err(UnitError {
            start,
            end: text.len(),
            reason: "a size is one number and one unit".into(),
        });
    }
    let (number, unit, start, end) = groups[0];
    let Some((_, scale)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(UnitError {
            start,
            end,
            reason: if unit.is_empty() {
                "a size needs a unit".into()
            } else {
                format!("unknown size unit `{unit}`")
            },
        });
    };
    number.checked_mul(*scale).ok_or_else(|| UnitError {
        start: 0,
        end: text.len(),
        reason: "size is too large".into(),
    })
}

pub fn duration_units_help() -> &'static str {
    "write an integer followed by a unit: ms, s, m, h or d, e.g. \"30s\", \"5m\" or \"1h30m\""
}

pub fn size_units_help() -> &'static str {
    "write an integer followed by a unit: B, KB, KiB, MB, MiB, GB or GiB, e.g. \"64KiB\""
}

/// Formats a duration the way a policy would write it (`"1h30m"`, `"250ms"`).
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, scale) in DURATION_UNITS.iter().rev() {
        if ms >= *scale {
            let n = ms / scale;
            if n > 0 {
                out.push_str(&format!("{n}{unit}"));
                ms -= n * scale;
            }
        }
    }
    out
}

/// Splits `1h30m` into (number, unit, start, end) groups.
fn split_groups(text: &str) -> Result<Vec<(u64, &str, usize, usize)>, UnitError> {
    if text.trim().is_empty() {
        return Err(UnitError {
            start: 0,
            end: text.len(),
            reason: "empty value".into(),
        });
    }
    let bytes = text.as_bytes();
    let mut groups = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            let end = text[i..]
                .char_indices()
                .nth(1)
                .map_or(text.len(), |(o, _)| i + o);
            return Err(UnitError {
                start,
                end,
                reason: "expected a number".into(),
            });
        }
        let number: u64 = text[start..i].parse().map_err(|_| UnitError {
            start,
            end: i,
            reason: "number is too large".into(),
        })?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        if i < bytes.len() && !bytes[i].is_ascii_digit() {
            let end = text[i..]
                .char_indices()
                .nth(1)
                .map_or(text.len(), |(o, _)| i + o);
            return Err(UnitError {
                start: i,
                end,
                reason: "unexpected character".into(),
            });
        }
        groups.push((number, &text[unit_start..i], start, i));
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        let err = parse_duration("5 minutes").unwrap_err();
        assert_eq!((err.start, err.end), (1, 2));
        let err = parse_duration("5mins").unwrap_err();
        assert_eq!(
            (err.start, err.end, err.reason.as_str()),
            (0, 5, "unknown duration unit `mins`")
        );
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("9999999999999999d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("64kib").is_err());
        assert!(parse_size("1MiB2KiB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn formats_durations_back() {
        for text in ["30s", "5m", "1h30m", "250ms", "1d", "0s", "1m500ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
