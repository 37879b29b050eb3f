//! What the policy costs a served request: requests/s on `/api/health` of the example
//! (a route the policy answers itself) with `decide` called, against the same node
//! answering without calling it. Both run in this process on loopback, the server on one
//! worker thread and the load on another, in pairs of rounds (one of each, the order
//! alternating from pair to pair) so drift hits both alike; the ratio is the median of the
//! pairs' ratios, since single rounds on a shared machine move by more than the effect.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgepack_benches::{example_bundle, node_args, one_worker_runtime};
use edgepack_runtime_min::config::NodeArgs;
use edgepack_runtime_min::host::Tier;
use edgepack_runtime_min::node::Node;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const CONNECTIONS: usize = 32;
const ROUND: Duration = Duration::from_secs(2);
const ROUNDS: usize = 9;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (bytes, key) = example_bundle("eu-west", 1);
    let args = node_args(dir.path(), "eu-west", &bytes, &key);
    let server = one_worker_runtime();
    let client = one_worker_runtime();
    let mut with_policy = Vec::new();
    let mut without = Vec::new();
    let mut decide_us = Vec::new();
    let mut ratios = Vec::new();
    for pair in 0..ROUNDS {
        let order = if pair % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for skip in order {
            let (rps, decide) = round(&args, skip, &server, &client);
            if skip {
                without.push(rps);
            } else {
                with_policy.push(rps);
                decide_us.push(decide);
            }
        }
        ratios.push(with_policy[pair] / without[pair]);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (on, off) = (median(&with_policy), median(&without));
    println!(
        "serving /api/health, {CONNECTIONS} keep-alive connections, {ROUNDS} pairs of rounds of {}s each:",
        ROUND.as_secs()
    );
    println!("  policy on (decide called):   {on:>9.0} requests/s  rounds {with_policy:.0?}");
    println!("  decide skipped (baseline):   {off:>9.0} requests/s  rounds {without:.0?}");
    println!(
        "  ratio on / skipped:          {:>9.3}  (median of pairs; pairs {ratios:.3?})",
        median(&ratios)
    );
    println!(
        "  decide step in the node:     {:>9.2} µs mean (median of rounds)",
        median(&decide_us)
    );
}

/// One round: a fresh node, loaded for `ROUND`; requests per second and the mean time of
/// the decide step (the node's own histogram).
fn round(
    args: &NodeArgs,
    skip_decide: bool,
    server: &tokio::runtime::Runtime,
    client: &tokio::runtime::Runtime,
) -> (f64, f64) {
    let mut node = Node::new(args).expect("a node");
    node.settings.skip_decide = skip_decide;
    assert!(node.start(), "the bundle activates");
    wait_for_optimized(&node);
    let node = Arc::new(node);
    let metrics_node = node.clone();
    let listener = server
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let args = args.clone();
        server.spawn(async move {
            edgepack_runtime_min::server::serve_plain(listener, node, &args, async {
                let _ = stopped.await;
            })
            .await;
        })
    };
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + ROUND;
    let started = Instant::now();
    client.block_on(async {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|_| tokio::spawn(load(addr, deadline, done.clone())))
            .collect();
        for worker in workers {
            worker.await.expect("a load worker");
        }
    });
    let rps = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = server.block_on(serving);
    let text = metrics_node.metrics.render();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let decide_us = value("edgepack_decide_duration_seconds_sum")
        / value("edgepack_decide_duration_seconds_count")
        * 1e6;
    (rps, decide_us)
}

/// Waits until the node serves the optimized tier: until then `decide` runs the quick
/// tier's code while Cranelift compiles in the background, which is activation's cost, not
/// serving's.
fn wait_for_optimized(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while node
        .active
        .load()
        .as_ref()
        .is_none_or(|active| active.tier() != Tier::Optimized)
    {
        assert!(Instant::now() < deadline, "the optimized tier is built");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends GET /api/health on one connection until `deadline`, counting 200s.
async fn load(addr: std::net::SocketAddr, deadline: Instant, done: Arc<AtomicU64>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    while Instant::now() < deadline {
        let request = http::Request::get("/api/health")
            .header("host", "api.example.com")
            .header("cf-ipcountry", "DE")
            .body(Empty::<Bytes>::new())
            .expect("a request");
        let response = sender.send_request(request).await.expect("a response");
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await;
        done.fetch_add(1, Ordering::Relaxed);
    }
}
