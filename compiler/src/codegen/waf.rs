//! The WAF in the module: per request part, one prefilter pass decides which pattern
//! automata run at all, and whether the value needs decoding first.
//!
//! Rules that read a part are grouped by their decoding chain. For each value of the part,
//! the prefilter (a multi-literal automaton) runs once over the value as received and
//! reports (a) the patterns whose required literals occur and (b) "dirt": bytes that a
//! decoding would change (`%`, `&`, runs of whitespace, NUL, `//`, `/.`). A group whose
//! decodings would change nothing reads the value as is (ASCII lower-casing is folded into
//! the automata's byte classes); otherwise the value is decoded into scratch memory and
//! prefiltered again. Leading decodings the value has no markers for are skipped, and
//! groups whose remaining decodings are the same read one decoded copy and its prefilter
//! hits (the CRS's many chains mostly differ in steps that change nothing on a given
//! value). Only patterns with a literal hit (or without literals) walk their DFA, so the
//! cost of a request grows with its size, not with the number of rules.

use std::collections::HashMap;

use edgepack_bundles::abi::{dec, req};
use edgepack_bundles::detect::DetectKind;

use super::asm::{Asm, Data, I32, I64, mem};
use super::automata::{
    self, LiteralAction, PatternAutomaton, PatternDfa, Prefilter, PrefilterLiteral, SequenceDfa,
};
use super::funcs::Funcs;
use super::{CodegenError, Layout, Util};
use crate::plan::*;
use wasm_encoder::ValType;

const DIRTY_URL: u32 = 1;
const DIRTY_HTML: u32 = 2;
const DIRTY_SPACE: u32 = 4;
const DIRTY_NULL: u32 = 8;
const DIRTY_PATH: u32 = 16;
const DIRTY_UTF8: u32 = 32;
const DIRTY_BACKSLASH: u32 = 64;
const DIRTY_COMMAND: u32 = 128;
const DIRTY_ANY_SPACE: u32 = 256;
const DIRTY_COMMENT: u32 = 512;
/// Set for every value: a group whose mask holds it always decodes (a `detect` matcher
/// needs the decoded bytes themselves, lower-casing included).
const DIRTY_ALWAYS: u32 = 1 << 31;
/// Table entries of `detect` matchers hold this plus the detector's code where a pattern's
/// holds its DFA's address (data addresses never come near it).
const DETECT_BASE: u32 = 0xFFFF_FF00;
/// Table entries of sequence matchers hold this plus their descriptor's address (below
/// `DETECT_BASE`; data addresses stay far below it)...
const SEQUENCE_BASE: u32 = 0x8000_0000;
/// ...and those of sequences with a middle this.
const SEQUENCE3_BASE: u32 = 0xC000_0000;
/// Sequences restart their thread stamps before the step counter gets near overflow.
const STEP_LIMIT: u32 = 0xF000_0000;
/// The most states one part's prefilter may have.
const PREFILTER_STATES: usize = 1 << 20;
/// A WAF with at least this many literals gives parts few rules read prefilters of their
/// own (with fewer, one prefilter serves every part, and the module stays small).
const SPLIT_LITERALS: usize = 256;
/// Prefilter literals are cut to this many bytes.
const LITERAL_LEN: usize = 8;

fn dirty_mask(d: DecodingPlan) -> u32 {
    match d {
        DecodingPlan::UrlDecode => DIRTY_URL,
        DecodingPlan::HtmlEntityDecode => DIRTY_HTML,
        DecodingPlan::CompressWhitespace => DIRTY_SPACE,
        DecodingPlan::RemoveNulls => DIRTY_NULL,
        DecodingPlan::NormalizePath => DIRTY_PATH,
        DecodingPlan::Lowercase => 0,
        DecodingPlan::UrlDecodeUni => DIRTY_URL,
        DecodingPlan::Utf8UrlDecodeUni => DIRTY_URL | DIRTY_UTF8,
        DecodingPlan::JsDecode | DecodingPlan::CssDecode => DIRTY_BACKSLASH,
        DecodingPlan::BackslashToSlash => DIRTY_BACKSLASH,
        DecodingPlan::CmdLine => DIRTY_COMMAND,
        DecodingPlan::RemoveWhitespace => DIRTY_ANY_SPACE,
        DecodingPlan::ReplaceComments => DIRTY_COMMENT,
        // It changes every value (one that is not base64 decodes to nothing).
        DecodingPlan::Base64Decode => DIRTY_ALWAYS,
    }
}

/// `last_key` of a scan before it has decoded anything.
const NO_KEY: u32 = u32::MAX;

/// How many leading steps of `chain` may be skipped when the value lacks their markers:
/// those that then change nothing at all (not even case, which later steps may read).
fn skippable_prefix(chain: &[DecodingPlan]) -> usize {
    chain
        .iter()
        .take_while(|d| {
            dirty_mask(**d) != 0 && !matches!(d, DecodingPlan::Lowercase | DecodingPlan::CmdLine)
        })
        .count()
}

/// Decodings that give the same output on every value share a key: here, a `lowercase`
/// right after a step whose output is already lower case is dropped.
fn effective_key(steps: &[DecodingPlan]) -> Vec<DecodingPlan> {
    let mut out: Vec<DecodingPlan> = Vec::new();
    for d in steps {
        let lowered = out
            .last()
            .is_some_and(|p| matches!(p, DecodingPlan::Lowercase | DecodingPlan::CmdLine));
        if *d == DecodingPlan::Lowercase && lowered {
            continue;
        }
        out.push(*d);
    }
    out
}

/// Whether a part is a list of members (arguments, headers, cookies) rather than one value.
fn is_list(part: &PartPlan) -> bool {
    !matches!(
        part,
        PartPlan::Path
            | PartPlan::Query
            | PartPlan::Body
            | PartPlan::Uri
            | PartPlan::Method
            | PartPlan::Protocol
            | PartPlan::RequestLine
    )
}

/// Whether a chain's output is lower case: a value its other decodings leave alone is then
/// the lower-cased value, which folded byte classes match without decoding.
fn lowercases(chain: &[DecodingPlan]) -> bool {
    chain
        .iter()
        .any(|d| matches!(d, DecodingPlan::Lowercase | DecodingPlan::CmdLine))
}

/// Literals that mark a value as needing a decoding.
fn markers(mask: u32) -> Vec<(Vec<u8>, u32)> {
    let mut out = Vec::new();
    if mask & DIRTY_URL != 0 {
        out.push((b"%".to_vec(), DIRTY_URL));
        out.push((b"+".to_vec(), DIRTY_URL));
    }
    if mask & DIRTY_HTML != 0 {
        out.push((b"&".to_vec(), DIRTY_HTML));
    }
    if mask & DIRTY_SPACE != 0 {
        for b in 9u8..=13 {
            out.push((vec![b], DIRTY_SPACE));
        }
        out.push((b"  ".to_vec(), DIRTY_SPACE));
    }
    if mask & DIRTY_NULL != 0 {
        out.push((vec![0], DIRTY_NULL));
    }
    if mask & DIRTY_PATH != 0 {
        out.push((b"//".to_vec(), DIRTY_PATH));
        out.push((b"/.".to_vec(), DIRTY_PATH));
    }
    if mask & DIRTY_UTF8 != 0 {
        // Lead bytes of multi-byte UTF-8 sequences.
        for b in 0xC0u8..=0xF7 {
            out.push((vec![b], DIRTY_UTF8));
        }
    }
    if mask & DIRTY_BACKSLASH != 0 {
        out.push((b"\\".to_vec(), DIRTY_BACKSLASH));
    }
    if mask & DIRTY_COMMAND != 0 {
        // `cmd-line` changes a value beyond lower-casing only where one of these occurs: a
        // deleted byte, a separator other than a space, a run of spaces, or a space before
        // the `/` or `(` that drop it. Words between single spaces stay as they are.
        for b in b"\"'\\^,;\t\r\n" {
            out.push((vec![*b], DIRTY_COMMAND));
        }
        for pair in [b"  ", b" /", b" ("] {
            out.push((pair.to_vec(), DIRTY_COMMAND));
        }
    }
    if mask & DIRTY_COMMENT != 0 {
        out.push((b"/*".to_vec(), DIRTY_COMMENT));
    }
    if mask & DIRTY_ANY_SPACE != 0 {
        for b in [b' ', 9, 10, 11, 12, 13, 0xA0] {
            out.push((vec![b], DIRTY_ANY_SPACE));
        }
    }
    out
}

struct GroupTables {
    chain: Vec<DecodingPlan>,
    dirty: u32,
    /// [count, then pattern indices]: patterns without literals, which always run.
    always: u32,
    always_count: u32,
    /// The same for a value the group leaves as it is: without the patterns that another
    /// group then runs on the very same value (see [`clean_always`]).
    clean_always: u32,
    clean_always_count: u32,
    /// [count, then (hit word, mask low, mask high) per word holding some of the group's
    /// patterns]: `run_hits` reads only these words, and of each only the group's bits.
    hit_masks: u32,
}

/// The hit words that hold patterns of group `g` (`table` holds each pattern's group
/// first), as [count, then (word, mask low, mask high) per word].
fn hit_masks(g: u32, table: &[u32]) -> Vec<u32> {
    let mut masks: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for (index, entry) in table.chunks_exact(4).enumerate() {
        if entry[0] == g {
            *masks.entry(index as u32 / 64).or_default() |= 1 << (index % 64);
        }
    }
    let mut words = vec![masks.len() as u32];
    for (word, mask) in masks {
        words.extend([word, mask as u32, (mask >> 32) as u32]);
    }
    words
}

/// The patterns without literals that group `g` runs on a value its decodings leave as it
/// is. A pattern is left out when another group, clean whenever `g` is (its markers a subset
/// of `g`'s, ties going to the earlier group), reads the value with the same case folding
/// and runs the same matcher for the same slot: the result is the same. The chains of a
/// rule decoding `every-step` (`[]`, `[url-decode]`, `[url-decode, remove-nulls]`, …) thus
/// run a detector once on a clean value, not once per step. `table` holds each pattern's
/// (group, rule, matcher, slot).
fn clean_always(
    g: usize,
    chains: &[Vec<DecodingPlan>],
    dirty: &[u32],
    always: &[Vec<u32>],
    table: &[u32],
) -> Vec<u32> {
    let serves = |other: usize| {
        other != g
            && dirty[other] & !dirty[g] == 0
            && (dirty[other] != dirty[g] || other < g)
            && lowercases(&chains[other]) == lowercases(&chains[g])
    };
    let key = |p: u32| {
        let at = p as usize * 4;
        (table[at + 2], table[at + 3])
    };
    always[g]
        .iter()
        .copied()
        .filter(|p| {
            !(0..chains.len())
                .filter(|other| serves(*other))
                .any(|other| always[other].iter().any(|q| key(*q) == key(*p)))
        })
        .collect()
}

/// A part's prefilter, as addresses and constants for its specialized scan loop.
#[derive(Clone, Copy)]
struct PrefilterTables {
    classes: u32,
    table: u32,
    stride: u32,
    first_action: u32,
    start: u32,
    actions: u32,
    /// How many states have actions.
    action_count: u32,
    width: u32,
    /// The longest literal's length: the state after a byte depends on that many bytes
    /// up to it and no more (see `prefilter_body`).
    context: u32,
}

struct PartTables {
    part: PartPlan,
    /// Header or cookie name to filter on.
    name: Option<(u32, u32)>,
    /// Members left out by name: (exact, address, length) of each.
    except: Vec<(bool, u32, u32)>,
    /// Negated conditions reading this part: (per-value slot, result slot). After each
    /// value, a per-value slot still clear means the value matched none of the matchers.
    negations: Vec<(u32, u32)>,
    /// Whether some count condition reads this part: its values are counted.
    counted: bool,
    /// Per pattern number: (group in this part or NONE, rule, DFA descriptor, 0).
    patterns: u32,
    groups: Vec<GroupTables>,
    /// The prefilter its values go through (an index into `Tables::prefilters`).
    prefilter: Option<usize>,
}

pub struct Tables {
    /// The literal prefilters: one shared by the parts most rules read, and one for each
    /// part read by few rules (see `Tables::new`).
    prefilters: Vec<PrefilterTables>,
    /// Prefilter hit bits, in 64-bit words.
    pub hit_words: u32,
    /// Whether some rule normalizes paths (a leading `.` then marks a value dirty).
    path_marker: bool,
    scores: u32,
    rule_count: u32,
    parts: Vec<PartTables>,
    /// 256 bytes: the value of a hex digit, or 255.
    hex_values: u32,
    entity_names: Vec<(u32, u32, u8)>,
    decoders_used: Vec<DecodingPlan>,
    /// Whether some rule uses libinjection: the module then imports `detect`.
    pub uses_detect: bool,
    /// Fired bytes: one per rule, then those of compound rules' further conditions.
    pub slot_count: u32,
    /// Count conditions: (parts, comparison, result slot).
    counts: Vec<(Vec<PartPlan>, CountPlan, u32)>,
    /// Compound rules: (rule, the slots that must all be set).
    compounds: Vec<(u32, Vec<u32>)>,
    /// The most tail states of any sequence matcher (0: none) and the most middle states:
    /// they size the memory their walks keep state sets in.
    pub sequence_states: u32,
    pub middle_states: u32,
    /// Whether some sequence has two stages, or three.
    sequences: [bool; 2],
}

/// The memory a sequence walk keeps its runs in: a step counter, and for the tail and for
/// the middle a stamp per state (the step it was last added at) and two lists of states.
pub fn sequence_area(tail_states: u32, middle_states: u32) -> u32 {
    16 + 12 * (tail_states + middle_states)
}

/// A sequence's tables: both automata with plain (not premultiplied) u32 states. Its
/// descriptor: `[head classes, head folded, head next, head stride, tail classes, tail
/// folded, tail next, tail stride, tail normal, tail eoi, tail starts, head ends, head
/// start, head loop, head folded loop, head exits, head folded exits]`, then for three
/// stages `[classes, folded, next, stride, ends, dead, starts]` of the middle.
fn write_sequence(data: &mut Data, seq: &SequenceDfa, folds: bool) -> u32 {
    let (head, tail) = (&seq.head, &seq.tail);
    let h_classes = data.bytes(&head.classes);
    let h_folded = if folds {
        data.bytes(&head.folded)
    } else {
        h_classes
    };
    let h_ends = data.bytes(&head.ends);
    let t_classes = data.bytes(&tail.classes);
    let t_folded = if folds {
        data.bytes(&tail.folded)
    } else {
        t_classes
    };
    let eoi: Vec<u8> = tail.eoi_match.iter().map(|m| u8::from(*m)).collect();
    let t_eoi = data.bytes(&eoi);
    let h_next = data.words(&head.next);
    let t_next = data.words(&tail.next);
    let t_starts = data.words(&seq.tail_starts);
    let middle = seq.middle.as_ref().map(|m| {
        let classes = data.bytes(&m.dfa.classes);
        let folded = if folds {
            data.bytes(&m.dfa.folded)
        } else {
            classes
        };
        let ends = data.bytes(&m.dfa.ends);
        let next = data.words(&m.dfa.next);
        let starts = data.words(&m.starts);
        [classes, folded, next, m.dfa.stride, ends, m.dead, starts]
    });
    // The head's loop state for each class map, with its exit bytes: one that no head match
    // ends in, so passing over bytes that keep the head there is exact.
    let head_states = (0..head.ends.len() as u32).filter(|s| head.ends[*s as usize] & 1 == 0);
    let [loop_plain, loop_folded, exits_plain, exits_folded] =
        write_loop_states(data, [&head.classes, &head.folded], folds, |map| {
            loop_state_of(&head.next, head.stride, head_states.clone(), map)
        });
    let head_and_tail = [
        h_classes,
        h_folded,
        h_next,
        head.stride,
        t_classes,
        t_folded,
        t_next,
        tail.stride,
        tail.normal,
        t_eoi,
        t_starts,
        h_ends,
        head.start,
        loop_plain,
        loop_folded,
        exits_plain,
        exits_folded,
    ];
    match middle {
        Some(middle) => data.words(&[head_and_tail.as_slice(), &middle].concat()),
        None => data.words(&head_and_tail),
    }
}

