//! What importing the OWASP Core Rule Set costs, at paranoia levels 1 and 2: rules carried
//! over and left out, build time (check, then lower + generate + optimize), module and bundle
//! size; then, for paranoia level 1, the matching strategy each imported pattern got.
//!
//! `cargo bench -p edgepack-benches --bench crs [-- --rules DIR]`: the rules default to where
//! Debian's `modsecurity-crs` installs them. Prints Markdown for `docs/waf.md`. Each level is
//! measured in a process of its own (`--level N`).

use std::path::PathBuf;
use std::time::Instant;

use edgepack_compiler::codegen::automata;
use edgepack_compiler::pipeline::{self, Release};
use edgepack_compiler::plan::MatcherPlan;

/// The budget the WAF gives each pattern's automaton by default (`automaton-budget`).
const BUDGET: usize = 1 << 20;
/// Prefilter literals are cut to this many bytes, as in the code generator.
const LITERAL_LEN: usize = 8;

/// A policy holding only the import, at `paranoia`.
fn policy(rules: &std::path::Path, paranoia: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("edgepack.kdl"),
        format!(
            "edgepack 1\nregion \"local\" zone=\"GLOBAL\"\nwaf {{\n    import \"modsecurity\" path=\"{}\" paranoia={paranoia}\n}}\nroute \"/*\" {{\n    respond 200\n}}\n",
            rules.display()
        ),
    )
    .expect("write policy");
    dir
}

/// Checks, compiles and bundles the import at `paranoia`, and prints its row of the cost
/// table.
fn measure(rules: &std::path::Path, paranoia: u32) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let dir = policy(rules, paranoia);
    let started = Instant::now();
    let checked = edgepack_schema::check(dir.path()).expect("readable");
    let check_time = started.elapsed();
    let policy = checked.policy.as_ref().expect("the import checks clean");
    let waf = policy.waf.as_ref().expect("a waf");
    let left_out: usize = waf.imports.iter().map(|i| i.skipped.len()).sum();
    let started = Instant::now();
    let plan = pipeline::plans(policy, &checked, &[])
        .expect("the region")
        .remove(0);
    let compiled = pipeline::compile(plan).expect("compiles");
    let compile_time = started.elapsed();
    let bundle = pipeline::region_bundle(
        dir.path(),
        "local",
        Release {
            version: 1,
            created: 0,
            expires: None,
        },
        &key,
    )
    .expect("bundle");
    println!(
        "| {paranoia} | {} | {left_out} | {:.2} s | {:.2} s | {} KiB | {} KiB |",
        waf.rules.len(),
        check_time.as_secs_f64(),
        compile_time.as_secs_f64(),
        compiled.wasm.len() / 1024,
        bundle.len() / 1024
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let after = |flag: &str| args.iter().skip_while(|a| *a != flag).nth(1).cloned();
    let rules = after("--rules").map_or_else(
        || PathBuf::from("/usr/share/modsecurity-crs/rules"),
        PathBuf::from,
    );
    if !rules.is_dir() {
        eprintln!(
            "no rule set at {} (apt install modsecurity-crs, or pass --rules DIR)",
            rules.display()
        );
        std::process::exit(2);
    }
    if let Some(paranoia) = after("--level").and_then(|l| l.parse().ok()) {
        measure(&rules, paranoia);
        return;
    }
    println!("| Paranoia level | Rules imported | Left out | Check | Compile | Module | Bundle |");
    println!("|---|---|---|---|---|---|---|");
    // One level per process: a process keeps the automata it built (as one build does for
    // its regions), which would make the second level look cheaper than it is.
    for paranoia in [1, 2] {
        let out = std::process::Command::new(std::env::current_exe().expect("this bench"))
            .arg("--level")
            .arg(paranoia.to_string())
            .arg("--rules")
            .arg(&rules)
            .output()
            .expect("run one level");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let dir = policy(&rules, 1);
    let checked = edgepack_schema::check(dir.path()).expect("readable");
    let policy = checked.policy.as_ref().expect("the import checks clean");
    let plan = pipeline::plans(policy, &checked, &[])
        .expect("the region")
        .remove(0);
    println!();
    println!("| Rule | Parts | Strategy |");
    println!("|---|---|---|");
    for rule in plan.waf.iter().flat_map(|w| &w.rules) {
        let mut strategies = Vec::new();
        for matcher in &rule.matchers {
            match matcher {
                MatcherPlan::Literal(_) => {}
                MatcherPlan::Detect(kind) => {
                    strategies.push(format!(
                        "libinjection ({kind:?}), the node's `detect`, run on every value"
                    ));
                }
                MatcherPlan::Regex(pattern) => {
                    let kib = |d: &automata::PatternDfa| {
                        (d.next.len() * 4 + 2 * 256 + d.eoi_match.len()).div_ceil(1024)
                    };
                    let automaton = match automata::pattern_automaton(pattern, BUDGET) {
                        Ok(automata::PatternAutomaton::Whole(dfa)) => {
                            format!("DFA of {} KiB", kib(&dfa))
                        }
                        Ok(automata::PatternAutomaton::Sequence(seq)) => {
                            let ends_kib = |d: &automata::EndsDfa| {
                                (d.next.len() * 4 + 2 * 256 + d.ends.len()).div_ceil(1024)
                            };
                            let middle = seq.middle.as_ref().map_or(String::new(), |m| {
                                format!(
                                    ", middle DFA of {} KiB run from there marking where it ends",
                                    ends_kib(&m.dfa) + m.starts.len() * 4 / 1024
                                )
                            });
                            format!(
                                "sequence: head DFA of {} KiB marking where it ends{middle}, tail DFA of {} KiB run from there",
                                ends_kib(&seq.head),
                                kib(&seq.tail) + seq.tail_starts.len() * 4 / 1024
                            )
                        }
                        Err(error) => format!("not compiled: {error}"),
                    };
                    strategies.push(match automata::required_literals(pattern, LITERAL_LEN) {
                        Some(literals) => format!(
                            "{automaton}, run when one of {} literals occurs",
                            literals.len()
                        ),
                        None => format!("{automaton}, run on every value"),
                    });
                }
            }
        }
        let literals = rule
            .matchers
            .iter()
            .filter(|m| matches!(m, MatcherPlan::Literal(_)))
            .count();
        if literals > 0 {
            strategies.push(format!(
                "{literals} phrases in the prefilter, each confirmed by its own small DFA"
            ));
        }
        if !rule.also_after.is_empty() {
            strategies.push(format!(
                "matched on {} forms of each value: before decoding and after each step (`multiMatch`)",
                rule.also_after.len() + 1
            ));
        }
        let parts: Vec<String> = rule.parts.iter().map(|p| format!("{p:?}")).collect();
        println!(
            "| {} | {} | {} |",
            rule.name,
            parts.join(", "),
            strategies.join("; ")
        );
    }
}
