//! The typed policy: what a KDL policy means, with the span of everything written.
//!
//! These types are built by `decode` and checked by `validate`; a [`Policy`] handed out by
//! [`crate::check`] has passed every check, so later stages (lowering, code generation) never
//! report user errors. Defaults are filled in here, so later stages need not know them.
//! Nothing in this module reads files or prints.

use std::time::Duration;

use ipnet::IpNet;

use crate::pattern::{HostPattern, RoutePattern};
use crate::source::{Span, Spanned};

pub type Name = Spanned<String>;

/// The zone of every country no declared zone lists.
pub const GLOBAL_ZONE: &str = "GLOBAL";

/// The only language version this release reads (`edgepack 1`).
pub const LANGUAGE_VERSION: i128 = 1;

/// A two-letter ISO 3166-1 alpha-2 country code, upper case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country(pub [u8; 2]);

impl Country {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl std::fmt::Display for Country {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A relative path named in a policy, resolved against the file that names it and checked
/// to stay inside the policy directory.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyPath {
    /// As written.
    pub written: String,
    /// Relative to the policy directory, with `/` separators (what bundles store).
    pub relative: String,
    /// Absolute path on this machine.
    pub absolute: std::path::PathBuf,
}

#[derive(Debug)]
pub struct Policy {
    pub zones: Vec<Zone>,
    pub regions: Vec<Region>,
    pub origins: Vec<Origin>,
    pub geo: Option<Geo>,
    pub waf: Option<Waf>,
    pub ratelimits: Vec<RateLimit>,
    pub jwts: Vec<JwtProvider>,
    pub cors: Vec<Cors>,
    /// Header edits applied on every route, before the route's own.
    pub headers: HeaderEdits,
    pub residency: Vec<Residency>,
    pub functions: Vec<Function>,
    pub routes: Vec<Route>,
    pub tests: Vec<TestCase>,
    /// How a node watches a freshly activated bundle, and when it rolls back.
    pub rollout: Option<Rollout>,
}

/// `rollout watch="5m" max-error-rate="5%" min-requests=50`: after a node swaps this
/// bundle in, it counts its 5xx answers for `watch`; once `min_requests` requests are in
/// and the share of errors is above `max_error_rate`, it returns to the bundle before.
#[derive(Debug)]
pub struct Rollout {
    pub watch: Spanned<Duration>,
    /// In thousandths (50 = 5%).
    pub max_error_permille: Spanned<u32>,
    pub min_requests: Spanned<u64>,
    pub span: Span,
}

#[derive(Debug)]
pub struct Zone {
    pub name: Name,
    pub countries: Vec<Spanned<Country>>,
    pub span: Span,
}

#[derive(Debug)]
pub struct Region {
    pub name: Name,
    pub zone: Name,
    pub location: Option<Spanned<String>>,
    pub lat: Option<Spanned<f64>>,
    pub lon: Option<Spanned<f64>>,
    pub overrides: RegionOverrides,
    pub span: Span,
}

/// What a region's block changes for that region only.
#[derive(Debug, Default)]
pub struct RegionOverrides {
    /// Replace the route with the same pattern, hosts and methods, or add a new one.
    pub routes: Vec<Route>,
    /// Replace the rate limit of the same name.
    pub ratelimits: Vec<RateLimit>,
    pub waf: Option<WafOverride>,
    pub geo: Option<GeoOverride>,
    /// Appended to the policy-wide header edits.
    pub headers: HeaderEdits,
}

#[derive(Debug)]
pub struct WafOverride {
    pub threshold: Option<Spanned<u32>>,
    pub mode: Option<Spanned<WafMode>>,
    /// Rules disabled in this region.
    pub disable: Vec<Name>,
    pub span: Span,
}

#[derive(Debug)]
pub struct GeoOverride {
    pub block: Option<CountryList>,
    pub allow: Option<CountryList>,
    pub span: Span,
}

#[derive(Debug)]
pub struct Origin {
    pub name: Name,
    pub endpoints: Vec<OriginEndpoint>,
    /// Zone whose endpoint serves regions of zones without one of their own.
    pub fallback: Option<Name>,
    pub connect_timeout: Spanned<Duration>,
    pub response_timeout: Spanned<Duration>,
    pub span: Span,
}

#[derive(Debug)]
pub struct OriginEndpoint {
    pub zone: Name,
    pub url: Spanned<OriginUrl>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OriginUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Prefix put before the request path, without a trailing `/` (may be empty).
    pub path_prefix: String,
    pub written: String,
}

#[derive(Debug)]
pub struct Geo {
    /// Request header carrying the client country, honoured only from trusted peers.
    pub country_header: Option<Spanned<String>>,
    /// Peers whose country header and `X-Forwarded-For` hops are believed.
    pub trusted_peers: Vec<Spanned<IpNet>>,
    /// An IP-to-country database, compiled into the bundle as ranges.
    pub database: Option<GeoDatabase>,
    pub block: Option<CountryList>,
    pub allow: Option<CountryList>,
    pub span: Span,
}

/// A MaxMind DB file, read and verified.
#[derive(Debug)]
pub struct GeoDatabase {
    pub path: Spanned<PolicyPath>,
    pub contents: Vec<u8>,
}

/// A list of countries and the status a request from (or, for allow lists, not from) them gets.
#[derive(Debug)]
pub struct CountryList {
    pub countries: Vec<Spanned<Country>>,
    pub status: Spanned<u16>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WafMode {
    /// Requests at or over the threshold are answered 403.
    Block,
    /// Scores and matches are recorded; nothing is blocked.
    Log,
    /// The WAF does not run (route level only).
    Off,
}

impl WafMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            WafMode::Block => "block",
            WafMode::Log => "log",
            WafMode::Off => "off",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyOverflow {
    /// Inspect the body up to the limit and let the rest through unread.
    Ignore,
    /// Answer 413 to bodies over the limit.
    Block,
}

#[derive(Debug)]
pub struct Waf {
    pub threshold: Spanned<u32>,
    pub mode: Spanned<WafMode>,
    pub body_limit: Spanned<u64>,
    pub body_overflow: Spanned<BodyOverflow>,
    /// Largest automaton one pattern may compile to, in bytes.
    pub automaton_budget: Spanned<u64>,
    pub rules: Vec<WafRule>,
    /// Rule sets imported into `rules`, with what each left out.
    pub imports: Vec<crate::modsecurity::WafImport>,
    pub span: Span,
}

impl Waf {
    /// The rule ids `disable` and `exclude` may name: the WAF's rules, and imported rules
    /// left out of the bundle (naming one of those is allowed and changes nothing).
    pub fn nameable_rule_ids(&self) -> Vec<&str> {
        self.rules
            .iter()
            .map(|r| r.id.value.as_str())
            .chain(
                self.imports
                    .iter()
                    .flat_map(|i| i.skipped.iter().map(|s| s.id.as_str())),
            )
            .collect()
    }
}

#[derive(Debug)]
pub struct WafRule {
    pub id: Name,
    pub score: Spanned<u32>,
    pub parts: Vec<Spanned<RequestPart>>,
    pub decode: Vec<Spanned<Decoding>>,
    pub matchers: Vec<Matcher>,
    /// The condition holds when some value matches none of the matchers (imported `!@rx`).
    pub negated: bool,
    /// The condition compares the number of values instead (imported `&VAR @eq N`).
    pub count: Option<Count>,
    /// Further conditions that must hold too (an imported chain).
    pub and: Vec<WafCondition>,
    /// The matchers also run on the value before decoding and after each step of `decode`
    /// (`decode … every-step=#true`; ModSecurity's `multiMatch`).
    pub every_step: bool,
    pub span: Span,
}

/// A further condition of an imported rule.
#[derive(Debug)]
pub struct WafCondition {
    pub parts: Vec<Spanned<RequestPart>>,
    pub decode: Vec<Spanned<Decoding>>,
    pub matchers: Vec<Matcher>,
    pub negated: bool,
    pub count: Option<Count>,
}

/// "The number of values is `op` `value`".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    pub op: Comparison,
    pub value: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A part of a request the WAF can read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RequestPart {
    /// The path, without the query.
    Path,
    /// The raw query string.
    Query,
    /// Every query and form/multipart/JSON body argument value.
    Args,
    /// Every query and form/multipart/JSON body argument name.
    ArgNames,
    /// Every header value.
    Headers,
    /// One header's value.
    Header(String),
    /// Every cookie value.
    Cookies,
    /// Every cookie name.
    CookieNames,
    /// Every header name (lower-case).
    HeaderNames,
    /// The path and, when there is one, `?` and the query, as received.
    Uri,
    /// The method.
    Method,
    /// The protocol: `HTTP/1.1`, `HTTP/2.0`.
    Protocol,
    /// Method, URI and protocol, separated by spaces.
    RequestLine,
    /// Every query argument value (not body arguments).
    QueryArgs,
    /// Every query argument name.
    QueryArgNames,
    /// A list part (`Args`, `Headers`, `Cookies`) without some members (imported rules'
    /// `!REQUEST_COOKIES:/__utm/`): names equal to the first list, or containing one of the
    /// second.
    Except(Box<RequestPart>, Vec<String>, Vec<String>),
    /// One cookie's value.
    Cookie(String),
    /// The body, up to the WAF's body limit.
    Body,
    /// The values of the arguments of one name.
    Arg(String),
    /// Every uploaded file's name as sent (a `multipart/form-data` part with a `filename`).
    Files,
    /// The form field name of every uploaded file.
    FileFields,
    /// Every header line of every `multipart/form-data` part, as `Name: value`.
    PartHeaders,
    /// The header lines of the multipart parts of one name.
    PartHeader(String),
}

impl RequestPart {
    pub fn describe(&self) -> String {
        match self {
            RequestPart::Path => "path".into(),
            RequestPart::Query => "query".into(),
            RequestPart::Args => "args".into(),
            RequestPart::ArgNames => "arg-names".into(),
            RequestPart::Headers => "headers".into(),
            RequestPart::Header(h) => format!("header:{h}"),
            RequestPart::Cookies => "cookies".into(),
            RequestPart::CookieNames => "cookie-names".into(),
            RequestPart::HeaderNames => "header-names".into(),
            RequestPart::Uri => "uri".into(),
            RequestPart::Method => "method".into(),
            RequestPart::Protocol => "protocol".into(),
            RequestPart::RequestLine => "request-line".into(),
            RequestPart::QueryArgs => "query-args".into(),
            RequestPart::QueryArgNames => "query-arg-names".into(),
            RequestPart::Except(base, exact, containing) => {
                let mut names: Vec<String> = exact.iter().map(|n| format!("`{n}`")).collect();
                names.extend(containing.iter().map(|n| format!("names containing `{n}`")));
                format!("{} except {}", base.describe(), names.join(", "))
            }
            RequestPart::Cookie(c) => format!("cookie:{c}"),
            RequestPart::Body => "body".into(),
            RequestPart::Arg(a) => format!("arg:{a}"),
            RequestPart::Files => "files".into(),
            RequestPart::FileFields => "file-fields".into(),
            RequestPart::PartHeaders => "part-headers".into(),
            RequestPart::PartHeader(p) => format!("part-header:{p}"),
        }
    }
}

/// A transformation applied to a request part before the rule's matchers see it, in the
/// order declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decoding {
    UrlDecode,
    Lowercase,
    HtmlEntityDecode,
    NormalizePath,
    CompressWhitespace,
    RemoveNulls,
    UrlDecodeUni,
    Utf8UrlDecodeUni,
    JsDecode,
    CssDecode,
    CmdLine,
    RemoveWhitespace,
    NormalizePathWin,
    ReplaceComments,
    Base64Decode,
}

impl Decoding {
    pub const ALL: [(&'static str, Decoding); 15] = [
        ("url-decode", Decoding::UrlDecode),
        ("lowercase", Decoding::Lowercase),
        ("html-entity-decode", Decoding::HtmlEntityDecode),
        ("normalize-path", Decoding::NormalizePath),
        ("compress-whitespace", Decoding::CompressWhitespace),
        ("remove-nulls", Decoding::RemoveNulls),
        ("url-decode-uni", Decoding::UrlDecodeUni),
        ("utf8-url-decode-uni", Decoding::Utf8UrlDecodeUni),
        ("js-decode", Decoding::JsDecode),
        ("css-decode", Decoding::CssDecode),
        ("cmd-line", Decoding::CmdLine),
        ("remove-whitespace", Decoding::RemoveWhitespace),
        ("normalize-path-win", Decoding::NormalizePathWin),
        ("replace-comments", Decoding::ReplaceComments),
        ("base64-decode", Decoding::Base64Decode),
    ];

    pub fn as_str(&self) -> &'static str {
        Decoding::ALL
            .iter()
            .find(|(_, d)| d == self)
            .map_or("?", |(n, _)| n)
    }
}

#[derive(Clone, Debug)]
pub enum Matcher {
    /// A regular expression over bytes (ASCII classes and case folding unless `(?u)`).
    Regex(Spanned<String>),
    /// A byte string that must occur.
    Literal(Spanned<String>),
    /// libinjection's detector: `"sqli"` or `"xss"` (ModSecurity's `@detectSQLi`/`@detectXSS`).
    Detect(Spanned<Detector>),
}

/// What a `detect` matcher looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detector {
    Sqli,
    Xss,
}

