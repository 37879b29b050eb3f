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

/// How a pattern that fits its budget is compiled.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Shape {
    /// One unanchored DFA for the whole pattern.
    Whole,
    /// The whole DFA exceeds the budget: the pattern's top-level concatenation is cut in two,
    /// `head` and `tail` (see [`sequence`]).
    Sequence { head: String, tail: String },
}

/// Checks that `pattern` parses and compiles within `budget` bytes of automaton: as one
/// DFA, or else as a [`sequence`].
pub fn check_pattern(pattern: &str, budget: u64) -> Result<Shape, RegexProblem> {
    match check_whole(pattern, budget) {
        Ok(()) => Ok(Shape::Whole),
        Err(RegexProblem::TooLarge) => match sequence(pattern, budget) {
            Some((head, tail)) => Ok(Shape::Sequence { head, tail }),
            None => Err(RegexProblem::TooLarge),
        },
        Err(invalid) => Err(invalid),
    }
}

/// Checks that `pattern` parses and that its unanchored DFA fits in `budget` bytes.
pub fn check_whole(pattern: &str, budget: u64) -> Result<(), RegexProblem> {
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
        Err(e) if exceeds_limit(&e) => Err(RegexProblem::TooLarge),
        Err(e) => Err(RegexProblem::Invalid {
            start: 0,
            end: pattern.len(),
            reason: e.to_string(),
        }),
    }
}

/// Whether a build failed on a size limit (of the DFA, or of the NFA before it, which
/// regex-automata reports as the cause of "error building NFA").
fn exceeds_limit(error: &regex_automata::dfa::dense::BuildError) -> bool {
    if error.is_size_limit_exceeded() {
        return true;
    }
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = cause {
        if e.to_string().contains("size limit") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Cuts a pattern whose DFA is too large into `head` and `tail`, a cut of its top-level
/// concatenation, whose automata both fit in `budget`: `head` as an unanchored DFA that
/// reports every offset where a match of it ends, `tail` as a DFA anchored at its start.
/// `head tail` matches somewhere exactly when `tail` matches from an offset where `head`
/// ends; the compiled walk follows every such offset at once, as a set of `tail` states, so
/// its cost stays linear in the value. The size of such patterns mostly comes from a large
/// alternation (a word list) after a repetition: unanchored, every offset may start a match
/// and the DFA's states become sets of positions in the list; anchored, the list is a trie.
/// The cut is the last one whose head fits; `None` when the tail after it does not.
pub fn sequence(pattern: &str, budget: u64) -> Option<(String, String)> {
    use regex_syntax::hir::{Hir, HirKind};
    let hir = parse(pattern).ok()?;
    let HirKind::Concat(parts) = hir.kind() else {
        return None;
    };
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    let head = |cut: usize| Hir::concat(parts[..cut].to_vec()).to_string();
    // A longer head leaves a smaller tail, and heads grow with the cut: a binary search
    // finds the longest head that fits in a few builds (each failed one costs a
    // determinization up to the budget).
    let (mut fits, mut too_large) = (0, parts.len());
    while too_large - fits > 1 {
        let cut = (fits + too_large) / 2;
        if build(&head(cut), budget, Anchor::AllEnds, false).is_ok() {
            fits = cut;
        } else {
            too_large = cut;
        }
    }
    if fits == 0 {
        return None;
    }
    let tail = Hir::concat(parts[fits..].to_vec()).to_string();
    build(&tail, budget, Anchor::Start, false)
        .is_ok()
        .then(|| (head(fits), tail))
}

/// How a DFA is searched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// Anywhere in the value, stopping at the first match.
    Anywhere,
    /// Anywhere, reporting every offset where some match ends (a sequence's head).
    AllEnds,
    /// From a given offset (a sequence's tail).
    Start,
}

/// Builds the DFA of `pattern` searched as `anchor` says, within `budget` bytes; the
/// compiler builds its automata with this too, minimized (checks skip that step: it
/// only shrinks the automaton).
pub fn build(
    pattern: &str,
    budget: usize,
    anchor: Anchor,
    minimize: bool,
) -> Result<dense::DFA<Vec<u32>>, Box<regex_automata::dfa::dense::BuildError>> {
    use regex_automata::MatchKind;
    use regex_automata::dfa::StartKind;
    let (kind, start) = match anchor {
        Anchor::Anywhere => (MatchKind::LeftmostFirst, StartKind::Unanchored),
        Anchor::AllEnds => (MatchKind::All, StartKind::Unanchored),
        Anchor::Start => (MatchKind::LeftmostFirst, StartKind::Anchored),
    };
    dense::Builder::new()
        .syntax(syntax_config())
        .thompson(thompson::Config::new().nfa_size_limit(Some(budget)))
        .configure(
            dense::Config::new()
                .match_kind(kind)
                .start_kind(start)
                .minimize(minimize)
                .dfa_size_limit(Some(budget))
                .determinize_size_limit(Some(budget)),
        )
        .build(pattern)
        .map_err(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_patterns() {
        assert_eq!(
            check_pattern(r"(?i)\bunion\s+select\b", 1 << 20),
            Ok(Shape::Whole)
        );
        assert_eq!(check_pattern(r"\.\./", 1 << 20), Ok(Shape::Whole));
        assert_eq!(check_pattern("é", 1 << 20), Ok(Shape::Whole));
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
            check_pattern(r"q|[a-z]{1,64}x[a-z]{30}", 64 << 10),
            Err(RegexProblem::TooLarge)
        );
    }

    #[test]
    fn a_pattern_too_large_for_one_automaton_becomes_a_sequence() {
        // A word list after a repetition: unanchored, the list's states multiply.
        let words: Vec<String> = (0..300).map(|i| format!("w{i}x{}", i * 7)).collect();
        let pattern = format!(r"[;|&]\s*[a-z0-9]{{0,8}}(?:{})\s*\(", words.join("|"));
        let budget = 256 << 10;
        assert_eq!(check_whole(&pattern, budget), Err(RegexProblem::TooLarge));
        match check_pattern(&pattern, budget) {
            Ok(Shape::Sequence { head, tail }) => {
                // The cut keeps the pattern: the head and the tail, one after the other.
                let joined = parse(&format!("{head}{tail}")).expect("parses");
                assert_eq!(joined, parse(&pattern).expect("parses"));
                assert!(!tail.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(check_pattern("abc", budget), Ok(Shape::Whole));
    }
}
