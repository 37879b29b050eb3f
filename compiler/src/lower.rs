//! Lowering: a validated policy → one [`RegionPlan`] per region.
//!
//! Applies the region's overrides, resolves every origin to the endpoint the region's zone
//! uses, merges header edits, numbers everything the region uses (and drops what it does
//! not), flattens the geo database into ranges and turns redirect targets into templates.
//! It never fails: every user mistake was reported by `check`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use edgepack_schema::pattern::{HostPattern, Segment};
use edgepack_schema::policy::{
    self as p, Action, Credentialed, GLOBAL_ZONE, HeaderEdits, HeaderOp, KeyKind, Policy, Region,
    WafMode,
};
use edgepack_schema::{Sources, Span};

use crate::plan::*;

/// The plans of every region of a policy, in the order the regions are declared.
pub fn lower_all(policy: &Policy, sources: &Sources) -> Vec<RegionPlan> {
    policy
        .regions
        .iter()
        .map(|region| lower(policy, sources, region))
        .collect()
}

pub fn lower(policy: &Policy, sources: &Sources, region: &Region) -> RegionPlan {
    let mut l = Lowering {
        policy,
        sources,
        region,
        origins: Vec::new(),
        functions: Vec::new(),
        ratelimits: Vec::new(),
        jwts: Vec::new(),
        cors: Vec::new(),
        responses: Vec::new(),
        edit_sets: Vec::new(),
    };
    let mut zones: Vec<String> = policy.zones.iter().map(|z| z.name.value.clone()).collect();
    zones.push(GLOBAL_ZONE.to_string());
    let mut zone_countries: Vec<Vec<String>> = policy
        .zones
        .iter()
        .map(|z| {
            let mut countries: Vec<String> =
                z.countries.iter().map(|c| c.value.to_string()).collect();
            countries.sort();
            countries.dedup();
            countries
        })
        .collect();
    zone_countries.push(Vec::new());
    let zone_id = |name: &str| {
        zones
            .iter()
            .position(|z| z == name)
            .unwrap_or(zones.len() - 1) as u32
    };
    let region_zone = zone_id(&region.zone.value);

    // Edit set 0: the policy's and the region's own edits.
    let mut base = edit_set(&policy.headers);
    let regional = edit_set(&region.overrides.headers);
    base.request.extend(regional.request);
    base.response.extend(regional.response);
    l.edit_sets.push(base);

    let waf = l.waf();
    let region_routes = policy.routes_in(region);
    let routes: Vec<RoutePlan> = region_routes
        .iter()
        .enumerate()
        .map(|(index, route)| {
            let methods = route.methods_taken(&region_routes);
            l.route(index as u32, route, methods, region_zone, waf.as_ref())
        })
        .collect();

    let residency = policy
        .residency
        .iter()
        .filter(|r| !r.pseudonymize.is_empty() || !r.drop.is_empty())
        .map(|r| ResidencyPlan {
            zone: zone_id(&r.zone.value),
            pseudonymize: r.pseudonymize.iter().map(|h| h.value.clone()).collect(),
            drop: r.drop.iter().map(|h| h.value.clone()).collect(),
        })
        .collect();

    let tests = policy
        .tests
        .iter()
        .filter(|t| {
            t.request
                .region
                .as_ref()
                .is_none_or(|r| r.value == region.name.value)
        })
        .map(|t| l.test(t))
        .collect();

    RegionPlan {
        region: region.name.value.clone(),
        zone: region_zone,
        geo: l.geo(),
        zones,
        zone_countries,
        routes,
        waf: waf.map(|(plan, _)| plan),
        ratelimits: l.ratelimits,
        jwts: l.jwts,
        cors: l.cors,
        origins: l.origins,
        functions: l.functions,
        responses: l.responses,
        edit_sets: l.edit_sets,
        residency,
        tests,
        rollout: policy.rollout.as_ref().map(|r| RolloutPlan {
            watch_ms: r.watch.value.as_millis() as u64,
            max_error_permille: r.max_error_permille.value,
            min_requests: r.min_requests.value,
        }),
    }
}

struct Lowering<'p> {
    policy: &'p Policy,
    sources: &'p Sources,
    region: &'p Region,
    origins: Vec<OriginPlan>,
    functions: Vec<FunctionPlan>,
    ratelimits: Vec<RateLimitPlan>,
    jwts: Vec<JwtPlan>,
    cors: Vec<CorsPlan>,
    responses: Vec<ResponsePlan>,
    edit_sets: Vec<EditSet>,
}

