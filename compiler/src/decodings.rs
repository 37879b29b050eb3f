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
            DecodingPlan::UrlDecodeUni => url_decode_uni(&out, false),
            DecodingPlan::Utf8UrlDecodeUni => url_decode_uni(&out, true),
            DecodingPlan::JsDecode => js_decode(&out),
            DecodingPlan::CssDecode => css_decode(&out),
            DecodingPlan::CmdLine => cmd_line(&out),
            DecodingPlan::ReplaceComments => replace_comments(&out),
            DecodingPlan::RemoveWhitespace => out
                .into_iter()
                .filter(|b| !is_space(*b) && *b != 0xA0)
                .collect(),
            DecodingPlan::BackslashToSlash => out
                .into_iter()
                .map(|b| if b == b'\\' { b'/' } else { b })
                .collect(),
            DecodingPlan::Base64Decode => base64_decode(&out),
        };
    }
    out
}

/// A base64 character's value, 64 for the padding `=`, `None` for any other byte.
pub fn base64_value(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(64),
        _ => None,
    }
}

/// ModSecurity 3's `base64Decode`, which reads the value as a C string (up to its first NUL)
/// with mbed TLS's strict decoder and gives nothing when that fails: line breaks (`\n`,
/// `\r\n`) may fall anywhere and spaces before them or at the end; a space inside a line, any
/// other byte outside the alphabet, a third `=` or a character after `=` fail. Four
/// characters give three bytes, less one per `=`; a last group of fewer than four is dropped.
pub fn base64_decode(value: &[u8]) -> Vec<u8> {
    let text = &value[..value.iter().position(|b| *b == 0).unwrap_or(value.len())];
    let (mut i, mut padding) = (0, 0);
    while i < text.len() {
        let spaces = text[i..].iter().take_while(|b| **b == b' ').count();
        i += spaces;
        if i == text.len() {
            break;
        }
        if text[i..].starts_with(b"\r\n") {
            i += 2;
            continue;
        }
        if text[i] == b'\n' {
            i += 1;
            continue;
        }
        if spaces != 0 {
            return Vec::new();
        }
        if text[i] == b'=' {
            padding += 1;
            if padding > 2 {
                return Vec::new();
            }
        }
        match base64_value(text[i]) {
            None => return Vec::new(),
            Some(v) if v < 64 && padding != 0 => return Vec::new(),
            Some(_) => {}
        }
        i += 1;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut group, mut count, mut keep) = (0u32, 0, 3);
    for &b in text {
        if matches!(b, b'\r' | b'\n' | b' ') {
            continue;
        }
        let v = base64_value(b).unwrap_or(0);
        keep -= usize::from(v == 64);
        group = (group << 6) | u32::from(v & 0x3F);
        count += 1;
        if count == 4 {
            count = 0;
            out.extend_from_slice(&[(group >> 16) as u8, (group >> 8) as u8, group as u8][..keep]);
        }
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
    percent_decode(value, false, false)
}

/// ModSecurity's `urlDecodeUni` (without a unicode map): `url_decode`, and `%uHHHH` (either
/// case) becomes the low byte of the code, plus 0x20 for full-width ASCII (`%uFF01`–`%uFF5E`).
/// With `utf8`, first ModSecurity's `utf8toUnicode`: each valid multi-byte UTF-8 sequence is
/// read as its `%u` form, fused into the same pass so the output is never longer; invalid
/// UTF-8 stays as it is.
pub fn url_decode_uni(value: &[u8], utf8: bool) -> Vec<u8> {
    percent_decode(value, true, utf8)
}

fn percent_decode(value: &[u8], uni: bool, utf8: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if utf8 && let Some((code, len)) = utf8_char(&value[i..]) {
            if code < 0x1_0000 {
                out.push(unicode_low_byte(code));
            } else {
                // `%u` takes four of the code's five or six hex digits; the rest stay text.
                let digits = if code < 0x10_0000 { 5 } else { 6 };
                out.push((code >> (4 * (digits - 4))) as u8);
                for k in (0..digits - 4).rev() {
                    out.push(b"0123456789abcdef"[((code >> (4 * k)) & 0xF) as usize]);
                }
            }
            i += len;
            continue;
        }
        if uni
            && b == b'%'
            && i + 5 < value.len()
            && (value[i + 1] | 0x20) == b'u'
            && let Some(code) = hex4(&value[i + 2..i + 6])
        {
            out.push(unicode_low_byte(code));
            i += 6;
            continue;
        }
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

/// The code four hex digits spell (`%uHHHH`, `\uHHHH`).
fn hex4(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0u32, |code, d| Some(code << 4 | u32::from(hex(*d)?)))
}

/// The byte ModSecurity keeps of a 16-bit code: the low one, full-width ASCII shifted down.
fn unicode_low_byte(code: u32) -> u8 {
    let low = (code & 0xFF) as u8;
    if code >> 8 == 0xFF && (1..0x5F).contains(&low) {
        low + 0x20
    } else {
        low
    }
}

/// A valid multi-byte UTF-8 sequence at the start of `bytes` (not overlong, not a
/// surrogate): its code point and length.
fn utf8_char(bytes: &[u8]) -> Option<(u32, usize)> {
    let lead = *bytes.first()?;
    let (len, init) = match lead {
        0xC0..=0xDF => (2, u32::from(lead & 0x1F)),
        0xE0..=0xEF => (3, u32::from(lead & 0x0F)),
        0xF0..=0xF7 => (4, u32::from(lead & 0x07)),
        _ => return None,
    };
    let mut code = init;
    for k in 1..len {
        let c = *bytes.get(k)?;
        if c & 0xC0 != 0x80 {
            return None;
        }
        code = code << 6 | u32::from(c & 0x3F);
    }
    let min = [0, 0, 0x80, 0x800, 0x1_0000][len];
    (code >= min && code <= 0x10_FFFF && !(0xD800..=0xDFFF).contains(&code)).then_some((code, len))
}

/// ModSecurity's `jsDecode`: `\uHHHH` (low byte, full-width ASCII shifted down), `\xHH`,
/// octal `\OOO` (at most one byte), `\a \b \f \n \r \t \v`, and `\C` for any other C;
/// a backslash at the very end stays.
pub fn js_decode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    let octal = |b: u8| (b'0'..=b'7').contains(&b);
    while i < value.len() {
        let b = value[i];
        if b != b'\\' || i + 1 >= value.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = value[i + 1];
        if next == b'u'
            && i + 5 < value.len()
            && let Some(code) = hex4(&value[i + 2..i + 6])
        {
            out.push(unicode_low_byte(code));
            i += 6;
        } else if next == b'x'
            && i + 3 < value.len()
            && let (Some(h), Some(l)) = (hex(value[i + 2]), hex(value[i + 3]))
        {
            out.push(h << 4 | l);
            i += 4;
        } else if octal(next) {
            let mut n = 1;
            while n < 3 && i + 1 + n < value.len() && octal(value[i + 1 + n]) {
                n += 1;
            }
            if n == 3 && next > b'3' {
                n = 2;
            }
            let code = value[i + 1..i + 1 + n]
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(code as u8);
            i += 1 + n;
        } else {
            out.push(match next {
                b'a' => 0x07,
                b'b' => 0x08,
                b'f' => 0x0C,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 0x0B,
                other => other,
            });
            i += 2;
        }
    }
    out
}

