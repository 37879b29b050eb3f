//! Watches HTTP/1 request framing as the bytes go by, so the node can refuse a request that
//! carries both `Content-Length` and `Transfer-Encoding` (a request-smuggling vector).
//!
//! hyper parses such a request by `Transfer-Encoding` and drops `Content-Length` before the
//! node sees the head, so the head is read here first, on the wire: the wrapper follows the
//! connection message by message (head, then a fixed-length or chunked body, the same way
//! hyper frames it) and records which requests carried both headers. A connection it cannot
//! follow (HTTP/2, bytes that do not parse) is left alone: hyper refuses what does not parse.
//!
//! The same wrapper notes when bytes last moved and how many requests are in flight, so the
//! server can close a connection that has sat idle for longer than the idle timeout.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the wrapper learns about one connection: which requests (0, 1, 2, … in order)
/// carried both framing headers, whether bytes have moved, and how many requests are in
/// flight.
pub struct Connection {
    ambiguous: Mutex<HashSet<u64>>,
    /// Counts reads, writes and finished requests: the idle check compares it from one look
    /// to the next instead of reading the clock on every read and write.
    activity: AtomicU64,
    in_flight: AtomicUsize,
}

/// Counts one request as in flight while it lives.
pub struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Follows a connection's activity from one look to the next (see [`Connection::idle`]).
pub struct IdleWatch {
    activity: u64,
    quiet_since: Instant,
}

impl Connection {
    fn new() -> Connection {
        Connection {
            ambiguous: Mutex::default(),
            activity: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Marks a request as in flight until the returned guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Starts following the connection's activity, as of now.
    pub fn idle_watch(&self) -> IdleWatch {
        IdleWatch {
            activity: self.activity.load(Ordering::Relaxed),
            quiet_since: Instant::now(),
        }
    }

    /// How long the connection has had no request in flight and no bytes moving, as far as
    /// the looks through `watch` tell (the quiet time is counted from the first look that
    /// saw nothing change).
    pub fn idle(&self, watch: &mut IdleWatch) -> Duration {
        let activity = self.activity.load(Ordering::Relaxed);
        if activity != watch.activity || self.in_flight.load(Ordering::Relaxed) > 0 {
            watch.activity = activity;
            watch.quiet_since = Instant::now();
        }
        watch.quiet_since.elapsed()
    }

    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    pub fn is_ambiguous(&self, request: u64) -> bool {
        self.ambiguous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&request)
    }

    fn flag(&self, request: u64) {
        self.ambiguous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(request);
    }
}

enum State {
    /// Reading a request head (bytes so far).
    Head(Vec<u8>),
    /// Skipping this many body bytes.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines after the last chunk (bytes of the current line).
    Trailers(Vec<u8>),
    /// Not following this connection.
    Off,
}

/// A stream whose incoming bytes are followed as HTTP/1 requests.
pub struct Watched<S> {
    inner: S,
    state: State,
    requests: u64,
    max_head: usize,
    flags: Arc<Connection>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, max_head: usize) -> (Watched<S>, Arc<Connection>) {
        let flags = Arc::new(Connection::new());
        let watched = Watched {
            inner,
            state: State::Head(Vec::new()),
            requests: 0,
            max_head,
            flags: flags.clone(),
        };
        (watched, flags)
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Off);
            self.state = match state {
                State::Off => return,
                State::Head(mut head) => {
                    if head.is_empty() {
                        // Empty lines before a request line are ignored (RFC 9112 §2.2).
                        let blank = bytes
                            .iter()
                            .take_while(|b| matches!(b, b'\r' | b'\n'))
                            .count();
                        bytes = &bytes[blank..];
                        if bytes.is_empty() {
                            self.state = State::Head(head);
                            return;
                        }
                    }
                    if head.is_empty()
                        && let Some(end) = find_end_of_head(bytes)
                        && end <= self.max_head
                    {
                        // The whole head is in this read (nearly always): no copy.
                        let (whole, rest) = bytes.split_at(end);
                        bytes = rest;
                        self.state = self.after_head(whole);
                        continue;
                    }
                    let before = head.len();
                    let start = before.saturating_sub(3);
                    let take = bytes.len().min((self.max_head + 4).saturating_sub(before));
                    head.extend_from_slice(&bytes[..take]);
                    match find_end_of_head(&head[start..]) {
                        Some(end) => {
                            let end = start + end;
                            bytes = &bytes[end.saturating_sub(before)..];
                            self.after_head(&head[..end])
                        }
                        None if take < bytes.len() || head.len() > self.max_head => State::Off,
                        None => {
                            bytes = &[];
                            State::Head(head)
                        }
                    }
                }
                State::Fixed(left) => {
                    let n = (bytes.len() as u64).min(left);
                    bytes = &bytes[n as usize..];
                    if left == n {
                        State::Head(Vec::new())
                    } else {
                        State::Fixed(left - n)
                    }
                }
                State::ChunkSize(mut line) => match bytes.iter().position(|b| *b == b'\n') {
                    Some(at) => {
                        line.extend_from_slice(&bytes[..at]);
                        bytes = &bytes[at + 1..];
                        match chunk_size(&line) {
                            Some(0) => State::Trailers(Vec::new()),
                            Some(size) => State::ChunkData(size.saturating_add(2)),
                            None => State::Off,
                        }
                    }
                    None if line.len() + bytes.len() > 1024 => State::Off,
                    None => {
                        line.extend_from_slice(bytes);
                        bytes = &[];
                        State::ChunkSize(line)
                    }
                },
                State::ChunkData(left) => {
                    let n = (bytes.len() as u64).min(left);
                    bytes = &bytes[n as usize..];
                    if left == n {
                        State::ChunkSize(Vec::new())
                    } else {
                        State::ChunkData(left - n)
                    }
                }
                State::Trailers(mut line) => match bytes.iter().position(|b| *b == b'\n') {
                    Some(at) => {
                        line.extend_from_slice(&bytes[..at]);
                        bytes = &bytes[at + 1..];
                        if line.iter().all(|b| *b == b'\r') {
                            State::Head(Vec::new())
                        } else {
                            State::Trailers(Vec::new())
                        }
                    }
                    None if line.len() + bytes.len() > self.max_head => State::Off,
                    None => {
                        line.extend_from_slice(bytes);
                        bytes = &[];
                        State::Trailers(line)
                    }
                },
            };
        }
    }

    /// The state after a complete head: how its body is framed.
    fn after_head(&mut self, head: &[u8]) -> State {
        if head.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        // Left uninitialized: zeroing 256 headers (8 KiB) on every request cost more than
        // the parse.
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 256];
        let mut request = httparse::Request::new(&mut []);
        match request.parse_with_uninit_headers(head, &mut headers) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return State::Off,
        }
        let index = self.requests;
        self.requests += 1;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut has_length = false;
        let mut has_encoding = false;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                has_length = true;
                length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                has_encoding = true;
                chunked = header
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        if has_length && has_encoding {
            self.flags.flag(index);
        }
        if has_encoding {
            if chunked {
                State::ChunkSize(Vec::new())
            } else {
                State::Off
            }
        } else if !has_length {
            State::Head(Vec::new())
        } else {
            match length {
                Some(0) => State::Head(Vec::new()),
                Some(n) => State::Fixed(n),
                None => State::Off,
            }
        }
    }
}