#[derive(Debug)]
pub struct RateLimit {
    pub name: Name,
    pub key: Spanned<LimitKey>,
    pub limit: Spanned<u32>,
    pub per: Spanned<Duration>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    ClientIp,
    Header(String),
    /// A claim of the verified JWT: the route must authenticate.
    Claim(String),
}

impl LimitKey {
    pub fn describe(&self) -> String {
        match self {
            LimitKey::ClientIp => "client-ip".into(),
            LimitKey::Header(h) => format!("header:{h}"),
            LimitKey::Claim(c) => format!("claim:{c}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// The kind of key an algorithm verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Secret,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub fn describe(&self) -> &'static str {
        match self {
            KeyKind::Secret => "a shared secret",
            KeyKind::Rsa => "an RSA key",
            KeyKind::EcP256 => "an EC P-256 key",
            KeyKind::EcP384 => "an EC P-384 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }
}

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 12] = [
        JwtAlgorithm::HS256,
        JwtAlgorithm::HS384,
        JwtAlgorithm::HS512,
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::HS384 => "HS384",
            JwtAlgorithm::HS512 => "HS512",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn key_kind(&self) -> KeyKind {
        match self {
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512 => KeyKind::Secret,
            JwtAlgorithm::RS256
            | JwtAlgorithm::RS384
            | JwtAlgorithm::RS512
            | JwtAlgorithm::PS256
            | JwtAlgorithm::PS384
            | JwtAlgorithm::PS512 => KeyKind::Rsa,
            JwtAlgorithm::ES256 => KeyKind::EcP256,
            JwtAlgorithm::ES384 => KeyKind::EcP384,
            JwtAlgorithm::EdDSA => KeyKind::Ed25519,
        }
    }
}

#[derive(Debug)]
pub struct JwtProvider {
    pub name: Name,
    pub algorithms: Vec<Spanned<JwtAlgorithm>>,
    pub keys: Vec<JwtKey>,
    /// Names of shared secrets the nodes hold (`secret "NAME"`), never in the bundle.
    pub secrets: Vec<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    pub audience: Vec<Spanned<String>>,
    pub leeway: Spanned<Duration>,
    /// Claims that must be present.
    pub require: Vec<Spanned<String>>,
    pub span: Span,
}

/// A verification key read from a PEM or JWK file.
#[derive(Debug)]
pub struct JwtKey {
    pub path: Spanned<PolicyPath>,
    pub kind: KeyKind,
    /// The file's bytes, as the bundle will carry them.
    pub contents: Vec<u8>,
}

#[derive(Debug)]
pub struct Cors {
    pub name: Name,
    /// Allowed origins; `*` allows any.
    pub origins: Vec<Spanned<String>>,
    pub methods: Vec<Spanned<String>>,
    pub allow_headers: Vec<Spanned<String>>,
    pub expose_headers: Vec<Spanned<String>>,
    pub credentials: Spanned<bool>,
    pub max_age: Spanned<Duration>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HeaderOp {
    Set(Spanned<String>, Spanned<String>),
    Append(Spanned<String>, Spanned<String>),
    Remove(Spanned<String>),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderEdits {
    pub request: Vec<HeaderOp>,
    pub response: Vec<HeaderOp>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// What happens to a zone's personal data when a request leaves it.
#[derive(Debug)]
pub struct Residency {
    pub zone: Name,
    /// Headers replaced by a keyed HMAC of their value.
    pub pseudonymize: Vec<Spanned<String>>,
    /// Headers removed.
    pub drop: Vec<Spanned<String>>,
    /// Origins that regions of this zone may reach in another zone.
    pub transfers: Vec<Transfer>,
    pub span: Span,
}

#[derive(Debug)]
pub struct Transfer {
    pub origin: Name,
    pub to: Name,
    pub span: Span,
}

#[derive(Debug)]
pub struct Function {
    pub name: Name,
    pub source: Spanned<PolicyPath>,
    /// The component's bytes, as the bundle will carry them.
    pub contents: Vec<u8>,
    pub memory: Spanned<u64>,
    pub timeout: Spanned<Duration>,
    /// Origins the function may call.
    pub origins: Vec<Name>,
    pub span: Span,
}

#[derive(Debug)]
pub struct Route {
    pub pattern: Spanned<RoutePattern>,
    /// Empty: any method.
    pub methods: Vec<Spanned<String>>,
    /// Empty: any host.
    pub hosts: Vec<Spanned<HostPattern>>,
    pub action: Spanned<Action>,
    pub auth: Option<Name>,
    pub ratelimits: Vec<Name>,
    pub cache: Option<CachePolicy>,
    pub cors: Option<Name>,
    pub headers: HeaderEdits,
    pub waf: RouteWaf,
    pub span: Span,
}

#[derive(Debug, Default)]
pub struct RouteWaf {
    pub mode: Option<Spanned<WafMode>>,
    pub exclude: Vec<Name>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Proxy {
        origin: Name,
        /// Whether WebSocket upgrades go through to the origin.
        websocket: bool,
    },
    Respond {
        status: Spanned<u16>,
        body: Option<Body>,
        headers: Vec<(Spanned<String>, Spanned<String>)>,
    },
    Redirect {
        status: Spanned<u16>,
        target: Spanned<String>,
        /// Whether the request's query string is carried over to the target.
        keep_query: bool,
    },
    Function {
        name: Name,
    },
    Block {
        status: Spanned<u16>,
    },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Proxy { .. } => "proxy",
            Action::Respond { .. } => "respond",
            Action::Redirect { .. } => "redirect",
            Action::Function { .. } => "function",
            Action::Block { .. } => "block",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Text(Spanned<String>),
    /// Checked to be valid JSON; served as `application/json`.
    Json(Spanned<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentialed {
    /// Requests with `Authorization` or cookies skip the cache.
    Bypass,
    /// They are cached like any other (the key should then include what identifies them).
    Cache,
}

#[derive(Debug)]
pub struct CachePolicy {
    pub ttl: Spanned<Duration>,
    pub stale_while_revalidate: Spanned<Duration>,
    pub vary: Vec<Spanned<String>>,
    pub key: Vec<Spanned<KeyPart>>,
    pub credentialed: Spanned<Credentialed>,
    /// Whether responses marked private or setting cookies are stored too.
    pub store_private: Spanned<bool>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyPart {
    Header(String),
    Cookie(String),
    /// A claim of the verified JWT.
    Claim(String),
}

impl KeyPart {
    pub fn describe(&self) -> String {
        match self {
            KeyPart::Header(h) => format!("header:{h}"),
            KeyPart::Cookie(c) => format!("cookie:{c}"),
            KeyPart::Claim(c) => format!("claim:{c}"),
        }
    }
}

#[derive(Debug)]
pub struct TestCase {
    pub name: Name,
    pub request: TestRequest,
    pub expect: Expect,
    pub span: Span,
}

#[derive(Debug)]
pub struct TestRequest {
    pub method: Spanned<String>,
    /// Path and query, as sent.
    pub target: Spanned<String>,
    pub host: Option<Spanned<String>>,
    pub country: Option<Spanned<Country>>,
    pub ip: Option<Spanned<std::net::IpAddr>>,
    /// The region the test runs in; none: every region.
    pub region: Option<Name>,
    pub headers: Vec<(Spanned<String>, Spanned<String>)>,
    pub body: Option<Spanned<String>>,
    pub span: Span,
}

#[derive(Debug, Default)]
pub struct Expect {
    pub status: Option<Spanned<u16>>,
    /// The pattern of the route that must take the request.
    pub route: Option<Spanned<String>>,
    /// A WAF rule that must fire.
    pub rule: Option<Name>,
    pub cache_ttl: Option<Spanned<Duration>>,
    /// Response headers the answer must carry, name (lower case) and value.
    pub headers: Vec<(Spanned<String>, Spanned<String>)>,
    pub span: Option<Span>,
}

/// What identifies a route for region overrides: its path shape, hosts and methods.
/// A region's route with the same identity as a policy route replaces it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteIdentity {
    shape: Vec<String>,
    hosts: Vec<String>,
    methods: Vec<String>,
}

impl Route {
    /// The pattern's shape: literals as written, parameters and the rest as their kind.
    /// Routes of one shape rank equally on the path.
    pub fn shape(&self) -> Vec<String> {
        use crate::pattern::Segment;
        self.pattern
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => format!("={l}"),
                Segment::Param(_) => ":".to_string(),
                Segment::Rest => "*".to_string(),
            })
            .collect()
    }

    /// Whether this route and `other` can take a request for one host at equal rank.
    pub fn hosts_overlap(&self, other: &Route) -> bool {
        match (self.hosts.is_empty(), other.hosts.is_empty()) {
            (true, true) => true,
            (false, false) => self.hosts.iter().any(|x| {
                other
                    .hosts
                    .iter()
                    .any(|y| x.value.overlaps_at_equal_rank(&y.value))
            }),
            _ => false,
        }
    }

    /// The methods the route takes (empty: every method): those it lists, and `HEAD` with
    /// `GET`, as HTTP servers do (RFC 9110 9.3.2), unless a route of the same rank among
    /// `routes` lists `HEAD` itself.
    pub fn methods_taken(&self, routes: &[&Route]) -> Vec<String> {
        let mut methods: Vec<String> = self.methods.iter().map(|m| m.value.clone()).collect();
        let lists = |route: &Route, method: &str| route.methods.iter().any(|m| m.value == method);
        if lists(self, "GET") && !lists(self, "HEAD") {
            let shape = self.shape();
            let head_elsewhere = routes.iter().any(|other| {
                !std::ptr::eq(*other, self)
                    && lists(other, "HEAD")
                    && other.shape() == shape
                    && self.hosts_overlap(other)
            });
            if !head_elsewhere {
                methods.push("HEAD".to_string());
            }
        }
        methods
    }

    pub fn identity(&self) -> RouteIdentity {
        let shape = self.shape();
        let mut hosts: Vec<String> = self.hosts.iter().map(|h| h.describe()).collect();
        hosts.sort();
        hosts.dedup();
        let mut methods: Vec<String> = self.methods.iter().map(|m| m.value.clone()).collect();
        methods.sort();
        methods.dedup();
        RouteIdentity {
            shape,
            hosts,
            methods,
        }
    }

    /// The route as people name it: its pattern, with hosts and methods when it has them.
    pub fn describe(&self) -> String {
        let mut out = self.pattern.written.clone();
        if !self.methods.is_empty() {
            let methods: Vec<&str> = self.methods.iter().map(|m| m.value.as_str()).collect();
            out = format!("{} {}", methods.join(","), out);
        }
        if !self.hosts.is_empty() {
            let hosts: Vec<String> = self.hosts.iter().map(|h| h.describe()).collect();
            out = format!("{out} on {}", hosts.join(","));
        }
        out
    }
}

impl Policy {
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name.value == name)
    }

    pub fn origin(&self, name: &str) -> Option<&Origin> {
        self.origins.iter().find(|o| o.name.value == name)
    }

    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name.value == name)
    }

    pub fn jwt(&self, name: &str) -> Option<&JwtProvider> {
        self.jwts.iter().find(|j| j.name.value == name)
    }

    pub fn cors_policy(&self, name: &str) -> Option<&Cors> {
        self.cors.iter().find(|c| c.name.value == name)
    }

    pub fn residency_of(&self, zone: &str) -> Option<&Residency> {
        self.residency.iter().find(|r| r.zone.value == zone)
    }

    /// The data zone of a country: the zone listing it, else `GLOBAL`.
    pub fn zone_of_country(&self, country: Country) -> &str {
        self.zones
            .iter()
            .find(|z| z.countries.iter().any(|c| c.value == country))
            .map_or(GLOBAL_ZONE, |z| z.name.value.as_str())
    }

    /// The routes in effect in a region: the policy's routes, each replaced by the region's
    /// route of the same identity if it has one, then the region's other routes.
    pub fn routes_in<'a>(&'a self, region: &'a Region) -> Vec<&'a Route> {
        let overrides = &region.overrides.routes;
        if overrides.is_empty() {
            return self.routes.iter().collect();
        }
        let mut routes: Vec<&Route> = self
            .routes
            .iter()
            .map(|route| {
                let id = route.identity();
                overrides
                    .iter()
                    .find(|o| o.identity() == id)
                    .unwrap_or(route)
            })
            .collect();
        for route in overrides {
            let id = route.identity();
            if !self.routes.iter().any(|r| r.identity() == id) {
                routes.push(route);
            }
        }
        routes
    }

    /// A rate limit as a region sees it (the region may redefine it).
    pub fn ratelimit_in<'a>(&'a self, region: &'a Region, name: &str) -> Option<&'a RateLimit> {
        region
            .overrides
            .ratelimits
            .iter()
            .find(|r| r.name.value == name)
            .or_else(|| self.ratelimits.iter().find(|r| r.name.value == name))
    }

    /// The endpoint of `origin` that regions of `zone` use: the zone's own, else the
    /// fallback zone's.
    pub fn endpoint_for<'a>(&self, origin: &'a Origin, zone: &str) -> Option<&'a OriginEndpoint> {
        origin
            .endpoints
            .iter()
            .find(|e| e.zone.value == zone)
            .or_else(|| {
                let fallback = origin.fallback.as_ref()?;
                origin
                    .endpoints
                    .iter()
                    .find(|e| e.zone.value == fallback.value)
            })
    }

    /// Origins a route can reach: the one it proxies to, or those its function may call.
    pub fn origins_reached<'a>(&'a self, route: &'a Route) -> Vec<&'a Name> {
        match &route.action.value {
            Action::Proxy { origin, .. } => vec![origin],
            Action::Function { name } => self
                .function(name)
                .map(|f| f.origins.iter().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}
