//! `multipart/form-data` bodies (RFC 7578), read without allocating: the boundary a content
//! type names, the parts between its delimiters, and each part's `Content-Disposition`.
//!
//! The reading follows what libmodsecurity's multipart processor accepts, so the WAF sees
//! the fields ModSecurity would: a delimiter counts only at the start of a line, part
//! headers end at the first empty line, `name` and `filename` are read from
//! `Content-Disposition: form-data` with `"` or `'` quoting and `\` escaping the quote or a
//! backslash. Where ModSecurity gives up on a malformed body (and its configuration then
//! refuses the request), this reader keeps what it has read: a truncated last part still
//! yields its content, so text past a missing final delimiter is not hidden from the WAF.

/// The longest content type a boundary is read from (ModSecurity refuses longer ones).
pub const MAX_CONTENT_TYPE: usize = 1024;

/// Why a multipart body cannot be read without guessing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmbiguousBoundary;

/// The boundary named by a `multipart/form-data` content type, without quotes; `Ok(None)`
/// for other content types or when no usable boundary is given. A content type that names
/// a boundary more than once (`boundary` followed later by `=`, counted as ModSecurity
/// counts it) is ambiguous: servers differ in which one they take.
pub fn boundary(content_type: &[u8]) -> Result<Option<&[u8]>, AmbiguousBoundary> {
    let content_type = content_type.trim_ascii();
    const ESSENCE: &[u8] = b"multipart/form-data";
    if content_type.len() > MAX_CONTENT_TYPE
        || content_type.len() < ESSENCE.len()
        || !content_type[..ESSENCE.len()].eq_ignore_ascii_case(ESSENCE)
    {
        return Ok(None);
    }
    let named = content_type
        .windows(8)
        .enumerate()
        .filter(|(at, w)| {
            w.eq_ignore_ascii_case(b"boundary") && content_type[at + 8..].contains(&b'=')
        })
        .count();
    if named > 1 {
        return Err(AmbiguousBoundary);
    }
    let value = params(&content_type[ESSENCE.len()..])
        .find(|(name, _)| name.eq_ignore_ascii_case(b"boundary"))
        .map(|(_, raw)| match raw {
            [b'"', inner @ .., b'"'] => inner,
            _ => raw,
        });
    Ok(value.filter(|v| !v.is_empty() && v[0] != b'"'))
}

/// One part: its header block (the lines before the first empty one) and its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub headers: &'a [u8],
    pub content: &'a [u8],
}

/// A part's header line and the folded lines that continue it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderLine<'a> {
    pub name: &'a [u8],
    /// From after the colon to the end of the last folded line, without outer blanks.
    value: &'a [u8],
}

impl<'a> HeaderLine<'a> {
    /// The value's lines without their blanks: one, or more when folded. Joined by a space
    /// they give the value as ModSecurity reads it.
    pub fn value_lines(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.value.split(|b| *b == b'\n').map(<[u8]>::trim_ascii)
    }
}

impl<'a> Part<'a> {
    /// The part's header lines, each with the folded lines (starting with a space or a
    /// tab) that continue it. Lines without a colon are skipped, as are lines starting
    /// with a blank that continue no header.
    pub fn header_lines(&self) -> impl Iterator<Item = HeaderLine<'a>> + 'a {
        let headers = self.headers;
        let line_end = move |from: usize| {
            memchr::memchr(b'\n', &headers[from..]).map_or(headers.len(), |i| from + i)
        };
        let mut pos = 0;
        std::iter::from_fn(move || {
            while pos < headers.len() {
                let (start, end) = (pos, line_end(pos));
                pos = end + 1;
                let line = &headers[start..end];
                if line.first().is_none_or(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                let Some(colon) = memchr::memchr(b':', line) else {
                    continue;
                };
                let mut value_end = end;
                while pos < headers.len() && matches!(headers[pos], b' ' | b'\t') {
                    value_end = line_end(pos);
                    pos = value_end + 1;
                }
                return Some(HeaderLine {
                    name: &line[..colon],
                    value: headers[start + colon + 1..value_end].trim_ascii(),
                });
            }
            None
        })
    }

    /// The `name` and `filename` of the part's `Content-Disposition: form-data`, raw (still
    /// quoted and escaped: see [`unquote`]); folded lines are read as blanks.
    pub fn disposition(&self) -> Disposition<'a> {
        let value = self
            .header_lines()
            .find(|line| line.name.eq_ignore_ascii_case(b"content-disposition"))
            .map(|line| line.value);
        value.map_or(Disposition::default(), disposition)
    }
}

