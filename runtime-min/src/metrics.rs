//! The node's metrics, served at `/metrics` on the admin address in Prometheus text format.
//!
//! Label values come from the bundle (route patterns, rule and limit names) or from a small
//! fixed set (actions, results), never from the request, so their number stays bounded.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's methods and pattern, or `none`.
    pub route: String,
    /// What the node did: `respond`, `proxy`, `block`, `cache`, …
    pub action: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit`, `stale`, `miss` or `bypass`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub origin: String,
    /// `connect`, `timeout`, `tls`, `protocol`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleLabels {
    pub region: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivationLabels {
    /// `activated` or `refused`.
    pub result: &'static str,
    /// Why a bundle was refused (`signature`, `version`, `expired`, …), or `ok`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RollbackLabels {
    /// `rolled-back`, or `failed` when the previous bundle no longer verifies.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PullLabels {
    /// `unchanged`, `fetched` (offered for activation), `refused` (not a usable release)
    /// or `error` (the registry did not answer).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionErrorLabels {
    pub function: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwtLabels {
    pub jwt: String,
    pub result: &'static str,
}

/// Handles to metrics a thread keeps per family, at most this many.
const CACHED_HANDLES: usize = 32;

/// The handles to one family's metrics a thread has used, by a key that is cheap to compare
/// (ids, not names): counting into one then takes neither the family's lock (shared by all
/// workers) nor a hash of its labels, nor a copy of the names in them. Every key starts
/// with its `Metrics`'s id, and keys of plan objects carry the plan's generation. A short
/// list, the busiest first: a node's traffic is mostly a few routes, and a scan of a few
/// keys is cheaper than hashing one.
type Handles<K, M> = RefCell<Vec<(K, M)>>;

thread_local! {
    /// Keyed by plan generation, route index, action and status.
    static REQUESTS: Handles<(u64, u64, Option<u32>, &'static str, u16), Counter> = const { RefCell::new(Vec::new()) };
    /// Keyed by result.
    static CACHE_RESULTS: Handles<(u64, &'static str), Counter> = const { RefCell::new(Vec::new()) };
    /// Keyed by plan generation and origin index.
    static UPSTREAM_SECONDS: Handles<(u64, u64, u32), Histogram> = const { RefCell::new(Vec::new()) };
    /// Keyed by plan generation and function index: instantiation time, refused calls.
    static FUNCTION_METERS: Handles<(u64, u64, u32), (Histogram, Counter)> = const { RefCell::new(Vec::new()) };
}

/// Runs `use_handle` on the handle `key` names in `handles`, made by `make` the first time
/// (or again, once it has dropped off the list).
fn with_handle<K: PartialEq + 'static, M: 'static, R>(
    handles: &'static std::thread::LocalKey<Handles<K, M>>,
    key: K,
    make: impl FnOnce() -> M,
    use_handle: impl FnOnce(&M) -> R,
) -> R {
    handles.with(|handles| {
        let mut handles = handles.borrow_mut();
        let at = match handles.iter().position(|(k, _)| *k == key) {
            // A handle used moves up a place: the busiest gather at the front.
            Some(at) if at > 0 => {
                handles.swap(at, at - 1);
                at - 1
            }
            Some(at) => at,
            // Full: the last, least used, makes room.
            None if handles.len() == CACHED_HANDLES => {
                let last = handles.len() - 1;
                handles[last] = (key, make());
                last
            }
            None => {
                handles.push((key, make()));
                handles.len() - 1
            }
        };
        use_handle(&handles[at].1)
    })
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the node exports.
pub struct Metrics {
    /// Tells this node's metrics from another's in the same process (see `Handles`).
    id: u64,
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Histogram,
    pub decide_seconds: Histogram,
    pub cache: Family<CacheLabels, Counter>,
    pub waf_blocks: Family<RuleLabels, Counter>,
    pub waf_logged: Family<RuleLabels, Counter>,
    pub rate_limited: Family<LimitLabels, Counter>,
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    pub upstream_seconds: HistogramFamily<UpstreamOrigin>,
    pub jwt: Family<JwtLabels, Counter>,
    pub bundle_info: Family<BundleLabels, Gauge>,
    pub bundle_version: Gauge,
    pub bundle_expires: Gauge,
    pub activations: Family<ActivationLabels, Counter>,
    pub activation_seconds: Histogram,
    pub connections: Gauge,
    pub websocket_tunnels: Gauge,
    pub state_write_errors: Counter,
    pub golden_requests: Counter,
    pub rollbacks: Family<RollbackLabels, Counter>,
    pub registry_polls: Family<PullLabels, Counter>,
    pub function_instantiate_seconds: HistogramFamily<FunctionLabels>,
    pub function_errors: Family<FunctionErrorLabels, Counter>,
    pub function_instances: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOrigin {
    pub origin: String,
}

fn latency_histogram() -> Histogram {
    // 10 µs to about 84 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 24))
}

fn instantiate_histogram() -> Histogram {
    // 1 µs to about 16 ms.
    Histogram::new(exponential_buckets(0.000_001, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("edgepack");
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let m = Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            requests: Family::default(),
            request_seconds: latency_histogram(),
            decide_seconds: Histogram::new(exponential_buckets(0.000_000_25, 2.0, 20)),
            cache: Family::default(),
            waf_blocks: Family::default(),
            waf_logged: Family::default(),
            rate_limited: Family::default(),
            upstream_errors: Family::default(),
            upstream_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            jwt: Family::default(),
            bundle_info: Family::default(),
            bundle_version: Gauge::default(),
            bundle_expires: Gauge::default(),
            activations: Family::default(),
            activation_seconds: latency_histogram(),
            connections: Gauge::default(),
            websocket_tunnels: Gauge::default(),
            state_write_errors: Counter::default(),
            golden_requests: Counter::default(),
            rollbacks: Family::default(),
            registry_polls: Family::default(),
            function_instantiate_seconds: Family::new_with_constructor(
                instantiate_histogram as fn() -> Histogram,
            ),
            function_errors: Family::default(),
            function_instances: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by route, action and status",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            m.request_seconds.clone(),
        );
        registry.register(
            "decide_duration_seconds",
            "Time of one policy decision",
            m.decide_seconds.clone(),
        );
        registry.register("cache_lookups", "Cache lookups by result", m.cache.clone());
        registry.register(
            "waf_blocks",
            "Requests the WAF blocked, by rule that fired",
            m.waf_blocks.clone(),
        );
        registry.register(
            "waf_logged",
            "Requests over the WAF threshold on log-only routes, by rule",
            m.waf_logged.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed origin requests, by origin and kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time for an origin's response head",
            m.upstream_seconds.clone(),
        );
        registry.register(
            "jwt_verifications",
            "Token verifications, by provider and result",
            m.jwt.clone(),
        );
        registry.register(
            "bundle_info",
            "The active bundle (value 1)",
            m.bundle_info.clone(),
        );
        registry.register(
            "bundle_version",
            "Version of the active bundle",
            m.bundle_version.clone(),
        );
        registry.register(
            "bundle_expires_timestamp_seconds",
            "When the active bundle expires (0: never)",
            m.bundle_expires.clone(),
        );
        registry.register(
            "activations",
            "Bundles activated or refused, by reason",
            m.activations.clone(),
        );
        registry.register(
            "activation_duration_seconds",
            "Time to verify, compile and swap in a bundle",
            m.activation_seconds.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open",
            m.connections.clone(),
        );
        registry.register(
            "websocket_tunnels",
            "WebSocket connections joined to an origin now",
            m.websocket_tunnels.clone(),
        );
        registry.register(
            "state_write_errors",
            "Failures to record the active bundle in the state directory",
            m.state_write_errors.clone(),
        );
        registry.register(
            "golden_requests",
            "Golden requests (a bundle's tests) passed by bundles before they were activated",
            m.golden_requests.clone(),
        );
        registry.register(
            "rollbacks",
            "Automatic returns to the previous bundle after an error rate above the threshold",
            m.rollbacks.clone(),
        );
        registry.register(
            "registry_polls",
            "Looks at the release reference in the registry, by result",
            m.registry_polls.clone(),
        );
        registry.register(
            "function_instantiate_duration_seconds",
            "Time to start a fresh function instance, by function",
            m.function_instantiate_seconds.clone(),
        );
        registry.register(
            "function_errors",
            "Function runs that failed, by function and kind (trap, timeout, memory, error, capacity, outbound_refused)",
            m.function_errors.clone(),
        );
        registry.register(
            "function_instances",
            "Function instances alive now",
            m.function_instances.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a request under its route (`route_id` in the plan of `generation`; `route` is
    /// its name, the label), what the node did and the status.
    pub fn count_request(
        &self,
        generation: u64,
        route_id: Option<u32>,
        route: &str,
        action: &'static str,
        status: u16,
    ) {
        let labels = || RequestLabels {
            route: route.to_string(),
            action,
            status,
        };
        with_handle(
            &REQUESTS,
            (self.id, generation, route_id, action, status),
            || self.requests.get_or_create(&labels()).clone(),
            Counter::inc,
        );
    }

    /// Counts a cache lookup's result: `hit`, `stale`, `miss` or `bypass`.
    pub fn count_cache(&self, result: &'static str) {
        with_handle(
            &CACHE_RESULTS,
            (self.id, result),
            || self.cache.get_or_create(&CacheLabels { result }).clone(),
            Counter::inc,
        );
    }

    /// Records how long origin `origin_id` (in the plan of `generation`; `origin` is its
    /// name) took to answer.
    pub fn observe_upstream(&self, generation: u64, origin_id: u32, origin: &str, seconds: f64) {
        let labels = || UpstreamOrigin {
            origin: origin.to_string(),
        };
        with_handle(
            &UPSTREAM_SECONDS,
            (self.id, generation, origin_id),
            || self.upstream_seconds.get_or_create(&labels()).clone(),
            |histogram| histogram.observe(seconds),
        );
    }

    /// Function `function_id`'s (in the plan of `generation`; `function` is its name)
    /// instantiation-time histogram and refused-outbound-call counter.
    pub fn function_meters(
        &self,
        generation: u64,
        function_id: u32,
        function: &str,
    ) -> (Histogram, Counter) {
        let make = || {
            let instantiate = self
                .function_instantiate_seconds
                .get_or_create(&FunctionLabels {
                    function: function.to_string(),
                })
                .clone();
            let refused = self
                .function_errors
                .get_or_create(&FunctionErrorLabels {
                    function: function.to_string(),
                    kind: "outbound_refused",
                })
                .clone();
            (instantiate, refused)
        };
        with_handle(
            &FUNCTION_METERS,
            (self.id, generation, function_id),
            make,
            Clone::clone,
        )
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_every_family() {
        let metrics = Metrics::new();
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: "GET /api/health".into(),
                action: "respond",
                status: 200,
            })
            .inc();
        metrics.decide_seconds.observe(0.000_001);
        let text = metrics.render();
        assert!(text.contains("# TYPE edgepack_requests counter"), "{text}");
        assert!(
            text.contains(r#"edgepack_requests_total{route="GET /api/health",action="respond",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("edgepack_decide_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn requests_are_counted_under_their_own_node_route_and_status() {
        let (first, second) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            first.count_request(1, Some(0), "GET /a", "respond", 200);
        }
        first.count_request(1, Some(1), "GET /b", "proxy", 502);
        // The same route index in the next plan may be another route.
        first.count_request(2, Some(0), "GET /c", "respond", 200);
        second.count_request(1, Some(0), "GET /other", "respond", 200);
        // More keys than a thread keeps handles for, each twice: counts are still kept.
        let many = 2 * CACHED_HANDLES as u16;
        for status in (0..many).chain(0..many) {
            first.count_request(1, None, "none", "none", status);
        }
        first.count_request(1, Some(0), "GET /a", "respond", 200);
        let text = first.render();
        for status in 0..many {
            let line = format!(
                r#"edgepack_requests_total{{route="none",action="none",status="{status}"}} 2"#
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        for line in [
            r#"edgepack_requests_total{route="GET /a",action="respond",status="200"} 4"#,
            r#"edgepack_requests_total{route="GET /b",action="proxy",status="502"} 1"#,
            r#"edgepack_requests_total{route="GET /c",action="respond",status="200"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(!text.contains("GET /other"), "{text}");
        assert!(second.render().contains(
            r#"edgepack_requests_total{route="GET /other",action="respond",status="200"} 1"#
        ));
    }

    #[test]
    fn cache_origin_and_function_metrics_go_to_their_own_series() {
        let metrics = Metrics::new();
        for result in ["hit", "hit", "miss"] {
            metrics.count_cache(result);
        }
        metrics.observe_upstream(1, 0, "api", 0.002);
        metrics.observe_upstream(1, 0, "api", 0.004);
        metrics.observe_upstream(2, 0, "ml", 0.001);
        let (instantiate, refused) = metrics.function_meters(1, 3, "ml-infer");
        instantiate.observe(0.000_005);
        refused.inc();
        // The same handles the next time.
        metrics.function_meters(1, 3, "ml-infer").1.inc();
        let text = metrics.render();
        for line in [
            r#"edgepack_cache_lookups_total{result="hit"} 2"#,
            r#"edgepack_cache_lookups_total{result="miss"} 1"#,
            r#"edgepack_upstream_duration_seconds_count{origin="api"} 2"#,
            r#"edgepack_upstream_duration_seconds_count{origin="ml"} 1"#,
            r#"edgepack_function_instantiate_duration_seconds_count{function="ml-infer"} 1"#,
            r#"edgepack_function_errors_total{function="ml-infer",kind="outbound_refused"} 2"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
