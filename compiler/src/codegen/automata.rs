//! Automata for the WAF: one small DFA per pattern (or, for a pattern too large for one, a
//! sequence of two), and per request part one literal prefilter, exported from
//! `regex-automata` into flat tables the generated code walks.
//!
//! A pattern DFA only answers "does this value match": every match state collapses into one
//! `MATCH` sink and every dead state into `DEAD`, both numbered after the ordinary states so
//! the walk needs one comparison per byte. A sequence's head keeps every state, each marked
//! with whether a match ends there; its tail is a pattern DFA with a start state per
//! preceding byte. The prefilter is a multi-literal automaton
//! (Aho-Corasick, as a DFA) whose match states carry actions: which patterns a literal
//! belongs to, and which decodings the value needs ("dirty" markers).

use std::collections::{HashMap, VecDeque};

use edgepack_schema::waf_regex::{self, Anchor};
use regex_automata::Anchored;
use regex_automata::dfa::{Automaton, dense};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Hir, HirKind};

/// A pattern's DFA as flat tables.
#[derive(Clone, Debug)]
pub struct PatternDfa {
    /// Byte → class, for the text as it is.
    pub classes: [u8; 256],
    /// Byte → class of its ASCII lower case: walking with these matches the pattern against
    /// the lower-cased text.
    pub folded: [u8; 256],
    /// Number of classes (row length).
    pub stride: u32,
    /// Ordinary states; `MATCH = normal`, `DEAD = normal + 1`.
    pub normal: u32,
    pub start: u32,
    /// `next[state * stride + class]`, for ordinary states.
    pub next: Vec<u32>,
    /// For each ordinary state: does the end of the text complete a match?
    pub eoi_match: Vec<bool>,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum AutomatonError {
    #[error("pattern `{pattern}`: {reason}")]
    Build { pattern: String, reason: String },
}

fn byte_tables(dfa: &dense::DFA<Vec<u32>>) -> ([u8; 256], [u8; 256], u32) {
    let mut classes = [0u8; 256];
    for b in 0..=255u8 {
        classes[b as usize] = dfa.byte_classes().get(b);
    }
    let mut folded = [0u8; 256];
    for b in 0..=255u8 {
        folded[b as usize] = classes[b.to_ascii_lowercase() as usize];
    }
    let stride = u32::from(*classes.iter().max().unwrap_or(&0)) + 1;
    (classes, folded, stride)
}

fn representatives(classes: &[u8; 256], stride: u32) -> Vec<u8> {
    (0..stride)
        .map(|c| {
            (0..=255u8)
                .find(|b| u32::from(classes[*b as usize]) == c)
                .unwrap_or(0)
        })
        .collect()
}

/// A pattern too large for one DFA, compiled as a sequence (see
/// [`edgepack_schema::waf_regex::sequence`]): `head` marks every offset where a match of
/// it ends, and `tail` runs from each of them, or, in three stages, `middle` runs from
/// each of them and `tail` from every offset where a middle run ends.
#[derive(Clone, Debug)]
pub struct SequenceDfa {
    pub head: EndsDfa,
    pub middle: Option<MiddleDfa>,
    /// Anchored: `tail.start` is unused; a run starts in `tail_starts`.
    pub tail: PatternDfa,
    /// The tail's start state by the byte before the offset it starts at (look-behind
    /// assertions such as `\b` depend on it); entry 256 is the start of the value.
    pub tail_starts: Vec<u32>,
}

/// A sequence's middle: an anchored DFA that reports every offset where a run of it ends.
#[derive(Clone, Debug)]
pub struct MiddleDfa {
    /// `dfa.start` is unused: a run starts in `starts`.
    pub dfa: EndsDfa,
    /// The state a run never leaves, and is dropped at (`u32::MAX` when there is none).
    pub dead: u32,
    /// Start states by the byte before the offset, as the tail's.
    pub starts: Vec<u32>,
}

/// An unanchored DFA that reports every offset where some match ends, as flat tables.
#[derive(Clone, Debug)]
pub struct EndsDfa {
    pub classes: [u8; 256],
    pub folded: [u8; 256],
    pub stride: u32,
    pub start: u32,
    /// `next[state * stride + class]`.
    pub next: Vec<u32>,
    /// Per state: bit 0, a match ends before the byte that led to it (regex-automata's
    /// DFAs report matches one byte late); bit 1, a match ends at the end of the value.
    pub ends: Vec<u8>,
}

/// How a pattern is compiled.
#[derive(Clone, Debug)]
pub enum PatternAutomaton {
    Whole(Box<PatternDfa>),
    Sequence(Box<SequenceDfa>),
}

/// Compiles one WAF pattern within `budget` bytes of automaton: one DFA if it fits, else a
/// sequence, as `edgepack check` decided.
pub fn pattern_automaton(pattern: &str, budget: usize) -> Result<PatternAutomaton, AutomatonError> {
    static AUTOMATA: waf_regex::Memo<(String, usize), Result<PatternAutomaton, AutomatonError>> =
        waf_regex::Memo::new();
    AUTOMATA.get_or((pattern.to_string(), budget), || {
        build_pattern_automaton(pattern, budget)
    })
}

fn build_pattern_automaton(
    pattern: &str,
    budget: usize,
) -> Result<PatternAutomaton, AutomatonError> {
    let fail = |reason: String| AutomatonError::Build {
        pattern: pattern.to_string(),
        reason,
    };
    let whole = match waf_regex::build(pattern, budget, Anchor::Anywhere, true) {
        Ok(dfa) => {
            return pattern_tables(&dfa, &[Start::Unanchored])
                .map(|(dfa, _)| PatternAutomaton::Whole(Box::new(dfa)))
                .map_err(fail);
        }
        Err(error) => error,
    };
    let Some(stages) = waf_regex::sequence(pattern, budget as u64) else {
        return Err(fail(whole.to_string()));
    };
    let (head, tail) = (&stages[0], &stages[stages.len() - 1]);
    let head =
        waf_regex::build(head, budget, Anchor::AllEnds, true).map_err(|e| fail(e.to_string()))?;
    let tail =
        waf_regex::build(tail, budget, Anchor::Start, true).map_err(|e| fail(e.to_string()))?;
    let mut anchored: Vec<Start> = (0..=255u8).map(Start::After).collect();
    anchored.push(Start::Text);
    let middle = match &stages[1..stages.len() - 1] {
        [] => None,
        [middle] => {
            let dfa = waf_regex::build_middle(middle, budget).map_err(fail)?;
            let (dfa, starts, dead) = ends_tables(&dfa, &anchored).map_err(fail)?;
            Some(MiddleDfa {
                dfa,
                dead: dead.unwrap_or(u32::MAX),
                starts,
            })
        }
        more => return Err(fail(format!("{} stages", more.len() + 2))),
    };
    let (tail, tail_starts) = pattern_tables(&tail, &anchored).map_err(fail)?;
    Ok(PatternAutomaton::Sequence(Box::new(SequenceDfa {
        head: ends_tables(&head, &[Start::Unanchored]).map_err(fail)?.0,
        middle,
        tail,
        tail_starts,
    })))
}

/// Where a walk starts.
#[derive(Clone, Copy)]
enum Start {
    /// Anywhere, from the start of the value.
    Unanchored,
    /// Anchored, after this byte.
    After(u8),
    /// Anchored, at the start of the value.
    Text,
}

fn start_state(dfa: &dense::DFA<Vec<u32>>, start: Start) -> Result<StateID, String> {
    let config = match start {
        Start::Unanchored => start::Config::new().anchored(Anchored::No),
        Start::After(byte) => start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(Some(byte)),
        Start::Text => start::Config::new().anchored(Anchored::Yes),
    };
    dfa.start_state(&config).map_err(|e| e.to_string())
}

/// A DFA's tables for an "is there a match" walk from the given starts (the first is
/// `start`), with the index of each start's state (`DEAD` for a start that cannot match).
fn pattern_tables(
    dfa: &dense::DFA<Vec<u32>>,
    starts: &[Start],
) -> Result<(PatternDfa, Vec<u32>), String> {
    let (classes, folded, stride) = byte_tables(dfa);
    let reps = representatives(&classes, stride);
    // Breadth-first over ordinary states; match and dead states become the two sinks.
    const MATCH: u32 = u32::MAX;
    const DEAD: u32 = u32::MAX - 1;
    let mut ids: HashMap<StateID, u32> = HashMap::new();
    let mut order: Vec<StateID> = Vec::new();
    let mut queue = VecDeque::new();
    let number = |state: StateID,
                  ids: &mut HashMap<StateID, u32>,
                  order: &mut Vec<StateID>,
                  queue: &mut VecDeque<StateID>|
     -> Result<u32, String> {
        Ok(if dfa.is_match_state(state) {
            MATCH
        } else if dfa.is_dead_state(state) {
            DEAD
        } else if dfa.is_quit_state(state) {
            return Err("the automaton gives up on some input".into());
        } else {
            *ids.entry(state).or_insert_with(|| {
                order.push(state);
                queue.push_back(state);
                (order.len() - 1) as u32
            })
        })
    };
    let mut start_ids = Vec::with_capacity(starts.len());
    for start in starts {
        let state = start_state(dfa, *start)?;
        start_ids.push(number(state, &mut ids, &mut order, &mut queue)?);
    }
    let mut raw_next: Vec<u32> = Vec::new();
    while let Some(state) = queue.pop_front() {
        for &b in &reps {
            raw_next.push(number(
                dfa.next_state(state, b),
                &mut ids,
                &mut order,
                &mut queue,
            )?);
        }
    }
    let normal = order.len() as u32;
    let index = |id: u32| match id {
        MATCH => normal,
        DEAD => normal + 1,
        other => other,
    };
    let next = raw_next.into_iter().map(index).collect();
    let eoi_match = order
        .iter()
        .map(|s| dfa.is_match_state(dfa.next_eoi_state(*s)))
        .collect();
    let start_ids: Vec<u32> = start_ids.into_iter().map(index).collect();
    Ok((
        PatternDfa {
            classes,
            folded,
            stride,
            normal,
            start: start_ids[0],
            next,
            eoi_match,
        },
        start_ids,
    ))
}

/// A sequence head's or middle's tables: every state kept, with its match flags, walked
/// from the given starts (the first is `start`); with the index of each start's state and
/// of the dead state, if one is reached.
fn ends_tables(
    dfa: &dense::DFA<Vec<u32>>,
    starts: &[Start],
) -> Result<(EndsDfa, Vec<u32>, Option<u32>), String> {
    let (classes, folded, stride) = byte_tables(dfa);
    let reps = representatives(&classes, stride);
    let mut ids: HashMap<StateID, u32> = HashMap::new();
    let mut order = Vec::new();
    let mut number = |state: StateID, order: &mut Vec<StateID>| {
        *ids.entry(state).or_insert_with(|| {
            order.push(state);
            (order.len() - 1) as u32
        })
    };
    let mut start_ids = Vec::with_capacity(starts.len());
    for start in starts {
        start_ids.push(number(start_state(dfa, *start)?, &mut order));
    }
    let mut next = Vec::new();
    let mut at = 0;
    while at < order.len() {
        let state = order[at];
        at += 1;
        if dfa.is_quit_state(state) {
            return Err("the automaton gives up on some input".into());
        }
        for &b in &reps {
            next.push(number(dfa.next_state(state, b), &mut order));
        }
    }
    let ends = order
        .iter()
        .map(|s| {
            u8::from(dfa.is_match_state(*s))
                | (u8::from(dfa.is_match_state(dfa.next_eoi_state(*s))) << 1)
        })
        .collect();
    let dead = order
        .iter()
        .position(|s| dfa.is_dead_state(*s))
        .map(|at| at as u32);
    Ok((
        EndsDfa {
            classes,
            folded,
            stride,
            start: start_ids[0],
            next,
            ends,
        },
        start_ids,
        dead,
    ))
}

impl SequenceDfa {
    /// Runs the tables over `text` the way the generated code does (for tests): the head's
    /// walk, and the sets of middle and tail states started at the ends before them, each
    /// state once per set.
    pub fn is_match(&self, text: &[u8], fold: bool) -> bool {
        let (head, tail) = (&self.head, &self.tail);
        let head_classes = if fold { &head.folded } else { &head.classes };
        let tail_classes = if fold { &tail.folded } else { &tail.classes };
        let before = |at: usize| at.checked_sub(1).map_or(256, |i| usize::from(text[i]));
        let mut h = head.start;
        let mut middles: Vec<u32> = Vec::new();
        let mut tails: Vec<u32> = Vec::new();
        // Offsets where a run of the stage before the tail ends (pushed in order).
        let mut tail_from: Vec<usize> = Vec::new();
        for (i, &b) in text.iter().enumerate() {
            h = head.next[(h * head.stride + u32::from(head_classes[b as usize])) as usize];
            tail_from.clear();
            if head.ends[h as usize] & 1 != 0 {
                match &self.middle {
                    Some(m) => middles.push(m.starts[before(i)]),
                    None => tail_from.push(i),
                }
            }
            if let Some(m) = &self.middle {
                let classes = if fold { &m.dfa.folded } else { &m.dfa.classes };
                let mut next = Vec::new();
                for s in middles.drain(..).filter(|s| *s != m.dead) {
                    let t =
                        m.dfa.next[(s * m.dfa.stride + u32::from(classes[b as usize])) as usize];
                    if t == m.dead {
                        continue;
                    }
                    if m.dfa.ends[t as usize] & 1 != 0 && tail_from.is_empty() {
                        tail_from.push(i);
                    }
                    if !next.contains(&t) {
                        next.push(t);
                    }
                }
                middles = next;
            }
            tails.extend(tail_from.iter().map(|at| self.tail_starts[before(*at)]));
            let mut next = Vec::new();
            for s in tails.drain(..).filter(|s| *s < tail.normal) {
                let t = tail.next[(s * tail.stride + u32::from(tail_classes[b as usize])) as usize];
                if t == tail.normal {
                    return true;
                }
                if t < tail.normal && !next.contains(&t) {
                    next.push(t);
                }
            }
            tails = next;
        }
        // At the end of the value: runs ending there start a tail on the empty rest.
        let end = text.len();
        let mut ends_here = false;
        if head.ends[h as usize] & 2 != 0 {
            match &self.middle {
                Some(m) => middles.push(m.starts[before(end)]),
                None => ends_here = true,
            }
        }
        if let Some(m) = &self.middle {
            ends_here |= middles
                .iter()
                .any(|s| *s != m.dead && m.dfa.ends[*s as usize] & 2 != 0);
        }
        if ends_here {
            tails.push(self.tail_starts[before(end)]);
        }
        tails
            .iter()
            .any(|s| *s < tail.normal && tail.eoi_match[*s as usize])
    }
}

impl PatternDfa {
    /// Runs the tables over `text` the way the generated code does (for tests).
    pub fn is_match(&self, text: &[u8], fold: bool) -> bool {
        let classes = if fold { &self.folded } else { &self.classes };
        let mut s = self.start;
        for &b in text {
            s = self.next[(s * self.stride + u32::from(classes[b as usize])) as usize];
            if s >= self.normal {
                return s == self.normal;
            }
        }
        self.eoi_match[s as usize]
    }
}

/// What a prefilter literal means when it occurs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LiteralAction {
    /// The pattern with this index may match: run its DFA.
    Pattern(u32),
    /// The value needs these decodings (bit set of `Dirty`).
    Dirty(u32),
}