/// A pattern DFA's descriptor, its words ready for the walk: `[classes, folded, table,
/// log2 row, special state, start state, eoi, width, unit, loop, folded loop, exits, folded
/// exits]`, states (special, start, loop) in the walk's units (see [`loop_state`]).
/// A step is kept to a few adds and a load, with no multiply on the path from one state to
/// the next. DFAs of at most 256 states keep one byte per entry, a state index, and rows
/// padded to a power of two (`row`), so a step shifts the index; in larger ones states are
/// byte offsets into the table (state × stride × width) and the class maps hold each
/// class's byte offset within a row: 16-bit entries and 8-bit class maps up to 64 KiB,
/// 32-bit entries and 16-bit class maps beyond. (Offsets in the small ones too made the
/// CRS's module a tenth and its bundle a third larger.)
fn write_dfa(data: &mut Data, dfa: &PatternDfa, folds: bool) -> u32 {
    let small = dfa.normal + 2 <= 256;
    // The largest entry is the dead state's offset, (normal + 1) × stride × width.
    let narrow = dfa.stride * 2 <= 256 && (dfa.normal + 1) * dfa.stride * 2 <= 0xFFFF;
    let width = if small {
        1
    } else if narrow {
        2
    } else {
        4
    };
    let class_map = |data: &mut Data, map: &[u8; 256]| match width {
        1 => data.bytes(map),
        2 => {
            let scaled: Vec<u8> = map.iter().map(|c| c * 2).collect();
            data.bytes(&scaled)
        }
        _ => {
            data.align(2);
            let mut scaled = Vec::with_capacity(512);
            for c in map {
                scaled.extend_from_slice(&(u16::from(*c) * 4).to_le_bytes());
            }
            data.bytes(&scaled)
        }
    };
    let classes = class_map(data, &dfa.classes);
    // Only patterns read through a lower-casing chain walk the folded classes.
    let folded = if folds {
        class_map(data, &dfa.folded)
    } else {
        classes
    };
    let scale = dfa.stride * width;
    let row = if small {
        dfa.stride.next_power_of_two()
    } else {
        dfa.stride
    };
    let table = if small {
        let mut bytes = vec![0u8; dfa.next.len() / dfa.stride as usize * row as usize];
        for (state, next) in dfa.next.chunks(dfa.stride as usize).enumerate() {
            for (class, s) in next.iter().enumerate() {
                bytes[state * row as usize + class] = *s as u8;
            }
        }
        data.bytes(&bytes)
    } else if narrow {
        data.align(2);
        let mut bytes = Vec::with_capacity(dfa.next.len() * 2);
        for s in &dfa.next {
            bytes.extend_from_slice(&((s * scale) as u16).to_le_bytes());
        }
        data.bytes(&bytes)
    } else {
        let words: Vec<u32> = dfa.next.iter().map(|s| s * scale).collect();
        data.words(&words)
    };
    let eoi: Vec<u8> = dfa.eoi_match.iter().map(|m| u8::from(*m)).collect();
    let eoi = data.bytes(&eoi);
    // The loop state of each class map, in the walk's units (an index in one-byte tables,
    // else a byte offset), and its exit bytes.
    let unit = if small { 1 } else { scale };
    let [loop_plain, loop_folded, exits_plain, exits_folded] =
        write_loop_states(data, [&dfa.classes, &dfa.folded], folds, |map| {
            loop_state(dfa, map).map(|(state, exits)| (state * unit, exits))
        });
    // The walk's values ready to use (see `dfa_body`): each pair that depends on the class
    // map is chosen by address, plain then folded.
    data.words(&[
        classes,
        folded,
        table,
        row.trailing_zeros(),
        dfa.normal * unit,
        dfa.start * unit,
        eoi,
        width,
        unit,
        loop_plain,
        loop_folded,
        exits_plain,
        exits_folded,
    ])
}

/// `loop` word of a DFA descriptor without a loop state (no state's offset comes near it).
const NO_LOOP: u32 = u32::MAX;
/// The most bytes that may leave a loop state: the walk compares 16 bytes of text with each.
const LOOP_EXITS: usize = 8;

/// The DFA's loop state for `map`: the ordinary state that the fewest bytes leave (one to
/// [`LOOP_EXITS`]; ties to the lower state), with those bytes, padded to [`LOOP_EXITS`] by
/// repeating the first. A walk in it skips 16 bytes at a time while none of them leaves
/// it: the long walks (a request-line check, a URI rule over a kilobyte query) spend most
/// of their bytes in such a state (`[^#\s]*` after the `?`).
fn loop_state(dfa: &PatternDfa, map: &[u8; 256]) -> Option<(u32, Vec<u8>)> {
    loop_state_of(&dfa.next, dfa.stride, 0..dfa.normal, map)
}

/// The loop states `find` gives for the plain and (when the automaton `folds`) the folded
/// class map, and their exit bytes written to `data`: `[loop plain, loop folded, exits
/// plain, exits folded]`, `NO_LOOP` where there is none.
fn write_loop_states(
    data: &mut Data,
    [plain, folded]: [&[u8; 256]; 2],
    folds: bool,
    find: impl Fn(&[u8; 256]) -> Option<(u32, Vec<u8>)>,
) -> [u32; 4] {
    let mut write = |map: &[u8; 256]| match find(map) {
        Some((state, exits)) => (state, data.bytes(&exits)),
        None => (NO_LOOP, 0),
    };
    let (loop_plain, exits_plain) = write(plain);
    let (loop_folded, exits_folded) = if folds {
        write(folded)
    } else {
        (loop_plain, exits_plain)
    };
    [loop_plain, loop_folded, exits_plain, exits_folded]
}

/// The loop state among `states` of the automaton `next` (rows of `stride`) read through
/// `map`: see `loop_state`.
fn loop_state_of(
    next: &[u32],
    stride: u32,
    states: impl Iterator<Item = u32>,
    map: &[u8; 256],
) -> Option<(u32, Vec<u8>)> {
    let stride = stride as usize;
    states
        .filter_map(|state| {
            let row = &next[state as usize * stride..][..stride];
            let exits: Vec<u8> = (0..=255u8)
                .filter(|b| row[map[*b as usize] as usize] != state)
                .collect();
            (1..=LOOP_EXITS)
                .contains(&exits.len())
                .then_some((state, exits))
        })
        .min_by_key(|(state, exits)| (exits.len(), *state))
        .map(|(state, mut exits)| {
            let first = exits[0];
            exits.resize(LOOP_EXITS, first);
            (state, exits)
        })
}

fn write_prefilter(data: &mut Data, p: &Prefilter, context: u32) -> PrefilterTables {
    // The prefilter reads every byte of every value, so its loop is kept to an add and a
    // load on the state: states are byte offsets into the table, and the class map holds
    // each class's byte offset within a row (a multiply per byte would add its latency to
    // every byte). Small automata take 16-bit entries, large ones 32-bit entries and a
    // 16-bit class map.
    let (width, classes, table) = if p.stride * 2 <= 255 && p.states * p.stride * 2 <= 65536 {
        let scaled: Vec<u8> = p.classes.iter().map(|c| c * 2).collect();
        let classes = data.bytes(&scaled);
        data.align(2);
        let mut bytes = Vec::with_capacity(p.next.len() * 2);
        for s in &p.next {
            bytes.extend_from_slice(&((s * p.stride * 2) as u16).to_le_bytes());
        }
        (2, classes, data.bytes(&bytes))
    } else {
        data.align(2);
        let mut scaled = Vec::with_capacity(512);
        for c in p.classes {
            scaled.extend_from_slice(&(u16::from(c) * 4).to_le_bytes());
        }
        let classes = data.bytes(&scaled);
        let offsets: Vec<u32> = p.next.iter().map(|s| s * p.stride * 4).collect();
        (4, classes, data.words(&offsets))
    };
    let action_ptrs: Vec<u32> = p
        .actions
        .iter()
        .map(|(dirty, patterns)| {
            let mut words = vec![*dirty, patterns.len() as u32];
            words.extend(patterns);
            data.words(&words)
        })
        .collect();
    PrefilterTables {
        classes,
        table,
        stride: p.stride,
        first_action: p.first_action,
        start: p.start,
        actions: data.words(&action_ptrs),
        action_count: action_ptrs.len() as u32,
        width,
        context,
    }
}

impl Tables {
    /// The size of the prefilter's stamp area: a generation word and a word per action.
    pub fn prefilter_stamp_bytes(&self) -> u32 {
        if self.prefilters.is_empty() {
            0
        } else {
            4 + 4 * self.stamp_words()
        }
    }

    /// The stamps the prefilters share: one per action of the one with the most.
    fn stamp_words(&self) -> u32 {
        self.prefilters
            .iter()
            .map(|p| p.action_count)
            .max()
            .unwrap_or(0)
    }

