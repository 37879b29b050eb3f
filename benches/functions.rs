//! Edge functions, cold: every request runs in a fresh instance, so each is a cold start.
//!
//! 1. Instantiate only: a fresh store and instance of the example's `ml-infer` from its
//!    pre-linked component on the pooling allocator, as each request pays it.
//! 2. Cold start as a client sees it: on one keep-alive connection, one request at a time,
//!    the time from sending a request to its first response byte, for `POST /api/ml/predict`
//!    (a fresh `ml-infer` instance scores the features) against `GET /api/health` (the
//!    policy answers itself); median and p99.
//! 3. Throughput: requests/s through each route with 32 connections, alternating rounds so
//!    drift hits both alike; the function route's share of the static route's.
//!
//! The node runs in this process on loopback (server and load on one worker thread each),
//! serving the example policy without the rate limit of its ML routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgepack_benches::{
    copy_example, metric_value, node_args, one_worker_runtime, policy_bundle, serve_one_worker,
};
use edgepack_runtime_min::node::Node;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;

const CONNECTIONS: usize = 32;
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;
const INSTANTIATIONS: usize = 20_000;
const SEQUENTIAL: usize = 5_000;
const FEATURES: &str = r#"{"features":[0.4,1.5,-2.0,3.25]}"#;

#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// `GET /api/health`, answered by the policy.
    Static,
    /// `POST /api/ml/predict`, answered by `ml-infer` in a fresh instance.
    Function,
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The example, without the rate limit on its ML routes, which would stop the load.
    let policy = dir.path().join("policy");
    copy_example(&policy);
    let entry = policy.join("edgepack.kdl");
    let text = std::fs::read_to_string(&entry).expect("read the policy");
    let limited = "    methods \"POST\"\n    ratelimit \"per-ip\"\n    cors \"web\"\n    function \"ml-infer\"";
    assert!(text.contains(limited), "the example's ML route changed");
    let unlimited = limited.replace("    ratelimit \"per-ip\"\n", "");
    std::fs::write(&entry, text.replacen(limited, &unlimited, 1)).expect("write the policy");
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let bytes = policy_bundle(&policy, "eu-west", 1, &key);
    let args = node_args(dir.path(), "eu-west", &bytes, &key);
    let node = Node::new(&args).expect("a node");
    assert!(node.start(), "the bundle activates");
    let node = Arc::new(node);

    let [(median, p99), (setup_median, setup_p99)] = instantiate_only(&node);
    println!("ml-infer, {INSTANTIATIONS} fresh instances:");
    println!("  instantiate only:             {median:>8.2} µs median  {p99:>8.2} µs p99");
    println!(
        "  store setup before it:        {setup_median:>8.2} µs median  {setup_p99:>8.2} µs p99"
    );

    let client = one_worker_runtime();
    let (addr, workers) = serve_one_worker(&node, &args);
    let (static_first, function_first) = client.block_on(async {
        let static_first = first_byte_latencies(addr, Route::Static).await;
        let function_first = first_byte_latencies(addr, Route::Function).await;
        (static_first, function_first)
    });
    println!("request to first response byte, one connection, {SEQUENTIAL} requests each:");
    for (name, mut latencies) in [
        ("static respond route", static_first),
        ("function route (cold)", function_first),
    ] {
        let (median, p99) = percentiles(&mut latencies);
        println!("  {name:<28} {median:>8.1} µs median  {p99:>8.1} µs p99");
    }

    let mut by_route = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (slot, route) in [Route::Static, Route::Function].into_iter().enumerate() {
            by_route[slot].push(client.block_on(throughput(addr, route)));
        }
    }
    let [mut static_rps, mut function_rps] = by_route;
    let (static_median, _) = percentiles(&mut static_rps);
    let (function_median, _) = percentiles(&mut function_rps);
    println!(
        "throughput, {CONNECTIONS} keep-alive connections, {ROUNDS} rounds of {}s each:",
        ROUND.as_secs()
    );
    println!(
        "  static respond route:         {static_median:>8.0} requests/s  rounds {static_rps:.0?}"
    );
    println!(
        "  function route:               {function_median:>8.0} requests/s  rounds {function_rps:.0?}"
    );
    println!(
        "  ratio function / static:      {:>8.3}",
        function_median / static_median
    );
    let text = node.metrics.render();
    let value = |name: &str| metric_value(&text, name);
    let served = r#"{function="ml-infer"}"#;
    println!(
        "  instantiation in the node:    {:>8.2} µs mean over {} requests",
        value(&format!(
            "edgepack_function_instantiate_duration_seconds_sum{served}"
        )) / value(&format!(
            "edgepack_function_instantiate_duration_seconds_count{served}"
        )) * 1e6,
        value(&format!(
            "edgepack_function_instantiate_duration_seconds_count{served}"
        ))
    );
    assert!(workers.stop(), "the worker drains");
}

