//! One request, start to finish: read it, let the policy decide, carry out the decision's
//! effects in the order it gives them, and answer with the node's headers, a metric and an
//! access-log line.

// Effects that answer early return `Err(response)`: a response is moved once per request,
// boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use edgepack_bundles::abi::{self, Answer, Decision, Effect, Outcome};
use edgepack_bundles::plan::{ActionPlan, CorsPlan, HeaderEdit, OriginPlan};
use edgepack_bundles::request::RequestParts;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::Sha256;

use crate::activation::Active;
use crate::cache::{self, Entry, Lookup};
use crate::functions::{Function, FunctionEngine, RunError, RunMeters};
use crate::jwt::{Claims, TokenError};
use crate::metrics::{FunctionErrorLabels, JwtLabels, LimitLabels, RuleLabels, UpstreamLabels};
use crate::node::{Node, RequestId};
use crate::proxy::{self, UpstreamError};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a function finds the claims of the token the node verified, as JSON.
pub const IDENTITY_HEADER: &str = "edgepack-identity";

const X_EDGE_REGION: HeaderName = HeaderName::from_static("x-edge-region");
const X_EDGE_BUNDLE: HeaderName = HeaderName::from_static("x-edge-bundle");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Function responses up to this size are sent whole; longer ones stream.
const FUNCTION_BUFFER: usize = 64 << 10;
/// The body of every response the node sends.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// The request as the policy sees it: the parsed head, the body read so far, the peer.
struct View<'a> {
    parts: &'a http::request::Parts,
    body: &'a [u8],
    peer: IpAddr,
}

impl View<'_> {
    /// HTTP/2 carries the host as `:authority`: without a `Host` header the policy sees it as
    /// the `host` header an HTTP/1.1 request would have sent (as nginx shows it to
    /// ModSecurity).
    fn authority_as_host(&self) -> Option<&str> {
        if self.parts.headers.contains_key(header::HOST) {
            return None;
        }
        self.parts.uri.authority().map(|a| a.as_str())
    }
}

impl RequestParts for View<'_> {
    fn method(&self) -> &str {
        self.parts.method.as_str()
    }

    fn protocol(&self) -> &str {
        match self.parts.version {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        }
    }

    fn path(&self) -> &[u8] {
        self.parts.uri.path().as_bytes()
    }

    fn query(&self) -> &[u8] {
        self.parts.uri.query().unwrap_or("").as_bytes()
    }

    fn host(&self) -> &[u8] {
        match self.parts.headers.get(header::HOST) {
            Some(host) => host.as_bytes(),
            None => self
                .parts
                .uri
                .authority()
                .map_or(&b""[..], |a| a.as_str().as_bytes()),
        }
    }

    fn peer(&self) -> IpAddr {
        self.peer
    }

    fn for_each_header(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        if let Some(authority) = self.authority_as_host() {
            f(b"host", authority.as_bytes());
        }
        for (name, value) in &self.parts.headers {
            f(name.as_str().as_bytes(), value.as_bytes());
        }
    }

    fn header_count(&self) -> usize {
        self.parts.headers.len() + usize::from(self.authority_as_host().is_some())
    }

    fn body(&self) -> &[u8] {
        self.body
    }

    fn body_len(&self) -> u64 {
        self.body.len() as u64
    }
}

/// What the access log and the metrics say about a request.
#[derive(Default)]
struct Record {
    action: &'static str,
    cache: Option<&'static str>,
    upstream_ms: Option<f64>,
    error: Option<String>,
}

/// One request in progress.
struct Exchange<'a> {
    node: &'a Arc<Node>,
    active: Arc<Active>,
    id: RequestId,
    peer: IpAddr,
    https: bool,
    started: Instant,
    decision: Decision,
    claims: Option<Claims>,
    cors: Option<u32>,
    /// The request's `Origin` header (CORS answers echo it).
    request_origin: Option<HeaderValue>,
    /// The client's side of a WebSocket upgrade the request asks for (HTTP/1.1 only).
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The client as the policy saw it (the peer until the policy has decided).
    client: IpAddr,
    record: Record,
}

impl Node {
    /// Answers one request. Never fails: every problem becomes a response.
    pub async fn handle<B>(
        self: &Arc<Self>,
        mut request: Request<B>,
        peer: SocketAddr,
        https: bool,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        host_from_target(&mut request);
        let id = self.next_request_id();
        let Some(active) = self.active.load_full() else {
            let mut response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no policy is active on this node",
                id.as_str(),
            );
            response
                .headers_mut()
                .insert(X_REQUEST_ID, id.header_value());
            return response;
        };
        let upgrade = asks_for_websocket(&request).then(|| hyper::upgrade::on(&mut request));
        let mut exchange = Exchange {
            node: self,
            active,
            id,
            peer: peer.ip(),
            https,
            started,
            decision: Decision::default(),
            claims: None,
            cors: None,
            request_origin: request.headers().get(header::ORIGIN).cloned(),
            upgrade,
            client: peer.ip(),
            record: Record::default(),
        };
        let (parts, body) = request.into_parts();
        let response = exchange.run(&parts, body).await;
        exchange.finish(&parts, response)
    }
}

