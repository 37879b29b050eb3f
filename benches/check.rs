//! How long `edgepack check` takes: the main example, and generated policies of 1,000 and
//! 10,000 routes with 100 WAF rules (parse, decode, validate, regex budgets included).

use criterion::{Criterion, criterion_group, criterion_main};
use edgepack_benches::{generated_policy, workspace_root};

fn check_benches(c: &mut Criterion) {
    let example = workspace_root().join("examples/global-api");
    c.bench_function("check/global-api", |b| {
        b.iter(|| edgepack_schema::check(&example).expect("example readable"))
    });
    for (routes, rules) in [(1_000, 100), (10_000, 100)] {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("edgepack.kdl"),
            generated_policy(routes, rules),
        )
        .expect("write policy");
        let checked = edgepack_schema::check(dir.path()).expect("readable");
        assert_eq!(checked.error_count(), 0, "generated policy has errors");
        c.bench_function(&format!("check/{routes}-routes-{rules}-rules"), |b| {
            b.iter(|| edgepack_schema::check(dir.path()).expect("readable"))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = check_benches
}
criterion_main!(benches);