/// A literal for the prefilter. The prefilter ignores ASCII case (a hit is only a reason to
/// run a pattern's automaton, which decides exactly), so literals are matched lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PrefilterLiteral {
    pub bytes: Vec<u8>,
    pub action: LiteralAction,
}

/// The prefilter as flat tables: an Aho-Corasick automaton over the literals (ASCII case
/// folded), as a complete transition table. A state's action is applied when the state is
/// entered, i.e. right after the last byte of a literal. States with actions are numbered
/// after every state without (`state >= first_action`).
#[derive(Clone, Debug)]
pub struct Prefilter {
    pub classes: [u8; 256],
    pub stride: u32,
    pub states: u32,
    pub first_action: u32,
    pub start: u32,
    pub next: Vec<u32>,
    /// For states `first_action..states`: the dirty bits and patterns their literals give.
    pub actions: Vec<(u32, Vec<u32>)>,
}

/// Builds the prefilter automaton for a set of literals.
pub fn prefilter(
    literals: &[PrefilterLiteral],
    max_states: usize,
) -> Result<Prefilter, AutomatonError> {
    let folded: Vec<Vec<u8>> = literals
        .iter()
        .map(|l| l.bytes.to_ascii_lowercase())
        .collect();
    // Byte classes: every byte that occurs in a literal (lower-cased) is its own class, as is
    // its upper-case form's folding; all other bytes share class 0. Bytes that occur only as
    // whole one-byte literals with the same actions (decoding markers such as UTF-8 lead
    // bytes) behave alike from every state, so they share one class: rows stay narrow.
    let mut in_longer = [false; 256];
    let mut alone: HashMap<u8, Vec<(u8, u32)>> = HashMap::new();
    for (literal, original) in folded.iter().zip(literals) {
        match literal.as_slice() {
            [b] => alone.entry(*b).or_default().push(match original.action {
                LiteralAction::Pattern(p) => (0, p),
                LiteralAction::Dirty(bits) => (1, bits),
            }),
            longer => longer.iter().for_each(|b| in_longer[*b as usize] = true),
        }
    }
    let mut shared: HashMap<Vec<(u8, u32)>, u8> = HashMap::new();
    let mut class_of = [0u8; 256];
    let mut classes = 1u32;
    for literal in &folded {
        for &b in literal {
            if class_of[b as usize] == 0 {
                let signature = (!in_longer[b as usize])
                    .then(|| alone.get(&b))
                    .flatten()
                    .map(|actions| {
                        let mut actions = actions.clone();
                        actions.sort_unstable();
                        actions.dedup();
                        actions
                    });
                if let Some(class) = signature.as_ref().and_then(|s| shared.get(s)) {
                    class_of[b as usize] = *class;
                    continue;
                }
                if classes > 255 {
                    return Err(AutomatonError::Build {
                        pattern: "<prefilter>".into(),
                        reason: "too many distinct bytes".into(),
                    });
                }
                class_of[b as usize] = classes as u8;
                if let Some(signature) = signature {
                    shared.insert(signature, classes as u8);
                }
                classes += 1;
            }
        }
    }
    let mut fold = [0u8; 256];
    for b in 0..=255u8 {
        fold[b as usize] = class_of[b.to_ascii_lowercase() as usize];
    }
    let stride = classes;
    // The trie.
    let mut goto: Vec<Vec<Option<u32>>> = vec![vec![None; stride as usize]];
    let mut output: Vec<(u32, Vec<u32>)> = vec![(0, Vec::new())];
    for (literal, original) in folded.iter().zip(literals) {
        let mut state = 0usize;
        for &b in literal {
            let c = class_of[b as usize] as usize;
            state = match goto[state][c] {
                Some(next) => next as usize,
                None => {
                    goto.push(vec![None; stride as usize]);
                    output.push((0, Vec::new()));
                    let next = goto.len() - 1;
                    goto[state][c] = Some(next as u32);
                    next
                }
            };
            if goto.len() > max_states {
                return Err(AutomatonError::Build {
                    pattern: "<prefilter>".into(),
                    reason: format!("more than {max_states} states"),
                });
            }
        }
        match original.action {
            LiteralAction::Dirty(bits) => output[state].0 |= bits,
            LiteralAction::Pattern(p) => output[state].1.push(p),
        }
    }
    // Failure links, breadth first; complete the transition table and merge outputs.
    let n = goto.len();
    let mut next = vec![0u32; n * stride as usize];
    let mut fail = vec![0usize; n];
    let mut queue = VecDeque::new();
    for c in 0..stride as usize {
        match goto[0][c] {
            Some(s) => {
                next[c] = s;
                fail[s as usize] = 0;
                queue.push_back(s as usize);
            }
            None => next[c] = 0,
        }
    }
    while let Some(state) = queue.pop_front() {
        let f = fail[state];
        let inherited = output[f].clone();
        output[state].0 |= inherited.0;
        output[state].1.extend(inherited.1);
        for c in 0..stride as usize {
            match goto[state][c] {
                Some(s) => {
                    fail[s as usize] = next[f * stride as usize + c] as usize;
                    next[state * stride as usize + c] = s;
                    queue.push_back(s as usize);
                }
                None => next[state * stride as usize + c] = next[f * stride as usize + c],
            }
        }
    }
    for (_, patterns) in output.iter_mut() {
        patterns.sort_unstable();
        patterns.dedup();
    }
    // Renumber: states without actions first.
    let acting = |s: usize| output[s].0 != 0 || !output[s].1.is_empty();
    let order: Vec<usize> = (0..n)
        .filter(|s| !acting(*s))
        .chain((0..n).filter(|s| acting(*s)))
        .collect();
    let mut renumber = vec![0u32; n];
    for (new, old) in order.iter().enumerate() {
        renumber[*old] = new as u32;
    }
    let first_action = (0..n).filter(|s| !acting(*s)).count() as u32;
    let mut table = vec![0u32; next.len()];
    for old in 0..n {
        for c in 0..stride as usize {
            table[renumber[old] as usize * stride as usize + c] =
                renumber[next[old * stride as usize + c] as usize];
        }
    }
    let actions = order[first_action as usize..]
        .iter()
        .map(|s| output[*s].clone())
        .collect();
    Ok(Prefilter {
        classes: fold,
        stride,
        states: n as u32,
        first_action,
        start: renumber[0],
        next: table,
        actions,
    })
}

