//! What each WAF decoding does to a value: the reference definitions.
//!
//! The reference evaluator applies these; the code generator emits Wasm that must agree with
//! them byte for byte (the differential tests check). Each is total: any input bytes give
//! an output, never an error, and the output is never longer than the input.

use crate::plan::DecodingPlan;

/// Applies a rule's decodings, in order.
pub fn apply(chain: &[DecodingPlan], value: &[u8]) -> Vec<u8> {
    let mut out = value.to_vec();
    for decoding in chain {
        out = match decoding {
            DecodingPlan::UrlDecode => url_decode(&out),
            DecodingPlan::Lowercase => out.to_ascii_lowercase(),
            DecodingPlan::HtmlEntityDecode => html_entity_decode(&out),
            DecodingPlan::NormalizePath => normalize_path(&out),
            DecodingPlan::CompressWhitespace => compress_whitespace(&out),
            DecodingPlan::RemoveNulls => out.into_iter().filter(|b| *b != 0).collect(),
        };
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX` (either case) becomes the byte, `+` a space; a `%` not followed by two hex digits
/// stays as it is.
pub fn url_decode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b'%'
            && i + 2 < value.len()
            && let (Some(h), Some(l)) = (hex(value[i + 1]), hex(value[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    out
}

/// Named entities `&lt;` `&gt;` `&amp;` `&quot;` `&apos;` `&nbsp;` (with their `;`), and
/// numeric ones `&#DDD;` / `&#xHH;` (the `;` optional; at most 7 decimal or 6 hex digits).
/// A numeric value up to 255 becomes that byte; a larger valid scalar value its UTF-8
/// bytes; anything else stays as written.
pub fn html_entity_decode(value: &[u8]) -> Vec<u8> {
    const NAMED: [(&[u8], u8); 6] = [
        (b"lt;", b'<'),
        (b"gt;", b'>'),
        (b"amp;", b'&'),
        (b"quot;", b'"'),
        (b"apos;", b'\''),
        (b"nbsp;", 0xA0),
    ];
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] != b'&' {
            out.push(value[i]);
            i += 1;
            continue;
        }
        let rest = &value[i + 1..];
        if let Some((name, byte)) = NAMED.iter().find(|(n, _)| rest.starts_with(n)) {
            out.push(*byte);
            i += 1 + name.len();
            continue;
        }
        if rest.first() == Some(&b'#') {
            let (is_hex, digits_start) = match rest.get(1) {
                Some(b'x' | b'X') => (true, 2),
                _ => (false, 1),
            };
            let max_digits = if is_hex { 6 } else { 7 };
            let mut code: u32 = 0;
            let mut n = 0;
            while n < max_digits {
                let Some(&d) = rest.get(digits_start + n) else {
                    break;
                };
                let digit = if is_hex {
                    hex(d).map(u32::from)
                } else {
                    d.is_ascii_digit().then(|| u32::from(d - b'0'))
                };
                let Some(digit) = digit else { break };
                code = code * if is_hex { 16 } else { 10 } + digit;
                n += 1;
            }
            if n > 0 {
                let mut consumed = 1 + digits_start + n;
                if rest.get(digits_start + n) == Some(&b';') {
                    consumed += 1;
                }
                if code <= 0xFF {
                    out.push(code as u8);
                    i += consumed;
                    continue;
                }
                if let Some(c) = char::from_u32(code) {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += consumed;
                    continue;
                }
            }
        }
        out.push(b'&');
        i += 1;
    }
    out
}

/// Resolves `.` and `..` segments and merges repeated `/`, keeping a leading `/` and (for a
/// non-empty result) a trailing one: `/a/./b/../c//d/` → `/a/c/d/`. `..` at the top is dropped.
pub fn normalize_path(value: &[u8]) -> Vec<u8> {
    let absolute = value.first() == Some(&b'/');
    let pieces: Vec<&[u8]> = value.split(|b| *b == b'/').collect();
    let trailing = !value.is_empty()
        && matches!(pieces.last(), Some(last) if last.is_empty() || *last == b"." || *last == b"..");
    let mut segments: Vec<&[u8]> = Vec::new();
    for piece in pieces {
        match piece {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = Vec::with_capacity(value.len());
    if absolute {
        out.push(b'/');
    }
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(segment);
    }
    if trailing && !segments.is_empty() {
        out.push(b'/');
    }
    out
}

/// Space, tab, newline, carriage return, vertical tab and form feed.
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

/// Every run of whitespace becomes one space.
pub fn compress_whitespace(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut in_space = false;
    for &b in value {
        if is_space(b) {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b);
            in_space = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode(b"a%20b+c%2f%zz%4"), b"a b c/%zz%4");
        assert_eq!(url_decode(b"%41"), b"A");
        assert_eq!(url_decode(b"%"), b"%");
    }

    #[test]
    fn html_entities() {
        assert_eq!(html_entity_decode(b"&lt;script&gt;"), b"<script>");
        assert_eq!(html_entity_decode(b"&#60;&#x3C&#X3c;"), b"<<<");
        assert_eq!(html_entity_decode(b"&#233;"), [0xE9]);
        assert_eq!(html_entity_decode(b"&#8364;"), "€".as_bytes());
        assert_eq!(html_entity_decode(b"&#xD800;&amp"), b"&#xD800;&amp");
        assert_eq!(html_entity_decode(b"&#;&x"), b"&#;&x");
    }

    #[test]
    fn paths() {
        assert_eq!(normalize_path(b"/a/./b/../c//d/"), b"/a/c/d/");
        assert_eq!(normalize_path(b"../../etc/passwd"), b"etc/passwd");
        assert_eq!(normalize_path(b"/.."), b"/");
        assert_eq!(normalize_path(b"a/b/.."), b"a/");
        assert_eq!(normalize_path(b""), b"");
    }

    #[test]
    fn whitespace() {
        assert_eq!(compress_whitespace(b"a \t\n b  c"), b"a b c");
        assert_eq!(apply(&[DecodingPlan::RemoveNulls], b"a\0b"), b"ab");
    }
}
