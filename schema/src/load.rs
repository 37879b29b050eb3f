//! Finding, reading and parsing a policy's files: the entry file and everything it includes.
//!
//! The result is every top-level node of the policy in reading order (an `include` splices
//! the included file's nodes in its place), with the file each came from. Syntax errors in
//! one file are reported and that file skipped; the other files are still read, so one run
//! reports as much as it can. This stage knows nothing about what nodes mean beyond
//! `edgepack` and `include`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kdl::{KdlDocument, KdlNode};

use crate::diagnostics as diag;
use crate::policy::LANGUAGE_VERSION;
use crate::reader::{Ctx, NodeReader, ReadProblem, io_reason, read_bounded, span_of};
use crate::source::{FileId, Sources, Span};

/// The entry file of a policy directory.
pub const ENTRY_FILE: &str = "edgepack.kdl";

/// Files one policy may consist of, at most.
const MAX_FILES: usize = 512;

/// Why a policy could not be read at all (as opposed to a mistake inside it).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: the directory has no {ENTRY_FILE}")]
    NoEntryFile { path: String },
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
}

pub(crate) struct Loaded {
    pub sources: Sources,
    pub docs: Vec<(FileId, KdlDocument)>,
    /// Top-level nodes in policy order, as (index into `docs`, index of the node).
    pub order: Vec<(usize, usize)>,
}

impl Loaded {
    pub fn nodes(&self) -> impl Iterator<Item = (FileId, &KdlNode)> {
        self.order.iter().map(|(d, n)| {
            let (file, doc) = &self.docs[*d];
            (*file, &doc.nodes()[*n])
        })
    }
}

/// Reads the policy at `path`: a directory holding `edgepack.kdl`, or one `.kdl` file.
pub(crate) fn load(path: &Path) -> Result<(Loaded, Ctx), LoadError> {
    let shown = path.to_string_lossy().trim_end_matches('/').to_string();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound {
            path: shown.clone(),
        },
        _ => LoadError::Unreadable {
            path: shown.clone(),
            reason: io_reason(&e),
        },
    })?;
    let (entry, display_dir) = if meta.is_dir() {
        let entry = path.join(ENTRY_FILE);
        if !entry.is_file() {
            return Err(LoadError::NoEntryFile { path: shown });
        }
        (entry, shown.clone())
    } else {
        let parent = Path::new(&shown)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        (path.to_path_buf(), parent)
    };
    let entry = entry.canonicalize().map_err(|e| LoadError::Unreadable {
        path: shown.clone(),
        reason: io_reason(&e),
    })?;
    let root = entry
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut loader = Loader {
        ctx: Ctx {
            diags: Vec::new(),
            root,
            file_dirs: Vec::new(),
            partially_defined: Default::default(),
            read_during_decode: Vec::new(),
        },
        sources: Sources::new(),
        docs: Vec::new(),
        order: Vec::new(),
        display_dir,
        seen: HashMap::new(),
        stack: Vec::new(),
    };
    let entry_name = loader.display_name(ENTRY_FILE, &entry);
    let bytes = read_bounded(&entry).map_err(|e| LoadError::Unreadable {
        path: entry_name.clone(),
        reason: match e {
            ReadProblem::TooLarge => "the file is too large".into(),
            ReadProblem::Io(reason) => reason,
        },
    })?;
    loader.load_file(&entry, entry_name, bytes, true, None);
    Ok((
        Loaded {
            sources: loader.sources,
            docs: loader.docs,
            order: loader.order,
        },
        loader.ctx,
    ))
}

struct Loader {
    ctx: Ctx,
    sources: Sources,
    docs: Vec<(FileId, KdlDocument)>,
    order: Vec<(usize, usize)>,
    display_dir: String,
    /// Files read so far, by canonical path, with the include that read them.
    seen: HashMap<PathBuf, Option<Span>>,
    /// Files being read, outermost first, for cycle reports.
    stack: Vec<(PathBuf, String)>,
}

impl Loader {
    fn display_name(&self, relative: &str, absolute: &Path) -> String {
        let relative = absolute
            .strip_prefix(&self.ctx.root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| relative.to_string());
        if self.display_dir.is_empty() || self.display_dir == "." {
            relative
        } else {
            format!("{}/{}", self.display_dir, relative)
        }
    }