    pub fn new(waf: &WafPlan, data: &mut Data) -> Result<Tables, CodegenError> {
        let scores: Vec<u32> = waf.rules.iter().map(|r| r.score).collect();
        let scores = data.words(&scores);
        // Every (rule, matcher) is one pattern, numbered across the whole WAF: the
        // prefilters' hit bits are pattern numbers.
        struct Pattern {
            rule: u32,
            /// The fired byte a match sets.
            slot: u32,
            parts: Vec<PartPlan>,
            decode: Vec<DecodingPlan>,
            regex: String,
            literals: Option<Vec<Vec<u8>>>,
            detect: Option<DetectKind>,
        }
        // Fired bytes ("slots"): one per rule, its own condition's result for a plain rule;
        // compound rules (negated, counting, chained) take more, and their slots are
        // combined once every part is read.
        let mut slot_count = waf.rules.len() as u32;
        let mut alloc = || {
            slot_count += 1;
            slot_count - 1
        };
        let mut negations: Vec<(Vec<PartPlan>, u32, u32)> = Vec::new();
        let mut counts: Vec<(Vec<PartPlan>, CountPlan, u32)> = Vec::new();
        let mut compounds: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut patterns: Vec<Pattern> = Vec::new();
        let mut decoders_used: Vec<DecodingPlan> = Vec::new();
        let mut dirty_all = 0;
        let mut folds: HashMap<String, bool> = HashMap::new();
        for rule in &waf.rules {
            let mut needed = Vec::new();
            for (index, condition) in rule.conditions().into_iter().enumerate() {
                let holds = if index == 0 && !condition.negated && condition.count.is_none() {
                    rule.id
                } else {
                    alloc()
                };
                needed.push(holds);
                if let Some(count) = condition.count {
                    counts.push((condition.parts.clone(), count, holds));
                    continue;
                }
                let slot = if condition.negated {
                    let per_value = alloc();
                    negations.push((condition.parts.clone(), per_value, holds));
                    per_value
                } else {
                    holds
                };
                // One pattern per decoding chain the matchers run after (more than one for a
                // rule decoding `every-step`), all setting the same slot.
                let chains = condition.chains();
                for matcher in &condition.matchers {
                    let (regex, literals, detect) = match matcher {
                        MatcherPlan::Detect(kind) => (String::new(), None, Some(*kind)),
                        MatcherPlan::Regex(r) => {
                            (r.clone(), automata::required_literals(r, LITERAL_LEN), None)
                        }
                        MatcherPlan::Literal(l) => {
                            let bytes = l.as_bytes();
                            (
                                regex_syntax::escape(l),
                                Some(vec![bytes[..bytes.len().min(LITERAL_LEN)].to_vec()]),
                                None,
                            )
                        }
                    };
                    for chain in &chains {
                        if detect.is_none() {
                            *folds.entry(regex.clone()).or_default() |= lowercases(chain);
                        }
                        patterns.push(Pattern {
                            rule: rule.id,
                            slot,
                            parts: condition.parts.clone(),
                            decode: chain.to_vec(),
                            regex: regex.clone(),
                            literals: literals.clone(),
                            detect,
                        });
                    }
                }
                for d in &condition.decode {
                    dirty_all |= dirty_mask(*d);
                    if !decoders_used.contains(d) {
                        decoders_used.push(*d);
                    }
                }
            }
            if rule.is_compound() {
                compounds.push((rule.id, needed));
            }
        }
        // Patterns with the same decoding chain take consecutive numbers: in each part a
        // group is one chain, so its hit bits fill few words, which `run_hits` alone reads.
        let mut chains_seen: Vec<Vec<DecodingPlan>> = Vec::new();
        let mut numbered: Vec<(usize, Pattern)> = patterns
            .into_iter()
            .map(|pattern| {
                let chain = match chains_seen.iter().position(|c| *c == pattern.decode) {
                    Some(chain) => chain,
                    None => {
                        chains_seen.push(pattern.decode.clone());
                        chains_seen.len() - 1
                    }
                };
                (chain, pattern)
            })
            .collect();
        numbered.sort_by_key(|(chain, _)| *chain);
        let patterns: Vec<Pattern> = numbered.into_iter().map(|(_, pattern)| pattern).collect();
        let hit_words = (patterns.len() as u32).div_ceil(64).max(1);
        let mut dfas: HashMap<String, u32> = HashMap::new();
        let budget = usize::try_from(waf.automaton_budget).unwrap_or(usize::MAX);
        let (mut sequence_states, mut middle_states) = (0, 0);
        let mut sequences = [false; 2];
        for pattern in patterns.iter().filter(|p| p.detect.is_none()) {
            if !dfas.contains_key(&pattern.regex) {
                let fold = folds[&pattern.regex];
                let matcher = match automata::pattern_automaton(&pattern.regex, budget)? {
                    PatternAutomaton::Whole(dfa) => write_dfa(data, &dfa, fold),
                    PatternAutomaton::Sequence(seq) => {
                        // At least 1: a tail that cannot match still needs the walk.
                        sequence_states = seq.tail.normal.max(sequence_states).max(1);
                        let base = match &seq.middle {
                            Some(m) => {
                                middle_states = middle_states.max(m.dfa.ends.len() as u32);
                                SEQUENCE3_BASE
                            }
                            None => SEQUENCE_BASE,
                        };
                        sequences[usize::from(seq.middle.is_some())] = true;
                        base + write_sequence(data, &seq, fold)
                    }
                };
                dfas.insert(pattern.regex.clone(), matcher);
            }
        }

        let mut part_keys: Vec<PartPlan> = Vec::new();
        let condition_parts = patterns
            .iter()
            .flat_map(|p| &p.parts)
            .chain(negations.iter().flat_map(|n| &n.0))
            .chain(counts.iter().flat_map(|c| &c.0));
        for part in condition_parts {
            if !part_keys.contains(part) {
                part_keys.push(part.clone());
            }
        }
        // The patterns each part's prefilter looks for. A prefilter reads every byte of every
        // value, and on most bytes of text it reaches a state whose literal some pattern
        // needs: a part few rules read (the method, the protocol, a header) has a prefilter
        // of its own patterns, so that the long values of the parts most rules read do not
        // stop at every letter another part's patterns look for; those parts share one.
        let reading: Vec<Vec<usize>> = part_keys
            .iter()
            .map(|part| {
                (0..patterns.len())
                    .filter(|i| patterns[*i].parts.contains(part))
                    .collect()
            })
            .collect();
        let literal_count = |i: usize| patterns[i].literals.as_ref().map_or(0, Vec::len);
        let total: usize = (0..patterns.len()).map(literal_count).sum();
        let own = |set: &[usize]| {
            total >= SPLIT_LITERALS
                && set.iter().map(|i| literal_count(*i)).sum::<usize>() * 4 <= total
        };
        let mut shared: Vec<usize> = reading
            .iter()
            .filter(|set| !own(set))
            .flatten()
            .copied()
            .collect();
        shared.sort_unstable();
        shared.dedup();
        let mut prefilters = Vec::new();
        let mut built: HashMap<Vec<PrefilterLiteral>, usize> = HashMap::new();
        let mut part_prefilter = Vec::new();
        for set in &reading {
            let set = if own(set) { set } else { &shared };
            let mut literals: Vec<PrefilterLiteral> = Vec::new();
            for &index in set {
                for literal in patterns[index].literals.iter().flatten() {
                    literals.push(PrefilterLiteral {
                        bytes: literal.clone(),
                        action: LiteralAction::Pattern(index as u32),
                    });
                }
            }
            for (bytes, bit) in markers(dirty_all) {
                literals.push(PrefilterLiteral {
                    bytes,
                    action: LiteralAction::Dirty(bit),
                });
            }
            if literals.is_empty() {
                part_prefilter.push(None);
                continue;
            }
            let index = match built.get(&literals) {
                Some(index) => *index,
                None => {
                    let p = automata::prefilter(&literals, PREFILTER_STATES)?;
                    let longest = literals.iter().map(|l| l.bytes.len()).max().unwrap_or(1);
                    prefilters.push(write_prefilter(data, &p, longest as u32));
                    built.insert(literals, prefilters.len() - 1);
                    prefilters.len() - 1
                }
            };
            part_prefilter.push(Some(index));
        }
        let mut parts = Vec::new();
        for (part, prefilter) in part_keys.into_iter().zip(part_prefilter) {
            // This part's rules, grouped by decoding chain; patterns of other parts' rules
            // are marked absent (group NONE) in its table.
            let mut chains: Vec<Vec<DecodingPlan>> = Vec::new();
            let mut table = vec![0u32; patterns.len() * 4];
            let mut always: Vec<Vec<u32>> = Vec::new();
            let mut detecting: Vec<bool> = Vec::new();
            for (index, pattern) in patterns.iter().enumerate() {
                let group = if pattern.parts.contains(&part) {
                    let g = match chains.iter().position(|c| *c == pattern.decode) {
                        Some(g) => g,
                        None => {
                            chains.push(pattern.decode.clone());
                            always.push(Vec::new());
                            detecting.push(false);
                            chains.len() - 1
                        }
                    };
                    detecting[g] |= pattern.detect.is_some();
                    if pattern.literals.is_none() {
                        always[g].push(index as u32);
                    }
                    g as u32
                } else {
                    edgepack_bundles::abi::NONE
                };
                let matcher = match pattern.detect {
                    Some(kind) => DETECT_BASE + kind.code(),
                    None => dfas[&pattern.regex],
                };
                table[index * 4..index * 4 + 4].copy_from_slice(&[
                    group,
                    pattern.rule,
                    matcher,
                    pattern.slot,
                ]);
            }
            // Folding lower-case into byte classes serves DFAs, not detectors.
            let dirty: Vec<u32> = chains
                .iter()
                .zip(&detecting)
                .map(|(chain, detects)| {
                    chain.iter().fold(0, |m, d| m | dirty_mask(*d))
                        | if *detects && lowercases(chain) {
                            DIRTY_ALWAYS
                        } else {
                            0
                        }
                })
                .collect();
            let groups = (0..chains.len())
                .map(|g| {
                    let clean = clean_always(g, &chains, &dirty, &always, &table);
                    let mut words = vec![always[g].len() as u32];
                    words.extend(&always[g]);
                    let mut clean_words = vec![clean.len() as u32];
                    clean_words.extend(&clean);
                    GroupTables {
                        hit_masks: data.words(&hit_masks(g as u32, &table)),
                        dirty: dirty[g],
                        chain: chains[g].clone(),
                        always_count: always[g].len() as u32,
                        always: data.words(&words),
                        clean_always_count: clean.len() as u32,
                        clean_always: data.words(&clean_words),
                    }
                })
                .collect();
            let name = match &part {
                PartPlan::Header(n)
                | PartPlan::Cookie(n)
                | PartPlan::Arg(n)
                | PartPlan::PartHeader(n) => Some((data.bytes(n.as_bytes()), n.len() as u32)),
                _ => None,
            };
            let except = match &part {
                PartPlan::Except(_, filters) => filters
                    .iter()
                    .map(|f| match f {
                        NameFilter::Exact(n) => (true, data.bytes(n.as_bytes()), n.len() as u32),
                        NameFilter::Containing(n) => {
                            (false, data.bytes(n.as_bytes()), n.len() as u32)
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            };
            parts.push(PartTables {
                negations: negations
                    .iter()
                    .filter(|(parts, ..)| parts.contains(&part))
                    .map(|(_, per_value, holds)| (*per_value, *holds))
                    .collect(),
                counted: counts.iter().any(|(parts, ..)| parts.contains(&part)),
                part,
                name,
                except,
                patterns: data.words(&table),
                groups,
                prefilter,
            });
        }
        let hex: Vec<u8> = (0..=255u8)
            .map(|b| match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => 255,
            })
            .collect();
        let hex_values = data.bytes(&hex);
        let entity_names = [
            (&b"lt;"[..], b'<'),
            (b"gt;", b'>'),
            (b"amp;", b'&'),
            (b"quot;", b'"'),
            (b"apos;", b'\''),
            (b"nbsp;", 0xA0),
        ]
        .iter()
        .map(|(name, byte)| (data.bytes(name), name.len() as u32, *byte))
        .collect();
        Ok(Tables {
            prefilters,
            hit_words,
            path_marker: dirty_all & DIRTY_PATH != 0,
            scores,
            rule_count: waf.rules.len() as u32,
            parts,
            hex_values,
            entity_names,
            decoders_used,
            uses_detect: patterns.iter().any(|p| p.detect.is_some()),
            slot_count,
            counts,
            compounds,
            sequence_states,
            middle_states,
            sequences,
        })
    }
}

/// The locals a pattern run reads: its table entry, the text, and the route's rules.
#[derive(Clone, Copy)]
struct PatternLocals {
    entry: u32,
    ptr: u32,
    len: u32,
    fold: u32,
    enabled: u32,
}

pub struct Fns {
    pub waf: u32,
    scans: Vec<u32>,
    prefilters: Vec<u32>,
    run_hits: u32,
    run_always: u32,
    dfa: u32,
    /// The sequence walks, when some pattern is a sequence of two stages, or of three.
    sequences: [Option<u32>; 2],
    decoders: Vec<(DecodingPlan, u32)>,
    /// `head_run(next, stride, classes, ends, ptr, i, len, h, loop, exits) -> i64`: a
    /// sequence's head alone over the value from `i` (see `head_run_body`); declared when a
    /// sequence is used.
    head_run: Option<u32>,
    /// The imported `detect`, when some rule uses it.
    detect: Option<u32>,
}

impl Fns {
    /// `detect` is the index of the imported `detect` function, which the module must
    /// import (first) when `t.uses_detect`.
    pub fn declare(funcs: &mut Funcs, t: &Tables, detect: Option<u32>) -> Fns {
        Fns {
            detect,
            waf: funcs.declare(&[I32], &[I32]),
            scans: t
                .parts
                .iter()
                .map(|_| funcs.declare(&[I32, I32, I32], &[]))
                .collect(),
            prefilters: t
                .prefilters
                .iter()
                .map(|_| funcs.declare(&[I32, I32, I32], &[I32]))
                .collect(),
            run_hits: funcs.declare(&[I32, I32, I32, I32, I32, I32, I32], &[]),
            run_always: funcs.declare(&[I32, I32, I32, I32, I32, I32], &[]),
            dfa: funcs.declare(&[I32, I32, I32, I32], &[I32]),
            sequences: t
                .sequences
                .map(|used| used.then(|| funcs.declare(&[I32, I32, I32, I32], &[I32]))),
            head_run: t
                .sequences
                .contains(&true)
                .then(|| funcs.declare(&[I32; 10], &[I64])),
            decoders: t
                .decoders_used
                .iter()
                .map(|d| (*d, funcs.declare(&[I32, I32, I32], &[I32])))
                .collect(),
        }
    }

    pub fn define(&self, funcs: &mut Funcs, layout: &Layout, t: &Tables, util: &Util) {
        funcs.define(self.waf, self.waf_body(layout, t, util));
        for (i, part) in t.parts.iter().enumerate() {
            funcs.define(self.scans[i], self.scan_body(layout, t, part));
        }
        for (f, p) in self.prefilters.iter().zip(&t.prefilters) {
            funcs.define(
                *f,
                prefilter_body(p, layout.prefilter_stamps, t.stamp_words()),
            );
        }
        funcs.define(self.run_hits, self.run_hits_body(layout));
        funcs.define(self.run_always, self.run_always_body(layout));
        funcs.define(self.dfa, dfa_body());
        if let Some(head_run) = self.head_run {
            funcs.define(head_run, head_run_body());
            for (middle, sequence) in [false, true].into_iter().zip(self.sequences) {
                if let Some(sequence) = sequence {
                    let body = sequence_body(
                        layout.threads,
                        [t.sequence_states, t.middle_states],
                        middle,
                        head_run,
                    );
                    funcs.define(sequence, body);
                }
            }
        }
        for (d, index) in &self.decoders {
            let body = match d {
                DecodingPlan::UrlDecode => url_decode_body(t.hex_values, false, false),
                DecodingPlan::UrlDecodeUni => url_decode_body(t.hex_values, true, false),
                DecodingPlan::Utf8UrlDecodeUni => url_decode_body(t.hex_values, true, true),
                DecodingPlan::JsDecode => js_decode_body(t.hex_values),
                DecodingPlan::CssDecode => css_decode_body(t.hex_values),
                DecodingPlan::CmdLine => cmd_line_body(),
                DecodingPlan::RemoveWhitespace => remove_whitespace_body(),
                DecodingPlan::ReplaceComments => replace_comments_body(),
                DecodingPlan::BackslashToSlash => backslash_to_slash_body(),
                DecodingPlan::Lowercase => lowercase_body(),
                DecodingPlan::HtmlEntityDecode => html_decode_body(t, util),
                DecodingPlan::NormalizePath => normalize_path_body(),
                DecodingPlan::CompressWhitespace => compress_body(),
                DecodingPlan::RemoveNulls => remove_nulls_body(),
                DecodingPlan::Base64Decode => base64_decode_body(),
            };
            funcs.define(*index, body);
        }
    }

    /// `waf(route_record) -> score`: scans every part, then lists fired rules and scores.
    fn waf_body(&self, layout: &Layout, t: &Tables, util: &Util) -> wasm_encoder::Function {
        let rec = 0;
        let r = layout.request;
        let mut a = Asm::new(1);
        let enabled = a.local(I32);
        let base = a.local(I32);
        let n = a.local(I32);
        let item = a.local(I32);
        let rule = a.local(I32);
        let count = a.local(I32);
        let score = a.local(I32);
        // The number of values of each counted part.
        let counters: Vec<Option<u32>> = t
            .parts
            .iter()
            .map(|p| p.counted.then(|| a.local(I32)))
            .collect();
        a.load(rec, super::routes::R_WAF_RULES).set(enabled);
        a.c(layout.fired).c(0).c(t.slot_count);
        a.i().memory_fill(0);
        a.c(layout.hits).c(0).c(t.hit_words * 8);
        a.i().memory_fill(0);
        a.c(layout.hits_decoded).c(0).c(t.hit_words * 8);
        a.i().memory_fill(0);
        for (i, part) in t.parts.iter().enumerate() {
            let scan = self.scans[i];
            if let (Some(counter), false) = (counters[i], is_list(&part.part)) {
                a.set_c(counter, 1);
            }
            let single = |a: &mut Asm, field: u32| {
                a.c(r).load_abs(r + field);
                a.i().i32_add();
                a.load_abs(r + field + 4).get(enabled);
                a.i().call(scan);
            };
            match &part.part {
                PartPlan::Path => single(&mut a, req::PATH),
                PartPlan::Query => single(&mut a, req::QUERY),
                PartPlan::Body => single(&mut a, req::BODY),
                PartPlan::RequestLine => single(&mut a, req::REQUEST_LINE),
                PartPlan::Method => {
                    a.c(r).load_abs(r + req::REQUEST_LINE);
                    a.i().i32_add();
                    a.load_abs(r + req::METHOD_LEN).get(enabled);
                    a.i().call(scan);
                }
                PartPlan::Protocol => {
                    // The last bytes of the request line.
                    a.c(r).load_abs(r + req::REQUEST_LINE);
                    a.i().i32_add();
                    a.load_abs(r + req::REQUEST_LINE + 4);
                    a.i().i32_add();
                    a.load_abs(r + req::PROTOCOL_LEN);
                    a.i().i32_sub();
                    a.load_abs(r + req::PROTOCOL_LEN).get(enabled);
                    a.i().call(scan);
                }
                PartPlan::Uri => {
                    // The path, and `?` and the query after it when there is a query.
                    a.c(r).load_abs(r + req::PATH);
                    a.i().i32_add();
                    a.load_abs(r + req::PATH + 4);
                    a.load_abs(r + req::QUERY + 4);
                    a.c(1);
                    a.i().i32_add();
                    a.c(0);
                    a.load_abs(r + req::QUERY + 4);
                    a.i().select().i32_add();
                    a.get(enabled);
                    a.i().call(scan);
                }
                other => {
                    let listed = match other {
                        PartPlan::Except(base, _) => base.as_ref(),
                        other => other,
                    };
                    let (list, value_field) = match listed {
                        PartPlan::Args | PartPlan::QueryArgs | PartPlan::Arg(_) => (req::ARGS, 8),
                        PartPlan::ArgNames | PartPlan::QueryArgNames => (req::ARGS, 0),
                        PartPlan::HeaderNames => (req::HEADERS, 0),
                        PartPlan::CookieNames => (req::COOKIES, 0),
                        PartPlan::Headers | PartPlan::Header(_) => (req::HEADERS, 8),
                        PartPlan::Files => (req::FILES, 8),
                        PartPlan::FileFields => (req::FILES, 0),
                        PartPlan::PartHeaders | PartPlan::PartHeader(_) => (req::PART_HEADERS, 8),
                        _ => (req::COOKIES, 8),
                    };
                    a.c(r).load_abs(r + list);
                    a.i().i32_add();
                    a.set(base);
                    if matches!(other, PartPlan::QueryArgs | PartPlan::QueryArgNames) {
                        // Query arguments come first: only that many.
                        a.load_abs(r + req::QUERY_ARGS).set(n);
                    } else {
                        a.load_abs(r + list + 4).set(n);
                    }
                    a.block().loop_();
                    a.get(n);
                    a.i().i32_eqz().br_if(1);
                    let filter = part.name;
                    if let Some((name, len)) = filter {
                        a.load(base, 4).c(len);
                        a.i().i32_eq();
                        a.if_();
                        a.c(r).load(base, 0);
                        a.i().i32_add();
                        a.c(name).c(len);
                        a.i().call(util.memeq);
                        a.set(item);
                        a.else_();
                        a.set_c(item, 0);
                        a.end();
                    } else {
                        a.set_c(item, 1);
                    }
                    for (exact, name, len) in &part.except {
                        // item &= !(the member's name is or contains this name)
                        a.get(item);
                        a.c(r).load(base, 0);
                        a.i().i32_add();
                        a.load(base, 4).c(*name).c(*len);
                        a.i()
                            .call(if *exact { util.name_is } else { util.name_has });
                        a.i().i32_eqz().i32_and();
                        a.set(item);
                    }
                    a.get(item);
                    a.if_();
                    a.c(r).load(base, value_field);
                    a.i().i32_add();
                    a.load(base, value_field + 4).get(enabled);
                    a.i().call(scan);
                    if let Some(counter) = counters[i] {
                        a.inc(counter, 1);
                    }
                    a.end();
                    a.inc(base, 16);
                    a.get(n).c(1);
                    a.i().i32_sub();
                    a.set(n);
                    a.i().br(0);
                    a.end().end();
                }
            }
        }
        // Count conditions: the values of their parts, compared.
        for (parts, check, slot) in &t.counts {
            a.c(0);
            for part in parts {
                let at = t.parts.iter().position(|p| p.part == *part);
                if let Some(counter) = at.and_then(|at| counters[at]) {
                    a.get(counter);
                    a.i().i32_add();
                }
            }
            a.c(check.value);
            match check.op {
                CountOp::Eq => a.i().i32_eq(),
                CountOp::Ne => a.i().i32_ne(),
                CountOp::Lt => a.i().i32_lt_u(),
                CountOp::Le => a.i().i32_le_u(),
                CountOp::Gt => a.i().i32_gt_u(),
                CountOp::Ge => a.i().i32_ge_u(),
            };
            a.set(item);
            a.c(*slot).get(item);
            a.i().i32_store8(mem(layout.fired, 0));
        }
        // Compound rules fire when all their conditions hold and the route runs them.
        for (compound, slots) in &t.compounds {
            a.get(enabled).c(compound >> 3);
            a.i().i32_add().i32_load8_u(mem(0, 0));
            a.c(compound & 7);
            a.i().i32_shr_u().i32_const(1).i32_and();
            for slot in slots {
                a.c(*slot);
                a.i().i32_load8_u(mem(layout.fired, 0)).i32_and();
            }
            a.set(item);
            a.c(*compound).get(item);
            a.i().i32_store8(mem(layout.fired, 0));
        }
        // Fired rules, ascending, and the score.
        a.set_c(rule, 0).set_c(count, 0).set_c(score, 0);
        a.block().loop_();
        a.get(rule).c(t.rule_count);
        a.i().i32_ge_u().br_if(1);
        a.get(rule);
        a.i().i32_load8_u(mem(layout.fired, 0));
        a.if_();
        a.get(count).c(dec::MAX_RULES);
        a.i().i32_lt_u();
        a.if_();
        a.get(count).c(4);
        a.i().i32_mul();
        a.get(rule);
        a.i().i32_store(mem(layout.decision + dec::RULES, 2));
        a.inc(count, 1);
        a.end();
        a.get(score);
        a.get(rule).c(4);
        a.i().i32_mul().i32_load(mem(t.scores, 2)).i32_add();
        a.set(score);
        a.end();
        a.inc(rule, 1);
        a.i().br(0);
        a.end().end();
        a.store_abs(layout.decision + dec::RULES_COUNT, |a| {
            a.get(count);
        });
        a.store_abs(layout.decision + dec::WAF_SCORE, |a| {
            a.get(score);
        });
        a.get(score);
        a.finish()
    }

    /// `scan(ptr, len, enabled)`: one value of a part through its groups. The hit areas
    /// are all zero between values: whoever sets bits clears them.
    fn scan_body(&self, layout: &Layout, t: &Tables, part: &PartTables) -> wasm_encoder::Function {
        let prefilter = part.prefilter.map(|i| self.prefilters[i]);
        let (ptr, len, enabled) = (0, 1, 2);
        let mut a = Asm::new(3);
        let dirty = a.local(I32);
        let src = a.local(I32);
        let n = a.local(I32);
        let any = a.local(I64);
        let any_decoded = a.local(I64);
        // The decoded value last written, by the key of the decodings that wrote it (see
        // `effective_key`), its place, and whether its prefilter hits are in `hits_decoded`.
        let last_key = a.local(I32);
        let last_src = a.local(I32);
        let last_n = a.local(I32);
        let skipped = a.local(I32);
        let key = a.local(I32);
        let dst = a.local(I32);
        // The output of a chain's first step run (in `scratch_first`, its hits in
        // `hits_first`), by the key of that step, with the markers found in it.
        let first_key = a.local(I32);
        let first_out_key = a.local(I32);
        let first_src = a.local(I32);
        let first_n = a.local(I32);
        let first_dirty = a.local(I32);
        let any_first = a.local(I64);
        // The markers that would make a chain's later steps change the first step's output.
        let later = a.local(I32);
        a.set_c(last_key, NO_KEY);
        a.set_c(first_out_key, NO_KEY);
        a.set_c(first_src, layout.scratch_first);
        // Pushes the OR of a hit area's words.
        let any_hit = |a: &mut Asm, area: u32| {
            a.i().i64_const(0);
            for w in 0..t.hit_words {
                a.c(0);
                a.i().i64_load(mem(area + w * 8, 3)).i64_or();
            }
        };
        let clear = |a: &mut Asm, area: u32| {
            a.c(area).c(0).c(t.hit_words * 8);
            a.i().memory_fill(0);
        };
        // Pushes the prefilter's markers of `text` (`n` bytes), its hits written to `area`,
        // cleared first when `used_key`, the key of the text scanned there before, is set.
        let scan_into = |a: &mut Asm, f: u32, used_key: u32, text: u32, n: u32, area: u32| {
            a.get(used_key).c(NO_KEY);
            a.i().i32_ne();
            a.if_();
            clear(a, area);
            a.end();
            a.get(text).get(n).c(area);
            a.i().call(f);
        };
        // A leading `.` in `text` marks `dirty` for path normalization: it may be a relative
        // `./` or `../` that normalization removes.
        let mark_leading_dot = |a: &mut Asm, text: u32, n: u32, dirty: u32| {
            if t.path_marker {
                a.get(n);
                a.if_();
                a.load8(text, 0).c(b'.' as u32);
                a.i().i32_eq();
                a.if_();
                a.get(dirty).c(DIRTY_PATH);
                a.i().i32_or();
                a.set(dirty);
                a.end();
                a.end();
            }
        };
        if let Some(f) = prefilter {
            a.get(ptr).get(len).c(layout.hits);
            a.i().call(f);
            a.set(dirty);
            any_hit(&mut a, layout.hits);
            a.set(any);
        }
        a.get(dirty).c(DIRTY_ALWAYS);
        a.i().i32_or();
        a.set(dirty);
        mark_leading_dot(&mut a, ptr, len, dirty);
        let mut keys: HashMap<Vec<DecodingPlan>, u32> = HashMap::new();
        let mut key_of = |steps: &[DecodingPlan]| {
            let canonical = effective_key(steps);
            let next = keys.len() as u32;
            *keys.entry(canonical).or_insert(next)
        };
        // Groups whose decodings come to the same once identity steps drop out are read
        // one after another, so the second finds the first's output still in place.
        let mut order: Vec<usize> = (0..part.groups.len()).collect();
        order.sort_by_cached_key(|&g| {
            let chain = &part.groups[g].chain;
            (effective_key(&chain[skippable_prefix(chain)..]), g)
        });
        for group in order {
            let g = &part.groups[group];
            let run_hits =
                |a: &mut Asm, any: u32, text: u32, text_len: u32, hits: u32, fold: u32| {
                    a.get(any);
                    a.i().i64_eqz().i32_eqz();
                    a.if_();
                    a.c(part.patterns)
                        .c(g.hit_masks)
                        .get(text)
                        .get(text_len)
                        .c(hits)
                        .c(fold)
                        .get(enabled);
                    a.i().call(self.run_hits);
                    a.end();
                };
            let run_always = |a: &mut Asm, text: u32, text_len: u32, fold: u32, clean: bool| {
                let (list, count) = if clean {
                    (g.clean_always, g.clean_always_count)
                } else {
                    (g.always, g.always_count)
                };
                if count > 0 {
                    a.c(part.patterns)
                        .c(list)
                        .get(text)
                        .get(text_len)
                        .c(fold)
                        .get(enabled);
                    a.i().call(self.run_always);
                }
            };
            // Matches a decoded output (`text`, `n` bytes, its hits in `area`; `any` takes
            // whether it has any).
            let match_output = |a: &mut Asm, any: u32, text: u32, n: u32, area: u32, fold: u32| {
                if prefilter.is_some() {
                    any_hit(a, area);
                    a.set(any);
                    run_hits(a, any, text, n, area, fold);
                }
                run_always(a, text, n, fold, false);
            };
            a.get(dirty).c(g.dirty);
            a.i().i32_and().i32_eqz();
            a.if_();
            // Clean: the decodings leave the value as it is, up to lower-casing, which the
            // folded byte classes apply.
            let fold = u32::from(lowercases(&g.chain));
            if prefilter.is_some() {
                run_hits(&mut a, any, ptr, len, layout.hits, fold);
            }
            run_always(&mut a, ptr, len, fold, true);
            a.else_();
            // A chain without steps is never dirty.
            if !g.chain.is_empty() {
                // Leading decodings whose markers the value lacks leave it as it is: they are
                // skipped, and the rest run from the value itself. The dirty branch always
                // keeps a step to run (a group is dirty through some step's markers, or decodes
                // always because it lower-cases, which is never skipped).
                let most = skippable_prefix(&g.chain).min(g.chain.len().saturating_sub(1));
                a.set_c(skipped, 0);
                for step in &g.chain[..most] {
                    a.get(dirty).c(dirty_mask(*step));
                    a.i().i32_and().i32_eqz();
                    a.if_();
                    a.inc(skipped, 1);
                }
                for _ in 0..most {
                    a.end();
                }
                // Per number of steps skipped (`from`): the key of the first step run, the
                // markers that would make the later steps change its output, and the key of
                // all the steps left to run. A detector reads text as it is, so a lower-casing
                // later step always changes its input.
                let always_decode = g.dirty & DIRTY_ALWAYS != 0;
                let later_markers = |from: usize| {
                    let later = &g.chain[from + 1..];
                    later.iter().fold(0, |m, d| m | dirty_mask(*d))
                        | if always_decode && lowercases(later) {
                            DIRTY_ALWAYS
                        } else {
                            0
                        }
                };
                let select_by_skipped = |a: &mut Asm, local: u32, values: &[u32]| {
                    a.c(values[most]).set(local);
                    for from in (0..most).rev() {
                        // local = skipped == from ? values[from] : local
                        a.c(values[from]).get(local);
                        a.get(skipped).c(from as u32);
                        a.i().i32_eq().select();
                        a.set(local);
                    }
                };
                let first_keys: Vec<u32> = (0..=most)
                    .map(|from| key_of(&g.chain[from..from + 1]))
                    .collect();
                let later_by_skipped: Vec<u32> = (0..=most).map(later_markers).collect();
                let keys_by_skipped: Vec<u32> =
                    (0..=most).map(|from| key_of(&g.chain[from..])).collect();
                select_by_skipped(&mut a, first_key, &first_keys);
                // Without a UTF-8 lead byte in the value, `utf8-url-decode-uni` gives what
                // `url-decode-uni` gives: their outputs share a key.
                let plain = key_of(&[DecodingPlan::UrlDecodeUni]);
                for from in 0..=most {
                    if g.chain[from] != DecodingPlan::Utf8UrlDecodeUni {
                        continue;
                    }
                    a.get(skipped).c(from as u32);
                    a.i().i32_eq();
                    a.get(dirty).c(DIRTY_UTF8);
                    a.i().i32_and().i32_eqz().i32_and();
                    a.if_();
                    a.set_c(first_key, plain);
                    a.end();
                }
                select_by_skipped(&mut a, later, &later_by_skipped);
                select_by_skipped(&mut a, key, &keys_by_skipped);
                let decoder = |d: &DecodingPlan| {
                    self.decoders
                        .iter()
                        .find(|(x, _)| x == d)
                        .map(|(_, f)| *f)
                        .expect("every decoding used has a function")
                };
                // The first step's output, kept in its own area with its prefilter hits and
                // markers: chains that start with the same step share it, and where their later
                // steps find no markers in it, it is their output too.
                a.get(first_key).get(first_out_key);
                a.i().i32_ne();
                a.if_();
                for (at, d) in g.chain.iter().enumerate().take(most + 1) {
                    let guarded = most > 0;
                    if guarded {
                        a.get(skipped).c(at as u32);
                        a.i().i32_eq();
                        a.if_();
                    }
                    a.get(ptr).get(len).c(layout.scratch_first);
                    a.i().call(decoder(d));
                    a.set(first_n);
                    if guarded {
                        a.end();
                    }
                }
                match prefilter {
                    Some(f) => {
                        scan_into(
                            &mut a,
                            f,
                            first_out_key,
                            first_src,
                            first_n,
                            layout.hits_first,
                        );
                        a.c(DIRTY_ALWAYS);
                        a.i().i32_or();
                        a.set(first_dirty);
                        mark_leading_dot(&mut a, first_src, first_n, first_dirty);
                    }
                    // Without a prefilter nothing says what the later steps would change.
                    None => {
                        a.set_c(first_dirty, u32::MAX);
                    }
                }
                a.get(first_key).set(first_out_key);
                a.end();
                a.get(first_dirty).get(later);
                a.i().i32_and().i32_eqz();
                a.if_();
                // The later steps leave the first step's output as it is (up to lower-casing,
                // which the folded byte classes apply).
                match_output(
                    &mut a,
                    any_first,
                    first_src,
                    first_n,
                    layout.hits_first,
                    fold,
                );
                a.else_();
                a.get(key).get(last_key);
                a.i().i32_ne();
                a.if_();
                // Another output than the one in place: the later steps run on the first
                // step's output, each once in the code (those before it jumped over), outputs
                // alternating between the two scratch areas; then its prefilter pass.
                a.set_c(src, layout.scratch_first);
                a.get(first_n).set(n);
                a.set_c(dst, layout.scratch_a);
                for (at, d) in g.chain.iter().enumerate().skip(1) {
                    let guarded = at <= most;
                    if guarded {
                        a.get(skipped).c(at as u32);
                        a.i().i32_lt_u();
                        a.if_();
                    }
                    a.get(src).get(n).get(dst);
                    a.i().call(decoder(d));
                    a.set(n);
                    a.get(dst).set(src);
                    a.c(layout.scratch_a + layout.scratch_b).get(dst);
                    a.i().i32_sub();
                    a.set(dst);
                    if guarded {
                        a.end();
                    }
                }
                if let Some(f) = prefilter {
                    scan_into(&mut a, f, last_key, src, n, layout.hits_decoded);
                    a.i().drop();
                }
                a.get(key).set(last_key);
                a.get(src).set(last_src);
                a.get(n).set(last_n);
                a.end();
                match_output(
                    &mut a,
                    any_decoded,
                    last_src,
                    last_n,
                    layout.hits_decoded,
                    0,
                );
                a.end();
            }
            a.end();
        }
        if prefilter.is_some() {
            a.get(any);
            a.i().i64_eqz().i32_eqz();
            a.if_();
            clear(&mut a, layout.hits);
            a.end();
            a.get(last_key).c(NO_KEY);
            a.i().i32_ne();
            a.if_();
            clear(&mut a, layout.hits_decoded);
            a.end();
            a.get(first_out_key).c(NO_KEY);
            a.i().i32_ne();
            a.if_();
            clear(&mut a, layout.hits_first);
            a.end();
        }
        // Negated conditions: a value that matched none of the matchers makes them hold;
        // the per-value slot starts clear for the next value.
        for (per_value, holds) in &part.negations {
            a.c(*per_value);
            a.i().i32_load8_u(mem(layout.fired, 0)).i32_eqz();
            a.if_();
            a.c(*holds).c(1);
            a.i().i32_store8(mem(layout.fired, 0));
            a.end();
            a.c(*per_value).c(0);
            a.i().i32_store8(mem(layout.fired, 0));
        }
        a.finish()
    }

    /// Runs one pattern (its table entry at local `entry`) unless its slot is already set or
    /// its rule is not enabled on the route; sets the slot on a match.
    fn try_pattern(&self, a: &mut Asm, layout: &Layout, l: PatternLocals) {
        let PatternLocals {
            entry,
            ptr,
            len,
            fold,
            enabled,
        } = l;
        let rule = a.local(I32);
        let slot = a.local(I32);
        a.block();
        a.load(entry, 4).set(rule);
        a.load(entry, 12).set(slot);
        a.get(slot);
        a.i().i32_load8_u(mem(layout.fired, 0)).br_if(0);
        a.get(enabled).get(rule).c(3);
        a.i().i32_shr_u().i32_add().i32_load8_u(mem(0, 0));
        a.get(rule).c(7);
        a.i()
            .i32_and()
            .i32_shr_u()
            .i32_const(1)
            .i32_and()
            .i32_eqz()
            .br_if(0);
        // Matchers by their table word: detect >= DETECT_BASE > three-stage sequence >=
        // SEQUENCE3_BASE > sequence >= SEQUENCE_BASE > DFA; only the kinds the module has
        // are tested for.
        let matcher = a.local(I32);
        let hit = a.local(I32);
        a.load(entry, 8).set(matcher);
        let mut arms = 0;
        if let Some(detect) = self.detect {
            a.get(matcher).c(DETECT_BASE);
            a.i().i32_ge_u();
            a.if_();
            a.get(matcher).c(DETECT_BASE);
            a.i().i32_sub();
            a.get(ptr).get(len);
            a.i().call(detect);
            a.set(hit);
            a.else_();
            arms += 1;
        }
        for (base, sequence) in [SEQUENCE3_BASE, SEQUENCE_BASE]
            .into_iter()
            .zip([self.sequences[1], self.sequences[0]])
        {
            let Some(sequence) = sequence else { continue };
            a.get(matcher).c(base);
            a.i().i32_ge_u();
            a.if_();
            a.get(matcher).c(base);
            a.i().i32_sub();
            a.get(ptr).get(len).get(fold);
            a.i().call(sequence);
            a.set(hit);
            a.else_();
            arms += 1;
        }
        a.get(matcher).get(ptr).get(len).get(fold);
        a.i().call(self.dfa);
        a.set(hit);
        for _ in 0..arms {
            a.end();
        }
        a.get(hit);
        a.if_();
        a.get(slot).c(1);
        a.i().i32_store8(mem(layout.fired, 0));
        a.end();
        a.end();
    }

    /// `run_hits(patterns, masks, ptr, len, hits, fold, enabled)`: the group's patterns
    /// whose literals the prefilter saw, found by walking the set hit bits of the words
    /// `masks` lists (see [`hit_masks`]), each masked to the group's own patterns.
    fn run_hits_body(&self, layout: &Layout) -> wasm_encoder::Function {
        let (patterns, masks, ptr, len, hits, fold, enabled) = (0, 1, 2, 3, 4, 5, 6);
        let mut a = Asm::new(7);
        let n = a.local(I32);
        let w = a.local(I32);
        let word = a.local(I64);
        let index = a.local(I32);
        let entry = a.local(I32);
        a.load(masks, 0).set(n);
        a.block().loop_();
        a.get(n);
        a.i().i32_eqz().br_if(1);
        a.load(masks, 4).set(w);
        a.get(hits).get(w).c(8);
        a.i().i32_mul().i32_add().i64_load(mem(0, 3));
        a.get(masks);
        a.i().i64_load(mem(8, 2)).i64_and();
        a.set(word);
        a.block().loop_();
        a.get(word);
        a.i().i64_eqz().br_if(1);
        // index = w * 64 + trailing zeros; clear the lowest bit
        a.get(w).c(6);
        a.i().i32_shl();
        a.get(word);
        a.i().i64_ctz().i32_wrap_i64().i32_add();
        a.set(index);
        a.get(word).get(word);
        a.i().i64_const(1).i64_sub().i64_and();
        a.set(word);
        a.get(index).c(16);
        a.i().i32_mul();
        a.get(patterns);
        a.i().i32_add();
        a.set(entry);
        self.try_pattern(
            &mut a,
            layout,
            PatternLocals {
                entry,
                ptr,
                len,
                fold,
                enabled,
            },
        );
        a.i().br(0);
        a.end().end();
        a.inc(masks, 12);
        a.get(n).c(1);
        a.i().i32_sub();
        a.set(n);
        a.i().br(0);
        a.end().end();
        a.finish()
    }

    /// `run_always(patterns, list, ptr, len, fold, enabled)`: the group's patterns without
    /// literals.
    fn run_always_body(&self, layout: &Layout) -> wasm_encoder::Function {
        let (patterns, list, ptr, len, fold, enabled) = (0, 1, 2, 3, 4, 5);
        let mut a = Asm::new(6);
        let n = a.local(I32);
        let entry = a.local(I32);
        a.load(list, 0).set(n);
        a.block().loop_();
        a.get(n);
        a.i().i32_eqz().br_if(1);
        a.inc(list, 4);
        a.load(list, 0).c(16);
        a.i().i32_mul();
        a.get(patterns);
        a.i().i32_add();
        a.set(entry);
        self.try_pattern(
            &mut a,
            layout,
            PatternLocals {
                entry,
                ptr,
                len,
                fold,
                enabled,
            },
        );
        a.get(n).c(1);
        a.i().i32_sub();
        a.set(n);
        a.i().br(0);
        a.end().end();
        a.finish()
    }
}

/// In a loop state: splats its eight exit bytes (at `exits`) into `exit_bytes`, then passes
/// over 16 bytes at a time, moving the pointer `at`, while the block `ahead` bytes after it
/// lies before `end` and holds none of them (`block` is scratch).
fn pass_loop_blocks(
    a: &mut Asm,
    [at, end, exits, block]: [u32; 4],
    ahead: u32,
    exit_bytes: &[u32],
) {
    for (k, v) in exit_bytes.iter().enumerate() {
        a.load8(exits, k as u32);
        a.i().i8x16_splat();
        a.set(*v);
    }
    a.block().loop_();
    a.get(at).c(ahead + 16);
    a.i().i32_add();
    a.get(end);
    a.i().i32_gt_u().br_if(1);
    a.get(at);
    a.i().v128_load(mem(ahead, 0));
    a.set(block);
    a.get(block).get(exit_bytes[0]);
    a.i().i8x16_eq();
    for v in &exit_bytes[1..] {
        a.get(block).get(*v);
        a.i().i8x16_eq().v128_or();
    }
    a.i().v128_any_true().br_if(1);
    a.inc(at, 16);
    a.i().br(0);
    a.end().end();
}

/// Pushes the descriptor word at `offset` for a plain walk, or the word after it for a
/// folded one (`fold` is 0 or 1): descriptors keep the plain and folded forms of each value
/// that depends on the class map side by side, so the walk picks by address.
fn push_for_fold(a: &mut Asm, desc: u32, fold: u32, offset: u32) {
    a.get(fold).c(2);
    a.i().i32_shl();
    a.get(desc);
    a.i().i32_add().i32_load(mem(offset, 2));
}

/// `dfa(descriptor, ptr, len, fold) -> matched`: walks a pattern DFA over the bytes.
fn dfa_body() -> wasm_encoder::Function {
    let (desc, ptr, len, fold) = (0, 1, 2, 3);
    let mut a = Asm::new(4);
    let classes = a.local(I32);
    let table = a.local(I32);
    let shift = a.local(I32);
    let special = a.local(I32);
    let s = a.local(I32);
    let end = a.local(I32);
    let width = a.local(I32);
    let loop_state = a.local(I32);
    let exits = a.local(I32);
    let exit_bytes: Vec<u32> = (0..LOOP_EXITS).map(|_| a.local(ValType::V128)).collect();
    let block = a.local(ValType::V128);
    // With the next state on the stack: it becomes `s`; a special state ends the walk
    // (matched when it is the match state), any other goes on to the next byte. In the
    // loop state, whole blocks of 16 bytes none of which leaves it are passed over first.
    let next_byte = |a: &mut Asm| {
        a.tee(s);
        a.get(special);
        a.i().i32_ge_u();
        a.if_();
        a.get(s).get(special);
        a.i().i32_eq().return_();
        a.end();
        a.get(s).get(loop_state);
        a.i().i32_eq();
        a.if_();
        // The byte at `ptr` is read: the blocks start after it.
        pass_loop_blocks(a, [ptr, end, exits, block], 1, &exit_bytes);
        a.end();
        a.inc(ptr, 1);
        a.i().br(0);
        a.end().end();
    };
    // The descriptor (see `write_dfa`) holds the walk's values ready to use, and the class
    // map, loop state and exits of the plain and the folded walk side by side. The loops
    // then keep few values live, so none of them, the state least of all, waits in a stack
    // slot.
    for (offset, local) in [(0, classes), (36, loop_state), (44, exits)] {
        push_for_fold(&mut a, desc, fold, offset);
        a.set(local);
    }
    a.load(desc, 8).set(table);
    // States are indices in one-byte tables (rows of 2^shift entries), else byte offsets:
    // state × stride × width.
    a.load(desc, 12).set(shift);
    a.load(desc, 16).set(special);
    a.load(desc, 20).set(s);
    a.load(desc, 28).set(width);
    a.get(ptr).get(len);
    a.i().i32_add();
    a.set(end);
    a.get(width).c(1);
    a.i().i32_eq();
    a.if_();
    a.block().loop_();
    a.get(ptr).get(end);
    a.i().i32_ge_u().br_if(1);
    // s = table[(s << shift) + classes[byte]]
    a.get(table).get(s).get(shift);
    a.i().i32_shl().i32_add();
    a.get(classes).load8(ptr, 0);
    a.i()
        .i32_add()
        .i32_load8_u(mem(0, 0))
        .i32_add()
        .i32_load8_u(mem(0, 0));
    next_byte(&mut a);
    a.end();
    // Wider tables: s = table[s + classes[byte]], the class map's entries and the table's
    // as wide as the width says.
    for wide in [false, true] {
        a.get(width).c(if wide { 4 } else { 2 });
        a.i().i32_eq();
        a.if_();
        a.block().loop_();
        a.get(ptr).get(end);
        a.i().i32_ge_u().br_if(1);
        a.get(table).get(s);
        a.i().i32_add();
        a.get(classes);
        a.load8(ptr, 0);
        if wide {
            a.c(1);
            a.i().i32_shl().i32_add().i32_load16_u(mem(0, 1));
        } else {
            a.i().i32_add().i32_load8_u(mem(0, 0));
        }
        a.i().i32_add();
        if wide {
            a.i().i32_load(mem(0, 2));
        } else {
            a.i().i32_load16_u(mem(0, 1));
        }
        next_byte(&mut a);
        a.end();
    }
    // The end of the text: does it complete a match from the state reached?
    a.get(s);
    a.load(desc, 32);
    a.i().i32_div_u();
    a.load(desc, 24);
    a.i().i32_add().i32_load8_u(mem(0, 0));
    a.finish()
}

/// `sequence(descriptor, ptr, len, fold) -> matched`: walks a sequence's head over the
/// bytes and, from every offset where the head ends, its tail (or, with `middle`, its
/// middle, and the tail from every offset where a middle run ends), all runs of a stage at
/// once as a set of states (each state once), so the walk stays linear in the value.
/// `area` is the memory of [`sequence_area`] for `tail_states` and `middle_states`.
fn sequence_body(
    area: u32,
    [tail_states, middle_states]: [u32; 2],
    middle: bool,
    head_run: u32,
) -> wasm_encoder::Function {
    let (desc, ptr, len, fold) = (0, 1, 2, 3);
    let stamps = area + 16;
    let list_a = stamps + 4 * tail_states;
    let list_b = list_a + 4 * tail_states;
    let middle_stamps = list_b + 4 * tail_states;
    let middle_a = middle_stamps + 4 * middle_states;
    let middle_b = middle_a + 4 * middle_states;
    let mut a = Asm::new(4);
    let [h_classes, h_next, h_stride, h_ends, h] = [(); 5].map(|()| a.local(I32));
    let [t_classes, t_next, t_stride, t_normal, t_eoi, t_starts] = [(); 6].map(|()| a.local(I32));
    let [step, cur, nxt, n, m, i, k, b, s, t] = [(); 10].map(|()| a.local(I32));
    let [m_classes, m_next, m_stride, m_ends, m_dead, m_starts] = [(); 6].map(|()| a.local(I32));
    let [m_cur, m_nxt, m_n, m_m, ms, mt] = [(); 6].map(|()| a.local(I32));
    let reached = a.local(I64);
    push_for_fold(&mut a, desc, fold, 0);
    a.set(h_classes);
    a.load(desc, 8).set(h_next);
    a.load(desc, 12).set(h_stride);
    push_for_fold(&mut a, desc, fold, 16);
    a.set(t_classes);
    a.load(desc, 24).set(t_next);
    a.load(desc, 28).set(t_stride);
    a.load(desc, 32).set(t_normal);
    a.load(desc, 36).set(t_eoi);
    a.load(desc, 40).set(t_starts);
    a.load(desc, 44).set(h_ends);
    a.load(desc, 48).set(h);
    if middle {
        push_for_fold(&mut a, desc, fold, 68);
        a.set(m_classes);
        a.load(desc, 76).set(m_next);
        a.load(desc, 80).set(m_stride);
        a.load(desc, 84).set(m_ends);
        a.load(desc, 88).set(m_dead);
        a.load(desc, 92).set(m_starts);
    }
    // Stamps hold the step a state was last added at; steps only grow, across calls too,
    // so no clearing per value. Both kinds of walk share the memory: a restart clears all.
    a.load_abs(area).set(step);
    a.get(step).c(STEP_LIMIT);
    a.i().i32_gt_u();
    a.if_();
    a.c(stamps).c(0).c(12 * (tail_states + middle_states));
    a.i().memory_fill(0);
    a.set_c(step, 0);
    a.end();
    // This walk takes steps step + 1 ..= step + len: the counter moves past them now, so a
    // walk cut short (a match, or a trap) leaves no stamp a later walk could take for its own.
    a.store_abs(area, |a| {
        a.get(step).get(len);
        a.i().i32_add().i32_const(1).i32_add();
    });
    a.set_c(cur, list_a).set_c(nxt, list_b);
    if middle {
        a.set_c(m_cur, middle_a).set_c(m_nxt, middle_b);
    }
    let transition = |a: &mut Asm, next: u32, state: u32, stride: u32, classes: u32| {
        push_transition(a, [next, state, stride, classes], b);
    };
    // Adds state `x` to the list `list` (holding `count`) unless this step added it already.
    let add_once = |a: &mut Asm, x: u32, stamps: u32, list: u32, count: u32| {
        a.c(stamps).get(x).c(4);
        a.i().i32_mul().i32_add().i32_load(mem(0, 2));
        a.get(step);
        a.i().i32_ne();
        a.if_();
        a.c(stamps).get(x).c(4);
        a.i().i32_mul().i32_add();
        a.get(step);
        a.i().i32_store(mem(0, 2));
        a.get(list).get(count).c(4);
        a.i().i32_mul().i32_add();
        a.get(x);
        a.i().i32_store(mem(0, 2));
        a.inc(count, 1);
        a.end();
    };
    // Advances tail state `s` over byte `b` into the next list; returns 1 on a match.
    let advance = |a: &mut Asm| {
        a.get(s).get(t_normal);
        a.i().i32_lt_u();
        a.if_();
        transition(a, t_next, s, t_stride, t_classes);
        a.tee(t).get(t_normal);
        a.i().i32_eq();
        a.if_();
        a.ret_c(1);
        a.end();
        a.get(t).get(t_normal);
        a.i().i32_lt_u();
        a.if_();
        add_once(a, t, stamps, nxt, m);
        a.end();
        a.end();
    };
    // Pushes the start state in `starts` for offset `at` (a local): by the byte before it,
    // or the one for the start of the value.
    let start_at = |a: &mut Asm, starts: u32, at: u32| {
        a.get(at);
        a.i().i32_eqz();
        a.if_with_result();
        a.get(starts);
        a.i().i32_load(mem(256 * 4, 2));
        a.else_();
        a.get(starts).get(ptr).get(at);
        a.i()
            .i32_add()
            .i32_const(1)
            .i32_sub()
            .i32_load8_u(mem(0, 0));
        a.i().i32_const(4).i32_mul().i32_add().i32_load(mem(0, 2));
        a.end();
    };
    // A tail run starts at offset `i`, and reads byte `b`.
    let start_tail = |a: &mut Asm| {
        start_at(a, t_starts, i);
        a.set(s);
        advance(a);
    };
    // Pushes `ends[state] & bit`: whether a run ends before the byte that led to `state`
    // (bit 1) or at the end of the value (bit 2).
    let ends_bit = |a: &mut Asm, ends: u32, state: u32, bit: i32| {
        a.get(ends).get(state);
        a.i()
            .i32_add()
            .i32_load8_u(mem(0, 0))
            .i32_const(bit)
            .i32_and();
    };
    // Advances middle state `ms` over byte `b` into the next middle list; a run ending
    // before `b` starts a tail run.
    let advance_middle = |a: &mut Asm| {
        a.get(ms).get(m_dead);
        a.i().i32_ne();
        a.if_();
        transition(a, m_next, ms, m_stride, m_classes);
        a.tee(mt).get(m_dead);
        a.i().i32_ne();
        a.if_();
        ends_bit(a, m_ends, mt, 1);
        a.if_();
        start_tail(a);
        a.end();
        add_once(a, mt, middle_stamps, m_nxt, m_m);
        a.end();
        a.end();
    };
    // Runs `body` for every state in `list` (holding `count`), the state in `into`.
    // Leaves the enclosing loop's block at the end of the text; otherwise reads byte `i`
    // into `b` and pushes the head's next state.
    let head_step = |a: &mut Asm| {
        a.get(i).get(len);
        a.i().i32_ge_u().br_if(1);
        a.get(ptr).get(i);
        a.i().i32_add().i32_load8_u(mem(0, 0));
        a.set(b);
        transition(a, h_next, h, h_stride, h_classes);
    };
    let each = |a: &mut Asm, list: u32, count: u32, into: u32, body: &dyn Fn(&mut Asm)| {
        a.set_c(k, 0);
        a.block().loop_();
        a.get(k).get(count);
        a.i().i32_ge_u().br_if(1);
        a.get(list).get(k).c(4);
        a.i().i32_mul().i32_add().i32_load(mem(0, 2));
        a.set(into);
        body(a);
        a.inc(k, 1);
        a.i().br(0);
        a.end().end();
    };
    a.block().loop_();
    a.get(i).get(len);
    a.i().i32_ge_u().br_if(1);
    // While no run of a later stage is alive only the head moves: a tight loop takes the
    // bytes up to one after which a head match ends, which the full step below then takes.
    a.get(n);
    if middle {
        a.get(m_n);
        a.i().i32_or();
    }
    a.i().i32_eqz();
    a.if_();
    // In a function of its own, so the few values that loop needs stay in registers.
    a.get(i).set(k);
    for local in [h_next, h_stride, h_classes, h_ends, ptr, i, len, h] {
        a.get(local);
    }
    // The head's loop state and exit bytes for this walk's class map.
    for plain in [52, 60] {
        push_for_fold(&mut a, desc, fold, plain);
    }
    a.i().call(head_run);
    a.tee(reached);
    a.i().i32_wrap_i64();
    a.set(i);
    a.get(reached);
    a.i().i64_const(32).i64_shr_u().i32_wrap_i64();
    a.set(h);
    a.get(step).get(i).get(k);
    a.i().i32_sub().i32_add();
    a.set(step);
    a.end();
    head_step(&mut a);
    a.set(h);
    a.inc(step, 1);
    a.set_c(m, 0);
    a.set_c(m_m, 0);
    // A head match ends before this byte: the next stage's run starts here, and reads it.
    ends_bit(&mut a, h_ends, h, 1);
    a.if_();
    if middle {
        start_at(&mut a, m_starts, i);
        a.set(ms);
        advance_middle(&mut a);
    } else {
        start_tail(&mut a);
    }
    a.end();
    if middle {
        each(&mut a, m_cur, m_n, ms, &advance_middle);
    }
    each(&mut a, cur, n, s, &advance);
    // The next lists become the current ones.
    a.get(cur).set(t);
    a.get(nxt).set(cur);
    a.get(t).set(nxt);
    a.get(m).set(n);
    if middle {
        a.get(m_cur).set(mt);
        a.get(m_nxt).set(m_cur);
        a.get(mt).set(m_nxt);
        a.get(m_m).set(m_n);
    }
    a.inc(i, 1);
    a.i().br(0);
    a.end().end();
    // At the end of the value: a run of the stage before the tail ending there with a tail
    // matching the empty rest, or a tail run completed by the end.
    let tail_at_end = |a: &mut Asm| {
        start_at(a, t_starts, len);
        a.set(s);
        a.get(s).get(t_normal);
        a.i().i32_lt_u();
        a.if_();
        a.get(t_eoi).get(s);
        a.i().i32_add().i32_load8_u(mem(0, 0));
        a.if_();
        a.ret_c(1);
        a.end();
        a.end();
    };
    let middle_at_end = |a: &mut Asm| {
        a.get(ms).get(m_dead);
        a.i().i32_ne();
        a.if_();
        ends_bit(a, m_ends, ms, 2);
        a.if_();
        tail_at_end(a);
        a.end();
        a.end();
    };
    ends_bit(&mut a, h_ends, h, 2);
    a.if_();
    if middle {
        start_at(&mut a, m_starts, len);
        a.set(ms);
        middle_at_end(&mut a);
    } else {
        tail_at_end(&mut a);
    }
    a.end();
    if middle {
        each(&mut a, m_cur, m_n, ms, &middle_at_end);
    }
    each(&mut a, cur, n, s, &|a: &mut Asm| {
        a.get(t_eoi).get(s);
        a.i().i32_add().i32_load8_u(mem(0, 0));
        a.if_();
        a.ret_c(1);
        a.end();
    });
    a.c(0);
    a.finish()
}

/// `prefilter(ptr, len, hits) -> dirty bits`: the literal automaton over the bytes, with its
/// tables' addresses and sizes as constants. It sets the hit bit of every pattern whose
/// literal occurs in the value and returns the decoding markers found.
///
/// An action is applied once per call: plain text re-enters the same action states at most
/// of its bytes (single-letter literals, whitespace), and applying one again changes
/// nothing. Each call takes a new generation, and an action state is applied only when its
/// stamp (`stamps`: the generation word, then a word per action state) is older.
/// `stamp_words`: the stamps every prefilter shares (cleared whole when the generation
/// they share wraps).
fn prefilter_body(p: &PrefilterTables, stamps: u32, stamp_words: u32) -> wasm_encoder::Function {
    let (ptr, len, hits) = (0, 1, 2);
    let mut a = Asm::new(3);
    let s = a.local(I32);
    let end = a.local(I32);
    let dirty = a.local(I32);
    let action = a.local(I32);
    let n = a.local(I32);
    let id = a.local(I32);
    let generation = a.local(I32);
    let stamp = a.local(I32);
    let [s2, ptr2, s3, ptr3, s4, ptr4, piece] = [(); 7].map(|()| a.local(I32));
    // generation = stamps[0] + 1; on wrapping to 0 every stamp is cleared first, so no
    // stamp left from 2^32 calls ago passes for this call's.
    a.c(0);
    a.i().i32_load(mem(stamps, 2)).i32_const(1).i32_add();
    a.tee(generation);
    a.i().i32_eqz();
    a.if_();
    a.c(stamps + 4).c(0).c(4 * stamp_words);
    a.i().memory_fill(0);
    a.set_c(generation, 1);
    a.end();
    a.c(0).get(generation);
    a.i().i32_store(mem(stamps, 2));
    // States are byte offsets into the table: state * stride * width.
    let scale = p.stride * p.width;
    let first_action = p.first_action * scale;
    let start = p.start * scale;
    // One byte through the automaton from state `s` at `at`, applying the action of an
    // action state reached.
    let step = |a: &mut Asm, at: u32, s: u32| {
        a.get(s);
        a.load8(at, 0);
        if p.width == 2 {
            a.i()
                .i32_load8_u(mem(p.classes, 0))
                .i32_add()
                .i32_load16_u(mem(p.table, 1));
        } else {
            a.i()
                .i32_const(1)
                .i32_shl()
                .i32_load16_u(mem(p.classes, 1))
                .i32_add()
                .i32_load(mem(p.table, 2));
        }
        a.tee(s);
        a.c(first_action);
        a.i().i32_ge_u();
        a.if_();
        // stamp = &stamps[1 + (s - first_action) / scale]; unless it holds this generation,
        // stamp it and apply action = actions[(s - first_action) / scale].
        // The offset is a multiple of `scale`: dividing by multiplying with ⌈2^32 / scale⌉
        // is exact (the error, index × (M × scale − 2^32) / 2^32, stays below one).
        let reciprocal = (1u64 << 32).div_ceil(u64::from(scale));
        a.get(s).c(first_action);
        a.i()
            .i32_sub()
            .i64_extend_i32_u()
            .i64_const(reciprocal as i64)
            .i64_mul()
            .i64_const(32)
            .i64_shr_u()
            .i32_wrap_i64();
        a.c(4);
        a.i().i32_mul();
        a.tee(stamp);
        a.i().i32_load(mem(stamps + 4, 2));
        a.get(generation);
        a.i().i32_ne();
        a.if_();
        a.get(stamp).get(generation);
        a.i().i32_store(mem(stamps + 4, 2));
        a.get(stamp);
        a.i().i32_load(mem(p.actions, 2));
        a.set(action);
        a.get(dirty).load(action, 0);
        a.i().i32_or();
        a.set(dirty);
        a.load(action, 4).set(n);
        a.block().loop_();
        a.get(n);
        a.i().i32_eqz().br_if(1);
        a.inc(action, 4);
        a.load(action, 4).set(id);
        a.get(hits).get(id).c(3);
        a.i().i32_shr_u().i32_add();
        a.get(hits).get(id).c(3);
        a.i().i32_shr_u().i32_add().i32_load8_u(mem(0, 0));
        a.c(1).get(id).c(7);
        a.i().i32_and().i32_shl().i32_or().i32_store8(mem(0, 0));
        a.get(n).c(1);
        a.i().i32_sub();
        a.set(n);
        a.i().br(0);
        a.end().end();
        a.end();
        a.end();
        a.inc(at, 1);
    };
    a.get(ptr).get(len);
    a.i().i32_add();
    a.set(end);
    // A long value is read as several pieces at once, so the walks' loads overlap instead of
    // each byte waiting for the one before. The state after a byte depends only on the
    // `context` bytes up to it (the longest literal), so each walk after the first starts
    // from the start state at least `context - 1` bytes before its part of the value: within
    // that part its states are exactly those of one walk over the whole value, and before it,
    // it can only find literals that are there (which the walk before finds as well; stamps
    // apply each action once). Each walk reads on to where the next one's part begins.
    let overlap = p.context.max(1) - 1;
    let walks_for = |walks: u32| PREFILTER_MIN_PIECE * walks + overlap * (walks - 1);
    let locals = [ptr, s, ptr2, s2, ptr3, s3, ptr4, s4, piece];
    let bounds = [len, end, overlap, start];
    a.get(len).c(walks_for(4));
    a.i().i32_ge_u();
    a.if_();
    walk_pieces(&mut a, &step, locals, 4, bounds);
    a.else_();
    a.get(len).c(walks_for(2));
    a.i().i32_ge_u();
    a.if_();
    walk_pieces(&mut a, &step, locals, 2, bounds);
    a.else_();
    walk_pieces(&mut a, &step, locals, 1, bounds);
    a.end();
    a.end();
    a.get(dirty);
    a.finish()
}

/// Pushes `next[state * stride + classes[b]]`: one step over byte `b` of a sequence's
/// automaton (plain `u32` states, locals `[next, state, stride, classes]`).
fn push_transition(a: &mut Asm, [next, state, stride, classes]: [u32; 4], b: u32) {
    a.get(next).get(state).get(stride);
    a.i().i32_mul();
    a.get(classes).get(b);
    a.i()
        .i32_add()
        .i32_load8_u(mem(0, 0))
        .i32_add()
        .i32_const(4)
        .i32_mul()
        .i32_add()
        .i32_load(mem(0, 2));
}

/// A sequence's head alone over the value at `ptr` from offset `i` up to `len`, from state
/// `h`: it stops at the end, or at the byte after which a head match ends (which the
/// sequence's full step then takes). In the head's loop state `loop` (whose exit bytes are
/// the eight at `exits`), it passes over 16 bytes at a time while none of them is an exit
/// byte, as a DFA's walk does. Returns `(h << 32) | i` for the state and offset reached.
fn head_run_body() -> wasm_encoder::Function {
    let (next, stride, classes, ends, ptr, i, len, h, loop_state, exits) =
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9);
    let mut a = Asm::new(10);
    let [t, b, at, end] = [(); 4].map(|()| a.local(I32));
    let exit_bytes: Vec<u32> = (0..LOOP_EXITS).map(|_| a.local(ValType::V128)).collect();
    let block = a.local(ValType::V128);
    a.get(ptr).get(i);
    a.i().i32_add();
    a.set(at);
    a.get(ptr).get(len);
    a.i().i32_add();
    a.set(end);
    a.block().loop_();
    a.get(at).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(at, 0).set(b);
    push_transition(&mut a, [next, h, stride, classes], b);
    a.tee(t);
    a.get(ends);
    a.i()
        .i32_add()
        .i32_load8_u(mem(0, 0))
        .i32_const(1)
        .i32_and()
        .br_if(1);
    a.get(t).set(h);
    a.inc(at, 1);
    a.get(h).get(loop_state);
    a.i().i32_eq();
    a.if_();
    pass_loop_blocks(&mut a, [at, end, exits, block], 0, &exit_bytes);
    a.end();
    a.i().br(0);
    a.end().end();
    a.get(h);
    a.i().i64_extend_i32_u().i64_const(32).i64_shl();
    a.get(at).get(ptr);
    a.i().i32_sub().i64_extend_i32_u().i64_or();
    a.finish()
}

/// The fewest bytes of a value each of the prefilter's walks reads (beyond the context it
/// starts with): below this, more walks cost more in setup than their overlap saves.
const PREFILTER_MIN_PIECE: u32 = 32;

/// Walks `ptr..end` (`len` bytes) with `walks` walks of the prefilter (1, 2 or 4) in one
/// loop, each `step`ping its pointer and state (`locals`: pointer and state of each walk, the
/// first being the value's own pointer; then `piece`). Every walk reads `piece` bytes: walk
/// w from `w × (piece - overlap)`, the last one the value's last `piece` bytes (which may
/// begin more than `overlap` bytes before its part; the extra bytes are read twice).
fn walk_pieces(
    a: &mut Asm,
    step: &impl Fn(&mut Asm, u32, u32),
    locals: [u32; 9],
    walks: u32,
    [len, end, overlap, start]: [u32; 4],
) {
    let piece = locals[8];
    let (ptrs, states): (Vec<u32>, Vec<u32>) = (0..walks as usize)
        .map(|w| (locals[2 * w], locals[2 * w + 1]))
        .unzip();
    let last = walks as usize - 1;
    if last > 0 {
        // piece = ⌈(len + (walks - 1) × overlap) / walks⌉
        a.get(len).c((walks - 1) * overlap + walks - 1);
        a.i().i32_add();
        a.c(walks.trailing_zeros());
        a.i().i32_shr_u();
        a.set(piece);
        for w in 1..last {
            a.get(ptrs[w - 1]).get(piece).c(overlap);
            a.i().i32_sub().i32_add();
            a.set(ptrs[w]);
        }
        a.get(end).get(piece);
        a.i().i32_sub();
        a.set(ptrs[last]);
    }
    for &state in &states {
        a.set_c(state, start);
    }
    a.block().loop_();
    a.get(ptrs[last]).get(end);
    a.i().i32_ge_u().br_if(1);
    for w in 0..walks as usize {
        step(a, ptrs[w], states[w]);
    }
    a.i().br(0);
    a.end().end();
}

/// Emits a byte-at-a-time transform loop: `body` sees the byte in `b` and writes through
/// `out`; the function returns the output length.
fn byte_loop(body: impl FnOnce(&mut Asm, u32, u32)) -> wasm_encoder::Function {
    let (src, len, dst) = (0, 1, 2);
    let mut a = Asm::new(3);
    let end = a.local(I32);
    let out = a.local(I32);
    let b = a.local(I32);
    a.get(src).get(len);
    a.i().i32_add();
    a.set(end);
    a.get(dst).set(out);
    a.block().loop_();
    a.get(src).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(src, 0).set(b);
    body(&mut a, b, out);
    a.inc(src, 1);
    a.i().br(0);
    a.end().end();
    a.get(out).get(dst);
    a.i().i32_sub();
    a.finish()
}

fn emit_byte(a: &mut Asm, out: u32, value: impl FnOnce(&mut Asm)) {
    a.get(out);
    value(a);
    a.i().i32_store8(mem(0, 0));
    a.inc(out, 1);
}

fn lowercase_body() -> wasm_encoder::Function {
    byte_loop(|a, b, out| {
        emit_byte(a, out, |a| {
            // b | 0x20 when b is A..=Z
            a.get(b).c(0x20);
            a.i().i32_or();
            a.get(b);
            a.get(b).c(b'A' as u32);
            a.i().i32_sub();
            a.c(26);
            a.i().i32_lt_u().select();
        });
    })
}

fn backslash_to_slash_body() -> wasm_encoder::Function {
    byte_loop(|a, b, out| {
        emit_byte(a, out, |a| {
            a.c(b'/' as u32).get(b).get(b).c(b'\\' as u32);
            a.i().i32_eq().select();
        });
    })
}

/// Whitespace (`is_space`) and the non-breaking space 0xA0 go.
fn remove_whitespace_body() -> wasm_encoder::Function {
    byte_loop(|a, b, out| {
        is_space(a, b);
        a.get(b).c(0xA0);
        a.i().i32_eq().i32_or().i32_eqz();
        a.if_();
        emit_byte(a, out, |a| {
            a.get(b);
        });
        a.end();
    })
}

/// `replace-comments`; see `decodings::replace_comments`.
fn replace_comments_body() -> wasm_encoder::Function {
    let (src, len, dst) = (0, 1, 2);
    let mut a = Asm::new(3);
    let end = a.local(I32);
    let out = a.local(I32);
    let b = a.local(I32);
    let inside = a.local(I32);
    // Pushes whether the bytes at src are `first` then `second`.
    let pair = |a: &mut Asm, first: u8, second: u8| {
        a.get(b).c(u32::from(first));
        a.i().i32_eq();
        a.get(src).c(1);
        a.i().i32_add();
        a.get(end);
        a.i().i32_lt_u().i32_and();
        a.if_with_result();
        a.load8(src, 1).c(u32::from(second));
        a.i().i32_eq();
        a.else_();
        a.c(0);
        a.end();
    };
    a.get(src).get(len);
    a.i().i32_add();
    a.set(end);
    a.get(dst).set(out);
    a.block().loop_();
    a.get(src).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(src, 0).set(b);
    a.get(inside);
    a.if_();
    pair(&mut a, b'*', b'/');
    a.if_();
    a.set_c(inside, 0);
    emit_byte(&mut a, out, |a| {
        a.c(u32::from(b' '));
    });
    a.inc(src, 2);
    a.i().br(2);
    a.end();
    a.inc(src, 1);
    a.i().br(1);
    a.end();
    pair(&mut a, b'/', b'*');
    a.if_();
    a.set_c(inside, 1);
    a.inc(src, 2);
    a.i().br(1);
    a.end();
    emit_byte(&mut a, out, |a| {
        a.get(b);
    });
    a.inc(src, 1);
    a.i().br(0);
    a.end().end();
    a.get(inside);
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.c(u32::from(b' '));
    });
    a.end();
    a.get(out).get(dst);
    a.i().i32_sub();
    a.finish()
}