fn edit_set(edits: &HeaderEdits) -> EditSet {
    let convert = |ops: &[HeaderOp]| {
        ops.iter()
            .map(|op| match op {
                HeaderOp::Set(n, v) => HeaderEdit::Set(n.value.clone(), v.value.clone()),
                HeaderOp::Append(n, v) => HeaderEdit::Append(n.value.clone(), v.value.clone()),
                HeaderOp::Remove(n) => HeaderEdit::Remove(n.value.clone()),
            })
            .collect()
    };
    EditSet {
        request: convert(&edits.request),
        response: convert(&edits.response),
    }
}

/// Where a file of the policy goes in the bundle: under `dir/`, keeping its policy path.
pub fn bundle_path(dir: &str, relative: &str) -> String {
    if relative.starts_with(&format!("{dir}/")) {
        relative.to_string()
    } else {
        format!("{dir}/{relative}")
    }
}

impl<'p> Lowering<'p> {
    fn source(&self, span: Span) -> Source {
        let (line, column) = self.sources.line_col(span.file, span.start);
        Source {
            file: self.sources.file(span.file).relative.clone(),
            line: line as u32,
            column: column as u32,
        }
    }

    fn zone_id(&self, name: &str) -> u32 {
        self.policy
            .zones
            .iter()
            .position(|z| z.name.value == name)
            .unwrap_or(self.policy.zones.len()) as u32
    }

    /// The plan id of an origin, adding it on first use.
    fn origin(&mut self, name: &str) -> u32 {
        if let Some(o) = self.origins.iter().find(|o| o.name == name) {
            return o.id;
        }
        let origin = self.policy.origin(name).expect("validated: origin exists");
        let endpoint = self
            .policy
            .endpoint_for(origin, &self.region.zone.value)
            .expect("validated: the region's zone has an endpoint");
        let id = self.origins.len() as u32;
        let url = &endpoint.url.value;
        let plan = OriginPlan {
            id,
            name: name.to_string(),
            url: url.written.clone(),
            tls: url.tls,
            host: url.host.clone(),
            port: url.port,
            path_prefix: url.path_prefix.clone(),
            zone: self.zone_id(&endpoint.zone.value),
            connect_timeout_ms: origin.connect_timeout.value.as_millis() as u64,
            response_timeout_ms: origin.response_timeout.value.as_millis() as u64,
            source: self.source(origin.name.span),
        };
        self.origins.push(plan);
        id
    }

    fn function(&mut self, name: &str) -> u32 {
        if let Some(f) = self.functions.iter().find(|f| f.name == name) {
            return f.id;
        }
        let function = self
            .policy
            .function(name)
            .expect("validated: function exists");
        let origins = function
            .origins
            .iter()
            .map(|o| self.origin(&o.value))
            .collect();
        let id = self.functions.len() as u32;
        let plan = FunctionPlan {
            id,
            name: name.to_string(),
            file: bundle_path("functions", &function.source.value.relative),
            memory_bytes: function.memory.value,
            timeout_ms: function.timeout.value.as_millis() as u64,
            origins,
            source: self.source(function.name.span),
        };
        self.functions.push(plan);
        id
    }

    fn ratelimit(&mut self, name: &str) -> u32 {
        if let Some(r) = self.ratelimits.iter().find(|r| r.name == name) {
            return r.id;
        }
        let limit = self
            .policy
            .ratelimit_in(self.region, name)
            .expect("validated: rate limit exists");
        let id = self.ratelimits.len() as u32;
        let plan = RateLimitPlan {
            id,
            name: name.to_string(),
            key: limit.key.value.describe(),
            limit: limit.limit.value,
            per_ms: limit.per.value.as_millis() as u64,
            source: self.source(limit.name.span),
        };
        self.ratelimits.push(plan);
        id
    }