/// ModSecurity's `cssDecode`: `\` and one to six hex digits become a byte (the last two
/// digits; full-width ASCII shifted down when the code is `FFxx`), one whitespace after them
/// is dropped; `\` before a newline or at the end disappears; `\C` is C.
pub fn css_decode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] != b'\\' {
            out.push(value[i]);
            i += 1;
            continue;
        }
        i += 1;
        if i >= value.len() {
            break;
        }
        let mut n = 0;
        while n < 6 && i + n < value.len() && hex(value[i + n]).is_some() {
            n += 1;
        }
        if n == 0 {
            if value[i] != b'\n' {
                out.push(value[i]);
            }
            i += 1;
            continue;
        }
        let digit = |k: usize| u32::from(hex(value[i + k]).unwrap_or(0));
        let byte = if n == 1 {
            digit(0)
        } else {
            digit(n - 2) << 4 | digit(n - 1)
        };
        // Four digits, or five or six with leading zeros, are a 16-bit code: `FFxx` is
        // full-width ASCII.
        let sixteen_bit = n == 4
            || (n == 5 && value[i] == b'0')
            || (n == 6 && value[i] == b'0' && value[i + 1] == b'0');
        let full_width = sixteen_bit
            && (value[i + n - 3] | 0x20) == b'f'
            && (value[i + n - 4] | 0x20) == b'f'
            && (1..0x5F).contains(&byte);
        out.push(if full_width { byte + 0x20 } else { byte } as u8);
        i += n;
        if i < value.len() && is_space(value[i]) {
            i += 1;
        }
    }
    out
}