/// `cmd-line`; see `decodings::cmd_line`.
fn cmd_line_body() -> wasm_encoder::Function {
    let (src, len, dst) = (0, 1, 2);
    let mut a = Asm::new(3);
    let end = a.local(I32);
    let out = a.local(I32);
    let b = a.local(I32);
    let space = a.local(I32);
    let is = |a: &mut Asm, b: u32, set: &[u8]| {
        a.c(0);
        for c in set {
            a.get(b).c(u32::from(*c));
            a.i().i32_eq().i32_or();
        }
    };
    a.get(src).get(len);
    a.i().i32_add();
    a.set(end);
    a.get(dst).set(out);
    a.block().loop_();
    a.get(src).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(src, 0).set(b);
    a.inc(src, 1);
    // Deleted.
    is(&mut a, b, b"\"'\\^");
    a.i().br_if(0);
    // Separators: one space for a run.
    is(&mut a, b, b" ,;\t\r\n");
    a.if_();
    a.get(space);
    a.i().i32_eqz();
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.c(u32::from(b' '));
    });
    a.set_c(space, 1);
    a.end();
    a.i().br(1);
    a.end();
    // A space before `/` or `(` goes.
    is(&mut a, b, b"/(");
    a.get(space);
    a.i().i32_and();
    a.if_();
    a.get(out).c(1);
    a.i().i32_sub();
    a.set(out);
    a.end();
    a.set_c(space, 0);
    emit_byte(&mut a, out, |a| {
        // b | 0x20 when b is A..=Z
        a.get(b).c(0x20);
        a.i().i32_or();
        a.get(b);
        a.get(b).c(b'A' as u32);
        a.i().i32_sub();
        a.c(26);
        a.i().i32_lt_u().select();
    });
    a.i().br(0);
    a.end().end();
    a.get(out).get(dst);
    a.i().i32_sub();
    a.finish()
}

