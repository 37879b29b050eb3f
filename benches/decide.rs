//! Warm `decide`: the compiled module (instance reused, request copy included) against the
//! reference evaluator on the same requests, for the main example and for generated policies
//! of 1,000 routes with 10 and with 100 WAF rules, on small requests and on requests with
//! 2 KB of query and body.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use edgepack_benches::{
    compile_policy_dir, generated_policy, large_request, small_request, workspace_root,
};
use edgepack_compiler::eval::{self, Evaluator};

fn decide_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut policies = vec![(
        "global-api".to_string(),
        workspace_root().join("examples/global-api"),
    )];
    for rules in [10, 100] {
        let path = dir.path().join(format!("gen-{rules}"));
        std::fs::create_dir_all(&path).expect("mkdir");
        std::fs::write(path.join("edgepack.kdl"), generated_policy(1000, rules)).expect("write");
        policies.push((format!("1000-routes-{rules}-rules"), path));
    }
    let mut group = c.benchmark_group("decide");
    for (name, path) in &policies {
        let (plan, mut instance) = compile_policy_dir(path);
        let evaluator = Evaluator::new(&plan);
        let body_limit = plan.waf.as_ref().map_or(0, |w| w.body_limit);
        for (size, request) in [
            ("small", small_request(&plan)),
            ("2KB", large_request(&plan)),
        ] {
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
    let mut policies = vec![(
        "global-api".to_string(),
        workspace_root().join("examples/global-api"),
    )];
    for rules in [10, 100] {
        let path = dir.path().join(format!("gen-{rules}"));
        std::fs::create_dir_all(&path).expect("mkdir");
        std::fs::write(path.join("edgepack.kdl"), generated_policy(1000, rules)).expect("write");
        policies.push((format!("1000 routes, {rules} WAF rules"), path));
    }
    for (name, path) in &policies {
        let (plan, mut instance) = compile_policy_dir(path);
        let evaluator = Evaluator::new(&plan);
        let body_limit = plan.waf.as_ref().map_or(0, |w| w.body_limit);
        let mut decision = edgepack_bundles::abi::Decision::default();
        for (size, request) in [
            ("small", small_request(&plan)),
            ("2 KB", large_request(&plan)),
        ] {
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
        "\n{:<28} {:<6} {:>12} {:>14} {:>8}",
        "policy", "request", "module", "evaluator", "ratio"
    );
    for (name, size, module, reference) in &rows {
        println!(
            "{name:<28} {size:<6} {:>9.0} ns {:>11.0} ns {:>8.3}",
            module,
            reference,
            module / reference
        );
    }
    let cost = |rules: &str, size: &str| {
        rows.iter()
            .find(|r| r.0.contains(rules) && r.1 == size)
            .map_or(f64::NAN, |r| r.2)
    };
    for size in ["small", "2 KB"] {
        println!(
            "100 vs 10 WAF rules, {size} request: {:.2}x",
            cost("100 WAF", size) / cost("10 WAF", size)
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = decide_benches, summary
}
criterion_main!(benches);
