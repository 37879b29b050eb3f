//! The edgepack policy language: KDL files in, a validated [`Policy`] out.
//!
//! The stages, each a function from one type to the next:
//! 1. `load`: find the entry file, read it and everything it includes, parse the KDL;
//! 2. `decode`: turn each node into typed policy items, checking each node on its own;
//! 3. `validate`: check what spans nodes (names, references, route ambiguity, residency).
//!
//! [`check`] runs them in order and returns every diagnostic found; it hands out a
//! [`Policy`] only when there are no errors, so later stages never see an invalid policy.
//! [`fmt::format`] lays a file out canonically. This crate knows nothing about Wasm,
//! bundles or the node.

pub mod component;
pub mod country;
mod decode;
pub mod diagnostic;
pub mod diagnostics;
pub mod fmt;
pub mod keys;
mod load;
mod modsecurity;
pub mod pattern;
pub mod policy;
mod reader;
pub mod seclang;
pub mod source;
pub mod units;
mod validate;
pub mod waf_regex;

use std::path::Path;

pub use decode::HTTP_METHODS;
pub use diagnostic::{Diagnostic, Severity};
pub use load::{ENTRY_FILE, LoadError};
pub use modsecurity::{SkippedRule, WafImport};
pub use policy::Policy;
pub use source::{FileId, Sources, Span, Spanned};

/// The outcome of checking one policy.
#[derive(Debug)]
pub struct Checked {
    pub sources: Sources,
    /// Every problem found, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// The policy, when it has no errors (warnings allowed).
    pub policy: Option<Policy>,
}

impl Checked {
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }
}

/// Loads, decodes and validates the policy at `path` (a directory holding `edgepack.kdl`,
/// or one `.kdl` file). Mistakes in the policy are diagnostics; only a policy that cannot be
/// read at all is an `Err`.
pub fn check(path: &Path) -> Result<Checked, LoadError> {
    let (mut loaded, mut ctx) = load::load(path)?;
    let policy = decode::decode(&loaded, &mut ctx);
    for (path, name, relative, text) in std::mem::take(&mut ctx.read_during_decode) {
        loaded.sources.add(&path, name, relative, text);
    }
    validate::validate(&policy, &ctx.partially_defined, &mut ctx.diags);
    let mut diagnostics = ctx.diags;
    diagnostic::sort(&mut diagnostics);
    diagnostics.dedup();
    let has_errors = diagnostics.iter().any(Diagnostic::is_error);
    Ok(Checked {
        sources: loaded.sources,
        diagnostics,
        policy: (!has_errors).then_some(policy),
    })
}
