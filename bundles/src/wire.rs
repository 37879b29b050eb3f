//! The request block: how a request is laid out in a policy module's memory (ABI v1).
//!
//! [`encode`] parses a request once — host without port, path split into percent-decoded,
//! dot-normalized segments, query and form/multipart/JSON body arguments, cookies, `X-Forwarded-For`
//! hops — and writes it into a caller-provided buffer without allocating: the node writes
//! straight into the module's linear memory. [`decode`] reads a block back into owned Rust
//! values for the reference evaluator, so the evaluator and the compiled module always see
//! the very same parsed request. The layout is documented in docs/abi.md.

use crate::abi::{flag, method, req};
use crate::multipart;
use crate::request::{RequestParts, ip_bytes};

/// Bounds on what one request may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_segments: u32,
    pub max_headers: u32,
    pub max_args: u32,
    pub max_cookies: u32,
    pub max_xff_hops: u32,
    pub max_json_depth: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_segments: 128,
            max_headers: 128,
            max_args: 1024,
            max_cookies: 128,
            max_xff_hops: 32,
            max_json_depth: 32,
        }
    }
}

/// Why a request cannot be written into the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("the request is larger than the policy's request buffer ({capacity} bytes)")]
    TooLarge { capacity: usize },
    #[error("the request has more than {limit} {what}")]
    TooMany { what: &'static str, limit: u32 },
    #[error("the request's {0}")]
    Ambiguous(&'static str),
}

impl EncodeError {
    /// The HTTP status a node answers with.
    pub fn status(&self) -> u16 {
        match self {
            EncodeError::TooMany {
                what: "headers" | "cookies" | "forwarded hops",
                ..
            } => 431,
            EncodeError::TooMany {
                what: "multipart parts",
                ..
            } => 413,
            EncodeError::TooMany { .. } => 414,
            EncodeError::Ambiguous(_) => 400,
            EncodeError::TooLarge { .. } => 413,
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    /// Next free byte of the arena (after the header).
    pos: usize,
}

impl Writer<'_> {
    #[cold]
    fn full(&self) -> EncodeError {
        EncodeError::TooLarge {
            capacity: self.buf.len(),
        }
    }

    #[inline]
    fn put_u32_at(&mut self, at: usize, value: u32) {
        self.buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    #[inline]
    fn align(&mut self) -> Result<(), EncodeError> {
        let aligned = (self.pos + 3) & !3;
        if aligned > self.buf.len() {
            return Err(self.full());
        }
        self.pos = aligned;
        Ok(())
    }

    #[inline]
    fn reserve(&mut self, len: usize) -> Result<usize, EncodeError> {
        let start = self.pos;
        let end = start.checked_add(len).ok_or_else(|| self.full())?;
        if end > self.buf.len() {
            return Err(self.full());
        }
        self.pos = end;
        Ok(start)
    }

    #[inline]
    fn bytes(&mut self, bytes: &[u8]) -> Result<(u32, u32), EncodeError> {
        let start = self.reserve(bytes.len())?;
        self.buf[start..start + bytes.len()].copy_from_slice(bytes);
        Ok((start as u32, bytes.len() as u32))
    }

    /// Writes `bytes` in ASCII lower case, in one pass (lower-casing a copy in place reads
    /// back bytes just written, which stalls on short values).
    fn lowered(&mut self, bytes: &[u8]) -> Result<(u32, u32), EncodeError> {
        let start = self.reserve(bytes.len())?;
        for (to, from) in self.buf[start..start + bytes.len()].iter_mut().zip(bytes) {
            *to = from.to_ascii_lowercase();
        }
        Ok((start as u32, bytes.len() as u32))
    }

    /// Writes `src` percent-decoded (and `+` as space when asked). Decoding never makes
    /// text longer, so with room for `src` no further checks are needed; runs between `%`
    /// escapes are copied whole and their `+` replaced in place.
    fn decoded(&mut self, src: &[u8], plus_as_space: bool) -> Result<(u32, u32), EncodeError> {
        let start = self.pos;
        if self.buf.len() - self.pos < src.len() {
            return self.decoded_slowly(src, plus_as_space);
        }
        let out = &mut self.buf[start..start + src.len()];
        let mut written = 0;
        let mut i = 0;
        while i < src.len() {
            let rest = &src[i..];
            // memchr pays off on long runs; short values are scanned directly.
            let found = if rest.len() < 32 {
                rest.iter().position(|b| *b == b'%')
            } else {
                memchr::memchr(b'%', rest)
            };
            let run = found.unwrap_or(rest.len());
            let copied = &mut out[written..written + run];
            copied.copy_from_slice(&src[i..i + run]);
            if plus_as_space {
                for b in copied.iter_mut() {
                    if *b == b'+' {
                        *b = b' ';
                    }
                }
            }
            written += run;
            i += run;
            if i < src.len() {
                let (byte, used) = decode_escape(&src[i..], plus_as_space);
                out[written] = byte;
                written += 1;
                i += used;
            }
        }
        self.pos += written;
        Ok((start as u32, written as u32))
    }

    /// [`Writer::decoded`] for the last bytes of the buffer, checking room byte by byte.
    fn decoded_slowly(
        &mut self,
        src: &[u8],
        plus_as_space: bool,
    ) -> Result<(u32, u32), EncodeError> {
        let start = self.pos;
        let mut i = 0;
        while i < src.len() {
            let (byte, used) = decode_escape(&src[i..], plus_as_space);
            if self.pos >= self.buf.len() {
                return Err(self.full());
            }
            self.buf[self.pos] = byte;
            self.pos += 1;
            i += used;
        }
        Ok((start as u32, (self.pos - start) as u32))
    }
}

/// The byte at the start of `src` after decoding, and how many input bytes it took.
fn decode_escape(src: &[u8], plus_as_space: bool) -> (u8, usize) {
    match src {
        [b'%', h, l, ..] => match (hex(*h), hex(*l)) {
            (Some(h), Some(l)) => (h << 4 | l, 3),
            _ => (b'%', 1),
        },
        [b'+', ..] if plus_as_space => (b' ', 1),
        [b, ..] => (*b, 1),
        [] => (0, 1),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn method_code(m: &str) -> u32 {
    method::code(m)
}

/// The host without port or trailing dot, in lower case.
fn normalized_host(host: &[u8]) -> &[u8] {
    let host = if host.first() == Some(&b'[') {
        match host.iter().position(|b| *b == b']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.iter().rposition(|b| *b == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    host.strip_suffix(b".").unwrap_or(host)
}

/// Writes `parts` as a request block into `out` and returns the block's length. At most
/// `body_limit` bytes of the body are written (the policy inspects no more).
pub fn encode<R: RequestParts + ?Sized>(
    parts: &R,
    limits: &Limits,
    body_limit: usize,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let capacity = out.len();
    if capacity < req::HEADER_SIZE as usize {
        return Err(EncodeError::TooLarge { capacity });
    }
    out[..req::HEADER_SIZE as usize].fill(0);
    let mut w = Writer {
        buf: out,
        pos: req::HEADER_SIZE as usize,
    };
    let method = parts.method();
    let method_code = method_code(method);
    w.put_u32_at(req::ABI as usize, crate::abi::ABI_VERSION);
    w.put_u32_at(req::METHOD as usize, method_code);
    let peer = ip_bytes(parts.peer());
    w.buf[req::PEER as usize..req::PEER as usize + 16].copy_from_slice(&peer);

    // The request line, with the path and the query inside it: method, space, path, `?`
    // and query when there is one (so the path's offset spans the URI), space, protocol.
    let (line, method_len) = w.bytes(method.as_bytes())?;
    w.bytes(b" ")?;
    let (path_at, len) = w.bytes(parts.path())?;
    w.put_u32_at(req::PATH as usize, path_at);
    w.put_u32_at(req::PATH as usize + 4, len);
    if !parts.query().is_empty() {
        w.bytes(b"?")?;
    }
    let (off, len) = w.bytes(parts.query())?;
    w.put_u32_at(req::QUERY as usize, off);
    w.put_u32_at(req::QUERY as usize + 4, len);
    w.bytes(b" ")?;
    let (_, protocol_len) = w.bytes(parts.protocol().as_bytes())?;
    w.put_u32_at(req::REQUEST_LINE as usize, line);
    w.put_u32_at(req::REQUEST_LINE as usize + 4, w.pos as u32 - line);
    w.put_u32_at(req::METHOD_LEN as usize, method_len);
    w.put_u32_at(req::PROTOCOL_LEN as usize, protocol_len);
    let (off, len) = w.lowered(normalized_host(parts.host()))?;
    w.put_u32_at(req::HOST as usize, off);
    w.put_u32_at(req::HOST as usize + 4, len);

    write_segments(&mut w, parts.path(), path_at as usize, limits)?;
    let (flags, content_type, forwarded) = write_headers(&mut w, parts, limits)?;
    let mut flags = flags;
    if method_code == method::OPTIONS && flags & flag::HAS_ACRM != 0 {
        flags |= flag::PREFLIGHT;
    }
    let body = &parts.body()[..parts.body().len().min(body_limit)];
    // A multipart body's boundary, copied out of the block the writer goes on extending
    // (into a buffer set up only then: zeroing it for every request costs more than the
    // rest of encoding a small one).
    let boundary_copy: [u8; multipart::MAX_CONTENT_TYPE];
    let mut boundary = None;
    if let Some((off, len)) = content_type {
        let content_type = &w.buf[off as usize..(off + len) as usize];
        if let Some(named) = multipart::boundary(content_type).map_err(|_| {
            EncodeError::Ambiguous("multipart content type names more than one boundary")
        })? {
            let mut copy = [0u8; multipart::MAX_CONTENT_TYPE];
            copy[..named.len()].copy_from_slice(named);
            boundary_copy = copy;
            boundary = Some(&boundary_copy[..named.len()]);
        }
    }
    if !parts.query().is_empty() || !body.is_empty() {
        write_args(&mut w, parts.query(), body, content_type, boundary, limits)?;
    }
    // Lists absent from the request stay (0, 0) from the zeroed header.
    if flags & flag::HAS_COOKIE != 0 {
        write_cookies(&mut w, parts, limits)?;
    }
    if forwarded {
        write_xff(&mut w, parts, limits)?;
    }

    let (off, len) = w.bytes(body)?;
    w.put_u32_at(req::BODY as usize, off);
    w.put_u32_at(req::BODY as usize + 4, len);
    let total = parts.body_len().max(parts.body().len() as u64);
    w.put_u32_at(
        req::BODY_TOTAL as usize,
        u32::try_from(total).unwrap_or(u32::MAX),
    );
    if total > body.len() as u64 {
        flags |= flag::BODY_TRUNCATED;
    }
    w.put_u32_at(req::FLAGS as usize, flags);
    Ok(w.pos)
}

/// Path segments: split on `/`, percent-decoded, empty and `.` segments dropped, `..` removing
/// the one before it. Each record is (offset, length). `copy` is where the block already
/// holds `path` (in the request line).
fn write_segments(
    w: &mut Writer<'_>,
    path: &[u8],
    copy: usize,
    limits: &Limits,
) -> Result<(), EncodeError> {
    // Remember each segment's (off, len) on the fly in the record array, which is reserved
    // at its largest size (one record per `/`-separated piece, up to the limit) and trimmed
    // by the count. A path without escapes (nearly all of them) needs no decoding: its
    // segments point into the request line's copy. Otherwise each segment is decoded into
    // the arena.
    let most = (memchr::memchr_iter(b'/', path).count() + 1).min(limits.max_segments as usize);
    w.align()?;
    let records = w.reserve(most * 8)?;
    let plain = memchr::memchr(b'%', path).is_none();
    let mut pieces: u32 = 0;
    let mut count: u32 = 0;
    let mut piece_start = 0;
    for piece in path.split(|b| *b == b'/') {
        let start = piece_start;
        piece_start += piece.len() + 1;
        if piece.is_empty() {
            continue;
        }
        pieces += 1;
        if pieces > limits.max_segments {
            return Err(EncodeError::TooMany {
                what: "path segments",
                limit: limits.max_segments,
            });
        }
        let mark = w.pos;
        let (off, len) = if plain {
            ((copy + start) as u32, piece.len() as u32)
        } else {
            w.decoded(piece, false)?
        };
        let text = &w.buf[off as usize..(off + len) as usize];
        if text == b"." {
            w.pos = mark;
            continue;
        }
        if text == b".." {
            w.pos = mark;
            count = count.saturating_sub(1);
            continue;
        }
        let at = records + count as usize * 8;
        w.put_u32_at(at, off);
        w.put_u32_at(at + 4, len);
        count += 1;
    }
    w.put_u32_at(req::SEGMENTS as usize, records as u32);
    w.put_u32_at(req::SEGMENTS as usize + 4, count);
    Ok(())
}

/// Flags, the content type's (offset, length), and whether `X-Forwarded-For` is present.
type HeaderSummary = (u32, Option<(u32, u32)>, bool);

/// Headers as (name, value) records.
fn write_headers<R: RequestParts + ?Sized>(
    w: &mut Writer<'_>,
    parts: &R,
    limits: &Limits,
) -> Result<HeaderSummary, EncodeError> {
    let count = u32::try_from(parts.header_count()).unwrap_or(u32::MAX);
    if count > limits.max_headers {
        return Err(EncodeError::TooMany {
            what: "headers",
            limit: limits.max_headers,
        });
    }
    w.align()?;
    let records = w.reserve(count as usize * 16)?;
    let mut index = 0usize;
    let mut flags = 0u32;
    let mut forwarded = false;
    let mut preflight_method = method::OTHER;
    let mut content_type = None;
    let mut error = None;
    parts.for_each_header(&mut |name, value| {
        if error.is_some() || index as u32 >= count {
            return;
        }
        let result = (|| {
            let (name_off, name_len) = w.lowered(name)?;
            let (value_off, value_len) = w.bytes(value)?;
            Ok::<_, EncodeError>((name_off, name_len, value_off, value_len))
        })();
        match result {
            Ok((name_off, name_len, value_off, value_len)) => {
                put_record(
                    w,
                    records,
                    index,
                    (name_off, name_len),
                    (value_off, value_len),
                );
                index += 1;
                let lower = |n: &[u8], want: &[u8]| n.eq_ignore_ascii_case(want);
                if lower(name, b"authorization") {
                    flags |= flag::HAS_AUTHORIZATION;
                    if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
                        flags |= flag::HAS_BEARER;
                    }
                } else if lower(name, b"cookie") {
                    flags |= flag::HAS_COOKIE;
                } else if lower(name, b"access-control-request-method") {
                    flags |= flag::HAS_ACRM;
                    preflight_method =
                        std::str::from_utf8(value.trim_ascii()).map_or(method::OTHER, method_code);
                } else if lower(name, b"x-forwarded-for") {
                    forwarded = true;
                } else if lower(name, b"content-type") && content_type.is_none() {
                    content_type = Some((value_off, value_len));
                }
            }
            Err(e) => error = Some(e),
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    w.put_u32_at(req::HEADERS as usize, records as u32);
    w.put_u32_at(req::HEADERS as usize + 4, index as u32);
    w.put_u32_at(req::PREFLIGHT_METHOD as usize, preflight_method);
    Ok((flags, content_type, forwarded))
}

/// Arguments from the query, then from a form, multipart or JSON body.
fn write_args(
    w: &mut Writer<'_>,
    query: &[u8],
    body: &[u8],
    content_type: Option<(u32, u32)>,
    boundary: Option<&[u8]>,
    limits: &Limits,
) -> Result<(), EncodeError> {
    let multipart = boundary.map(|b| (b, MultipartCounts::of(body, b)));
    let kind = match multipart {
        Some(_) => BodyKind::Multipart,
        None => content_type.map_or(BodyKind::Other, |(off, len)| {
            body_kind(&w.buf[off as usize..(off + len) as usize])
        }),
    };
    // Upper bound on the number of records: pieces of the query, plus of the body.
    let query_pieces = count_pieces(query);
    let body_pieces = match kind {
        BodyKind::Form => count_pieces(body),
        BodyKind::Json => count_json_leaves(body, limits.max_json_depth),
        BodyKind::Multipart => multipart.map_or(0, |(_, counts)| counts.fields),
        BodyKind::Other => 0,
    };
    let most = query_pieces + body_pieces;
    if most > limits.max_args as usize {
        return Err(EncodeError::TooMany {
            what: "arguments",
            limit: limits.max_args,
        });
    }
    w.align()?;
    let records = w.reserve(most * 16)?;
    let mut count = 0usize;
    for piece in pieces(query) {
        write_form_pair(w, records, &mut count, piece)?;
    }
    let query_count = count;
    match kind {
        BodyKind::Form => {
            for piece in pieces(body) {
                write_form_pair(w, records, &mut count, piece)?;
            }
        }
        BodyKind::Json => {
            let mut flattener = JsonFlattener {
                src: body,
                pos: 0,
                name: [0; 512],
                name_len: 0,
                records,
                count: &mut count,
                max_count: most,
                max_depth: limits.max_json_depth,
            };
            // A malformed body keeps the arguments read before the error.
            let _ = flattener.value(w, 0);
        }
        BodyKind::Multipart => {
            if let Some((boundary, counts)) = multipart {
                write_multipart(w, records, &mut count, body, boundary, counts, limits)?;
            }
        }
        BodyKind::Other => {}
    }
    w.put_u32_at(req::ARGS as usize, records as u32);
    w.put_u32_at(req::ARGS as usize + 4, count as u32);
    w.put_u32_at(req::QUERY_ARGS as usize, query_count as u32);
    Ok(())
}

/// The non-empty `&`-separated pieces of `text`.
fn pieces(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'&', text)
        .chain(std::iter::once(text.len()))
        .filter_map(move |at| {
            let piece = &text[start..at];
            start = at + 1;
            (!piece.is_empty()).then_some(piece)
        })
}

fn count_pieces(text: &[u8]) -> usize {
    pieces(text).count()
}

fn write_form_pair(
    w: &mut Writer<'_>,
    records: usize,
    count: &mut usize,
    piece: &[u8],
) -> Result<(), EncodeError> {
    let (name, value) = match memchr::memchr(b'=', piece) {
        Some(eq) => (&piece[..eq], &piece[eq + 1..]),
        None => (piece, &b""[..]),
    };
    let name = w.decoded(name, true)?;
    let value = w.decoded(value, true)?;
    put_record(w, records, *count, name, value);
    *count += 1;
    Ok(())
}

/// What a multipart body holds: fields, file parts, part header lines.
#[derive(Clone, Copy, Default)]
struct MultipartCounts {
    fields: usize,
    files: usize,
    header_lines: usize,
}

impl MultipartCounts {
    fn of(body: &[u8], boundary: &[u8]) -> MultipartCounts {
        let mut counts = MultipartCounts::default();
        for part in multipart::parts(body, boundary) {
            match part.disposition().filename {
                Some(_) => counts.files += 1,
                None => counts.fields += 1,
            }
            counts.header_lines += part.header_lines().count();
        }
        counts
    }
}

/// A multipart body in one pass, as ModSecurity reads it: each field an argument (records
/// at `args`, after the `count` written), each file part a (field name, file name) record
/// and each part header line a (part name, `Name: value`) record, folded lines joined with
/// a space: `ARGS`, `FILES_NAMES`/`FILES` and `MULTIPART_PART_HEADERS`.
fn write_multipart(
    w: &mut Writer<'_>,
    args: usize,
    count: &mut usize,
    body: &[u8],
    boundary: &[u8],
    counts: MultipartCounts,
    limits: &Limits,
) -> Result<(), EncodeError> {
    if counts.files.max(counts.header_lines) > limits.max_args as usize {
        return Err(EncodeError::TooMany {
            what: "multipart parts",
            limit: limits.max_args,
        });
    }
    w.align()?;
    let files = w.reserve(counts.files * 16)?;
    let header_lines = w.reserve(counts.header_lines * 16)?;
    let (mut file_count, mut header_count) = (0usize, 0usize);
    for part in multipart::parts(body, boundary) {
        let disposition = part.disposition();
        let name = write_unquoted(w, disposition.name.unwrap_or_default())?;
        match disposition.filename {
            Some(filename) => {
                let filename = write_unquoted(w, filename)?;
                put_record(w, files, file_count, name, filename);
                file_count += 1;
            }
            None => {
                let content = w.bytes(part.content)?;
                put_record(w, args, *count, name, content);
                *count += 1;
            }
        }
        for line in part.header_lines() {
            let start = w.pos;
            w.bytes(line.name)?;
            w.bytes(b": ")?;
            for (i, text) in line.value_lines().enumerate() {
                if i > 0 {
                    w.bytes(b" ")?;
                }
                w.bytes(text)?;
            }
            let text = (start as u32, (w.pos - start) as u32);
            put_record(w, header_lines, header_count, name, text);
            header_count += 1;
        }
    }
    w.put_u32_at(req::FILES as usize, files as u32);
    w.put_u32_at(req::FILES as usize + 4, file_count as u32);
    w.put_u32_at(req::PART_HEADERS as usize, header_lines as u32);
    w.put_u32_at(req::PART_HEADERS as usize + 4, header_count as u32);
    Ok(())
}

/// Writes a raw `Content-Disposition` value without its quotes and escapes.
fn write_unquoted(w: &mut Writer<'_>, raw: &[u8]) -> Result<(u32, u32), EncodeError> {
    let start = w.pos;
    let mut result = Ok(());
    multipart::unquote(raw, |run| {
        if result.is_ok() {
            result = w.bytes(run).map(|_| ());
        }
    });
    result?;
    Ok((start as u32, (w.pos - start) as u32))
}

/// Writes the `index`th (name, value) record of the list at `records`.
fn put_record(
    w: &mut Writer<'_>,
    records: usize,
    index: usize,
    (name_off, name_len): (u32, u32),
    (value_off, value_len): (u32, u32),
) {
    let at = records + index * 16;
    w.put_u32_at(at, name_off);
    w.put_u32_at(at + 4, name_len);
    w.put_u32_at(at + 8, value_off);
    w.put_u32_at(at + 12, value_len);
}

#[derive(Clone, Copy)]
enum BodyKind {
    Form,
    Json,
    Multipart,
    Other,
}

fn body_kind(content_type: &[u8]) -> BodyKind {
    let essence = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        BodyKind::Form
    } else if essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json"))
    {
        BodyKind::Json
    } else {
        BodyKind::Other
    }
}

/// An upper bound on the leaves a JSON body yields: one per `,`, `:` or value start is more
/// than enough, and cheap to count.
fn count_json_leaves(body: &[u8], _max_depth: u32) -> usize {
    body.iter()
        .filter(|b| matches!(b, b',' | b'[' | b'{'))
        .count()
        + 1
}

/// Flattens a JSON document into (dotted name, value) arguments: `{"a":{"b":[1,"x"]}}`
/// gives `a.b.0=1` and `a.b.1=x`. Strings are unescaped; other scalars kept as written.
struct JsonFlattener<'s, 'c> {
    src: &'s [u8],
    pos: usize,
    name: [u8; 512],
    name_len: usize,
    records: usize,
    count: &'c mut usize,
    max_count: usize,
    max_depth: u32,
}

#[derive(Debug)]
struct JsonError;

impl JsonFlattener<'_, '_> {
    fn skip_ws(&mut self) {
        while self.pos < self.src.len()
            && matches!(self.src[self.pos], b' ' | b'\t' | b'\n' | b'\r')
        {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn value(&mut self, w: &mut Writer<'_>, depth: u32) -> Result<(), JsonError> {
        if depth > self.max_depth {
            return Err(JsonError);
        }
        self.skip_ws();
        match self.peek().ok_or(JsonError)? {
            b'{' => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_ws();
                    if self.peek() != Some(b'"') {
                        return Err(JsonError);
                    }
                    let saved = self.name_len;
                    self.push_separator();
                    self.string_into_name()?;
                    self.skip_ws();
                    if self.peek() != Some(b':') {
                        return Err(JsonError);
                    }
                    self.pos += 1;
                    self.value(w, depth + 1)?;
                    self.name_len = saved;
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(JsonError),
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(());
                }
                let mut index = 0u32;
                loop {
                    let saved = self.name_len;
                    self.push_separator();
                    self.push_number(index);
                    self.value(w, depth + 1)?;
                    self.name_len = saved;
                    index += 1;
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(JsonError),
                    }
                }
            }
            b'"' => {
                let (value_off, value_len) = self.string_into_arena(w)?;
                self.leaf(w, value_off, value_len)
            }
            _ => {
                let start = self.pos;
                while self.pos < self.src.len()
                    && !matches!(
                        self.src[self.pos],
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(JsonError);
                }
                let (value_off, value_len) =
                    w.bytes(&self.src[start..self.pos]).map_err(|_| JsonError)?;
                self.leaf(w, value_off, value_len)
            }
        }
    }

    fn leaf(
        &mut self,
        w: &mut Writer<'_>,
        value_off: u32,
        value_len: u32,
    ) -> Result<(), JsonError> {
        if *self.count >= self.max_count {
            return Err(JsonError);
        }
        let name = w
            .bytes(&self.name[..self.name_len])
            .map_err(|_| JsonError)?;
        put_record(w, self.records, *self.count, name, (value_off, value_len));
        *self.count += 1;
        Ok(())
    }

    fn push_separator(&mut self) {
        if self.name_len > 0 {
            self.push_name_byte(b'.');
        }
    }

    fn push_name_byte(&mut self, b: u8) {
        if self.name_len < self.name.len() {
            self.name[self.name_len] = b;
            self.name_len += 1;
        }
    }

    fn push_number(&mut self, n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for d in &digits[i..] {
            self.push_name_byte(*d);
        }
    }

    fn string_into_name(&mut self) -> Result<(), JsonError> {
        let mut bytes = [0u8; 4];
        self.pos += 1;
        loop {
            let b = self.peek().ok_or(JsonError)?;
            self.pos += 1;
            match b {
                b'"' => return Ok(()),
                b'\\' => {
                    let n = self.escape(&mut bytes)?;
                    for b in &bytes[..n] {
                        self.push_name_byte(*b);
                    }
                }
                _ => self.push_name_byte(b),
            }
        }
    }

    fn string_into_arena(&mut self, w: &mut Writer<'_>) -> Result<(u32, u32), JsonError> {
        let start = w.pos;
        let mut bytes = [0u8; 4];
        self.pos += 1;
        loop {
            let b = self.peek().ok_or(JsonError)?;
            self.pos += 1;
            let n = match b {
                b'"' => return Ok((start as u32, (w.pos - start) as u32)),
                b'\\' => self.escape(&mut bytes)?,
                _ => {
                    bytes[0] = b;
                    1
                }
            };
            w.bytes(&bytes[..n]).map_err(|_| JsonError)?;
        }
    }

    /// Decodes the escape after a backslash into `out`; returns its length.
    fn escape(&mut self, out: &mut [u8; 4]) -> Result<usize, JsonError> {
        let e = self.peek().ok_or(JsonError)?;
        self.pos += 1;
        let simple = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut code = self.hex4()?;
                if (0xD800..0xDC00).contains(&code)
                    && self.src.get(self.pos..self.pos + 2) == Some(b"\\u")
                {
                    self.pos += 2;
                    let low = self.hex4()?;
                    if (0xDC00..0xE000).contains(&low) {
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    }
                }
                let c = char::from_u32(code).unwrap_or('\u{FFFD}');
                return Ok(c.encode_utf8(out).len());
            }
            _ => return Err(JsonError),
        };
        out[0] = simple;
        Ok(1)
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self.src.get(self.pos..self.pos + 4).ok_or(JsonError)?;
        let mut code = 0u32;
        for d in digits {
            code = code << 4 | u32::from(hex(*d).ok_or(JsonError)?);
        }
        self.pos += 4;
        Ok(code)
    }
}

/// Cookies from every `Cookie` header: `a=1; b=2`.
fn write_cookies<R: RequestParts + ?Sized>(
    w: &mut Writer<'_>,
    parts: &R,
    limits: &Limits,
) -> Result<(), EncodeError> {
    let mut most = 0usize;
    parts.for_each_header(&mut |name, value| {
        if name.eq_ignore_ascii_case(b"cookie") {
            most += value.split(|b| *b == b';').count();
        }
    });
    if most > limits.max_cookies as usize {
        return Err(EncodeError::TooMany {
            what: "cookies",
            limit: limits.max_cookies,
        });
    }
    w.align()?;
    let records = w.reserve(most * 16)?;
    let mut count = 0usize;
    let mut error = None;
    parts.for_each_header(&mut |name, value| {
        if error.is_some() || !name.eq_ignore_ascii_case(b"cookie") {
            return;
        }
        for piece in value.split(|b| *b == b';') {
            let piece = piece.trim_ascii();
            if piece.is_empty() {
                continue;
            }
            let (name, value) = match piece.iter().position(|b| *b == b'=') {
                Some(eq) => (piece[..eq].trim_ascii(), piece[eq + 1..].trim_ascii()),
                None => (&b""[..], piece),
            };
            match w.bytes(name).and_then(|n| w.bytes(value).map(|v| (n, v))) {
                Ok((name, value)) => {
                    put_record(w, records, count, name, value);
                    count += 1;
                }
                Err(e) => {
                    error = Some(e);
                    return;
                }
            }
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    w.put_u32_at(req::COOKIES as usize, records as u32);
    w.put_u32_at(req::COOKIES as usize + 4, count as u32);
    Ok(())
}

/// `X-Forwarded-For` hops, left to right, each 16 address bytes and a validity word.
fn write_xff<R: RequestParts + ?Sized>(
    w: &mut Writer<'_>,
    parts: &R,
    limits: &Limits,
) -> Result<(), EncodeError> {
    let mut most = 0usize;
    parts.for_each_header(&mut |name, value| {
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            most += value.split(|b| *b == b',').count();
        }
    });
    if most > limits.max_xff_hops as usize {
        return Err(EncodeError::TooMany {
            what: "forwarded hops",
            limit: limits.max_xff_hops,
        });
    }
    w.align()?;
    let records = w.reserve(most * 20)?;
    let mut count = 0usize;
    parts.for_each_header(&mut |name, value| {
        if !name.eq_ignore_ascii_case(b"x-forwarded-for") {
            return;
        }
        for hop in value.split(|b| *b == b',') {
            let hop = hop.trim_ascii();
            let parsed = std::str::from_utf8(hop)
                .ok()
                .and_then(|s| s.parse::<std::net::IpAddr>().ok());
            let at = records + count * 20;
            match parsed {
                Some(ip) => {
                    w.buf[at..at + 16].copy_from_slice(&ip_bytes(ip));
                    w.put_u32_at(at + 16, 1);
                }
                None => {
                    w.buf[at..at + 16].fill(0);
                    w.put_u32_at(at + 16, 0);
                }
            }
            count += 1;
        }
    });
    w.put_u32_at(req::XFF as usize, records as u32);
    w.put_u32_at(req::XFF as usize + 4, count as u32);
    Ok(())
}

/// A (name, value) record: a header, an argument or a cookie.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A request block read back into owned values, as the reference evaluator consumes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedRequest {
    pub method: u32,
    pub flags: u32,
    pub peer: [u8; 16],
    pub path: Vec<u8>,
    pub query: Vec<u8>,
    /// Method, path and query, protocol, as one line.
    pub request_line: Vec<u8>,
    pub method_len: usize,
    pub protocol_len: usize,
    pub host: Vec<u8>,
    pub segments: Vec<Vec<u8>>,
    pub headers: Vec<Pair>,
    /// Query arguments first, then body arguments.
    pub args: Vec<Pair>,
    pub query_arg_count: usize,
    pub cookies: Vec<Pair>,
    /// A multipart body's file parts: (field name, file name).
    pub files: Vec<Pair>,
    /// A multipart body's part headers: (part name, `Name: value`).
    pub part_headers: Vec<Pair>,
    /// `None` for a hop that is not an address.
    pub xff: Vec<Option<[u8; 16]>>,
    pub body: Vec<u8>,
    pub body_total: u64,
    pub preflight_method: u32,
}

impl ParsedRequest {
    /// The path and, when there is one, `?` and the query: the request target's URI.
    pub fn uri(&self) -> Vec<u8> {
        let mut uri = self.path.clone();
        if !self.query.is_empty() {
            uri.push(b'?');
            uri.extend_from_slice(&self.query);
        }
        uri
    }

    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a block could not be read back (only a bug or memory corruption causes this).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed request block at byte {at}")]
pub struct DecodeError {
    pub at: usize,
}

/// Reads a request block written by [`encode`].
pub fn decode(block: &[u8]) -> Result<ParsedRequest, DecodeError> {
    let u32_at = |at: usize| -> Result<u32, DecodeError> {
        block
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DecodeError { at })
    };
    let slice = |off: u32, len: u32| -> Result<Vec<u8>, DecodeError> {
        block
            .get(off as usize..off as usize + len as usize)
            .map(<[u8]>::to_vec)
            .ok_or(DecodeError { at: off as usize })
    };
    let field = |at: u32| -> Result<Vec<u8>, DecodeError> {
        slice(u32_at(at as usize)?, u32_at(at as usize + 4)?)
    };
    let pairs = |at: u32| -> Result<Vec<Pair>, DecodeError> {
        let off = u32_at(at as usize)? as usize;
        let count = u32_at(at as usize + 4)? as usize;
        (0..count)
            .map(|i| {
                let r = off + i * 16;
                Ok((
                    slice(u32_at(r)?, u32_at(r + 4)?)?,
                    slice(u32_at(r + 8)?, u32_at(r + 12)?)?,
                ))
            })
            .collect()
    };
    let mut peer = [0u8; 16];
    peer.copy_from_slice(
        block
            .get(req::PEER as usize..req::PEER as usize + 16)
            .ok_or(DecodeError { at: 0 })?,
    );
    let seg_off = u32_at(req::SEGMENTS as usize)? as usize;
    let seg_count = u32_at(req::SEGMENTS as usize + 4)? as usize;
    let segments = (0..seg_count)
        .map(|i| slice(u32_at(seg_off + i * 8)?, u32_at(seg_off + i * 8 + 4)?))
        .collect::<Result<_, _>>()?;
    let xff_off = u32_at(req::XFF as usize)? as usize;
    let xff_count = u32_at(req::XFF as usize + 4)? as usize;
    let xff = (0..xff_count)
        .map(|i| {
            let r = xff_off + i * 20;
            let valid = u32_at(r + 16)? != 0;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(block.get(r..r + 16).ok_or(DecodeError { at: r })?);
            Ok(valid.then_some(ip))
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(ParsedRequest {
        method: u32_at(req::METHOD as usize)?,
        flags: u32_at(req::FLAGS as usize)?,
        peer,
        path: field(req::PATH)?,
        query: field(req::QUERY)?,
        request_line: field(req::REQUEST_LINE)?,
        method_len: u32_at(req::METHOD_LEN as usize)? as usize,
        protocol_len: u32_at(req::PROTOCOL_LEN as usize)? as usize,
        host: field(req::HOST)?,
        segments,
        headers: pairs(req::HEADERS)?,
        args: pairs(req::ARGS)?,
        query_arg_count: u32_at(req::QUERY_ARGS as usize)? as usize,
        cookies: pairs(req::COOKIES)?,
        files: pairs(req::FILES)?,
        part_headers: pairs(req::PART_HEADERS)?,
        xff,
        body: field(req::BODY)?,
        body_total: u64::from(u32_at(req::BODY_TOTAL as usize)?),
        preflight_method: u32_at(req::PREFLIGHT_METHOD as usize)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Request;

    fn roundtrip(request: &Request) -> ParsedRequest {
        let mut buf = vec![0u8; 1 << 16];
        let len = encode(request, &Limits::default(), usize::MAX, &mut buf).unwrap();
        decode(&buf[..len]).unwrap()
    }

    #[test]
    fn splits_and_normalizes_the_path() {
        let parsed = roundtrip(&Request::new(
            "GET",
            "/api//data/./x/../%2e%2e/items/a%20b/..%2f..%2fetc",
        ));
        let segments: Vec<&[u8]> = parsed.segments.iter().map(Vec::as_slice).collect();
        assert_eq!(segments, [&b"api"[..], b"items", b"a b", b"../../etc"]);
        assert_eq!(
            parsed.path,
            b"/api//data/./x/../%2e%2e/items/a%20b/..%2f..%2fetc"
        );
    }

    #[test]
    fn splits_and_normalizes_a_path_without_escapes() {
        // No `%`: the segments point into the request line instead of decoded copies.
        let parsed = roundtrip(&Request::new("GET", "/../api//data/./x/../items/y/"));
        let segments: Vec<&[u8]> = parsed.segments.iter().map(Vec::as_slice).collect();
        assert_eq!(segments, [&b"api"[..], b"data", b"items", b"y"]);
        let parsed = roundtrip(&Request::new("GET", "/"));
        assert!(parsed.segments.is_empty());
    }

    #[test]
    fn parses_query_form_and_json_arguments() {
        let req = Request::new("POST", "/x?id=1%20union+select&flag&=v")
            .header("Content-Type", "application/json; charset=utf-8")
            .body(r#"{"user":{"name":"a\"b\u00e9","tags":["x",2]},"ok":true}"#);
        let parsed = roundtrip(&req);
        let args: Vec<(String, String)> = parsed
            .args
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect();
        let expect = [
            ("id", "1 union select"),
            ("flag", ""),
            ("", "v"),
            ("user.name", "a\"bé"),
            ("user.tags.0", "x"),
            ("user.tags.1", "2"),
            ("ok", "true"),
        ];
        assert_eq!(args.len(), expect.len(), "{args:?}");
        for ((n, v), (en, ev)) in args.iter().zip(expect) {
            assert_eq!((n.as_str(), v.as_str()), (en, ev));
        }
        assert_eq!(parsed.query_arg_count, 3);
        let form = Request::new("POST", "/x")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=%3Cscript%3E&b=c+d");
        let parsed = roundtrip(&form);
        assert_eq!(parsed.args[1], (b"b".to_vec(), b"c d".to_vec()));
    }

    #[test]
    fn multipart_fields_are_arguments_and_files_are_not() {
        let body = "--AaB03x\r\n\
            Content-Disposition: form-data; name=\"q\"\r\n\r\n\
            1%27 union select password from users\r\n\
            --AaB03x\r\n\
            Content-Disposition: form-data; name=\"up\"; filename=\"a.txt\"\r\n\
            Content-Type: text/plain\r\n\r\n\
            file text\r\n\
            --AaB03x\r\n\
            content-disposition: form-data; name=\"say \\\"hi\\\"\"\r\n\r\n\
            a+b\r\n\
            --AaB03x--\r\n";
        let req = Request::new("POST", "/x?id=7")
            .header("Content-Type", "multipart/form-data; boundary=AaB03x")
            .body(body);
        let parsed = roundtrip(&req);
        assert_eq!(
            parsed.args,
            vec![
                (b"id".to_vec(), b"7".to_vec()),
                (
                    b"q".to_vec(),
                    b"1%27 union select password from users".to_vec()
                ),
                (b"say \"hi\"".to_vec(), b"a+b".to_vec()),
            ]
        );
        assert_eq!(parsed.query_arg_count, 1);
        assert_eq!(parsed.files, vec![(b"up".to_vec(), b"a.txt".to_vec())]);
        let part_headers: Vec<(&[u8], &[u8])> = parsed
            .part_headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(
            part_headers,
            [
                (
                    &b"q"[..],
                    &b"Content-Disposition: form-data; name=\"q\""[..]
                ),
                (
                    b"up",
                    b"Content-Disposition: form-data; name=\"up\"; filename=\"a.txt\""
                ),
                (b"up", b"Content-Type: text/plain"),
                (
                    b"say \"hi\"",
                    b"content-disposition: form-data; name=\"say \\\"hi\\\"\""
                ),
            ]
        );
        // Folded part headers are joined with a space.
        let folded = Request::new("POST", "/x")
            .header("content-type", "multipart/form-data; boundary=b")
            .body("--b\r\nContent-Disposition: form-data;\r\n\tname=x\r\nX-A: 1\r\n\r\nv\r\n--b--");
        let parsed = roundtrip(&folded);
        assert_eq!(
            parsed.part_headers[0].1,
            b"Content-Disposition: form-data; name=x"
        );
        assert_eq!(parsed.part_headers[1].1, b"X-A: 1");
        // More part headers than the limit allows: refused with 413.
        let many = Request::new("POST", "/x")
            .header("content-type", "multipart/form-data; boundary=b")
            .body("--b\r\n".to_string() + &"X: 1\r\n".repeat(1100) + "\r\nv\r\n--b--");
        let mut block = vec![0u8; 1 << 20];
        let refused = encode(&many, &Limits::default(), 1 << 20, &mut block).unwrap_err();
        assert_eq!(refused.status(), 413, "{refused}");
        // Without a boundary the body is not split.
        let plain = Request::new("POST", "/x")
            .header("content-type", "multipart/form-data")
            .body(body);
        assert!(roundtrip(&plain).args.is_empty());
    }

    #[test]
    fn reads_host_cookies_forwarded_hops_and_flags() {
        let req = Request::new("OPTIONS", "/")
            .host("API.Example.com:8443")
            .header("cookie", "a=1; b = two ;;c")
            .header("authorization", "Bearer abc")
            .header("access-control-request-method", "POST")
            .header("x-forwarded-for", "203.0.113.9, garbage ,10.0.0.1");
        let parsed = roundtrip(&req);
        assert_eq!(parsed.host, b"api.example.com");
        assert_eq!(parsed.cookies.len(), 3);
        assert_eq!(parsed.cookies[1], (b"b".to_vec(), b"two".to_vec()));
        assert_eq!(parsed.xff.len(), 3);
        assert!(parsed.xff[1].is_none());
        assert_eq!(
            parsed.xff[0],
            Some(ip_bytes("203.0.113.9".parse().unwrap()))
        );
        let want = flag::HAS_AUTHORIZATION
            | flag::HAS_BEARER
            | flag::HAS_COOKIE
            | flag::HAS_ACRM
            | flag::PREFLIGHT;
        assert_eq!(parsed.flags & want, want);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut req = Request::new("GET", "/");
        for i in 0..200 {
            req = req.header(&format!("x-{i}"), "v");
        }
        let mut buf = vec![0u8; 1 << 16];
        assert_eq!(
            encode(&req, &Limits::default(), usize::MAX, &mut buf),
            Err(EncodeError::TooMany {
                what: "headers",
                limit: 128
            })
        );
        let big = Request::new("GET", "/").body(vec![b'x'; 5000]);
        let mut small = vec![0u8; 4096];
        assert!(matches!(
            encode(&big, &Limits::default(), usize::MAX, &mut small),
            Err(EncodeError::TooLarge { .. })
        ));
    }
}
