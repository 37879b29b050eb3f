//! The node's two logs: events (activations, refusals, errors) on stderr through
//! `tracing`, and the access log, one JSON object per request, on stdout (written in
//! batches at least every 100 ms).

use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// Installs the event log on stderr.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// Access-log lines gather here and go to stdout in batches, one write for many lines.
static ACCESS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// A batch is written once it holds this much, or by [`flush_access`] (every 100 ms).
const FLUSH_AT: usize = 32 << 10;

/// Adds one access-log line (JSON, newline-terminated) to the batch.
pub fn access(line: &impl serde::Serialize) {
    let mut buffer = ACCESS.lock().unwrap_or_else(PoisonError::into_inner);
    let before = buffer.len();
    match serde_json::to_writer(&mut *buffer, line) {
        Ok(()) => buffer.push(b'\n'),
        Err(_) => buffer.truncate(before),
    }
    if buffer.len() >= FLUSH_AT {
        write_out(&mut buffer);
    }
}

/// Writes out the lines gathered so far.
pub fn flush_access() {
    let mut buffer = ACCESS.lock().unwrap_or_else(PoisonError::into_inner);
    write_out(&mut buffer);
}

/// Under the lock, so batches reach stdout whole and in order.
fn write_out(buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(buffer);
    let _ = stdout.flush();
    buffer.clear();
}

/// A time as RFC 3339 UTC with milliseconds, `2026-12-07T03:20:00.123Z`: an access-log
/// line's `time`.
#[derive(Clone, Copy)]
pub struct UtcMillis([u8; 24]);

impl UtcMillis {
    pub fn as_str(&self) -> &str {
        // ASCII digits and separators only: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl serde::Serialize for UtcMillis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

thread_local! {
    /// The second this thread last wrote a time in, up to its seconds (`…T03:20:00`): a
    /// line's time is then that and its milliseconds, not a date computed again.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn utc_now() -> UtcMillis {
    utc_at(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// `now` (since the Unix epoch) as RFC 3339 UTC with milliseconds.
fn utc_at(now: std::time::Duration) -> UtcMillis {
    let seconds = now.as_secs();
    let prefix = SECOND.with(|second| match second.get() {
        (cached, prefix) if cached == seconds => prefix,
        _ => {
            // `YYYY-MM-DDThh:mm:ssZ`; a time past the year 9999 is written as its end.
            let text = edgepack_bundles::time::utc(seconds);
            let mut prefix = *b"9999-12-31T23:59:59";
            if text.len() == 20 {
                prefix.copy_from_slice(&text.as_bytes()[..19]);
            }
            second.set((seconds, prefix));
            prefix
        }
    });
    let millis = now.subsec_millis().min(999);
    let mut text = [0u8; 24];
    text[..19].copy_from_slice(&prefix);
    text[19] = b'.';
    for (at, digit) in [
        (20, millis / 100),
        (21, millis / 10 % 10),
        (22, millis % 10),
    ] {
        text[at] = b'0' + digit as u8;
    }
    text[23] = b'Z';
    UtcMillis(text)
}

/// A duration for a log line: milliseconds to the microsecond (`470.124`, not
/// `470.12364299999996`).
pub fn millis(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn access_log_times_are_rfc_3339_utc_with_milliseconds() {
        let at = |seconds: u64, millis: u64| {
            super::utc_at(Duration::from_millis(seconds * 1000 + millis))
        };
        assert_eq!(at(1_700_000_000, 7).as_str(), "2023-11-14T22:13:20.007Z");
        // The same second again (its text kept), then the next, then an earlier one.
        assert_eq!(at(1_700_000_000, 999).as_str(), "2023-11-14T22:13:20.999Z");
        assert_eq!(at(1_700_000_001, 40).as_str(), "2023-11-14T22:13:21.040Z");
        assert_eq!(at(951_782_400, 100).as_str(), "2000-02-29T00:00:00.100Z");
        assert_eq!(at(0, 0).as_str(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn log_durations_are_milliseconds_to_the_microsecond() {
        let ms = super::millis(Duration::from_nanos(470_123_643));
        assert_eq!(ms.to_string(), "470.124");
        assert_eq!(
            super::millis(Duration::from_micros(82)).to_string(),
            "0.082"
        );
    }
}
