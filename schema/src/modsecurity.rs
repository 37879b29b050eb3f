//! Importing a ModSecurity rule set (the OWASP Core Rule Set) at build time: SecLang files
//! in, edgepack WAF rules out, and a list of every rule that could not be carried over.
//!
//! The rule files are read the way ModSecurity reads them, in order, with one difference:
//! what depends only on configuration is decided here, once. Rules that read nothing but
//! `TX` variables set by configuration (the CRS's paranoia-level gates, its initialization,
//! disabled optional features) are evaluated now: their `setvar`s and `skipAfter`s shape
//! which rules follow, and the rules themselves leave nothing in the bundle. A rule that
//! reads the request becomes an edgepack rule when its variables, operator and
//! transformations have an exact counterpart; otherwise it is listed with the reason, and
//! the build warns. Anomaly scores come from the rule's own `setvar`s, so the policy's
//! `threshold` plays the part of the CRS's blocking evaluation.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::diagnostics as diag;
use crate::policy::{
    Comparison, Count, Decoding, Detector, Matcher, RequestPart, WafCondition, WafRule,
};
use crate::reader::{Ctx, read_bounded};
use crate::seclang::{self, Action, Directive, Variable};
use crate::source::{FileId, Span, Spanned};
use crate::waf_regex::{self, RegexProblem};

/// What a `waf { import "modsecurity" … }` node asks for.
pub(crate) struct ImportRequest {
    /// The directory of rule files (every `*.conf`, in name order) or one file.
    pub path: PathBuf,
    /// `path` as the policy wrote it: what messages show.
    pub written: String,
    /// A setup file read first (`crs-setup.conf`), if any.
    pub setup: Option<PathBuf>,
    pub paranoia: u8,
    /// Largest automaton one pattern may compile to.
    pub budget: u64,
    /// Where the node was written: diagnostics about the import as a whole point here.
    pub span: Span,
}

/// A rule of the imported set that is not in the bundle, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedRule {
    pub id: String,
    pub reason: String,
    pub span: Span,
}

/// What one import left out: the plan lists it for `inspect`, the build warns of it.
#[derive(Debug)]
pub struct WafImport {
    /// Request rules at this paranoia level that are not carried over.
    pub skipped: Vec<SkippedRule>,
    /// Rules that read responses, which edgepack's WAF does not see.
    pub response_rules: usize,
    /// Rules carried over with a difference, and what it is.
    pub approximated: Vec<SkippedRule>,
}

/// The CRS's default anomaly scores by severity, used when a rule's `setvar` names a score
/// the configuration does not set.
const SEVERITY_SCORES: &[(&str, u32)] =
    &[("critical", 5), ("error", 4), ("warning", 3), ("notice", 2)];

/// Paranoia-level variables the import's own `paranoia` decides.
const PARANOIA_VARS: &[&str] = &[
    "paranoia_level",
    "executing_paranoia_level",
    "detection_paranoia_level",
    "blocking_paranoia_level",
];

/// Reads the rule set and returns the rules to add to the WAF.
pub(crate) fn import(cx: &mut Ctx, request: &ImportRequest) -> (Vec<WafRule>, WafImport) {
    let mut files = Vec::new();
    if let Some(setup) = &request.setup {
        files.push(setup.clone());
    }
    match rule_files(&request.path) {
        Ok(found) if found.is_empty() => cx
            .diags
            .push(diag::import_empty(request.span, &request.written)),
        Ok(found) => files.extend(found),
        Err(reason) => cx.diags.push(diag::import_unreadable(
            request.span,
            &request.written,
            &reason,
        )),
    }
    let mut importer = Importer {
        env: HashMap::new(),
        dynamic: HashSet::new(),
        budget: request.budget,
        rules: Vec::new(),
        report: WafImport {
            skipped: Vec::new(),
            response_rules: 0,
            approximated: Vec::new(),
        },
    };
    for (name, value) in [
        ("crs_setup_version", "334".to_string()),
        ("critical_anomaly_score", "5".into()),
        ("error_anomaly_score", "4".into()),
        ("warning_anomaly_score", "3".into()),
        ("notice_anomaly_score", "2".into()),
    ] {
        importer.env.insert(name.into(), value);
    }
    for var in PARANOIA_VARS {
        importer
            .env
            .insert((*var).into(), request.paranoia.to_string());
    }
    for path in files {
        let text = match read_bounded(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(problem) => {
                let reason = match problem {
                    crate::reader::ReadProblem::TooLarge => "it is too large".into(),
                    crate::reader::ReadProblem::Io(reason) => reason,
                };
                let shown = cx.shown_path(&path);
                cx.diags
                    .push(diag::import_unreadable(request.span, &shown, &reason));
                continue;
            }
        };
        let shown = cx.shown_path(&path);
        let file = cx.add_source(&path, shown.clone(), shown, text.clone());
        importer.file(cx, file, &path, &text);
    }
    // One warning per reason, at the import: the rule files are not the user's to edit.
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for skipped in &importer.report.skipped {
        match by_reason.iter_mut().find(|(r, _)| *r == skipped.reason) {
            Some((_, ids)) => ids.push(&skipped.id),
            None => by_reason.push((&skipped.reason, vec![&skipped.id])),
        }
    }
    for (reason, ids) in by_reason {
        cx.diags
            .push(diag::import_rules_skipped(request.span, &ids, reason));
    }
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for approximated in &importer.report.approximated {
        match by_reason
            .iter_mut()
            .find(|(r, _)| *r == approximated.reason)
        {
            Some((_, ids)) => ids.push(&approximated.id),
            None => by_reason.push((&approximated.reason, vec![&approximated.id])),
        }
    }
    for (reason, ids) in by_reason {
        cx.diags
            .push(diag::import_rules_approximated(request.span, &ids, reason));
    }
    if importer.report.response_rules > 0 {
        cx.diags.push(diag::import_response_rules(
            request.span,
            importer.report.response_rules,
        ));
    }
    (importer.rules, importer.report)
}

fn rule_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| crate::reader::io_reason(&e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| crate::reader::io_reason(&e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    Ok(files)
}

struct Importer {
    /// `TX` variables set by configuration, by lower-cased name.
    env: HashMap<String, String>,
    /// `TX` variables that rules reading the request set: their values are only known per
    /// request, so rules reading them are not decided at build time.
    dynamic: HashSet<String>,
    budget: u64,
    rules: Vec<WafRule>,
    report: WafImport,
}

/// One `SecRule` (or `SecAction`) of a chain, with its parts parsed.
struct Link<'d> {
    directive: &'d Directive,
    variables: Vec<Variable>,
    operator: seclang::Operator,
    actions: Vec<Action>,
}

impl Link<'_> {
    fn action(&self, name: &str) -> Option<&str> {
        self.actions
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.value.as_deref())
    }

    fn has(&self, name: &str) -> bool {
        self.actions.iter().any(|a| a.name == name)
    }

    /// Where the rule's `id:` action is written (short, unlike a CRS pattern's line): where
    /// warnings about the rule point.
    fn id_span(&self, file: FileId, text: &str) -> Span {
        let range = self.directive.span.clone();
        let written = text.get(range.clone()).unwrap_or("");
        match written.find("id:") {
            Some(at) => {
                let digits = written[at + 3..]
                    .bytes()
                    .take_while(u8::is_ascii_digit)
                    .count();
                Span::new(file, range.start + at, range.start + at + 3 + digits)
            }
            None => Span::new(file, range.start, range.start + self.directive.name.len()),
        }
    }

    fn arg_span(&self, file: FileId, index: usize) -> Span {
        let range = self
            .directive
            .args
            .get(index)
            .map_or(self.directive.span.clone(), |a| a.span.clone());
        Span::new(file, range.start, range.end)
    }
}

/// Whether a statically evaluated condition holds, or cannot be known at build time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Static {
    True,
    False,
    Unknown,
}