    fn jwt(&mut self, name: &str) -> u32 {
        if let Some(j) = self.jwts.iter().find(|j| j.name == name) {
            return j.id;
        }
        let jwt = self
            .policy
            .jwt(name)
            .expect("validated: JWT provider exists");
        let id = self.jwts.len() as u32;
        let plan = JwtPlan {
            id,
            name: name.to_string(),
            algorithms: jwt
                .algorithms
                .iter()
                .map(|a| a.as_str().to_string())
                .collect(),
            keys: jwt
                .keys
                .iter()
                .map(|k| bundle_path("keys", &k.path.value.relative))
                .collect(),
            secrets: jwt.secrets.iter().map(|s| s.value.clone()).collect(),
            issuer: jwt.issuer.as_ref().map(|i| i.value.clone()),
            audience: jwt.audience.iter().map(|a| a.value.clone()).collect(),
            leeway_ms: jwt.leeway.value.as_millis() as u64,
            require: jwt.require.iter().map(|c| c.value.clone()).collect(),
            source: self.source(jwt.name.span),
        };
        // Keys are checked at `check` time; a shared secret and a public key never mix.
        debug_assert!(
            jwt.keys.iter().all(|k| k.kind == KeyKind::Secret)
                || jwt.keys.iter().all(|k| k.kind != KeyKind::Secret)
        );
        self.jwts.push(plan);
        id
    }

    fn cors(&mut self, name: &str) -> u32 {
        if let Some(c) = self.cors.iter().find(|c| c.name == name) {
            return c.id;
        }
        let cors = self
            .policy
            .cors_policy(name)
            .expect("validated: CORS policy exists");
        let id = self.cors.len() as u32;
        let strings =
            |v: &[edgepack_schema::Spanned<String>]| v.iter().map(|s| s.value.clone()).collect();
        let plan = CorsPlan {
            id,
            name: name.to_string(),
            origins: strings(&cors.origins),
            methods: strings(&cors.methods),
            allow_headers: strings(&cors.allow_headers),
            expose_headers: strings(&cors.expose_headers),
            credentials: cors.credentials.value,
            max_age_s: cors.max_age.value.as_secs(),
            source: self.source(cors.name.span),
        };
        self.cors.push(plan);
        id
    }

    /// The region's WAF (overrides applied) and the policy rule index of each plan rule.
    fn waf(&self) -> Option<(WafPlan, Vec<String>)> {
        let waf = self.policy.waf.as_ref()?;
        let overrides = self.region.overrides.waf.as_ref();
        let disabled: Vec<&str> = overrides
            .map(|o| o.disable.iter().map(|d| d.value.as_str()).collect())
            .unwrap_or_default();
        let rules: Vec<WafRulePlan> = waf
            .rules
            .iter()
            .filter(|r| !disabled.contains(&r.id.value.as_str()))
            .enumerate()
            .map(|(id, rule)| {
                let own = condition(
                    &rule.parts,
                    &rule.decode,
                    &rule.matchers,
                    rule.negated,
                    rule.count,
                );
                WafRulePlan {
                    id: id as u32,
                    name: rule.id.value.clone(),
                    score: rule.score.value,
                    parts: own.parts,
                    decode: own.decode,
                    matchers: own.matchers,
                    negated: own.negated,
                    count: own.count,
                    and: rule
                        .and
                        .iter()
                        .map(|c| condition(&c.parts, &c.decode, &c.matchers, c.negated, c.count))
                        .collect(),
                    also_after: if rule.every_step {
                        step_ends(&rule.decode)
                    } else {
                        Vec::new()
                    },
                    source: self.source(rule.id.span),
                }
            })
            .collect();
        let names = rules.iter().map(|r| r.name.clone()).collect();
        let threshold = overrides
            .and_then(|o| o.threshold.as_ref())
            .map_or(waf.threshold.value, |t| t.value);
        Some((
            WafPlan {
                threshold,
                body_limit: u32::try_from(waf.body_limit.value).unwrap_or(u32::MAX),
                block_oversized_bodies: waf.body_overflow.value == p::BodyOverflow::Block,
                rules,
                automaton_budget: waf.automaton_budget.value,
                left_out: waf
                    .imports
                    .iter()
                    .flat_map(|import| &import.skipped)
                    .map(|skipped| LeftOutRulePlan {
                        name: skipped.id.clone(),
                        reason: skipped.reason.clone(),
                        source: self.source(skipped.span),
                    })
                    .collect(),
            },
            names,
        ))
    }

