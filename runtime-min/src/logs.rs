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

/// Now, as RFC 3339 UTC with milliseconds.
pub fn utc_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    edgepack_bundles::time::utc_millis(now.as_secs(), now.subsec_millis())
}