impl Exchange<'_> {
    async fn run<B>(&mut self, parts: &http::request::Parts, body: B) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if let Some(problem) = host_problem(parts) {
            self.record.action = "refused";
            return self.error(StatusCode::BAD_REQUEST, problem);
        }
        let body = match self.read_body(parts, body).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        let view = View {
            parts,
            body: &body,
            peer: self.peer,
        };
        let decided_at = Instant::now();
        let replayed = self.node.replayed_decision();
        let decided = match replayed {
            Some(Some(decision)) => Ok(decision.clone()),
            _ => crate::decide::decide(&self.active, &view, |d| d.clone()),
        };
        if let (Some(None), Ok(decision)) = (replayed, &decided) {
            self.node.replay_decision(decision);
        }
        self.node
            .metrics
            .decide_seconds
            .observe(decided_at.elapsed().as_secs_f64());
        self.decision = match decided {
            Ok(decision) => {
                self.client = decision.client_ip;
                decision
            }
            // A request the block cannot hold is the client's doing: its own status.
            Err(crate::host::HostError::Request(refused)) => {
                self.record.action = "refused";
                let status =
                    StatusCode::from_u16(refused.status()).unwrap_or(StatusCode::BAD_REQUEST);
                return self.error(status, &refused.to_string());
            }
            Err(error) => {
                self.record.action = "error";
                self.record.error = Some(format!("policy: {error}"));
                return self.error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the policy could not decide this request",
                );
            }
        };
        if self.decision.flags & abi::dec::FLAG_WAF_LOGGED != 0 {
            for rule in &self.decision.rules {
                let labels = RuleLabels {
                    rule: self.rule_name(*rule).to_string(),
                };
                self.node.metrics.waf_logged.get_or_create(&labels).inc();
            }
        }
        // Taken out while the effects run (they borrow the exchange), then put back.
        let outcome = std::mem::replace(&mut self.decision.outcome, Outcome::Effects(Vec::new()));
        let response = match &outcome {
            Outcome::Final(answer) => self.answer(parts, answer),
            Outcome::Effects(effects) => self.carry_out(parts, body, effects).await,
        };
        self.decision.outcome = outcome;
        response
    }

    /// Reads the body, bounded in size and time.
    async fn read_body<B>(
        &mut self,
        parts: &http::request::Parts,
        body: B,
    ) -> Result<Bytes, Response<Body>>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let settings = &self.node.settings;
        let ambiguous = parts
            .extensions
            .get::<crate::server::AmbiguousFraming>()
            .is_some()
            || (parts.headers.contains_key(header::CONTENT_LENGTH)
                && parts.headers.contains_key(header::TRANSFER_ENCODING));
        if ambiguous {
            self.record.action = "refused";
            return Err(self.error(
                StatusCode::BAD_REQUEST,
                "Content-Length and Transfer-Encoding together are refused",
            ));
        }
        if other_transfer_coding(&parts.headers) {
            self.record.action = "refused";
            return Err(self.error(
                StatusCode::NOT_IMPLEMENTED,
                "a transfer coding other than chunked is not supported",
            ));
        }
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > settings.max_body) {
            self.record.action = "refused";
            return Err(self.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large",
            ));
        }
        // Most requests have no body: nothing to wait for, no timer to set.
        if body.is_end_stream() {
            return Ok(Bytes::new());
        }
        let limited = Limited::new(body, settings.max_body as usize);
        match tokio::time::timeout(settings.body_timeout, limited.collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(error)) => {
                self.record.action = "refused";
                if error
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    Err(self.error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the request body is too large",
                    ))
                } else {
                    Err(self.error(
                        StatusCode::BAD_REQUEST,
                        "the request body could not be read",
                    ))
                }
            }
            Err(_) => {
                self.record.action = "refused";
                Err(self.error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                ))
            }
        }
    }

    /// A final answer: the policy decided without anything for the node to carry out.
    fn answer(&mut self, parts: &http::request::Parts, answer: &Answer) -> Response<Body> {
        let status = StatusCode::from_u16(answer.status()).unwrap_or(StatusCode::FORBIDDEN);
        match answer {
            Answer::Respond { response, .. } => {
                self.record.action = "respond";
                self.respond(*response)
            }
            Answer::Redirect { location, .. } => {
                self.record.action = "redirect";
                redirect(status, location)
            }
            Answer::Block { .. } => {
                self.record.action = "block";
                self.error(status, "this request is blocked")
            }
            Answer::NotFound { .. } => {
                self.record.action = "not_found";
                self.error(status, "no route takes this request")
            }
            Answer::MethodNotAllowed { allow, .. } => {
                self.record.action = "method_not_allowed";
                let mut response = self.error(status, "no route takes this method on this path");
                let allow: Vec<&str> = edgepack_bundles::abi::method::names(*allow).collect();
                if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                response
            }
            Answer::GeoBlocked { .. } => {
                self.record.action = "geo_block";
                self.error(status, "this service is not available in your country")
            }
            Answer::WafBlocked { .. } => {
                self.record.action = "waf_block";
                for rule in &self.decision.rules {
                    let labels = RuleLabels {
                        rule: self.rule_name(*rule).to_string(),
                    };
                    self.node.metrics.waf_blocks.get_or_create(&labels).inc();
                }
                self.error(
                    status,
                    "this request was blocked by the web application firewall",
                )
            }
            Answer::BodyTooLarge { .. } => {
                self.record.action = "too_large";
                self.error(
                    status,
                    "the request body is larger than this route inspects",
                )
            }
            Answer::Unauthorized { jwt, .. } => {
                let realm = self.active.jwt.get(*jwt as usize).map(|j| j.name());
                let realm = realm.unwrap_or("edge").to_string();
                self.unauthorized(&realm, None)
            }
            Answer::Preflight { cors, .. } => {
                self.record.action = "preflight";
                match (status, self.active.plan.cors.get(*cors as usize)) {
                    (StatusCode::NO_CONTENT, Some(policy)) => self.preflight(parts, policy),
                    _ => self.error(StatusCode::FORBIDDEN, "this CORS request is not allowed"),
                }
            }
        }
    }

    /// The effects, in order; the first that answers ends the request.
    async fn carry_out(
        &mut self,
        parts: &http::request::Parts,
        body: Bytes,
        effects: &[Effect],
    ) -> Response<Body> {
        let mut outgoing = parts.headers.clone();
        let mut cache_key: Option<Vec<u8>> = None;
        let mut cache_route: Option<u32> = None;
        // A WebSocket upgrade the route takes goes to the origin, never to the cache; where
        // origins are stood in for (`edgepack test`, golden requests) it is a plain request.
        let tunnel = self.upgrade.is_some()
            && !self.node.settings.stand_in_origins
            && matches!(
                self.decision.route.and_then(|r| self.route_action(r)),
                Some(ActionPlan::Proxy {
                    websocket: true,
                    ..
                })
            );
        for effect in effects {
            match *effect {
                Effect::VerifyJwt(id) => {
                    if let Err(response) = self.verify_jwt(parts, id) {
                        return response;
                    }
                }
                Effect::RateLimit(id) => {
                    if let Err(response) = self.rate_limit(parts, id) {
                        return response;
                    }
                }
                Effect::Cache(route) => {
                    let Some(key) = self.cache_key(parts, route).filter(|_| !tunnel) else {
                        continue;
                    };
                    let head = parts.method == Method::HEAD;
                    if !head {
                        // What the origin sends is stored for every client: a full answer,
                        // which this client's validators are then checked against.
                        outgoing.remove(header::IF_NONE_MATCH);
                        outgoing.remove(header::IF_MODIFIED_SINCE);
                    }
                    match self.node.cache.lookup(&key) {
                        Lookup::Fresh(entry) => {
                            self.count_cache("hit");
                            self.record.action = "cache";
                            return self.cached(parts, &entry, "HIT");
                        }
                        Lookup::Stale { entry, refresh } => {
                            self.count_cache("stale");
                            self.record.action = "cache";
                            if refresh && head {
                                // A HEAD's answer has no body to store: the next GET refreshes.
                                self.node.cache.refresh_failed(&key);
                            } else if refresh {
                                self.refresh_later(parts, &body, &outgoing, effects, key, route);
                            }
                            return self.cached(parts, &entry, "STALE");
                        }
                        Lookup::Miss => {
                            self.count_cache("miss");
                            if !head {
                                cache_key = Some(key);
                                cache_route = Some(route);
                            }
                        }
                    }
                }
                Effect::EditHeaders(set) => {
                    if let Some(edits) = self.active.plan.edit_sets.get(set as usize) {
                        apply_edits(&mut outgoing, &edits.request);
                    }
                }
                Effect::Residency(zone) => self.residency(&mut outgoing, zone),
                Effect::Cors(id) => self.cors = Some(id),
                Effect::Proxy(origin) => {
                    self.record.action = "proxy";
                    let upgrade = if tunnel { self.upgrade.take() } else { None };
                    let client_upgrade = parts.headers.get(header::UPGRADE).cloned();
                    let mut request = match self.outgoing(parts, body, outgoing, origin) {
                        Ok(request) => request,
                        Err(response) => return response,
                    };
                    if let (Some(upgrade), Some(protocol)) = (upgrade, client_upgrade) {
                        let headers = request.headers_mut();
                        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                        headers.insert(header::UPGRADE, protocol);
                        return self.tunnel(request, origin, upgrade).await;
                    }
                    let store = cache_key.zip(cache_route);
                    return self.proxy(parts, request, origin, store).await;
                }
                Effect::Function(function) => {
                    self.record.action = "function";
                    let request = self.function_request(parts, body, outgoing);
                    let store = cache_key.zip(cache_route);
                    return self.function(parts, request, function, store).await;
                }
                Effect::Respond(response) => {
                    self.record.action = "respond";
                    return self.respond(response);
                }
                Effect::Redirect(route) => {
                    self.record.action = "redirect";
                    let status = match self.route_action(route) {
                        Some(ActionPlan::Redirect { status, .. }) => *status,
                        _ => 302,
                    };
                    let location = self.decision.location.clone().unwrap_or_else(|| "/".into());
                    return redirect(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND),
                        &location,
                    );
                }
                Effect::Block(route) => {
                    self.record.action = "block";
                    let status = match self.route_action(route) {
                        Some(ActionPlan::Block { status }) => *status,
                        _ => 403,
                    };
                    return self.error(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                        "this request is blocked",
                    );
                }
            }
        }
        self.record.action = "error";
        self.record.error = Some("the decision ended without an action".into());
        self.error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the policy gave no action for this request",
        )
    }

    fn verify_jwt(&mut self, parts: &http::request::Parts, id: u32) -> Result<(), Response<Body>> {
        let Some(verifier) = self.active.jwt.get(id as usize) else {
            return Err(self.error(StatusCode::INTERNAL_SERVER_ERROR, "unknown token provider"));
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let Some(token) = token else {
            let realm = verifier.name().to_string();
            return Err(self.unauthorized(&realm, None));
        };
        let result = verifier.verify(token);
        let labels = JwtLabels {
            jwt: verifier.name().to_string(),
            result: if result.is_ok() { "valid" } else { "invalid" },
        };
        self.node.metrics.jwt.get_or_create(&labels).inc();
        match result {
            Ok(claims) => {
                self.claims = Some(claims);
                Ok(())
            }
            Err(error) => {
                let realm = verifier.name().to_string();
                Err(self.unauthorized(&realm, Some(&error)))
            }
        }
    }

    /// 401 with a `WWW-Authenticate` challenge; RFC 6750 names an error only when a token
    /// was sent.
    fn unauthorized(&mut self, realm: &str, error: Option<&TokenError>) -> Response<Body> {
        self.record.action = "unauthorized";
        let mut response = self.error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        let challenge = match error {
            None => format!("Bearer realm=\"{realm}\""),
            Some(error) => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{error}\""
            ),
        };
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }

    fn rate_limit(&mut self, parts: &http::request::Parts, id: u32) -> Result<(), Response<Body>> {
        let (Some(limiter), Some(plan)) = (
            self.active.limiters.get(id as usize),
            self.active.plan.ratelimits.get(id as usize),
        ) else {
            return Err(self.error(StatusCode::INTERNAL_SERVER_ERROR, "unknown rate limit"));
        };
        let key = self.key_part(parts, &plan.key).unwrap_or_default();
        let Err(wait) = limiter.check(key.as_bytes()) else {
            return Ok(());
        };
        self.record.action = "rate_limited";
        let labels = LimitLabels {
            limit: limiter.name().to_string(),
        };
        self.node.metrics.rate_limited.get_or_create(&labels).inc();
        let mut response = self.error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        Err(response)
    }

    /// A key part: `client-ip`, `header:NAME`, `cookie:NAME` or `claim:NAME`.
    fn key_part(&self, parts: &http::request::Parts, spec: &str) -> Option<String> {
        if spec == "client-ip" {
            return Some(client_key(self.decision.client_ip).to_string());
        }
        let (kind, name) = spec.split_once(':')?;
        match kind {
            "header" => parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .reduce(|a, b| format!("{a},{b}")),
            "cookie" => parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string()),
            "claim" => self.claims.as_ref()?.get(name).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            _ => None,
        }
    }

    fn cache_key(&self, parts: &http::request::Parts, route: u32) -> Option<Vec<u8>> {
        let cache = self
            .active
            .plan
            .routes
            .get(route as usize)?
            .cache
            .as_ref()?;
        // GET and HEAD share an entry (a HEAD is answered from a stored GET); other methods
        // are never answered from the cache, whatever an older module asks.
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return None;
        }
        let mut key = target_head(parts);
        for name in &cache.vary {
            key.push(0);
            key.extend_from_slice(name.as_bytes());
            key.push(b'=');
            for value in parts.headers.get_all(name.as_str()) {
                key.extend_from_slice(value.as_bytes());
                key.push(b',');
            }
        }
        for part in &cache.key {
            key.push(0);
            key.extend_from_slice(part.as_bytes());
            key.push(b'=');
            if let Some(value) = self.key_part(parts, part) {
                key.extend_from_slice(value.as_bytes());
            }
        }
        Some(key)
    }

    fn count_cache(&mut self, result: &'static str) {
        self.record.cache = Some(result);
        self.node.metrics.count_cache(result);
    }

    /// A stored response, or `304 Not Modified` when the request's validators match it.
    fn cached(
        &self,
        parts: &http::request::Parts,
        entry: &Entry,
        state: &'static str,
    ) -> Response<Body> {
        let mut response = not_modified(parts, entry.status, &entry.headers).unwrap_or_else(|| {
            let mut response = Response::new(full(entry.body.clone()));
            *response.status_mut() = entry.status;
            *response.headers_mut() = entry.headers.clone();
            response
        });
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(entry.age()));
        response
            .headers_mut()
            .insert("x-cache", HeaderValue::from_static(state));
        response
    }

    fn residency(&self, headers: &mut HeaderMap, zone: u32) {
        let Some(rules) = self.active.plan.residency.iter().find(|r| r.zone == zone) else {
            return;
        };
        for name in &rules.drop {
            headers.remove(name.as_str());
        }
        for name in &rules.pseudonymize {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            headers.remove(&name);
            let Some(key) = self.node.pseudonymize_key() else {
                // Without a key, dropping is the only way to keep the data in its zone.
                continue;
            };
            for value in values {
                let pseudonym = pseudonymize(key, value.as_bytes());
                if let Ok(value) = HeaderValue::from_str(&pseudonym) {
                    headers.append(name.clone(), value);
                }
            }
        }
    }

    /// The request to send to an origin.
    fn outgoing(
        &self,
        parts: &http::request::Parts,
        body: Bytes,
        mut headers: HeaderMap,
        origin: u32,
    ) -> Result<Request<Full<Bytes>>, Response<Body>> {
        let Some(target) = self.active.origin_targets.get(origin as usize) else {
            return Err(self.error(StatusCode::INTERNAL_SERVER_ERROR, "unknown origin"));
        };
        let uri = match target.uri(parts.uri.path_and_query()) {
            Ok(uri) => uri,
            Err(_) => {
                return Err(self.error(
                    StatusCode::BAD_REQUEST,
                    "the request target cannot be forwarded",
                ));
            }
        };
        // The host the client asked for: `Host`, or HTTP/2's `:authority` without one.
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        proxy::strip_hop_by_hop(&mut headers);
        if self.decision.flags & abi::dec::FLAG_STRIP_COUNTRY_HEADER != 0
            && let Some(name) = &self.active.country_header
        {
            headers.remove(name);
        }
        proxy::add_forwarded(&mut headers, self.peer, self.https, original_host.as_ref());
        self.identify(&mut headers);
        headers.insert(X_REQUEST_ID, self.id.header_value());
        headers.insert(header::HOST, target.host().clone());
        headers.remove(header::CONTENT_LENGTH);
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }

    async fn proxy(
        &mut self,
        parts: &http::request::Parts,
        request: Request<Full<Bytes>>,
        origin: u32,
        store: Option<(Vec<u8>, u32)>,
    ) -> Response<Body> {
        let active = self.active.clone();
        let Some(plan) = active.plan.origins.get(origin as usize) else {
            return self.error(StatusCode::INTERNAL_SERVER_ERROR, "unknown origin");
        };
        if self.node.settings.stand_in_origins {
            let name = plan.name.clone();
            return self.stand_in(&name);
        }
        let response = match self.forward(plan, request).await {
            Ok(response) => response,
            Err(answer) => return answer,
        };
        if other_transfer_coding(response.headers()) {
            self.record.error = Some(format!(
                "origin {}: a transfer coding other than chunked",
                plan.name
            ));
            return self.error(
                StatusCode::BAD_GATEWAY,
                "the origin answered in a transfer coding the node does not implement",
            );
        }
        self.invalidate_if_written(parts, response.status());
        let (mut head, incoming) = response.into_parts();
        proxy::strip_hop_by_hop(&mut head.headers);
        let incoming = proxy::StallGuard::new(
            incoming,
            Duration::from_millis(plan.response_timeout_ms.max(1)),
        )
        .boxed();
        let body = match store {
            Some((key, route)) => {
                match store_response(self.node, &self.active, &head, incoming, key, route).await {
                    Ok((body, stored)) => return self.stored_miss(parts, head, body, stored),
                    Err(error) => {
                        self.record.error = Some(format!("origin {}: {error}", plan.name));
                        return self
                            .error(StatusCode::BAD_GATEWAY, "the origin's response broke off");
                    }
                }
            }
            None => incoming,
        };
        self.marked_miss(Response::from_parts(head, body))
    }

    /// After an origin or a function answered a request that writes (a `POST`, `PUT`,
    /// `DELETE`, …) with success or a redirect, the cache drops what it stored for the
    /// request's target, every variant; an error answer changed nothing.
    fn invalidate_if_written(&self, parts: &http::request::Parts, status: StatusCode) {
        if writes(&parts.method) && (status.is_success() || status.is_redirection()) {
            self.node.cache.invalidate_target(&target_head(parts));
        }
    }

    /// `edgepack-identity`: the verified token's claims as JSON, on routes with `auth`; a
    /// client's own header of that name never reaches an origin or a function.
    fn identify(&self, headers: &mut HeaderMap) {
        headers.remove(IDENTITY_HEADER);
        if let Some(claims) = &self.claims
            && let Ok(json) = serde_json::to_vec(claims)
            && let Ok(value) = HeaderValue::from_bytes(&json)
        {
            headers.insert(IDENTITY_HEADER, value);
        }
    }

    /// Sends `request` to the origin; a failure becomes the client's 502, or 504 when the
    /// origin did not answer in time.
    async fn forward(
        &mut self,
        plan: &OriginPlan,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<hyper::body::Incoming>, Response<Body>> {
        let (took, result) = fetch(self.node, self.active.generation, plan, request).await;
        self.record.upstream_ms = Some(crate::logs::millis(took));
        result.map_err(|error| {
            self.record.error = Some(format!("origin {}: {error}", plan.name));
            match error {
                UpstreamError::Timeout => self.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the origin did not answer in time",
                ),
                _ => self.error(StatusCode::BAD_GATEWAY, "the origin could not be reached"),
            }
        })
    }

    /// A WebSocket upgrade through to the origin: its `101` goes back to the client and the
    /// two connections are joined until either closes or both sit idle for the node's idle
    /// timeout. Any other answer from the origin goes back as it came.
    async fn tunnel(
        &mut self,
        request: Request<Full<Bytes>>,
        origin: u32,
        client: hyper::upgrade::OnUpgrade,
    ) -> Response<Body> {
        let active = self.active.clone();
        let Some(plan) = active.plan.origins.get(origin as usize) else {
            return self.error(StatusCode::INTERNAL_SERVER_ERROR, "unknown origin");
        };
        let tunnels = self.node.metrics.websocket_tunnels.clone();
        let open = TunnelGuard(tunnels.clone());
        if tunnels.inc() >= self.node.settings.max_tunnels as i64 {
            return self.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node holds as many WebSocket connections as it takes; try again",
            );
        }
        let mut response = match self.forward(plan, request).await {
            Ok(response) => response,
            Err(answer) => return answer,
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut head, incoming) = response.into_parts();
            proxy::strip_hop_by_hop(&mut head.headers);
            return Response::from_parts(head, incoming.map_err(BoxError::from).boxed());
        }
        self.record.action = "websocket";
        let upstream = hyper::upgrade::on(&mut response);
        let protocol = response.headers().get(header::UPGRADE).cloned();
        let (mut head, _) = response.into_parts();
        proxy::strip_hop_by_hop(&mut head.headers);
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            head.headers.insert(header::UPGRADE, protocol);
        }
        let idle = self.node.settings.tunnel_idle;
        tokio::spawn(async move {
            let _open = open;
            // Both sides turn into plain connections once the 101 is on its way; a client
            // gone before that ends the wait.
            let joined = tokio::time::timeout(idle, async { tokio::join!(client, upstream) });
            if let Ok((Ok(client), Ok(upstream))) = joined.await {
                splice(TokioIo::new(client), TokioIo::new(upstream), idle).await;
            }
        });
        Response::from_parts(head, empty())
    }

    /// The request a function sees: the decision's header edits and residency transforms
    /// applied, hop-by-hop headers gone, the request id, and the verified token's claims
    /// as JSON in `edgepack-identity` (never the client's own header of that name).
    fn function_request(
        &self,
        parts: &http::request::Parts,
        body: Bytes,
        mut headers: HeaderMap,
    ) -> Request<Full<Bytes>> {
        proxy::strip_hop_by_hop(&mut headers);
        if self.decision.flags & abi::dec::FLAG_STRIP_COUNTRY_HEADER != 0
            && let Some(name) = &self.active.country_header
        {
            headers.remove(name);
        }
        self.identify(&mut headers);
        headers.insert(X_REQUEST_ID, self.id.header_value());
        if !headers.contains_key(header::HOST) {
            let host = parts.uri.authority().map_or("localhost", |a| a.as_str());
            headers.insert(header::HOST, header_value(host));
        }
        headers.remove(header::CONTENT_LENGTH);
        if !body.is_empty() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = headers;
        request
    }

    /// Runs an edge function in a fresh instance; its failures answer 500, 503 or 504 and
    /// touch no other request.
    async fn function(
        &mut self,
        parts: &http::request::Parts,
        request: Request<Full<Bytes>>,
        id: u32,
        store: Option<(Vec<u8>, u32)>,
    ) -> Response<Body> {
        let active = self.active.clone();
        let (Some(function), Some(engine)) =
            (active.functions.get(id as usize), &active.function_engine)
        else {
            return self.error(StatusCode::INTERNAL_SERVER_ERROR, "unknown function");
        };
        let started = Instant::now();
        let result = run_function(
            self.node,
            active.generation,
            engine,
            function,
            request,
            self.https,
        )
        .await;
        self.record.upstream_ms = Some(crate::logs::millis(started.elapsed()));
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                self.function_failed(function, error.kind(), &error);
                return match error {
                    RunError::Timeout(_) => self.error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the function did not answer in time",
                    ),
                    RunError::Capacity(_) => self.error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no function instance is free; try again",
                    ),
                    _ => self.error(StatusCode::INTERNAL_SERVER_ERROR, "the function failed"),
                };
            }
        };
        self.invalidate_if_written(parts, response.status());
        let (mut head, body) = response.into_parts();
        proxy::strip_hop_by_hop(&mut head.headers);
        let body = match store {
            Some((key, route)) => {
                match store_response(self.node, &self.active, &head, body, key, route).await {
                    Ok((body, stored)) => return self.stored_miss(parts, head, body, stored),
                    Err(error) => return self.function_broke_off(function, started, &error),
                }
            }
            // A small answer goes out whole, in one write with its head, rather than head
            // first and body after (the function writes its body after setting its
            // response); a large one streams.
            None => match read_up_to(body, FUNCTION_BUFFER).await {
                Ok(Buffered::Whole(bytes)) => full(bytes),
                Ok(Buffered::TooLarge(body)) => body,
                Err(error) => return self.function_broke_off(function, started, &error),
            },
        };
        // The answer waits for the tasks already ready on this worker (other instances, as a
        // rule) and goes out with theirs. Sent the moment each instance finishes, answers
        // leave tens of microseconds apart, and a client with many requests in flight is
        // woken (a wake-up of an idle CPU) for nearly every one: under load, about a sixth of
        // the node's time per function request. Without load nothing waits.
        tokio::task::yield_now().await;
        self.marked_miss(Response::from_parts(head, body))
    }

    /// A function's body ended in an error before the node sent anything: stopped at its
    /// time limit (504) or failed (500).
    fn function_broke_off(
        &mut self,
        function: &Function,
        started: Instant,
        error: &BoxError,
    ) -> Response<Body> {
        let timed_out = started.elapsed() >= Duration::from_millis(function.plan.timeout_ms);
        let kind = if timed_out { "timeout" } else { "error" };
        count_function_error(self.node, &function.plan.name, kind);
        self.function_failed(function, kind, error);
        if timed_out {
            self.error(
                StatusCode::GATEWAY_TIMEOUT,
                "the function did not answer in time",
            )
        } else {
            self.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the function's response broke off",
            )
        }
    }

    /// Notes a failed function run in the access log and the event log, with its request id.
    fn function_failed(
        &mut self,
        function: &Function,
        kind: &'static str,
        error: &dyn std::fmt::Display,
    ) {
        let name = &function.plan.name;
        self.record.error = Some(format!("function {name}: {error}"));
        tracing::warn!(
            target: "edgepack::functions",
            function = %name,
            request_id = %self.id,
            kind,
            error = %error,
            "function failed"
        );
    }

    fn route_action(&self, route: u32) -> Option<&ActionPlan> {
        self.active
            .plan
            .routes
            .get(route as usize)
            .map(|r| &r.action)
    }

    /// What a stand-in origin answers (`edgepack test`): 200 and the origin's name.
    fn stand_in(&mut self, origin: &str) -> Response<Body> {
        self.record.upstream_ms = Some(0.0);
        let mut response = Response::new(full(json!({ "stand_in_origin": origin }).to_string()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.marked_miss(response)
    }

    /// A response fetched on a cache miss: `304 Not Modified` when it was stored and the
    /// request's validators match it (the origin was asked without them).
    fn stored_miss(
        &self,
        parts: &http::request::Parts,
        head: http::response::Parts,
        body: Body,
        stored: bool,
    ) -> Response<Body> {
        match not_modified(parts, head.status, &head.headers).filter(|_| stored) {
            Some(response) => self.marked_miss(response),
            None => self.marked_miss(Response::from_parts(head, body)),
        }
    }

    /// A response fetched because the cache had none carries `x-cache: MISS`.
    fn marked_miss(&self, mut response: Response<Body>) -> Response<Body> {
        if self.record.cache.is_some() {
            response
                .headers_mut()
                .insert("x-cache", HeaderValue::from_static("MISS"));
        }
        response
    }

    /// Refreshes a stale entry in the background, while the stale copy is served. The
    /// request goes out as it would on a miss: with the decision's header edits and
    /// residency transforms.
    fn refresh_later(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        outgoing: &HeaderMap,
        effects: &[Effect],
        key: Vec<u8>,
        route: u32,
    ) {
        let node = self.node.clone();
        let origin = effects.iter().find_map(|e| match e {
            Effect::Proxy(origin) => Some(*origin),
            _ => None,
        });
        let function = effects.iter().find_map(|e| match e {
            Effect::Function(function) => Some(*function),
            _ => None,
        });
        let mut headers = outgoing.clone();
        for effect in effects {
            match *effect {
                Effect::EditHeaders(set) => {
                    if let Some(edits) = self.active.plan.edit_sets.get(set as usize) {
                        apply_edits(&mut headers, &edits.request);
                    }
                }
                Effect::Residency(zone) => self.residency(&mut headers, zone),
                _ => {}
            }
        }
        if let Some(function) = function {
            let request = self.function_request(parts, body.clone(), headers);
            return self.refresh_function_later(request, function, key, route);
        }
        let request = origin.and_then(|o| self.outgoing(parts, body.clone(), headers, o).ok());
        let (Some(origin), Some(request)) = (origin, request) else {
            node.cache.refresh_failed(&key);
            return;
        };
        let active = self.active.clone();
        tokio::spawn(async move {
            let Some(plan) = active.plan.origins.get(origin as usize) else {
                return;
            };
            let (_, result) = fetch(&node, active.generation, plan, request).await;
            let stored = match result {
                Ok(response) => {
                    let (mut head, incoming) = response.into_parts();
                    proxy::strip_hop_by_hop(&mut head.headers);
                    let incoming = incoming.map_err(BoxError::from).boxed();
                    match store_response(&node, &active, &head, incoming, key.clone(), route).await
                    {
                        Ok((body, stored)) => {
                            discard(body).await;
                            stored
                        }
                        Err(_) => false,
                    }
                }
                Err(_) => false,
            };
            if !stored {
                node.cache.refresh_failed(&key);
            }
        });
    }

    fn refresh_function_later(
        &self,
        request: Request<Full<Bytes>>,
        id: u32,
        key: Vec<u8>,
        route: u32,
    ) {
        let node = self.node.clone();
        let active = self.active.clone();
        let https = self.https;
        tokio::spawn(async move {
            let (Some(function), Some(engine)) =
                (active.functions.get(id as usize), &active.function_engine)
            else {
                node.cache.refresh_failed(&key);
                return;
            };
            let stored = match run_function(
                &node,
                active.generation,
                engine,
                function,
                request,
                https,
            )
            .await
            {
                Ok(response) => {
                    let (mut head, body) = response.into_parts();
                    proxy::strip_hop_by_hop(&mut head.headers);
                    match store_response(&node, &active, &head, body, key.clone(), route).await {
                        Ok((body, stored)) => {
                            discard(body).await;
                            stored
                        }
                        Err(_) => false,
                    }
                }
                Err(_) => false,
            };
            if !stored {
                node.cache.refresh_failed(&key);
            }
        });
    }

    fn respond(&self, id: u32) -> Response<Body> {
        let Some(plan) = self.active.plan.responses.get(id as usize) else {
            return self.error(StatusCode::INTERNAL_SERVER_ERROR, "unknown response");
        };
        let mut response = Response::new(full(plan.body.clone()));
        *response.status_mut() = StatusCode::from_u16(plan.status).unwrap_or(StatusCode::OK);
        let headers = response.headers_mut();
        if let Some(content_type) = plan
            .content_type
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            headers.insert(header::CONTENT_TYPE, content_type);
        }
        for (name, value) in &plan.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(name, value);
            }
        }
        response
    }

    fn preflight(&self, parts: &http::request::Parts, policy: &CorsPlan) -> Response<Body> {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        self.allow_origin(policy, headers);
        let join = |items: &[String]| items.join(", ");
        if !policy.methods.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&join(&policy.methods)) {
                headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
            }
        } else if let Some(requested) = parts.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
            // The policy allows the route's methods, and the module has checked that the
            // requested one is among them: name it, or the browser refuses all but GET,
            // HEAD and POST.
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, requested.clone());
            headers.append(
                header::VARY,
                HeaderValue::from_static("access-control-request-method"),
            );
        }
        if !policy.allow_headers.is_empty()
            && let Ok(v) = HeaderValue::from_str(&join(&policy.allow_headers))
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(policy.max_age_s),
        );
        response
    }

    /// `Access-Control-Allow-Origin` (and credentials) for an allowed request origin;
    /// `finish` adds `Vary: Origin`.
    fn allow_origin(&self, policy: &CorsPlan, headers: &mut HeaderMap) {
        let wildcard = allows_any_origin(policy);
        let origin = if wildcard {
            Some(HeaderValue::from_static("*"))
        } else {
            self.request_origin.clone()
        };
        if let Some(origin) = origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        if policy.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    fn rule_name(&self, id: u32) -> &str {
        self.active
            .plan
            .waf
            .as_ref()
            .and_then(|w| w.rules.get(id as usize))
            .map_or("?", |r| r.name.as_str())
    }

    fn error(&self, status: StatusCode, message: &str) -> Response<Body> {
        error_response(status, message, self.id.as_str())
    }

    /// Adds what every response carries, counts it and logs it.
    fn finish(
        &mut self,
        parts: &http::request::Parts,
        mut response: Response<Body>,
    ) -> Response<Body> {
        let active = &*self.active;
        if let Some(id) = self.cors
            && let Some(policy) = active.plan.cors.get(id as usize)
        {
            let mut headers = std::mem::take(response.headers_mut());
            self.allow_origin(policy, &mut headers);
            if !policy.expose_headers.is_empty()
                && let Ok(v) = HeaderValue::from_str(&policy.expose_headers.join(", "))
            {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
            }
            *response.headers_mut() = headers;
        }
        if let Some(policy) = self
            .decision
            .route
            .and_then(|route| active.plan.routes.get(route as usize))
            .and_then(|route| route.cors)
            .and_then(|id| active.plan.cors.get(id as usize))
            && !allows_any_origin(policy)
        {
            // Every answer of the route depends on `Origin`, also one without CORS headers:
            // a cache (the browser's too) must not give it to a request from another origin.
            response
                .headers_mut()
                .append(header::VARY, HeaderValue::from_static("origin"));
        }
        if let Some(set) = self.decision.edits
            && let Some(edits) = active.plan.edit_sets.get(set as usize)
        {
            apply_edits(response.headers_mut(), &edits.response);
        }
        let headers = response.headers_mut();
        headers.insert(X_EDGE_REGION, active.region_header.clone());
        headers.insert(X_EDGE_BUNDLE, active.bundle_header.clone());
        headers.insert(X_REQUEST_ID, self.id.header_value());
        if self.node.settings.expose_decisions {
            response.extensions_mut().insert(self.decision.clone());
        }
        let status = response.status().as_u16();
        active.watch.count(status);
        let route = active.route_name(self.decision.route);
        let elapsed = self.started.elapsed();
        self.node
            .metrics
            .request_seconds
            .observe(elapsed.as_secs_f64());
        let action = if self.record.action.is_empty() {
            "none"
        } else {
            self.record.action
        };
        self.node.metrics.count_request(
            active.generation,
            self.decision.route,
            route,
            action,
            status,
        );
        if self.node.settings.access_log {
            self.log(parts, status, route, elapsed);
        }
        response
    }

    fn log(&self, parts: &http::request::Parts, status: u16, route: &str, elapsed: Duration) {
        let active = &self.active;
        let waf = active.plan.waf.as_ref();
        let rules = self
            .decision
            .rules
            .iter()
            .map(|id| {
                let rule = waf.and_then(|w| w.rules.get(*id as usize));
                RuleRef {
                    rule: rule.map_or("?", |r| r.name.as_str()),
                    source: rule.map(|r| Located(&r.source)),
                }
            })
            .collect();
        let line = AccessLine {
            kind: "access",
            time: crate::logs::utc_now(),
            request_id: self.id.as_str(),
            client: self.client,
            method: parts.method.as_str(),
            host: parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok()),
            path: parts.uri.path(),
            status,
            route,
            route_source: self
                .decision
                .route
                .and_then(|id| active.plan.routes.get(id as usize))
                .map(|r| Located(&r.source)),
            action: self.record.action,
            rules,
            waf_score: self.decision.waf_score,
            country: self.decision.country.as_ref().map(|c| c.as_str()),
            zone: active.plan.zone_name(self.decision.data_zone),
            cache: self.record.cache,
            upstream_ms: self.record.upstream_ms,
            duration_ms: crate::logs::millis(elapsed),
            bundle: active.manifest.version,
            error: self.record.error.as_deref(),
        };
        crate::logs::access(&line);
    }
}