    /// The region's WAF mode (the region may override the policy's).
    fn waf_mode(&self) -> WafMode {
        let region_mode = self
            .region
            .overrides
            .waf
            .as_ref()
            .and_then(|o| o.mode.as_ref())
            .map(|m| m.value);
        region_mode
            .or_else(|| self.policy.waf.as_ref().map(|w| w.mode.value))
            .unwrap_or(WafMode::Off)
    }

    fn route(
        &mut self,
        id: u32,
        route: &p::Route,
        mut methods: Vec<String>,
        region_zone: u32,
        waf: Option<&(WafPlan, Vec<String>)>,
    ) -> RoutePlan {
        let segments = route
            .pattern
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => SegmentPlan::Literal(l.clone()),
                Segment::Param(n) => SegmentPlan::Param(n.clone()),
                Segment::Rest => SegmentPlan::Rest,
            })
            .collect();
        let mut hosts: Vec<HostPlan> = route
            .hosts
            .iter()
            .map(|h| match &h.value {
                HostPattern::Exact(e) => HostPlan::Exact(e.clone()),
                HostPattern::Wildcard(w) => HostPlan::Wildcard(w.clone()),
            })
            .collect();
        hosts.dedup();
        methods.sort_by_key(|m| edgepack_bundles::abi::method::code(m));
        methods.dedup();
        let (action, processing_zone) = match &route.action.value {
            Action::Proxy { origin, websocket } => {
                let id = self.origin(origin);
                (
                    ActionPlan::Proxy {
                        origin: id,
                        websocket: *websocket,
                    },
                    Some(self.origins[id as usize].zone),
                )
            }
            Action::Function { name } => (
                ActionPlan::Function {
                    function: self.function(name),
                },
                Some(region_zone),
            ),
            Action::Block { status } => (
                ActionPlan::Block {
                    status: status.value,
                },
                None,
            ),
            Action::Redirect {
                status,
                target,
                keep_query,
            } => (
                ActionPlan::Redirect {
                    status: status.value,
                    target: redirect_template(
                        &target.value,
                        &route.pattern.value.segments,
                        *keep_query,
                    ),
                },
                None,
            ),
            Action::Respond {
                status,
                body,
                headers,
            } => {
                let id = self.responses.len() as u32;
                let (content_type, body) = match body {
                    Some(p::Body::Json(j)) => {
                        (Some("application/json".to_string()), j.value.clone())
                    }
                    Some(p::Body::Text(t)) => (None, t.value.clone()),
                    None => (None, String::new()),
                };
                self.responses.push(ResponsePlan {
                    id,
                    status: status.value,
                    content_type,
                    body,
                    headers: headers
                        .iter()
                        .map(|(n, v)| (n.value.clone(), v.value.clone()))
                        .collect(),
                });
                (ActionPlan::Respond { response: id }, None)
            }
        };
        let auth = route.auth.as_ref().map(|a| self.jwt(a));
        let ratelimits = route.ratelimits.iter().map(|r| self.ratelimit(r)).collect();
        let cors = route.cors.as_ref().map(|c| self.cors(c));
        let cache = route.cache.as_ref().map(|c| CachePlan {
            ttl_ms: c.ttl.value.as_millis() as u64,
            stale_while_revalidate_ms: c.stale_while_revalidate.value.as_millis() as u64,
            vary: c.vary.iter().map(|v| v.value.clone()).collect(),
            key: c.key.iter().map(|k| k.value.describe()).collect(),
            cache_credentialed: c.credentialed.value == Credentialed::Cache,
            store_private: c.store_private.value,
        });
        let edits = if route.headers.is_empty() {
            0
        } else {
            let mut set = self.edit_sets[0].clone();
            let own = edit_set(&route.headers);
            set.request.extend(own.request);
            set.response.extend(own.response);
            match self.edit_sets.iter().position(|s| *s == set) {
                Some(existing) => existing as u32,
                None => {
                    self.edit_sets.push(set);
                    self.edit_sets.len() as u32 - 1
                }
            }
        };
        let waf_plan = match waf {
            None => RouteWafPlan {
                mode: WafModePlan::Off,
                rules: Vec::new(),
            },
            Some((_, names)) => {
                let mode = route.waf.mode.as_ref().map_or(self.waf_mode(), |m| m.value);
                let excluded: Vec<&str> =
                    route.waf.exclude.iter().map(|e| e.value.as_str()).collect();
                RouteWafPlan {
                    mode: match mode {
                        WafMode::Off => WafModePlan::Off,
                        WafMode::Log => WafModePlan::Log,
                        WafMode::Block => WafModePlan::Block,
                    },
                    rules: if mode == WafMode::Off {
                        Vec::new()
                    } else {
                        names
                            .iter()
                            .enumerate()
                            .filter(|(_, n)| !excluded.contains(&n.as_str()))
                            .map(|(i, _)| i as u32)
                            .collect()
                    },
                }
            }
        };
        RoutePlan {
            id,
            pattern: route.pattern.value.written.clone(),
            segments,
            methods,
            hosts,
            action,
            auth,
            ratelimits,
            cache,
            cors,
            edits,
            waf: waf_plan,
            processing_zone,
            source: self.source(route.pattern.span),
        }
    }

    fn geo(&self) -> Option<GeoPlan> {
        let geo = self.policy.geo.as_ref()?;
        let overrides = self.region.overrides.geo.as_ref();
        let list = |l: &p::CountryList| {
            let mut countries: Vec<String> =
                l.countries.iter().map(|c| c.value.to_string()).collect();
            countries.sort();
            countries.dedup();
            CountryListPlan {
                countries,
                status: l.status.value,
                source: self.source(l.span),
            }
        };
        let block = overrides
            .and_then(|o| o.block.as_ref())
            .or(geo.block.as_ref())
            .map(list);
        let allow = overrides
            .and_then(|o| o.allow.as_ref())
            .or(geo.allow.as_ref())
            .map(list);
        Some(GeoPlan {
            country_header: geo.country_header.as_ref().map(|h| h.value.clone()),
            trusted_peers: geo
                .trusted_peers
                .iter()
                .map(|n| n.value.to_string())
                .collect(),
            ranges: geo
                .database
                .as_ref()
                .map(|db| flatten_database(&db.contents))
                .unwrap_or_default(),
            database: geo
                .database
                .as_ref()
                .map(|db| bundle_path("geo", &db.path.value.relative)),
            block,
            allow,
        })
    }

    fn test(&self, test: &p::TestCase) -> TestPlan {
        let request = &test.request;
        TestPlan {
            name: test.name.value.clone(),
            method: request.method.value.clone(),
            target: request.target.value.clone(),
            host: request.host.as_ref().map(|h| h.value.clone()),
            country: request.country.as_ref().map(|c| c.value.to_string()),
            ip: request.ip.as_ref().map(|i| i.value.to_string()),
            headers: request
                .headers
                .iter()
                .map(|(n, v)| (n.value.clone(), v.value.clone()))
                .collect(),
            body: request.body.as_ref().map(|b| b.value.clone()),
            expect_status: test.expect.status.as_ref().map(|s| s.value),
            expect_route: test.expect.route.as_ref().map(|r| r.value.clone()),
            expect_rule: test.expect.rule.as_ref().map(|r| r.value.clone()),
            expect_cache_ttl_ms: test
                .expect
                .cache_ttl
                .as_ref()
                .map(|t| t.value.as_millis() as u64),
            expect_headers: test
                .expect
                .headers
                .iter()
                .map(|(n, v)| (n.value.clone(), v.value.clone()))
                .collect(),
            source: self.source(test.name.span),
        }
    }
}

