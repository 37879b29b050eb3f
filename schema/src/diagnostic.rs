//! The diagnostic type every check in this crate reports, and its bridge to `miette`.
//!
//! A [`Diagnostic`] is plain data: a stable code, a message, labelled spans and help.
//! It holds no source text; [`Diagnostic::bind`] pairs it with the [`Sources`] when it is
//! rendered, so diagnostics can be collected, sorted and compared cheaply. The named
//! constructors for each kind of mistake live in `diagnostics.rs`.

use std::fmt;

use miette::{LabeledSpan, NamedSource, SourceSpan};

use crate::source::{Sources, Span};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A span with a short text saying what is at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

/// One finding about a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Stable code, e.g. `edgepack::route::ambiguous`; documented in docs/language.md.
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    /// The first label is the primary one: it decides the file and position reported.
    pub labels: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            labels: Vec::new(),
            help: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    pub fn label(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            text: text.into(),
        });
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    pub fn primary_span(&self) -> Option<Span> {
        self.labels.first().map(|l| l.span)
    }

    /// Pairs the diagnostic with its source text, ready for any `miette` handler.
    pub fn bind<'a>(&'a self, sources: &'a Sources) -> BoundDiagnostic<'a> {
        let primary_file = self.primary_span().map(|s| s.file);
        let source = primary_file.map(|file| {
            let f = sources.file(file);
            NamedSource::new(f.name.clone(), f.text.clone()).with_language("kdl")
        });
        // miette shows one source per diagnostic: labels in other files become notes.
        let related = self
            .labels
            .iter()
            .skip(1)
            .filter(|l| Some(l.span.file) != primary_file)
            .map(|l| Note {
                text: l.text.clone(),
                span: l.span,
                source: {
                    let f = sources.file(l.span.file);
                    NamedSource::new(f.name.clone(), f.text.clone()).with_language("kdl")
                },
            })
            .collect();
        BoundDiagnostic {
            diagnostic: self,
            source,
            related,
        }
    }
}

/// Sorts diagnostics by file and position, errors before warnings at the same place, so
/// output is stable whatever order the checks ran in.
pub fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|d| {
        let span = d.primary_span();
        (
            span.map(|s| (s.file, s.start)),
            d.severity,
            d.code,
            d.message.clone(),
        )
    });
}

fn source_span(span: Span) -> SourceSpan {
    SourceSpan::new((span.start as usize).into(), span.len())
}

/// A [`Diagnostic`] with its source, implementing [`miette::Diagnostic`].
pub struct BoundDiagnostic<'a> {
    diagnostic: &'a Diagnostic,
    source: Option<NamedSource<std::sync::Arc<String>>>,
    related: Vec<Note>,
}

impl fmt::Debug for BoundDiagnostic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.diagnostic, f)
    }
}

impl fmt::Display for BoundDiagnostic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic.message)
    }
}

impl std::error::Error for BoundDiagnostic<'_> {}

impl miette::Diagnostic for BoundDiagnostic<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diagnostic.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let primary_file = self.diagnostic.primary_span()?.file;
        Some(Box::new(
            self.diagnostic
                .labels
                .iter()
                .enumerate()
                .filter(move |(_, l)| l.span.file == primary_file)
                .map(|(i, l)| {
                    let text = (!l.text.is_empty()).then(|| l.text.clone());
                    if i == 0 {
                        LabeledSpan::new_primary_with_span(text, source_span(l.span))
                    } else {
                        LabeledSpan::new_with_span(text, source_span(l.span))
                    }
                }),
        ))
    }

    fn related<'b>(&'b self) -> Option<Box<dyn Iterator<Item = &'b dyn miette::Diagnostic> + 'b>> {
        if self.related.is_empty() {
            return None;
        }
        Some(Box::new(
            self.related.iter().map(|n| n as &dyn miette::Diagnostic),
        ))
    }
}

/// A label in another file than the diagnostic's primary one.
struct Note {
    text: String,
    span: Span,
    source: NamedSource<std::sync::Arc<String>>,
}

impl fmt::Debug for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Note {}

impl miette::Diagnostic for Note {
    fn severity(&self) -> Option<miette::Severity> {
        Some(miette::Severity::Advice)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some("here".to_string()),
            source_span(self.span),
        ))))
    }
}
