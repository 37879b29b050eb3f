//! Reading ModSecurity rule files (SecLang): directives, their arguments and the parts of a
//! `SecRule` (variables, operator, actions), each with its byte range in the file.
//!
//! Only the syntax lives here; what the directives mean to edgepack is `modsecurity.rs`.
//! The grammar follows ModSecurity's own: a directive is a name and arguments separated by
//! blanks, a line ending in `\` continues on the next, arguments may be double-quoted (inside
//! which `\"` is a quote and every other backslash is kept, so regexes pass through as
//! written), and `#` at the start of a directive comments out the line.

use std::ops::Range;

/// One argument of a directive, unquoted, with the range it was written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    pub text: String,
    pub span: Range<usize>,
}

/// One directive: `SecRule`, `SecAction`, `SecMarker`, …
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<Arg>,
    /// From the name to the end of the last argument.
    pub span: Range<usize>,
}

/// Splits a rule file into directives. Never fails: an unterminated quote runs to the end
/// of the file and the directive's reader reports what is missing.
pub fn directives(text: &str) -> Vec<Directive> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        i = skip_blanks(bytes, i, true);
        if i >= bytes.len() {
            break;
        }
        if bytes[i] == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let mut args = Vec::new();
        loop {
            i = skip_blanks(bytes, i, false);
            if i >= bytes.len() || bytes[i] == b'\n' {
                break;
            }
            let (arg, next) = read_arg(text, i);
            args.push(arg);
            i = next;
        }
        let mut args = args.into_iter();
        if let Some(name) = args.next() {
            let args: Vec<Arg> = args.collect();
            let end = args.last().map_or(name.span.end, |a| a.span.end);
            out.push(Directive {
                span: name.span.start..end,
                name: name.text,
                args,
            });
        }
    }
    out
}

/// Skips spaces, tabs and line continuations (and newlines too when `newlines`).
fn skip_blanks(bytes: &[u8], mut i: usize, newlines: bool) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\r' => i += 1,
            b'\n' if newlines => i += 1,
            b'\\' if continuation(bytes, i).is_some() => i = continuation(bytes, i).unwrap_or(i),
            _ => break,
        }
    }
    i
}

/// If a line continuation (`\`, optional `\r`, newline) starts at `i`, where it ends.
fn continuation(bytes: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if bytes.get(j) == Some(&b'\r') {
        j += 1;
    }
    (bytes.get(j) == Some(&b'\n')).then_some(j + 1)
}

fn read_arg(text: &str, start: usize) -> (Arg, usize) {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = start;
    if bytes[i] == b'"' {
        i += 1;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    i += 1;
                    break;
                }
                b'\\' if continuation(bytes, i).is_some() => {
                    i = continuation(bytes, i).unwrap_or(i + 1);
                }
                b'\\' if bytes.get(i + 1) == Some(&b'"') => {
                    out.push(b'"');
                    i += 2;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
    } else {
        while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b'\r' | b'\n') {
            if bytes[i] == b'\\' && continuation(bytes, i).is_some() {
                break;
            }
            out.push(bytes[i]);
            i += 1;
        }
    }
    let arg = Arg {
        text: String::from_utf8_lossy(&out).into_owned(),
        span: start..i,
    };
    (arg, i)
}

/// One variable of a rule's target list: `ARGS`, `!REQUEST_COOKIES:/__utm/`, `&TX:foo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// The collection or variable name, upper-cased.
    pub name: String,
    /// What follows `:`, without quotes or slashes.
    pub selector: Option<String>,
    /// The selector was a `/regex/`.
    pub selector_is_regex: bool,
    /// `!`: removes matching members from the list.
    pub exclude: bool,
    /// `&`: the number of members, not their values.
    pub count: bool,
}

/// Splits a target list such as `ARGS|!ARGS:foo|REQUEST_HEADERS:User-Agent`.
pub fn variables(text: &str) -> Vec<Variable> {
    split_outside(text, b'|', true)
        .into_iter()
        .filter(|v| !v.trim().is_empty())
        .map(|raw| {
            let mut v = raw.trim();
            let exclude = v.starts_with('!');
            v = v.trim_start_matches('!');
            let count = v.starts_with('&');
            v = v.trim_start_matches('&');
            let (name, selector) = match v.split_once(':') {
                Some((n, s)) => (n, Some(s)),
                None => (v, None),
            };
            let (selector, selector_is_regex) = match selector {
                Some(s) if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') => {
                    (Some(s[1..s.len() - 1].to_string()), true)
                }
                Some(s) => (Some(s.trim_matches('\'').to_string()), false),
                None => (None, false),
            };
            Variable {
                name: name.to_ascii_uppercase(),
                selector,
                selector_is_regex,
                exclude,
                count,
            }
        })
        .collect()
}