/// Sets `v` to the base64 value of the byte in `c`: 0–63, 64 for `=`, 127 for any other.
fn base64_value(a: &mut Asm, c: u32, v: u32) {
    a.set_c(v, 127);
    for (first, count, value) in [(b'A', 26, 0), (b'a', 26, 26), (b'0', 10, 52)] {
        // v = c - first < count ? c - first + value : v
        a.get(c).c(u32::from(first));
        a.i().i32_sub();
        a.c(value);
        a.i().i32_add();
        a.get(v);
        a.get(c).c(u32::from(first));
        a.i().i32_sub();
        a.c(count);
        a.i().i32_lt_u().select();
        a.set(v);
    }
    for (byte, value) in [(b'+', 62), (b'/', 63), (b'=', 64)] {
        a.c(value).get(v);
        a.get(c).c(u32::from(byte));
        a.i().i32_eq().select();
        a.set(v);
    }
}

/// ModSecurity 3's `base64Decode` (see `decodings::base64_decode`): a first pass checks the
/// value up to its first NUL as mbed TLS does and gives nothing when it fails; a second
/// decodes each group of four characters, skipping line breaks and spaces.
fn base64_decode_body() -> wasm_encoder::Function {
    let (src, len, dst) = (0, 1, 2);
    let mut a = Asm::new(3);
    let [end, i, c, v, spaces, padding, out, group, count, keep] = [(); 10].map(|()| a.local(I32));
    // The value ends at its first NUL.
    a.get(src).set(end);
    a.block().loop_();
    a.get(end).get(src).get(len);
    a.i().i32_add().i32_ge_u().br_if(1);
    a.load8(end, 0);
    a.i().i32_eqz().br_if(1);
    a.inc(end, 1);
    a.i().br(0);
    a.end().end();
    // Checking.
    a.get(src).set(i);
    a.block().loop_();
    a.set_c(spaces, 0);
    a.block().loop_();
    a.get(i).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(i, 0).c(u32::from(b' '));
    a.i().i32_ne().br_if(1);
    a.inc(i, 1).inc(spaces, 1);
    a.i().br(0);
    a.end().end();
    // Spaces at the end are allowed.
    a.get(i).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(i, 0).set(c);
    // A line break (`\r\n` or `\n`), after spaces or not.
    a.get(c).c(u32::from(b'\r'));
    a.i().i32_eq();
    a.get(end).get(i);
    a.i().i32_sub().i32_const(2).i32_ge_u().i32_and();
    a.if_();
    a.load8(i, 1).c(u32::from(b'\n'));
    a.i().i32_eq();
    a.if_();
    a.inc(i, 2);
    a.i().br(2);
    a.end();
    a.end();
    a.get(c).c(u32::from(b'\n'));
    a.i().i32_eq();
    a.if_();
    a.inc(i, 1);
    a.i().br(1);
    a.end();
    // A space inside a line, a third `=`, a byte outside the alphabet or a character after
    // `=`: nothing.
    a.get(spaces);
    a.if_();
    a.ret_c(0);
    a.end();
    a.get(c).c(u32::from(b'='));
    a.i().i32_eq();
    a.if_();
    a.inc(padding, 1);
    a.get(padding).c(2);
    a.i().i32_gt_u();
    a.if_();
    a.ret_c(0);
    a.end();
    a.end();
    base64_value(&mut a, c, v);
    a.get(v).c(127);
    a.i().i32_eq();
    a.get(v).c(64);
    a.i().i32_lt_u();
    a.get(padding);
    a.i().i32_const(0).i32_ne().i32_and().i32_or();
    a.if_();
    a.ret_c(0);
    a.end();
    a.inc(i, 1);
    a.i().br(0);
    a.end().end();
    // Decoding.
    a.get(dst).set(out);
    a.set_c(keep, 3);
    a.get(src).set(i);
    a.block().loop_();
    a.get(i).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(i, 0).set(c);
    a.inc(i, 1);
    a.get(c).c(u32::from(b'\r'));
    a.i().i32_eq();
    a.get(c).c(u32::from(b'\n'));
    a.i().i32_eq().i32_or();
    a.get(c).c(u32::from(b' '));
    a.i().i32_eq().i32_or().br_if(0);
    base64_value(&mut a, c, v);
    a.get(keep);
    a.get(v).c(64);
    a.i().i32_eq().i32_sub();
    a.set(keep);
    a.get(group).c(6);
    a.i().i32_shl();
    a.get(v).c(0x3F);
    a.i().i32_and().i32_or();
    a.set(group);
    a.inc(count, 1);
    a.get(count).c(4);
    a.i().i32_eq();
    a.if_();
    a.set_c(count, 0);
    for (kept, shift) in [(0, 16), (1, 8), (2, 0)] {
        a.get(keep).c(kept);
        a.i().i32_gt_u();
        a.if_();
        emit_byte(&mut a, out, |a| {
            a.get(group).c(shift);
            a.i().i32_shr_u();
        });
        a.end();
    }
    a.end();
    a.i().br(0);
    a.end().end();
    a.get(out).get(dst);
    a.i().i32_sub();
    a.finish()
}