/// Median and p99 of starting `ml-infer` fresh, in µs: instantiation, and the store set up
/// before it.
fn instantiate_only(node: &Node) -> [(f64, f64); 2] {
    let active = node.active.load_full().expect("a bundle is active");
    let engine = active
        .function_engine
        .as_ref()
        .expect("the bundle has functions");
    let function = active
        .functions
        .iter()
        .find(|f| f.plan.name == "ml-infer")
        .expect("the example has ml-infer");
    for _ in 0..1_000 {
        engine.start_instance(function).expect("it starts");
    }
    let (mut setup, mut instantiate): (Vec<f64>, Vec<f64>) = (0..INSTANTIATIONS)
        .map(|_| {
            let times = engine.start_instance(function).expect("it starts");
            (
                times.setup.as_secs_f64() * 1e6,
                times.instantiate.as_secs_f64() * 1e6,
            )
        })
        .unzip();
    [percentiles(&mut instantiate), percentiles(&mut setup)]
}

fn percentiles(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: std::net::SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

fn request(route: Route) -> http::Request<Full<Bytes>> {
    let builder = http::Request::builder()
        .header("host", "api.example.com")
        .header("cf-ipcountry", "DE");
    match route {
        Route::Static => builder
            .method("GET")
            .uri("/api/health")
            .body(Full::new(Bytes::new())),
        Route::Function => builder
            .method("POST")
            .uri("/api/ml/predict")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(FEATURES.as_bytes()))),
    }
    .expect("a request")
}

/// Sends one request and reads the whole answer; the time to its first body byte.
async fn exchange(sender: &mut Sender, route: Route) -> Duration {
    sender.ready().await.expect("the connection is open");
    sender.ready().await.expect("the connection is open");
    let sent = Instant::now();
    let response = sender
        .send_request(request(route))
        .await
        .expect("a response");
    assert_eq!(response.status(), 200, "{:?}", route == Route::Function);
    let mut body = response.into_body();
    let mut first = None;
    while !body.is_end_stream() {
        match body.frame().await {
            Some(frame) => {
                frame.expect("a body frame");
                first.get_or_insert_with(|| sent.elapsed());
            }
            None => break,
        }
    }
    first.unwrap_or_else(|| sent.elapsed())
}

/// Request to first response byte, in µs, one request at a time.
async fn first_byte_latencies(addr: std::net::SocketAddr, route: Route) -> Vec<f64> {
    let mut sender = connect(addr).await;
    for _ in 0..500 {
        exchange(&mut sender, route).await;
    }
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        latencies.push(exchange(&mut sender, route).await.as_secs_f64() * 1e6);
    }
    latencies
}

/// Requests per second through `route` with `CONNECTIONS` connections for `ROUND`.
async fn throughput(addr: std::net::SocketAddr, route: Route) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + ROUND;
    let started = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut sender = connect(addr).await;
                while Instant::now() < deadline {
                    exchange(&mut sender, route).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a load worker");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
