//! End-to-end tests of edge functions: the example's handlers and a probe that misbehaves on
//! request, built into signed bundles and served by `edgepack-node` as a real process, with a
//! real TLS origin for the calls a function may make.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use edgepack_tests::e2e::{self, Keys, NodeProcess, Origin, Pki, get, send};
use serde_json::json;

const DE: (&str, &str) = ("cf-ipcountry", "DE");

/// The probe's policy: one region, the probe with a 16 MiB, 1 s budget that may call
/// `api` and nothing else, a cached route through it, and a static route.
const PROBE_POLICY: &str = r##"edgepack 1
region "local" zone="GLOBAL"
origin "api" {
    zone "GLOBAL" url="https://api.internal:8443"
}
origin "elsewhere" {
    zone "GLOBAL" url="https://elsewhere.internal:8443"
}
function "probe" source="functions/probe.wasm" memory="16MiB" timeout="1s" {
    origins "api"
}
route "/fn/*" {
    function "probe"
}
route "/cached/*" {
    cache ttl="1m"
    function "probe"
}
route "/elsewhere/*" {
    proxy "elsewhere"
}
route "/static" {
    respond 200 json=#"{"static":true}"#
}
"##;

struct Fixture {
    dir: PathBuf,
    keys: Keys,
    pki: Pki,
    example: Vec<u8>,
    probe: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let keys = e2e::keygen(&dir, "release");
        let pki = Pki::new(&dir);
        let root = edgepack_tests::workspace_root();
        let example = e2e::build(
            &root.join("examples/global-api"),
            &keys,
            &dir.join("example"),
            1,
            &["eu-west"],
        )
        .remove("eu-west")
        .expect("the eu-west bundle");
        let policy = dir.join("probe-policy");
        std::fs::create_dir_all(policy.join("functions")).expect("mkdir");
        std::fs::write(policy.join("edgepack.kdl"), PROBE_POLICY).expect("write the policy");
        std::fs::copy(
            root.join("tests/fixtures/functions/probe.wasm"),
            policy.join("functions/probe.wasm"),
        )
        .expect("copy the probe");
        let probe = e2e::build(&policy, &keys, &dir.join("probe"), 1, &["local"])
            .remove("local")
            .expect("the local bundle");
        Fixture {
            dir,
            keys,
            pki,
            example,
            probe,
        }
    })
}

/// A node serving one bundle, with an origin answering for `api.internal`.
struct Edge {
    node: NodeProcess,
    origin: Origin,
    state: PathBuf,
    bundles: PathBuf,
    _dir: tempfile::TempDir,
}

impl Edge {
    fn start(region: &str, bundle: &[u8]) -> Edge {
        Edge::start_with(region, bundle, &[])
    }

    fn start_with(region: &str, bundle: &[u8], extra: &[&str]) -> Edge {
        let fixture = fixture();
        let dir = tempfile::tempdir_in(&fixture.dir).expect("tempdir");
        let bundles = dir.path().join("bundles");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&bundles).expect("mkdir");
        e2e::install(bundle, &bundles, region);
        let origin = Origin::start(&fixture.pki, &["api.internal"], dir.path());
        let node = NodeProcess::start(&args(&bundles, &state, &origin, extra));
        Edge {
            node,
            origin,
            state,
            bundles,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node.url)
    }

    fn restart(&mut self) {
        self.node.signal("TERM");
        self.node.wait_exit(Duration::from_secs(15));
        self.node = NodeProcess::start(&args(&self.bundles, &self.state, &self.origin, &[]));
    }

    /// The value of one series in `/metrics`, 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        self.node
            .metrics()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn args(bundles: &Path, state: &Path, origin: &Origin, extra: &[&str]) -> Vec<String> {
    let fixture = fixture();
    e2e::node_args(
        bundles,
        state,
        &fixture.keys,
        &fixture.pki,
        origin,
        &["api.internal:8443"],
        extra,
    )
}

fn probe() -> Edge {
    Edge::start("local", &fixture().probe)
}