/// The client as a `client-ip` rate limit counts it: an IPv4 address, or an IPv6 address's
/// /64 network, since one host is given a whole /64 and could take a new address for every
/// request.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
        v4 => v4,
    }
}

/// Whether a request asks to become a WebSocket (RFC 6455 4.1): HTTP/1.1, `Upgrade:
/// websocket` and `Connection: upgrade`.
fn asks_for_websocket<B>(request: &Request<B>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        request.headers().get_all(name).iter().any(|value| {
            value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    request.version() == http::Version::HTTP_11
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
}

/// Counts a WebSocket tunnel as open (the `websocket_tunnels` gauge) while it lives.
struct TunnelGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Copies bytes both ways until both sides have closed, or neither has sent anything for
/// `idle`. A side that closes has its peer's writing half shut down, so a close travels.
async fn splice<A, B>(a: A, b: B, idle: Duration)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let (mut a_buf, mut b_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        tokio::select! {
            read = a_read.read(&mut a_buf), if a_open => match read {
                Ok(n) if n > 0 => {
                    if b_write.write_all(&a_buf[..n]).await.is_err() {
                        return;
                    }
                }
                _ => {
                    a_open = false;
                    let _ = b_write.shutdown().await;
                }
            },
            read = b_read.read(&mut b_buf), if b_open => match read {
                Ok(n) if n > 0 => {
                    if a_write.write_all(&b_buf[..n]).await.is_err() {
                        return;
                    }
                }
                _ => {
                    b_open = false;
                    let _ = a_write.shutdown().await;
                }
            },
            () = tokio::time::sleep(idle) => return,
        }
    }
}

/// The start of the cache keys of a request's target: its host, path and query.
fn target_head(parts: &http::request::Parts) -> Vec<u8> {
    let host = parts
        .headers
        .get(header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| parts.uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default();
    cache::key_head(host, parts.uri.path(), parts.uri.query())
}

/// Whether a request may change what its target holds, so that a success makes what the
/// cache stored for the target out of date (RFC 9111 4.4: methods other than the safe ones).
fn writes(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether a CORS policy answers every origin with `*` (the same answer whatever `Origin`).
fn allows_any_origin(policy: &CorsPlan) -> bool {
    policy.origins.iter().any(|o| o == "*") && !policy.credentials
}

/// Where the request target names a host (HTTP/1.1 absolute form, HTTP/2 `:authority`)
/// and one `Host` header names another, the target's is the host (RFC 9112 3.2.2, RFC 9113
/// 8.3.1): `Host` is set to it, so the policy, the cache and the origin all see the same.
fn host_from_target<B>(request: &mut Request<B>) {
    let Some(authority) = request.uri().authority() else {
        return;
    };
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return;
    };
    if host
        .as_bytes()
        .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return;
    }
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        request.headers_mut().insert(header::HOST, host);
    }
}

