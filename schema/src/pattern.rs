//! Route path patterns (`/api/items/:id/*`) and host patterns (`*.example.com`), and the
//! precedence between them.
//!
//! Route selection never depends on the order routes are written in. Among the routes that
//! match a request, the best is chosen by, in turn: host (exact > wildcard, longer suffix
//! first > none); path, segment by segment (literal > `:param` > `*`, and a pattern that ends
//! exactly beats one ending in `*`); then a route naming the method beats one naming none.
//! Two routes that can take the same request at equal rank are an error, which
//! [`same_path_rank`] and [`HostPattern::overlaps_at_equal_rank`] let validation find.

use std::cmp::Ordering;

/// One segment of a route pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches exactly this text (compared after percent-decoding the request path).
    Literal(String),
    /// Matches any one non-empty segment and captures it under this name.
    Param(String),
    /// Matches the rest of the path, zero or more segments (last segment only).
    Rest,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoutePattern {
    pub segments: Vec<Segment>,
    pub written: String,
}

/// Where a pattern is wrong, as a byte range of the written text.
#[derive(Debug, PartialEq, Eq)]
pub struct PatternError {
    pub start: usize,
    pub end: usize,
    pub reason: String,
    pub help: &'static str,
}

const PATTERN_HELP: &str = "a route pattern starts with `/` and is made of literal segments, `:name` segments and an optional final `*`, e.g. \"/api/items/:id/*\"";

impl RoutePattern {
    pub fn parse(text: &str) -> Result<RoutePattern, PatternError> {
        let err = |start: usize, end: usize, reason: &str| PatternError {
            start,
            end,
            reason: reason.to_string(),
            help: PATTERN_HELP,
        };
        if !text.starts_with('/') {
            return Err(err(
                0,
                text.len().min(1),
                "a route pattern must start with `/`",
            ));
        }
        let mut segments = Vec::new();
        let mut params: Vec<&str> = Vec::new();
        let mut offset = 1;
        let body = &text[1..];
        let pieces: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        for (index, piece) in pieces.iter().enumerate() {
            let start = offset;
            let end = offset + piece.len();
            offset = end + 1;
            let is_last = index + 1 == pieces.len();
            if piece.is_empty() {
                if is_last {
                    // A trailing slash: `/api/` is the same route as `/api`.
                    continue;
                }
                return Err(err(
                    start.saturating_sub(1),
                    start + 1,
                    "empty path segment (`//`)",
                ));
            }
            if let Some(name) = piece.strip_prefix(':') {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    || name.as_bytes()[0].is_ascii_digit()
                {
                    return Err(err(
                        start,
                        end,
                        "a parameter is `:` followed by a name of letters, digits, `_` and `-`",
                    ));
                }
                if params.contains(&name) {
                    return Err(err(start, end, "this parameter name is used twice"));
                }
                params.push(name);
                segments.push(Segment::Param(name.to_string()));
            } else if *piece == "*" {
                if !is_last {
                    return Err(err(start, end, "`*` may only be the last segment"));
                }
                segments.push(Segment::Rest);
            } else if let Some(bad) = piece.char_indices().find(|(_, c)| !is_path_char(*c)) {
                let (at, c) = bad;
                return Err(err(
                    start + at,
                    start + at + c.len_utf8(),
                    if c == '*' {
                        "`*` matches whole trailing segments only"
                    } else {
                        "this character is not allowed in a path pattern"
                    },
                ));
            } else {
                segments.push(Segment::Literal(piece.to_string()));
            }
        }
        Ok(RoutePattern {
            segments,
            written: text.to_string(),
        })
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            _ => None,
        })
    }

    pub fn has_rest(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::Rest))
    }

    /// The pattern in canonical form (`:param` names kept, trailing slash dropped).
    pub fn canonical(&self) -> String {
        if self.segments.is_empty() {
            return "/".into();
        }
        let mut out = String::new();
        for segment in &self.segments {
            out.push('/');
            match segment {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(p) => {
                    out.push(':');
                    out.push_str(p);
                }
                Segment::Rest => out.push('*'),
            }
        }
        out
    }
}

/// Unreserved, sub-delims, `:` and `@` (RFC 3986 `pchar`) and `%` for encoded bytes.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@%".contains(c)
}

/// How specific a segment position is; higher wins.
fn segment_rank(segment: Option<&Segment>) -> u8 {
    match segment {
        None => 3, // the pattern ends here and matches only if the path ends here too
        Some(Segment::Literal(_)) => 4,
        Some(Segment::Param(_)) => 2,
        Some(Segment::Rest) => 1,
    }
}

