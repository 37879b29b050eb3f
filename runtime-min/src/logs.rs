//! The node's two logs: events (activations, refusals, errors) on stderr through
//! `tracing`, and the access log, one JSON object per request, on stdout.

use std::io::Write;
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

/// Writes one access-log line.
pub fn access(line: &serde_json::Value) {
    let mut text = line.to_string();
    text.push('\n');
    // One write per line keeps lines whole when requests finish together.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn utc_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    edgepack_bundles::time::utc_millis(now.as_secs(), now.subsec_millis())
}
