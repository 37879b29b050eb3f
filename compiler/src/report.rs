//! Rendering diagnostics for people (miette's graphical report), for tools (JSON) and for
//! GitHub Actions (workflow commands).
//!
//! `edgepack check` and the golden tests both render through here, so what the golden files
//! hold is exactly what users see.

use std::fmt::Write as _;

use edgepack_schema::{Diagnostic, Severity, Sources};
use miette::{GraphicalReportHandler, GraphicalTheme};
use serde::Serialize;

/// How diagnostics are shown to people.
#[derive(Clone, Copy, Debug)]
pub struct HumanStyle {
    pub color: bool,
    pub width: usize,
}

impl HumanStyle {
    /// What the golden files use: no colour, 100 columns.
    pub const GOLDEN: HumanStyle = HumanStyle {
        color: false,
        width: 100,
    };

    /// Colour when `stream_is_terminal` and `NO_COLOR` is unset; width from `COLUMNS`.
    pub fn for_terminal(stream_is_terminal: bool) -> HumanStyle {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .filter(|w: &usize| *w >= 40)
            .unwrap_or(100);
        HumanStyle {
            color: stream_is_terminal && !no_color,
            width,
        }
    }
}

/// Renders diagnostics as miette draws them, one after the other.
pub fn human(diagnostics: &[Diagnostic], sources: &Sources, style: HumanStyle) -> String {
    let theme = if style.color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(style.width)
        .with_links(false)
        .with_context_lines(1);
    let mut out = String::new();
    for diagnostic in diagnostics {
        let bound = diagnostic.bind(sources);
        if handler.render_report(&mut out, &bound).is_err() {
            // Rendering into a String cannot fail; keep the message if it somehow does.
            let _ = writeln!(out, "{}: {}", diagnostic.code, diagnostic.message);
        }
        out.push('\n');
    }
    out
}

/// `2 errors, 1 warning`
pub fn summary(errors: usize, warnings: usize) -> String {
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    format!(
        "{}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    )
}

/// A position in a file, 1-based, columns in characters.
#[derive(Debug, Serialize)]
pub struct Position {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
}

#[derive(Debug, Serialize)]
pub struct JsonLabel {
    #[serde(flatten)]
    pub position: Position,
    pub message: String,
}

/// One diagnostic in machine-readable form.
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub help: Option<String>,
    #[serde(flatten)]
    pub position: Option<Position>,
    pub labels: Vec<JsonLabel>,
}

fn position(sources: &Sources, span: edgepack_schema::Span) -> Position {
    let (line, column) = sources.line_col(span.file, span.start);
    let (end_line, end_column) = sources.line_col(span.file, span.end);
    Position {
        file: sources.file(span.file).name.clone(),
        line,
        column,
        end_line,
        end_column,
    }
}

pub fn json_diagnostic(diagnostic: &Diagnostic, sources: &Sources) -> JsonDiagnostic {
    JsonDiagnostic {
        code: diagnostic.code,
        severity: diagnostic.severity,
        message: diagnostic.message.clone(),
        help: diagnostic.help.clone(),
        position: diagnostic.primary_span().map(|s| position(sources, s)),
        labels: diagnostic
            .labels
            .iter()
            .map(|l| JsonLabel {
                position: position(sources, l.span),
                message: l.text.clone(),
            })
            .collect(),
    }
}

/// GitHub Actions workflow commands, one line per diagnostic.
pub fn github(diagnostics: &[Diagnostic], sources: &Sources) -> String {
    let mut out = String::new();
    for diagnostic in diagnostics {
        let level = match diagnostic.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut properties = Vec::new();
        if let Some(span) = diagnostic.primary_span() {
            let p = position(sources, span);
            properties.push(format!("file={}", escape_property(&p.file)));
            properties.push(format!("line={}", p.line));
            properties.push(format!("col={}", p.column));
            properties.push(format!("endLine={}", p.end_line));
            properties.push(format!("endColumn={}", p.end_column));
        }
        properties.push(format!("title={}", escape_property(diagnostic.code)));
        let mut message = diagnostic.message.clone();
        if let Some(help) = &diagnostic.help {
            message.push_str("\nhelp: ");
            message.push_str(help);
        }
        let _ = writeln!(
            out,
            "::{level} {}::{}",
            properties.join(","),
            escape_data(&message)
        );
    }
    out
}

fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_pluralise() {
        assert_eq!(summary(2, 1), "2 errors, 1 warning");
        assert_eq!(summary(0, 0), "0 errors, 0 warnings");
    }

    #[test]
    fn github_commands_escape_their_fields() {
        assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
        assert_eq!(escape_data("50%\nnext"), "50%25%0Anext");
    }
}