/// Compares two patterns that both match some path: `Greater` when `a` is preferred.
pub fn compare_paths(a: &RoutePattern, b: &RoutePattern) -> Ordering {
    let n = a.segments.len().max(b.segments.len());
    for i in 0..n {
        let ra = segment_rank(a.segments.get(i));
        let rb = segment_rank(b.segments.get(i));
        if ra != rb {
            return ra.cmp(&rb);
        }
        if ra == 3 {
            break;
        }
    }
    Ordering::Equal
}

/// True when some request path matches both patterns and neither is preferred: the same
/// shape, with equal literals in the same places (parameter names do not matter).
pub fn same_path_rank(a: &RoutePattern, b: &RoutePattern) -> bool {
    a.segments.len() == b.segments.len()
        && a.segments
            .iter()
            .zip(&b.segments)
            .all(|(x, y)| match (x, y) {
                (Segment::Literal(l), Segment::Literal(m)) => l == m,
                (Segment::Param(_), Segment::Param(_)) | (Segment::Rest, Segment::Rest) => true,
                _ => false,
            })
}

/// A host a route is restricted to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself).
    /// Holds the suffix with its leading dot.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, PatternError> {
        let err = |start: usize, end: usize, reason: &str| PatternError {
            start,
            end,
            reason: reason.to_string(),
            help: "a host is a DNS name such as \"api.example.com\", or \"*.example.com\" for any name below a domain; no scheme, port or path",
        };
        let (wildcard, name, base) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest, 2),
            None => (false, text, 0),
        };
        if name.is_empty() {
            return Err(err(0, text.len(), "empty host name"));
        }
        if let Some((at, c)) = name
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            let reason = match c {
                ':' => "a host pattern has no port: routes match any port",
                '/' => "a host pattern has no scheme or path",
                '*' => "`*` is only allowed as the whole first label, as in \"*.example.com\"",
                _ => "this character is not allowed in a host name",
            };
            return Err(err(base + at, base + at + c.len_utf8(), reason));
        }
        let mut label_start = 0;
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(err(
                    base + label_start,
                    base + label_start + label.len().max(1),
                    "each label of a host name has 1 to 63 characters",
                ));
            }
            label_start += label.len() + 1;
        }
        let lower = name.to_ascii_lowercase();
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{lower}"))
        } else {
            HostPattern::Exact(lower)
        })
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }

    /// Rank of a matching host pattern: exact first, then longer wildcard suffixes.
    pub fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(_) => (2, 0),
            HostPattern::Wildcard(suffix) => (1, suffix.len()),
        }
    }

    /// True when some host matches both patterns at the same rank (they are equal).
    pub fn overlaps_at_equal_rank(&self, other: &HostPattern) -> bool {
        self == other
    }

    pub fn describe(&self) -> String {
        match self {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(suffix) => format!("*{suffix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> RoutePattern {
        RoutePattern::parse(text).unwrap()
    }

    #[test]
    fn parses_patterns() {
        assert_eq!(p("/").segments, vec![]);
        assert_eq!(
            p("/api/:id/*").segments,
            vec![
                Segment::Literal("api".into()),
                Segment::Param("id".into()),
                Segment::Rest
            ]
        );
        assert_eq!(p("/api/").canonical(), "/api");
    }

    #[test]
    fn rejects_bad_patterns_with_the_offending_range() {
        let e = RoutePattern::parse("/api/*/x").unwrap_err();
        assert_eq!((e.start, e.end), (5, 6));
        let e = RoutePattern::parse("/api/v*").unwrap_err();
        assert_eq!((e.start, e.end), (6, 7));
        assert!(RoutePattern::parse("api").is_err());
        assert!(RoutePattern::parse("/a//b").is_err());
        assert!(RoutePattern::parse("/:id/:id").is_err());
        assert!(RoutePattern::parse("/:").is_err());
    }

    #[test]
    fn precedence_is_literal_then_param_then_rest() {
        assert_eq!(compare_paths(&p("/a/b"), &p("/a/:x")), Ordering::Greater);
        assert_eq!(compare_paths(&p("/a/:x"), &p("/a/*")), Ordering::Greater);
        assert_eq!(compare_paths(&p("/a"), &p("/a/*")), Ordering::Greater);
        assert_eq!(
            compare_paths(&p("/a/b/*"), &p("/a/:x/c")),
            Ordering::Greater
        );
        assert_eq!(compare_paths(&p("/a/:x"), &p("/a/:y")), Ordering::Equal);
        assert!(same_path_rank(&p("/a/:x/*"), &p("/a/:y/*")));
        assert!(!same_path_rank(&p("/a/:x"), &p("/a/*")));
    }

    #[test]
    fn hosts() {
        let wild = HostPattern::parse("*.Example.com").unwrap();
        assert!(wild.matches("api.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(HostPattern::parse("api.example.com:443").is_err());
        assert!(HostPattern::parse("https://x").is_err());
        assert!(HostPattern::parse("a..b").is_err());
        assert!(HostPattern::parse("*.a.example.com").unwrap().rank() > wild.rank());
    }
}
