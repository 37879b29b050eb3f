//! Warm `decide`: the compiled module (instance reused, request copy included) against the
//! reference evaluator on the same requests, for the main example and for generated policies
//! of 1,000 routes with 10 and with 100 WAF rules, on small requests and on requests with
//! 2 KB of query and body; and, where Debian's `modsecurity-crs` is installed, for
//! `examples/global-api-crs` (the CRS at paranoia level 1) on those and on the comparison's
//! 1 KB query.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use edgepack_benches::{
    CRS_RULES, compile_policy_dir, generated_policy, large_request, query_1kb_request,
    small_request, workspace_root,
};
use edgepack_compiler::eval::{self, Evaluator};

fn decide_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = policies(dir.path());
    let mut group = c.benchmark_group("decide");
    for Policy { name, path, crs } in &policies {
        let (plan, mut instance) = compile_policy_dir(path);
        let evaluator = Evaluator::new(&plan);
        let body_limit = plan.waf.as_ref().map_or(0, |w| w.body_limit);
        for (size, request) in requests(*crs, &plan) {
            let expected = evaluator.eval(&eval::parse(&request, body_limit).expect("parses"));
            assert_eq!(
                instance.decide(&request).expect("decides"),
                expected,
                "{name}/{size}"
            );
            let mut decision = edgepack_bundles::abi::Decision::default();
            group.bench_with_input(
                BenchmarkId::new(format!("module/{name}"), size),
                &request,
                |b, r| b.iter(|| instance.decide_into(r, &mut decision).expect("decides")),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("evaluator/{name}"), size),
                &request,
                |b, r| b.iter(|| evaluator.eval(&eval::parse(r, body_limit).expect("parses"))),
            );
        }
    }
    group.finish();
}

/// A policy the benches decide with.
struct Policy {
    name: String,
    path: std::path::PathBuf,
    /// Imports the CRS: measured on the comparison's 1 KB query as well.
    crs: bool,
}

/// The example; generated policies of 1,000 routes with 10 and with 100 WAF rules, written
/// under `dir`; and `examples/global-api-crs` where the CRS it imports is installed.
fn policies(dir: &std::path::Path) -> Vec<Policy> {
    let mut policies = vec![Policy {
        name: "global-api".to_string(),
        path: workspace_root().join("examples/global-api"),
        crs: false,
    }];
    for rules in [10, 100] {
        let path = dir.join(format!("gen-{rules}"));
        std::fs::create_dir_all(&path).expect("mkdir");
        std::fs::write(path.join("edgepack.kdl"), generated_policy(1000, rules)).expect("write");
        policies.push(Policy {
            name: format!("1000-routes-{rules}-rules"),
            path,
            crs: false,
        });
    }
    if std::path::Path::new(CRS_RULES).is_dir() {
        policies.push(Policy {
            name: "global-api-crs".to_string(),
            path: workspace_root().join("examples/global-api-crs"),
            crs: true,
        });
    } else {
        eprintln!("{CRS_RULES} missing (apt install modsecurity-crs): the CRS rows are left out");
    }
    policies
}

/// The requests each policy is measured on: small and 2 KB, and for the CRS the
/// comparison's 1 KB query as well.
fn requests(
    crs: bool,
    plan: &edgepack_compiler::plan::RegionPlan,
) -> Vec<(&'static str, edgepack_bundles::request::Request)> {
    let mut requests = vec![("small", small_request(plan)), ("2KB", large_request(plan))];
    if crs {
        requests.push(("1KB-query", query_1kb_request(plan)));
    }
    requests
}

/// Median time per call of `f` over `rounds` batches of `batch` calls.
fn median_ns(mut f: impl FnMut(), batch: u32, rounds: usize) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = std::time::Instant::now();
            for _ in 0..batch {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(batch)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[rounds / 2]
}

/// One comparable table: module and evaluator measured back to back in this process, with
/// their ratio, and the cost of 100 WAF rules relative to 10.
fn summary(_: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows = Vec::new();
    for Policy { name, path, crs } in &policies(dir.path()) {
        let (plan, mut instance) = compile_policy_dir(path);
        let evaluator = Evaluator::new(&plan);
        let body_limit = plan.waf.as_ref().map_or(0, |w| w.body_limit);
        let mut decision = edgepack_bundles::abi::Decision::default();
        for (size, request) in requests(*crs, &plan) {
            let module = median_ns(
                || {
                    instance
                        .decide_into(&request, &mut decision)
                        .expect("decides")
                },
                2000,
                21,
            );
            let reference = median_ns(
                || {
                    std::hint::black_box(
                        evaluator.eval(&eval::parse(&request, body_limit).expect("parses")),
                    );
                },
                200,
                11,
            );
            rows.push((name.clone(), size, module, reference));
        }
    }
    println!(
        "\n{:<28} {:<9} {:>12} {:>14} {:>8}",
        "policy", "request", "module", "evaluator", "ratio"
    );
    for (name, size, module, reference) in &rows {
        println!(
            "{name:<28} {size:<9} {:>9.0} ns {:>11.0} ns {:>8.3}",
            module,
            reference,
            module / reference
        );
    }
    let cost = |policy: &str, size: &str| {
        rows.iter()
            .find(|r| r.0 == policy && r.1 == size)
            .map_or(f64::NAN, |r| r.2)
    };
    for size in ["small", "2KB"] {
        println!(
            "100 vs 10 WAF rules, {size} request: {:.2}x",
            cost("1000-routes-100-rules", size) / cost("1000-routes-10-rules", size)
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = decide_benches, summary
}
criterion_main!(benches);
