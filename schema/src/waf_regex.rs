//! The regex dialect of WAF rules, and the check that a pattern compiles within its budget.
//!
//! WAF patterns match request bytes (which need not be UTF-8), so by default classes such as
//! `\w` and case folding under `(?i)` are ASCII-only, as in ModSecurity without its UTF-8
//! flag; `(?u)` turns Unicode back on for a group. The compiler builds its automata with
//! [`syntax_config`] too, so what `check` accepts is exactly what `build` compiles.

use regex_automata::dfa::dense;
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;

/// Why a pattern cannot be used, with the byte range of the pattern at fault.
#[derive(Debug, PartialEq, Eq)]
pub enum RegexProblem {
    Invalid {
        start: usize,
        end: usize,
        reason: String,
    },
    TooLarge,
}

/// The syntax settings every WAF pattern is parsed with.
pub fn syntax_config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false)
}

/// Parses a WAF pattern in this dialect, for code that looks inside patterns (literal
/// extraction, splitting).
pub fn parse(pattern: &str) -> Result<regex_syntax::hir::Hir, Box<regex_syntax::Error>> {
    regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .map_err(Box::new)
}

/// Checks that `pattern` parses and that its unanchored DFA fits in `budget` bytes.
pub fn check_pattern(pattern: &str, budget: u64) -> Result<(), RegexProblem> {
    if let Err(error) = parse(pattern) {
        let (span, reason) = match error.as_ref() {
            regex_syntax::Error::Parse(e) => (*e.span(), e.kind().to_string()),
            regex_syntax::Error::Translate(e) => (*e.span(), e.kind().to_string()),
            other => (
                regex_syntax::ast::Span::splat(regex_syntax::ast::Position::new(0, 1, 1)),
                other.to_string(),
            ),
        };
        return Err(RegexProblem::Invalid {
            start: span.start.offset,
            end: span
                .end
                .offset
                .max(span.start.offset + 1)
                .min(pattern.len()),
            reason,
        });
    }
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    let result = dense::Builder::new()
        .syntax(syntax_config())
        .thompson(thompson::Config::new().nfa_size_limit(Some(budget)))
        .configure(
            dense::Config::new()
                .dfa_size_limit(Some(budget))
                .determinize_size_limit(Some(budget)),
        )
        .build(pattern);
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.is_size_limit_exceeded() || e.to_string().contains("size limit") => {
            Err(RegexProblem::TooLarge)
        }
        Err(e) => Err(RegexProblem::Invalid {
            start: 0,
            end: pattern.len(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_patterns() {
        assert_eq!(check_pattern(r"(?i)\bunion\s+select\b", 1 << 20), Ok(()));
        assert_eq!(check_pattern(r"\.\./", 1 << 20), Ok(()));
        assert_eq!(check_pattern("é", 1 << 20), Ok(()));
    }

    #[test]
    fn reports_where_a_pattern_is_wrong() {
        match check_pattern(r"abc(?=x)", 1 << 20) {
            Err(RegexProblem::Invalid { start, .. }) => assert_eq!(start, 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_pattern(r"a(b", 1 << 20),
            Err(RegexProblem::Invalid { .. })
        ));
    }

    #[test]
    fn refuses_automata_over_budget() {
        assert_eq!(
            check_pattern(r"[a-z]{1,64}x[a-z]{30}", 64 << 10),
            Err(RegexProblem::TooLarge)
        );
    }
}
