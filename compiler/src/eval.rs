//! The reference evaluator: what a region plan decides about a request, in plain Rust.
//!
//! This is the meaning of the language, written for clarity rather than speed: routes are
//! found by comparing every route, WAF rules by running a regex engine over every decoded
//! value. The compiled policy module must agree with it on every request (the differential
//! tests check). Like `decide`, it is pure: it reads the request and the plan, keeps no
//! state and calls nothing. The phases run in the fixed order of docs/abi.md: geo → route →
//! CORS preflight → WAF → JWT → rate limit → cache → action.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::net::IpAddr;

use edgepack_bundles::abi::{Answer, CountryCode, Decision, Effect, Outcome, dec, flag, method};
use edgepack_bundles::request::ip_from_bytes;
use edgepack_bundles::wire::ParsedRequest;
use ipnet::IpNet;
use regex_automata::meta::Regex;

use crate::decodings;
use crate::plan::*;

/// A plan with its regexes compiled, ready to decide.
pub struct Evaluator<'p> {
    plan: &'p RegionPlan,
    /// Per WAF rule, its conditions (its own first) with their compiled matchers.
    conditions: Vec<Vec<(WafConditionPlan, Vec<CompiledMatcher>)>>,
    trusted: Vec<IpNet>,
}

enum CompiledMatcher {
    Regex(Box<Regex>),
    Literal(Vec<u8>),
    Detect(edgepack_bundles::detect::DetectKind),
}