fn remove_nulls_body() -> wasm_encoder::Function {
    byte_loop(|a, b, out| {
        a.get(b);
        a.if_();
        emit_byte(a, out, |a| {
            a.get(b);
        });
        a.end();
    })
}

/// Pushes whether the byte in `b` is whitespace (space, or 9..=13).
fn is_space(a: &mut Asm, b: u32) {
    a.get(b).c(32);
    a.i().i32_eq();
    a.get(b).c(9);
    a.i().i32_sub();
    a.c(5);
    a.i().i32_lt_u().i32_or();
}

fn compress_body() -> wasm_encoder::Function {
    let (src, len, dst) = (0, 1, 2);
    let mut a = Asm::new(3);
    let end = a.local(I32);
    let out = a.local(I32);
    let b = a.local(I32);
    let in_space = a.local(I32);
    a.get(src).get(len);
    a.i().i32_add();
    a.set(end);
    a.get(dst).set(out);
    a.block().loop_();
    a.get(src).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(src, 0).set(b);
    is_space(&mut a, b);
    a.if_();
    a.get(in_space);
    a.i().i32_eqz();
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.c(b' ' as u32);
    });
    a.end();
    a.set_c(in_space, 1);
    a.else_();
    emit_byte(&mut a, out, |a| {
        a.get(b);
    });
    a.set_c(in_space, 0);
    a.end();
    a.inc(src, 1);
    a.i().br(0);
    a.end().end();
    a.get(out).get(dst);
    a.i().i32_sub();
    a.finish()
}