impl Prefilter {
    /// Runs the tables over `text` as the generated code does: (dirty bits, patterns).
    pub fn scan(&self, text: &[u8]) -> (u32, Vec<u32>) {
        let mut dirty = 0;
        let mut patterns = Vec::new();
        let mut s = self.start;
        for &b in text {
            s = self.next[(s * self.stride + u32::from(self.classes[b as usize])) as usize];
            if s >= self.first_action {
                let (d, p) = &self.actions[(s - self.first_action) as usize];
                dirty |= d;
                patterns.extend_from_slice(p);
            }
        }
        patterns.sort_unstable();
        patterns.dedup();
        (dirty, patterns)
    }
}

/// Drops every literal that contains a shorter one of the set: wherever it occurs, so does
/// the shorter one, which is all a prefilter needs.
pub fn minimal_literals(mut set: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    set.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    set.dedup();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for literal in set {
        if !kept
            .iter()
            .any(|k| literal.windows(k.len()).any(|w| w == k.as_slice()))
        {
            kept.push(literal);
        }
    }
    kept.sort();
    kept
}

/// Literals every match of `pattern` contains, lower-cased and cut to at most `max_len`
/// bytes, or `None` when there is no small such set (the pattern then always runs). The
/// candidates are the prefixes and the suffixes of every match and, taking the pattern
/// apart, the sets of its pieces: in a concatenation, the prefixes of what its later items
/// match, the suffixes of what its earlier ones match and each item's own set (a match of
/// `a b c` holds a match of `b c`, of `a b` and of `b`); in an alternation, the union of its
/// branches' sets. A pattern that opens with a class or an anchor (`[\s\S](?:xlink:href|…)`,
/// `^[^)]*\)`, `(?m:^)[^a-z]+(?:select|…)`) gets the literals of what follows it. Of all
/// candidate sets, the one expected to hit ordinary text least wins.
pub fn required_literals(pattern: &str, max_len: usize) -> Option<Vec<Vec<u8>>> {
    let hir = edgepack_schema::waf_regex::parse(pattern).ok()?;
    best_literals(&folded(&hir), max_len, 0)
}

