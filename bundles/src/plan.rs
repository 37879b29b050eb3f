//! The region plan: everything one region's bundle needs, as plain data with ids.
//!
//! The compiler lowers a validated policy into one [`RegionPlan`] per region: overrides
//! applied, origins resolved to the region's endpoints, header edits merged, only what the
//! region uses kept. The code generator compiles it and the reference evaluator interprets
//! it; the bundle carries it as `plan.json`, and the node reads it to carry out decisions
//! (origins, cache settings, limits, JWT keys, responses) and to name what the module only
//! refers to by id. It lives here, beside the ABI, because compiler and node share it. It
//! prints deterministically as text (`edgepack build --emit ir`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where something was written: `file:line:column`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionPlan {
    pub region: String,
    /// Index into `zones` of the region's zone.
    pub zone: u32,
    /// Every zone; `GLOBAL` is last.
    pub zones: Vec<String>,
    /// The countries each declared zone lists (GLOBAL: all others).
    pub zone_countries: Vec<Vec<String>>,
    pub geo: Option<GeoPlan>,
    pub routes: Vec<RoutePlan>,
    pub waf: Option<WafPlan>,
    pub ratelimits: Vec<RateLimitPlan>,
    pub jwts: Vec<JwtPlan>,
    pub cors: Vec<CorsPlan>,
    pub origins: Vec<OriginPlan>,
    pub functions: Vec<FunctionPlan>,
    pub responses: Vec<ResponsePlan>,
    /// Header edit sets; set 0 is the policy's and region's own, used before a route is known.
    pub edit_sets: Vec<EditSet>,
    /// Transforms for a zone's personal data, by zone.
    pub residency: Vec<ResidencyPlan>,
    pub tests: Vec<TestPlan>,
    /// How a node watches this bundle after swapping it in; none: it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPlan>,
}

/// After a swap the node counts its requests and 5xx answers for `watch_ms`; once
/// `min_requests` are in and errors exceed `max_error_permille` thousandths of them, it
/// returns to the bundle it served before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlan {
    pub watch_ms: u64,
    pub max_error_permille: u32,
    pub min_requests: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeoPlan {
    pub country_header: Option<String>,
    pub trusted_peers: Vec<String>,
    /// IP ranges of the database, sorted, merged where adjacent ranges share a country.
    pub ranges: Vec<GeoRange>,
    pub database: Option<String>,
    pub block: Option<CountryListPlan>,
    pub allow: Option<CountryListPlan>,
}