/// What a part's `Content-Disposition` names, each raw as written (see [`unquote`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Disposition<'a> {
    pub name: Option<&'a [u8]>,
    pub filename: Option<&'a [u8]>,
}

/// Reads `form-data; name="a"; filename="b"`. Parameters other than `name` and `filename`
/// are passed over.
fn disposition(value: &[u8]) -> Disposition<'_> {
    let mut found = Disposition::default();
    let Some(rest) = value
        .get(..9)
        .filter(|v| v.eq_ignore_ascii_case(b"form-data"))
        .map(|_| &value[9..])
    else {
        return found;
    };
    for (param, raw) in params(rest) {
        if param.eq_ignore_ascii_case(b"name") && found.name.is_none() {
            found.name = Some(raw);
        } else if param.eq_ignore_ascii_case(b"filename") && found.filename.is_none() {
            found.filename = Some(raw);
        }
    }
    found
}

/// The `; name=value` parameters at the start of `text`, values raw (quoted ones with their
/// quotes, see [`unquote`]); a parameter without `=` is passed over, and reading stops at
/// anything but a `;`.
fn params(mut rest: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    std::iter::from_fn(move || {
        loop {
            rest = rest
                .trim_ascii_start()
                .strip_prefix(b";")?
                .trim_ascii_start();
            let name_end = rest
                .iter()
                .position(|b| *b == b'=' || *b == b';' || b.is_ascii_whitespace())
                .unwrap_or(rest.len());
            let name = &rest[..name_end];
            rest = rest[name_end..].trim_ascii_start();
            let Some(after) = rest.strip_prefix(b"=") else {
                continue;
            };
            rest = after.trim_ascii_start();
            let (raw, used) = match rest.first() {
                Some(&quote @ (b'"' | b'\'')) => quoted_len(rest, quote),
                _ => {
                    let end = rest
                        .iter()
                        .position(|b| *b == b';' || b.is_ascii_whitespace())
                        .unwrap_or(rest.len());
                    (&rest[..end], end)
                }
            };
            rest = &rest[used..];
            return Some((name, raw));
        }
    })
}

/// A quoted value at the start of `text` (which starts with `quote`): the value with its
/// quotes, and the bytes it takes. An unterminated value runs to the end.
fn quoted_len(text: &[u8], quote: u8) -> (&[u8], usize) {
    let mut i = 1;
    while i < text.len() {
        match text[i] {
            b'\\' if i + 1 < text.len() && (text[i + 1] == quote || text[i + 1] == b'\\') => i += 2,
            b if b == quote => return (&text[..=i], i + 1),
            _ => i += 1,
        }
    }
    (text, text.len())
}

