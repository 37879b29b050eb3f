//! `edgepack fmt`: the canonical layout of a policy file, keeping every comment.
//!
//! The layout: one node per line, four spaces per level, one space between entries, `key=value`
//! without spaces, children blocks opened on the node's line, at most one blank line between
//! nodes and none at the start of a block. Values keep the form they were written in (a raw
//! string stays raw), and comments, including `/-` commented-out nodes, keep their place and
//! their inner relative indentation. Formatting is idempotent and never changes what the
//! document means; both are tested on every example and golden case.

use kdl::{KdlDocument, KdlEntry, KdlNode};

use crate::diagnostic::Diagnostic;
use crate::diagnostics as diag;
use crate::source::{FileId, Span};

const INDENT: &str = "    ";

/// Formats the KDL text of one file, or returns its syntax errors.
pub fn format(file: FileId, text: &str) -> Result<String, Vec<Diagnostic>> {
    let doc = KdlDocument::parse_v2(text).map_err(|error| {
        error
            .diagnostics
            .iter()
            .map(|d| {
                let start = d.span.offset().min(text.len());
                let end = (start + d.span.len()).min(text.len());
                diag::syntax(
                    Span::new(file, start, end),
                    d.message.as_deref().unwrap_or("unexpected input"),
                    d.label.as_deref(),
                    d.help.as_deref(),
                )
            })
            .collect::<Vec<_>>()
    })?;
    let mut printer = Printer {
        out: String::with_capacity(text.len() + 64),
        src: text,
    };
    if let Some(format) = doc.format() {
        printer.decor_block(&format.leading, 0, 0, true);
    }
    printer.nodes(&doc, 0);
    if let Some(format) = doc.format() {
        printer.decor_block(&format.trailing, 0, 0, doc.nodes().is_empty());
    }
    let mut out = printer.out;
    while out.ends_with("\n\n") {
        out.pop();
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

struct Printer<'s> {
    out: String,
    src: &'s str,
}

/// The column (in bytes) at which `offset` sits on its line.
fn column_before(src: &str, offset: usize) -> usize {
    let offset = offset.min(src.len());
    offset - src[..offset].rfind('\n').map_or(0, |i| i + 1)
}

fn indent(depth: usize) -> String {
    INDENT.repeat(depth)
}

impl Printer<'_> {
    fn nodes(&mut self, doc: &KdlDocument, depth: usize) {
        for (index, node) in doc.nodes().iter().enumerate() {
            self.node(node, depth, index == 0);
        }
    }

    fn node(&mut self, node: &KdlNode, depth: usize, first_in_block: bool) {
        let format = node.format();
        if let Some(format) = format {
            let node_start = node.span().offset();
            let leading_start = node_start.saturating_sub(format.leading.len());
            let column = column_before(self.src, leading_start);
            self.decor_block(&format.leading, column, depth, first_in_block);
        }
        self.out.push_str(&indent(depth));
        if let Some(ty) = node.ty() {
            self.out.push('(');
            self.out.push_str(&ty.to_string());
            self.out.push(')');
        }
        self.out.push_str(&node.name().to_string());
        for entry in node.entries() {
            self.entry(entry, depth);
        }
        if let Some(children) = node.children() {
            let before = format.map_or("", |f| f.before_children.as_str());
            self.out.push_str(&inline_decor(before, depth));
            self.out.push('{');
            let trailing = children.format().map_or("", |f| f.trailing.as_str());
            let leading = children.format().map_or("", |f| f.leading.as_str());
            if children.nodes().is_empty()
                && trailing.trim().is_empty()
                && leading.trim().is_empty()
            {
                self.out.push('}');
            } else {
                self.out.push('\n');
                self.decor_block(leading, 0, depth + 1, true);
                self.nodes(children, depth + 1);
                self.decor_block(trailing, 0, depth + 1, children.nodes().is_empty());
                trim_trailing_blank_lines(&mut self.out);
                self.out.push_str(&indent(depth));
                self.out.push('}');
            }
        }
        if let Some(format) = format {
            let before_terminator = format.before_terminator.trim();
            if !before_terminator.is_empty() {
                self.out.push(' ');
                self.out.push_str(before_terminator);
            }
            let terminator = format.terminator.trim();
            if terminator.starts_with("//") {
                self.out.push(' ');
                self.out.push_str(terminator);
            }
            let trailing = format.trailing.trim();
            if !trailing.is_empty() {
                self.out.push(' ');
                self.out.push_str(trailing);
            }
        }
        self.out.push('\n');
    }

    fn entry(&mut self, entry: &KdlEntry, depth: usize) {
        let format = entry.format();
        self.out.push_str(&inline_decor(
            format.map_or(" ", |f| f.leading.as_str()),
            depth,
        ));
        if let Some(name) = entry.name() {
            self.out.push_str(&name.to_string());
            if let Some(f) = format {
                self.out.push_str(f.after_key.trim());
            }
            self.out.push('=');
            if let Some(f) = format {
                self.out.push_str(f.after_eq.trim());
            }
        }
        if let Some(ty) = entry.ty() {
            self.out.push('(');
            self.out.push_str(&ty.to_string());
            self.out.push(')');
        }
        match format {
            Some(f) if !f.value_repr.is_empty() => self.out.push_str(&f.value_repr),
            _ => self.out.push_str(&entry.value().to_string()),
        }
        if let Some(f) = format {
            let trailing = f.trailing.trim();
            if !trailing.is_empty() {
                self.out.push(' ');
                self.out.push_str(trailing);
            }
        }
    }

    /// Prints whitespace-and-comment text that stands on lines of its own (before a node,
    /// or at the end of a block), re-indented to `depth` with relative indentation kept.
    fn decor_block(
        &mut self,
        decor: &str,
        first_column: usize,
        depth: usize,
        at_block_start: bool,
    ) {
        if decor.trim().is_empty() {
            // After a newline terminator one more newline is a blank line; mid-line, two.
            let newlines_for_blank = if first_column == 0 { 1 } else { 2 };
            if !at_block_start && decor.matches('\n').count() >= newlines_for_blank {
                self.blank_line();
            }
            return;
        }
        let pieces: Vec<&str> = decor.split('\n').collect();
        let mut lines: Vec<Option<(usize, &str)>> = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let is_last = i + 1 == pieces.len();
            let content = piece.trim();
            if content.is_empty() {
                // The whitespace after the last newline is the node's own indentation.
                if !is_last {
                    lines.push(None);
                }
                continue;
            }
            let leading_ws = piece.len() - piece.trim_start().len();
            let column = leading_ws + if i == 0 { first_column } else { 0 };
            lines.push(Some((column, content)));
        }
        // Text that follows a `;` on the same line starts with no line break: not a blank.
        if pieces.len() > 1 && pieces[0].trim().is_empty() && first_column > 0 {
            lines.remove(0);
        }
        let min_column = lines.iter().flatten().map(|(c, _)| *c).min().unwrap_or(0);
        let mut previous_blank = at_block_start;
        let base = indent(depth);
        for line in lines {
            match line {
                None => {
                    if !previous_blank {
                        self.blank_line();
                    }
                    previous_blank = true;
                }
                Some((column, content)) => {
                    self.out.push_str(&base);
                    self.out.push_str(&" ".repeat(column - min_column));
                    self.out.push_str(content);
                    self.out.push('\n');
                    previous_blank = false;
                }
            }
        }
    }

    fn blank_line(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with("\n\n") && !self.out.ends_with("{\n") {
            self.out.push('\n');
        }
    }
}