/// `hir` with every class that is one ASCII letter in either case (`[Aa]`, which `(?i)`
/// and the imported rules' case-insensitive forms are made of) as that letter in lower
/// case, and literals lower-cased. The literals only feed the prefilter, which ignores
/// case; extracted from the classes instead, a word of n letters is 2^n literals, cut
/// short long before the word ends (`allo` for `allow_url_fopen`, `s` for `select`).
fn folded(hir: &Hir) -> Hir {
    use regex_syntax::hir::{Capture, Class, Repetition};
    match hir.kind() {
        HirKind::Literal(literal) => Hir::literal(literal.0.to_ascii_lowercase()),
        HirKind::Class(class) => {
            // The class's members when it is two single characters.
            let pair = |ranges: &mut dyn Iterator<Item = (u32, u32)>| match [
                ranges.next(),
                ranges.next(),
                ranges.next(),
            ] {
                [Some((a, a_end)), Some((b, b_end)), None] if a == a_end && b == b_end => {
                    Some([a, b])
                }
                _ => None,
            };
            let pair = match class {
                Class::Bytes(c) => pair(
                    &mut c
                        .ranges()
                        .iter()
                        .map(|r| (r.start().into(), r.end().into())),
                ),
                Class::Unicode(c) => pair(
                    &mut c
                        .ranges()
                        .iter()
                        .map(|r| (r.start().into(), r.end().into())),
                ),
            };
            match pair.map(|[a, b]| (u8::try_from(a), u8::try_from(b))) {
                Some((Ok(a), Ok(b)))
                    if a.is_ascii_alphabetic() && a != b && a.eq_ignore_ascii_case(&b) =>
                {
                    Hir::literal([a.to_ascii_lowercase()])
                }
                _ => hir.clone(),
            }
        }
        HirKind::Repetition(r) => Hir::repetition(Repetition {
            sub: Box::new(folded(&r.sub)),
            ..r.clone()
        }),
        HirKind::Capture(c) => Hir::capture(Capture {
            sub: Box::new(folded(&c.sub)),
            ..c.clone()
        }),
        HirKind::Concat(items) => Hir::concat(items.iter().map(folded).collect()),
        HirKind::Alternation(branches) => Hir::alternation(branches.iter().map(folded).collect()),
        HirKind::Empty | HirKind::Look(_) => hir.clone(),
    }
}

