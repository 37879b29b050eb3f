//! Golden requests: a bundle's `test` blocks, sent through a node's own request path
//! before the bundle may serve (and by `edgepack test`, which reports them).
//!
//! A [`RequestSpec`] says what a request is in the policy's terms — a country rather than
//! the header and trusted peer that carry it — and [`RequestSpec::to_request`] turns it into
//! the bytes a node would see for the given plans. [`run`] sends one test and checks what
//! it expects: status, route, WAF rule, cache TTL.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use edgepack_bundles::abi::{Decision, Effect, Outcome};
use edgepack_bundles::plan::{RegionPlan, TestPlan};
use edgepack_bundles::request::{Request, ip_from_bytes};
use http_body_util::Full;

use crate::node::Node;

/// A request in the policy's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestSpec {
    pub method: String,
    /// The path with an optional `?query`.
    pub target: String,
    pub host: Option<String>,
    /// The client's country (two letters).
    pub country: Option<String>,
    /// The client's address.
    pub ip: Option<IpAddr>,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl RequestSpec {
    pub fn new(method: &str, target: &str) -> RequestSpec {
        RequestSpec {
            method: method.to_string(),
            target: target.to_string(),
            ..RequestSpec::default()
        }
    }

    /// The request a policy `test` block describes.
    pub fn from_test(test: &TestPlan) -> RequestSpec {
        RequestSpec {
            method: test.method.clone(),
            target: test.target.clone(),
            host: test.host.clone(),
            country: test.country.clone(),
            ip: test.ip.as_deref().and_then(|ip| ip.parse().ok()),
            headers: test.headers.clone(),
            body: test.body.clone(),
        }
    }

    /// Builds the request for these plans: one request that means the same to all of them
    /// (`diff` runs it through an old and a new plan whose geo settings may differ).
    ///
    /// A country travels in each plan's country header from its first trusted peer (the
    /// client address, when given, in `x-forwarded-for`); a plan without a country header
    /// gets a client address its geo ranges place in that country.
    pub fn to_request(&self, plans: &[&RegionPlan]) -> Result<Request, String> {
        if !self.target.starts_with('/') {
            return Err(format!(
                "the request target must start with `/`: {:?}",
                self.target
            ));
        }
        let mut request = Request::new(&self.method, &self.target)
            .host(self.host.as_deref().unwrap_or("localhost"));
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(body) = &self.body {
            request = request.body(body.as_bytes());
        }
        let Some(country) = &self.country else {
            if let Some(ip) = self.ip {
                request = request.peer(ip);
            }
            return Ok(request);
        };
        let country = country.to_ascii_uppercase();
        let mut headers: BTreeSet<&str> = BTreeSet::new();
        let mut peer: Option<IpAddr> = None;
        let mut client: Option<IpAddr> = self.ip;
        for plan in plans {
            let Some(geo) = &plan.geo else { continue };
            match &geo.country_header {
                Some(header) => {
                    headers.insert(header);
                    if peer.is_none() {
                        peer = geo
                            .trusted_peers
                            .first()
                            .and_then(|n| n.parse::<ipnet::IpNet>().ok())
                            .map(|net| net.hosts().next().unwrap_or(net.network()));
                    }
                }
                None => {
                    if client.is_none() {
                        client = geo
                            .ranges
                            .iter()
                            .find(|r| r.country == country)
                            .map(|r| ip_from_bytes(r.start));
                    }
                }
            }
        }
        if headers.is_empty() && client.is_none() {
            return Err(format!(
                "this policy cannot tell a client from {country}: it reads no country header and \
                 none of its address ranges is in {country}; give an address instead"
            ));
        }
        for header in &headers {
            request = request.header(header, &country);
        }
        match (peer, client) {
            (Some(peer), Some(client)) => {
                request = request
                    .peer(peer)
                    .header("x-forwarded-for", client.to_string());
            }
            (Some(peer), None) => request = request.peer(peer),
            (None, Some(client)) => request = request.peer(client),
            (None, None) => {
                return Err(
                    "this policy reads a country header but trusts no peer to send it".to_string(),
                );
            }
        }
        Ok(request)
    }
}

