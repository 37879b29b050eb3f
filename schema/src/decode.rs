//! KDL nodes → the typed [`Policy`], one node kind at a time.
//!
//! Each `decode_*` function reads one kind of node with a [`NodeReader`], reports what is
//! wrong with the node itself (unknown names, wrong types, bad values, missing parts) and
//! returns what it could make of it. Checks that need more than one node (references,
//! ambiguity, residency) belong to `validate`. Defaults are decided here and nowhere else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use kdl::KdlNode;

use crate::diagnostics as diag;
use crate::load::Loaded;
use crate::pattern::{HostPattern, RoutePattern};
use crate::policy::*;
use crate::reader::{Ctx, NodeReader, Val, span_of};
use crate::source::{FileId, Span, Spanned};
use crate::waf_regex::{self, RegexProblem};

const TOP_LEVEL: &[&str] = &[
    "edgepack",
    "include",
    "zone",
    "region",
    "origin",
    "geo",
    "waf",
    "ratelimit",
    "jwt",
    "cors",
    "headers",
    "residency",
    "function",
    "route",
    "test",
    "rollout",
];

pub const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_WAF_THRESHOLD: u32 = 5;
pub const DEFAULT_BODY_LIMIT: u64 = 64 << 10;
pub const DEFAULT_AUTOMATON_BUDGET: u64 = 1 << 20;
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
pub const DEFAULT_FUNCTION_MEMORY: u64 = 64 << 20;
pub const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_millis(100);
pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(600);

/// Decodes every top-level node of a loaded policy.
pub(crate) fn decode(loaded: &Loaded, cx: &mut Ctx) -> Policy {
    let mut policy = Policy {
        zones: Vec::new(),
        regions: Vec::new(),
        origins: Vec::new(),
        geo: None,
        waf: None,
        ratelimits: Vec::new(),
        jwts: Vec::new(),
        cors: Vec::new(),
        headers: HeaderEdits::default(),
        residency: Vec::new(),
        functions: Vec::new(),
        routes: Vec::new(),
        tests: Vec::new(),
        rollout: None,
    };
    let mut once = Once::default();
    for (file, node) in loaded.nodes() {
        let name = node.name().value();
        let name_span = span_of(file, node.name().span());
        match name {
            "zone" => policy
                .zones
                .extend(defined(cx, "zone", node, |cx| decode_zone(cx, file, node))),
            "region" => policy.regions.extend(defined(cx, "region", node, |cx| {
                decode_region(cx, file, node)
            })),
            "origin" => policy.origins.extend(defined(cx, "origin", node, |cx| {
                decode_origin(cx, file, node)
            })),
            "geo" => {
                if once.first(cx, name, name_span, "a policy") {
                    policy.geo = decode_geo(cx, file, node);
                }
            }
            "waf" => {
                if once.first(cx, name, name_span, "a policy") {
                    policy.waf = decode_waf(cx, file, node);
                }
            }
            "ratelimit" => policy
                .ratelimits
                .extend(defined(cx, "rate limit", node, |cx| {
                    decode_ratelimit(cx, file, node)
                })),
            "jwt" => policy.jwts.extend(defined(cx, "JWT provider", node, |cx| {
                decode_jwt(cx, file, node)
            })),
            "cors" => policy.cors.extend(defined(cx, "CORS policy", node, |cx| {
                decode_cors(cx, file, node)
            })),
            "headers" => {
                if once.first(cx, name, name_span, "a policy") {
                    policy.headers = decode_headers(cx, file, node);
                }
            }
            "residency" => policy
                .residency
                .extend(defined(cx, "residency", node, |cx| {
                    decode_residency(cx, file, node)
                })),
            "function" => policy.functions.extend(defined(cx, "function", node, |cx| {
                decode_function(cx, file, node)
            })),
            "route" => policy.routes.extend(decode_route(cx, file, node)),
            "test" => policy.tests.extend(decode_test(cx, file, node)),
            "rollout" => {
                if once.first(cx, name, name_span, "a policy") {
                    policy.rollout = decode_rollout(cx, file, node);
                }
            }
            other => cx
                .diags
                .push(diag::unknown_node(name_span, other, "a policy", TOP_LEVEL)),
        }
    }
    policy
}

/// Passes a decoded definition through; when it failed to decode, remembers its name so
/// references to it are not reported a second time as undefined.
fn defined<T>(
    cx: &mut Ctx,
    kind: &'static str,
    node: &KdlNode,
    decode: impl FnOnce(&mut Ctx) -> Option<T>,
) -> Option<T> {
    let item = decode(cx);
    if item.is_none()
        && let Some(name) = node
            .entries()
            .iter()
            .find(|e| e.name().is_none())
            .and_then(|e| e.value().as_string())
    {
        cx.partially_defined.insert((kind, name.to_string()));
    }
    item
}

/// Remembers nodes that may appear once in a scope and reports repeats.
#[derive(Default)]
struct Once {
    seen: HashMap<String, Span>,
}

impl Once {
    /// True the first time `name` is seen.
    fn first(&mut self, cx: &mut Ctx, name: &str, span: Span, context: &str) -> bool {
        if let Some(first) = self.seen.get(name) {
            cx.diags
                .push(diag::duplicate_node(span, *first, name, context));
            return false;
        }
        self.seen.insert(name.to_string(), span);
        true
    }
}

fn name_arg(cx: &mut Ctx, r: &mut NodeReader<'_>, what: &str, example: &str) -> Option<Name> {
    let val = r.req_arg(cx, 0, what, example)?;
    let name = cx.string(val, example)?;
    if name.is_empty() {
        cx.diags
            .push(diag::missing_argument(val.span, r.name, what, example));
        return None;
    }
    Some(name)
}

fn unknown_child(cx: &mut Ctx, file: FileId, child: &KdlNode, context: &str, known: &[&str]) {
    let name = child.name().value();
    let span = span_of(file, child.name().span());
    if name == "include" {
        cx.diags.push(diag::include_misplaced(span));
    } else {
        cx.diags
            .push(diag::unknown_node(span, name, context, known));
    }
}

/// A leaf child node whose arguments are all strings: `methods "GET" "HEAD"`.
fn string_list(
    cx: &mut Ctx,
    file: FileId,
    node: &KdlNode,
    what: &str,
    example: &str,
) -> Vec<Spanned<String>> {
    let mut r = NodeReader::new(cx, file, node);
    let vals = r.req_rest_args(cx, 0, what, example);
    r.no_children(cx);
    r.finish(cx);
    cx.strings(&vals, example)
}

/// A leaf child node with exactly one argument: `issuer "https://…"`.
fn single_arg<'k>(
    cx: &mut Ctx,
    file: FileId,
    node: &'k KdlNode,
    what: &str,
    example: &str,
) -> Option<Val<'k>> {
    let mut r = NodeReader::new(cx, file, node);
    let val = r.req_arg(cx, 0, what, example);
    r.no_children(cx);
    r.finish(cx);
    val
}