impl<'p> Evaluator<'p> {
    pub fn new(plan: &'p RegionPlan) -> Evaluator<'p> {
        let conditions = plan
            .waf
            .iter()
            .flat_map(|w| &w.rules)
            .map(|rule| {
                rule.conditions()
                    .into_iter()
                    .map(|c| {
                        let matchers = c
                            .matchers
                            .iter()
                            .map(|m| match m {
                                MatcherPlan::Regex(pattern) => CompiledMatcher::Regex(Box::new(
                                    Regex::builder()
                                        .syntax(edgepack_schema::waf_regex::syntax_config())
                                        .build(pattern)
                                        .expect("validated: WAF patterns compile"),
                                )),
                                MatcherPlan::Literal(l) => {
                                    CompiledMatcher::Literal(l.as_bytes().to_vec())
                                }
                                MatcherPlan::Detect(kind) => CompiledMatcher::Detect(*kind),
                            })
                            .collect();
                        (c, matchers)
                    })
                    .collect()
            })
            .collect();
        let trusted = plan
            .geo
            .iter()
            .flat_map(|g| &g.trusted_peers)
            .filter_map(|n| n.parse().ok())
            .collect();
        Evaluator {
            plan,
            conditions,
            trusted,
        }
    }

    pub fn plan(&self) -> &RegionPlan {
        self.plan
    }

    /// Decides what to do with a request.
    pub fn eval(&self, req: &ParsedRequest) -> Decision {
        self.trace(req).decision
    }

    /// Decides, and records what each phase looked at (for `explain`).
    pub fn trace(&self, req: &ParsedRequest) -> Trace {
        let plan = self.plan;
        let peer_trusted = self.is_trusted(req.peer);
        let client_ip = self.client_ip(req, peer_trusted);
        let (country, strip) = self.country(req, peer_trusted, client_ip);
        let data_zone = country.map_or(plan.global_zone(), |c| plan.zone_of(c.as_str()));
        let mut decision = Decision {
            outcome: Outcome::Effects(Vec::new()),
            route: None,
            rules: Vec::new(),
            waf_score: 0,
            country,
            data_zone,
            client_ip: ip_from_bytes(client_ip),
            flags: if strip {
                dec::FLAG_STRIP_COUNTRY_HEADER
            } else {
                0
            },
            edits: Some(0),
            location: None,
        };
        let mut trace = Trace {
            routes: Vec::new(),
            rules: Vec::new(),
            decision: decision.clone(),
        };
        let finish = |mut decision: Decision, answer: Answer, mut trace: Trace| {
            decision.outcome = Outcome::Final(answer);
            trace.decision = decision;
            trace
        };

        // Geo.
        if let Some(geo) = &plan.geo {
            if let (Some(block), Some(c)) = (&geo.block, country)
                && block.countries.iter().any(|b| b == c.as_str())
            {
                return finish(
                    decision,
                    Answer::GeoBlocked {
                        status: block.status,
                    },
                    trace,
                );
            }
            if let Some(allow) = &geo.allow
                && !country.is_some_and(|c| allow.countries.iter().any(|a| a == c.as_str()))
            {
                return finish(
                    decision,
                    Answer::GeoBlocked {
                        status: allow.status,
                    },
                    trace,
                );
            }
        }

        // Route.
        let preflight = req.flags & flag::PREFLIGHT != 0;
        let method_code = if preflight {
            req.preflight_method
        } else {
            req.method
        };
        let (route, considered, refused) = self.match_route(req, method_code);
        trace.routes = considered;
        let Some(route) = route else {
            let answer = if refused != 0 {
                Answer::MethodNotAllowed {
                    allow: refused,
                    status: 405,
                }
            } else {
                Answer::NotFound { status: 404 }
            };
            return finish(decision, answer, trace);
        };
        decision.route = Some(route.id);
        decision.edits = Some(route.edits);

        // CORS preflight.
        if preflight {
            let Some(cors_id) = route.cors else {
                return finish(
                    decision,
                    Answer::Preflight {
                        cors: edgepack_bundles::abi::NONE,
                        status: 403,
                    },
                    trace,
                );
            };
            let cors = &plan.cors[cors_id as usize];
            let allowed =
                self.origin_allowed(cors, req) && method_allowed(cors, route, req.preflight_method);
            let status = if allowed { 204 } else { 403 };
            return finish(
                decision,
                Answer::Preflight {
                    cors: cors_id,
                    status,
                },
                trace,
            );
        }

        // WAF.
        if let Some(waf) = &plan.waf
            && route.waf.mode != WafModePlan::Off
        {
            if waf.block_oversized_bodies && req.body_total > u64::from(waf.body_limit) {
                return finish(decision, Answer::BodyTooLarge { status: 413 }, trace);
            }
            for &rule_id in &route.waf.rules {
                let rule = &waf.rules[rule_id as usize];
                let hit = self.rule_matches(rule, req);
                trace.rules.push((rule_id, hit.clone()));
                if hit.is_some() {
                    decision.rules.push(rule_id);
                    decision.waf_score = decision.waf_score.saturating_add(rule.score);
                }
            }
            decision.rules.sort_unstable();
            decision.rules.truncate(dec::MAX_RULES as usize);
            if decision.waf_score >= waf.threshold {
                if route.waf.mode == WafModePlan::Block {
                    return finish(decision, Answer::WafBlocked { status: 403 }, trace);
                }
                decision.flags |= dec::FLAG_WAF_LOGGED;
            }
        }

        // CORS (so every answer the effects give carries its headers), JWT, rate limits,
        // cache, header edits, residency, then the action.
        let mut effects = Vec::new();
        if let Some(cors_id) = route.cors
            && req.header(b"origin").is_some()
            && self.origin_allowed(&plan.cors[cors_id as usize], req)
        {
            effects.push(Effect::Cors(cors_id));
        }
        if let Some(jwt) = route.auth {
            if req.flags & flag::HAS_BEARER == 0 && effects.is_empty() {
                return finish(decision, Answer::Unauthorized { jwt, status: 401 }, trace);
            }
            effects.push(Effect::VerifyJwt(jwt));
        }
        for &limit in &route.ratelimits {
            effects.push(Effect::RateLimit(limit));
        }
        let forwards = matches!(
            route.action,
            ActionPlan::Proxy { .. } | ActionPlan::Function { .. }
        );
        // Only GET and HEAD are answered from the cache: other methods change things.
        let readable = req.method == method::GET || req.method == method::HEAD;
        if let Some(cache) = &route.cache
            && cache.ttl_ms > 0
            && forwards
            && readable
        {
            let credentialed = req.flags & (flag::HAS_AUTHORIZATION | flag::HAS_COOKIE) != 0;
            if credentialed && !cache.cache_credentialed {
                decision.flags |= dec::FLAG_CACHE_BYPASSED;
            } else {
                effects.push(Effect::Cache(route.id));
            }
        }
        if forwards && !plan.edit_sets[route.edits as usize].request.is_empty() {
            effects.push(Effect::EditHeaders(route.edits));
        }
        if let Some(zone) = route.processing_zone
            && zone != data_zone
            && plan.residency.iter().any(|r| r.zone == data_zone)
        {
            effects.push(Effect::Residency(data_zone));
        }
        match &route.action {
            ActionPlan::Proxy { origin, .. } => effects.push(Effect::Proxy(*origin)),
            ActionPlan::Function { function } => effects.push(Effect::Function(*function)),
            ActionPlan::Respond { response } => {
                if effects.is_empty() {
                    let status = plan.responses[*response as usize].status;
                    return finish(
                        decision,
                        Answer::Respond {
                            response: *response,
                            status,
                        },
                        trace,
                    );
                }
                effects.push(Effect::Respond(*response));
            }
            ActionPlan::Block { status } => {
                if effects.is_empty() {
                    return finish(decision, Answer::Block { status: *status }, trace);
                }
                effects.push(Effect::Block(route.id));
            }
            ActionPlan::Redirect { status, target } => {
                let Some(location) = location(target, &req.segments, &req.query) else {
                    return finish(decision, Answer::Block { status: 414 }, trace);
                };
                if effects.is_empty() {
                    return finish(
                        decision,
                        Answer::Redirect {
                            status: *status,
                            location,
                        },
                        trace,
                    );
                }
                decision.location = Some(location);
                effects.push(Effect::Redirect(route.id));
            }
        }
        effects.truncate(dec::MAX_EFFECTS as usize);
        decision.outcome = Outcome::Effects(effects);
        trace.decision = decision;
        trace
    }

    fn is_trusted(&self, ip: [u8; 16]) -> bool {
        let ip = ip_from_bytes(ip);
        self.trusted.iter().any(|net| contains(net, ip))
    }

    /// The peer, or when the peer is trusted the rightmost forwarded hop that is not.
    fn client_ip(&self, req: &ParsedRequest, peer_trusted: bool) -> [u8; 16] {
        if !peer_trusted {
            return req.peer;
        }
        let mut client = req.peer;
        for hop in req.xff.iter().rev() {
            match hop {
                None => break,
                Some(ip) => {
                    client = *ip;
                    if !self.is_trusted(*ip) {
                        break;
                    }
                }
            }
        }
        client
    }

    /// The client's country and whether the country header must be removed.
    fn country(
        &self,
        req: &ParsedRequest,
        peer_trusted: bool,
        client_ip: [u8; 16],
    ) -> (Option<CountryCode>, bool) {
        let Some(geo) = &self.plan.geo else {
            return (None, false);
        };
        let mut strip = false;
        if let Some(name) = &geo.country_header
            && let Some(value) = req.header(name.as_bytes())
        {
            if peer_trusted {
                if let [a, b] = value
                    && a.is_ascii_alphabetic()
                    && b.is_ascii_alphabetic()
                {
                    let code = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
                    return (Some(CountryCode(code)), false);
                }
            } else {
                strip = true;
            }
        }
        let from_db = geo
            .ranges
            .iter()
            .find(|r| r.start <= client_ip && client_ip <= r.end)
            .and_then(|r| match r.country.as_bytes() {
                [a, b] => Some(CountryCode([*a, *b])),
                _ => None,
            });
        (from_db, strip)
    }

    fn origin_allowed(&self, cors: &CorsPlan, req: &ParsedRequest) -> bool {
        let Some(origin) = req.header(b"origin") else {
            return false;
        };
        cors.origins
            .iter()
            .any(|o| o == "*" || o.as_bytes() == origin)
    }

    /// The best route for the request, and every route with whether it matched.
    fn match_route(
        &self,
        req: &ParsedRequest,
        method_code: u32,
    ) -> (Option<&'p RoutePlan>, Vec<(u32, bool)>, u32) {
        let method_name = method::NAMES[method_code as usize % method::NAMES.len()];
        let mut best: Option<(&RoutePlan, (u8, usize), u8)> = None;
        let mut considered = Vec::new();
        // The methods of routes whose host and path match but whose methods do not.
        let mut refused = 0;
        for route in &self.plan.routes {
            let host_rank = host_rank(&route.hosts, &req.host);
            let path_ok = path_matches(&route.segments, &req.segments);
            let method_rank = if route.methods.is_empty() {
                Some(0)
            } else if method_code != method::OTHER && route.methods.iter().any(|m| m == method_name)
            {
                Some(1)
            } else {
                None
            };
            let matched = host_rank.is_some() && path_ok && method_rank.is_some();
            considered.push((route.id, matched));
            if host_rank.is_some() && path_ok && method_rank.is_none() {
                refused |= route
                    .methods
                    .iter()
                    .fold(0, |mask, name| mask | method::bit(method::code(name)));
            }
            let (Some(host_rank), Some(method_rank), true) = (host_rank, method_rank, path_ok)
            else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((current, current_host, current_method)) => {
                    host_rank
                        .cmp(current_host)
                        .then_with(|| compare_paths(&route.segments, &current.segments))
                        .then_with(|| method_rank.cmp(current_method))
                        == Ordering::Greater
                }
            };
            if better {
                best = Some((route, host_rank, method_rank));
            }
        }
        (best.map(|(r, _, _)| r), considered, refused)
    }