impl Importer {
    fn file(&mut self, cx: &mut Ctx, file: FileId, path: &Path, text: &str) {
        let directives = seclang::directives(text);
        let response_file = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("RESPONSE-"));
        let mut skip_until: Option<String> = None;
        let mut skip_count = 0usize;
        let mut i = 0;
        while i < directives.len() {
            let d = &directives[i];
            i += 1;
            if d.name.eq_ignore_ascii_case("SecMarker") {
                let marker = d.args.first().map(|a| a.text.as_str()).unwrap_or("");
                if skip_until.as_deref() == Some(marker) {
                    skip_until = None;
                }
                continue;
            }
            let is_rule = d.name.eq_ignore_ascii_case("SecRule");
            if !is_rule && !d.name.eq_ignore_ascii_case("SecAction") {
                continue;
            }
            // A rule and the rules chained to it.
            let mut chain = vec![link(d, is_rule)];
            while chain.last().is_some_and(|l| l.has("chain")) && i < directives.len() {
                let next = &directives[i];
                if !next.name.eq_ignore_ascii_case("SecRule") {
                    break;
                }
                chain.push(link(next, true));
                i += 1;
            }
            if skip_until.is_some() {
                continue;
            }
            if skip_count > 0 {
                skip_count -= 1;
                continue;
            }
            let head = &chain[0];
            let phase = head.action("phase").unwrap_or("2");
            if response_file || matches!(phase, "3" | "4" | "response") {
                if is_detection(&chain) {
                    self.report.response_rules += 1;
                }
                continue;
            }
            if matches!(phase, "5" | "logging") {
                continue;
            }
            match self.decide(&chain) {
                Static::True => {
                    self.apply_setvars(&chain);
                    if let Some(marker) = head.action("skipafter") {
                        skip_until = Some(marker.to_string());
                    }
                    if let Some(n) = head.action("skip").and_then(|n| n.parse().ok()) {
                        skip_count = n;
                    }
                    if is_detection(&chain) || head.has("deny") || head.has("drop") {
                        let id = head.action("id").unwrap_or("?").to_string();
                        self.report.skipped.push(SkippedRule {
                            id,
                            reason: "with this configuration it would refuse every request".into(),
                            span: head.id_span(file, text),
                        });
                    }
                }
                // Never holds with this configuration: nothing to carry over.
                Static::False => {}
                Static::Unknown => self.request_rule(cx, file, path, text, &chain),
            }
        }
    }

    /// Decides a chain from configuration alone, when every link can be.
    fn decide(&self, chain: &[Link<'_>]) -> Static {
        let mut result = Static::True;
        for l in chain {
            match self.decide_link(l) {
                Static::False => return Static::False,
                Static::Unknown => result = Static::Unknown,
                Static::True => {}
            }
        }
        result
    }

    fn decide_link(&self, l: &Link<'_>) -> Static {
        if !l.directive.name.eq_ignore_ascii_case("SecRule") {
            return Static::True;
        }
        let mut values = Vec::new();
        for v in &l.variables {
            if v.name != "TX" || v.exclude || v.selector_is_regex {
                return Static::Unknown;
            }
            let Some(name) = v.selector.as_ref().map(|s| s.to_ascii_lowercase()) else {
                return Static::Unknown;
            };
            if self.dynamic.contains(&name) {
                return Static::Unknown;
            }
            let value = self.env.get(&name);
            if v.count {
                values.push(usize::from(value.is_some()).to_string());
            } else if let Some(value) = value {
                values.push(value.clone());
            }
        }
        let Some(argument) = self.expand(&l.operator.argument) else {
            return Static::Unknown;
        };
        let mut matched = false;
        for value in &values {
            let Some(hit) = evaluate(&l.operator.name, &argument, value) else {
                return Static::Unknown;
            };
            if hit != l.operator.negated {
                matched = true;
            }
        }
        if matched { Static::True } else { Static::False }
    }

    /// Expands `%{tx.name}` macros from configuration; `None` if one is not known now.
    fn expand(&self, text: &str) -> Option<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("%{") {
            out.push_str(&rest[..at]);
            let end = rest[at..].find('}')? + at;
            let name = rest[at + 2..end].to_ascii_lowercase();
            let name = name.strip_prefix("tx.")?;
            if self.dynamic.contains(name) {
                return None;
            }
            out.push_str(self.env.get(name)?);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    fn apply_setvars(&mut self, chain: &[Link<'_>]) {
        for l in chain {
            for a in l.actions.iter().filter(|a| a.name == "setvar") {
                let Some(spec) = a.value.as_deref() else {
                    continue;
                };
                self.setvar(spec);
            }
        }
    }

    fn setvar(&mut self, spec: &str) {
        let (deleted, spec) = match spec.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, spec),
        };
        let (name, value) = spec.split_once('=').unwrap_or((spec, "1"));
        let name = name.trim().to_ascii_lowercase();
        let Some(name) = name.strip_prefix("tx.").map(str::to_string) else {
            return;
        };
        if PARANOIA_VARS.contains(&name.as_str()) {
            return;
        }
        if deleted {
            self.env.remove(&name);
            return;
        }
        let (op, value) = match value.chars().next() {
            Some(c @ ('+' | '-')) => (Some(c), &value[1..]),
            _ => (None, value),
        };
        let Some(value) = self.expand(value) else {
            self.dynamic.insert(name);
            return;
        };
        let value = match op {
            None => value,
            Some(op) => {
                let current: i64 = self.env.get(&name).map_or(0, |v| number(v));
                let delta = number(&value);
                if op == '+' {
                    current.saturating_add(delta).to_string()
                } else {
                    current.saturating_sub(delta).to_string()
                }
            }
        };
        self.env.insert(name, value);
    }

    /// A rule that reads the request: carried over, or listed with the reason.
    fn request_rule(
        &mut self,
        cx: &mut Ctx,
        file: FileId,
        path: &Path,
        text: &str,
        chain: &[Link<'_>],
    ) {
        let head = &chain[0];
        let id = head.action("id").unwrap_or("?").to_string();
        // What a rule reading the request sets is known only per request from now on.
        for l in chain {
            for a in l.actions.iter().filter(|a| a.name == "setvar") {
                if let Some(name) = a
                    .value
                    .as_deref()
                    .map(|v| v.trim_start_matches('!'))
                    .and_then(|v| v.split('=').next())
                    .and_then(|v| {
                        v.trim()
                            .to_ascii_lowercase()
                            .strip_prefix("tx.")
                            .map(str::to_string)
                    })
                {
                    self.dynamic.insert(name);
                }
            }
        }
        if !is_detection(chain) {
            // Bookkeeping (per-request `TX` values, logging, engine settings, the CRS's own
            // score sums): nothing to detect.
            return;
        }
        // A link reading what the link before it matched or stored needs that link to read
        // the request: after one decided at build time it would read configuration values.
        let after_decided = chain.windows(2).any(|pair| {
            reads_previous_link(&pair[1]) && self.decide_link(&pair[0]) == Static::True
        });
        if after_decided {
            self.report.skipped.push(SkippedRule {
                id,
                reason: "a link reads what a link decided by configuration matched (not \
                         supported yet)"
                    .into(),
                span: head.id_span(file, text),
            });
            return;
        }
        // Links decided true at build time drop out; what remains must be one condition.
        let live: Vec<&Link<'_>> = chain
            .iter()
            .filter(|l| self.decide_link(l) != Static::True)
            .collect();
        let score = self.score(chain);
        let conditions = self.conditions(cx, file, path, &live);
        match conditions {
            Ok(mut conditions) if !conditions.is_empty() => {
                let own = conditions.remove(0);
                let span = Span::new(file, head.directive.span.start, head.directive.span.end);
                let multi_match = live.iter().any(|l| {
                    l.actions
                        .iter()
                        .any(|a| a.name.eq_ignore_ascii_case("multiMatch"))
                });
                // The rule's own condition matches at every step; a chain's further links
                // (none in the CRS carries `multiMatch`) after all of their decodings.
                let every_step =
                    multi_match && !own.decode.is_empty() && !own.negated && own.count.is_none();
                let decodes = (!own.decode.is_empty() && !every_step)
                    || conditions.iter().any(|c| !c.decode.is_empty());
                if multi_match && decodes {
                    self.report.approximated.push(SkippedRule {
                        id: id.clone(),
                        reason: "`multiMatch`: the value is matched after all of its \
                                 transformations, not also at each step between"
                            .to_string(),
                        span: head.id_span(file, text),
                    });
                }
                self.rules.push(WafRule {
                    id: Spanned::new(id, span),
                    score: Spanned::new(score, span),
                    parts: own.parts,
                    decode: own.decode,
                    matchers: own.matchers,
                    negated: own.negated,
                    count: own.count,
                    and: conditions,
                    every_step,
                    span,
                });
            }
            Ok(_) => {}
            Err(reason) => self.report.skipped.push(SkippedRule {
                id,
                reason,
                span: head.id_span(file, text),
            }),
        }
    }

    /// The anomaly score a rule adds: its `setvar`s on `…anomaly_score…` variables.
    fn score(&self, chain: &[Link<'_>]) -> u32 {
        let mut score = 0u32;
        for l in chain {
            for a in l.actions.iter().filter(|a| a.name == "setvar") {
                let Some((name, value)) = a.value.as_deref().and_then(|v| v.split_once("=+"))
                else {
                    continue;
                };
                if !name.to_ascii_lowercase().contains("anomaly_score") {
                    continue;
                }
                let points = self.expand(value).map_or(0, |v| number(&v));
                score = score.saturating_add(u32::try_from(points.max(0)).unwrap_or(0));
            }
        }
        if score == 0 {
            // A detection rule without a known score counts by its severity.
            let severity = chain[0]
                .action("severity")
                .unwrap_or("")
                .to_ascii_lowercase();
            score = SEVERITY_SCORES
                .iter()
                .find(|(name, _)| *name == severity)
                .map_or(0, |(_, s)| *s);
        }
        score
    }

    /// The links of a chain that read the request, as conditions that must all hold. A link
    /// reading what the link before it matched (`MATCHED_VARS`) or stored (`TX:/^prefix/`)
    /// folds into that link's condition: one value must pass both.
    fn conditions(
        &self,
        cx: &mut Ctx,
        file: FileId,
        path: &Path,
        live: &[&Link<'_>],
    ) -> Result<Vec<WafCondition>, String> {
        let mut conditions: Vec<WafCondition> = Vec::new();
        for (k, l) in live.iter().enumerate() {
            let matched = l.variables.iter().any(|v| v.name == "MATCHED_VARS");
            if reads_previous_link(l) {
                let (Some(previous), Some(setter)) = (conditions.last_mut(), k.checked_sub(1))
                else {
                    return Err(if matched {
                        "it reads `MATCHED_VARS` with no link before it".into()
                    } else {
                        "`TX:/regex/` over values other rules stored (not supported yet)".into()
                    });
                };
                if matched {
                    self.on_matched_values(cx, file, path, previous, l)?;
                } else {
                    self.on_stored_values(file, previous, live[setter], l)?;
                }
            } else {
                conditions.push(self.condition(cx, file, path, l)?);
            }
        }
        Ok(conditions)
    }

    /// Folds a link reading `MATCHED_VARS` (the values the previous link matched, as that
    /// link transformed them) into the previous link's condition: one value must match both
    /// operators. Exact when both match a finite set of strings (phrase lists, alternations
    /// of words), as the CRS's such links do.
    fn on_matched_values(
        &self,
        cx: &mut Ctx,
        file: FileId,
        path: &Path,
        previous: &mut WafCondition,
        l: &Link<'_>,
    ) -> Result<(), String> {
        if l.variables.len() != 1 || l.variables[0].selector.is_some() {
            return Err("a `MATCHED_VARS` link with other variables (not supported yet)".into());
        }
        if l.operator.negated || previous.negated || previous.count.is_some() {
            return Err(
                "a `MATCHED_VARS` link after or with a negated or counting operator \
                        (not supported yet)"
                    .into(),
            );
        }
        let (decode, matchers) = self.matching(cx, file, path, l)?;
        // Its own transformations apply on top of the previous link's: only a repeated
        // lowercase changes nothing.
        let lowered = previous.decode.last().map(|d| &d.value) == Some(&Decoding::Lowercase);
        if !(decode.is_empty() || (decode == [Decoding::Lowercase] && lowered)) {
            return Err(
                "a `MATCHED_VARS` link with transformations of its own (not supported yet)".into(),
            );
        }
        let finite = "a `MATCHED_VARS` link where an operator matches more than a list of \
                      strings (not supported yet)";
        let first = finite_strings(&previous.matchers).ok_or(finite)?;
        let second = finite_strings(&matchers).ok_or(finite)?;
        let patterns = both_in_one_value(&first, &second)
            .ok_or("a `MATCHED_VARS` link joining too many strings")?;
        // Each way round fitted on its own: a long phrase list followed by anything fits an
        // automaton (or a sequence) that both orders together would not.
        let mut joined = Vec::new();
        for pattern in patterns {
            joined.extend(
                fitted(pattern, self.budget, l.arg_span(file, 1))
                    .map_err(|e| format!("with its `MATCHED_VARS` link joined in, {e}"))?,
            );
        }
        previous.matchers = joined;
        Ok(())
    }

    /// Folds a link reading `TX:/^prefix/` into the link before it, which stored a variable
    /// for each value it matched (`capture`, a pattern capturing the whole value, and
    /// `setvar:'tx.prefix%{tx.0}=…%{tx.0}…'`): the condition becomes "a value whose stored
    /// text passes this link's `@within`", written as the list of such values.
    fn on_stored_values(
        &self,
        file: FileId,
        previous: &mut WafCondition,
        setter: &Link<'_>,
        l: &Link<'_>,
    ) -> Result<(), String> {
        let unsupported = || {
            "a `TX:/regex/` link over values an earlier link stored (only `@within` of \
                whole captured values is supported)"
                .to_string()
        };
        let [stored] = l.variables.as_slice() else {
            return Err(unsupported());
        };
        let prefix = stored
            .selector
            .as_deref()
            .filter(|_| stored.selector_is_regex && !stored.exclude && !stored.count)
            .and_then(|s| s.strip_prefix('^'))
            .map(str::to_ascii_lowercase)
            .filter(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .ok_or_else(unsupported)?;
        let captures_whole = setter.has("capture")
            && setter.operator.name.eq_ignore_ascii_case("rx")
            && !setter.operator.negated
            && setter.operator.argument == "^.*$";
        let template = setter
            .actions
            .iter()
            .filter(|a| a.name == "setvar")
            .filter_map(|a| a.value.as_deref()?.split_once('='))
            .find(|(name, _)| name.trim().to_ascii_lowercase() == format!("tx.{prefix}%{{tx.0}}"))
            .and_then(|(_, value)| {
                // Macro names are case-insensitive: find `%{tx.0}` in any case.
                let at = value.to_ascii_lowercase().find("%{tx.0}")?;
                let (before, after) = (&value[..at], &value[at + "%{tx.0}".len()..]);
                (!before.contains("%{") && !after.contains("%{")).then_some((before, after))
            });
        let within = l.operator.name.eq_ignore_ascii_case("within") && !l.operator.negated;
        let (Some((before, after)), true, true) = (template, captures_whole, within) else {
            return Err(unsupported());
        };
        if previous.negated || !decodings(&l.actions)?.is_empty() {
            return Err(unsupported());
        }
        let list = self
            .expand(&l.operator.argument)
            .ok_or("its operator's argument depends on the request")?;
        let values = stored_values_within(&list, before, after);
        if values.is_empty() {
            return Err(format!("no value passes `@within {list}`"));
        }
        let alternation: Vec<String> = values.iter().map(|v| escape(v)).collect();
        let pattern = format!(r"\A(?:{})\z", alternation.join("|"));
        previous.matchers = fitted(pattern, self.budget, l.arg_span(file, 1))?;
        Ok(())
    }

    /// One link of a chain as a condition on the request.
    fn condition(
        &self,
        cx: &mut Ctx,
        file: FileId,
        path: &Path,
        l: &Link<'_>,
    ) -> Result<WafCondition, String> {
        let vars_span = l.arg_span(file, 0);
        let actions_span = l.arg_span(file, 2);
        let counting = l.variables.iter().any(|v| v.count && !v.exclude);
        let spanned_parts = |parts: Vec<RequestPart>| {
            parts
                .into_iter()
                .map(|p| Spanned::new(p, vars_span))
                .collect::<Vec<_>>()
        };
        if counting {
            let argument = self
                .expand(&l.operator.argument)
                .ok_or("its operator's argument depends on the request")?;
            let name = l.operator.name.to_ascii_lowercase();
            // `&VAR @op N`: the number of values, compared with a number.
            let parts = parts(&l.variables, true)?;
            let op = match (name.as_str(), l.operator.negated) {
                ("eq", false) | ("ne", true) => Comparison::Eq,
                ("eq", true) | ("ne", false) => Comparison::Ne,
                ("lt", false) | ("ge", true) => Comparison::Lt,
                ("le", false) | ("gt", true) => Comparison::Le,
                ("gt", false) | ("le", true) => Comparison::Gt,
                ("ge", false) | ("lt", true) => Comparison::Ge,
                (other, _) => {
                    return Err(format!(
                        "a count compared by `@{other}` is not supported yet"
                    ));
                }
            };
            let value = argument
                .trim()
                .parse()
                .map_err(|_| format!("a count compared with `{argument}`"))?;
            return Ok(WafCondition {
                parts: spanned_parts(parts),
                decode: Vec::new(),
                matchers: Vec::new(),
                negated: false,
                count: Some(Count { op, value }),
            });
        }
        let parts = parts(&l.variables, false)?;
        let (decode, matchers) = self.matching(cx, file, path, l)?;
        Ok(WafCondition {
            parts: spanned_parts(parts),
            decode: decode
                .into_iter()
                .map(|d| Spanned::new(d, actions_span))
                .collect(),
            matchers,
            negated: l.operator.negated,
            count: None,
        })
    }

    /// A link's transformations and its operator as matchers on the transformed value.
    fn matching(
        &self,
        cx: &mut Ctx,
        file: FileId,
        path: &Path,
        l: &Link<'_>,
    ) -> Result<(Vec<Decoding>, Vec<Matcher>), String> {
        let op_span = l.arg_span(file, 1);
        let argument = self
            .expand(&l.operator.argument)
            .ok_or("its operator's argument depends on the request")?;
        let name = l.operator.name.to_ascii_lowercase();
        let mut decode = decodings(&l.actions)?;
        let matchers = match name.as_str() {
            "rx" => regex(&argument, self.budget, op_span)?,
            "pm" | "pmf" | "pmfromfile" => {
                let words: Vec<String> = if name == "pm" {
                    argument.split_whitespace().map(str::to_string).collect()
                } else {
                    let mut words = Vec::new();
                    for data in argument.split_whitespace() {
                        let data_path = path.parent().unwrap_or(Path::new(".")).join(data);
                        words.extend(read_phrases(cx, &data_path)?);
                    }
                    words
                };
                // `@pm` ignores case: match the lower-cased value against lower-cased words.
                if decode.last() != Some(&Decoding::Lowercase) {
                    decode.push(Decoding::Lowercase);
                }
                let mut words: Vec<String> =
                    words.into_iter().map(|w| w.to_ascii_lowercase()).collect();
                words.sort();
                words.dedup();
                if words.is_empty() {
                    return Err("its phrase list is empty".into());
                }
                words
                    .into_iter()
                    .map(|w| Matcher::Literal(Spanned::new(w, op_span)))
                    .collect()
            }
            "contains" if !argument.is_empty() => {
                vec![Matcher::Literal(Spanned::new(argument, op_span))]
            }
            "containsword" => regex(&format!(r"\b{}\b", escape(&argument)), self.budget, op_span)?,
            "beginswith" => regex(&format!("^{}", escape(&argument)), self.budget, op_span)?,
            "endswith" => regex(&format!("{}$", escape(&argument)), self.budget, op_span)?,
            "streq" => regex(&format!("^{}$", escape(&argument)), self.budget, op_span)?,
            "within" if argument.len() <= 256 => {
                let mut pieces: Vec<String> = Vec::new();
                for start in 0..argument.len() {
                    for end in start + 1..=argument.len() {
                        if let Some(piece) = argument.get(start..end) {
                            pieces.push(escape(piece));
                        }
                    }
                }
                pieces.sort();
                pieces.dedup();
                regex(&format!("^(?:{})$", pieces.join("|")), self.budget, op_span)?
            }
            // A byte outside the allowed ranges (`1-255`, `32-126,9,10`).
            "validatebyterange" => {
                let mut allowed = String::new();
                for range in argument.split([',', ' ']).filter(|r| !r.trim().is_empty()) {
                    let (low, high) = range.trim().split_once('-').unwrap_or((range, range));
                    let byte = |b: &str| b.trim().parse::<u8>().ok();
                    let (Some(low), Some(high)) = (byte(low), byte(high)) else {
                        return Err(format!("a byte range `{range}` that is not one"));
                    };
                    allowed.push_str(&format!("\\x{low:02x}-\\x{high:02x}"));
                }
                regex(&format!("(?-u:[^{allowed}])"), self.budget, op_span)?
            }
            // A `%` not followed by two hex digits.
            "validateurlencoding" => regex(
                "%(?:[^0-9A-Fa-f]|[0-9A-Fa-f][^0-9A-Fa-f]|[0-9A-Fa-f]?\\z)",
                self.budget,
                op_span,
            )?,
            "detectsqli" => vec![Matcher::Detect(Spanned::new(Detector::Sqli, op_span))],
            "detectxss" => vec![Matcher::Detect(Spanned::new(Detector::Xss, op_span))],
            other => {
                return Err(format!("operator `@{other}` is not supported yet"));
            }
        };
        Ok((decode, matchers))
    }
}

fn link(d: &Directive, is_rule: bool) -> Link<'_> {
    let text = |i: usize| d.args.get(i).map_or("", |a| a.text.as_str());
    if is_rule {
        Link {
            directive: d,
            variables: seclang::variables(text(0)),
            operator: seclang::operator(text(1)),
            actions: seclang::actions(text(2)),
        }
    } else {
        Link {
            directive: d,
            variables: Vec::new(),
            operator: seclang::operator("@unconditionalMatch"),
            actions: seclang::actions(text(0)),
        }
    }
}

/// Whether a link reads what the link before it matched (`MATCHED_VARS`) or stored per
/// value (`TX:/regex/`).
fn reads_previous_link(l: &Link<'_>) -> bool {
    l.variables
        .iter()
        .any(|v| v.name == "MATCHED_VARS" || (v.name == "TX" && v.selector_is_regex))
}

/// A rule that scores the request: adds points to an anomaly score (not another score,
/// as the CRS's sums of per-level scores do).
fn is_detection(chain: &[Link<'_>]) -> bool {
    chain.iter().any(|l| {
        l.actions.iter().any(|a| {
            a.name == "setvar"
                && a.value.as_deref().is_some_and(|v| {
                    let v = v.to_ascii_lowercase();
                    v.split_once("=+").is_some_and(|(name, points)| {
                        name.contains("anomaly_score") && !points.contains("anomaly_score_pl")
                    })
                })
        })
    })
}

fn number(text: &str) -> i64 {
    text.trim().parse().unwrap_or(0)
}

/// Evaluates an operator on a configuration value; `None` for operators that need the
/// request or are not known here.
fn evaluate(operator: &str, argument: &str, value: &str) -> Option<bool> {
    Some(match operator.to_ascii_lowercase().as_str() {
        "eq" => number(value) == number(argument),
        "ge" => number(value) >= number(argument),
        "gt" => number(value) > number(argument),
        "le" => number(value) <= number(argument),
        "lt" => number(value) < number(argument),
        "streq" => value == argument,
        "contains" => value.contains(argument),
        "beginswith" => value.starts_with(argument),
        "endswith" => value.ends_with(argument),
        "within" => argument.contains(value),
        "unconditionalmatch" => true,
        "rx" => regex_automata::meta::Regex::new(argument)
            .ok()?
            .is_match(value),
        _ => return None,
    })
}

/// The request parts a target list reads, its exclusions (`!REQUEST_COOKIES:/__utm/`)
/// applied.
fn parts(variables: &[Variable], counting: bool) -> Result<Vec<RequestPart>, String> {
    // Left-out members per list: (exact names, names containing).
    let mut except: HashMap<&str, (Vec<String>, Vec<String>)> = HashMap::new();
    for v in variables.iter().filter(|v| v.exclude) {
        let list = match v.name.as_str() {
            "REQUEST_COOKIES" => "cookies",
            "REQUEST_HEADERS" => "headers",
            "ARGS" => "args",
            // XML, which edgepack does not parse, has nothing to leave out.
            "XML" => continue,
            other => return Err(format!("the exclusion `!{other}` is not supported yet")),
        };
        let Some(selector) = v.selector.clone() else {
            return Err(format!("the exclusion `!{}` leaves nothing", v.name));
        };
        let entry = except.entry(list).or_default();
        let literal_regex = v.selector_is_regex
            && !selector.is_empty()
            && selector
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        match (v.selector_is_regex, list) {
            (false, "headers") => entry.0.push(selector.to_ascii_lowercase()),
            (false, _) => entry.0.push(selector),
            (true, _) if literal_regex => entry.1.push(selector),
            (true, _) => {
                return Err(format!(
                    "the exclusion `!{}:/{selector}/` selects by a regex (not supported yet)",
                    v.name
                ));
            }
        }
    }
    let excluded = |list: &str, part: RequestPart| match except.get(list) {
        Some((exact, containing)) => {
            RequestPart::Except(Box::new(part), exact.clone(), containing.clone())
        }
        None => part,
    };
    let mut out = Vec::new();
    for v in variables.iter().filter(|v| !v.exclude) {
        if v.count != counting {
            return Err("its variables mix counts and values".into());
        }
        let selector = v.selector.as_deref().filter(|_| !v.selector_is_regex);
        if v.selector_is_regex {
            return Err(format!(
                "`{}` selects members by a regex (not supported yet)",
                v.name
            ));
        }
        let found: Vec<RequestPart> = match (v.name.as_str(), selector) {
            ("ARGS", None) => vec![excluded("args", RequestPart::Args)],
            ("ARGS", Some(name)) => vec![RequestPart::Arg(name.to_string())],
            ("ARGS_NAMES", None) => vec![RequestPart::ArgNames],
            ("REQUEST_COOKIES", None) => vec![excluded("cookies", RequestPart::Cookies)],
            ("REQUEST_COOKIES", Some(name)) => vec![RequestPart::Cookie(name.to_string())],
            ("REQUEST_COOKIES_NAMES", None) => vec![RequestPart::CookieNames],
            ("REQUEST_HEADERS", None) => vec![excluded("headers", RequestPart::Headers)],
            ("REQUEST_HEADERS", Some(name)) => {
                vec![RequestPart::Header(name.to_ascii_lowercase())]
            }
            ("REQUEST_HEADERS_NAMES", None) => vec![RequestPart::HeaderNames],
            ("REQUEST_FILENAME", None) => vec![RequestPart::Path],
            // As received, in origin form (edgepack sees no absolute-form targets).
            ("REQUEST_URI", None) | ("REQUEST_URI_RAW", None) => vec![RequestPart::Uri],
            ("ARGS_GET", None) => vec![RequestPart::QueryArgs],
            ("REQUEST_METHOD", None) => vec![RequestPart::Method],
            ("REQUEST_PROTOCOL", None) => vec![RequestPart::Protocol],
            ("REQUEST_LINE", None) => vec![RequestPart::RequestLine],
            ("ARGS_GET_NAMES", None) => vec![RequestPart::QueryArgNames],
            ("QUERY_STRING", None) => vec![RequestPart::Query],
            ("REQUEST_BODY", None) => vec![RequestPart::Body],
            ("FILES", None) => vec![RequestPart::Files],
            ("FILES_NAMES", None) => vec![RequestPart::FileFields],
            ("MULTIPART_PART_HEADERS", None) => vec![RequestPart::PartHeaders],
            ("MULTIPART_PART_HEADERS", Some(name)) => {
                vec![RequestPart::PartHeader(name.to_string())]
            }
            // Parsed only for XML bodies, which edgepack does not parse: empty for every
            // request edgepack sees, as in ModSecurity without that parser.
            ("XML", _) => Vec::new(),
            (name, Some(sel)) => {
                return Err(format!("`{name}:{sel}` is not supported yet"));
            }
            (name, None) => return Err(format!("variable `{name}` is not supported yet")),
        };
        for p in found {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    if out.is_empty() {
        return Err("it reads only XML data, which edgepack does not parse".into());
    }
    Ok(out)
}

/// The decodings a rule's `t:` actions ask for, in order (`t:none` starts over).
fn decodings(actions: &[Action]) -> Result<Vec<Decoding>, String> {
    let mut out = Vec::new();
    let names: Vec<String> = actions
        .iter()
        .filter(|a| a.name == "t")
        .map(|a| a.value.as_deref().unwrap_or("").to_string())
        .collect();
    let mut i = 0;
    while i < names.len() {
        let name = &names[i];
        i += 1;
        let decoding = match name.to_ascii_lowercase().as_str() {
            "none" => {
                out.clear();
                continue;
            }
            // `utf8toUnicode` writes `%uHHHH` forms that only `urlDecodeUni` reads back:
            // the pair is one decoding, which never lengthens a value.
            "utf8tounicode"
                if names
                    .get(i)
                    .is_some_and(|n| n.eq_ignore_ascii_case("urlDecodeUni")) =>
            {
                i += 1;
                Decoding::Utf8UrlDecodeUni
            }
            "urldecodeuni" => Decoding::UrlDecodeUni,
            "jsdecode" => Decoding::JsDecode,
            "cssdecode" => Decoding::CssDecode,
            "cmdline" => Decoding::CmdLine,
            "removewhitespace" => Decoding::RemoveWhitespace,
            "normalizepathwin" => Decoding::NormalizePathWin,
            "replacecomments" => Decoding::ReplaceComments,
            "base64decode" => Decoding::Base64Decode,
            "lowercase" => Decoding::Lowercase,
            "urldecode" => Decoding::UrlDecode,
            "htmlentitydecode" => Decoding::HtmlEntityDecode,
            "compresswhitespace" => Decoding::CompressWhitespace,
            "removenulls" => Decoding::RemoveNulls,
            "normalizepath" | "normalisepath" => Decoding::NormalizePath,
            _ => return Err(format!("transformation `t:{name}` is not supported yet")),
        };
        out.push(decoding);
    }
    Ok(out)
}

/// Reads a `@pmFromFile` phrase file: one phrase per line, `#` comments.
fn read_phrases(cx: &mut Ctx, path: &Path) -> Result<Vec<String>, String> {
    let bytes = read_bounded(path).map_err(|e| match e {
        crate::reader::ReadProblem::TooLarge => format!("{} is too large", path.display()),
        crate::reader::ReadProblem::Io(reason) => format!("{}: {reason}", path.display()),
    })?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let shown = cx.shown_path(path);
    if !cx.has_source(path) {
        cx.add_source(path, shown.clone(), shown, text.clone());
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// `text` as a regex matching it literally.
fn escape(text: &str) -> String {
    regex_syntax::escape(text)
}

/// A ModSecurity (PCRE) pattern as edgepack WAF patterns, checked against the budget.
/// ModSecurity compiles `@rx` with dot-all and multi-line set, so the translation does too;
/// what PCRE reads as literal characters (a `{` that starts no repetition, `\<`, `\>`) is
/// written so Rust reads it the same. A pattern whose automaton does not fit is split at
/// its largest alternation into patterns that each fit, any of which matching (see
/// [`split_to_fit`]).
fn regex(pattern: &str, budget: u64, span: Span) -> Result<Vec<Matcher>, String> {
    let translated = negative_lookbehinds(&pcre_literals(pattern));
    fitted(format!("(?sm){translated}"), budget, span)
}

/// PCRE's negative look-behind over a finite set of strings, `(?<!&amp|&apos);`, where it
/// opens a top-level alternative (CRS 920120), rewritten without look-around: what it
/// asserts is that the text before the position does not end with one of the strings, and
/// since such an alternative may match from any offset, the rewrite may consume that text.
/// Read backwards from the position, the strings form a trie: the text does not end with
/// one exactly when, along the trie's path it spells, no node ends a string and the path
/// leaves the trie (the byte before is none of the node's children) or the text starts.
/// So each node off the strings' ends gives an alternative, `(?:\A|[^children])` then the
/// node's path. Look-behinds elsewhere, over sets that are not finite, or under case
/// folding are left as they are (and reported as look-around the automata cannot run).
fn negative_lookbehinds(translated: &str) -> String {
    if translated.contains("(?i") {
        return translated.to_string();
    }
    let bytes = translated.as_bytes();
    let mut out = String::with_capacity(translated.len());
    let (mut copied, mut i, mut depth) = (0, 0, 0usize);
    let mut branch_start = true;
    while i < bytes.len() {
        if depth == 0 && branch_start && bytes[i..].starts_with(b"(?<!") {
            let close = group_end(bytes, i);
            if let Some(rewritten) = close
                .and_then(|close| pattern_strings(&translated[i + 4..close]))
                .map(|strings| not_ending_with(&strings))
            {
                out.push_str(&translated[copied..i]);
                out.push_str(&rewritten);
                i = close.unwrap_or(i) + 1;
                copied = i;
                branch_start = false;
                continue;
            }
        }
        branch_start = false;
        match bytes[i] {
            b'\\' => i += 1,
            b'[' => i = class_end(bytes, i),
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b'|' if depth == 0 => branch_start = true,
            _ => {}
        }
        i += 1;
    }
    out.push_str(&translated[copied..]);
    out
}

/// The index of the `]` closing the class opened at `open` (in translated syntax, where a
/// `]` member is escaped and `[:name:]` is the only class inside a class).
fn class_end(bytes: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'[' if bytes.get(i + 1) == Some(&b':') => {
                while i + 1 < bytes.len() && !(bytes[i] == b':' && bytes[i + 1] == b']') {
                    i += 1;
                }
                i += 1;
            }
            b']' => return i,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// The index of the `)` closing the group opened at `open`.
fn group_end(bytes: &[u8], open: usize) -> Option<usize> {
    let (mut i, mut depth) = (open, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'[' => i = class_end(bytes, i),
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// A pattern matching, at any offset, text that does not end with any of `strings` (see
/// [`negative_lookbehinds`]).
fn not_ending_with(strings: &[Vec<u8>]) -> String {
    #[derive(Default)]
    struct Node {
        children: std::collections::BTreeMap<u8, usize>,
        ends: bool,
    }
    let mut trie = vec![Node::default()];
    for string in strings {
        let mut at = 0;
        for &byte in string.iter().rev() {
            at = match trie[at].children.get(&byte) {
                Some(&next) => next,
                None => {
                    trie.push(Node::default());
                    let next = trie.len() - 1;
                    trie[at].children.insert(byte, next);
                    next
                }
            };
        }
        trie[at].ends = true;
    }
    let hex = |b: &u8| format!("\\x{b:02X}");
    let mut branches = Vec::new();
    // (node, the path to it read backwards): nodes ending a string, and all below them,
    // give no alternative.
    let mut stack = vec![(0, Vec::new())];
    while let Some((at, path)) = stack.pop() {
        let node = &trie[at];
        if node.ends {
            continue;
        }
        let before = if node.children.is_empty() {
            r"\A|[\x00-\xFF]".to_string()
        } else {
            let children: String = node.children.keys().map(hex).collect();
            format!(r"\A|[^{children}]")
        };
        let forward: String = path.iter().rev().map(hex).collect();
        branches.push(format!("(?:{before}){forward}"));
        for (&byte, &child) in node.children.iter().rev() {
            let mut longer = path.clone();
            longer.push(byte);
            stack.push((child, longer));
        }
    }
    if branches.is_empty() {
        // The empty string is in the set: every text ends with it.
        return r"[^\x00-\xFF]".to_string();
    }
    format!("(?:{})", branches.join("|"))
}

/// A pattern in edgepack's syntax as matchers whose automata fit the budget: the pattern
/// itself, its pieces, or the pattern compiled as a sequence.
fn fitted(translated: String, budget: u64, span: Span) -> Result<Vec<Matcher>, String> {
    let matcher = |p: String| Matcher::Regex(Spanned::new(p, span));
    match waf_regex::check_whole(&translated, budget) {
        Ok(()) => Ok(vec![matcher(translated)]),
        Err(RegexProblem::Invalid { reason, .. }) => Err(format!("regex: {reason}")),
        // Pieces of an alternation each get narrower prefilter literals, so that split is
        // tried before a sequence.
        Err(RegexProblem::TooLarge) => match split_to_fit(&translated, budget) {
            Some(pieces) => Ok(pieces.into_iter().map(matcher).collect()),
            None if waf_regex::sequence(&translated, budget).is_some() => {
                Ok(vec![matcher(translated)])
            }
            None => Err(format!(
                "its pattern's automaton exceeds the budget of {budget} bytes, even split at its alternations or its concatenation"
            )),
        },
    }
}

/// The strings a list of matchers matches, when that is a finite set of non-empty strings
/// (literals, and patterns without anchors or repetitions such as `(?:word|other)`).
fn finite_strings(matchers: &[Matcher]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for m in matchers {
        match m {
            Matcher::Literal(text) => out.push(text.value.as_bytes().to_vec()),
            Matcher::Regex(pattern) => out.extend(pattern_strings(&pattern.value)?),
            Matcher::Detect(_) => return None,
        }
    }
    out.sort();
    out.dedup();
    (!out.is_empty() && out.iter().all(|s| !s.is_empty())).then_some(out)
}

/// The strings a pattern matches, when that is a finite set (without anchors or
/// repetitions, such as `(?:word|other)`).
fn pattern_strings(pattern: &str) -> Option<Vec<Vec<u8>>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = waf_regex::parse(pattern).ok()?;
    if !hir.properties().look_set().is_empty() {
        return None;
    }
    let mut extractor = Extractor::new();
    extractor
        .kind(ExtractKind::Prefix)
        .limit_class(64)
        .limit_repeat(64)
        .limit_literal_len(512)
        .limit_total(4096);
    let seq = extractor.extract(&hir);
    if !seq.is_exact() {
        return None;
    }
    Some(
        seq.literals()?
            .iter()
            .map(|l| l.as_bytes().to_vec())
            .collect(),
    )
}

/// Most string pairs [`both_in_one_value`] joins.
const MAX_JOINED_PAIRS: usize = 100_000;

/// Patterns, any of which matches exactly the values that hold a string of `first` and one
/// of `second`: one after the other (either way round), one inside the other, or
/// overlapping (the end of one the start of the other), which are all the ways two
/// occurrences can lie.
fn both_in_one_value(first: &[Vec<u8>], second: &[Vec<u8>]) -> Option<Vec<String>> {
    if first.len().saturating_mul(second.len()) > MAX_JOINED_PAIRS {
        return None;
    }
    let alternation = |set: &mut dyn Iterator<Item = &Vec<u8>>| {
        set.map(|s| escape_bytes(s)).collect::<Vec<_>>().join("|")
    };
    let (a, b) = (
        alternation(&mut first.iter()),
        alternation(&mut second.iter()),
    );
    let mut joined = std::collections::BTreeSet::new();
    for x in first {
        for y in second {
            for (x, y) in [(x, y), (y, x)] {
                if x.windows(y.len()).any(|w| w == y.as_slice()) {
                    joined.insert(x.clone());
                    continue;
                }
                for k in 1..x.len().min(y.len()) {
                    if x.ends_with(&y[..k]) {
                        joined.insert([x.as_slice(), &y[k..]].concat());
                    }
                }
            }
        }
    }
    let mut patterns = vec![
        format!("(?s)(?:{a}).*(?:{b})"),
        format!("(?s)(?:{b}).*(?:{a})"),
    ];
    if !joined.is_empty() {
        patterns.push(alternation(&mut joined.iter()));
    }
    Some(patterns)
}

/// The values `v` for which `before` + `v` + `after` occurs in `list` (ModSecurity's
/// `@within` of a stored template), shortest first.
fn stored_values_within(list: &str, before: &str, after: &str) -> Vec<String> {
    // Every occurrence, overlapping ones too (`match_indices` would skip those).
    let at = |text: &str, part: &str| -> Vec<usize> {
        (0..=text.len())
            .filter(|&i| text.is_char_boundary(i) && text[i..].starts_with(part))
            .collect()
    };
    let mut values = std::collections::BTreeSet::new();
    for start in at(list, before) {
        let from = start + before.len();
        for end in at(&list[from..], after) {
            values.insert(list[from..from + end].to_string());
        }
    }
    let mut values: Vec<String> = values.into_iter().collect();
    values.sort_by_key(String::len);
    values
}

/// `bytes` as a pattern matching them literally (control and non-ASCII bytes as `\xNN`).
fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii() && !b.is_ascii_control() {
            out.push_str(&regex_syntax::escape(&char::from(b).to_string()));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Most pieces one pattern may be split into.
const MAX_PIECES: usize = 8;

/// Splits a pattern whose automaton is too large into patterns whose automata fit: the
/// largest alternation reachable through concatenations and groups (not repetitions) is cut
/// in two, and each half rebuilt in its context. `C(a|b)D` matches somewhere exactly when
/// `CaD` or `CbD` does, so "any piece matches" is the pattern's own answer; the pieces also
/// yield narrower required literals for the prefilter. `None` when no split fits.
fn split_to_fit(pattern: &str, budget: u64) -> Option<Vec<String>> {
    use regex_syntax::hir::Hir;
    let hir = waf_regex::parse(pattern).ok()?;
    let mut done: Vec<String> = Vec::new();
    let mut todo: Vec<Hir> = vec![hir];
    let mut cuts = 0;
    while let Some(hir) = todo.pop() {
        let (left, right) = halves(&hir)?;
        cuts += 1;
        let mut fitted = 0;
        for half in [left, right] {
            let text = half.to_string();
            match waf_regex::check_pattern(&text, budget) {
                Ok(_) => {
                    done.push(text);
                    fitted += 1;
                }
                Err(RegexProblem::TooLarge) => todo.push(half),
                Err(RegexProblem::Invalid { .. }) => return None,
            }
        }
        // When neither half of the first cut fits, the size comes from repetitions around
        // the alternation, not from it: more cuts will not help, and each try costs a
        // determinization up to the budget.
        if (cuts == 1 && fitted == 0) || done.len() + todo.len() > MAX_PIECES {
            return None;
        }
    }
    done.sort();
    Some(done)
}

/// `hir` with its largest reachable alternation cut in two; `None` if it has none with two
/// or more branches.
fn halves(
    hir: &regex_syntax::hir::Hir,
) -> Option<(regex_syntax::hir::Hir, regex_syntax::hir::Hir)> {
    use regex_syntax::hir::{Hir, HirKind};
    // The size of the largest alternation below each node, to pick the path to it.
    fn largest(hir: &Hir) -> usize {
        match hir.kind() {
            HirKind::Alternation(branches) => branches
                .len()
                .max(branches.iter().map(largest).max().unwrap_or(0)),
            HirKind::Concat(parts) => parts.iter().map(largest).max().unwrap_or(0),
            HirKind::Capture(c) => largest(&c.sub),
            _ => 0,
        }
    }
    fn cut(hir: &Hir) -> Option<(Hir, Hir)> {
        match hir.kind() {
            HirKind::Alternation(branches)
                if branches.len() >= 2
                    && branches.len() >= branches.iter().map(largest).max().unwrap_or(0) =>
            {
                let middle = branches.len() / 2;
                Some((
                    Hir::alternation(branches[..middle].to_vec()),
                    Hir::alternation(branches[middle..].to_vec()),
                ))
            }
            HirKind::Alternation(branches) => cut_within(branches, Hir::alternation),
            HirKind::Concat(parts) => cut_within(parts, Hir::concat),
            HirKind::Capture(c) => {
                let (l, r) = cut(&c.sub)?;
                let with = |piece: Hir| {
                    Hir::capture(regex_syntax::hir::Capture {
                        index: c.index,
                        name: c.name.clone(),
                        sub: Box::new(piece),
                    })
                };
                Some((with(l), with(r)))
            }
            _ => None,
        }
    }
    /// Cuts the member holding the largest alternation; each half keeps the other members.
    fn cut_within(members: &[Hir], rebuild: fn(Vec<Hir>) -> Hir) -> Option<(Hir, Hir)> {
        let at = (0..members.len()).max_by_key(|i| largest(&members[*i]))?;
        let (l, r) = cut(&members[at])?;
        let with = |piece: Hir| {
            let mut all = members.to_vec();
            all[at] = piece;
            rebuild(all)
        };
        Some((with(l), with(r)))
    }
    (largest(hir) >= 2).then(|| cut(hir)).flatten()
}

fn pcre_literals(pattern: &str) -> String {
    let bytes = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len());
    let mut i = 0;
    let mut in_class = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            // PCRE reads `\<` and `\>` as the characters; Rust as word boundaries.
            b'\\' if matches!(bytes.get(i + 1), Some(b'<' | b'>')) => {
                out.push(char::from(bytes[i + 1]));
                i += 2;
                continue;
            }
            b'\\' => {
                let end = (i + 2).min(bytes.len());
                out.push_str(&pattern[i..end]);
                i = end;
                continue;
            }
            b'[' if !in_class => {
                // A `]` right after `[` or `[^` is a member in PCRE.
                in_class = true;
                out.push('[');
                i += 1;
                if bytes.get(i) == Some(&b'^') {
                    out.push('^');
                    i += 1;
                }
                if bytes.get(i) == Some(&b']') {
                    out.push_str("\\]");
                    i += 1;
                }
                continue;
            }
            b']' if in_class => in_class = false,
            // Inside a class PCRE reads `[` (but for `[:alpha:]`), `&&`, `--` and `~~` as
            // members; Rust as nested classes and set operations.
            b'[' if bytes.get(i + 1) != Some(&b':') => {
                out.push_str("\\[");
                i += 1;
                continue;
            }
            b'[' => {
                // `[:alpha:]`: copied whole, its `]` does not close the class.
                let close = pattern[i..].find(":]").map_or(bytes.len(), |e| i + e + 2);
                out.push_str(&pattern[i..close]);
                i = close;
                continue;
            }
            b'&' | b'~' if in_class => {
                out.push('\\');
                out.push(char::from(c));
                i += 1;
                continue;
            }
            b'-' if in_class && bytes.get(i + 1) == Some(&b'-') => {
                out.push_str("\\-");
                i += 1;
                continue;
            }
            b'{' if !in_class && !is_repetition(&bytes[i..]) => {
                out.push_str("\\{");
                i += 1;
                continue;
            }
            b'}' if !in_class => {
                // A `}` closing a repetition was copied with it; any other is literal.
                out.push_str("\\}");
                i += 1;
                continue;
            }
            _ => {}
        }
        if c == b'{' && !in_class {
            let close = pattern[i..].find('}').map_or(bytes.len(), |e| i + e + 1);
            out.push_str(&pattern[i..close]);
            i = close;
            continue;
        }
        let len = utf8_len(c);
        let end = (i + len).min(bytes.len());
        out.push_str(&pattern[i..end]);
        i = end;
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// `{n}`, `{n,}` or `{n,m}` at the start of `rest`.
fn is_repetition(rest: &[u8]) -> bool {
    let Some(close) = rest.iter().position(|b| *b == b'}') else {
        return false;
    };
    let inner = &rest[1..close];
    let mut parts = inner.splitn(2, |b| *b == b',');
    let first = parts.next().unwrap_or(&[]);
    let second = parts.next();
    !first.is_empty()
        && first.iter().all(u8::is_ascii_digit)
        && second.is_none_or(|s| s.iter().all(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRS 920120's pattern: a `;` not ending one of these entities, or a quote or `=`.
    const ENTITY_SEMICOLON: &str = r#"(?<!&(?:[aAoOuUyY]uml)|&(?:[aAeEiIoOuU]circ)|&(?:[eEiIoOuUyY]acute)|&(?:[aAeEiIoOuU]grave)|&(?:[cC]cedil)|&(?:[aAnNoO]tilde)|&(?:amp)|&(?:apos));|['\"=]"#;

    #[test]
    fn a_negative_look_behind_over_a_list_matches_as_pcre_does() {
        let translated = negative_lookbehinds(&pcre_literals(ENTITY_SEMICOLON));
        assert!(!translated.contains("(?<"), "{translated}");
        let regex = regex_automata::meta::Regex::builder()
            .syntax(waf_regex::syntax_config())
            .build(&format!("(?sm){translated}"))
            .expect("the rewrite compiles");
        let entities: Vec<String> = [
            ("aAoOuUyY", "uml"),
            ("aAeEiIoOuU", "circ"),
            ("eEiIoOuUyY", "acute"),
            ("aAeEiIoOuU", "grave"),
            ("cC", "cedil"),
            ("aAnNoO", "tilde"),
        ]
        .iter()
        .flat_map(|(letters, name)| letters.chars().map(move |c| format!("&{c}{name}")))
        .chain(["&amp".to_string(), "&apos".to_string()])
        .collect();
        // As PCRE reads it: some `;` that none of the entities ends right before, or a quote
        // or `=` anywhere.
        let pcre = |text: &[u8]| {
            text.iter().enumerate().any(|(at, byte)| {
                *byte == b';' && !entities.iter().any(|e| text[..at].ends_with(e.as_bytes()))
            }) || text.iter().any(|b| b"'\"=".contains(b))
        };
        let tokens = [
            "&amp", "&apos", "&auml", "&Ouml", "&Ccedil", "&ntilde", "&xuml", "&am", "amp", "&",
            ";", ";", ";", "a", "p", "os", "uml", "\n", "'", "é",
        ];
        let mut seed: u64 = 0x0920_0120_dead_beef;
        let mut matched = 0;
        for _ in 0..20_000 {
            let mut text = Vec::new();
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            for _ in 0..(seed >> 61) + 1 {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                text.extend_from_slice(tokens[(seed >> 33) as usize % tokens.len()].as_bytes());
            }
            let expected = pcre(&text);
            matched += usize::from(expected);
            assert_eq!(
                regex.is_match(text.as_slice()),
                expected,
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
        assert!(matched > 1000 && matched < 19_000, "{matched}");
        // Elsewhere than at the start of an alternative, it stays (and is reported).
        let inside = negative_lookbehinds(r"x(?<!a);");
        assert_eq!(inside, r"x(?<!a);");
        assert_eq!(negative_lookbehinds(r"(?<!a+);"), r"(?<!a+);");
    }

    #[test]
    fn pcre_literals_stay_literals() {
        assert_eq!(pcre_literals(r"^\(\s*\)\s+{"), r"^\(\s*\)\s+\{");
        assert_eq!(pcre_literals(r"a{2,3}b{x}"), r"a{2,3}b\{x\}");
        assert_eq!(pcre_literals(r"[{}]\{"), r"[{}]\{");
        assert_eq!(pcre_literals(r"[^\<\>]\<x"), r"[^<>]<x");
        assert_eq!(
            pcre_literals(r"[]a[&&~--][:alpha:]]"),
            r"[\]a\[\&\&\~\--][:alpha:]]"
        );
        assert_eq!(pcre_literals(r"[[:alpha:]{]{x}"), r"[[:alpha:]{]\{x\}");
    }

    #[test]
    fn a_pattern_too_large_for_one_automaton_is_split_at_its_alternation() {
        let budget = 256 << 10;
        let pattern = r"(?s)x(?:a.{1,12}b|c.{1,12}d)y";
        assert_eq!(
            waf_regex::check_whole(pattern, budget),
            Err(RegexProblem::TooLarge)
        );
        let pieces = split_to_fit(pattern, budget).expect("the halves fit");
        assert_eq!(pieces.len(), 2);
        let matches = |text: &str| {
            pieces.iter().any(|p| {
                regex_automata::meta::Regex::builder()
                    .syntax(waf_regex::syntax_config())
                    .build(p)
                    .expect("a piece compiles")
                    .is_match(text)
            })
        };
        assert!(matches("..xa123by.."));
        assert!(matches("xc1234567890dy"));
        assert!(!matches("xa1234567890123by"));
        assert!(!matches("xcd y"));
    }

    /// Every way two strings can lie in one value: checked against a direct search on
    /// every short text over their letters.
    #[test]
    fn both_in_one_value_matches_exactly_the_values_holding_both() {
        let first: Vec<Vec<u8>> = vec![b"aba".to_vec(), b"c".to_vec()];
        let second: Vec<Vec<u8>> = vec![b"bab".to_vec(), b"ab".to_vec()];
        let patterns = both_in_one_value(&first, &second).expect("patterns");
        let regex = regex_automata::meta::Regex::builder()
            .syntax(waf_regex::syntax_config())
            .build_many(&patterns)
            .expect("compiles");
        let holds = |text: &[u8], set: &[Vec<u8>]| {
            set.iter()
                .any(|s| text.windows(s.len()).any(|w| w == s.as_slice()))
        };
        // Every text of up to seven letters a, b and c.
        let mut texts: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..7 {
            last = last
                .iter()
                .flat_map(|t| [b'a', b'b', b'c'].map(|b| [t.as_slice(), &[b]].concat()))
                .collect();
            texts.extend(last.iter().cloned());
        }
        assert_eq!(texts.len(), 3280);
        for text in &texts {
            assert_eq!(
                regex.is_match(text),
                holds(text, &first) && holds(text, &second),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn stored_values_within_a_list_are_every_value_between_the_template_parts() {
        assert_eq!(
            stored_values_within("/a/ /bc/", "/", "/"),
            vec![" ", "a", "bc", "a/ ", " /bc", "a/ /bc"]
        );
        assert_eq!(stored_values_within("xx", "x", "x"), vec![""]);
        assert!(stored_values_within("/a/", "<", ">").is_empty());
    }

    #[test]
    fn finite_strings_come_from_literals_and_word_alternations_only() {
        let span = Span::new(FileId(0), 0, 0);
        let regex = |p: &str| Matcher::Regex(Spanned::new(format!("(?sm){p}"), span));
        let literal = |p: &str| Matcher::Literal(Spanned::new(p.to_string(), span));
        assert_eq!(
            finite_strings(&[regex("(?:one|two)"), literal("three")]),
            Some(vec![b"one".to_vec(), b"three".to_vec(), b"two".to_vec()])
        );
        assert_eq!(finite_strings(&[regex("on+e")]), None);
        assert_eq!(finite_strings(&[regex("^one")]), None);
        assert_eq!(finite_strings(&[regex("one|x?")]), None);
    }

    #[test]
    fn configuration_values_are_evaluated() {
        assert_eq!(evaluate("lt", "2", "1"), Some(true));
        assert_eq!(evaluate("eq", "0", "1"), Some(false));
        assert_eq!(evaluate("within", "GET HEAD", "HEAD"), Some(true));
        assert_eq!(evaluate("detectSQLi", "", "x"), None);
    }
}
