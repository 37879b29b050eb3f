//! Reading KDL nodes by hand, keeping every span, reporting every mistake.
//!
//! [`NodeReader`] hands out a node's arguments and properties as they are asked for and,
//! when the decoder is done with the node, reports whatever was not asked for (unknown
//! properties, with "did you mean" drawn from the properties that were asked for; extra
//! arguments). [`Ctx`] turns raw values into typed ones, reporting a diagnostic and
//! returning `None` on a bad value so decoding always carries on to the next mistake.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use kdl::{KdlEntry, KdlNode, KdlValue};

use crate::diagnostic::Diagnostic;
use crate::diagnostics as diag;
use crate::policy::{Country, PolicyPath};
use crate::source::{FileId, Span, Spanned};
use crate::units;

/// The largest file (policy, key, database, function) a policy may name.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Shared state of one decoding run.
pub(crate) struct Ctx {
    pub diags: Vec<Diagnostic>,
    /// The policy directory, canonicalized.
    pub root: PathBuf,
    /// For each loaded file, the directory it is in (canonicalized).
    pub file_dirs: Vec<PathBuf>,
    /// (kind, name) of definitions that had errors of their own: references to them are
    /// not reported again as undefined.
    pub partially_defined: std::collections::HashSet<(&'static str, String)>,
    /// Files read while decoding (imported rule sets), to be added to the policy's sources
    /// in this order: (path, name, relative, text).
    pub read_during_decode: Vec<(PathBuf, String, String, String)>,
}

/// A raw value and where it was written.
#[derive(Clone, Copy)]
pub(crate) struct Val<'k> {
    pub value: &'k KdlValue,
    pub span: Span,
    /// The value as written in the source, when known (for spans inside strings).
    pub repr: Option<&'k str>,
}

pub(crate) fn span_of(file: FileId, span: miette::SourceSpan) -> Span {
    Span::new(file, span.offset(), span.offset() + span.len())
}

fn value_of(file: FileId, entry: &KdlEntry) -> Val<'_> {
    let whole = span_of(file, entry.span());
    let repr = entry.format().map(|f| f.value_repr.as_str());
    // The entry's span covers `key=value`; the value is its tail.
    let span = match repr {
        Some(r) if !r.is_empty() && r.len() <= whole.len() => {
            Span::new(file, whole.end as usize - r.len(), whole.end as usize)
        }
        _ => whole,
    };
    Val {
        value: entry.value(),
        span,
        repr,
    }
}

struct Prop<'k> {
    key: &'k str,
    key_span: Span,
    val: Val<'k>,
    used: bool,
}

