//! How long `edgepack build` takes per region: lower, generate and optimize, for the main
//! example and for a generated policy of 10,000 routes.

use criterion::{Criterion, criterion_group, criterion_main};
use edgepack_benches::{generated_policy, workspace_root};
use edgepack_compiler::pipeline;

fn compile_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("edgepack.kdl"),
        generated_policy(10_000, 20),
    )
    .expect("write");
    let mut group = c.benchmark_group("build-one-region");
    group.sample_size(10);
    for (name, path) in [
        ("global-api", workspace_root().join("examples/global-api")),
        ("10000-routes", dir.path().to_path_buf()),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let checked = edgepack_schema::check(&path).expect("readable");
                let policy = checked.policy.as_ref().expect("clean");
                let region = policy.regions[0].name.value.clone();
                let mut plans = pipeline::plans(policy, &checked, &[region]).expect("region");
                pipeline::compile(plans.remove(0)).expect("compiles")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, compile_benches);
criterion_main!(benches);