/// A rule's operator: `@rx (?i)select`, `!@within GET POST`, or a bare regex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    /// Without `@`: `rx`, `pm`, `within`, …
    pub name: String,
    pub argument: String,
    pub negated: bool,
}

pub fn operator(text: &str) -> Operator {
    let mut t = text.trim_start();
    let negated = t.starts_with('!');
    if negated {
        t = t[1..].trim_start();
    }
    if let Some(rest) = t.strip_prefix('@') {
        let (name, argument) = match rest.find([' ', '\t']) {
            Some(at) => (&rest[..at], rest[at..].trim_start()),
            None => (rest, ""),
        };
        Operator {
            name: name.to_string(),
            argument: argument.to_string(),
            negated,
        }
    } else {
        Operator {
            name: "rx".into(),
            argument: t.to_string(),
            negated,
        }
    }
}

/// One action: `id:942100`, `t:lowercase`, `chain`, `setvar:'tx.x=+%{tx.y}'`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    /// Lower-cased.
    pub name: String,
    /// Without surrounding single quotes.
    pub value: Option<String>,
}

/// Splits an action list at commas outside single quotes.
pub fn actions(text: &str) -> Vec<Action> {
    split_outside(text, b',', false)
        .into_iter()
        .filter(|a| !a.trim().is_empty())
        .map(|raw| {
            let a = raw.trim();
            match a.split_once(':') {
                Some((name, value)) => {
                    let value = value.trim();
                    let value = value
                        .strip_prefix('\'')
                        .and_then(|v| v.strip_suffix('\''))
                        .unwrap_or(value);
                    Action {
                        name: name.trim().to_ascii_lowercase(),
                        value: Some(value.replace("\\'", "'")),
                    }
                }
                None => Action {
                    name: a.to_ascii_lowercase(),
                    value: None,
                },
            }
        })
        .collect()
}

/// Splits at `sep` outside single quotes (and, for target lists, outside `/regex/`
/// selectors, which may hold `|`).
fn split_outside(text: &str, sep: u8, slashes: bool) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut in_regex = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' && (quoted || in_regex) {
            i += 2;
            continue;
        }
        if b == b'\'' && !in_regex {
            quoted = !quoted;
        } else if slashes && b == b'/' && !quoted {
            // A regex selector opens right after `:` and closes at the next unescaped `/`.
            if in_regex || (i > 0 && bytes[i - 1] == b':') {
                in_regex = !in_regex;
            }
        } else if b == sep && !quoted && !in_regex {
            out.push(&text[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    out.push(&text[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_with_continuations_quotes_and_comments() {
        let text = "# a comment \"quoted\"\nSecRule ARGS \"@rx a\\\"b\\d\" \\\n    \"id:1,\\\n    t:none\"\nSecMarker END\n";
        let d = directives(text);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].name, "SecRule");
        let texts: Vec<&str> = d[0].args.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(texts, ["ARGS", "@rx a\"b\\d", "id:1,    t:none"]);
        assert_eq!(&text[d[0].args[0].span.clone()], "ARGS");
        assert_eq!(d[1].name, "SecMarker");
        assert_eq!(d[1].args[0].text, "END");
    }

    #[test]
    fn targets_operators_and_actions() {
        let v = variables(
            "REQUEST_COOKIES|!REQUEST_COOKIES:/__utm|x/|&TX:foo|REQUEST_HEADERS:User-Agent",
        );
        assert_eq!(v.len(), 4);
        assert!(v[1].exclude && v[1].selector_is_regex);
        assert_eq!(v[1].selector.as_deref(), Some("__utm|x"));
        assert!(v[2].count);
        assert_eq!(v[3].selector.as_deref(), Some("User-Agent"));

        let op = operator("!@within GET POST");
        assert!(op.negated);
        assert_eq!(
            (op.name.as_str(), op.argument.as_str()),
            ("within", "GET POST")
        );
        assert_eq!(operator("^a$").name, "rx");

        let a = actions("id:1,t:none,msg:'a, b',setvar:'tx.x=+%{tx.y}',chain");
        let names: Vec<&str> = a.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["id", "t", "msg", "setvar", "chain"]);
        assert_eq!(a[2].value.as_deref(), Some("a, b"));
        assert_eq!(a[3].value.as_deref(), Some("tx.x=+%{tx.y}"));
    }
}
