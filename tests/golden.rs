//! Golden tests: every broken policy under `tests/cases/` beside the diagnostics it must
//! produce, rendered as `edgepack check` renders them (no colour, 100 columns).
//!
//! A case is a `NAME.kdl` file with `NAME.out` beside it, or a directory holding
//! `edgepack.kdl` (a multi-file policy) with `expected.out` inside. The expected file starts
//! with `exit: N`, then holds the command's stderr. `BLESS=1 cargo test --test golden`
//! rewrites the expectations; review the diff like code.

use std::path::{Path, PathBuf};

use edgepack_compiler::commands::check::{CheckArgs, Format, run};
use edgepack_compiler::report::HumanStyle;
use edgepack_tests::kdl_files;

/// Cases relative to this crate's directory, so rendered file names are stable.
fn cases() -> Vec<(PathBuf, PathBuf)> {
    let mut cases = Vec::new();
    let mut stack = vec![PathBuf::from("cases")];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("tests/cases is readable")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                if path.join("edgepack.kdl").is_file() {
                    let expected = path.join("expected.out");
                    cases.push((path, expected));
                } else {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "kdl") {
                cases.push((path.clone(), path.with_extension("out")));
            }
        }
    }
    cases.sort();
    cases
}

fn render(case: &Path) -> String {
    let args = CheckArgs {
        paths: vec![case.to_path_buf()],
        format: Format::Human,
        deny_warnings: false,
    };
    let output = run(&args, HumanStyle::GOLDEN);
    let stderr: String = output
        .stderr
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n");
    format!("exit: {}\n{}\n", output.exit as u8, stderr)
}

#[test]
fn golden_cases_reproduce() {
    let bless = std::env::var_os("BLESS").is_some();
    let cases = cases();
    assert!(cases.len() >= 30, "only {} golden cases", cases.len());
    let mut failures = Vec::new();
    for (case, expected_path) in &cases {
        let actual = render(case);
        let expected = std::fs::read_to_string(expected_path).unwrap_or_default();
        if actual == expected {
            continue;
        }
        if bless {
            std::fs::write(expected_path, &actual).expect("write expectation");
        } else {
            failures.push(format!(
                "{}: output differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
                case.display(),
                expected_path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases differ (BLESS=1 rewrites them):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// Every diagnostic code the language defines is exercised by at least one case.
#[test]
fn every_diagnostic_code_has_a_case() {
    let source = std::fs::read_to_string("../schema/src/diagnostics.rs").expect("diagnostics.rs");
    let mut codes: Vec<&str> = source
        .split('"')
        .filter(|s| s.starts_with("edgepack::") && !s.contains(' '))
        .collect();
    codes.sort();
    codes.dedup();
    assert!(codes.len() > 20, "found only {} codes", codes.len());
    let mut expected_outputs = String::new();
    for (_, expected) in cases() {
        expected_outputs.push_str(&std::fs::read_to_string(expected).unwrap_or_default());
    }
    let missing: Vec<&str> = codes
        .into_iter()
        .filter(|code| !expected_outputs.contains(&format!("{code}\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "codes without a golden case: {missing:?}"
    );
}

/// `edgepack fmt` is idempotent on every golden case that parses, and keeps its meaning.
#[test]
fn fmt_is_idempotent_on_golden_cases() {
    for file in kdl_files(Path::new("cases")) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let Ok(once) = edgepack_schema::fmt::format(edgepack_schema::FileId(0), &text) else {
            continue;
        };
        let twice = edgepack_schema::fmt::format(edgepack_schema::FileId(0), &once)
            .unwrap_or_else(|_| panic!("{}: formatted output does not parse", file.display()));
        assert_eq!(once, twice, "{}: fmt is not idempotent", file.display());
        edgepack_tests::assert_same_document(&text, &once, &file);
    }
}

/// docs/language.md lists exactly the codes the language defines.
#[test]
fn diagnostic_codes_are_documented() {
    let source = std::fs::read_to_string("../schema/src/diagnostics.rs").expect("diagnostics.rs");
    let docs = std::fs::read_to_string("../docs/language.md").expect("language.md");
    let mut defined: Vec<&str> = source
        .split('"')
        .filter(|s| s.starts_with("edgepack::") && !s.contains(' '))
        .collect();
    defined.sort();
    defined.dedup();
    let mut documented: Vec<&str> = docs
        .split('`')
        .filter(|s| s.starts_with("edgepack::") && !s.contains(' '))
        .collect();
    documented.sort();
    documented.dedup();
    assert_eq!(
        defined, documented,
        "docs/language.md and diagnostics.rs disagree"
    );
}