fn part(written: &p::RequestPart) -> PartPlan {
    match written {
        p::RequestPart::Path => PartPlan::Path,
        p::RequestPart::Query => PartPlan::Query,
        p::RequestPart::Args => PartPlan::Args,
        p::RequestPart::ArgNames => PartPlan::ArgNames,
        p::RequestPart::CookieNames => PartPlan::CookieNames,
        p::RequestPart::Arg(name) => PartPlan::Arg(name.clone()),
        p::RequestPart::Files => PartPlan::Files,
        p::RequestPart::FileFields => PartPlan::FileFields,
        p::RequestPart::PartHeaders => PartPlan::PartHeaders,
        p::RequestPart::PartHeader(name) => PartPlan::PartHeader(name.clone()),
        p::RequestPart::HeaderNames => PartPlan::HeaderNames,
        p::RequestPart::Uri => PartPlan::Uri,
        p::RequestPart::Method => PartPlan::Method,
        p::RequestPart::Protocol => PartPlan::Protocol,
        p::RequestPart::RequestLine => PartPlan::RequestLine,
        p::RequestPart::QueryArgs => PartPlan::QueryArgs,
        p::RequestPart::QueryArgNames => PartPlan::QueryArgNames,
        p::RequestPart::Except(base, exact, containing) => PartPlan::Except(
            Box::new(part(base)),
            exact
                .iter()
                .map(|n| NameFilter::Exact(n.clone()))
                .chain(containing.iter().map(|n| NameFilter::Containing(n.clone())))
                .collect(),
        ),
        p::RequestPart::Headers => PartPlan::Headers,
        p::RequestPart::Header(h) => PartPlan::Header(h.clone()),
        p::RequestPart::Cookies => PartPlan::Cookies,
        p::RequestPart::Cookie(c) => PartPlan::Cookie(c.clone()),
        p::RequestPart::Body => PartPlan::Body,
    }
}