/// One node being decoded.
pub(crate) struct NodeReader<'k> {
    pub node: &'k KdlNode,
    pub file: FileId,
    pub name: &'k str,
    /// The whole node, children included.
    pub span: Span,
    /// The node's name only: where "missing …" diagnostics point.
    pub name_span: Span,
    args: Vec<(Val<'k>, bool)>,
    props: Vec<Prop<'k>>,
    asked: Vec<&'static str>,
    /// Required properties that are missing, with an example; reported by `finish` unless
    /// an unknown property is a typo of one (then the typo is the one mistake).
    missing: Vec<(&'static str, String)>,
    expected_args: usize,
}

impl<'k> NodeReader<'k> {
    pub fn new(cx: &mut Ctx, file: FileId, node: &'k KdlNode) -> NodeReader<'k> {
        let name_span = span_of(file, node.name().span());
        if let Some(ty) = node.ty() {
            cx.diags
                .push(diag::type_annotation(span_of(file, ty.span())));
        }
        let mut args = Vec::new();
        let mut props: Vec<Prop<'k>> = Vec::new();
        for entry in node.entries() {
            let val = value_of(file, entry);
            if entry.ty().is_some() {
                cx.diags
                    .push(diag::type_annotation(span_of(file, entry.span())));
            }
            match entry.name() {
                None => args.push((val, false)),
                Some(key) => {
                    let key_span = span_of(file, key.span());
                    if let Some(first) = props.iter_mut().find(|p| p.key == key.value()) {
                        cx.diags.push(diag::duplicate_property(
                            key_span,
                            first.key_span,
                            key.value(),
                        ));
                        // KDL says the last one wins; keep it, after reporting.
                        first.val = val;
                        first.key_span = key_span;
                        continue;
                    }
                    props.push(Prop {
                        key: key.value(),
                        key_span,
                        val,
                        used: false,
                    });
                }
            }
        }
        NodeReader {
            node,
            file,
            name: node.name().value(),
            span: span_of(file, node.span()),
            name_span,
            args,
            props,
            asked: Vec::new(),
            missing: Vec::new(),
            expected_args: 0,
        }
    }

    pub fn arg(&mut self, index: usize) -> Option<Val<'k>> {
        self.expected_args = self.expected_args.max(index + 1);
        let (val, used) = self.args.get_mut(index)?;
        *used = true;
        Some(*val)
    }

    pub fn req_arg(
        &mut self,
        cx: &mut Ctx,
        index: usize,
        what: &str,
        example: &str,
    ) -> Option<Val<'k>> {
        let val = self.arg(index);
        if val.is_none() {
            cx.diags.push(diag::missing_argument(
                self.name_span,
                self.name,
                what,
                example,
            ));
        }
        val
    }

    /// All arguments from `from` on; the node may have any number of them.
    pub fn rest_args(&mut self, from: usize) -> Vec<Val<'k>> {
        self.expected_args = usize::MAX;
        self.args
            .iter_mut()
            .skip(from)
            .map(|(val, used)| {
                *used = true;
                *val
            })
            .collect()
    }

    /// At least one argument from `from` on.
    pub fn req_rest_args(
        &mut self,
        cx: &mut Ctx,
        from: usize,
        what: &str,
        example: &str,
    ) -> Vec<Val<'k>> {
        let vals = self.rest_args(from);
        if vals.is_empty() {
            cx.diags.push(diag::missing_argument(
                self.name_span,
                self.name,
                what,
                example,
            ));
        }
        vals
    }

    pub fn prop(&mut self, key: &'static str) -> Option<Val<'k>> {
        if !self.asked.contains(&key) {
            self.asked.push(key);
        }
        let prop = self.props.iter_mut().find(|p| p.key == key)?;
        prop.used = true;
        Some(prop.val)
    }

    /// A required property; its absence is reported by [`NodeReader::finish`].
    pub fn req_prop(&mut self, key: &'static str, example: &str) -> Option<Val<'k>> {
        let val = self.prop(key);
        if val.is_none() {
            self.missing.push((key, example.to_string()));
        }
        val
    }

    pub fn children(&self) -> &'k [KdlNode] {
        self.node.children().map_or(&[], |c| c.nodes())
    }

    pub fn has_children_block(&self) -> bool {
        self.node.children().is_some()
    }

    /// Reports a children block on a node that takes none.
    pub fn no_children(&self, cx: &mut Ctx) {
        if let Some(children) = self.node.children() {
            cx.diags.push(diag::children_not_allowed(
                span_of(self.file, children.span()),
                self.name,
            ));
        }
    }

    /// Reports every property and argument nobody asked for.
    pub fn finish(&self, cx: &mut Ctx) {
        let mut typos = Vec::new();
        for prop in self.props.iter().filter(|p| !p.used) {
            typos.extend(diag::suggest(prop.key, self.asked.iter().copied()));
            cx.diags.push(diag::unknown_property(
                prop.key_span,
                prop.key,
                self.name,
                &self.asked,
            ));
        }
        for (key, example) in &self.missing {
            if !typos.contains(key) {
                cx.diags.push(diag::missing_property(
                    self.name_span,
                    self.name,
                    key,
                    example,
                ));
            }
        }
        if let Some((val, _)) = self.args.iter().find(|(_, used)| !used) {
            cx.diags.push(diag::unexpected_argument(
                val.span,
                self.name,
                self.expected_args.min(self.args.len()),
            ));
        }
    }
}