/// The end of a head (just after its blank line) in `bytes`, if there: lines may end in
/// CRLF or a bare LF, as hyper accepts.
fn find_end_of_head(bytes: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', bytes).find_map(|i| match &bytes[i..] {
        [b'\n', b'\n', ..] => Some(i + 2),
        [b'\n', b'\r', b'\n', ..] => Some(i + 3),
        _ => None,
    })
}

fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|b| *b == b';').next()?.trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            self.flags.touch();
            if !matches!(self.state, State::Off) {
                self.observe(&buf.filled()[before..]);
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = result {
            self.flags.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(_)) = result {
            self.flags.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(chunks: &[&[u8]]) -> (Arc<Connection>, u64) {
        let (mut watched, flags) = Watched::new((), 8192);
        for chunk in chunks {
            watched.observe(chunk);
        }
        (flags, watched.requests)
    }

    #[test]
    fn follows_pipelined_requests_and_flags_the_ambiguous_one() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
POST /z HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /last HTTP/1.1\r\nHost: a\r\n\r\n";
        let (flags, requests) = watch(&[stream]);
        assert_eq!(requests, 5);
        assert!(!flags.is_ambiguous(0) && !flags.is_ambiguous(1) && !flags.is_ambiguous(2));
        assert!(flags.is_ambiguous(3));
        assert!(!flags.is_ambiguous(4));
    }

    #[test]
    fn bytes_may_arrive_one_at_a_time() {
        let stream = b"POST /z HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let (flags, requests) = watch(&chunks);
        assert_eq!(requests, 2);
        assert!(flags.is_ambiguous(0));
        assert!(!flags.is_ambiguous(1));
    }

    #[test]
    fn a_body_that_looks_like_headers_is_not_a_head() {
        let body = b"GET /fake HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        let (flags, requests) = watch(&[head.as_bytes(), body]);
        assert_eq!(requests, 1);
        assert!(!flags.is_ambiguous(0) && !flags.is_ambiguous(1));
    }

    #[test]
    fn http2_and_garbage_turn_it_off() {
        let (_, requests) = watch(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]);
        assert_eq!(requests, 0);
        let (_, requests) = watch(&[b"\x00\x01 not http\r\n\r\nGET / HTTP/1.1\r\n\r\n"]);
        assert_eq!(requests, 0);
    }
}