    fn load_file(
        &mut self,
        path: &Path,
        name: String,
        bytes: Vec<u8>,
        is_entry: bool,
        included_at: Option<Span>,
    ) {
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let offset = e.utf8_error().valid_up_to();
                let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                let file = self.add_source(path, name, text);
                self.ctx
                    .diags
                    .push(diag::not_utf8(Span::new(file, offset, offset + 1), offset));
                return;
            }
        };
        let file = self.add_source(path, name.clone(), text);
        let text = self.sources.file(file).text.clone();
        self.seen.insert(path.to_path_buf(), included_at);
        let doc = match KdlDocument::parse_v2(&text) {
            Ok(doc) => doc,
            Err(error) => {
                for d in &error.diagnostics {
                    let start = d.span.offset().min(text.len());
                    let end = (start + d.span.len()).min(text.len());
                    let message = d.message.as_deref().unwrap_or("unexpected input");
                    self.ctx.diags.push(diag::syntax(
                        Span::new(file, start, end),
                        message,
                        d.label.as_deref(),
                        d.help.as_deref(),
                    ));
                }
                if error.diagnostics.is_empty() {
                    self.ctx.diags.push(diag::syntax(
                        Span::new(file, 0, 0),
                        "unreadable document",
                        None,
                        None,
                    ));
                }
                return;
            }
        };
        let doc_index = self.docs.len();
        self.docs.push((file, doc));
        self.stack.push((path.to_path_buf(), name));
        let node_count = self.docs[doc_index].1.nodes().len();
        if is_entry && node_count == 0 {
            self.ctx
                .diags
                .push(diag::version_missing(Span::new(file, 0, 0)));
        }
        for node_index in 0..node_count {
            let node = &self.docs[doc_index].1.nodes()[node_index];
            match node.name().value() {
                "edgepack" => {
                    let node = node.clone();
                    self.check_version(file, &node, node_index == 0);
                }
                "include" => {
                    let node = node.clone();
                    self.include(file, &node);
                }
                _ => {
                    if node_index == 0 && is_entry {
                        self.ctx
                            .diags
                            .push(diag::version_missing(span_of(file, node.name().span())));
                    }
                    self.order.push((doc_index, node_index));
                }
            }
        }
        self.stack.pop();
    }

    fn add_source(&mut self, path: &Path, name: String, text: String) -> FileId {
        let relative = path
            .strip_prefix(&self.ctx.root)
            .map(|p| {
                p.components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_else(|_| name.clone());
        let file = self.sources.add(path, name, relative, text);
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.ctx.root.clone());
        self.ctx.file_dirs.push(dir);
        file
    }

    fn check_version(&mut self, file: FileId, node: &KdlNode, is_first: bool) {
        let mut reader = NodeReader::new(&mut self.ctx, file, node);
        if !is_first {
            self.ctx
                .diags
                .push(diag::version_misplaced(reader.name_span));
        }
        if let Some(val) = reader.req_arg(&mut self.ctx, 0, "the language version", "edgepack 1")
            && let Some(version) = self.ctx.integer(val, "edgepack 1")
            && version.value != LANGUAGE_VERSION
        {
            self.ctx.diags.push(diag::version_unsupported(
                val.span,
                &version.value.to_string(),
            ));
        }
        reader.no_children(&mut self.ctx);
        reader.finish(&mut self.ctx);
    }

    fn include(&mut self, file: FileId, node: &KdlNode) {
        let mut reader = NodeReader::new(&mut self.ctx, file, node);
        let written = reader
            .req_arg(
                &mut self.ctx,
                0,
                "the file to include",
                "include \"waf.kdl\"",
            )
            .and_then(|v| self.ctx.string(v, "include \"waf.kdl\""));
        reader.no_children(&mut self.ctx);
        reader.finish(&mut self.ctx);
        let Some(written) = written else { return };
        let Some(path) = self.ctx.policy_path(file, &written) else {
            return;
        };
        let canonical = path
            .absolute
            .canonicalize()
            .unwrap_or(path.absolute.clone());
        if let Some(position) = self.stack.iter().position(|(p, _)| *p == canonical) {
            let mut chain: Vec<String> = self.stack[position..]
                .iter()
                .map(|(_, name)| name.clone())
                .collect();
            chain.push(self.stack[position].1.clone());
            self.ctx
                .diags
                .push(diag::include_cycle(written.span, &chain));
            return;
        }
        if let Some(first) = self.seen.get(&canonical) {
            let first = first.unwrap_or(Span::new(FileId(0), 0, 0));
            self.ctx
                .diags
                .push(diag::include_repeated(written.span, first, &written));
            return;
        }
        if self.sources.files().count() >= MAX_FILES {
            self.ctx.diags.push(diag::file_unreadable(
                written.span,
                &written,
                "the policy has too many files",
            ));
            return;
        }
        let Some(bytes) = self.ctx.read(&path) else {
            return;
        };
        let name = self.display_name(&path.relative, &canonical);
        self.load_file(&canonical, name, bytes, false, Some(written.span));
    }
}