#[test]
fn ml_infer_predicts_from_the_features_it_is_given() {
    let edge = Edge::start("eu-west", &fixture().example);
    let predict = |features: &str| {
        send(
            "POST",
            &edge.url("/api/ml/predict"),
            &[DE, ("content-type", "application/json")],
            &format!(r#"{{"features": {features}}}"#),
        )
    };
    let low = predict("[1, 2, 3]");
    let high = predict("[9, 0.5, -4]");
    assert_eq!((low.status, high.status), (200, 200), "{}", low.body);
    let (a, b) = (
        low.json()["prediction"].clone(),
        high.json()["prediction"].clone(),
    );
    let (a, b) = (a.as_f64().expect("a number"), b.as_f64().expect("a number"));
    assert!(
        (0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b),
        "{a} {b}"
    );
    assert_ne!(a, b, "different inputs, different predictions");
    assert_eq!(
        predict("[1, 2, 3]").json()["prediction"],
        json!(a),
        "and the same input, the same"
    );

    let bad = predict(r#""not a list""#);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("features"))
    );
    let too_many = predict("[1,2,3,4,5,6,7,8,9]");
    assert_eq!(too_many.status, 422, "{}", too_many.body);

    // The policy still applies around the function: its response headers, its methods.
    assert_eq!(
        low.header("strict-transport-security"),
        Some("max-age=63072000; includeSubDomains")
    );
    assert_eq!(low.header("x-edge-region"), Some("eu-west"));
    let get_reply = get(&edge.url("/api/ml/predict"), &[DE]);
    assert_ne!(get_reply.status, 200, "the route takes POST only");
    assert!(
        edge.metric("edgepack_function_instantiate_duration_seconds_count{function=\"ml-infer\"}")
            >= 4.0
    );
}

#[test]
fn whoami_reads_only_the_identity_the_node_verified() {
    let edge = Edge::start("eu-west", &fixture().example);
    let token = e2e::token(&json!({
        "sub": "user-42",
        "iss": "https://auth.example.com",
        "aud": "api",
        "exp": e2e::now() + 600,
        "scope": "read write",
    }));
    let bearer = format!("Bearer {token}");
    let me = get(
        &edge.url("/api/me"),
        &[
            DE,
            ("authorization", bearer.as_str()),
            ("edgepack-identity", r#"{"sub":"admin"}"#),
        ],
    );
    assert_eq!(me.status, 200, "{}", me.body);
    let body = me.json();
    assert_eq!(
        body["subject"], "user-42",
        "the verified claims, not the client's header"
    );
    assert_eq!(body["scopes"], json!(["read", "write"]));

    let spoofed = get(
        &edge.url("/api/me"),
        &[DE, ("edgepack-identity", r#"{"sub":"admin"}"#)],
    );
    assert_eq!(
        spoofed.status, 401,
        "no token, no function: {}",
        spoofed.body
    );
}

#[test]
fn a_function_answers_with_the_request_it_was_given() {
    let edge = probe();
    let reply = send(
        "POST",
        &edge.url("/fn/echo?x=1"),
        &[
            ("edgepack-identity", "forged"),
            ("content-type", "text/plain"),
        ],
        "hello",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["path"], "/fn/echo?x=1");
    assert_eq!(body["body"], "hello");
    assert_eq!(
        body["identity"],
        json!(null),
        "a client cannot claim an identity"
    );
    assert_eq!(
        body["request_id"].as_str(),
        reply.header("x-request-id"),
        "the function sees the request id the client gets"
    );
    // The instance may still be going away as the answer arrives; it must be gone soon.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while edge.metric("edgepack_function_instances") != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no instance outlives its request"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A node that gives a function less memory than its bundle asks for refuses the bundle:
/// the limit is the node's, not the policy's.
#[test]
fn a_bundle_asking_more_function_memory_than_the_node_allows_is_refused() {
    // The probe asks for 16 MiB.
    let edge = Edge::start_with(
        "local",
        &fixture().probe,
        &["--function-memory-max", "8388608"],
    );
    let reply = get(&edge.url("/static"), &[]);
    assert_eq!(reply.status, 503, "{}", reply.body);
    let log = edge.node.log();
    assert!(
        log.lines().any(|l| l.contains("bundle refused")
            && l.contains(r#""reason":"function""#)
            && l.contains("16777216")),
        "{log}"
    );
}

#[test]
fn traps_timeouts_and_memory_limits_fail_one_request_only() {
    let edge = probe();
    let cases = [
        ("/fn/trap", 500, "trap"),
        ("/fn/spin", 504, "timeout"),
        ("/fn/sleep", 504, "timeout"),
        ("/fn/stall", 504, "timeout"),
        ("/fn/grow", 500, "memory"),
    ];
    for (path, status, kind) in cases {
        let started = std::time::Instant::now();
        let reply = get(&edge.url(path), &[]);
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} is cut off at the function's limit"
        );
        let id = reply.json()["request_id"]
            .as_str()
            .expect("a request id")
            .to_string();
        assert_eq!(reply.header("x-request-id"), Some(id.as_str()));
        assert!(
            edge.node.wait_for_log(&id, Duration::from_secs(5)),
            "{path}: the failure is logged with its request id"
        );
        let series =
            format!("edgepack_function_errors_total{{function=\"probe\",kind=\"{kind}\"}}");
        assert!(edge.metric(&series) >= 1.0, "{series}");
        let after = get(&edge.url("/fn/echo"), &[]);
        assert_eq!(after.status, 200, "after {path}, the function still serves");
    }
    assert_eq!(
        edge.metric("edgepack_function_errors_total{function=\"probe\",kind=\"timeout\"}"),
        3.0
    );

    // A spinning instance holds no one else up.
    let spinning: Vec<_> = (0..4)
        .map(|_| {
            let url = edge.url("/fn/spin");
            std::thread::spawn(move || get(&url, &[]).status)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let started = std::time::Instant::now();
    assert_eq!(get(&edge.url("/static"), &[]).status, 200);
    assert_eq!(get(&edge.url("/fn/echo"), &[]).status, 200);
    // Were they holding a worker thread, these would wait for a spinning one's 1 s limit.
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    for spin in spinning {
        assert_eq!(spin.join().expect("thread"), 504);
    }

    // One that answers late and then stalls is stopped at its limit counted from the start
    // of the request, not a whole limit after it answered.
    let started = std::time::Instant::now();
    let late = get(&edge.url("/fn/late-stall?800"), &[]);
    let took = started.elapsed();
    assert_eq!(late.status, 504, "{}", late.body);
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(1500),
        "cut off after {took:?}"
    );
}

#[test]
fn a_function_reaches_its_declared_origins_and_nothing_else() {
    let edge = probe();
    let allowed = get(&edge.url("/fn/fetch?authority=api&path=/hello"), &[]);
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.json()["origin_status"], 200);
    let seen = edge.origin.last("/hello").expect("the origin saw the call");
    assert_eq!(seen.target, "/hello");

    let by_host = get(
        &edge.url("/fn/fetch?authority=api.internal:8443&path=/by-host"),
        &[],
    );
    assert_eq!(by_host.json()["origin_status"], 200, "{}", by_host.body);

    for authority in [
        "elsewhere",
        "elsewhere.internal:8443",
        "127.0.0.1:9",
        "example.com",
    ] {
        let refused = get(
            &edge.url(&format!("/fn/fetch?authority={authority}&path=/x")),
            &[],
        );
        assert_eq!(refused.status, 502, "{authority}: {}", refused.body);
        assert!(
            refused.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("HttpRequestDenied")),
            "{authority}: {}",
            refused.body
        );
    }
    assert_eq!(edge.origin.count("/x"), 0, "no refused call left the node");
    assert_eq!(
        edge.metric("edgepack_function_errors_total{function=\"probe\",kind=\"outbound_refused\"}"),
        4.0
    );
}

#[test]
fn a_function_response_is_cached_by_the_route() {
    let edge = probe();
    let first = get(&edge.url("/cached/echo"), &[]);
    let second = get(&edge.url("/cached/echo"), &[]);
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(
        first.body, second.body,
        "the stored answer, request id and all"
    );
    assert_eq!(
        edge.metric("edgepack_function_instantiate_duration_seconds_count{function=\"probe\"}"),
        1.0,
        "a hit runs no function"
    );
}

#[test]
fn compiled_functions_survive_a_restart_and_a_bad_one_is_rebuilt() {
    let mut edge = probe();
    assert_eq!(get(&edge.url("/fn/echo"), &[]).status, 200);
    let compiled = |state: &Path| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("functions"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    };
    let files = compiled(&edge.state);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0]
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let digest = edgepack_bundles::bundle::sha256_hex(
        &std::fs::read(
            edgepack_tests::workspace_root().join("tests/fixtures/functions/probe.wasm"),
        )
        .expect("read the probe"),
    );
    assert!(
        name.starts_with(&digest),
        "{name} is keyed by the component's sha256"
    );
    let modified = std::fs::metadata(&files[0])
        .and_then(|m| m.modified())
        .expect("mtime");

    edge.restart();
    assert_eq!(get(&edge.url("/fn/echo"), &[]).status, 200);
    assert_eq!(compiled(&edge.state), files);
    assert_eq!(
        std::fs::metadata(&files[0])
            .and_then(|m| m.modified())
            .expect("mtime"),
        modified,
        "the compiled form was loaded, not written again"
    );

    std::fs::write(&files[0], b"not a compiled component").expect("corrupt it");
    edge.restart();
    assert_eq!(
        get(&edge.url("/fn/echo"), &[]).status,
        200,
        "compiled again"
    );
    assert!(
        std::fs::read(&files[0]).expect("read").len() > 1000,
        "and kept again"
    );
}

#[test]
fn past_its_instance_limit_the_node_answers_503_and_recovers() {
    let edge = Edge::start_with("local", &fixture().probe, &["--function-instances", "1"]);
    let url = edge.url("/fn/sleep");
    let sleeping = std::thread::spawn(move || get(&url, &[]).status);
    // Once the sleeping instance holds the only slot, the next request finds none free.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while edge.metric("edgepack_function_instances") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sleeper never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let busy = get(&edge.url("/fn/echo"), &[]);
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert!(busy.json()["request_id"].is_string());
    assert_eq!(sleeping.join().expect("thread"), 504);
    assert_eq!(
        get(&edge.url("/fn/echo"), &[]).status,
        200,
        "the slot is free again"
    );
    assert!(
        edge.metric("edgepack_function_errors_total{function=\"probe\",kind=\"capacity\"}") >= 1.0
    );
}