/// Where the policy's decodings before the last end in the plan's chain (0 first): a
/// decoding may take more than one plan step (`normalize-path-win`), and matching stops
/// only between the policy's own.
fn step_ends(decode: &[edgepack_schema::Spanned<p::Decoding>]) -> Vec<u32> {
    let mut ends = vec![0];
    for d in &decode[..decode.len().saturating_sub(1)] {
        let last = *ends.last().unwrap_or(&0);
        ends.push(last + decoding(d.value).len() as u32);
    }
    ends
}

/// One condition of a WAF rule as the plan holds it.
fn condition(
    parts: &[edgepack_schema::Spanned<p::RequestPart>],
    decode: &[edgepack_schema::Spanned<p::Decoding>],
    matchers: &[p::Matcher],
    negated: bool,
    count: Option<p::Count>,
) -> WafConditionPlan {
    WafConditionPlan {
        parts: parts.iter().map(|p| part(&p.value)).collect(),
        decode: decode.iter().flat_map(|d| decoding(d.value)).collect(),
        matchers: matchers
            .iter()
            .map(|m| match m {
                p::Matcher::Regex(r) => MatcherPlan::Regex(r.value.clone()),
                p::Matcher::Literal(l) => MatcherPlan::Literal(l.value.clone()),
                p::Matcher::Detect(d) => MatcherPlan::Detect(match d.value {
                    p::Detector::Sqli => edgepack_bundles::detect::DetectKind::Sqli,
                    p::Detector::Xss => edgepack_bundles::detect::DetectKind::Xss,
                }),
            })
            .collect(),
        negated,
        count: count.map(|c| CountPlan {
            op: match c.op {
                p::Comparison::Eq => CountOp::Eq,
                p::Comparison::Ne => CountOp::Ne,
                p::Comparison::Lt => CountOp::Lt,
                p::Comparison::Le => CountOp::Le,
                p::Comparison::Gt => CountOp::Gt,
                p::Comparison::Ge => CountOp::Ge,
            },
            value: c.value,
        }),
        also_after: Vec::new(),
    }
}

/// The plan's decoding steps for one written decoding (`normalize-path-win` is two).
fn decoding(d: p::Decoding) -> Vec<DecodingPlan> {
    vec![match d {
        p::Decoding::UrlDecode => DecodingPlan::UrlDecode,
        p::Decoding::Lowercase => DecodingPlan::Lowercase,
        p::Decoding::HtmlEntityDecode => DecodingPlan::HtmlEntityDecode,
        p::Decoding::NormalizePath => DecodingPlan::NormalizePath,
        p::Decoding::CompressWhitespace => DecodingPlan::CompressWhitespace,
        p::Decoding::RemoveNulls => DecodingPlan::RemoveNulls,
        p::Decoding::UrlDecodeUni => DecodingPlan::UrlDecodeUni,
        p::Decoding::Utf8UrlDecodeUni => DecodingPlan::Utf8UrlDecodeUni,
        p::Decoding::JsDecode => DecodingPlan::JsDecode,
        p::Decoding::CssDecode => DecodingPlan::CssDecode,
        p::Decoding::CmdLine => DecodingPlan::CmdLine,
        p::Decoding::RemoveWhitespace => DecodingPlan::RemoveWhitespace,
        p::Decoding::ReplaceComments => DecodingPlan::ReplaceComments,
        p::Decoding::Base64Decode => DecodingPlan::Base64Decode,
        p::Decoding::NormalizePathWin => {
            return vec![DecodingPlan::BackslashToSlash, DecodingPlan::NormalizePath];
        }
    }]
}

