//! What the policy costs a served request: requests/s on `/api/health` of the example
//! (a route the policy answers itself) with `decide` called, against the same node
//! answering without calling it. One node in this process on loopback, the server on one
//! worker thread and the load on another, switched between the two modes every
//! `WINDOW` under continuous load, in pairs of windows (one of each, the order alternating
//! from pair to pair) so drift hits both alike; the ratio is the median of the pairs'
//! ratios, since the machine's speed moves by more than the effect within seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgepack_benches::{
    example_bundle, metric_value, node_args, one_worker_runtime, serve_one_worker,
};
use edgepack_runtime_min::host::Tier;
use edgepack_runtime_min::node::Node;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const CONNECTIONS: usize = 32;
const WARM_UP: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_millis(100);
const PAIRS: usize = 150;

/// Requests served and the decide histogram's sum and count, read at a window's edge.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    done: u64,
    decide_sum: f64,
    decide_count: f64,
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (bytes, key) = example_bundle("eu-west", 1);
    let args = node_args(dir.path(), "eu-west", &bytes, &key);
    let client = one_worker_runtime();

    let node = Node::new(&args).expect("a node");
    assert!(node.start(), "the bundle activates");
    wait_for_optimized(&node);
    let node = Arc::new(node);
    let (addr, server) = serve_one_worker(&node, &args);
    let done = Arc::new(AtomicU64::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| client.spawn(load(addr, stopping.clone(), done.clone())))
        .collect();

    let read = || {
        let text = node.metrics.render();
        let value = |name: &str| metric_value(&text, name);
        Reading {
            at: Instant::now(),
            done: done.load(Ordering::Relaxed),
            decide_sum: value("edgepack_decide_duration_seconds_sum"),
            decide_count: value("edgepack_decide_duration_seconds_count"),
        }
    };
    // Both modes once before measuring: the replayed decision gets recorded, and caches,
    // connections and the optimized code settle.
    for skip in [true, false] {
        node.skip_decide.store(skip, Ordering::Relaxed);
        std::thread::sleep(WARM_UP / 2);
    }

    let (mut with_policy, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut decide_sum, mut decide_count) = (0.0, 0.0);
    for pair in 0..PAIRS {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut rates = [0.0; 2];
        for skip in order {
            node.skip_decide.store(skip, Ordering::Relaxed);
            let start = read();
            std::thread::sleep(WINDOW);
            let end = read();
            let rate = (end.done - start.done) as f64 / (end.at - start.at).as_secs_f64();
            rates[usize::from(skip)] = rate;
            if !skip {
                decide_sum += end.decide_sum - start.decide_sum;
                decide_count += end.decide_count - start.decide_count;
            }
        }
        with_policy.push(rates[0]);
        without.push(rates[1]);
        ratios.push(rates[0] / rates[1]);
    }
    stopping.store(true, Ordering::Relaxed);
    client.block_on(async {
        for worker in workers {
            worker.await.expect("a load worker");
        }
    });
    assert!(server.stop(), "the server's worker drains");

    let quartiles = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 4], v[v.len() / 2], v[v.len() * 3 / 4])
    };
    let (on_low, on, on_high) = quartiles(&with_policy);
    let (off_low, off, off_high) = quartiles(&without);
    let (ratio_low, ratio, ratio_high) = quartiles(&ratios);
    println!(
        "serving /api/health, {CONNECTIONS} keep-alive connections, {PAIRS} pairs of {} ms windows \
         under continuous load:",
        WINDOW.as_millis()
    );
    println!(
        "  policy on (decide called):   {on:>9.0} requests/s  (windows' quartiles {on_low:.0}–{on_high:.0})"
    );
    println!(
        "  decide skipped (baseline):   {off:>9.0} requests/s  (windows' quartiles {off_low:.0}–{off_high:.0})"
    );
    println!(
        "  ratio on / skipped:          {ratio:>9.3}  (median of pairs; quartiles {ratio_low:.3}–{ratio_high:.3})"
    );
    println!(
        "  decide step in the node:     {:>9.2} µs mean",
        decide_sum / decide_count * 1e6
    );
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

/// Sends GET /api/health on one connection until `stopping`, counting 200s.
async fn load(addr: std::net::SocketAddr, stopping: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    while !stopping.load(Ordering::Relaxed) {
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