/// A range of addresses (16-byte form, inclusive) and its country.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoRange {
    pub start: [u8; 16],
    pub end: [u8; 16],
    pub country: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountryListPlan {
    pub countries: Vec<String>,
    pub status: u16,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoutePlan {
    pub id: u32,
    /// As written in the policy.
    pub pattern: String,
    pub segments: Vec<SegmentPlan>,
    /// Empty: any method.
    pub methods: Vec<String>,
    /// Empty: any host.
    pub hosts: Vec<HostPlan>,
    pub action: ActionPlan,
    pub auth: Option<u32>,
    pub ratelimits: Vec<u32>,
    pub cache: Option<CachePlan>,
    pub cors: Option<u32>,
    /// Header edit set applied on this route.
    pub edits: u32,
    pub waf: RouteWafPlan,
    /// The zone requests leave to: the proxied endpoint's, or the region's for functions.
    pub processing_zone: Option<u32>,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SegmentPlan {
    Literal(String),
    Param(String),
    Rest,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HostPlan {
    Exact(String),
    /// The suffix with its leading dot.
    Wildcard(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ActionPlan {
    Proxy {
        origin: u32,
        /// Whether WebSocket upgrades go through to the origin (absent: no).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        websocket: bool,
    },
    Respond {
        response: u32,
    },
    Redirect {
        status: u16,
        target: Vec<TemplatePart>,
    },
    Function {
        function: u32,
    },
    Block {
        status: u16,
    },
}

/// A piece of a redirect target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplatePart {
    Literal(String),
    /// The request segment at this index (a `:param` of the pattern).
    Segment(u32),
    /// The request segments from this index on, joined with `/` (the pattern's `*`).
    Rest(u32),
    /// The request's query as received, after `join` (`?`, or `&` when the target has a
    /// query of its own; none when the target ends with either); nothing when the request
    /// has none.
    Query {
        join: Option<char>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachePlan {
    pub ttl_ms: u64,
    pub stale_while_revalidate_ms: u64,
    pub vary: Vec<String>,
    /// Extra key parts: `header:NAME`, `cookie:NAME`, `claim:NAME`.
    pub key: Vec<String>,
    /// Whether requests with credentials are cached too.
    pub cache_credentialed: bool,
    /// Whether responses marked `Cache-Control: private` or setting cookies are stored.
    pub store_private: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WafModePlan {
    Off,
    Log,
    Block,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteWafPlan {
    pub mode: WafModePlan,
    /// The WAF rules (ids) that run on this route.
    pub rules: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WafPlan {
    pub threshold: u32,
    pub body_limit: u32,
    pub block_oversized_bodies: bool,
    pub rules: Vec<WafRulePlan>,
    /// The most bytes one pattern's automaton may take (`waf automaton-budget`): a pattern
    /// whose DFA is larger is compiled as a sequence of two.
    pub automaton_budget: u64,
    /// Rules of imported rule sets that are not in the module, and why (for `inspect`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOutRulePlan>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOutRulePlan {
    pub name: String,
    pub reason: String,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WafRulePlan {
    pub id: u32,
    pub name: String,
    pub score: u32,
    pub parts: Vec<PartPlan>,
    pub decode: Vec<DecodingPlan>,
    pub matchers: Vec<MatcherPlan>,
    /// The rule's condition holds when some value matches none of the matchers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub negated: bool,
    /// The condition compares the number of values instead (no matchers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<CountPlan>,
    /// Conditions that must hold as well (an imported ModSecurity chain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub and: Vec<WafConditionPlan>,
    /// See [`WafConditionPlan::also_after`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_after: Vec<u32>,
    pub source: Source,
}

/// One more condition of a rule: as the rule's own, over its own parts and decodings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WafConditionPlan {
    pub parts: Vec<PartPlan>,
    pub decode: Vec<DecodingPlan>,
    pub matchers: Vec<MatcherPlan>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub negated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<CountPlan>,
    /// The matchers also run on the value decoded by only the first N steps of `decode`, for
    /// each N here (0: the value as it is): a rule decoding `every-step` (ModSecurity's
    /// `multiMatch`), cut where the policy's steps end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_after: Vec<u32>,
}

impl WafConditionPlan {
    /// Each decoding chain the matchers run after: the prefixes `also_after` names, then
    /// the whole chain.
    pub fn chains(&self) -> Vec<&[DecodingPlan]> {
        self.also_after
            .iter()
            .map(|n| &self.decode[..(*n as usize).min(self.decode.len())])
            .chain(std::iter::once(self.decode.as_slice()))
            .collect()
    }
}

/// "The number of values is `op` `value`".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountPlan {
    pub op: CountOp,
    pub value: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CountOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CountOp {
    pub fn holds(self, count: u32, value: u32) -> bool {
        match self {
            CountOp::Eq => count == value,
            CountOp::Ne => count != value,
            CountOp::Lt => count < value,
            CountOp::Le => count <= value,
            CountOp::Gt => count > value,
            CountOp::Ge => count >= value,
        }
    }
}

impl WafRulePlan {
    /// The rule's own condition followed by its further ones.
    pub fn conditions(&self) -> Vec<WafConditionPlan> {
        let own = WafConditionPlan {
            parts: self.parts.clone(),
            decode: self.decode.clone(),
            matchers: self.matchers.clone(),
            negated: self.negated,
            count: self.count,
            also_after: self.also_after.clone(),
        };
        std::iter::once(own)
            .chain(self.and.iter().cloned())
            .collect()
    }

    /// Whether the rule is more than one condition of values matching.
    pub fn is_compound(&self) -> bool {
        self.negated || self.count.is_some() || !self.and.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PartPlan {
    Path,
    Query,
    Args,
    ArgNames,
    Headers,
    Header(String),
    Cookies,
    Cookie(String),
    Body,
    CookieNames,
    HeaderNames,
    /// The path and, when there is one, `?` and the query.
    Uri,
    /// The method as received.
    Method,
    /// `HTTP/1.1`, `HTTP/2.0`.
    Protocol,
    /// Method, URI and protocol, separated by spaces.
    RequestLine,
    /// The query's arguments only (the first `query_arg_count` of `Args`).
    QueryArgs,
    QueryArgNames,
    /// A list part (`Args`, `Headers`, `Cookies`) without the members these names pick.
    Except(Box<PartPlan>, Vec<NameFilter>),
    /// The values of the arguments of one name.
    Arg(String),
    /// A multipart body's uploaded file names, and their form field names.
    Files,
    FileFields,
    /// A multipart body's part header lines (`Name: value`), all or one part's.
    PartHeaders,
    PartHeader(String),
}

/// Picks members of a list part by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NameFilter {
    Exact(String),
    Containing(String),
}

impl NameFilter {
    pub fn picks(&self, name: &[u8]) -> bool {
        match self {
            NameFilter::Exact(n) => name == n.as_bytes(),
            NameFilter::Containing(n) => {
                n.is_empty() || name.windows(n.len()).any(|w| w == n.as_bytes())
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DecodingPlan {
    UrlDecode,
    Lowercase,
    HtmlEntityDecode,
    NormalizePath,
    CompressWhitespace,
    RemoveNulls,
    UrlDecodeUni,
    /// `utf8toUnicode` then `urlDecodeUni`, in one pass.
    Utf8UrlDecodeUni,
    JsDecode,
    CssDecode,
    /// ModSecurity's `cmdLine`.
    CmdLine,
    RemoveWhitespace,
    /// ModSecurity's `replaceComments`: each `/* … */` (or unterminated `/* …`) to a space.
    ReplaceComments,
    /// `\` to `/` (the first half of `normalizePathWin`).
    BackslashToSlash,
    /// ModSecurity 3's `base64Decode`: the value up to its first NUL read as strict base64
    /// (line breaks and spaces at line ends allowed); anything else decodes to nothing.
    Base64Decode,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MatcherPlan {
    Regex(String),
    Literal(String),
    /// libinjection, through the host's `detect` import.
    Detect(crate::detect::DetectKind),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateLimitPlan {
    pub id: u32,
    pub name: String,
    /// `client-ip`, `header:NAME` or `claim:NAME`.
    pub key: String,
    pub limit: u32,
    pub per_ms: u64,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JwtPlan {
    pub id: u32,
    pub name: String,
    pub algorithms: Vec<String>,
    /// Bundle paths of the key files (`keys/…`).
    pub keys: Vec<String>,
    /// Names of HS shared secrets the node holds (`--jwt-secret NAME=FILE`): the bundle
    /// carries only the names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway_ms: u64,
    pub require: Vec<String>,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorsPlan {
    pub id: u32,
    pub name: String,
    pub origins: Vec<String>,
    /// Empty: the route's methods.
    pub methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub credentials: bool,
    pub max_age_s: u64,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OriginPlan {
    pub id: u32,
    pub name: String,
    /// The endpoint this region uses.
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path_prefix: String,
    pub zone: u32,
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionPlan {
    pub id: u32,
    pub name: String,
    /// Bundle path of the component (`functions/…`).
    pub file: String,
    pub memory_bytes: u64,
    pub timeout_ms: u64,
    pub origins: Vec<u32>,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponsePlan {
    pub id: u32,
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EditSet {
    pub request: Vec<HeaderEdit>,
    pub response: Vec<HeaderEdit>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HeaderEdit {
    Set(String, String),
    Append(String, String),
    Remove(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResidencyPlan {
    pub zone: u32,
    pub pseudonymize: Vec<String>,
    pub drop: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestPlan {
    pub name: String,
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub country: Option<String>,
    pub ip: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub expect_status: Option<u16>,
    pub expect_route: Option<String>,
    pub expect_rule: Option<String>,
    pub expect_cache_ttl_ms: Option<u64>,
    /// Response headers the answer must carry: lower-case name, exact value.
    #[serde(default)]
    pub expect_headers: Vec<(String, String)>,
    pub source: Source,
}

impl RegionPlan {
    pub fn zone_name(&self, zone: u32) -> &str {
        self.zones.get(zone as usize).map_or("?", String::as_str)
    }

    /// The id of the `GLOBAL` zone (always last).
    pub fn global_zone(&self) -> u32 {
        self.zones.len() as u32 - 1
    }

    /// The zone of a country.
    pub fn zone_of(&self, country: &str) -> u32 {
        self.zone_countries
            .iter()
            .position(|list| list.iter().any(|c| c == country))
            .map_or(self.global_zone(), |z| z as u32)
    }
}

impl fmt::Display for RegionPlan {
    /// The plan as text: stable order, one item per line, source locations at the end.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "region {} zone={}",
            self.region,
            self.zone_name(self.zone)
        )?;
        for (i, zone) in self.zones.iter().enumerate() {
            writeln!(f, "zone #{i} {zone} [{}]", self.zone_countries[i].join(" "))?;
        }
        if let Some(geo) = &self.geo {
            writeln!(
                f,
                "geo header={} trusted=[{}] database={} ranges={}",
                geo.country_header.as_deref().unwrap_or("-"),
                geo.trusted_peers.join(" "),
                geo.database.as_deref().unwrap_or("-"),
                geo.ranges.len()
            )?;
            for (kind, list) in [("block", &geo.block), ("allow", &geo.allow)] {
                if let Some(list) = list {
                    writeln!(
                        f,
                        "  {kind} [{}] status={} @{}",
                        list.countries.join(" "),
                        list.status,
                        list.source
                    )?;
                }
            }
        }
        for origin in &self.origins {
            writeln!(
                f,
                "origin #{} {} {} zone={} connect={}ms response={}ms @{}",
                origin.id,
                origin.name,
                origin.url,
                self.zone_name(origin.zone),
                origin.connect_timeout_ms,
                origin.response_timeout_ms,
                origin.source
            )?;
        }
        for limit in &self.ratelimits {
            writeln!(
                f,
                "ratelimit #{} {} key={} limit={} per={}ms @{}",
                limit.id, limit.name, limit.key, limit.limit, limit.per_ms, limit.source
            )?;
        }
        for jwt in &self.jwts {
            let secrets = if jwt.secrets.is_empty() {
                String::new()
            } else {
                format!(" node-secrets=[{}]", jwt.secrets.join(" "))
            };
            writeln!(
                f,
                "jwt #{} {} algorithms=[{}] keys=[{}]{secrets} issuer={} audience=[{}] leeway={}ms require=[{}] @{}",
                jwt.id,
                jwt.name,
                jwt.algorithms.join(" "),
                jwt.keys.join(" "),
                jwt.issuer.as_deref().unwrap_or("-"),
                jwt.audience.join(" "),
                jwt.leeway_ms,
                jwt.require.join(" "),
                jwt.source
            )?;
        }
        for cors in &self.cors {
            writeln!(
                f,
                "cors #{} {} origins=[{}] methods=[{}] allow-headers=[{}] expose-headers=[{}] credentials={} max-age={}s @{}",
                cors.id,
                cors.name,
                cors.origins.join(" "),
                cors.methods.join(" "),
                cors.allow_headers.join(" "),
                cors.expose_headers.join(" "),
                cors.credentials,
                cors.max_age_s,
                cors.source
            )?;
        }
        for function in &self.functions {
            writeln!(
                f,
                "function #{} {} file={} memory={} timeout={}ms origins={:?} @{}",
                function.id,
                function.name,
                function.file,
                function.memory_bytes,
                function.timeout_ms,
                function.origins,
                function.source
            )?;
        }
        for response in &self.responses {
            writeln!(
                f,
                "response #{} status={} type={} body={:?} headers={:?}",
                response.id,
                response.status,
                response.content_type.as_deref().unwrap_or("-"),
                response.body,
                response.headers
            )?;
        }
        for (i, set) in self.edit_sets.iter().enumerate() {
            writeln!(
                f,
                "edits #{i} request={:?} response={:?}",
                set.request, set.response
            )?;
        }
        for residency in &self.residency {
            writeln!(
                f,
                "residency {} pseudonymize=[{}] drop=[{}]",
                self.zone_name(residency.zone),
                residency.pseudonymize.join(" "),
                residency.drop.join(" ")
            )?;
        }
        if let Some(waf) = &self.waf {
            writeln!(
                f,
                "waf threshold={} body-limit={} block-oversized={}",
                waf.threshold, waf.body_limit, waf.block_oversized_bodies
            )?;
            for rule in &waf.rules {
                writeln!(
                    f,
                    "  rule #{} {} score={} in={:?} decode={:?} match={:?} @{}",
                    rule.id,
                    rule.name,
                    rule.score,
                    rule.parts,
                    rule.decode,
                    rule.matchers,
                    rule.source
                )?;
            }
        }
        for route in &self.routes {
            writeln!(
                f,
                "route #{} {} methods=[{}] hosts={:?} @{}",
                route.id,
                route.pattern,
                route.methods.join(" "),
                route.hosts,
                route.source
            )?;
            writeln!(f, "  action {:?}", route.action)?;
            writeln!(
                f,
                "  auth={:?} ratelimits={:?} cors={:?} edits=#{} zone={}",
                route.auth,
                route.ratelimits,
                route.cors,
                route.edits,
                route.processing_zone.map_or("-", |z| self.zone_name(z))
            )?;
            if let Some(cache) = &route.cache {
                writeln!(
                    f,
                    "  cache ttl={}ms swr={}ms vary=[{}] key=[{}] credentialed={}{}",
                    cache.ttl_ms,
                    cache.stale_while_revalidate_ms,
                    cache.vary.join(" "),
                    cache.key.join(" "),
                    if cache.cache_credentialed {
                        "cache"
                    } else {
                        "bypass"
                    },
                    if cache.store_private {
                        " private=store"
                    } else {
                        ""
                    }
                )?;
            }
            writeln!(f, "  waf {:?} rules={:?}", route.waf.mode, route.waf.rules)?;
        }
        for test in &self.tests {
            writeln!(
                f,
                "test {:?} {} {} @{}",
                test.name, test.method, test.target, test.source
            )?;
        }
        if let Some(rollout) = &self.rollout {
            writeln!(
                f,
                "rollout watch={}ms max-error-rate={}.{}% min-requests={}",
                rollout.watch_ms,
                rollout.max_error_permille / 10,
                rollout.max_error_permille % 10,
                rollout.min_requests
            )?;
        }
        Ok(())
    }
}