/// A redirect target as a template; a kept query goes before the target's fragment.
fn redirect_template(target: &str, segments: &[Segment], keep_query: bool) -> Vec<TemplatePart> {
    if !keep_query {
        return template(target, segments);
    }
    let (before, fragment) = target.split_at(target.find('#').unwrap_or(target.len()));
    let join = if before.ends_with(['?', '&']) {
        None
    } else if before.contains('?') {
        Some('&')
    } else {
        Some('?')
    };
    let mut parts = template(before, segments);
    parts.push(TemplatePart::Query { join });
    parts.extend(template(fragment, segments));
    parts
}

/// Splits a redirect target into literal text and captures.
fn template(target: &str, segments: &[Segment]) -> Vec<TemplatePart> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = target;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        let capture = if name == "*" {
            segments
                .iter()
                .position(|s| *s == Segment::Rest)
                .map(|i| TemplatePart::Rest(i as u32))
        } else {
            segments
                .iter()
                .position(|s| matches!(s, Segment::Param(p) if p == name))
                .map(|i| TemplatePart::Segment(i as u32))
        };
        match capture {
            Some(c) => {
                literal.push_str(&rest[..open]);
                if !literal.is_empty() {
                    parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                }
                parts.push(c);
            }
            // Validated: every capture exists; keep unknown braces as text regardless.
            None => literal.push_str(&rest[..open + close + 1]),
        }
        rest = &rest[open + close + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    parts
}

/// Every network of a MaxMind database with a country, as sorted, merged ranges.
pub fn flatten_database(contents: &[u8]) -> Vec<GeoRange> {
    let Ok(reader) = maxminddb::Reader::from_source(contents) else {
        return Vec::new();
    };
    let mut by_start: BTreeMap<[u8; 16], ([u8; 16], String)> = BTreeMap::new();
    let Ok(networks) = reader.networks(Default::default()) else {
        return Vec::new();
    };
    for item in networks.flatten() {
        let Ok(network) = item.network() else {
            continue;
        };
        let path = [
            maxminddb::PathElement::Key("country"),
            maxminddb::PathElement::Key("iso_code"),
        ];
        let country: Option<String> = item.decode_path(&path).ok().flatten();
        let Some(country) = country.filter(|c| c.len() == 2) else {
            continue;
        };
        let (start, end) = match network {
            ipnetwork::IpNetwork::V4(v4) => (
                edgepack_bundles::request::ip_bytes(IpAddr::V4(v4.network())),
                edgepack_bundles::request::ip_bytes(IpAddr::V4(v4.broadcast())),
            ),
            ipnetwork::IpNetwork::V6(v6) => {
                let start = u128::from(v6.network());
                let host_bits = 128 - u32::from(v6.prefix());
                let end = if host_bits == 128 {
                    u128::MAX
                } else {
                    start | ((1u128 << host_bits) - 1)
                };
                (start.to_be_bytes(), end.to_be_bytes())
            }
        };
        by_start.insert(start, (end, country));
    }
    let mut ranges: Vec<GeoRange> = Vec::new();
    for (start, (end, country)) in by_start {
        if let Some(last) = ranges.last_mut() {
            // Networks may nest (an IPv4-mapped tree inside IPv6): keep the outer range.
            if u128::from_be_bytes(start) <= u128::from_be_bytes(last.end) {
                continue;
            }
            if last.country == country
                && u128::from_be_bytes(last.end).checked_add(1) == Some(u128::from_be_bytes(start))
            {
                last.end = end;
                continue;
            }
        }
        ranges.push(GeoRange {
            start,
            end,
            country,
        });
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_captures() {
        let segments = [
            Segment::Literal("items".into()),
            Segment::Param("id".into()),
            Segment::Rest,
        ];
        assert_eq!(
            template("https://x.example/{id}/v/{*}?a=1", &segments),
            vec![
                TemplatePart::Literal("https://x.example/".into()),
                TemplatePart::Segment(1),
                TemplatePart::Literal("/v/".into()),
                TemplatePart::Rest(2),
                TemplatePart::Literal("?a=1".into()),
            ]
        );
    }
}