/// Whether a message's `Transfer-Encoding` names a coding besides `chunked`. hyper undoes
/// only the chunking: a request's body would reach the policy, a function and the origin
/// still in the other coding (a compressed attack the WAF never sees), so the node answers
/// 501 (RFC 9112 6.1); an origin's answer would reach the client with nothing saying how
/// it is coded, so the node answers 502 (as nginx does).
fn other_transfer_coding(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"chunked"))
}

/// Why a request's host cannot be trusted, if it cannot: the policy routes on one host and
/// the origin is told of one, so there must be exactly one. HTTP/1.1 requires one valid
/// `Host` (RFC 9112 3.2).
fn host_problem(parts: &http::request::Parts) -> Option<&'static str> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("a request may carry one Host header");
    }
    match (host, parts.uri.authority()) {
        (None, None) if parts.version == http::Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header")
        }
        (Some(host), _) if !valid_host(host.as_bytes()) => Some("the Host header is not a host"),
        _ => None,
    }
}

/// `host[:port]` as RFC 3986 allows it: a name, an IPv4 address or a bracketed IPv6 one;
/// no user information, path or spaces.
fn valid_host(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

/// One access-log line, serialized straight to JSON.
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    kind: &'static str,
    time: crate::logs::UtcMillis,
    request_id: &'a str,
    client: IpAddr,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    status: u16,
    route: &'a str,
    route_source: Option<Located<'a>>,
    action: &'static str,
    rules: Vec<RuleRef<'a>>,
    waf_score: u32,
    country: Option<&'a str>,
    zone: &'a str,
    cache: Option<&'static str>,
    upstream_ms: Option<f64>,
    duration_ms: f64,
    bundle: u64,
    error: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct RuleRef<'a> {
    rule: &'a str,
    source: Option<Located<'a>>,
}

