//! Source files of a policy and byte spans into them.
//!
//! Every value decoded from a policy keeps the [`Span`] it came from, so any later stage
//! (validation, lowering, the compiled plan's `file:line`) can point back into the user's file.
//! This module only stores text; it knows nothing of KDL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Index of a file in [`Sources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Span {
        Span {
            file,
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end.max(start)).unwrap_or(u32::MAX),
        }
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// A sub-range of this span, given as offsets relative to its start (clamped to it).
    pub fn sub(&self, start: usize, end: usize) -> Span {
        let len = self.len();
        Span::new(
            self.file,
            self.start as usize + start.min(len),
            self.start as usize + end.min(len),
        )
    }
}

/// A value together with the span it was written at.
#[derive(Clone, Debug)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Spanned<T> {
        Spanned { value, span }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Spanned<U> {
        Spanned {
            value: f(self.value),
            span: self.span,
        }
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    /// Spans are where a value was written, not part of what it means.
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// One file of a policy.
#[derive(Debug)]
pub struct SourceFile {
    /// Where the file was read from.
    pub path: PathBuf,
    /// How diagnostics name the file: the path as the user gave it, joined with includes.
    pub name: String,
    /// The path inside the policy directory, with `/` separators: the same wherever the
    /// policy is checked out (what plans and bundles record).
    pub relative: String,
    pub text: Arc<String>,
    /// Byte offset of the start of every line, for line/column lookups.
    line_starts: Vec<usize>,
}

/// All files of one policy, in the order they were loaded (the entry file first).
#[derive(Debug, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    pub fn new() -> Sources {
        Sources::default()
    }

    /// Adds a file; `relative` is its path inside the policy directory.
    pub fn add(&mut self, path: &Path, name: String, relative: String, text: String) -> FileId {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let id = FileId(u32::try_from(self.files.len()).unwrap_or(u32::MAX));
        self.files.push(SourceFile {
            path: path.to_path_buf(),
            name,
            relative,
            text: Arc::new(text),
            line_starts,
        });
        id
    }

    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (FileId(i as u32), f))
    }

    /// The text a span covers.
    pub fn text(&self, span: Span) -> &str {
        let text = &self.file(span.file).text;
        text.get(span.start as usize..span.end as usize)
            .unwrap_or("")
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, file: FileId, offset: u32) -> (usize, usize) {
        let source = self.file(file);
        let offset = (offset as usize).min(source.text.len());
        let line_idx = match source.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let line_start = source.line_starts[line_idx];
        let column = source
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |s| s.chars().count());
        (line_idx + 1, column + 1)
    }

    /// `file:line` of a span, as access logs and plans print it.
    pub fn location(&self, span: Span) -> String {
        let (line, _) = self.line_col(span.file, span.start);
        format!("{}:{}", self.file(span.file).name, line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let mut sources = Sources::new();
        let id = sources.add(
            Path::new("a.kdl"),
            "a.kdl".into(),
            "a.kdl".into(),
            "é=1\nzone \"É\" x".into(),
        );
        assert_eq!(sources.line_col(id, 0), (1, 1));
        assert_eq!(sources.line_col(id, 2), (1, 2));
        let x = sources.file(id).text.rfind('x').unwrap() as u32;
        assert_eq!(sources.line_col(id, x), (2, 10));
        assert_eq!(
            sources.location(Span::new(id, x as usize, x as usize + 1)),
            "a.kdl:2"
        );
    }
}