impl fmt::Display for RequestSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.target)?;
        if let Some(host) = &self.host {
            write!(f, " host={host}")?;
        }
        if let Some(country) = &self.country {
            write!(f, " country={country}")?;
        }
        if let Some(ip) = &self.ip {
            write!(f, " ip={ip}")?;
        }
        for (name, value) in &self.headers {
            write!(f, " [{name}: {value}]")?;
        }
        if let Some(body) = &self.body {
            write!(f, " body={} bytes", body.len())?;
        }
        Ok(())
    }
}

/// What one test did.
#[derive(Debug)]
pub struct GoldenResult {
    pub status: u16,
    /// What did not hold, one line each; empty: the test passed.
    pub failures: Vec<String>,
    /// The decision, when the node made one.
    pub decision: Option<Decision>,
}

impl GoldenResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Sends `test` through `node` (which must expose its decisions) and checks every
/// expectation.
pub async fn run(node: &Arc<Node>, plan: &RegionPlan, test: &TestPlan) -> GoldenResult {
    let mut result = GoldenResult {
        status: 0,
        failures: Vec::new(),
        decision: None,
    };
    let request = match RequestSpec::from_test(test).to_request(&[plan]) {
        Ok(request) => request,
        Err(message) => {
            result.failures.push(message);
            return result;
        }
    };
    let mut target = String::from_utf8_lossy(&request.path).into_owned();
    if !request.query.is_empty() {
        target.push('?');
        target.push_str(&String::from_utf8_lossy(&request.query));
    }
    let mut builder = http::Request::builder()
        .method(request.method.as_str())
        .uri(target)
        .header(http::header::HOST, request.host.as_slice());
    for (name, value) in &request.headers {
        builder = builder.header(name.as_slice(), value.as_slice());
    }
    let http_request = match builder.body(Full::new(Bytes::from(request.body.clone()))) {
        Ok(r) => r,
        Err(error) => {
            result
                .failures
                .push(format!("the request cannot be sent: {error}"));
            return result;
        }
    };
    let response = node
        .handle(http_request, SocketAddr::new(request.peer, 40000), false)
        .await;
    result.status = response.status().as_u16();
    for (name, expected) in &test.expect_headers {
        let values: Vec<&str> = response
            .headers()
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !values.contains(&expected.as_str()) {
            result.failures.push(format!(
                "expected header {name}: {expected}, got {}",
                listed(&values)
            ));
        }
    }
    let Some(decision) = response.extensions().get::<Decision>().cloned() else {
        result.failures.push(format!(
            "the node answered {} without deciding",
            result.status
        ));
        return result;
    };
    if let Some(status) = test.expect_status
        && status != result.status
    {
        result
            .failures
            .push(format!("expected status {status}, got {}", result.status));
    }
    if let Some(expected) = &test.expect_route {
        let route = decision.route.and_then(|id| plan.routes.get(id as usize));
        if route.is_none_or(|r| r.pattern != *expected) {
            result.failures.push(format!(
                "expected route {expected}, got {}",
                route.map_or("none".to_string(), |r| r.pattern.clone())
            ));
        }
    }
    if let Some(expected) = &test.expect_rule {
        let fired: Vec<&str> = decision
            .rules
            .iter()
            .filter_map(|id| plan.waf.as_ref()?.rules.get(*id as usize))
            .map(|r| r.name.as_str())
            .collect();
        if !fired.contains(&expected.as_str()) {
            result.failures.push(format!(
                "expected WAF rule {expected} to fire, fired: {}",
                listed(&fired)
            ));
        }
    }
    if let Some(expected) = test.expect_cache_ttl_ms {
        let ttl = match &decision.outcome {
            Outcome::Effects(effects) => effects.iter().find_map(|e| match e {
                Effect::Cache(route) => plan.routes.get(*route as usize)?.cache.as_ref(),
                _ => None,
            }),
            Outcome::Final(_) => None,
        }
        .map(|c| c.ttl_ms);
        if ttl != Some(expected) {
            result.failures.push(format!(
                "expected cache TTL {}, got {}",
                millis(expected),
                ttl.map_or("no caching".to_string(), millis)
            ));
        }
    }
    result.decision = Some(decision);
    result
}

/// What came, for a failure message: the values joined, or `none`.
fn listed(values: &[&str]) -> String {
    if values.is_empty() {
        "none".to_string()
    } else {
        values.join(", ")
    }
}

fn millis(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