fn trim_trailing_blank_lines(out: &mut String) {
    while out.ends_with("\n\n") {
        out.pop();
    }
}

/// Whitespace and comments between two parts of one node: a single space, or the comments
/// kept on the line with line continuations (`\`) kept as line breaks.
fn inline_decor(decor: &str, depth: usize) -> String {
    if decor.trim().is_empty() {
        return " ".into();
    }
    let continuation = indent(depth + 1);
    let pieces: Vec<&str> = decor.split('\n').collect();
    let mut out = String::from(" ");
    for (i, piece) in pieces.iter().enumerate() {
        let content = piece.trim();
        if i > 0 {
            out.push('\n');
            out.push_str(&continuation);
        }
        if !content.is_empty() {
            out.push_str(content);
            if i + 1 == pieces.len() {
                out.push(' ');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(text: &str) -> String {
        format(FileId(0), text).unwrap()
    }

    fn same_meaning(a: &str, b: &str) {
        let mut x = KdlDocument::parse_v2(a).unwrap();
        let mut y = KdlDocument::parse_v2(b).unwrap();
        x.clear_format_recursive();
        y.clear_format_recursive();
        assert_eq!(x.to_string(), y.to_string());
    }

    #[test]
    fn canonical_layout_keeps_comments() {
        let text = "// head\n\n\nedgepack   1 // version\nzone \"EU\" {   countries \"AT\"   /* inline */ \"DE\" // trailing\n  // inside\n}\nroute \"/y\" key  =  \"v\"; route \"/z\"\n/-route \"/x\" {\n      respond 200\n  }\n// end\n";
        let out = fmt(text);
        assert_eq!(
            out,
            "// head\n\nedgepack 1 // version\nzone \"EU\" {\n    countries \"AT\" /* inline */ \"DE\" // trailing\n    // inside\n}\nroute \"/y\" key=\"v\"\nroute \"/z\"\n/-route \"/x\" {\n      respond 200\n  }\n// end\n"
        );
        same_meaning(text, &out);
        assert_eq!(fmt(&out), out);
    }

    #[test]
    fn keeps_raw_strings_and_line_continuations() {
        let text = "rule \"x\" {\n regex #\"(?i)\\bunion\"#\n}\ncountries \"AT\" \\\n     \"DE\"\n";
        let out = fmt(text);
        assert!(out.contains("regex #\"(?i)\\bunion\"#"), "{out}");
        assert!(out.contains("countries \"AT\" \\\n    \"DE\""), "{out}");
        same_meaning(text, &out);
        assert_eq!(fmt(&out), out);
    }

    #[test]
    fn empty_and_blank_documents() {
        assert_eq!(fmt(""), "");
        assert_eq!(fmt("\n\n"), "");
        assert_eq!(fmt("a {}\n"), "a {}\n");
    }
}