/// Pushes the hex value of the byte at `local + offset` (16 or more if not a hex digit).
fn hex_at(a: &mut Asm, hex_values: u32, local: u32, offset: u32) {
    a.load8(local, offset);
    a.i().i32_load8_u(mem(hex_values, 0));
}

/// Reads the four hex digits at `local + offset` (a `%uHHHH` or `\uHHHH` code): sets `high`
/// and `low` to the code's two bytes and pushes whether all four were hex digits (`h2` and
/// `l2` are scratch).
fn hex4_at(a: &mut Asm, hex_values: u32, local: u32, offset: u32, [high, low, h2, l2]: [u32; 4]) {
    for (k, digit) in [high, low, h2, l2].into_iter().enumerate() {
        hex_at(a, hex_values, local, offset + k as u32);
        a.set(digit);
    }
    a.get(high).get(low);
    a.i().i32_or();
    a.get(h2);
    a.i().i32_or();
    a.get(l2);
    a.i().i32_or();
    a.c(16);
    a.i().i32_lt_u();
    a.get(high).c(4);
    a.i().i32_shl();
    a.get(low);
    a.i().i32_or();
    a.set(high);
    a.get(h2).c(4);
    a.i().i32_shl();
    a.get(l2);
    a.i().i32_or();
    a.set(low);
}

/// Pushes `low` plus 0x20 when `full_width` (a 16-bit code `FFxx` with `xx` in 1..=0x5E):
/// the byte ModSecurity keeps of a `%u`/`\u` code. `top` holds the code's high byte.
fn unicode_low_byte(a: &mut Asm, top: u32, low: u32) {
    a.get(low);
    a.get(top).c(0xFF);
    a.i().i32_eq();
    a.get(low).c(1);
    a.i().i32_sub();
    a.c(0x5E);
    a.i().i32_lt_u().i32_and();
    a.c(5);
    a.i().i32_shl().i32_add();
}

/// Pushes the lower-case hex digit of the nibble on the stack.
fn hex_digit(a: &mut Asm, nibble: u32) {
    a.get(nibble);
    a.c(48).c(87).get(nibble).c(10);
    a.i().i32_lt_u().select().i32_add();
}

/// `url-decode`; with `uni`, `%uHHHH` too (`url-decode-uni`); with `utf8`, valid multi-byte
/// UTF-8 read as its `%u` form first (`utf8-url-decode-uni`). See `decodings::url_decode_uni`.
fn url_decode_body(hex_values: u32, uni: bool, utf8: bool) -> wasm_encoder::Function {
    let (src, len, dst) = (0, 1, 2);
    let mut a = Asm::new(3);
    let end = a.local(I32);
    let out = a.local(I32);
    let b = a.local(I32);
    let h = a.local(I32);
    let l = a.local(I32);
    let h2 = a.local(I32);
    let l2 = a.local(I32);
    let n = a.local(I32);
    let code = a.local(I32);
    let ok = a.local(I32);
    let c = a.local(I32);
    let word = a.local(I64);
    let plain = a.local(I32);
    a.get(src).get(len);
    a.i().i32_add();
    a.set(end);
    a.get(dst).set(out);
    a.block().loop_();
    a.get(src).get(end);
    a.i().i32_ge_u().br_if(1);
    // Eight bytes at a time while none needs decoding: written out with `+` made a space,
    // then `plain` (the bytes before the first `%`, or with `utf8` the first byte of 0x80 or
    // more) moves on; the byte loop below takes the one that stopped it. The whole word is
    // written even when fewer bytes move on: output never outruns input, so it stays inside
    // the destination, and the bytes past `plain` are written again.
    a.get(src).c(8);
    a.i().i32_add();
    a.get(end);
    a.i().i32_le_u();
    a.if_();
    a.get(src);
    a.i().i64_load(mem(0, 0));
    a.set(word);
    a.get(out);
    a.get(word);
    swar_equal_bytes(&mut a, word, b'+');
    a.i()
        .i64_const(7)
        .i64_shr_u()
        .i64_const(i64::from(b'+' ^ b' '))
        .i64_mul()
        .i64_xor()
        .i64_store(mem(0, 0));
    swar_equal_bytes(&mut a, word, b'%');
    if utf8 {
        a.get(word);
        a.i()
            .i64_const(0x8080_8080_8080_8080u64 as i64)
            .i64_and()
            .i64_or();
    }
    a.i().i64_ctz().i64_const(3).i64_shr_u().i32_wrap_i64();
    a.tee(plain);
    a.get(src);
    a.i().i32_add();
    a.set(src);
    a.get(out).get(plain);
    a.i().i32_add();
    a.set(out);
    a.get(plain).c(8);
    a.i().i32_eq().br_if(1);
    a.end();
    a.load8(src, 0).set(b);
    if utf8 {
        // A lead byte 0xC0..=0xF7 with all its continuation bytes present.
        a.get(b).c(0xC0);
        a.i().i32_sub();
        a.c(0x38);
        a.i().i32_lt_u();
        a.if_(); // depth 1
        a.c(2);
        a.get(b).c(0xE0);
        a.i().i32_ge_u().i32_add();
        a.get(b).c(0xF0);
        a.i().i32_ge_u().i32_add();
        a.set(n);
        a.get(b).c(0x7F).get(n);
        a.i().i32_shr_u().i32_and();
        a.set(code);
        a.get(src).get(n);
        a.i().i32_add();
        a.get(end);
        a.i().i32_le_u();
        a.if_(); // depth 2
        a.set_c(ok, 1);
        for k in 1..4u32 {
            a.get(n).c(k);
            a.i().i32_gt_u();
            a.if_();
            a.load8(src, k).set(c);
            a.get(ok);
            a.get(c).c(0xC0);
            a.i().i32_and();
            a.c(0x80);
            a.i().i32_eq().i32_and();
            a.set(ok);
            a.get(code).c(6);
            a.i().i32_shl();
            a.get(c).c(0x3F);
            a.i().i32_and().i32_or();
            a.set(code);
            a.end();
        }
        // Not overlong, at most U+10FFFF, not a surrogate.
        a.get(ok);
        a.get(code);
        a.c(0x80).c(0x800).get(n).c(2);
        a.i().i32_eq().select();
        a.c(0x1_0000).get(n).c(4);
        a.i().i32_lt_u().select();
        a.i().i32_ge_u().i32_and();
        a.get(code).c(0x11_0000);
        a.i().i32_lt_u().i32_and();
        a.get(code).c(0xD800);
        a.i().i32_sub();
        a.c(0x800);
        a.i().i32_ge_u().i32_and();
        a.if_(); // depth 3
        a.get(code).c(0x1_0000);
        a.i().i32_lt_u();
        a.if_(); // depth 4
        a.get(code).c(8);
        a.i().i32_shr_u();
        a.set(h);
        a.get(code).c(0xFF);
        a.i().i32_and();
        a.set(l);
        emit_byte(&mut a, out, |a| unicode_low_byte(a, h, l));
        a.else_();
        // `%u` takes four of five or six hex digits; the rest stay as text.
        a.get(code).c(0x10_0000);
        a.i().i32_ge_u();
        a.set(h);
        emit_byte(&mut a, out, |a| {
            a.get(code).c(4).get(h).c(2);
            a.i().i32_shl().i32_add().i32_shr_u();
        });
        a.get(h);
        a.if_();
        a.get(code).c(4);
        a.i().i32_shr_u();
        a.c(15);
        a.i().i32_and();
        a.set(l);
        emit_byte(&mut a, out, |a| hex_digit(a, l));
        a.end();
        a.get(code).c(15);
        a.i().i32_and();
        a.set(l);
        emit_byte(&mut a, out, |a| hex_digit(a, l));
        a.end();
        a.get(src).get(n);
        a.i().i32_add();
        a.set(src);
        a.i().br(3);
        a.end().end().end();
    }
    a.block();
    if uni {
        // `%uHHHH`
        a.get(b).c(b'%' as u32);
        a.i().i32_eq();
        a.get(src).c(5);
        a.i().i32_add();
        a.get(end);
        a.i().i32_lt_u().i32_and();
        a.if_();
        a.load8(src, 1).c(0x20);
        a.i().i32_or();
        a.c(b'u' as u32);
        a.i().i32_eq();
        hex4_at(&mut a, hex_values, src, 2, [h, l, h2, l2]);
        a.i().i32_and();
        a.if_();
        emit_byte(&mut a, out, |a| unicode_low_byte(a, h, l));
        a.inc(src, 6);
        a.i().br(3);
        a.end();
        a.end();
    }
    // `%XX` with two hex digits
    a.get(b).c(b'%' as u32);
    a.i().i32_eq();
    a.get(src).c(2);
    a.i().i32_add();
    a.get(end);
    a.i().i32_lt_u().i32_and();
    a.if_();
    hex_at(&mut a, hex_values, src, 1);
    a.set(h);
    hex_at(&mut a, hex_values, src, 2);
    a.set(l);
    a.get(h).get(l);
    a.i().i32_or();
    a.c(16);
    a.i().i32_lt_u();
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.get(h).c(4);
        a.i().i32_shl();
        a.get(l);
        a.i().i32_or();
    });
    a.inc(src, 3);
    a.i().br(3);
    a.end();
    a.end();
    a.end();
    // `+` is a space; anything else is itself
    emit_byte(&mut a, out, |a| {
        a.c(b' ' as u32).get(b).get(b).c(b'+' as u32);
        a.i().i32_eq().select();
    });
    a.inc(src, 1);
    a.i().br(0);
    a.end().end();
    a.get(out).get(dst);
    a.i().i32_sub();
    a.finish()
}

/// Pushes a word with 0x80 in each byte of `word` that equals `byte`, 0 elsewhere (exact:
/// no carry crosses a byte).
fn swar_equal_bytes(a: &mut Asm, word: u32, byte: u8) {
    const LOW7: i64 = 0x7F7F_7F7F_7F7F_7F7F;
    let splat = i64::from_le_bytes([byte; 8]);
    // t = word ^ splat is zero where equal; ((t & LOW7) + LOW7) | t has the top bit of every
    // byte set except where t's byte is zero.
    a.get(word);
    a.i().i64_const(splat).i64_xor();
    a.get(word);
    a.i()
        .i64_const(splat)
        .i64_xor()
        .i64_const(LOW7)
        .i64_and()
        .i64_const(LOW7)
        .i64_add()
        .i64_or()
        .i64_const(LOW7)
        .i64_or()
        .i64_const(-1)
        .i64_xor();
}