    /// Whether every condition of the rule holds; the value its own condition found (for a
    /// count, the count).
    fn rule_matches(&self, rule: &WafRulePlan, req: &ParsedRequest) -> Option<Vec<u8>> {
        let mut found = None;
        for (condition, matchers) in &self.conditions[rule.id as usize] {
            let value = condition_holds(condition, matchers, req)?;
            found.get_or_insert(value);
        }
        found
    }
}

/// The first value a condition finds: one its matchers match (or, negated, one they all
/// miss); for a count, the count, when the comparison holds.
fn condition_holds(
    condition: &WafConditionPlan,
    matchers: &[CompiledMatcher],
    req: &ParsedRequest,
) -> Option<Vec<u8>> {
    let values = condition
        .parts
        .iter()
        .flat_map(|part| part_values(part, req));
    if let Some(count) = condition.count {
        let n = u32::try_from(values.count()).unwrap_or(u32::MAX);
        return count
            .op
            .holds(n, count.value)
            .then(|| n.to_string().into_bytes());
    }
    let chains = condition.chains();
    for value in values {
        let hit = chains.iter().any(|chain| {
            let decoded = decodings::apply(chain, &value);
            matchers.iter().any(|m| match m {
                CompiledMatcher::Regex(r) => r.is_match(&decoded),
                CompiledMatcher::Literal(l) => decoded.windows(l.len()).any(|w| w == l.as_slice()),
                CompiledMatcher::Detect(kind) => edgepack_bundles::detect::detect(*kind, &decoded),
            })
        });
        if hit != condition.negated {
            return Some(value.to_vec());
        }
    }
    None
}