/// A source position written as `file:line`.
struct Located<'a>(&'a edgepack_bundles::plan::Source);

impl serde::Serialize for Located<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}

/// Sends a request to an origin, counting its latency and failures.
/// Runs a function with the node's metrics; the response body is boxed like every other.
async fn run_function(
    node: &Node,
    generation: u64,
    engine: &FunctionEngine,
    function: &Function,
    request: Request<Full<Bytes>>,
    https: bool,
) -> Result<Response<Body>, RunError> {
    let (instantiate, refused) =
        node.metrics
            .function_meters(generation, function.plan.id, &function.plan.name);
    let meters = RunMeters {
        instantiate,
        live: node.metrics.function_instances.clone(),
        refused,
    };
    let result = engine
        .run(function, request, https, node.origins.clone(), meters)
        .await;
    match result {
        Ok(response) => Ok(response.map(BodyExt::boxed)),
        Err(error) => {
            count_function_error(node, &function.plan.name, error.kind());
            Err(error)
        }
    }
}

fn count_function_error(node: &Node, function: &str, kind: &'static str) {
    node.metrics
        .function_errors
        .get_or_create(&FunctionErrorLabels {
            function: function.to_string(),
            kind,
        })
        .inc();
}

async fn fetch(
    node: &Node,
    generation: u64,
    origin: &OriginPlan,
    request: Request<Full<Bytes>>,
) -> (
    Duration,
    Result<Response<hyper::body::Incoming>, UpstreamError>,
) {
    let timeout = Duration::from_millis(origin.response_timeout_ms.max(1));
    let sent = Instant::now();
    let result = node.origins.send(request, timeout).await;
    let took = sent.elapsed();
    node.metrics
        .observe_upstream(generation, origin.id, &origin.name, took.as_secs_f64());
    if let Err(error) = &result {
        node.metrics
            .upstream_errors
            .get_or_create(&UpstreamLabels {
                origin: origin.name.clone(),
                kind: error.kind(),
            })
            .inc();
    }
    (took, result)
}

