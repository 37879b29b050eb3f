//! Shared helpers for edgepack's benches: the workspace's examples and generated policies
//! of a chosen size, so every bench measures the same inputs.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A policy with `n_routes` routes (literal, `:param` and `*` segments) and `n_rules` WAF
/// rules, as KDL text.
pub fn generated_policy(n_routes: usize, n_rules: usize) -> String {
    let mut kdl = String::from("edgepack 1\n");
    kdl.push_str("region \"r1\" zone=\"GLOBAL\"\n");
    kdl.push_str("origin \"app\" { zone \"GLOBAL\" url=\"http://app.internal:8080\" }\n");
    kdl.push_str("ratelimit \"per-ip\" key=\"client-ip\" limit=100 per=\"1m\"\n");
    if n_rules > 0 {
        kdl.push_str("waf threshold=5 {\n");
        for i in 0..n_rules {
            let _ = writeln!(
                kdl,
                "    rule \"r{i}\" score=5 {{ in \"args\" \"path\"; decode \"url-decode\" \"lowercase\"; regex #\"attack{i}[a-z]*\\d+\"#; }}"
            );
        }
        kdl.push_str("}\n");
    }
    for i in 0..n_routes {
        let pattern = match i % 3 {
            0 => format!("/svc{i}/items"),
            1 => format!("/svc{i}/items/:id"),
            _ => format!("/svc{i}/files/*"),
        };
        let _ = writeln!(
            kdl,
            "route \"{pattern}\" {{ ratelimit \"per-ip\"; cache ttl=\"{}s\"; proxy \"app\" }}",
            i % 600
        );
    }
    kdl
}

/// Compiles the first region of the policy at `path` and instantiates its module.
pub fn compile_policy_dir(
    path: &std::path::Path,
) -> (
    edgepack_compiler::plan::RegionPlan,
    edgepack_runtime_min::host::PolicyInstance,
) {
    let checked = edgepack_schema::check(path).expect("readable");
    let policy = checked.policy.as_ref().expect("the policy checks clean");
    let region = policy.regions[0].name.value.clone();
    let mut plans =
        edgepack_compiler::pipeline::plans(policy, &checked, &[region]).expect("region exists");
    let compiled = edgepack_compiler::pipeline::compile(plans.remove(0)).expect("compiles");
    let instance = edgepack_runtime_min::host::PolicyEngine::new()
        .and_then(|e| e.compile(&compiled.wasm))
        .and_then(|m| m.instantiate())
        .expect("instantiates");
    (compiled.plan, instance)
}

/// A path the plan's first proxied route takes (its literal segments, `x` elsewhere).
fn routed_path(plan: &edgepack_compiler::plan::RegionPlan) -> String {
    use edgepack_compiler::plan::{ActionPlan, SegmentPlan};
    let route = plan
        .routes
        .iter()
        .find(|r| {
            matches!(r.action, ActionPlan::Proxy { .. })
                && r.methods.iter().all(|m| m == "GET" || m == "HEAD")
        })
        .unwrap_or(&plan.routes[0]);
    let mut path = String::new();
    for segment in &route.segments {
        path.push('/');
        path.push_str(match segment {
            SegmentPlan::Literal(l) => l,
            _ => "item-42",
        });
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

fn with_common_headers(
    request: edgepack_bundles::request::Request,
) -> edgepack_bundles::request::Request {
    request
        .host("api.example.com")
        .peer(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
        )
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, br")
        .header("cf-ipcountry", "DE")
}

/// A typical API request: a few headers and a 100-byte query.
pub fn small_request(
    plan: &edgepack_compiler::plan::RegionPlan,
) -> edgepack_bundles::request::Request {
    let query = "id=1234567&sort=created_at&order=desc&fields=name,email,status&page=3&per_page=50&lang=en-GB";
    with_common_headers(edgepack_bundles::request::Request::new(
        "GET",
        &format!("{}?{query}", routed_path(plan)),
    ))
}

/// A request with 1 KB of query arguments and a 1 KB form body of ordinary text.
pub fn large_request(
    plan: &edgepack_compiler::plan::RegionPlan,
) -> edgepack_bundles::request::Request {
    let text =
        "The quick brown fox jumps over the lazy dog while the edge decides what to do with it ";
    let mut query = String::new();
    let mut n = 0;
    while query.len() < 1000 {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&format!("field{n}={}", text.replace(' ', "+")));
        n += 1;
    }
    let body = query.replace("field", "note");
    with_common_headers(edgepack_bundles::request::Request::new(
        "GET",
        &format!("{}?{query}", routed_path(plan)),
    ))
    .header("content-type", "application/x-www-form-urlencoded")
    .body(body)
}

/// The comparison's WAF request (`benches/compare/run`, row 4): 1 KB of ordinary words in
/// one query argument, URL-encoded with `+` for spaces.
pub fn query_1kb_request(
    plan: &edgepack_compiler::plan::RegionPlan,
) -> edgepack_bundles::request::Request {
    let words = "the quick brown fox jumps over the lazy dog while the committee reviews the quarterly report about regional shipping volumes and customer feedback ";
    let mut query = format!("q={}", words.repeat(8).replace(' ', "+"));
    query.truncate(1024);
    with_common_headers(edgepack_bundles::request::Request::new(
        "GET",
        &format!("{}?{query}", routed_path(plan)),
    ))
}

/// Where Debian's `modsecurity-crs` installs the rules `examples/global-api-crs` imports.
pub const CRS_RULES: &str = "/usr/share/modsecurity-crs/rules";

/// The example policy's bundle for `region` at `version`, built and signed in this process,
/// and the key that signed it.
pub fn example_bundle(region: &str, version: u64) -> (Vec<u8>, ed25519_dalek::SigningKey) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let path = workspace_root().join("examples/global-api");
    (policy_bundle(&path, region, version, &key), key)
}

