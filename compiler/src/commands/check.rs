//! `edgepack check`: report every mistake in one or more policies.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use edgepack_schema::Checked;

use crate::report::{self, HumanStyle, JsonDiagnostic};
use crate::{Exit, Output};

/// Check policies and report every mistake at once.
///
/// Each PATH is a policy: a directory holding `edgepack.kdl`, or a single `.kdl` file.
/// Exit status: 0 when every policy is clean (warnings allowed), 1 when a policy has
/// errors, 2 when a path cannot be read or the arguments are wrong.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policies to check.
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,

    /// How to report: `human` (to stderr), `json` (one document on stdout) or `github`
    /// (workflow commands on stdout, for GitHub Actions annotations).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,

    /// Treat warnings as errors (exit 1 if there are any).
    #[arg(long)]
    pub deny_warnings: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
    Github,
}

#[derive(serde::Serialize)]
struct JsonReport {
    policies: Vec<JsonPolicy>,
    diagnostics: Vec<JsonDiagnostic>,
    errors: usize,
    warnings: usize,
}

#[derive(serde::Serialize)]
struct JsonPolicy {
    path: String,
    ok: bool,
    /// Set when the policy could not be read at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    io_error: Option<String>,
}

pub fn run(args: &CheckArgs, style: HumanStyle) -> Output {
    let mut out = Output::new();
    let mut report = JsonReport {
        policies: Vec::new(),
        diagnostics: Vec::new(),
        errors: 0,
        warnings: 0,
    };
    for path in &args.paths {
        let shown = path.display().to_string();
        let checked = match edgepack_schema::check(path) {
            Ok(checked) => checked,
            Err(error) => {
                let _ = writeln!(out.stderr, "error: {error}");
                out.fail(Exit::Usage);
                report.policies.push(JsonPolicy {
                    path: shown,
                    ok: false,
                    io_error: Some(error.to_string()),
                });
                continue;
            }
        };
        let (errors, warnings) = (checked.error_count(), checked.warning_count());
        report.errors += errors;
        report.warnings += warnings;
        let failed = errors > 0 || (args.deny_warnings && warnings > 0);
        if failed {
            out.fail(Exit::PolicyErrors);
        }
        match args.format {
            Format::Human => {
                out.stderr.push_str(&report::human(
                    &checked.diagnostics,
                    &checked.sources,
                    style,
                ));
                if !failed {
                    let _ = writeln!(out.stderr, "ok: {shown} ({})", describe(&checked));
                }
            }
            Format::Github => out
                .stdout
                .push_str(&report::github(&checked.diagnostics, &checked.sources)),
            Format::Json => report.diagnostics.extend(
                checked
                    .diagnostics
                    .iter()
                    .map(|d| report::json_diagnostic(d, &checked.sources)),
            ),
        }
        report.policies.push(JsonPolicy {
            path: shown,
            ok: !failed,
            io_error: None,
        });
    }
    let summary = report::summary(report.errors, report.warnings);
    match args.format {
        Format::Human => {
            let _ = writeln!(out.stderr, "{summary}");
        }
        Format::Github => {
            let _ = writeln!(out.stdout, "{summary}");
        }
        Format::Json => {
            out.stdout = serde_json::to_string_pretty(&report).unwrap_or_default();
            out.stdout.push('\n');
        }
    }
    out
}

/// `5 regions, 9 routes, 4 WAF rules, 6 tests`
fn describe(checked: &Checked) -> String {
    let Some(policy) = &checked.policy else {
        return String::new();
    };
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    [
        plural(policy.regions.len(), "region"),
        plural(policy.routes.len(), "route"),
        plural(policy.waf.as_ref().map_or(0, |w| w.rules.len()), "WAF rule"),
        plural(policy.tests.len(), "test"),
    ]
    .join(", ")
}