/// Stores an origin response in the cache when it may be stored and fits; returns the body
/// to send on (buffered, or streamed when too large).
/// Reads and drops what is left of a refresh's body (one not stored: too large, or not
/// storable), so a short one leaves its connection fit for reuse; past a small allowance
/// the connection is dropped instead, rather than reading a large body nobody asked for.
async fn discard(mut body: Body) {
    const ALLOWANCE: usize = 64 * 1024;
    let mut read = 0;
    while read <= ALLOWANCE {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}

async fn store_response(
    node: &Node,
    active: &Active,
    head: &http::response::Parts,
    incoming: Body,
    key: Vec<u8>,
    route: u32,
) -> Result<(Body, bool), BoxError> {
    let policy = active
        .plan
        .routes
        .get(route as usize)
        .and_then(|r| r.cache.as_ref())
        .filter(|p| cache::storable(head.status, &head.headers, p.store_private, &p.vary));
    let Some(policy) = policy else {
        return Ok((incoming, false));
    };
    match read_up_to(incoming, node.cache.max_entry() as usize).await? {
        Buffered::Whole(bytes) => {
            let mut headers = head.headers.clone();
            headers.remove(header::CONTENT_LENGTH);
            let entry = Entry::new(
                head.status,
                headers,
                bytes.clone(),
                Duration::from_millis(policy.ttl_ms),
                Duration::from_millis(policy.stale_while_revalidate_ms),
            );
            node.cache.store(key, entry);
            Ok((full(bytes), true))
        }
        Buffered::TooLarge(body) => Ok((body, false)),
    }
}

/// `304 Not Modified` with the stored response's validators and caching headers, when
/// the request's validators match a stored `200`.
fn not_modified(
    parts: &http::request::Parts,
    status: StatusCode,
    stored: &HeaderMap,
) -> Option<Response<Body>> {
    if status != StatusCode::OK || !cache::not_modified(&parts.headers, stored) {
        return None;
    }
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    for name in cache::NOT_MODIFIED_HEADERS {
        for value in stored.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    Some(response)
}

/// `ps1-` and the first 16 bytes of HMAC-SHA256(key, value), hex.
pub fn pseudonymize(key: &[u8], value: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| {
        <Hmac<Sha256> as Mac>::new_from_slice(b"edgepack").expect("HMAC takes any key length")
    });
    mac.update(value);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(36);
    out.push_str("ps1-");
    for byte in &digest[..16] {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn apply_edits(headers: &mut HeaderMap, edits: &[HeaderEdit]) {
    for edit in edits {
        match edit {
            HeaderEdit::Set(name, value) => {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.insert(name, value);
                }
            }
            HeaderEdit::Append(name, value) => {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.append(name, value);
                }
            }
            HeaderEdit::Remove(name) => {
                headers.remove(name.as_str());
            }
        }
    }
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// A JSON error body that names the request.
pub fn error_response(status: StatusCode, message: &str, request_id: &str) -> Response<Body> {
    let body = json!({
        "error": message,
        "status": status.as_u16(),
        "request_id": request_id,
    });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

enum Buffered {
    Whole(Bytes),
    /// Larger than the limit: what was read, then the rest, as one body.
    TooLarge(Body),
}

/// Reads a body up to `limit` bytes; a longer one is handed back whole, unbuffered.
async fn read_up_to(mut body: Body, limit: usize) -> Result<Buffered, BoxError> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            if buffer.len() > limit {
                let resumed = Resumed {
                    head: Some(buffer.freeze()),
                    rest: body,
                };
                return Ok(Buffered::TooLarge(resumed.boxed()));
            }
        }
    }
    Ok(Buffered::Whole(buffer.freeze()))
}