/// ModSecurity's `replaceComments`: each C comment `/* … */` becomes one space, and so does
/// an unterminated `/* …` at the end.
pub fn replace_comments(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut in_comment = false;
    let mut i = 0;
    while i < value.len() {
        let pair = |a: u8, b: u8| value[i] == a && value.get(i + 1) == Some(&b);
        if !in_comment && pair(b'/', b'*') {
            in_comment = true;
            i += 2;
        } else if in_comment && pair(b'*', b'/') {
            in_comment = false;
            out.push(b' ');
            i += 2;
        } else {
            if !in_comment {
                out.push(value[i]);
            }
            i += 1;
        }
    }
    if in_comment {
        out.push(b' ');
    }
    out
}

/// ModSecurity's `cmdLine`: deletes `"` `'` `\\` `^`, turns runs of space, `,`, `;`, tab, CR
/// and LF into one space, drops a space before `/` or `(`, and lower-cases the rest.
pub fn cmd_line(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut space = false;
    for &b in value {
        match b {
            b'"' | b'\'' | b'\\' | b'^' => {}
            b' ' | b',' | b';' | b'\t' | b'\r' | b'\n' => {
                if !space {
                    out.push(b' ');
                    space = true;
                }
            }
            b'/' | b'(' => {
                if space {
                    out.pop();
                }
                space = false;
                out.push(b);
            }
            _ => {
                out.push(b.to_ascii_lowercase());
                space = false;
            }
        }
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
    fn base64_as_modsecurity_decodes_it() {
        assert_eq!(base64_decode(b"ZXZhbCgxKQ=="), b"eval(1)");
        assert_eq!(base64_decode(b"QUJD\r\nREVG\nR0g="), b"ABCDEFGH");
        assert_eq!(base64_decode(b"QUJD  \nREVG  "), b"ABCDEF");
        // A last group of fewer than four characters is dropped.
        assert_eq!(base64_decode(b"QUJDRA"), b"ABC");
        assert_eq!(base64_decode(b"QQ="), b"");
        assert_eq!(base64_decode(b"QQ=="), b"A");
        // Up to the first NUL, as a C string.
        assert_eq!(base64_decode(b"QUJD\0REVG"), b"ABC");
        // Anything the strict decoder refuses gives nothing.
        for refused in [
            &b"QUJD REVG"[..],
            b"eval(1)",
            b"Q===",
            b"QQ==QUJD",
            b"QUJD\rREVG",
            b"\xC3\xA9AAA",
        ] {
            assert_eq!(base64_decode(refused), b"", "{refused:?}");
        }
        assert_eq!(base64_decode(b""), b"");
        assert_eq!(base64_decode(b" \n "), b"");
    }

    #[test]
    fn modsecurity_decodings() {
        assert_eq!(
            replace_comments(b"UNION/**/SELECT/*x*/1/*"),
            b"UNION SELECT 1 "
        );
        assert_eq!(replace_comments(b"a/*/b*/c"), b"a c");
        assert_eq!(
            cmd_line(b"C\\A^T  '/E'tc\"/pa\"ss,;wd (x)"),
            b"cat/etc/pass wd(x)"
        );
        assert_eq!(
            url_decode_uni(b"%u0041%uff1c%U003e%u12%41+", false),
            b"A<>%u12A "
        );
        assert_eq!(
            url_decode_uni("é<%uFF1C".as_bytes(), true),
            [0xE9, b'<', b'<']
        );
        assert_eq!(url_decode_uni("😀".as_bytes(), true), [0x60, b'0']);
        assert_eq!(url_decode_uni(&[0xC3, b'A'], true), [0xC3, b'A']);
        assert_eq!(
            js_decode(br"\u003cs\x3e\74\101\4012\n\q\"),
            b"<s><A 12\nq\\"
        );
        assert_eq!(
            css_decode(b"\\3c script\\00003e\\ff1c\\\nx\\"),
            b"<script><x"
        );
    }

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