/// The bytes of a raw `Content-Disposition` value without its quotes and escapes, handed
/// to `out` one run at a time.
pub fn unquote(raw: &[u8], mut out: impl FnMut(&[u8])) {
    let Some(&quote @ (b'"' | b'\'')) = raw.first() else {
        out(raw);
        return;
    };
    let inner = &raw[1..];
    let inner = inner.strip_suffix(&[quote]).unwrap_or(inner);
    let mut start = 0;
    let mut i = 0;
    while i < inner.len() {
        if inner[i] == b'\\'
            && i + 1 < inner.len()
            && (inner[i + 1] == b'\\' || inner[i + 1] == quote)
        {
            out(&inner[start..i]);
            start = i + 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    out(&inner[start..]);
}

/// The parts of a multipart body delimited by `boundary`.
pub fn parts<'a>(body: &'a [u8], boundary: &'a [u8]) -> Parts<'a> {
    let finder = memchr::memmem::Finder::new(boundary);
    let next = find_delimiter(body, &finder, 0).map(|(_, after)| after);
    Parts { body, finder, next }
}

/// The iterator [`parts`] returns.
pub struct Parts<'a> {
    body: &'a [u8],
    finder: memchr::memmem::Finder<'a>,
    /// Where the line after the last delimiter read starts, or `None` when done.
    next: Option<usize>,
}

impl<'a> Iterator for Parts<'a> {
    type Item = Part<'a>;

    fn next(&mut self) -> Option<Part<'a>> {
        let after = self.next.take()?;
        let rest = &self.body[after..];
        // After a delimiter: `--` ends the body; otherwise the rest of its line is padding.
        if rest.starts_with(b"--") {
            return None;
        }
        let start = after + memchr::memchr(b'\n', rest)? + 1;
        let (end, next) = match find_delimiter(self.body, &self.finder, start) {
            Some((at, after)) => (at, Some(after)),
            None => (self.body.len(), None),
        };
        self.next = next;
        // The line break before a delimiter belongs to the delimiter.
        let mut part = &self.body[start..end];
        if next.is_some() {
            part = part.strip_suffix(b"\n").unwrap_or(part);
            part = part.strip_suffix(b"\r").unwrap_or(part);
        }
        Some(split_part(part))
    }
}

/// Splits a part at its first empty line; a part without one is all headers.
fn split_part(part: &[u8]) -> Part<'_> {
    let mut line_start = 0;
    while line_start < part.len() {
        let line_end = memchr::memchr(b'\n', &part[line_start..]).map(|i| line_start + i);
        let line = &part[line_start..line_end.unwrap_or(part.len())];
        if line.is_empty() || line == b"\r" {
            let content_start = line_end.map_or(part.len(), |e| e + 1);
            return Part {
                headers: &part[..line_start],
                content: &part[content_start..],
            };
        }
        match line_end {
            Some(end) => line_start = end + 1,
            None => break,
        }
    }
    Part {
        headers: part,
        content: &[],
    }
}