/// The bundle of the policy at `path` for `region` at `version`, signed by `key`.
pub fn policy_bundle(
    path: &std::path::Path,
    region: &str,
    version: u64,
    key: &ed25519_dalek::SigningKey,
) -> Vec<u8> {
    let release = edgepack_compiler::pipeline::Release {
        version,
        created: 0,
        expires: None,
    };
    edgepack_compiler::pipeline::region_bundle(path, region, release, key).expect("builds")
}

/// A copy of the example policy (its files and their subdirectories) at `target`.
pub fn copy_example(target: &std::path::Path) {
    let source = workspace_root().join("examples/global-api");
    std::fs::create_dir_all(target).expect("mkdir");
    for entry in std::fs::read_dir(&source).expect("the example").flatten() {
        let path = entry.path();
        if path.is_dir() {
            let sub = target.join(entry.file_name());
            std::fs::create_dir_all(&sub).expect("mkdir");
            for file in std::fs::read_dir(&path).expect("subdir").flatten() {
                std::fs::copy(file.path(), sub.join(file.file_name())).expect("copy");
            }
        } else {
            std::fs::copy(&path, target.join(entry.file_name())).expect("copy");
        }
    }
}

/// Copies of the example with one more WAF rule each, its literal differing: `count`
/// policies with as many different modules (WAF automata are compiled), under `dir`.
pub fn example_variants(dir: &std::path::Path, count: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let target = dir.join(format!("variant-{i}"));
            copy_example(&target);
            let waf = target.join("waf.kdl");
            let text = std::fs::read_to_string(&waf).expect("read");
            let rule = format!(
                "{{\n    rule \"variant-{i}\" score=5 {{\n        in \"args\"\n        literal \"variant-marker-{i}\"\n    }}\n"
            );
            let text = text.replacen("{\n", &rule, 1);
            std::fs::write(&waf, text).expect("write");
            target
        })
        .collect()
}

/// The settings of a node in a bench's process: `bundle` (signed by `key`) written to
/// `dir` as `<region>.edgepack` with the public key beside it, ports of its own, access log
/// off.
pub fn node_args(
    dir: &std::path::Path,
    region: &str,
    bundle: &[u8],
    key: &ed25519_dalek::SigningKey,
) -> edgepack_runtime_min::config::NodeArgs {
    use clap::Parser;
    let bundle_path = dir.join(format!("{region}.edgepack"));
    let trust = dir.join("bench.pub");
    std::fs::write(&bundle_path, bundle).expect("write the bundle");
    std::fs::write(
        &trust,
        edgepack_bundles::bundle::keys::public_key_text(&key.verifying_key()),
    )
    .expect("write the key");
    edgepack_runtime_min::config::NodeArgs::parse_from([
        "edgepack-node".as_ref(),
        "--bundle".as_ref(),
        bundle_path.as_os_str(),
        "--trust".as_ref(),
        trust.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--admin".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--no-access-log".as_ref(),
    ])
}

/// Serves `node` on a loopback port as `edgepack-node --workers 1` does: one worker thread
/// with a runtime of its own. Stop the workers at the end (they drain first).
pub fn serve_one_worker(
    node: &std::sync::Arc<edgepack_runtime_min::node::Node>,
    args: &edgepack_runtime_min::config::NodeArgs,
) -> (std::net::SocketAddr, edgepack_runtime_min::server::Workers) {
    let listeners =
        edgepack_runtime_min::server::bind_workers(([127, 0, 0, 1], 0).into(), 1).expect("bind");
    let addr = listeners[0].local_addr().expect("address");
    let workers = edgepack_runtime_min::server::Workers::start(listeners, node.clone(), args)
        .expect("the worker starts");
    (addr, workers)
}

/// A tokio runtime with one worker thread: a bench's load generator.
pub fn one_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The value of the first line of Prometheus text `metrics` that starts with `name` (a
/// metric name, with its labels when it has any), or 0 when there is none.
pub fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}
