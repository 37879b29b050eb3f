//! The regex dialect of WAF rules, and the check that a pattern compiles within its budget.
//!
//! WAF patterns match request bytes (which need not be UTF-8), so by default classes such as
//! `\w` and case folding under `(?i)` are ASCII-only, as in ModSecurity without its UTF-8
//! flag; `(?u)` turns Unicode back on for a group. The compiler builds its automata with
//! [`syntax_config`] too, so what `check` accepts is exactly what `build` compiles.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, OnceLock};

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
    /// The whole DFA exceeds the budget: the pattern's top-level concatenation is cut into
    /// two or three stages (see [`sequence`]).
    Sequence { stages: Vec<String> },
}

/// Checks that `pattern` parses and compiles within `budget` bytes of automaton: as one
/// DFA, or else as a [`sequence`].
pub fn check_pattern(pattern: &str, budget: u64) -> Result<Shape, RegexProblem> {
    match check_whole(pattern, budget) {
        Ok(()) => Ok(Shape::Whole),
        Err(RegexProblem::TooLarge) => match sequence(pattern, budget) {
            Some(stages) => Ok(Shape::Sequence { stages }),
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

/// Cuts a pattern whose DFA is too large into stages, cuts of its top-level concatenation,
/// whose automata all fit in `budget`: a `head`, an unanchored DFA that reports every
/// offset where a match of it ends; a `tail`, a DFA anchored at its start; and, when no
/// tail after a head that fits does, a `middle` between them, anchored, reporting every
/// offset where a match of it ends. `head middle tail` matches somewhere exactly when the
/// middle matches from an offset where the head ends and the tail from an offset where
/// that middle run ends; the compiled walk follows every such offset at once, as sets of
/// middle and tail states, so its cost stays linear in the value. The size of such
/// patterns mostly comes from a large alternation (a word list) after a repetition:
/// unanchored, every offset may start a match and the DFA's states become sets of positions
/// in the list; anchored, the list is a trie. The middle takes the repetitions whose `.*`
/// lets the list start at any later offset (CRS 932100's `\w+=(?:\$.*|'.*'|…)\s+`), which
/// makes even the anchored tail large. The head is the longest that fits, and the tail the
/// longest that fits after it (which leaves the shortest middle): `None` when no head fits,
/// or the rest fits neither as a tail nor as a middle and a tail.
pub fn sequence(pattern: &str, budget: u64) -> Option<Vec<String>> {
    static CUTS: Memo<(String, u64), Option<Vec<String>>> = Memo::new();
    CUTS.get_or((pattern.to_string(), budget), || {
        cut_sequence(pattern, budget)
    })
}

fn cut_sequence(pattern: &str, budget: u64) -> Option<Vec<String>> {
    use regex_syntax::hir::{Hir, HirKind};
    let hir = parse(pattern).ok()?;
    let HirKind::Concat(parts) = hir.kind() else {
        return None;
    };
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    let join = |range: std::ops::Range<usize>| Hir::concat(parts[range].to_vec()).to_string();
    let fits = |range: std::ops::Range<usize>, anchor: Anchor| {
        build(&join(range), budget, anchor, false).is_ok()
    };
    let end = parts.len();
    // Stages grow with the parts they hold, so binary searches find the cuts in a few
    // builds (each failed one costs a determinization up to the budget).
    let head = (1..end)
        .collect::<Vec<_>>()
        .partition_point(|cut| fits(0..*cut, Anchor::AllEnds));
    if head == 0 {
        return None;
    }
    if fits(head..end, Anchor::Start) {
        return Some(vec![join(0..head), join(head..end)]);
    }
    // The longest tail that fits leaves the shortest middle, the cheaper to build.
    let tail = (head + 1..end)
        .collect::<Vec<_>>()
        .partition_point(|cut| !fits(*cut..end, Anchor::Start))
        + head
        + 1;
    (tail < end && build_middle(&join(head..tail), budget).is_ok())
        .then(|| vec![join(0..head), join(head..tail), join(tail..end)])
}

/// How much larger than its budget a sequence's middle may grow while it is determinized:
/// reporting every end keeps every thread of its repetitions alive, so its raw DFA holds
/// many states that minimizing merges (CRS 932100's: 2.2 MiB raw, 7 KiB minimized).
const MIDDLE_CONSTRUCTION: usize = 4;

/// Builds a sequence's middle: anchored, every end reported, minimized, and within
/// `budget` once minimized; the error says what did not fit.
pub fn build_middle(pattern: &str, budget: usize) -> Result<dense::DFA<Vec<u32>>, String> {
    type Built = Result<dense::DFA<Vec<u32>>, String>;
    static MIDDLES: Memo<(String, usize), Built> = Memo::new();
    MIDDLES.get_or((pattern.to_string(), budget), || {
        let dfa = build(
            pattern,
            budget.saturating_mul(MIDDLE_CONSTRUCTION),
            Anchor::StartAllEnds,
            true,
        )
        .map_err(|e| e.to_string())?;
        match dfa.memory_usage() {
            size if size > budget => Err(format!(
                "the middle stage's minimized DFA ({size} bytes) exceeds the budget of {budget} bytes"
            )),
            _ => Ok(dfa),
        }
    })
}

/// Results of a pure, costly computation, kept for the life of the process by their input:
/// `check` and `build`, and each region of a build, ask for the same automata of the same
/// patterns. Emptied when it holds [`MEMO_ENTRIES`], so a long `edgepack dev` stays bounded.
pub struct Memo<K, V>(OnceLock<Mutex<HashMap<K, V>>>);

/// Most results one [`Memo`] keeps (the CRS at paranoia level 2 has about 200 patterns).
pub const MEMO_ENTRIES: usize = 1024;

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    pub const fn new() -> Self {
        Memo(OnceLock::new())
    }

    /// The result for `key`, computed by `compute` the first time (without holding the lock,
    /// so other keys are served meanwhile).
    pub fn get_or(&self, key: K, compute: impl FnOnce() -> V) -> V {
        let map = self.0.get_or_init(Default::default);
        let lock = || map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(value) = lock().get(&key) {
            return value.clone();
        }
        let value = compute();
        let mut map = lock();
        if map.len() >= MEMO_ENTRIES {
            map.clear();
        }
        map.insert(key, value.clone());
        value
    }
}

impl<K: Eq + Hash, V: Clone> Default for Memo<K, V> {
    fn default() -> Self {
        Self::new()
    }
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
    /// From a given offset, reporting every offset where some match ends (a sequence's
    /// middle).
    StartAllEnds,
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
        Anchor::StartAllEnds => (MatchKind::All, StartKind::Anchored),
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
            Ok(Shape::Sequence { stages }) => {
                // The cut keeps the pattern: the head and the tail, one after the other.
                assert_eq!(stages.len(), 2, "{stages:?}");
                let joined = parse(&stages.concat()).expect("parses");
                assert_eq!(joined, parse(&pattern).expect("parses"));
                assert!(!stages[1].is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(check_pattern("abc", budget), Ok(Shape::Whole));
    }

    #[test]
    fn a_word_list_any_later_offset_may_start_takes_three_stages() {
        // Shaped like CRS 932100: a separator, assignments whose values run to any later
        // blank, then a word list.
        let words: Vec<String> = (0..300).map(|i| format!("w{i}x{}", i * 7)).collect();
        let pattern = format!(
            r#"(?s)(?:;|\||&|\$\(|`)\s*(?:\{{|\s*\(\s*|\w+=(?:[^\s]*|\$.*|<.*|'.*'|".*")\s+|!\s*|\$)*\s*['"]*(?:[\w'"./\\]+/)?['"\\]*(?:{})\b"#,
            words.join("|")
        );
        let budget = 256 << 10;
        assert_eq!(check_whole(&pattern, budget), Err(RegexProblem::TooLarge));
        match check_pattern(&pattern, budget) {
            Ok(Shape::Sequence { stages }) => {
                assert_eq!(stages.len(), 3, "{stages:?}");
                let joined = parse(&stages.concat()).expect("parses");
                assert_eq!(joined, parse(&pattern).expect("parses"));
                assert!(stages[2].contains("w299x2093"), "{stages:?}");
                // The assignments are the middle's: the tail is the list alone.
                assert!(stages[1].contains("+="), "{stages:?}");
                assert!(!stages[2].contains('='), "{stages:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}