fn type_name(value: &KdlValue) -> &'static str {
    match value {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

impl Ctx {
    /// Registers a file read while decoding, so diagnostics can point into it; its id
    /// follows the files loaded before decoding.
    pub fn add_source(
        &mut self,
        path: &Path,
        name: String,
        relative: String,
        text: String,
    ) -> FileId {
        let id = FileId(u32::try_from(self.file_dirs.len()).unwrap_or(u32::MAX));
        self.file_dirs.push(
            path.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.root.clone()),
        );
        self.read_during_decode
            .push((path.to_path_buf(), name, relative, text));
        id
    }

    /// How plans and messages name a file read while decoding: relative to the policy
    /// directory when inside it (the same on every checkout), else as the absolute path
    /// (a rule set installed system-wide).
    pub fn shown_path(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(inside) => inside
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/"),
            Err(_) => path.display().to_string(),
        }
    }

    /// Whether a file read while decoding is registered already.
    pub fn has_source(&self, path: &Path) -> bool {
        self.read_during_decode.iter().any(|(p, ..)| p == path)
    }

    pub fn string(&mut self, val: Val<'_>, example: &str) -> Option<Spanned<String>> {
        match val.value {
            KdlValue::String(s) => Some(Spanned::new(s.clone(), val.span)),
            other => {
                self.diags.push(diag::wrong_type(
                    val.span,
                    "a string",
                    type_name(other),
                    example,
                ));
                None
            }
        }
    }

    pub fn strings(&mut self, vals: &[Val<'_>], example: &str) -> Vec<Spanned<String>> {
        vals.iter()
            .filter_map(|v| self.string(*v, example))
            .collect()
    }

    pub fn integer(&mut self, val: Val<'_>, example: &str) -> Option<Spanned<i128>> {
        match val.value {
            KdlValue::Integer(i) => Some(Spanned::new(*i, val.span)),
            other => {
                self.diags.push(diag::wrong_type(
                    val.span,
                    "an integer",
                    type_name(other),
                    example,
                ));
                None
            }
        }
    }

    /// An integer in `lo..=hi`.
    pub fn int_in<T: TryFrom<i128>>(
        &mut self,
        val: Val<'_>,
        what: &str,
        lo: i128,
        hi: i128,
        example: &str,
    ) -> Option<Spanned<T>> {
        let n = self.integer(val, example)?;
        if n.value < lo || n.value > hi {
            self.diags.push(diag::out_of_range(
                val.span,
                what,
                &format!("from {lo} to {hi}"),
            ));
            return None;
        }
        T::try_from(n.value).ok().map(|v| Spanned::new(v, val.span))
    }

    pub fn float_in(
        &mut self,
        val: Val<'_>,
        what: &str,
        lo: f64,
        hi: f64,
        example: &str,
    ) -> Option<Spanned<f64>> {
        let n = match val.value {
            KdlValue::Float(f) => *f,
            KdlValue::Integer(i) => *i as f64,
            other => {
                self.diags.push(diag::wrong_type(
                    val.span,
                    "a number",
                    type_name(other),
                    example,
                ));
                return None;
            }
        };
        if !(lo..=hi).contains(&n) {
            self.diags.push(diag::out_of_range(
                val.span,
                what,
                &format!("from {lo} to {hi}"),
            ));
            return None;
        }
        Some(Spanned::new(n, val.span))
    }

    pub fn boolean(&mut self, val: Val<'_>, example: &str) -> Option<Spanned<bool>> {
        match val.value {
            KdlValue::Bool(b) => Some(Spanned::new(*b, val.span)),
            other => {
                self.diags.push(diag::wrong_type(
                    val.span,
                    "#true or #false",
                    type_name(other),
                    example,
                ));
                None
            }
        }
    }

    pub fn duration(&mut self, val: Val<'_>, example: &str) -> Option<Spanned<Duration>> {
        let text = self.string(val, example)?;
        match units::parse_duration(&text) {
            Ok(d) => Some(Spanned::new(d, val.span)),
            Err(e) => {
                let span = self.inner_span(val, e.start, e.end);
                self.diags.push(diag::duration_invalid(span, &e.reason));
                None
            }
        }
    }

    /// A duration no longer than `max`.
    pub fn duration_max(
        &mut self,
        val: Val<'_>,
        what: &str,
        max: Duration,
        example: &str,
    ) -> Option<Spanned<Duration>> {
        let d = self.duration(val, example)?;
        if d.value > max {
            self.diags.push(diag::out_of_range(
                val.span,
                what,
                &format!("at most {}", units::format_duration(max)),
            ));
            return None;
        }
        Some(d)
    }

    pub fn size(&mut self, val: Val<'_>, example: &str) -> Option<Spanned<u64>> {
        let text = self.string(val, example)?;
        match units::parse_size(&text) {
            Ok(n) => Some(Spanned::new(n, val.span)),
            Err(e) => {
                let span = self.inner_span(val, e.start, e.end);
                self.diags.push(diag::size_invalid(span, &e.reason));
                None
            }
        }
    }

    pub fn country(&mut self, val: Val<'_>) -> Option<Spanned<Country>> {
        let text = self.string(val, "\"DE\"")?;
        match crate::country::parse_country(&text) {
            Some(c) => Some(Spanned::new(c, val.span)),
            None => {
                self.diags.push(diag::country_invalid(
                    val.span,
                    &text,
                    crate::country::suggest(&text),
                ));
                None
            }
        }
    }

    pub fn countries(&mut self, vals: &[Val<'_>]) -> Vec<Spanned<Country>> {
        vals.iter().filter_map(|v| self.country(*v)).collect()
    }

    pub fn choice<T: Copy>(
        &mut self,
        val: Val<'_>,
        what: &str,
        choices: &[(&str, T)],
    ) -> Option<Spanned<T>> {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let example = format!("\"{}\"", names.first().copied().unwrap_or(""));
        let text = self.string(val, &example)?;
        match choices.iter().find(|(n, _)| *n == text.value) {
            Some((_, v)) => Some(Spanned::new(*v, val.span)),
            None => {
                self.diags
                    .push(diag::invalid_choice(val.span, what, &text, &names));
                None
            }
        }
    }

    /// An HTTP status in one of the given ranges.
    pub fn status(
        &mut self,
        val: Val<'_>,
        allowed: &[(u16, u16)],
        describe: &str,
    ) -> Option<Spanned<u16>> {
        let n = self.integer(val, "404")?;
        if allowed
            .iter()
            .any(|(lo, hi)| n.value >= i128::from(*lo) && n.value <= i128::from(*hi))
        {
            Some(Spanned::new(n.value as u16, val.span))
        } else {
            self.diags
                .push(diag::status_invalid(val.span, n.value, describe));
            None
        }
    }

    /// A header name: an HTTP token, returned in lower case.
    pub fn header_name(&mut self, val: Val<'_>) -> Option<Spanned<String>> {
        let name = self.string(val, "\"x-request-id\"")?;
        match check_header_name(&name) {
            Ok(()) => Some(name.map(|n| n.to_ascii_lowercase())),
            Err((at, reason)) => {
                let span = self.inner_span(val, at, at + 1);
                self.diags.push(diag::header_invalid(span, reason));
                None
            }
        }
    }

    pub fn header_names(&mut self, vals: &[Val<'_>]) -> Vec<Spanned<String>> {
        vals.iter().filter_map(|v| self.header_name(*v)).collect()
    }

    pub fn header_value(&mut self, val: Val<'_>) -> Option<Spanned<String>> {
        let value = self.string(val, "\"max-age=63072000\"")?;
        if let Some(at) = value.bytes().position(|b| {
            b == b'\r' || b == b'\n' || b == 0 || (b < 0x20 && b != b'\t') || b == 0x7f
        }) {
            let span = self.inner_span(val, at, at + 1);
            self.diags.push(diag::header_invalid(
                span,
                "control characters are not allowed in header values",
            ));
            return None;
        }
        Some(value)
    }

    /// The source span of bytes `start..end` of a string value's decoded text.
    pub fn inner_span(&self, val: Val<'_>, start: usize, end: usize) -> Span {
        match val.repr.and_then(decoded_offsets) {
            Some(map) if start <= end && end < map.len() => {
                let from = map[start];
                let to = if end > start { map[end] } else { from };
                val.span.sub(from, to.max(from))
            }
            _ => val.span,
        }
    }

    /// Resolves a path named in file `file`; it must stay inside the policy directory.
    pub fn policy_path(
        &mut self,
        file: FileId,
        written: &Spanned<String>,
    ) -> Option<Spanned<PolicyPath>> {
        let base = self.file_dirs.get(file.0 as usize)?.clone();
        match resolve_path(&self.root, &base, &written.value) {
            Ok(p) => Some(Spanned::new(p, written.span)),
            Err(PathProblem::Absolute) => {
                self.diags.push(diag::path_absolute(written.span, written));
                None
            }
            Err(PathProblem::Escapes(how)) => {
                self.diags
                    .push(diag::path_outside(written.span, written, how));
                None
            }
            Err(PathProblem::Invalid(reason)) => {
                self.diags.push(diag::path_invalid(written.span, reason));
                None
            }
        }
    }

    /// Reads a file a policy names, within [`MAX_FILE_BYTES`].
    pub fn read(&mut self, path: &Spanned<PolicyPath>) -> Option<Vec<u8>> {
        match read_bounded(&path.absolute) {
            Ok(bytes) => Some(bytes),
            Err(ReadProblem::TooLarge) => {
                self.diags.push(diag::file_unreadable(
                    path.span,
                    &path.written,
                    &format!("it is larger than the limit of {MAX_FILE_BYTES} bytes"),
                ));
                None
            }
            Err(ReadProblem::Io(e)) => {
                self.diags
                    .push(diag::file_unreadable(path.span, &path.written, &e));
                None
            }
        }
    }
}

pub(crate) enum ReadProblem {
    TooLarge,
    Io(String),
}

pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, ReadProblem> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| ReadProblem::Io(io_reason(&e)))?;
    let meta = file
        .metadata()
        .map_err(|e| ReadProblem::Io(io_reason(&e)))?;
    if meta.is_dir() {
        return Err(ReadProblem::Io("it is a directory".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadProblem::Io(io_reason(&e)))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadProblem::TooLarge);
    }
    Ok(bytes)
}