/// The next delimiter (`--boundary` at the start of a line, followed by the end of the line
/// or by `--`) at or after `from`: where its `--` starts and where the text after the
/// boundary starts.
fn find_delimiter(
    body: &[u8],
    finder: &memchr::memmem::Finder<'_>,
    from: usize,
) -> Option<(usize, usize)> {
    let mut search = from;
    while search < body.len() {
        let found = search + finder.find(&body[search..])?;
        let after = found + finder.needle().len();
        let line_start = found >= 2
            && &body[found - 2..found] == b"--"
            && (found == 2 || body[found - 3] == b'\n');
        // Only blanks (transport padding) may follow on the line, unless it is the last.
        let rest = &body[after..];
        let padding = rest
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        let line_end =
            matches!(rest.get(padding), None | Some(b'\r' | b'\n')) || rest.starts_with(b"--");
        if line_start && line_end {
            return Some((found - 2, after));
        }
        search = found + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unquoted(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        unquote(raw, |run| out.extend_from_slice(run));
        out
    }

    #[test]
    fn reads_the_boundary_of_form_data_only() {
        fn read(ct: &[u8]) -> Option<&[u8]> {
            boundary(ct).expect("not ambiguous")
        }
        assert_eq!(
            read(b"multipart/form-data; boundary=----x123"),
            Some(&b"----x123"[..])
        );
        assert_eq!(
            read(b"Multipart/Form-Data;BOUNDARY=\"a b\"; charset=utf-8"),
            Some(&b"a b"[..])
        );
        assert_eq!(
            read(b"multipart/form-data; charset=x; boundary=abc"),
            Some(&b"abc"[..])
        );
        // Browsers' boundaries hold the word; no `=` follows it there.
        assert_eq!(
            read(b"multipart/form-data; boundary=----WebKitFormBoundary7MA4"),
            Some(&b"----WebKitFormBoundary7MA4"[..])
        );
        assert_eq!(read(b"multipart/mixed; boundary=abc"), None);
        assert_eq!(read(b"multipart/form-data"), None);
        assert_eq!(read(b"multipart/form-data; boundary="), None);
        assert_eq!(read(b"multipart/form-data; boundary=\"abc"), None);
    }

    #[test]
    fn a_boundary_named_twice_is_ambiguous() {
        for ct in [
            &b"multipart/form-data; boundary=a; boundary=b"[..],
            b"multipart/form-data; xboundary=a; boundary=b",
            b"multipart/form-data; boundary=a; charset=boundary=b",
        ] {
            assert_eq!(boundary(ct), Err(AmbiguousBoundary), "{ct:?}");
        }
    }

    #[test]
    fn splits_parts_at_delimiters_that_start_a_line() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\none\r\n--XyZ notalimit\r\ntwo --XyZ\r\n--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.php\"\r\nContent-Type: text/plain\r\n\r\n<?php\n\r\n--XyZ--\r\nepilogue";
        let parts: Vec<Part<'_>> = parts(body, b"XyZ").collect();
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert_eq!(parts[0].content, b"one\r\n--XyZ notalimit\r\ntwo --XyZ");
        let file = parts[1];
        assert_eq!(file.content, b"<?php\n");
        let d = file.disposition();
        assert_eq!(d.name, Some(&b"\"f\""[..]));
        assert_eq!(d.filename, Some(&b"\"x.php\""[..]));
        let headers: Vec<_> = file.header_lines().collect();
        assert_eq!(headers[1].name, b"Content-Type");
        assert_eq!(
            headers[1].value_lines().collect::<Vec<_>>(),
            [b"text/plain"]
        );
    }

    #[test]
    fn folded_header_lines_continue_the_line_before() {
        let part = split_part(
            b"Content-Disposition: form-data;\r\n\tname=\"x\"\r\n  ; filename=y\r\n\tstray\r\nNo colon\r\nX-A:  1 \r\n\r\nbody",
        );
        let lines: Vec<_> = part.header_lines().collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0].value_lines().collect::<Vec<_>>(),
            [&b"form-data;"[..], b"name=\"x\"", b"; filename=y", b"stray"]
        );
        assert_eq!(lines[1].name, b"X-A");
        assert_eq!(lines[1].value_lines().collect::<Vec<_>>(), [b"1"]);
        let d = part.disposition();
        assert_eq!((d.name, d.filename), (Some(&b"\"x\""[..]), Some(&b"y"[..])));
        assert_eq!(part.content, b"body");
    }

    #[test]
    fn a_body_cut_short_keeps_its_last_part() {
        let body = b"--b\nContent-Disposition: form-data; name=q\n\n1 union select";
        let parts: Vec<Part<'_>> = parts(body, b"b").collect();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].content, b"1 union select");
        assert_eq!(parts[0].disposition().name, Some(&b"q"[..]));
        assert_eq!(super::parts(b"no delimiter here", b"b").count(), 0);
    }

    #[test]
    fn reads_quoted_and_escaped_disposition_values() {
        let d = disposition(br#"form-data; filename='a\'b;c'; name="x\"y\\z" ; other=1"#);
        assert_eq!(unquoted(d.name.unwrap()), br#"x"y\z"#);
        assert_eq!(unquoted(d.filename.unwrap()), b"a'b;c");
        assert_eq!(unquoted(b"plain"), b"plain");
        assert_eq!(unquoted(br#""a\b""#), br#"a\b"#);
        assert_eq!(disposition(b"attachment; name=x"), Disposition::default());
        assert_eq!(disposition(b"form-data;name").name, None);
    }
}