/// A body that yields `head` and then the rest of `rest`.
struct Resumed {
    head: Option<Bytes>,
    rest: Body,
}

impl HttpBody for Resumed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        if let Some(head) = &self.head {
            let len = head.len() as u64;
            hint.set_lower(hint.lower() + len);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + len);
            }
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that never ends, counting the bytes read from it.
    struct Endless(Arc<std::sync::atomic::AtomicUsize>);

    impl HttpBody for Endless {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            self.0.fetch_add(8192, std::sync::atomic::Ordering::Relaxed);
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                &[0; 8192],
            )))))
        }
    }

    /// A refresh whose body is not stored reads a small allowance of it and lets the rest
    /// go with the connection: an endless (or huge) body is neither buffered nor waited on.
    #[tokio::test]
    async fn a_refresh_discards_a_long_body_after_a_small_allowance() {
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        discard(Endless(read.clone()).boxed()).await;
        let read = read.load(std::sync::atomic::Ordering::Relaxed);
        assert!((64 * 1024..=80 * 1024).contains(&read), "{read} bytes read");
    }

    /// The count the encoder reserves header records by is the number of headers the
    /// request gives, repeated names and an HTTP/2 authority standing in for `host`
    /// included: a smaller count would drop headers from what the policy sees.
    #[test]
    fn an_ipv6_client_counts_as_its_64() {
        let key = |text: &str| client_key(text.parse().expect("an address")).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::");
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
    }

    #[test]
    fn the_header_count_is_what_for_each_header_gives() {
        let requests = [
            http::Request::get("/x")
                .header("host", "a.example")
                .header("accept", "a")
                .header("accept", "b")
                .header("x-one", "1"),
            http::Request::get("https://b.example/x")
                .version(http::Version::HTTP_2)
                .header("cookie", "a=1")
                .header("cookie", "b=2"),
            http::Request::get("/x"),
        ];
        for request in requests {
            let (parts, ()) = request.body(()).expect("a request").into_parts();
            let view = View {
                parts: &parts,
                body: b"",
                peer: IpAddr::from([127, 0, 0, 1]),
            };
            let mut given = 0;
            view.for_each_header(&mut |_, _| given += 1);
            assert_eq!(view.header_count(), given, "{parts:?}");
        }
    }
}