/// How often a literal set is expected to hit ordinary text, per byte: a literal's chance is
/// the product of its bytes' (letters and spaces are common, punctuation is not; a letter
/// counts as likely as a third, for ordinary words: `report` occurs in text, `report_m`
/// hardly); each literal also costs automaton states, counted as a small fixed chance.
fn literal_score(set: &[Vec<u8>]) -> (f64, usize) {
    let expected: f64 = set
        .iter()
        .map(|l| {
            l.iter()
                .map(|b| match b {
                    b'a'..=b'z' | b' ' => 0.3,
                    b'0'..=b'9' => 0.1,
                    _ => 0.02,
                })
                .product::<f64>()
                + 1e-4
        })
        .sum();
    (expected, set.len())
}

/// Keeps `set` in `best` when it scores better.
fn keep_better(best: &mut Option<Vec<Vec<u8>>>, set: Vec<Vec<u8>>) {
    if best.as_ref().is_none_or(|b| {
        literal_score(&set).partial_cmp(&literal_score(b)) == Some(std::cmp::Ordering::Less)
    }) {
        *best = Some(set);
    }
}

/// How deep [`best_literals`] takes a pattern apart.
const LITERAL_DEPTH: usize = 3;

/// The best required literal set of `hir` (see [`required_literals`]).
fn best_literals(hir: &Hir, max_len: usize, depth: usize) -> Option<Vec<Vec<u8>>> {
    let mut best = None;
    for kind in [ExtractKind::Prefix, ExtractKind::Suffix] {
        if let Some(set) = literal_set(hir, &kind, max_len) {
            keep_better(&mut best, set);
        }
    }
    if depth >= LITERAL_DEPTH {
        return best;
    }
    match hir.kind() {
        HirKind::Capture(capture) => {
            if let Some(set) = best_literals(&capture.sub, max_len, depth) {
                keep_better(&mut best, set);
            }
        }
        HirKind::Concat(items) => {
            for at in 1..items.len() {
                let later = Hir::concat(items[at..].to_vec());
                let earlier = Hir::concat(items[..at].to_vec());
                for set in [
                    literal_set(&later, &ExtractKind::Prefix, max_len),
                    literal_set(&earlier, &ExtractKind::Suffix, max_len),
                ]
                .into_iter()
                .flatten()
                {
                    keep_better(&mut best, set);
                }
            }
            for item in items {
                if let Some(set) = best_literals(item, max_len, depth + 1) {
                    keep_better(&mut best, set);
                }
            }
        }
        HirKind::Alternation(branches) => {
            let mut union = Vec::new();
            for branch in branches {
                union.extend(best_literals(branch, max_len, depth + 1)?);
            }
            keep_better(&mut best, minimal_literals(union));
        }
        _ => {}
    }
    best
}

