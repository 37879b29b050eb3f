//! The shipped examples are clean: `check` finds nothing (not even warnings) beyond a rule
//! set import's list of the rules it leaves out, and they are formatted, so `fmt` is
//! idempotent on them. The CRS variant of the global API is that API plus the import.

use edgepack_tests::{example_policies, kdl_files};

#[test]
fn examples_check_clean() {
    let policies = example_policies();
    assert!(
        policies.len() >= 2,
        "expected at least two example policies"
    );
    for policy in policies {
        let checked = edgepack_schema::check(&policy).expect("example is readable");
        let rendered = edgepack_compiler::report::human(
            &checked.diagnostics,
            &checked.sources,
            edgepack_compiler::report::HumanStyle::GOLDEN,
        );
        assert!(
            checked
                .diagnostics
                .iter()
                .all(|d| d.code.starts_with("edgepack::import::") && !d.is_error()),
            "{} is not clean:\n{rendered}",
            policy.display()
        );
        assert!(checked.policy.is_some());
    }
}

#[test]
fn examples_are_formatted() {
    for policy in example_policies() {
        for file in kdl_files(&policy) {
            let text = std::fs::read_to_string(&file).expect("read example");
            let formatted = edgepack_schema::fmt::format(edgepack_schema::FileId(0), &text)
                .expect("example parses");
            assert_eq!(text, formatted, "{} is not formatted", file.display());
        }
    }
}

/// `examples/global-api-crs` is `examples/global-api` with one `import` node in its WAF and
/// tests of its own after the API's: the two cannot drift apart.
#[test]
fn the_crs_example_is_the_global_api_plus_the_import() {
    let root = edgepack_tests::workspace_root().join("examples");
    let api = root.join("global-api");
    let crs = root.join("global-api-crs");
    let read = |p: std::path::PathBuf| {
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    for file in [
        "keys/auth.pem",
        "functions/ml-infer.wasm",
        "functions/whoami.wasm",
    ] {
        assert!(
            read(api.join(file)) == read(crs.join(file)),
            "{file} differs"
        );
    }
    let text = |p: std::path::PathBuf| String::from_utf8(read(p)).expect("UTF-8");
    let strip_header = |s: String| s.lines().skip(2).collect::<Vec<_>>().join("\n");
    assert_eq!(
        strip_header(text(api.join("edgepack.kdl"))),
        strip_header(text(crs.join("edgepack.kdl"))),
        "edgepack.kdl differs beyond its opening comment"
    );
    let import_lines: Vec<String> = text(crs.join("waf.kdl"))
        .lines()
        .filter(|l| !text(api.join("waf.kdl")).lines().any(|a| a == *l))
        .map(str::to_string)
        .collect();
    assert_eq!(
        import_lines.len(),
        3,
        "waf.kdl must differ by the import and its comment only: {import_lines:?}"
    );
    assert!(
        import_lines[2]
            .trim_start()
            .starts_with("import \"modsecurity\"")
    );
    assert!(
        text(crs.join("tests.kdl")).starts_with(&text(api.join("tests.kdl"))),
        "tests.kdl must start with the API's tests"
    );
}