/// What `explain` shows besides the decision.
#[derive(Clone, Debug)]
pub struct Trace {
    /// Every route of the plan, in order, with whether it matched the request.
    pub routes: Vec<(u32, bool)>,
    /// Every WAF rule run, in order, with the value it matched (if any).
    pub rules: Vec<(u32, Option<Vec<u8>>)>,
    pub decision: Decision,
}

fn contains(net: &IpNet, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
        (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
        (IpNet::V4(n), IpAddr::V6(a)) => a.to_ipv4_mapped().is_some_and(|a| n.contains(&a)),
        (IpNet::V6(n), IpAddr::V4(a)) => n.contains(&a.to_ipv6_mapped()),
    }
}

/// The values a part gives, in request order.
pub fn part_values<'r>(part: &PartPlan, req: &'r ParsedRequest) -> Vec<Cow<'r, [u8]>> {
    let query_args = || req.args.iter().take(req.query_arg_count);
    // The values of a list's members of one name.
    let named = |list: &'r [(Vec<u8>, Vec<u8>)], name: &str| -> Vec<&'r [u8]> {
        list.iter()
            .filter(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    let borrowed: Vec<&[u8]> = match part {
        PartPlan::Uri => return vec![Cow::Owned(req.uri())],
        PartPlan::RequestLine => vec![req.request_line.as_slice()],
        PartPlan::Method => vec![req.request_line.get(..req.method_len).unwrap_or_default()],
        PartPlan::Protocol => {
            let line = &req.request_line;
            vec![
                line.get(line.len().saturating_sub(req.protocol_len)..)
                    .unwrap_or_default(),
            ]
        }
        PartPlan::Except(base, filters) => {
            let list = match **base {
                PartPlan::Args => &req.args,
                PartPlan::Headers => &req.headers,
                _ => &req.cookies,
            };
            list.iter()
                .filter(|(name, _)| !filters.iter().any(|f| f.picks(name)))
                .map(|(_, v)| v.as_slice())
                .collect()
        }
        PartPlan::QueryArgs => query_args().map(|(_, v)| v.as_slice()).collect(),
        PartPlan::QueryArgNames => query_args().map(|(n, _)| n.as_slice()).collect(),
        PartPlan::Path => vec![req.path.as_slice()],
        PartPlan::Query => vec![req.query.as_slice()],
        PartPlan::Body => vec![req.body.as_slice()],
        PartPlan::Args => req.args.iter().map(|(_, v)| v.as_slice()).collect(),
        PartPlan::ArgNames => req.args.iter().map(|(n, _)| n.as_slice()).collect(),
        PartPlan::Headers => req.headers.iter().map(|(_, v)| v.as_slice()).collect(),
        PartPlan::Header(name) => named(&req.headers, name),
        PartPlan::Cookies => req.cookies.iter().map(|(_, v)| v.as_slice()).collect(),
        PartPlan::CookieNames => req.cookies.iter().map(|(n, _)| n.as_slice()).collect(),
        PartPlan::HeaderNames => req.headers.iter().map(|(n, _)| n.as_slice()).collect(),
        PartPlan::Cookie(name) => named(&req.cookies, name),
        PartPlan::Arg(name) => named(&req.args, name),
        PartPlan::Files => req.files.iter().map(|(_, v)| v.as_slice()).collect(),
        PartPlan::FileFields => req.files.iter().map(|(n, _)| n.as_slice()).collect(),
        PartPlan::PartHeaders => req.part_headers.iter().map(|(_, v)| v.as_slice()).collect(),
        PartPlan::PartHeader(name) => named(&req.part_headers, name),
    };
    borrowed.into_iter().map(Cow::Borrowed).collect()
}

/// The rank of the best of a route's hosts matching `host`: exact (2, 0), wildcard (1,
/// suffix length), no hosts (0, 0); `None` when the route does not take the host.
fn host_rank(hosts: &[HostPlan], host: &[u8]) -> Option<(u8, usize)> {
    if hosts.is_empty() {
        return Some((0, 0));
    }
    hosts
        .iter()
        .filter_map(|h| match h {
            HostPlan::Exact(e) => (e.as_bytes() == host).then_some((2, 0)),
            HostPlan::Wildcard(suffix) => (host.len() > suffix.len()
                && host.ends_with(suffix.as_bytes()))
            .then_some((1, suffix.len())),
        })
        .max()
}

fn path_matches(pattern: &[SegmentPlan], segments: &[Vec<u8>]) -> bool {
    for (i, part) in pattern.iter().enumerate() {
        match part {
            SegmentPlan::Rest => return true,
            SegmentPlan::Literal(l) => {
                if segments.get(i).map(Vec::as_slice) != Some(l.as_bytes()) {
                    return false;
                }
            }
            SegmentPlan::Param(_) => {
                if i >= segments.len() {
                    return false;
                }
            }
        }
    }
    pattern.len() == segments.len()
}

/// Literal > `:param` > end of pattern > `*`, segment by segment.
fn compare_paths(a: &[SegmentPlan], b: &[SegmentPlan]) -> Ordering {
    let rank = |s: Option<&SegmentPlan>| match s {
        Some(SegmentPlan::Literal(_)) => 4,
        None => 3,
        Some(SegmentPlan::Param(_)) => 2,
        Some(SegmentPlan::Rest) => 1,
    };
    for i in 0..a.len().max(b.len()) {
        let (ra, rb) = (rank(a.get(i)), rank(b.get(i)));
        if ra != rb {
            return ra.cmp(&rb);
        }
        if ra == 3 {
            break;
        }
    }
    Ordering::Equal
}

fn method_allowed(cors: &CorsPlan, route: &RoutePlan, code: u32) -> bool {
    let name = method::NAMES[code as usize % method::NAMES.len()];
    if code == method::OTHER {
        return cors.methods.is_empty() && route.methods.is_empty();
    }
    if !cors.methods.is_empty() {
        return cors.methods.iter().any(|m| m == name);
    }
    route.methods.is_empty() || route.methods.iter().any(|m| m == name)
}

/// Bytes a redirect keeps as they are; everything else is percent-encoded.
pub fn keep_in_location(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// Bytes a redirect keeps as they are in a query it carries over: those of a path segment,
/// `/`, `?`, and `%` (the query arrives percent-encoded).
pub fn keep_in_query(b: u8) -> bool {
    keep_in_location(b) || b"/?%".contains(&b)
}

/// The redirect target with captures and the query filled in, or `None` past the
/// decision's limit.
fn location(template: &[TemplatePart], segments: &[Vec<u8>], query: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    let push_segment = |out: &mut Vec<u8>, segment: &[u8]| {
        for &b in segment {
            if keep_in_location(b) {
                out.push(b);
            } else {
                out.extend_from_slice(format!("%{b:02X}").as_bytes());
            }
        }
    };
    for part in template {
        match part {
            TemplatePart::Literal(l) => out.extend_from_slice(l.as_bytes()),
            TemplatePart::Segment(i) => {
                if let Some(segment) = segments.get(*i as usize) {
                    push_segment(&mut out, segment);
                }
            }
            TemplatePart::Rest(from) => {
                for (n, segment) in segments.iter().skip(*from as usize).enumerate() {
                    if n > 0 {
                        out.push(b'/');
                    }
                    push_segment(&mut out, segment);
                }
            }
            TemplatePart::Query { join } => {
                if !query.is_empty() {
                    if let Some(join) = join {
                        out.push(*join as u8);
                    }
                    for &b in query {
                        if keep_in_query(b) {
                            out.push(b);
                        } else {
                            out.extend_from_slice(format!("%{b:02X}").as_bytes());
                        }
                    }
                }
            }
        }
    }
    (out.len() <= dec::MAX_LOCATION as usize).then(|| String::from_utf8_lossy(&out).into_owned())
}

/// Encodes `request` as the node would for a module with this body limit, and decodes the
/// block: the evaluator's input.
pub fn parse(
    request: &dyn edgepack_bundles::request::RequestParts,
    body_limit: u32,
) -> Result<ParsedRequest, edgepack_bundles::wire::EncodeError> {
    let capacity = (edgepack_bundles::abi::REQUEST_CAPACITY_BASE + body_limit) as usize;
    let mut buf = vec![0u8; capacity];
    let len = edgepack_bundles::wire::encode(
        request,
        &Default::default(),
        body_limit as usize,
        &mut buf,
    )?;
    Ok(edgepack_bundles::wire::decode(&buf[..len]).expect("a block just encoded decodes"))
}