/// The best set of `kind` literals (prefixes or suffixes) of `hir`'s matches, cut to at most
/// `max_len` bytes.
fn literal_set(hir: &Hir, kind: &ExtractKind, max_len: usize) -> Option<Vec<Vec<u8>>> {
    let prefix = matches!(kind, ExtractKind::Prefix);
    let mut best: Option<Vec<Vec<u8>>> = None;
    // Up to 64 literals before cutting, then up to 512: past its limit the extractor cuts
    // every literal to four bytes, so a list of fifty words (933120's PHP settings) comes
    // out as `repo`, `regi`, … at 64 and whole at 512; the score picks.
    for total in [64, 512] {
        // Classes of more than four bytes end a literal: `\s` spelled out six ways makes six
        // literals of every word after it (`\tselect`, `\nselect`, …), prefilter states that
        // took the example's module past its 64 KiB, for text that holds the word anyway.
        let seq = Extractor::new()
            .kind(kind.clone())
            .limit_class(4)
            .limit_total(total)
            .extract(hir);
        // Cutting literals shorter can merge many into few (`union\s` gives six literals of
        // six bytes, or one of five): try every length and keep the best set.
        for len in 1..=max_len {
            let mut cut = seq.clone();
            if prefix {
                cut.keep_first_bytes(len);
            } else {
                cut.keep_last_bytes(len);
            }
            let Some(literals) = cut.literals() else {
                continue;
            };
            if literals.is_empty() || literals.iter().any(|l| l.is_empty()) {
                continue;
            }
            let set = minimal_literals(
                literals
                    .iter()
                    .map(|l| l.as_bytes().to_ascii_lowercase())
                    .collect(),
            );
            keep_better(&mut best, set);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(pattern: &str) -> Box<PatternDfa> {
        match pattern_automaton(pattern, 1 << 20) {
            Ok(PatternAutomaton::Whole(dfa)) => dfa,
            other => panic!("{pattern}: {other:?}"),
        }
    }

    #[test]
    fn pattern_tables_agree_with_the_regex_engine() {
        type Case<'a> = (&'a str, &'a [&'a [u8]], &'a [&'a [u8]]);
        let cases: &[Case] = &[
            (
                r"union\s+select\b",
                &[b"1 union select 2", b"union  select"],
                &[b"unions select", b"union selection"],
            ),
            (r"\.\./", &[b"../etc", b"a/../b"], &[b"./", b".."]),
            (
                r"(?i)<\s*script",
                &[b"<SCRIPT>", b"x< script"],
                &[b"script"],
            ),
            (r"^admin$", &[b"admin"], &[b"admins", b" admin"]),
        ];
        for (pattern, yes, no) in cases {
            let dfa = whole(pattern);
            for text in *yes {
                assert!(
                    dfa.is_match(text, false),
                    "{pattern} should match {:?}",
                    String::from_utf8_lossy(text)
                );
            }
            for text in *no {
                assert!(
                    !dfa.is_match(text, false),
                    "{pattern} should not match {:?}",
                    String::from_utf8_lossy(text)
                );
            }
        }
        let dfa = whole("union");
        assert!(dfa.is_match(b"UNION", true));
        assert!(!dfa.is_match(b"UNION", false));
    }

    /// A pattern shaped like CRS 933160: a word list after a word boundary, then calls.
    fn sequence_pattern() -> String {
        let mut words: Vec<String> = (0..300).map(|i| format!("fn{i}x{}", i * 7)).collect();
        words.extend(["system", "exec", "popen"].map(String::from));
        format!(
            r"(?i)\b(?:{})(?:\s|/\*.*\*/|//.*|#.*)*\(.*\)",
            words.join("|")
        )
    }

    /// Checks a sequence's walk against the regex engine on `texts` and on token soups from a
    /// fixed generator (so failures reproduce); returns how many stages it had.
    fn sequence_agrees(pattern: &str, budget: usize, texts: &[&str], tokens: &[&str]) -> usize {
        let automaton = pattern_automaton(pattern, budget);
        let Ok(PatternAutomaton::Sequence(seq)) = automaton else {
            panic!("the pattern should need a sequence at {budget} bytes: {automaton:?}");
        };
        let regex = regex_automata::meta::Regex::builder()
            .syntax(waf_regex::syntax_config())
            .build(pattern)
            .expect("the pattern compiles");
        let mut texts: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5000 {
            let mut text = Vec::new();
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            for _ in 0..(seed >> 60) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                text.extend_from_slice(tokens[(seed >> 33) as usize % tokens.len()].as_bytes());
            }
            texts.push(text);
        }
        let mut matched = 0;
        for text in &texts {
            let expected = regex.is_match(text.as_slice());
            matched += usize::from(expected);
            assert_eq!(
                seq.is_match(text, false),
                expected,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
        assert!(matched > 40 && matched < texts.len() - 40, "{matched}");
        2 + usize::from(seq.middle.is_some())
    }

    #[test]
    fn sequence_tables_agree_with_the_regex_engine() {
        let texts = [
            "system(1)",
            "xsystem(1)",
            "a;system /*c*/ (ls)",
            "exec #x\n(",
            "exec #x\n()",
            "EXEC(1)",
            "popen",
            "fn12x84 ( )",
            "fn12x8 ( )",
            "",
            "(",
            "system(",
            "system()",
        ];
        let tokens = [
            "system", "exec", "fn3x21", "x", " ", "(", ")", "/*", "*/", "//", "#", "\n", ";", "é",
            "Sys", "tem",
        ];
        assert_eq!(
            sequence_agrees(&sequence_pattern(), 512 << 10, &texts, &tokens),
            2
        );
    }

    /// A pattern shaped like CRS 932100: a separator, assignments whose values run to any
    /// later blank, then a word list.
    pub(crate) fn three_stage_pattern() -> String {
        let words: Vec<String> = (0..300).map(|i| format!("w{i}x{}", i * 7)).collect();
        format!(
            r#"(?s)(?:;|\||&|\$\(|`)\s*(?:\{{|\s*\(\s*|\w+=(?:[^\s]*|\$.*|<.*|'.*'|".*")\s+|!\s*|\$)*\s*['"]*(?:[\w'"./\\]+/)?['"\\]*(?:{})\b"#,
            words.join("|")
        )
    }

    #[test]
    fn three_stage_sequence_tables_agree_with_the_regex_engine() {
        let texts = [
            ";w1x7",
            "a;w1x7",
            ";w1x7x",
            "; a=1 b=$x y w1x7 /etc",
            "; a='q w1x7'",
            "; a='q' w1x7",
            "&& /bin/w2x14 x",
            "|x=\"1 2\" w3x21",
            "$(a=<b c w3x21)",
            "w1x7",
            "; a=b",
            ";",
            "",
        ];
        let tokens = [
            ";", "|", "&", "$(", "`", " ", "a=", "b=", "$", "<", "'", "\"", "x", "/bin/", "\\",
            "w1x7", "w2x14", "w3x2", "w3x21", "!", "(", "{", "\n",
        ];
        assert_eq!(
            sequence_agrees(&three_stage_pattern(), 256 << 10, &texts, &tokens),
            3
        );
    }

    #[test]
    fn prefilter_reports_patterns_and_dirt() {
        let literals = vec![
            PrefilterLiteral {
                bytes: b"union".to_vec(),
                action: LiteralAction::Pattern(3),
            },
            PrefilterLiteral {
                bytes: b"%".to_vec(),
                action: LiteralAction::Dirty(1),
            },
            PrefilterLiteral {
                bytes: b"SELECT".to_vec(),
                action: LiteralAction::Pattern(5),
            },
        ];
        let p = prefilter(&literals, 1 << 20).unwrap();
        assert_eq!(p.scan(b"1 UNION x"), (0, vec![3]));
        assert_eq!(p.scan(b"a%20select"), (1, vec![5]));
        assert_eq!(p.scan(b"nothing"), (0, vec![]));
        assert_eq!(p.scan(b"select"), (0, vec![5]));
    }

    #[test]
    fn finds_required_literals() {
        let lits = required_literals(r"union\s+select", 8).unwrap();
        let within = |l: &Vec<u8>, word: &[u8]| l.windows(word.len()).any(|w| w == word);
        assert!(
            lits.iter().all(|l| within(l, b"union")) || lits.iter().all(|l| within(l, b"select")),
            "{lits:?}"
        );
        let lits = required_literals(r"\b(sleep|benchmark)\s*\(", 8).unwrap();
        assert!(
            lits.iter()
                .all(|l| l.starts_with(b"sleep") || l.starts_with(b"benchmar")),
            "{lits:?}"
        );
        assert_eq!(required_literals(r"\w+", 8), None);
        // What follows a leading class or anchor gives the literals.
        let lits = required_literals(r"(?i)[\s\S](?:xlink:href|xhtml|formaction)", 8).unwrap();
        assert!(!lits.iter().any(|l| l.len() < 4), "{lits:?}");
        assert_eq!(
            required_literals(r"^[^:\(\)\&]*\)", 8),
            Some(vec![b")".to_vec()])
        );
        let lits = required_literals(r"(?m:^)[^a-z]+\s*?(?:alter|select|union)\b", 8).unwrap();
        assert!(lits.contains(&b"select".to_vec()), "{lits:?}");
        // An alternation's set is the union of its branches' (each found on its own).
        let lits = required_literals(r"(?:\d+abc\d|\w+defg)", 8).unwrap();
        assert!(
            lits.contains(&b"abc".to_vec()) && lits.contains(&b"defg".to_vec()),
            "{lits:?}"
        );
        // Case-insensitive words give whole words, not their first letters: from classes
        // (`[Aa][Ll]…`), and in a list of more than 64 (which the extractor cuts to four
        // bytes at its first limit).
        let lits = required_literals(r"(?i)(?:allow_url_fopen|report_memleaks)", 8).unwrap();
        assert_eq!(lits, [b"allow_ur".to_vec(), b"report_m".to_vec()]);
        let words: Vec<String> = (0..70).map(|i| format!("word{i:02}_setting")).collect();
        let lits = required_literals(&format!("(?i)(?:{})", words.join("|")), 8).unwrap();
        assert!(lits.iter().all(|l| l.len() == 8), "{lits:?}");
        // An optional piece gives nothing: `x?` may be absent.
        assert_eq!(required_literals(r"\w+(?:xyz)?\w", 8), None);
    }

    /// Every match of each pattern holds one of its required literals (lower-cased, as the
    /// prefilter folds case), over token soups from a fixed generator.
    #[test]
    fn every_match_holds_a_required_literal() {
        let cases: &[(&str, &[&str])] = &[
            (
                r"(?i)[\s\S](?:!ENTITY\s+(?:\S+|%\s+\S+)\s+(?:PUBLIC|SYSTEM)|x(?:link:href|html|mlns)|data:text/html|pattern\b.*?=|formaction)",
                &[
                    "!entity",
                    "!ENTITY",
                    " ",
                    "%",
                    "public",
                    "x",
                    "xlink:href",
                    "XHTML",
                    "mlns",
                    "data:text/html",
                    "pattern",
                    "=",
                    "formaction",
                    "a",
                ],
            ),
            (
                r"^[^:\(\)\&\|\!<>\~]*\)\s*(?:\((?:[^,\(\)\=\&\|\!<>\~]+[><\~]?=|\s*[\&!|]\s*(?:\)|\()?\s*)|\)\s*\(\s*[\&\|\!]\s*)",
                &["a", ")", "(", " ", "=", "&", "|", "!", "<", "~", ","],
            ),
            (
                r"(?:(?m:^)[\x00-@\[-\^`\{-\xFF]+\s*?(?:alter|create|select|union)\b\s*?(?:\(|from))|(?:\binto\s+outfile)",
                &[
                    "\n", "1", "'", " ", "alter", "SELECT", "union", "(", "from", "into",
                    "outfile", "x",
                ],
            ),
            (
                r"(?i)(?:j|&#x?0*(?:74|4A);?)(?:\t|&tab;)*(?:a|&#x?0*(?:65|41);?)(?:\t|&tab;)*v(?:\t)*a(?:\t)*s(?:\t)*c(?:\t)*r(?:\t)*i(?:\t)*p(?:\t)*t(?:\t)*:",
                &[
                    "j", "J", "&#74;", "&#x4A", "&#0074", "\t", "&tab;", "a", "&#65;", "v", "s",
                    "c", "r", "i", "p", "t", ":", "java", "script:",
                ],
            ),
            (
                r"(?:\d+abc\d|\w+defg|(?:x|y)z{2,}[!?])",
                &["1", "abc", "a", "defg", "x", "y", "z", "zz", "!", "?", "_"],
            ),
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for (pattern, tokens) in cases {
            let literals = required_literals(pattern, 8).expect("a literal set");
            let regex = regex_automata::meta::Regex::builder()
                .syntax(waf_regex::syntax_config())
                .build(pattern)
                .expect("the pattern compiles");
            let mut matched = 0;
            for _ in 0..20_000 {
                let mut text = Vec::new();
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                for _ in 0..(seed >> 59) {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    text.extend_from_slice(tokens[(seed >> 33) as usize % tokens.len()].as_bytes());
                }
                if regex.is_match(&text) {
                    matched += 1;
                    let lower = text.to_ascii_lowercase();
                    assert!(
                        literals
                            .iter()
                            .any(|l| lower.windows(l.len()).any(|w| w == l.as_slice())),
                        "{pattern}: {:?} holds none of {literals:?}",
                        String::from_utf8_lossy(&text)
                    );
                }
            }
            assert!(matched > 20, "{pattern}: only {matched} texts matched");
        }
    }
}