/// A short, stable reason for an I/O error (no OS error numbers, so golden files hold).
pub(crate) fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "it is a directory".into(),
        _ => error.to_string(),
    }
}

pub(crate) fn check_header_name(name: &str) -> Result<(), (usize, &'static str)> {
    if name.is_empty() {
        return Err((0, "empty header name"));
    }
    if let Some(at) = name
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
    {
        return Err((at, "not allowed in a header name"));
    }
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    ];
    if HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        return Err((0, "this header is managed by the node"));
    }
    Ok(())
}

/// For each byte of a string's decoded value, the offset of the source text it came from
/// (plus one entry for the end). `None` when the mapping is not simple (multi-line strings).
fn decoded_offsets(repr: &str) -> Option<Vec<usize>> {
    let bytes = repr.as_bytes();
    if repr.starts_with('#') {
        let hashes = bytes.iter().take_while(|b| **b == b'#').count();
        if repr[hashes..].starts_with("\"\"\"") {
            return None;
        }
        let inner_len = repr.len().checked_sub(2 * hashes + 2)?;
        return Some((0..=inner_len).map(|i| hashes + 1 + i).collect());
    }
    if !repr.starts_with('"') {
        // A bare identifier is its own value.
        return Some((0..=repr.len()).collect());
    }
    if repr.starts_with("\"\"\"") {
        return None;
    }
    let mut map = Vec::with_capacity(repr.len());
    let end = repr.len().saturating_sub(1);
    let mut i = 1;
    while i < end {
        if bytes[i] == b'\\' {
            let start = i;
            let next = *bytes.get(i + 1)?;
            let decoded_len;
            match next {
                b'u' => {
                    let close = repr[i..].find('}')? + i;
                    let code = u32::from_str_radix(&repr[i + 3..close], 16).ok()?;
                    decoded_len = char::from_u32(code)?.len_utf8();
                    i = close + 1;
                }
                b' ' | b'\t' | b'\n' | b'\r' => {
                    // Whitespace escape: the backslash and following whitespace vanish.
                    i += 1;
                    while i < end && bytes[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    continue;
                }
                _ => {
                    decoded_len = 1;
                    i += 2;
                }
            }
            map.extend(std::iter::repeat_n(start, decoded_len));
        } else {
            map.push(i);
            i += 1;
        }
    }
    map.push(end);
    Some(map)
}

pub(crate) enum PathProblem {
    Absolute,
    Escapes(&'static str),
    Invalid(&'static str),
}

/// Resolves `written` against `base` (a directory inside `root`), refusing anything that
/// ends up outside `root`, lexically or through a symbolic link.
pub(crate) fn resolve_path(
    root: &Path,
    base: &Path,
    written: &str,
) -> Result<PolicyPath, PathProblem> {
    if written.is_empty() {
        return Err(PathProblem::Invalid("empty path"));
    }
    if written.contains('\\') {
        return Err(PathProblem::Invalid("use `/` as the separator"));
    }
    if written.contains('\0') {
        return Err(PathProblem::Invalid("NUL in path"));
    }
    let path = Path::new(written);
    if path.is_absolute() || written.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    let mut parts: Vec<String> = match base.strip_prefix(root) {
        Ok(rel) => rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return Err(PathProblem::Escapes("")),
    };
    for component in path.components() {
        match component {
            Component::Normal(c) => parts.push(c.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(PathProblem::Escapes(""));
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(PathProblem::Absolute),
        }
    }
    if parts.is_empty() {
        return Err(PathProblem::Invalid(
            "the path names the policy directory itself",
        ));
    }
    let absolute = parts.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    if let Ok(real) = absolute.canonicalize()
        && !real.starts_with(root)
    {
        return Err(PathProblem::Escapes(" through a symbolic link"));
    }
    Ok(PolicyPath {
        written: written.to_string(),
        relative: parts.join("/"),
        absolute,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_decoded_offsets_through_escapes() {
        // "a\"b" decodes to a"b; byte 2 (b) sits at source offset 4.
        let map = decoded_offsets(r#""a\"b""#).unwrap();
        assert_eq!(map, vec![1, 2, 4, 5]);
        let map = decoded_offsets(r###"#"(?i)\b"#"###).unwrap();
        assert_eq!(map[0], 2);
        assert_eq!(map.len(), 7);
        assert!(decoded_offsets("\"\"\"\nx\n\"\"\"").is_none());
        let map = decoded_offsets(r#""\u{e9}x""#).unwrap();
        assert_eq!(map, vec![1, 1, 7, 8]);
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let root = std::env::temp_dir().canonicalize().unwrap();
        let base = root.clone();
        assert!(matches!(
            resolve_path(&root, &base, "../x"),
            Err(PathProblem::Escapes(_))
        ));
        assert!(matches!(
            resolve_path(&root, &base, "/etc/passwd"),
            Err(PathProblem::Absolute)
        ));
        assert!(matches!(
            resolve_path(&root, &base, "a\\b"),
            Err(PathProblem::Invalid(_))
        ));
        let ok = resolve_path(&root, &base, "keys/../keys/a.pem")
            .ok()
            .unwrap();
        assert_eq!(ok.relative, "keys/a.pem");
    }
}
