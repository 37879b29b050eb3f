//! The shipped examples are clean: `check` finds nothing (not even warnings), and they are
//! formatted, so `fmt` is idempotent on them.

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
            checked.diagnostics.is_empty(),
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
