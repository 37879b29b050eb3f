//! Activation of a new bundle: each phase under criterion (open and verify, compile at each
//! tier, instantiate, the node's whole `prepare` with a new module and with one compiled
//! before), then a `swap` summary that times what an operator sees, "file in place" to
//! "served", on a node in this process: the bundle is renamed into the node's bundle
//! directory, the node reloads (as on a file-system event), and the clock stops at the swap,
//! from when requests get the new version. New policies are swapped with their golden
//! requests (the policy's tests) and without, to show what those cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use criterion::{Criterion, criterion_group, criterion_main};
use edgepack_benches::{example_bundle, example_variants, policy_bundle};
use edgepack_bundles::bundle::{self, OpenLimits};
use edgepack_runtime_min::activation::{Floor, Loader};
use edgepack_runtime_min::config::NodeArgs;
use edgepack_runtime_min::functions::FunctionHost;
use edgepack_runtime_min::host::{PolicyEngine, Tier};
use edgepack_runtime_min::node::{Node, Trigger};
use edgepack_runtime_min::ratelimit::RateLimits;

fn phases(c: &mut Criterion) {
    let (bytes, key) = example_bundle("eu-west", 1);
    let public = key.verifying_key();
    let limits = OpenLimits::default();
    let opened = bundle::open(&bytes, &[public], &limits).expect("opens");
    let wasm = opened.files["policy.wasm"].clone();
    let engine =
        PolicyEngine::with_time_limit(Duration::from_millis(50), Arc::default()).expect("engine");
    // One functions engine for every loader here, as a node has: the example's functions
    // are compiled once, and each `prepare` finds them compiled (a new policy, the same
    // functions), as a new release usually does.
    let functions = Arc::new(FunctionHost::default());
    let loader =
        Loader::new(engine.clone(), vec![public], false, limits).with_functions(functions.clone());
    let floor = Floor {
        mark: None,
        allow_same: true,
        region: Some("eu-west".into()),
        known_good: false,
    };
    let ratelimits = RateLimits::new(10_000);
    let mut group = c.benchmark_group("activation");
    group.sample_size(30);
    group.bench_function("open+verify", |b| {
        b.iter(|| bundle::open(&bytes, &[public], &limits).expect("opens"))
    });
    for tier in [Tier::Quick, Tier::Optimized] {
        group.bench_function(format!("compile/{tier:?}"), |b| {
            b.iter(|| engine.compile_tier(&wasm, tier).expect("compiles"))
        });
    }
    let module = engine.compile_tier(&wasm, Tier::Quick).expect("compiles");
    group.bench_function("instantiate", |b| {
        b.iter(|| module.instantiate().expect("instantiates"))
    });
    group.bench_function("prepare/new-module", |b| {
        b.iter(|| {
            // A fresh loader has compiled nothing yet.
            Loader::new(engine.clone(), vec![public], false, limits)
                .with_functions(functions.clone())
                .prepare(&bytes, &floor, 1, &ratelimits)
                .expect("prepares")
        })
    });
    loader
        .prepare(&bytes, &floor, 1, &ratelimits)
        .expect("prepares");
    group.bench_function("prepare/module-compiled-before", |b| {
        b.iter(|| {
            loader
                .prepare(&bytes, &floor, 1, &ratelimits)
                .expect("prepares")
        })
    });
    group.finish();
}

/// "File in place" to "served" over `SWAPS` activations of new versions: each with a
/// policy (and module) the node has not seen, then the same policy re-versioned.
fn swap(_: &mut Criterion) {
    const SWAPS: usize = 30;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    // Two series of new policies: golden requests on (as a node runs) and off (the swap
    // without them, the baseline for what they cost), then new versions of the last one.
    let variants = example_variants(dir.path(), 2 * SWAPS);
    let mut new_policies: Vec<Vec<u8>> = variants
        .iter()
        .enumerate()
        .map(|(i, path)| policy_bundle(path, "eu-west", i as u64 + 2, &key))
        .collect();
    let unchecked = new_policies.split_off(SWAPS);
    let last = unchecked.last().expect("bundles").clone();
    let same_policy: Vec<Vec<u8>> = (0..SWAPS)
        .map(|i| example_bundle_version(&last, (2 * SWAPS + 2 + i) as u64, &key))
        .collect();
    let (first, _) = example_bundle("eu-west", 1);
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).expect("mkdir");
    let public = dir.path().join("release.pub");
    std::fs::write(&public, bundle::keys::public_key_text(&key.verifying_key()))
        .expect("write the public key");
    let place = |bytes: &[u8]| {
        let staging = live.join(".incoming");
        std::fs::write(&staging, bytes).expect("write");
        std::fs::rename(&staging, live.join("eu-west.edgepack")).expect("rename");
    };
    place(&first);
    let args = NodeArgs::parse_from([
        "edgepack-node".as_ref(),
        "--bundle".as_ref(),
        live.as_os_str(),
        "--trust".as_ref(),
        public.as_os_str(),
        "--state-dir".as_ref(),
        dir.path().join("state").as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--admin".as_ref(),
        "127.0.0.1:0".as_ref(),
    ]);
    let mut node = Node::new(&args).expect("a node");
    assert!(node.start(), "the first bundle activates");
    println!();
    for (series, bundles, golden) in [
        ("new policy", &new_policies, true),
        ("new policy, golden requests off", &unchecked, false),
        ("same policy", &same_policy, true),
    ] {
        node.settings.golden_requests = golden;
        let mut samples: Vec<f64> = bundles
            .iter()
            .map(|bytes| {
                // Let the previous activation's optimized tier finish first.
                std::thread::sleep(Duration::from_millis(30));
                let version = bundle::open_unverified(bytes, &OpenLimits::default())
                    .expect("opens")
                    .0
                    .manifest
                    .version;
                place(bytes);
                let started = Instant::now();
                node.reload(Trigger::Watch);
                let active = node.active.load_full().expect("a bundle is active");
                assert_eq!(
                    active.manifest.version, version,
                    "version {version} is served"
                );
                // The moment of the swap: requests from then on get the new version.
                (active.activated_at - started).as_secs_f64() * 1000.0
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        println!(
            "swap, {series}: file in place -> served, {SWAPS} activations: median {:.2} ms, p90 {:.2} ms, min {:.2} ms, max {:.2} ms",
            at(0.5),
            at(0.9),
            at(0.0),
            at(1.0)
        );
    }
}

/// `bytes` re-signed under another version (the same policy).
fn example_bundle_version(bytes: &[u8], version: u64, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    let (opened, _) = bundle::open_unverified(bytes, &OpenLimits::default()).expect("opens");
    let m = &opened.manifest;
    let input = bundle::PackInput {
        region: &m.region,
        zone: &m.zone,
        version,
        created: m.created,
        expires: m.expires,
        compiler: &m.compiler,
        sources_sha256: &m.sources_sha256,
    };
    bundle::pack(&input, &opened.files, key).expect("packs")
}

criterion_group!(benches, phases, swap);
criterion_main!(benches);