/// `js-decode`; see `decodings::js_decode`.
fn js_decode_body(hex_values: u32) -> wasm_encoder::Function {
    let (src, len, dst) = (0, 1, 2);
    let mut a = Asm::new(3);
    let end = a.local(I32);
    let out = a.local(I32);
    let b = a.local(I32);
    let nx = a.local(I32);
    let h = a.local(I32);
    let l = a.local(I32);
    let h2 = a.local(I32);
    let l2 = a.local(I32);
    let code = a.local(I32);
    let n = a.local(I32);
    a.get(src).get(len);
    a.i().i32_add();
    a.set(end);
    a.get(dst).set(out);
    a.block().loop_();
    a.get(src).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(src, 0).set(b);
    a.get(b).c(b'\\' as u32);
    a.i().i32_eq();
    a.get(src).c(1);
    a.i().i32_add();
    a.get(end);
    a.i().i32_lt_u().i32_and();
    a.if_(); // depth 1
    a.load8(src, 1).set(nx);
    // `\uHHHH`
    a.get(nx).c(b'u' as u32);
    a.i().i32_eq();
    a.get(src).c(5);
    a.i().i32_add();
    a.get(end);
    a.i().i32_lt_u().i32_and();
    a.if_(); // depth 2
    hex4_at(&mut a, hex_values, src, 2, [h, l, h2, l2]);
    a.if_(); // depth 3
    emit_byte(&mut a, out, |a| unicode_low_byte(a, h, l));
    a.inc(src, 6);
    a.i().br(3);
    a.end().end();
    // `\xHH`
    a.get(nx).c(b'x' as u32);
    a.i().i32_eq();
    a.get(src).c(3);
    a.i().i32_add();
    a.get(end);
    a.i().i32_lt_u().i32_and();
    a.if_(); // depth 2
    hex_at(&mut a, hex_values, src, 2);
    a.set(h);
    hex_at(&mut a, hex_values, src, 3);
    a.set(l);
    a.get(h).get(l);
    a.i().i32_or();
    a.c(16);
    a.i().i32_lt_u();
    a.if_(); // depth 3
    emit_byte(&mut a, out, |a| {
        a.get(h).c(4);
        a.i().i32_shl();
        a.get(l);
        a.i().i32_or();
    });
    a.inc(src, 4);
    a.i().br(3);
    a.end().end();
    // Octal: one to three digits, a third only while the value stays one byte.
    a.get(nx).c(b'0' as u32);
    a.i().i32_sub();
    a.c(8);
    a.i().i32_lt_u();
    a.if_(); // depth 2
    a.get(nx).c(b'0' as u32);
    a.i().i32_sub();
    a.set(code);
    a.set_c(n, 1);
    a.get(src).c(2);
    a.i().i32_add();
    a.get(end);
    a.i().i32_lt_u();
    a.if_(); // depth 3
    a.load8(src, 2).c(b'0' as u32);
    a.i().i32_sub();
    a.tee(h);
    a.c(8);
    a.i().i32_lt_u();
    a.if_(); // depth 4
    a.get(code).c(3);
    a.i().i32_shl();
    a.get(h);
    a.i().i32_or();
    a.set(code);
    a.set_c(n, 2);
    a.get(src).c(3);
    a.i().i32_add();
    a.get(end);
    a.i().i32_lt_u();
    a.get(nx).c(b'3' as u32);
    a.i().i32_le_u().i32_and();
    a.if_(); // depth 5
    a.load8(src, 3).c(b'0' as u32);
    a.i().i32_sub();
    a.tee(h);
    a.c(8);
    a.i().i32_lt_u();
    a.if_(); // depth 6
    a.get(code).c(3);
    a.i().i32_shl();
    a.get(h);
    a.i().i32_or();
    a.set(code);
    a.set_c(n, 3);
    a.end().end().end().end();
    emit_byte(&mut a, out, |a| {
        a.get(code);
    });
    a.get(src).get(n);
    a.i().i32_add();
    a.c(1);
    a.i().i32_add();
    a.set(src);
    a.i().br(2);
    a.end();
    // `\C`: named control characters, anything else itself.
    emit_byte(&mut a, out, |a| {
        a.get(nx);
        for (letter, byte) in [
            (b'a', 0x07u32),
            (b'b', 0x08),
            (b'f', 0x0C),
            (b'n', 0x0A),
            (b'r', 0x0D),
            (b't', 0x09),
            (b'v', 0x0B),
        ] {
            a.set(code);
            a.c(byte).get(code).get(nx).c(u32::from(letter));
            a.i().i32_eq().select();
        }
    });
    a.inc(src, 2);
    a.i().br(1);
    a.end();
    emit_byte(&mut a, out, |a| {
        a.get(b);
    });
    a.inc(src, 1);
    a.i().br(0);
    a.end().end();
    a.get(out).get(dst);
    a.i().i32_sub();
    a.finish()
}

/// `css-decode`; see `decodings::css_decode`.
fn css_decode_body(hex_values: u32) -> wasm_encoder::Function {
    let (src, len, dst) = (0, 1, 2);
    let mut a = Asm::new(3);
    let end = a.local(I32);
    let out = a.local(I32);
    let b = a.local(I32);
    let n = a.local(I32);
    let at = a.local(I32);
    let byte = a.local(I32);
    let wide = a.local(I32);
    a.get(src).get(len);
    a.i().i32_add();
    a.set(end);
    a.get(dst).set(out);
    a.block().loop_();
    a.get(src).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(src, 0).set(b);
    a.get(b).c(b'\\' as u32);
    a.i().i32_ne();
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.get(b);
    });
    a.inc(src, 1);
    a.i().br(1);
    a.end();
    a.inc(src, 1);
    // A backslash at the end disappears.
    a.get(src).get(end);
    a.i().i32_ge_u().br_if(1);
    // Up to six hex digits.
    a.set_c(n, 0);
    a.block().loop_();
    a.get(n).c(6);
    a.i().i32_ge_u().br_if(1);
    a.get(src).get(n);
    a.i().i32_add();
    a.tee(at);
    a.get(end);
    a.i().i32_ge_u().br_if(1);
    hex_at(&mut a, hex_values, at, 0);
    a.c(16);
    a.i().i32_ge_u().br_if(1);
    a.inc(n, 1);
    a.i().br(0);
    a.end().end();
    a.get(n);
    a.i().i32_eqz();
    a.if_();
    // `\` before a newline disappears with it; `\C` is C.
    a.load8(src, 0).set(b);
    a.get(b).c(b'\n' as u32);
    a.i().i32_ne();
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.get(b);
    });
    a.end();
    a.inc(src, 1);
    a.i().br(1);
    a.end();
    // The last two digits (one when there is one), `FFxx` full-width when the code is
    // 16 bits: four digits, or five or six with leading zeros.
    a.get(src).get(n);
    a.i().i32_add();
    a.set(at);
    a.get(n).c(1);
    a.i().i32_eq();
    a.if_();
    hex_at(&mut a, hex_values, src, 0);
    a.set(byte);
    a.else_();
    a.get(at).c(2);
    a.i().i32_sub();
    a.set(at);
    hex_at(&mut a, hex_values, at, 0);
    a.c(4);
    a.i().i32_shl();
    hex_at(&mut a, hex_values, at, 1);
    a.i().i32_or();
    a.set(byte);
    a.end();
    a.get(n).c(4);
    a.i().i32_eq();
    a.get(n).c(5);
    a.i().i32_eq();
    a.load8(src, 0).c(b'0' as u32);
    a.i().i32_eq().i32_and().i32_or();
    a.get(n).c(6);
    a.i().i32_eq();
    a.load8(src, 0).c(b'0' as u32);
    a.i().i32_eq().i32_and();
    a.load8(src, 1).c(b'0' as u32);
    a.i().i32_eq().i32_and().i32_or();
    a.set(wide);
    a.get(wide);
    a.if_();
    // `at` is at the last two digits; the two before them must be `FF`.
    a.get(at).c(2);
    a.i().i32_sub();
    a.set(at);
    hex_at(&mut a, hex_values, at, 0);
    a.c(15);
    a.i().i32_eq();
    hex_at(&mut a, hex_values, at, 1);
    a.c(15);
    a.i().i32_eq().i32_and();
    a.set(wide);
    a.end();
    emit_byte(&mut a, out, |a| {
        a.get(byte);
        a.get(wide);
        a.get(byte).c(1);
        a.i().i32_sub();
        a.c(0x5E);
        a.i().i32_lt_u().i32_and();
        a.c(5);
        a.i().i32_shl().i32_add();
    });
    a.get(src).get(n);
    a.i().i32_add();
    a.set(src);
    // One whitespace after the digits is part of the escape.
    a.get(src).get(end);
    a.i().i32_lt_u();
    a.if_();
    a.load8(src, 0).set(b);
    is_space(&mut a, b);
    a.if_();
    a.inc(src, 1);
    a.end();
    a.end();
    a.i().br(0);
    a.end().end();
    a.get(out).get(dst);
    a.i().i32_sub();
    a.finish()
}

fn normalize_path_body() -> wasm_encoder::Function {
    let (src, len, dst) = (0, 1, 2);
    let mut a = Asm::new(3);
    let end = a.local(I32);
    let out = a.local(I32);
    let base = a.local(I32);
    let segments = a.local(I32);
    let start = a.local(I32);
    let stop = a.local(I32);
    let piece = a.local(I32);
    let scan = a.local(I32);
    a.get(src).get(len);
    a.i().i32_add();
    a.set(end);
    a.get(dst).set(out);
    // A leading `/` stays.
    a.get(len);
    a.if_();
    a.load8(src, 0).c(b'/' as u32);
    a.i().i32_eq();
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.c(b'/' as u32);
    });
    a.end();
    a.end();
    a.get(out).set(base);
    a.get(src).set(start);
    a.block().loop_();
    // stop = next '/' at or after start, or end
    a.get(start).set(stop);
    a.block().loop_();
    a.get(stop).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(stop, 0).c(b'/' as u32);
    a.i().i32_eq().br_if(1);
    a.inc(stop, 1);
    a.i().br(0);
    a.end().end();
    a.get(stop).get(start);
    a.i().i32_sub();
    a.set(piece);
    // "" and "." are skipped; ".." pops; anything else is appended
    a.block();
    a.get(piece);
    a.i().i32_eqz().br_if(0);
    a.get(piece).c(1);
    a.i().i32_eq();
    a.load8(start, 0).c(b'.' as u32);
    a.i().i32_eq().i32_and().br_if(0);
    a.get(piece).c(2);
    a.i().i32_eq();
    a.load8(start, 0).c(b'.' as u32);
    a.i().i32_eq().i32_and();
    a.load8(start, 1).c(b'.' as u32);
    a.i().i32_eq().i32_and();
    a.if_();
    a.get(segments);
    a.if_();
    a.get(segments).c(1);
    a.i().i32_sub();
    a.set(segments);
    // back to the last '/' after base, or to base
    a.get(out).set(scan);
    a.block().loop_();
    a.get(scan).get(base);
    a.i().i32_le_u().br_if(1);
    a.get(scan).c(1);
    a.i().i32_sub();
    a.set(scan);
    a.load8(scan, 0).c(b'/' as u32);
    a.i().i32_eq().br_if(1);
    a.i().br(0);
    a.end().end();
    a.get(scan).set(out);
    a.end();
    a.i().br(1);
    a.end();
    a.get(segments);
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.c(b'/' as u32);
    });
    a.end();
    a.get(out).get(start).get(piece);
    a.i().memory_copy(0, 0);
    a.get(out).get(piece);
    a.i().i32_add();
    a.set(out);
    a.inc(segments, 1);
    a.end();
    a.get(stop).get(end);
    a.i().i32_ge_u().br_if(1);
    a.get(stop).c(1);
    a.i().i32_add();
    a.set(start);
    a.i().br(0);
    a.end().end();
    // The last piece (from `start`) was "", "." or "..": keep a trailing '/'.
    a.get(len);
    a.i().i32_const(0).i32_ne();
    a.get(segments);
    a.i().i32_const(0).i32_ne().i32_and();
    a.if_();
    a.get(piece);
    a.i().i32_eqz();
    a.get(piece).c(1);
    a.i().i32_eq();
    a.load8(start, 0).c(b'.' as u32);
    a.i().i32_eq().i32_and().i32_or();
    a.get(piece).c(2);
    a.i().i32_eq();
    a.load8(start, 0).c(b'.' as u32);
    a.i().i32_eq().i32_and();
    a.load8(start, 1).c(b'.' as u32);
    a.i().i32_eq().i32_and().i32_or();
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.c(b'/' as u32);
    });
    a.end();
    a.end();
    a.get(out).get(dst);
    a.i().i32_sub();
    a.finish()
}

fn html_decode_body(t: &Tables, util: &Util) -> wasm_encoder::Function {
    let (src, len, dst) = (0, 1, 2);
    let mut a = Asm::new(3);
    let end = a.local(I32);
    let out = a.local(I32);
    let b = a.local(I32);
    let rest = a.local(I32);
    let remaining = a.local(I32);
    let digits_start = a.local(I32);
    let max_digits = a.local(I32);
    let code = a.local(I32);
    let n = a.local(I32);
    let d = a.local(I32);
    let radix = a.local(I32);
    let consumed = a.local(I32);
    a.get(src).get(len);
    a.i().i32_add();
    a.set(end);
    a.get(dst).set(out);
    a.block().loop_(); // outer: label 0 = loop, 1 = block
    a.get(src).get(end);
    a.i().i32_ge_u().br_if(1);
    a.load8(src, 0).set(b);
    a.block(); // "emit b as is": br 0 from inside leads here
    a.get(b).c(b'&' as u32);
    a.i().i32_ne().br_if(0);
    a.get(src).c(1);
    a.i().i32_add();
    a.set(rest);
    a.get(end).get(rest);
    a.i().i32_sub();
    a.set(remaining);
    // Named entities.
    for (name, name_len, byte) in &t.entity_names {
        a.get(remaining).c(*name_len);
        a.i().i32_ge_u();
        a.if_();
        a.get(rest).c(*name).c(*name_len);
        a.i().call(util.memeq);
        a.if_();
        emit_byte(&mut a, out, |a| {
            a.c(u32::from(*byte));
        });
        a.get(src).c(1 + name_len);
        a.i().i32_add();
        a.set(src);
        a.i().br(3); // continue the outer loop
        a.end();
        a.end();
    }
    // Numeric entities.
    a.get(remaining);
    a.i().i32_eqz().br_if(0);
    a.load8(rest, 0).c(b'#' as u32);
    a.i().i32_ne().br_if(0);
    a.set_c(digits_start, 1)
        .set_c(max_digits, 7)
        .set_c(radix, 10);
    a.get(remaining).c(2);
    a.i().i32_ge_u();
    a.if_();
    a.load8(rest, 1).c(0x20);
    a.i().i32_or();
    a.c(b'x' as u32);
    a.i().i32_eq();
    a.if_();
    a.set_c(digits_start, 2)
        .set_c(max_digits, 6)
        .set_c(radix, 16);
    a.end();
    a.end();
    a.set_c(code, 0).set_c(n, 0);
    a.block().loop_();
    a.get(n).get(max_digits);
    a.i().i32_ge_u().br_if(1);
    a.get(digits_start).get(n);
    a.i().i32_add();
    a.get(remaining);
    a.i().i32_ge_u().br_if(1);
    a.get(rest).get(digits_start);
    a.i().i32_add();
    a.get(n);
    a.i().i32_add().i32_load8_u(mem(0, 0));
    a.i().i32_load8_u(mem(t.hex_values, 0));
    a.tee(d);
    a.get(radix);
    a.i().i32_ge_u().br_if(1);
    a.get(code).get(radix);
    a.i().i32_mul();
    a.get(d);
    a.i().i32_add();
    a.set(code);
    a.inc(n, 1);
    a.i().br(0);
    a.end().end();
    a.get(n);
    a.i().i32_eqz().br_if(0);
    // consumed = 1 + digits_start + n (+1 for a ';')
    a.get(digits_start).get(n);
    a.i().i32_add();
    a.c(1);
    a.i().i32_add();
    a.set(consumed);
    a.get(digits_start).get(n);
    a.i().i32_add();
    a.get(remaining);
    a.i().i32_lt_u();
    a.if_();
    a.get(rest).get(digits_start);
    a.i().i32_add();
    a.get(n);
    a.i().i32_add().i32_load8_u(mem(0, 0));
    a.c(b';' as u32);
    a.i().i32_eq();
    a.if_();
    a.inc(consumed, 1);
    a.end();
    a.end();
    a.get(code).c(0xFF);
    a.i().i32_le_u();
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.get(code);
    });
    a.get(src).get(consumed);
    a.i().i32_add();
    a.set(src);
    a.i().br(2);
    a.end();
    // Beyond 255: a Unicode scalar value as UTF-8; anything else stays as written.
    a.get(code).c(0x10FFFF);
    a.i().i32_gt_u().br_if(0);
    a.get(code).c(0xD800);
    a.i().i32_sub();
    a.c(0x800);
    a.i().i32_lt_u().br_if(0);
    a.get(code).c(0x800);
    a.i().i32_lt_u();
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.get(code).c(6);
        a.i().i32_shr_u();
        a.c(0xC0);
        a.i().i32_or();
    });
    a.else_();
    a.get(code).c(0x10000);
    a.i().i32_lt_u();
    a.if_();
    emit_byte(&mut a, out, |a| {
        a.get(code).c(12);
        a.i().i32_shr_u();
        a.c(0xE0);
        a.i().i32_or();
    });
    a.else_();
    emit_byte(&mut a, out, |a| {
        a.get(code).c(18);
        a.i().i32_shr_u();
        a.c(0xF0);
        a.i().i32_or();
    });
    emit_byte(&mut a, out, |a| {
        a.get(code).c(12);
        a.i().i32_shr_u();
        a.c(0x3F);
        a.i().i32_and();
        a.c(0x80);
        a.i().i32_or();
    });
    a.end();
    emit_byte(&mut a, out, |a| {
        a.get(code).c(6);
        a.i().i32_shr_u();
        a.c(0x3F);
        a.i().i32_and();
        a.c(0x80);
        a.i().i32_or();
    });
    a.end();
    emit_byte(&mut a, out, |a| {
        a.get(code).c(0x3F);
        a.i().i32_and();
        a.c(0x80);
        a.i().i32_or();
    });
    a.get(src).get(consumed);
    a.i().i32_add();
    a.set(src);
    a.i().br(1);
    a.end(); // end of "emit b as is" block
    emit_byte(&mut a, out, |a| {
        a.get(b);
    });
    a.inc(src, 1);
    a.i().br(0);
    a.end().end();
    a.get(out).get(dst);
    a.i().i32_sub();
    a.finish()
}