fn decode_zone(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<Zone> {
    let mut r = NodeReader::new(cx, file, node);
    let name = name_arg(
        cx,
        &mut r,
        "a zone name",
        "zone \"EU\" { countries \"DE\" \"FR\" }",
    );
    let mut countries = Vec::new();
    for child in r.children() {
        match child.name().value() {
            "countries" => {
                let mut c = NodeReader::new(cx, file, child);
                let vals = c.req_rest_args(cx, 0, "country codes", "countries \"DE\" \"FR\"");
                c.no_children(cx);
                c.finish(cx);
                countries.extend(cx.countries(&vals));
            }
            _ => unknown_child(cx, file, child, "`zone`", &["countries"]),
        }
    }
    if !r.has_children_block() {
        cx.diags.push(diag::missing_child(
            r.name_span,
            "zone",
            "countries",
            "zone \"EU\" { countries \"DE\" \"FR\" }",
        ));
    }
    r.finish(cx);
    let name = name?;
    if name.value == GLOBAL_ZONE {
        cx.diags.push(diag::zone_reserved(name.span));
        return None;
    }
    Some(Zone {
        name,
        countries,
        span: r.span,
    })
}

fn decode_region(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<Region> {
    const EXAMPLE: &str = "region \"eu-west\" zone=\"EU\" location=\"Dublin\" lat=53.3 lon=-6.2";
    let mut r = NodeReader::new(cx, file, node);
    let name = name_arg(cx, &mut r, "a region name", EXAMPLE);
    let zone = r
        .req_prop("zone", EXAMPLE)
        .and_then(|v| cx.string(v, "zone=\"EU\""));
    let location = r
        .prop("location")
        .and_then(|v| cx.string(v, "location=\"Dublin\""));
    let lat = r
        .prop("lat")
        .and_then(|v| cx.float_in(v, "latitude", -90.0, 90.0, "lat=53.3"));
    let lon = r
        .prop("lon")
        .and_then(|v| cx.float_in(v, "longitude", -180.0, 180.0, "lon=-6.2"));
    let overrides = decode_overrides(cx, file, &r);
    r.finish(cx);
    Some(Region {
        name: name?,
        zone: zone?,
        location,
        lat,
        lon,
        overrides,
        span: r.span,
    })
}

const OVERRIDES: &[&str] = &["route", "ratelimit", "waf", "geo", "headers"];

fn decode_overrides(cx: &mut Ctx, file: FileId, region: &NodeReader<'_>) -> RegionOverrides {
    let mut overrides = RegionOverrides::default();
    let mut once = Once::default();
    for child in region.children() {
        let name = child.name().value();
        let span = span_of(file, child.name().span());
        match name {
            "route" => overrides.routes.extend(decode_route(cx, file, child)),
            "ratelimit" => overrides
                .ratelimits
                .extend(defined(cx, "rate limit", child, |cx| {
                    decode_ratelimit(cx, file, child)
                })),
            "waf" => {
                if once.first(cx, name, span, "a region") {
                    overrides.waf = decode_waf_override(cx, file, child);
                }
            }
            "geo" => {
                if once.first(cx, name, span, "a region") {
                    overrides.geo = decode_geo_override(cx, file, child);
                }
            }
            "headers" => {
                if once.first(cx, name, span, "a region") {
                    overrides.headers = decode_headers(cx, file, child);
                }
            }
            _ => unknown_child(cx, file, child, "a region override", OVERRIDES),
        }
    }
    overrides
}

fn waf_mode(cx: &mut Ctx, val: Val<'_>, allow_off: bool) -> Option<Spanned<WafMode>> {
    let choices: &[(&str, WafMode)] = if allow_off {
        &[
            ("block", WafMode::Block),
            ("log", WafMode::Log),
            ("off", WafMode::Off),
        ]
    } else {
        &[("block", WafMode::Block), ("log", WafMode::Log)]
    };
    cx.choice(val, "WAF mode", choices)
}

fn decode_waf_override(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<WafOverride> {
    let mut r = NodeReader::new(cx, file, node);
    let threshold = r
        .prop("threshold")
        .and_then(|v| cx.int_in(v, "threshold", 1, 10_000, "threshold=5"));
    let mode = r.prop("mode").and_then(|v| waf_mode(cx, v, false));
    let mut disable = Vec::new();
    for child in r.children() {
        match child.name().value() {
            "disable" => disable.extend(string_list(
                cx,
                file,
                child,
                "rule ids",
                "disable \"sqli-union\"",
            )),
            _ => unknown_child(cx, file, child, "a region's `waf`", &["disable"]),
        }
    }
    r.finish(cx);
    Some(WafOverride {
        threshold,
        mode,
        disable,
        span: r.span,
    })
}

fn decode_geo_override(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<GeoOverride> {
    let r = NodeReader::new(cx, file, node);
    let mut block = None;
    let mut allow = None;
    let mut once = Once::default();
    for child in r.children() {
        let name = child.name().value();
        let span = span_of(file, child.name().span());
        match name {
            "block" if once.first(cx, name, span, "`geo`") => {
                block = decode_country_list(cx, file, child, 451)
            }
            "allow" if once.first(cx, name, span, "`geo`") => {
                allow = decode_country_list(cx, file, child, 451)
            }
            "block" | "allow" => {}
            _ => unknown_child(cx, file, child, "a region's `geo`", &["block", "allow"]),
        }
    }
    r.finish(cx);
    Some(GeoOverride {
        block,
        allow,
        span: r.span,
    })
}

fn decode_origin(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<Origin> {
    const EXAMPLE: &str = "origin \"api\" { zone \"EU\" url=\"https://api-eu.internal\" }";
    let mut r = NodeReader::new(cx, file, node);
    let name = name_arg(cx, &mut r, "an origin name", EXAMPLE);
    let connect_timeout = r
        .prop("connect-timeout")
        .and_then(|v| {
            cx.duration_max(
                v,
                "connect timeout",
                Duration::from_secs(300),
                "connect-timeout=\"2s\"",
            )
        })
        .unwrap_or(Spanned::new(DEFAULT_CONNECT_TIMEOUT, r.name_span));
    let response_timeout = r
        .prop("response-timeout")
        .and_then(|v| {
            cx.duration_max(
                v,
                "response timeout",
                Duration::from_secs(3600),
                "response-timeout=\"30s\"",
            )
        })
        .unwrap_or(Spanned::new(DEFAULT_RESPONSE_TIMEOUT, r.name_span));
    let fallback = r
        .prop("fallback")
        .and_then(|v| cx.string(v, "fallback=\"US\""));
    let mut endpoints = Vec::new();
    for child in r.children() {
        match child.name().value() {
            "zone" => {
                let mut z = NodeReader::new(cx, file, child);
                let zone = z
                    .req_arg(
                        cx,
                        0,
                        "a zone name",
                        "zone \"EU\" url=\"https://api-eu.internal\"",
                    )
                    .and_then(|v| cx.string(v, "\"EU\""));
                let url = z
                    .req_prop("url", "zone \"EU\" url=\"https://api-eu.internal\"")
                    .and_then(|v| origin_url(cx, v));
                z.no_children(cx);
                z.finish(cx);
                if let (Some(zone), Some(url)) = (zone, url) {
                    endpoints.push(OriginEndpoint {
                        zone,
                        url,
                        span: z.span,
                    });
                }
            }
            _ => unknown_child(cx, file, child, "`origin`", &["zone"]),
        }
    }
    if r.children().is_empty() {
        cx.diags
            .push(diag::missing_child(r.name_span, "origin", "zone", EXAMPLE));
    }
    r.finish(cx);
    Some(Origin {
        name: name?,
        endpoints,
        fallback,
        connect_timeout,
        response_timeout,
        span: r.span,
    })
}

fn origin_url(cx: &mut Ctx, val: Val<'_>) -> Option<Spanned<OriginUrl>> {
    let text = cx.string(val, "url=\"https://api.internal:8443\"")?;
    let fail = |cx: &mut Ctx, reason: &str| {
        cx.diags.push(diag::url_invalid(val.span, reason));
        None
    };
    let uri: http::Uri = match text.parse() {
        Ok(u) => u,
        Err(_) => return fail(cx, "not a URL"),
    };
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        Some(_) => return fail(cx, "the scheme must be http or https"),
        None => return fail(cx, "missing scheme (http:// or https://)"),
    };
    let Some(authority) = uri.authority() else {
        return fail(cx, "missing host");
    };
    if authority.as_str().contains('@') {
        return fail(
            cx,
            "credentials do not belong in a URL; the node holds secrets",
        );
    }
    if uri.query().is_some() || text.contains('#') {
        return fail(cx, "an origin URL has no query or fragment");
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return fail(cx, "missing host");
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path_prefix = uri.path().trim_end_matches('/').to_string();
    Some(Spanned::new(
        OriginUrl {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path_prefix,
            written: text.value.clone(),
        },
        val.span,
    ))
}

fn decode_country_list(
    cx: &mut Ctx,
    file: FileId,
    node: &KdlNode,
    default_status: u16,
) -> Option<CountryList> {
    let mut r = NodeReader::new(cx, file, node);
    let vals = r.req_rest_args(cx, 0, "country codes", "block \"KP\" \"IR\" status=451");
    let countries = cx.countries(&vals);
    let status = r
        .prop("status")
        .and_then(|v| {
            cx.status(
                v,
                &[(400, 599)],
                "a client or server error status (400-599)",
            )
        })
        .unwrap_or(Spanned::new(default_status, r.name_span));
    r.no_children(cx);
    r.finish(cx);
    Some(CountryList {
        countries,
        status,
        span: r.span,
    })
}

fn decode_geo(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<Geo> {
    const KNOWN: &[&str] = &[
        "country-header",
        "trusted-peers",
        "database",
        "block",
        "allow",
    ];
    let r = NodeReader::new(cx, file, node);
    let mut geo = Geo {
        country_header: None,
        trusted_peers: Vec::new(),
        database: None,
        block: None,
        allow: None,
        span: r.span,
    };
    let mut once = Once::default();
    for child in r.children() {
        let name = child.name().value();
        let span = span_of(file, child.name().span());
        if KNOWN.contains(&name) && name != "trusted-peers" && !once.first(cx, name, span, "`geo`")
        {
            continue;
        }
        match name {
            "country-header" => {
                geo.country_header = single_arg(
                    cx,
                    file,
                    child,
                    "a header name",
                    "country-header \"cf-ipcountry\"",
                )
                .and_then(|v| cx.header_name(v));
            }
            "trusted-peers" => {
                let mut c = NodeReader::new(cx, file, child);
                let vals =
                    c.req_rest_args(cx, 0, "networks", "trusted-peers \"10.0.0.0/8\" \"::1\"");
                c.no_children(cx);
                c.finish(cx);
                for val in vals {
                    if let Some(net) = network(cx, val) {
                        geo.trusted_peers.push(net);
                    }
                }
            }
            "database" => {
                geo.database = single_arg(
                    cx,
                    file,
                    child,
                    "a database file",
                    "database \"geo/GeoLite2-Country.mmdb\"",
                )
                .and_then(|v| cx.string(v, "\"geo/GeoLite2-Country.mmdb\""))
                .and_then(|p| cx.policy_path(file, &p))
                .and_then(|path| {
                    let contents = cx.read(&path)?;
                    match verify_country_database(&contents) {
                        Ok(()) => Some(GeoDatabase { path, contents }),
                        Err(reason) => {
                            cx.diags.push(diag::geo_database_invalid(
                                path.span,
                                &path.written,
                                &reason,
                            ));
                            None
                        }
                    }
                });
            }
            "block" => geo.block = decode_country_list(cx, file, child, 451),
            "allow" => geo.allow = decode_country_list(cx, file, child, 451),
            _ => unknown_child(cx, file, child, "`geo`", KNOWN),
        }
    }
    if let Some(list) = geo.block.as_ref().or(geo.allow.as_ref())
        && !children_named(&r, "country-header")
        && !children_named(&r, "database")
    {
        cx.diags
            .push(diag::geo_no_source(span_of(file, list_name_span(&r, list))));
    }
    r.finish(cx);
    Some(geo)
}

/// The name span of the `block` or `allow` node a list came from.
fn list_name_span(r: &NodeReader<'_>, list: &CountryList) -> miette::SourceSpan {
    r.children()
        .iter()
        .find(|c| span_of(r.file, c.span()) == list.span)
        .map_or(r.node.name().span(), |c| c.name().span())
}

/// A database the compiler can flatten into country ranges: well formed, with countries.
fn verify_country_database(contents: &[u8]) -> Result<(), String> {
    let reader = maxminddb::Reader::from_source(contents).map_err(|e| e.to_string())?;
    let kind = reader.metadata().database_type.clone();
    if !(kind.contains("Country") || kind.contains("City") || kind.contains("Enterprise")) {
        return Err(format!("its type is `{kind}`, which has no countries"));
    }
    reader.verify().map_err(|e| e.to_string())
}

fn network(cx: &mut Ctx, val: Val<'_>) -> Option<Spanned<IpNet>> {
    let text = cx.string(val, "\"10.0.0.0/8\"")?;
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            cx.diags.push(diag::cidr_invalid(
                val.span,
                &format!("host bits are set: did you mean \"{}\"?", net.trunc()),
            ));
            return None;
        }
        return Some(Spanned::new(net, val.span));
    }
    match text.parse::<IpAddr>() {
        Ok(addr) => Some(Spanned::new(IpNet::from(addr), val.span)),
        Err(_) => {
            cx.diags
                .push(diag::cidr_invalid(val.span, "not an address or CIDR"));
            None
        }
    }
}

fn decode_waf(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<Waf> {
    let mut r = NodeReader::new(cx, file, node);
    let threshold = r
        .prop("threshold")
        .and_then(|v| cx.int_in(v, "threshold", 1, 10_000, "threshold=5"))
        .unwrap_or(Spanned::new(DEFAULT_WAF_THRESHOLD, r.name_span));
    let mode = r
        .prop("mode")
        .and_then(|v| waf_mode(cx, v, false))
        .unwrap_or(Spanned::new(WafMode::Block, r.name_span));
    let body_limit = r
        .prop("body-limit")
        .and_then(|v| cx.size(v, "body-limit=\"64KiB\""))
        .unwrap_or(Spanned::new(DEFAULT_BODY_LIMIT, r.name_span));
    if body_limit.value > 16 << 20 {
        cx.diags.push(diag::out_of_range(
            body_limit.span,
            "body limit",
            "at most 16MiB",
        ));
    }
    let body_overflow = r
        .prop("body-overflow")
        .and_then(|v| {
            cx.choice(
                v,
                "body overflow action",
                &[
                    ("ignore", BodyOverflow::Ignore),
                    ("block", BodyOverflow::Block),
                ],
            )
        })
        .unwrap_or(Spanned::new(BodyOverflow::Ignore, r.name_span));
    let automaton_budget = r
        .prop("automaton-budget")
        .and_then(|v| cx.size(v, "automaton-budget=\"1MiB\""))
        .unwrap_or(Spanned::new(DEFAULT_AUTOMATON_BUDGET, r.name_span));
    let mut rules = Vec::new();
    let mut imports = Vec::new();
    for child in r.children() {
        match child.name().value() {
            "rule" => rules.extend(defined(cx, "WAF rule", child, |cx| {
                decode_waf_rule(cx, file, child, automaton_budget.value)
            })),
            "import" => {
                if let Some(request) = decode_waf_import(cx, file, child, automaton_budget.value) {
                    let (imported, report) = crate::modsecurity::import(cx, &request);
                    rules.extend(imported);
                    imports.push(report);
                }
            }
            _ => unknown_child(cx, file, child, "`waf`", &["rule", "import"]),
        }
    }
    r.finish(cx);
    Some(Waf {
        threshold,
        mode,
        body_limit,
        body_overflow,
        automaton_budget,
        rules,
        imports,
        span: r.span,
    })
}

const IMPORT_EXAMPLE: &str =
    "import \"modsecurity\" path=\"/usr/share/modsecurity-crs/rules\" paranoia=1";

/// `import "modsecurity" path=… paranoia=… setup=…`: a rule set read at build time. Its
/// paths may be absolute: rule sets are installed system-wide, outside the policy.
fn decode_waf_import(
    cx: &mut Ctx,
    file: FileId,
    node: &KdlNode,
    budget: u64,
) -> Option<crate::modsecurity::ImportRequest> {
    let mut r = NodeReader::new(cx, file, node);
    let kind = r
        .req_arg(cx, 0, "the rule set's format", IMPORT_EXAMPLE)
        .and_then(|v| cx.choice(v, "rule set format", &[("modsecurity", ())]));
    let path = r
        .req_prop("path", IMPORT_EXAMPLE)
        .and_then(|v| cx.string(v, IMPORT_EXAMPLE));
    let setup = r
        .prop("setup")
        .and_then(|v| cx.string(v, "setup=\"/etc/modsecurity/crs/crs-setup.conf\""));
    let paranoia = r
        .prop("paranoia")
        .and_then(|v| cx.int_in::<u8>(v, "paranoia", 1, 4, "paranoia=1"))
        .map_or(1, |p| p.value);
    r.no_children(cx);
    r.finish(cx);
    kind?;
    let base = cx
        .file_dirs
        .get(file.0 as usize)
        .cloned()
        .unwrap_or_default();
    let resolve = |written: &str| {
        let p = std::path::Path::new(written);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let path = path?;
    Some(crate::modsecurity::ImportRequest {
        path: resolve(&path.value),
        written: path.value.clone(),
        setup: setup.map(|s| resolve(&s.value)),
        paranoia,
        budget,
        span: r.span,
    })
}

const RULE_EXAMPLE: &str = "rule \"sqli\" score=5 { in \"args\"; decode \"url-decode\" \"lowercase\"; regex #\"union\\s+select\"# }";

fn decode_waf_rule(cx: &mut Ctx, file: FileId, node: &KdlNode, budget: u64) -> Option<WafRule> {
    const KNOWN: &[&str] = &["in", "decode", "regex", "literal", "detect"];
    let mut r = NodeReader::new(cx, file, node);
    let id = name_arg(cx, &mut r, "a rule id", RULE_EXAMPLE);
    let score = r
        .req_prop("score", RULE_EXAMPLE)
        .and_then(|v| cx.int_in(v, "score", 0, 10_000, "score=5"));
    let mut parts = Vec::new();
    let mut decode = Vec::new();
    let mut every_step = false;
    let mut matchers = Vec::new();
    let mut once = Once::default();
    for child in r.children() {
        let name = child.name().value();
        let span = span_of(file, child.name().span());
        match name {
            "in" if once.first(cx, name, span, "a rule") => {
                let mut c = NodeReader::new(cx, file, child);
                let vals =
                    c.req_rest_args(cx, 0, "request parts", "in \"args\" \"header:user-agent\"");
                c.no_children(cx);
                c.finish(cx);
                parts.extend(vals.into_iter().filter_map(|v| request_part(cx, v)));
            }
            "decode" if once.first(cx, name, span, "a rule") => {
                let mut c = NodeReader::new(cx, file, child);
                let vals =
                    c.req_rest_args(cx, 0, "decodings", "decode \"url-decode\" \"lowercase\"");
                every_step = c
                    .prop("every-step")
                    .and_then(|v| cx.boolean(v, "every-step=#true"))
                    .is_some_and(|v| v.value);
                c.no_children(cx);
                c.finish(cx);
                decode.extend(
                    vals.into_iter()
                        .filter_map(|v| cx.choice(v, "decoding", &Decoding::ALL)),
                );
            }
            "in" | "decode" => {}
            "regex" => {
                const EXAMPLE: &str = "regex #\"(?i)union\\s+select\"#";
                let mut c = NodeReader::new(cx, file, child);
                let vals = c.req_rest_args(cx, 0, "patterns", EXAMPLE);
                c.no_children(cx);
                c.finish(cx);
                for val in vals {
                    let Some(pattern) = cx.string(val, EXAMPLE) else {
                        continue;
                    };
                    match waf_regex::check_pattern(&pattern, budget) {
                        Ok(_) => matchers.push(Matcher::Regex(pattern)),
                        Err(RegexProblem::Invalid { start, end, reason }) => {
                            let span = cx.inner_span(val, start, end);
                            cx.diags.push(diag::regex_invalid(span, &reason));
                        }
                        Err(RegexProblem::TooLarge) => {
                            cx.diags
                                .push(diag::regex_too_large(val.span, &pattern, budget));
                        }
                    }
                }
            }
            "literal" => {
                for s in string_list(cx, file, child, "strings", "literal \"../\"") {
                    if s.is_empty() {
                        cx.diags.push(diag::missing_argument(
                            s.span,
                            "literal",
                            "a non-empty string",
                            "literal \"../\"",
                        ));
                    } else {
                        matchers.push(Matcher::Literal(s));
                    }
                }
            }
            "detect" => {
                const EXAMPLE: &str = "detect \"sqli\" \"xss\"";
                let mut c = NodeReader::new(cx, file, child);
                let vals = c.req_rest_args(cx, 0, "detectors", EXAMPLE);
                c.no_children(cx);
                c.finish(cx);
                for val in vals {
                    if let Some(d) = cx.choice(
                        val,
                        "detector",
                        &[("sqli", Detector::Sqli), ("xss", Detector::Xss)],
                    ) {
                        matchers.push(Matcher::Detect(d));
                    }
                }
            }
            _ => unknown_child(cx, file, child, "a WAF rule", KNOWN),
        }
    }
    if !children_named(&r, "in") {
        cx.diags
            .push(diag::missing_child(r.name_span, "rule", "in", RULE_EXAMPLE));
    }
    if !children_named(&r, "regex")
        && !children_named(&r, "literal")
        && !children_named(&r, "detect")
    {
        cx.diags.push(diag::missing_child(
            r.name_span,
            "rule",
            "regex",
            RULE_EXAMPLE,
        ));
    }
    r.finish(cx);
    Some(WafRule {
        id: id?,
        score: score?,
        parts,
        decode,
        matchers,
        negated: false,
        count: None,
        and: Vec::new(),
        every_step,
        span: r.span,
    })
}

fn children_named(r: &NodeReader<'_>, name: &str) -> bool {
    r.children().iter().any(|c| c.name().value() == name)
}

const PARTS: &[&str] = &[
    "path",
    "query",
    "args",
    "arg-names",
    "headers",
    "header:NAME",
    "cookies",
    "cookie:NAME",
    "cookie-names",
    "header-names",
    "uri",
    "method",
    "protocol",
    "request-line",
    "query-args",
    "query-arg-names",
    "body",
    "files",
    "file-fields",
    "part-headers",
    "part-header:NAME",
    "arg:NAME",
];

fn request_part(cx: &mut Ctx, val: Val<'_>) -> Option<Spanned<RequestPart>> {
    let text = cx.string(val, "\"args\"")?;
    let part = match text.value.as_str() {
        "path" => RequestPart::Path,
        "query" => RequestPart::Query,
        "args" => RequestPart::Args,
        "arg-names" => RequestPart::ArgNames,
        "headers" => RequestPart::Headers,
        "cookies" => RequestPart::Cookies,
        "cookie-names" => RequestPart::CookieNames,
        "header-names" => RequestPart::HeaderNames,
        "uri" => RequestPart::Uri,
        "method" => RequestPart::Method,
        "protocol" => RequestPart::Protocol,
        "request-line" => RequestPart::RequestLine,
        "query-args" => RequestPart::QueryArgs,
        "query-arg-names" => RequestPart::QueryArgNames,
        "body" => RequestPart::Body,
        "files" => RequestPart::Files,
        "file-fields" => RequestPart::FileFields,
        "part-headers" => RequestPart::PartHeaders,
        other => {
            if let Some(name) = other.strip_prefix("header:") {
                if crate::reader::check_header_name(name).is_err()
                    && !name.eq_ignore_ascii_case("host")
                {
                    cx.diags.push(diag::header_invalid(
                        cx.inner_span(val, 7, text.len()),
                        "not a header name",
                    ));
                    return None;
                }
                RequestPart::Header(name.to_ascii_lowercase())
            } else if let Some(name) = other.strip_prefix("cookie:").filter(|n| !n.is_empty()) {
                RequestPart::Cookie(name.to_string())
            } else if let Some(name) = other.strip_prefix("arg:").filter(|n| !n.is_empty()) {
                RequestPart::Arg(name.to_string())
            } else if let Some(name) = other.strip_prefix("part-header:").filter(|n| !n.is_empty())
            {
                RequestPart::PartHeader(name.to_string())
            } else {
                cx.diags
                    .push(diag::invalid_choice(val.span, "request part", other, PARTS));
                return None;
            }
        }
    };
    Some(Spanned::new(part, val.span))
}

fn decode_ratelimit(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<RateLimit> {
    const EXAMPLE: &str = "ratelimit \"per-ip\" key=\"client-ip\" limit=100 per=\"1m\"";
    let mut r = NodeReader::new(cx, file, node);
    let name = name_arg(cx, &mut r, "a rate limit name", EXAMPLE);
    let key = r.req_prop("key", EXAMPLE).and_then(|v| limit_key(cx, v));
    let limit = r
        .req_prop("limit", EXAMPLE)
        .and_then(|v| cx.int_in(v, "limit", 1, 1_000_000_000, "limit=100"));
    let per = r
        .req_prop("per", EXAMPLE)
        .and_then(|v| cx.duration(v, "per=\"1m\""));
    if let Some(per) = &per
        && (per.value < Duration::from_secs(1) || per.value > Duration::from_secs(86_400))
    {
        cx.diags.push(diag::out_of_range(
            per.span,
            "rate limit window",
            "from 1s to 1d",
        ));
    }
    r.no_children(cx);
    r.finish(cx);
    Some(RateLimit {
        name: name?,
        key: key?,
        limit: limit?,
        per: per?,
        span: r.span,
    })
}

pub const DEFAULT_ROLLOUT_MIN_REQUESTS: u64 = 20;

fn decode_rollout(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<Rollout> {
    const EXAMPLE: &str = "rollout watch=\"5m\" max-error-rate=\"5%\" min-requests=50";
    let mut r = NodeReader::new(cx, file, node);
    let watch = r
        .req_prop("watch", EXAMPLE)
        .and_then(|v| cx.duration(v, "watch=\"5m\""));
    if let Some(watch) = &watch
        && (watch.value < Duration::from_secs(1) || watch.value > Duration::from_secs(86_400))
    {
        cx.diags.push(diag::out_of_range(
            watch.span,
            "watch window",
            "from 1s to 1d",
        ));
    }
    let max_error_permille = r
        .req_prop("max-error-rate", EXAMPLE)
        .and_then(|v| percent_permille(cx, v));
    let min_requests = match r.prop("min-requests") {
        Some(v) => cx.int_in(v, "min-requests", 1, 1_000_000_000, "min-requests=50"),
        None => Some(Spanned::new(DEFAULT_ROLLOUT_MIN_REQUESTS, r.span)),
    };
    r.no_children(cx);
    r.finish(cx);
    Some(Rollout {
        watch: watch?,
        max_error_permille: max_error_permille?,
        min_requests: min_requests?,
        span: r.span,
    })
}

/// `"5%"` or `"0.5%"` as thousandths, from 0.1% to 100%.
fn percent_permille(cx: &mut Ctx, val: Val<'_>) -> Option<Spanned<u32>> {
    const RANGE: &str = "from 0.1% to 100%, written as a percentage such as \"5%\"";
    let text = cx.string(val, "max-error-rate=\"5%\"")?;
    let permille = text
        .strip_suffix('%')
        .and_then(|number| {
            let (whole, tenths) = number.split_once('.').unwrap_or((number, "0"));
            let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !all_digits(whole) || !all_digits(tenths) || tenths.len() > 1 || whole.len() > 3 {
                return None;
            }
            Some(whole.parse::<u32>().ok()? * 10 + tenths.parse::<u32>().ok()?)
        })
        .filter(|p| (1..=1000).contains(p));
    match permille {
        Some(p) => Some(Spanned::new(p, val.span)),
        None => {
            cx.diags
                .push(diag::out_of_range(val.span, "max-error-rate", RANGE));
            None
        }
    }
}

fn limit_key(cx: &mut Ctx, val: Val<'_>) -> Option<Spanned<LimitKey>> {
    let text = cx.string(val, "key=\"client-ip\"")?;
    let key = if text.value == "client-ip" {
        LimitKey::ClientIp
    } else if let Some(h) = text.strip_prefix("header:") {
        if crate::reader::check_header_name(h).is_err() {
            cx.diags.push(diag::header_invalid(
                cx.inner_span(val, 7, text.len()),
                "not a header name",
            ));
            return None;
        }
        LimitKey::Header(h.to_ascii_lowercase())
    } else if let Some(c) = text.strip_prefix("claim:").filter(|c| !c.is_empty()) {
        LimitKey::Claim(c.to_string())
    } else {
        cx.diags.push(diag::invalid_choice(
            val.span,
            "rate limit key",
            &text,
            &["client-ip", "header:NAME", "claim:NAME"],
        ));
        return None;
    };
    Some(Spanned::new(key, val.span))
}

fn decode_jwt(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<JwtProvider> {
    const EXAMPLE: &str = "jwt \"users\" { algorithms \"RS256\"; key \"keys/auth.pem\"; issuer \"https://auth.example.com\" }";
    const KNOWN: &[&str] = &[
        "algorithms",
        "key",
        "secret",
        "issuer",
        "audience",
        "leeway",
        "require",
    ];
    let mut r = NodeReader::new(cx, file, node);
    let name = name_arg(cx, &mut r, "a provider name", EXAMPLE);
    let mut algorithms = Vec::new();
    let mut keys = Vec::new();
    let mut secrets = Vec::new();
    let mut issuer = None;
    let mut audience = Vec::new();
    let mut leeway = Spanned::new(DEFAULT_LEEWAY, r.name_span);
    let mut require = Vec::new();
    let mut once = Once::default();
    let alg_choices: Vec<(&str, JwtAlgorithm)> =
        JwtAlgorithm::ALL.iter().map(|a| (a.as_str(), *a)).collect();
    for child in r.children() {
        let name = child.name().value();
        let span = span_of(file, child.name().span());
        let repeatable = name == "key" || name == "secret";
        if KNOWN.contains(&name) && !repeatable && !once.first(cx, name, span, "`jwt`") {
            continue;
        }
        match name {
            "algorithms" => {
                let mut c = NodeReader::new(cx, file, child);
                let vals = c.req_rest_args(cx, 0, "algorithms", "algorithms \"RS256\"");
                c.no_children(cx);
                c.finish(cx);
                for v in vals {
                    algorithms.extend(cx.choice(v, "JWT algorithm", &alg_choices));
                }
            }
            "key" => {
                if let Some(path) =
                    single_arg(cx, file, child, "a key file", "key \"keys/auth.pem\"")
                        .and_then(|v| cx.string(v, "\"keys/auth.pem\""))
                        .and_then(|p| cx.policy_path(file, &p))
                    && let Some(contents) = cx.read(&path)
                {
                    match crate::keys::classify(&contents) {
                        Ok(kind) => keys.push(JwtKey {
                            path,
                            kind,
                            contents,
                        }),
                        Err(reason) => {
                            cx.diags
                                .push(diag::key_invalid(path.span, &path.written, &reason))
                        }
                    }
                }
            }
            "secret" => {
                if let Some(secret) = single_arg(
                    cx,
                    file,
                    child,
                    "the name of a node secret",
                    "secret \"partner-hmac\"",
                )
                .and_then(|v| cx.string(v, "\"partner-hmac\""))
                {
                    if crate::keys::valid_secret_name(&secret.value) {
                        secrets.push(secret);
                    } else {
                        cx.diags
                            .push(diag::jwt_secret_name(secret.span, &secret.value));
                    }
                }
            }
            "issuer" => {
                issuer = single_arg(
                    cx,
                    file,
                    child,
                    "the issuer",
                    "issuer \"https://auth.example.com\"",
                )
                .and_then(|v| cx.string(v, "\"https://auth.example.com\""))
            }
            "audience" => audience = string_list(cx, file, child, "audiences", "audience \"api\""),
            "leeway" => {
                if let Some(d) = single_arg(cx, file, child, "a duration", "leeway \"30s\"")
                    .and_then(|v| cx.duration_max(v, "leeway", MAX_LEEWAY, "\"30s\""))
                {
                    leeway = d;
                }
            }
            "require" => {
                require = string_list(cx, file, child, "claim names", "require \"sub\" \"scope\"")
            }
            _ => unknown_child(cx, file, child, "`jwt`", KNOWN),
        }
    }
    if !children_named(&r, "algorithms") {
        cx.diags.push(diag::missing_child(
            r.name_span,
            "jwt",
            "algorithms",
            "algorithms \"RS256\" (list them explicitly: a token's own `alg` is never trusted)",
        ));
    }
    if !children_named(&r, "key") && !children_named(&r, "secret") {
        cx.diags.push(diag::missing_child(
            r.name_span,
            "jwt",
            "key",
            "key \"keys/auth.pem\" (or `secret \"NAME\"`, an HS shared secret the nodes hold)",
        ));
    }
    check_jwt_keys(cx, &algorithms, &keys, &secrets);
    r.finish(cx);
    Some(JwtProvider {
        name: name?,
        algorithms,
        keys,
        secrets,
        issuer,
        audience,
        leeway,
        require,
        span: r.span,
    })
}

/// Refuses secret/public algorithm mixes and keys or node secrets no listed algorithm can
/// use.
fn check_jwt_keys(
    cx: &mut Ctx,
    algorithms: &[Spanned<JwtAlgorithm>],
    keys: &[JwtKey],
    secrets: &[Spanned<String>],
) {
    let secret = algorithms.iter().find(|a| a.key_kind() == KeyKind::Secret);
    let public = algorithms.iter().find(|a| a.key_kind() != KeyKind::Secret);
    if let (Some(secret), Some(public)) = (secret, public) {
        cx.diags
            .push(diag::algorithm_confusion(secret.span, public.span));
    }
    if algorithms.is_empty() {
        return;
    }
    let listed: Vec<&str> = algorithms.iter().map(|a| a.as_str()).collect();
    for key in keys {
        if key.kind == KeyKind::Secret {
            cx.diags.push(diag::jwt_secret_in_bundle(key.path.span));
        }
        if !algorithms.iter().any(|a| a.key_kind() == key.kind) {
            cx.diags.push(diag::key_algorithm_mismatch(
                key.path.span,
                &key.path.written,
                key.kind.describe(),
                &listed.join(", "),
            ));
        }
    }
    if !algorithms.iter().any(|a| a.key_kind() == KeyKind::Secret) {
        for secret in secrets {
            cx.diags.push(diag::jwt_secret_without_hs(
                secret.span,
                &secret.value,
                &listed.join(", "),
            ));
        }
    }
}

fn decode_cors(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<Cors> {
    const EXAMPLE: &str = "cors \"web\" { origins \"https://app.example.com\" }";
    const KNOWN: &[&str] = &[
        "origins",
        "methods",
        "allow-headers",
        "expose-headers",
        "credentials",
        "max-age",
    ];
    let mut r = NodeReader::new(cx, file, node);
    let name = name_arg(cx, &mut r, "a CORS policy name", EXAMPLE);
    let mut cors = Cors {
        name: Spanned::new(String::new(), r.name_span),
        origins: Vec::new(),
        methods: Vec::new(),
        allow_headers: Vec::new(),
        expose_headers: Vec::new(),
        credentials: Spanned::new(false, r.name_span),
        max_age: Spanned::new(DEFAULT_CORS_MAX_AGE, r.name_span),
        span: r.span,
    };
    let mut once = Once::default();
    for child in r.children() {
        let name = child.name().value();
        let span = span_of(file, child.name().span());
        if KNOWN.contains(&name) && !once.first(cx, name, span, "`cors`") {
            continue;
        }
        match name {
            "origins" => {
                cors.origins = string_list(
                    cx,
                    file,
                    child,
                    "origins",
                    "origins \"https://app.example.com\"",
                )
            }
            "methods" => cors.methods = methods(cx, file, child),
            "allow-headers" => {
                let mut c = NodeReader::new(cx, file, child);
                let vals =
                    c.req_rest_args(cx, 0, "header names", "allow-headers \"authorization\"");
                c.no_children(cx);
                c.finish(cx);
                cors.allow_headers = cors_headers(cx, &vals);
            }
            "expose-headers" => {
                let mut c = NodeReader::new(cx, file, child);
                let vals =
                    c.req_rest_args(cx, 0, "header names", "expose-headers \"x-request-id\"");
                c.no_children(cx);
                c.finish(cx);
                cors.expose_headers = cors_headers(cx, &vals);
            }
            "credentials" => {
                if let Some(b) = single_arg(cx, file, child, "#true or #false", "credentials #true")
                    .and_then(|v| cx.boolean(v, "credentials #true"))
                {
                    cors.credentials = b;
                }
            }
            "max-age" => {
                if let Some(d) = single_arg(cx, file, child, "a duration", "max-age \"10m\"")
                    .and_then(|v| {
                        cx.duration_max(v, "max age", Duration::from_secs(86_400), "\"10m\"")
                    })
                {
                    cors.max_age = d;
                }
            }
            _ => unknown_child(cx, file, child, "`cors`", KNOWN),
        }
    }
    if cors.origins.is_empty() && !children_named(&r, "origins") {
        cx.diags
            .push(diag::missing_child(r.name_span, "cors", "origins", EXAMPLE));
    }
    r.finish(cx);
    cors.name = name?;
    Some(cors)
}

/// CORS header lists are header names, except request-header wildcards are not allowed.
fn cors_headers(cx: &mut Ctx, vals: &[Val<'_>]) -> Vec<Spanned<String>> {
    vals.iter()
        .filter_map(|v| {
            let name = cx.string(*v, "\"authorization\"")?;
            match crate::reader::check_header_name(&name) {
                Err((at, reason)) if !reason.contains("managed") => {
                    let span = cx.inner_span(*v, at, at + 1);
                    cx.diags.push(diag::header_invalid(span, reason));
                    None
                }
                _ => Some(name.map(|n| n.to_ascii_lowercase())),
            }
        })
        .collect()
}

fn methods(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Vec<Spanned<String>> {
    let list = string_list(cx, file, node, "HTTP methods", "methods \"GET\" \"HEAD\"");
    list.into_iter()
        .filter(|m| {
            if HTTP_METHODS.contains(&m.value.as_str()) {
                true
            } else {
                cx.diags.push(diag::method_invalid(m.span, m, HTTP_METHODS));
                false
            }
        })
        .collect()
}

fn decode_headers(cx: &mut Ctx, file: FileId, node: &KdlNode) -> HeaderEdits {
    let r = NodeReader::new(cx, file, node);
    let mut edits = HeaderEdits::default();
    let mut once = Once::default();
    for child in r.children() {
        let name = child.name().value();
        let span = span_of(file, child.name().span());
        match name {
            "request" | "response" => {
                if !once.first(cx, name, span, "`headers`") {
                    continue;
                }
                let ops = header_ops(cx, file, child);
                if name == "request" {
                    edits.request = ops;
                } else {
                    edits.response = ops;
                }
            }
            _ => unknown_child(cx, file, child, "`headers`", &["request", "response"]),
        }
    }
    r.finish(cx);
    edits
}

fn header_ops(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Vec<HeaderOp> {
    let r = NodeReader::new(cx, file, node);
    let mut ops = Vec::new();
    for child in r.children() {
        let op = child.name().value();
        match op {
            "set" | "append" => {
                let example = format!("{op} \"x-edge\" \"1\"");
                let mut c = NodeReader::new(cx, file, child);
                let name = c
                    .req_arg(cx, 0, "a header name", &example)
                    .and_then(|v| cx.header_name(v));
                let value = c
                    .req_arg(cx, 1, "a header value", &example)
                    .and_then(|v| cx.header_value(v));
                c.no_children(cx);
                c.finish(cx);
                if let (Some(name), Some(value)) = (name, value) {
                    ops.push(if op == "set" {
                        HeaderOp::Set(name, value)
                    } else {
                        HeaderOp::Append(name, value)
                    });
                }
            }
            "remove" => {
                let mut c = NodeReader::new(cx, file, child);
                let vals = c.req_rest_args(cx, 0, "header names", "remove \"server\"");
                c.no_children(cx);
                c.finish(cx);
                ops.extend(cx.header_names(&vals).into_iter().map(HeaderOp::Remove));
            }
            _ => unknown_child(
                cx,
                file,
                child,
                "a header edit list",
                &["set", "append", "remove"],
            ),
        }
    }
    r.finish(cx);
    ops
}

fn decode_residency(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<Residency> {
    const EXAMPLE: &str = "residency \"EU\" { pseudonymize \"x-user-id\"; drop \"x-user-email\" }";
    const KNOWN: &[&str] = &["pseudonymize", "drop", "transfer"];
    let mut r = NodeReader::new(cx, file, node);
    let zone = name_arg(cx, &mut r, "a zone name", EXAMPLE);
    let mut residency = Residency {
        zone: Spanned::new(String::new(), r.name_span),
        pseudonymize: Vec::new(),
        drop: Vec::new(),
        transfers: Vec::new(),
        span: r.span,
    };
    for child in r.children() {
        match child.name().value() {
            "pseudonymize" | "drop" => {
                let mut c = NodeReader::new(cx, file, child);
                let vals = c.req_rest_args(cx, 0, "header names", "drop \"x-user-email\"");
                c.no_children(cx);
                c.finish(cx);
                let names = cx.header_names(&vals);
                if child.name().value() == "drop" {
                    residency.drop.extend(names);
                } else {
                    residency.pseudonymize.extend(names);
                }
            }
            "transfer" => {
                const TRANSFER: &str = "transfer \"ml\" to=\"US\"";
                let mut c = NodeReader::new(cx, file, child);
                let origin = c
                    .req_arg(cx, 0, "an origin name", TRANSFER)
                    .and_then(|v| cx.string(v, TRANSFER));
                let to = c
                    .req_prop("to", TRANSFER)
                    .and_then(|v| cx.string(v, "to=\"US\""));
                c.no_children(cx);
                c.finish(cx);
                if let (Some(origin), Some(to)) = (origin, to) {
                    residency.transfers.push(Transfer {
                        origin,
                        to,
                        span: c.span,
                    });
                }
            }
            _ => unknown_child(cx, file, child, "`residency`", KNOWN),
        }
    }
    r.finish(cx);
    residency.zone = zone?;
    Some(residency)
}

fn decode_function(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<Function> {
    const EXAMPLE: &str = "function \"ml-infer\" source=\"functions/ml-infer.wasm\" memory=\"32MiB\" timeout=\"50ms\"";
    let mut r = NodeReader::new(cx, file, node);
    let name = name_arg(cx, &mut r, "a function name", EXAMPLE);
    let source = r
        .req_prop("source", EXAMPLE)
        .and_then(|v| cx.string(v, "source=\"functions/ml-infer.wasm\""))
        .and_then(|p| cx.policy_path(file, &p));
    let contents = source.as_ref().and_then(|source| {
        let bytes = cx.read(source)?;
        match crate::component::check_proxy_component(&bytes) {
            Ok(()) => Some(bytes),
            Err(problem) => {
                cx.diags.push(diag::function_component(
                    source.span,
                    &source.written,
                    problem,
                ));
                None
            }
        }
    });
    let memory = r
        .prop("memory")
        .and_then(|v| cx.size(v, "memory=\"32MiB\""))
        .unwrap_or(Spanned::new(DEFAULT_FUNCTION_MEMORY, r.name_span));
    if memory.value < 64 << 10 || memory.value > 4 << 30 {
        cx.diags.push(diag::out_of_range(
            memory.span,
            "function memory",
            "from 64KiB to 4GiB",
        ));
    }
    let timeout = r
        .prop("timeout")
        .and_then(|v| {
            cx.duration_max(
                v,
                "function timeout",
                Duration::from_secs(60),
                "timeout=\"50ms\"",
            )
        })
        .unwrap_or(Spanned::new(DEFAULT_FUNCTION_TIMEOUT, r.name_span));
    let mut origins = Vec::new();
    for child in r.children() {
        match child.name().value() {
            "origins" => origins.extend(string_list(
                cx,
                file,
                child,
                "origin names",
                "origins \"api\"",
            )),
            _ => unknown_child(cx, file, child, "`function`", &["origins"]),
        }
    }
    r.finish(cx);
    Some(Function {
        name: name?,
        source: source?,
        contents: contents?,
        memory,
        timeout,
        origins,
        span: r.span,
    })
}

const ROUTE_CHILDREN: &[&str] = &[
    "methods",
    "hosts",
    "proxy",
    "respond",
    "redirect",
    "function",
    "block",
    "auth",
    "ratelimit",
    "cache",
    "cors",
    "headers",
    "waf",
];

fn decode_route(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<Route> {
    const EXAMPLE: &str = "route \"/api/items/:id\" { proxy \"api\" }";
    let mut r = NodeReader::new(cx, file, node);
    let pattern = r
        .req_arg(cx, 0, "a path pattern", EXAMPLE)
        .and_then(|v| route_pattern(cx, v));
    let mut methods_list = Vec::new();
    let mut hosts = Vec::new();
    let mut action: Option<Spanned<Action>> = None;
    let mut auth = None;
    let mut ratelimits = Vec::new();
    let mut cache = None;
    let mut cors = None;
    let mut headers = HeaderEdits::default();
    let mut waf = RouteWaf::default();
    let mut once = Once::default();
    for child in r.children() {
        let name = child.name().value();
        let span = span_of(file, child.name().span());
        let is_action = matches!(
            name,
            "proxy" | "respond" | "redirect" | "function" | "block"
        );
        if is_action {
            if let Some(first) = &action {
                cx.diags.push(diag::route_action_twice(span, first.span));
                continue;
            }
        } else if ROUTE_CHILDREN.contains(&name)
            && name != "ratelimit"
            && !once.first(cx, name, span, "a route")
        {
            continue;
        }
        match name {
            "methods" => methods_list = methods(cx, file, child),
            "hosts" => {
                let mut c = NodeReader::new(cx, file, child);
                let vals = c.req_rest_args(cx, 0, "host names", "hosts \"api.example.com\"");
                c.no_children(cx);
                c.finish(cx);
                for v in vals {
                    if let Some(text) = cx.string(v, "\"api.example.com\"") {
                        match HostPattern::parse(&text) {
                            Ok(h) => hosts.push(Spanned::new(h, v.span)),
                            Err(e) => {
                                let span = cx.inner_span(v, e.start, e.end);
                                cx.diags.push(diag::host_invalid(span, &e.reason, e.help));
                            }
                        }
                    }
                }
            }
            "proxy" | "respond" | "redirect" | "function" | "block" => {
                if let Some(a) = decode_action(cx, file, child, pattern.as_ref()) {
                    action = Some(Spanned::new(a, span));
                } else {
                    // Remember that an action was written, so "no action" is not reported.
                    action = Some(Spanned::new(
                        Action::Block {
                            status: Spanned::new(403, span),
                        },
                        span,
                    ));
                }
            }
            "auth" => {
                let mut c = NodeReader::new(cx, file, child);
                auth = c
                    .req_prop("jwt", "auth jwt=\"users\"")
                    .and_then(|v| cx.string(v, "jwt=\"users\""));
                c.no_children(cx);
                c.finish(cx);
            }
            "ratelimit" => ratelimits.extend(
                single_arg(cx, file, child, "a rate limit name", "ratelimit \"per-ip\"")
                    .and_then(|v| cx.string(v, "\"per-ip\"")),
            ),
            "cache" => cache = decode_cache(cx, file, child),
            "cors" => {
                cors = single_arg(cx, file, child, "a CORS policy name", "cors \"web\"")
                    .and_then(|v| cx.string(v, "\"web\""))
            }
            "headers" => headers = decode_headers(cx, file, child),
            "waf" => waf = decode_route_waf(cx, file, child),
            _ => unknown_child(cx, file, child, "a route", ROUTE_CHILDREN),
        }
    }
    if action.is_none() {
        cx.diags.push(diag::route_action_missing(r.name_span));
    }
    r.finish(cx);
    Some(Route {
        pattern: pattern?,
        methods: methods_list,
        hosts,
        action: action?,
        auth,
        ratelimits,
        cache,
        cors,
        headers,
        waf,
        span: r.span,
    })
}

fn route_pattern(cx: &mut Ctx, val: Val<'_>) -> Option<Spanned<RoutePattern>> {
    let text = cx.string(val, "\"/api/items/:id\"")?;
    match RoutePattern::parse(&text) {
        Ok(p) => Some(Spanned::new(p, val.span)),
        Err(e) => {
            let span = cx.inner_span(val, e.start, e.end);
            cx.diags
                .push(diag::route_pattern_invalid(span, &e.reason, e.help));
            None
        }
    }
}

fn decode_action(
    cx: &mut Ctx,
    file: FileId,
    node: &KdlNode,
    pattern: Option<&Spanned<RoutePattern>>,
) -> Option<Action> {
    let kind = node.name().value();
    let mut r = NodeReader::new(cx, file, node);
    let action = match kind {
        "proxy" => {
            let origin = r
                .req_arg(cx, 0, "an origin name", "proxy \"api\"")
                .and_then(|v| cx.string(v, "proxy \"api\""));
            let websocket = match r.prop("websocket") {
                Some(v) => cx.boolean(v, "proxy \"api\" websocket=#true")?.value,
                None => false,
            };
            r.no_children(cx);
            Action::Proxy {
                origin: origin?,
                websocket,
            }
        }
        "function" => {
            let name = r
                .req_arg(cx, 0, "a function name", "function \"ml-infer\"")
                .and_then(|v| cx.string(v, "function \"ml-infer\""));
            r.no_children(cx);
            Action::Function { name: name? }
        }
        "block" => {
            let status = match r.arg(0) {
                Some(v) => cx.status(
                    v,
                    &[(400, 599)],
                    "a client or server error status (400-599)",
                )?,
                None => Spanned::new(403, r.name_span),
            };
            r.no_children(cx);
            Action::Block { status }
        }
        "redirect" => {
            const EXAMPLE: &str = "redirect \"https://new.example.com/items/{id}\" status=301";
            let target = r
                .req_arg(cx, 0, "a target", EXAMPLE)
                .and_then(|v| cx.string(v, EXAMPLE).map(|s| (v, s)));
            let status = match r.prop("status") {
                Some(v) => cx.status(v, &[(301, 303), (307, 308)], "301, 302, 303, 307 or 308")?,
                None => Spanned::new(302, r.name_span),
            };
            let keep_query = match r.prop("query") {
                Some(v) => {
                    cx.choice(v, "query setting", &[("keep", true), ("drop", false)])?
                        .value
                }
                None => true,
            };
            r.no_children(cx);
            let (val, target) = target?;
            check_redirect_target(cx, val, &target, pattern);
            Action::Redirect {
                status,
                target,
                keep_query,
            }
        }
        "respond" => {
            const EXAMPLE: &str = "respond 200 json=#\"{\"status\":\"ok\"}\"#";
            let status = r
                .req_arg(cx, 0, "a status", EXAMPLE)
                .and_then(|v| cx.status(v, &[(200, 599)], "a status from 200 to 599"));
            let json = r.prop("json");
            let text = r.prop("body");
            let body = match (json, text) {
                (Some(_), Some(t)) => {
                    cx.diags.push(
                        diag::unexpected_argument(t.span, "respond", 1)
                            .help("give either `json=` or `body=`, not both"),
                    );
                    None
                }
                (Some(j), None) => json_body(cx, j),
                (None, Some(t)) => cx.string(t, "body=\"ok\"").map(Body::Text),
                (None, None) => None,
            };
            let mut headers = Vec::new();
            for child in r.children() {
                match child.name().value() {
                    "header" => {
                        let mut c = NodeReader::new(cx, file, child);
                        let name = c
                            .req_arg(
                                cx,
                                0,
                                "a header name",
                                "header \"content-type\" \"text/plain\"",
                            )
                            .and_then(|v| cx.header_name(v));
                        let value = c
                            .req_arg(
                                cx,
                                1,
                                "a header value",
                                "header \"content-type\" \"text/plain\"",
                            )
                            .and_then(|v| cx.header_value(v));
                        c.no_children(cx);
                        c.finish(cx);
                        if let (Some(n), Some(v)) = (name, value) {
                            headers.push((n, v));
                        }
                    }
                    _ => unknown_child(cx, file, child, "`respond`", &["header"]),
                }
            }
            Action::Respond {
                status: status?,
                body,
                headers,
            }
        }
        _ => return None,
    };
    r.finish(cx);
    Some(action)
}

fn json_body(cx: &mut Ctx, val: Val<'_>) -> Option<Body> {
    let text = cx.string(val, "json=#\"{\"status\":\"ok\"}\"#")?;
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
        // serde_json reports line and column; find the byte offset they name.
        let offset = text
            .split_inclusive('\n')
            .take(e.line().saturating_sub(1))
            .map(str::len)
            .sum::<usize>()
            + e.column().saturating_sub(1);
        let offset = offset.min(text.len().saturating_sub(1));
        let end = (offset + 1).min(text.len());
        let span = cx.inner_span(val, offset, end);
        let reason = e.to_string();
        let reason = reason.split(" at line").next().unwrap_or(&reason);
        cx.diags.push(diag::json_invalid(span, reason));
        return None;
    }
    Some(Body::Json(text))
}

/// `{name}` must be a parameter of the pattern; `{*}` needs a trailing `*`.
fn check_redirect_target(
    cx: &mut Ctx,
    val: Val<'_>,
    target: &str,
    pattern: Option<&Spanned<RoutePattern>>,
) {
    let Some(pattern) = pattern else { return };
    let mut captures: Vec<&str> = pattern.value.params().collect();
    if pattern.value.has_rest() {
        captures.push("*");
    }
    let mut rest = target;
    let mut offset = 0;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        if !captures.contains(&name) {
            let span = cx.inner_span(val, offset + open, offset + open + close + 1);
            cx.diags.push(diag::redirect_capture(span, name, &captures));
        }
        offset += open + close + 1;
        rest = &rest[open + close + 1..];
    }
}

fn decode_cache(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<CachePolicy> {
    const EXAMPLE: &str = "cache ttl=\"5m\" stale-while-revalidate=\"30s\"";
    let mut r = NodeReader::new(cx, file, node);
    let ttl = r.req_prop("ttl", EXAMPLE).and_then(|v| {
        cx.duration_max(
            v,
            "cache TTL",
            Duration::from_secs(365 * 86_400),
            "ttl=\"5m\"",
        )
    });
    let stale_while_revalidate = r
        .prop("stale-while-revalidate")
        .and_then(|v| {
            cx.duration_max(
                v,
                "stale-while-revalidate",
                Duration::from_secs(7 * 86_400),
                "stale-while-revalidate=\"30s\"",
            )
        })
        .unwrap_or(Spanned::new(Duration::ZERO, r.name_span));
    let credentialed = r
        .prop("credentialed")
        .and_then(|v| {
            cx.choice(
                v,
                "credentialed-request rule",
                &[
                    ("bypass", Credentialed::Bypass),
                    ("cache", Credentialed::Cache),
                ],
            )
        })
        .unwrap_or(Spanned::new(Credentialed::Bypass, r.name_span));
    let store_private = r
        .prop("private")
        .and_then(|v| {
            cx.choice(
                v,
                "private-response rule",
                &[("skip", false), ("store", true)],
            )
        })
        .unwrap_or(Spanned::new(false, r.name_span));
    let mut vary = Vec::new();
    let mut key = Vec::new();
    for child in r.children() {
        match child.name().value() {
            "vary" => {
                let mut c = NodeReader::new(cx, file, child);
                let vals = c.req_rest_args(cx, 0, "header names", "vary \"accept-encoding\"");
                c.no_children(cx);
                c.finish(cx);
                vary.extend(cx.header_names(&vals));
            }
            "key" => {
                let mut c = NodeReader::new(cx, file, child);
                let vals = c.req_rest_args(cx, 0, "key parts", "key \"header:x-tenant\"");
                c.no_children(cx);
                c.finish(cx);
                key.extend(vals.into_iter().filter_map(|v| key_part(cx, v)));
            }
            _ => unknown_child(cx, file, child, "`cache`", &["vary", "key"]),
        }
    }
    r.finish(cx);
    Some(CachePolicy {
        ttl: ttl?,
        stale_while_revalidate,
        vary,
        key,
        credentialed,
        store_private,
        span: r.span,
    })
}

fn key_part(cx: &mut Ctx, val: Val<'_>) -> Option<Spanned<KeyPart>> {
    let text = cx.string(val, "\"header:x-tenant\"")?;
    let part = if let Some(h) = text.strip_prefix("header:") {
        if crate::reader::check_header_name(h).is_err() {
            cx.diags.push(diag::header_invalid(
                cx.inner_span(val, 7, text.len()),
                "not a header name",
            ));
            return None;
        }
        KeyPart::Header(h.to_ascii_lowercase())
    } else if let Some(c) = text.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
        KeyPart::Cookie(c.to_string())
    } else if let Some(c) = text.strip_prefix("claim:").filter(|c| !c.is_empty()) {
        KeyPart::Claim(c.to_string())
    } else {
        cx.diags.push(diag::invalid_choice(
            val.span,
            "cache key part",
            &text,
            &["header:NAME", "cookie:NAME", "claim:NAME"],
        ));
        return None;
    };
    Some(Spanned::new(part, val.span))
}

fn decode_route_waf(cx: &mut Ctx, file: FileId, node: &KdlNode) -> RouteWaf {
    let mut r = NodeReader::new(cx, file, node);
    let mode = r.prop("mode").and_then(|v| waf_mode(cx, v, true));
    let mut exclude = Vec::new();
    for child in r.children() {
        match child.name().value() {
            "exclude" => {
                exclude.extend(string_list(cx, file, child, "rule ids", "exclude \"sqli\""))
            }
            _ => unknown_child(cx, file, child, "a route's `waf`", &["exclude"]),
        }
    }
    if mode.is_none() && !r.has_children_block() {
        cx.diags.push(diag::missing_property(
            r.name_span,
            "waf",
            "mode",
            "waf mode=\"off\", or waf { exclude \"rule-id\" }",
        ));
    }
    r.finish(cx);
    RouteWaf { mode, exclude }
}

fn decode_test(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<TestCase> {
    const EXAMPLE: &str = "test \"health\" { request \"GET\" \"/api/health\"; expect status=200 }";
    let mut r = NodeReader::new(cx, file, node);
    let name = name_arg(cx, &mut r, "a test name", EXAMPLE);
    let mut request = None;
    let mut expect = None;
    let mut once = Once::default();
    for child in r.children() {
        let child_name = child.name().value();
        let span = span_of(file, child.name().span());
        match child_name {
            "request" if once.first(cx, child_name, span, "a test") => {
                request = decode_test_request(cx, file, child)
            }
            "expect" if once.first(cx, child_name, span, "a test") => {
                expect = Some(decode_expect(cx, file, child))
            }
            "request" | "expect" => {}
            _ => unknown_child(cx, file, child, "a test", &["request", "expect"]),
        }
    }
    if !children_named(&r, "request") {
        cx.diags
            .push(diag::missing_child(r.name_span, "test", "request", EXAMPLE));
    }
    let expect = match expect {
        Some(e) => e,
        None => {
            cx.diags
                .push(diag::missing_child(r.name_span, "test", "expect", EXAMPLE));
            Expect::default()
        }
    };
    r.finish(cx);
    Some(TestCase {
        name: name?,
        request: request?,
        expect,
        span: r.span,
    })
}

fn decode_test_request(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Option<TestRequest> {
    const EXAMPLE: &str = "request \"GET\" \"/api/data/1?x=y\" country=\"DE\"";
    let mut r = NodeReader::new(cx, file, node);
    let method = r
        .req_arg(cx, 0, "a method", EXAMPLE)
        .and_then(|v| cx.string(v, "\"GET\""))
        .filter(|m| {
            let ok = HTTP_METHODS.contains(&m.value.as_str());
            if !ok {
                cx.diags.push(diag::method_invalid(m.span, m, HTTP_METHODS));
            }
            ok
        });
    let target = r
        .req_arg(cx, 1, "a path", EXAMPLE)
        .and_then(|v| cx.string(v, "\"/api/data/1?x=y\""))
        .filter(|t| {
            let ok = t.starts_with('/');
            if !ok {
                cx.diags.push(diag::route_pattern_invalid(
                    t.span,
                    "a request target starts with `/`",
                    "write the path and query, e.g. \"/api/data/1?x=y\"",
                ));
            }
            ok
        });
    let host = r
        .prop("host")
        .and_then(|v| cx.string(v, "host=\"api.example.com\""));
    let country = r.prop("country").and_then(|v| cx.country(v));
    let ip = r.prop("ip").and_then(|v| {
        let text = cx.string(v, "ip=\"203.0.113.9\"")?;
        match text.parse::<IpAddr>() {
            Ok(ip) => Some(Spanned::new(ip, v.span)),
            Err(_) => {
                cx.diags
                    .push(diag::cidr_invalid(v.span, "not an IP address"));
                None
            }
        }
    });
    let region = r
        .prop("region")
        .and_then(|v| cx.string(v, "region=\"eu-west\""));
    let mut headers = Vec::new();
    let mut body = None;
    for child in r.children() {
        match child.name().value() {
            "header" => {
                if let Some(header) =
                    decode_test_header(cx, file, child, "header \"authorization\" \"Bearer …\"")
                {
                    headers.push(header);
                }
            }
            "body" => {
                body = single_arg(cx, file, child, "a body", "body \"a=1&b=2\"")
                    .and_then(|v| cx.string(v, "\"a=1&b=2\""))
            }
            _ => unknown_child(cx, file, child, "a test request", &["header", "body"]),
        }
    }
    r.finish(cx);
    Some(TestRequest {
        method: method?,
        target: target?,
        host,
        country,
        ip,
        region,
        headers,
        body,
        span: r.span,
    })
}

/// A test's `header "name" "value"`: the name in lower case.
fn decode_test_header(
    cx: &mut Ctx,
    file: FileId,
    child: &KdlNode,
    example: &str,
) -> Option<(Spanned<String>, Spanned<String>)> {
    let mut c = NodeReader::new(cx, file, child);
    let name = c
        .req_arg(cx, 0, "a header name", example)
        .and_then(|v| cx.string(v, "\"authorization\""));
    let value = c
        .req_arg(cx, 1, "a header value", example)
        .and_then(|v| cx.header_value(v));
    c.no_children(cx);
    c.finish(cx);
    Some((name?.map(|n| n.to_ascii_lowercase()), value?))
}

fn decode_expect(cx: &mut Ctx, file: FileId, node: &KdlNode) -> Expect {
    let mut r = NodeReader::new(cx, file, node);
    let status = r
        .prop("status")
        .and_then(|v| cx.status(v, &[(100, 599)], "a status from 100 to 599"));
    let route = r
        .prop("route")
        .and_then(|v| cx.string(v, "route=\"/api/data/*\""));
    let rule = r.prop("rule").and_then(|v| cx.string(v, "rule=\"sqli\""));
    let cache_ttl = r
        .prop("cache-ttl")
        .and_then(|v| cx.duration(v, "cache-ttl=\"5m\""));
    let mut headers = Vec::new();
    for child in r.children() {
        match child.name().value() {
            "header" => {
                let example = "header \"location\" \"https://www.example.com/\"";
                if let Some(header) = decode_test_header(cx, file, child, example) {
                    headers.push(header);
                }
            }
            _ => unknown_child(cx, file, child, "an expectation", &["header"]),
        }
    }
    let expect = Expect {
        status,
        route,
        rule,
        cache_ttl,
        headers,
        span: Some(r.span),
    };
    if expect.status.is_none()
        && expect.route.is_none()
        && expect.rule.is_none()
        && expect.cache_ttl.is_none()
        && !r.has_children_block()
        && !["status", "route", "rule", "cache-ttl"]
            .iter()
            .any(|p| node.entry(*p).is_some())
    {
        cx.diags.push(diag::test_expects_nothing(r.name_span));
    }
    r.finish(cx);
    expect
}
