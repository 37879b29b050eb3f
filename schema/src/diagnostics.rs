//! One named constructor per kind of mistake a policy can contain.
//!
//! Every code here is stable (tools match on it) and documented in docs/language.md, and each
//! has at least one golden case under tests/cases. Messages say what is wrong; labels say
//! where; help says how to fix it.

use crate::component::{
    ComponentProblem, HANDLER_EXPORT, INERT_CLI_IMPORTS, PROXY_IMPORTS, WASI_VERSION_MAX,
};
use crate::diagnostic::Diagnostic;
use crate::source::Span;

/// The closest candidate to `name` by edit distance, if it is close enough to be a typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

fn did_you_mean(found: &str, candidates: &[&str]) -> Option<String> {
    suggest(found, candidates.iter().copied()).map(|s| format!("did you mean `{s}`?"))
}

fn one_of(candidates: &[&str]) -> String {
    let quoted: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
    quoted.join(", ")
}

/// The "did you mean" hint if there is one, else the list of what is allowed.
fn with_choices(hint: Option<String>, what: &str, candidates: &[&str]) -> String {
    hint.unwrap_or_else(|| {
        if candidates.is_empty() {
            format!("there are no {what}")
        } else {
            format!("{what}: {}", one_of(candidates))
        }
    })
}

pub fn syntax(span: Span, message: &str, label: Option<&str>, help: Option<&str>) -> Diagnostic {
    let d = Diagnostic::error("edgepack::kdl::syntax", format!("KDL syntax: {message}"))
        .label(span, label.unwrap_or("here"));
    match help {
        Some(h) => d.help(h),
        None => d.help("policies are KDL v2 documents: see https://kdl.dev and docs/language.md"),
    }
}

pub fn not_utf8(span: Span, offset: usize) -> Diagnostic {
    Diagnostic::error(
        "edgepack::file::not-utf8",
        format!("file is not valid UTF-8 (byte {offset})"),
    )
    .label(span, "invalid UTF-8 starts here")
    .help("save policy files as UTF-8")
}

pub fn version_missing(span: Span) -> Diagnostic {
    Diagnostic::error(
        "edgepack::version::missing",
        "the policy does not start with its language version",
    )
    .label(span, "expected `edgepack 1` before this")
    .help("start the entry file with the line `edgepack 1`")
}

pub fn version_unsupported(span: Span, found: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::version::unsupported",
        format!("unsupported language version {found}"),
    )
    .label(span, "this edgepack reads version 1")
    .help("write `edgepack 1`, or upgrade edgepack")
}

pub fn version_misplaced(span: Span) -> Diagnostic {
    Diagnostic::error(
        "edgepack::version::misplaced",
        "the language version must be the first node of a file, written once",
    )
    .label(span, "move this to the top of the file, or remove it")
    .help("a file states its language version once, as its first node")
}

pub fn unknown_node(span: Span, found: &str, context: &str, known: &[&str]) -> Diagnostic {
    let hint = did_you_mean(found, known);
    Diagnostic::error(
        "edgepack::node::unknown",
        format!("unknown node `{found}` in {context}"),
    )
    .label(span, "not known here")
    .help(with_choices(
        hint,
        &format!("nodes allowed in {context}"),
        known,
    ))
}

pub fn unknown_property(span: Span, found: &str, node: &str, known: &[&str]) -> Diagnostic {
    let hint = did_you_mean(found, known);
    let help = if known.is_empty() {
        format!("`{node}` takes no properties")
    } else {
        with_choices(hint, &format!("properties of `{node}`"), known)
    };
    Diagnostic::error(
        "edgepack::property::unknown",
        format!("unknown property `{found}` on `{node}`"),
    )
    .label(span, "not known here")
    .help(help)
}

pub fn duplicate_property(span: Span, first: Span, name: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::property::duplicate",
        format!("property `{name}` is given twice"),
    )
    .label(span, "given again here")
    .label(first, "first given here")
    .help("keep one of them")
}

pub fn unexpected_argument(span: Span, node: &str, expected: usize) -> Diagnostic {
    let help = match expected {
        0 => format!("`{node}` takes no arguments"),
        1 => format!("`{node}` takes one argument"),
        n => format!("`{node}` takes {n} arguments"),
    };
    Diagnostic::error(
        "edgepack::value::count",
        format!("too many arguments to `{node}`"),
    )
    .label(span, "unexpected argument")
    .help(help)
}

pub fn missing_argument(span: Span, node: &str, what: &str, example: &str) -> Diagnostic {
    Diagnostic::error("edgepack::value::count", format!("`{node}` needs {what}"))
        .label(span, format!("{what} missing"))
        .help(format!("for example: {example}"))
}

pub fn missing_property(span: Span, node: &str, property: &str, example: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::property::missing",
        format!("`{node}` needs the property `{property}`"),
    )
    .label(span, format!("`{property}` missing"))
    .help(format!("for example: {example}"))
}

pub fn missing_child(span: Span, node: &str, child: &str, example: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::node::missing",
        format!("`{node}` has no `{child}`"),
    )
    .label(span, format!("no `{child}` inside"))
    .help(format!("for example: {example}"))
}

pub fn duplicate_node(span: Span, first: Span, name: &str, context: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::node::duplicate",
        format!("`{name}` may appear only once in {context}"),
    )
    .label(span, "given again here")
    .label(first, "first given here")
    .help("merge the two into one")
}

pub fn children_not_allowed(span: Span, node: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::node::children",
        format!("`{node}` takes no children block"),
    )
    .label(span, "unexpected block")
    .help("remove the `{ … }` block")
}

pub fn type_annotation(span: Span) -> Diagnostic {
    Diagnostic::error(
        "edgepack::value::annotation",
        "type annotations are not used in policies",
    )
    .label(span, "remove this annotation")
    .help("edgepack decides each value's type from where it is written")
}

pub fn wrong_type(span: Span, expected: &str, found: &str, example: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::value::type",
        format!("expected {expected}, found {found}"),
    )
    .label(span, format!("expected {expected}"))
    .help(format!("for example: {example}"))
}

pub fn out_of_range(span: Span, what: &str, range: &str) -> Diagnostic {
    Diagnostic::error("edgepack::value::range", format!("{what} is out of range"))
        .label(span, format!("must be {range}"))
        .help(format!("use a value {range}"))
}

pub fn invalid_choice(span: Span, what: &str, found: &str, choices: &[&str]) -> Diagnostic {
    let hint = did_you_mean(found, choices);
    Diagnostic::error(
        "edgepack::value::choice",
        format!("`{found}` is not a valid {what}"),
    )
    .label(span, "not one of the choices")
    .help(with_choices(hint, &format!("valid {what}s"), choices))
}

pub fn duplicate_name(span: Span, first: Span, kind: &str, name: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::name::duplicate",
        format!("{kind} `{name}` is defined twice"),
    )
    .label(span, "defined again here")
    .label(first, "first defined here")
    .help(format!("give each {kind} its own name, or remove one"))
}

pub fn undefined(span: Span, kind: &str, name: &str, defined: &[&str]) -> Diagnostic {
    let hint = did_you_mean(name, defined);
    Diagnostic::error(
        "edgepack::ref::undefined",
        format!("no {kind} named `{name}`"),
    )
    .label(span, format!("unknown {kind}"))
    .help(with_choices(hint, &format!("defined {kind}s"), defined))
}

pub fn unused(span: Span, kind: &str, name: &str) -> Diagnostic {
    Diagnostic::warning("edgepack::unused", format!("{kind} `{name}` is never used"))
        .label(span, "defined here")
        .help(format!("use it from a route, or remove the {kind}"))
}

pub fn zone_reserved(span: Span) -> Diagnostic {
    Diagnostic::error(
        "edgepack::zone::reserved",
        "the zone `GLOBAL` is built in and cannot be declared",
    )
    .label(span, "remove this declaration")
    .help("`GLOBAL` is the zone of every country no other zone lists; regions and origins can name it without declaring it")
}

pub fn country_invalid(span: Span, code: &str, hint: Option<String>) -> Diagnostic {
    Diagnostic::error(
        "edgepack::country::invalid",
        format!("`{code}` is not an ISO 3166-1 alpha-2 country code"),
    )
    .label(span, "unknown country")
    .help(hint.unwrap_or_else(|| {
        "use an assigned two-letter code in upper case, e.g. \"DE\", \"US\", \"SG\"".to_string()
    }))
}

pub fn country_in_two_zones(
    span: Span,
    first: Span,
    code: &str,
    zone: &str,
    other: &str,
) -> Diagnostic {
    Diagnostic::error(
        "edgepack::country::two-zones",
        format!("country `{code}` is in both zone `{other}` and zone `{zone}`"),
    )
    .label(span, format!("listed in `{zone}` here"))
    .label(first, format!("listed in `{other}` here"))
    .help("a country's data has one home: list it in one zone only")
}

pub fn duration_invalid(span: Span, reason: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::duration::invalid",
        format!("invalid duration: {reason}"),
    )
    .label(span, reason.to_string())
    .help(crate::units::duration_units_help())
}

pub fn size_invalid(span: Span, reason: &str) -> Diagnostic {
    Diagnostic::error("edgepack::size::invalid", format!("invalid size: {reason}"))
        .label(span, reason.to_string())
        .help(crate::units::size_units_help())
}

pub fn regex_invalid(span: Span, reason: &str) -> Diagnostic {
    Diagnostic::error("edgepack::regex::invalid", "invalid regular expression")
        .label(span, reason.to_string())
        .help("WAF regexes use Rust regex syntax (https://docs.rs/regex/latest/regex/#syntax); look-around and backreferences are not supported")
}

pub fn regex_too_large(span: Span, pattern: &str, budget: u64) -> Diagnostic {
    let shown: String = pattern.chars().take(60).collect();
    let ellipsis = if shown.len() < pattern.len() {
        "…"
    } else {
        ""
    };
    Diagnostic::error(
        "edgepack::regex::too-large",
        format!("the automaton for `{shown}{ellipsis}` exceeds the budget of {budget} bytes"),
    )
    .label(span, "this pattern")
    .help("simplify the pattern (bounded repetitions such as `.{1,500}` and large Unicode classes grow automata fast), split it into several rules, or raise `automaton-budget` on `waf`")
}

pub fn route_pattern_invalid(span: Span, reason: &str, help: &str) -> Diagnostic {
    Diagnostic::error("edgepack::route::pattern", "invalid route pattern")
        .label(span, reason.to_string())
        .help(help.to_string())
}

pub fn host_invalid(span: Span, reason: &str, help: &str) -> Diagnostic {
    Diagnostic::error("edgepack::host::invalid", "invalid host pattern")
        .label(span, reason.to_string())
        .help(help.to_string())
}

pub fn route_ambiguous(
    span: Span,
    other: Span,
    pattern: &str,
    other_pattern: &str,
    region: Option<&str>,
) -> Diagnostic {
    let place = region.map_or(String::new(), |r| format!(" in region `{r}`"));
    Diagnostic::error(
        "edgepack::route::ambiguous",
        format!("routes `{pattern}` and `{other_pattern}` take the same requests at equal rank{place}"),
    )
    .label(span, "this route")
    .label(other, "and this one")
    .help("make one more specific: restrict it to `methods` or `hosts`, or use a literal segment where the other has `:param` or `*`")
}

pub fn route_action_missing(span: Span) -> Diagnostic {
    Diagnostic::error("edgepack::route::action", "route has no action")
        .label(span, "this route does nothing")
        .help("give it exactly one of `proxy`, `respond`, `redirect`, `function` or `block`")
}

pub fn route_action_twice(span: Span, first: Span) -> Diagnostic {
    Diagnostic::error("edgepack::route::action", "route has more than one action")
        .label(span, "second action")
        .label(first, "first action")
        .help("a route does one thing: keep exactly one of `proxy`, `respond`, `redirect`, `function` or `block`")
}

pub fn path_absolute(span: Span, path: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::path::outside-policy",
        format!("`{path}` is an absolute path"),
    )
    .label(span, "absolute path")
    .help("paths are relative to the file that names them and stay inside the policy directory, so a policy can be copied anywhere")
}

pub fn path_outside(span: Span, path: &str, how: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::path::outside-policy",
        format!("`{path}` leaves the policy directory{how}"),
    )
    .label(span, "points outside the policy")
    .help("copy the file into the policy directory and name it from there")
}

pub fn path_invalid(span: Span, reason: &str) -> Diagnostic {
    Diagnostic::error("edgepack::path::invalid", "invalid path")
        .label(span, reason.to_string())
        .help("write a relative path with `/` separators, e.g. \"keys/auth.pem\"")
}

pub fn file_unreadable(span: Span, path: &str, error: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::file::unreadable",
        format!("cannot read `{path}`: {error}"),
    )
    .label(span, "named here")
    .help("check that the file exists, is readable, and that the path is relative to the file naming it")
}

pub fn include_cycle(span: Span, chain: &[String]) -> Diagnostic {
    Diagnostic::error("edgepack::include::cycle", "include cycle")
        .label(span, "this include closes the cycle")
        .help(format!(
            "the files include each other: {}",
            chain.join(" → ")
        ))
}

pub fn include_repeated(span: Span, first: Span, path: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::include::repeated",
        format!("`{path}` is included twice"),
    )
    .label(span, "included again here")
    .label(first, "first included here")
    .help("include each file once")
}

pub fn include_misplaced(span: Span) -> Diagnostic {
    Diagnostic::error(
        "edgepack::include::misplaced",
        "`include` is only allowed at the top level of a file",
    )
    .label(span, "not allowed here")
    .help("move the include to the top level")
}

pub fn status_invalid(span: Span, status: i128, allowed: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::status::invalid",
        format!("{status} is not a valid status here"),
    )
    .label(span, format!("expected {allowed}"))
    .help(format!("use {allowed}"))
}

pub fn json_invalid(span: Span, reason: &str) -> Diagnostic {
    Diagnostic::error("edgepack::json::invalid", "invalid JSON body")
        .label(span, reason.to_string())
        .help("write the body as a raw string so quotes need no escaping: json=#\"{\"status\":\"ok\"}\"#")
}

pub fn url_invalid(span: Span, reason: &str) -> Diagnostic {
    Diagnostic::error("edgepack::url::invalid", "invalid origin URL")
        .label(span, reason.to_string())
        .help("write an absolute http or https URL, e.g. \"https://api-eu.internal:8443\" (an optional path prefix is allowed; no query or fragment)")
}

pub fn header_invalid(span: Span, reason: &str) -> Diagnostic {
    Diagnostic::error("edgepack::header::invalid", "invalid header")
        .label(span, reason.to_string())
        .help("header names are HTTP tokens such as \"x-request-id\"; values cannot contain line breaks; hop-by-hop headers (connection, transfer-encoding, …) are managed by the node")
}

pub fn cidr_invalid(span: Span, reason: &str) -> Diagnostic {
    Diagnostic::error("edgepack::cidr::invalid", "invalid network")
        .label(span, reason.to_string())
        .help("write a CIDR such as \"10.0.0.0/8\" or \"2001:db8::/32\", or a single address")
}

pub fn method_invalid(span: Span, found: &str, methods: &[&str]) -> Diagnostic {
    let hint = did_you_mean(found, methods);
    Diagnostic::error(
        "edgepack::method::invalid",
        format!("`{found}` is not an HTTP method"),
    )
    .label(span, "unknown method")
    .help(with_choices(hint, "methods", methods))
}

pub fn redirect_capture(span: Span, name: &str, captures: &[&str]) -> Diagnostic {
    Diagnostic::error(
        "edgepack::redirect::capture",
        format!("the redirect target uses `{{{name}}}`, which the route pattern does not capture"),
    )
    .label(span, "not captured by the pattern")
    .help(if captures.is_empty() {
        "the pattern captures nothing: add a `:name` segment or a final `*` (`{*}`)".to_string()
    } else {
        format!("captures of this route: {}", one_of(captures))
    })
}

pub fn claim_without_auth(span: Span, what: &str, claim: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::claim::without-auth",
        format!("{what} reads the JWT claim `{claim}` on a route without authentication"),
    )
    .label(span, "no verified token to read it from")
    .help("add `auth jwt=\"…\"` to the route, or key on the client IP or a header instead")
}

/// `cache` on a route whose answers are never stored: `why` says which.
pub fn cache_ineffective(span: Span, why: &str, help: &str) -> Diagnostic {
    Diagnostic::warning(
        "edgepack::cache::ineffective",
        format!("this route caches nothing: {why}"),
    )
    .label(span, "never used")
    .help(help.to_string())
}

pub fn cors_credentials_wildcard(span: Span) -> Diagnostic {
    Diagnostic::error(
        "edgepack::cors::credentials-wildcard",
        "CORS with credentials cannot allow every origin",
    )
    .label(span, "`*` with credentials")
    .help("browsers refuse `Access-Control-Allow-Origin: *` on credentialed requests: list the allowed origins")
}

pub fn origin_no_endpoint(
    span: Span,
    origin: &str,
    zone: &str,
    region: &str,
    region_span: Span,
) -> Diagnostic {
    Diagnostic::error(
        "edgepack::origin::no-endpoint",
        format!("origin `{origin}` has no endpoint for zone `{zone}`, used by region `{region}`"),
    )
    .label(span, "used here")
    .label(
        region_span,
        format!("region `{region}` is in zone `{zone}`"),
    )
    .help(format!(
        "add `zone \"{zone}\" url=\"…\"` to origin `{origin}`, or set `fallback=\"ZONE\"` on it"
    ))
}

pub fn residency_violation(
    span: Span,
    region: &str,
    zone: &str,
    origin: &str,
    origin_zone: &str,
    region_span: Span,
) -> Diagnostic {
    Diagnostic::error(
        "edgepack::residency::violation",
        format!(
            "in region `{region}` (zone `{zone}`), this route reaches origin `{origin}` in zone `{origin_zone}`"
        ),
    )
    .label(span, "data would leave its zone here")
    .label(region_span, format!("region `{region}` is in zone `{zone}`"))
    .help(format!(
        "give origin `{origin}` an endpoint in zone `{zone}`, or allow the transfer explicitly: `residency \"{zone}\" {{ transfer \"{origin}\" to=\"{origin_zone}\" }}`"
    ))
}

pub fn transfer_mismatch(span: Span, origin: &str, to: &str, actual: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::residency::transfer",
        format!("transfer of origin `{origin}` names zone `{to}`, but the origin is reached in zone `{actual}`"),
    )
    .label(span, "wrong destination zone")
    .help(format!("write `to=\"{actual}\"`: a transfer names where the data goes"))
}

pub fn key_invalid(span: Span, path: &str, reason: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::key::invalid",
        format!("`{path}` is not a usable verification key: {reason}"),
    )
    .label(span, "this key")
    .help("use a PEM public key (\"-----BEGIN PUBLIC KEY-----\") or a JWK / JWK Set JSON file; HS algorithms need a JWK with \"kty\": \"oct\"")
}

pub fn key_algorithm_mismatch(span: Span, path: &str, kind: &str, algorithms: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::key::algorithm-mismatch",
        format!("`{path}` is {kind}, which none of the listed algorithms ({algorithms}) verifies"),
    )
    .label(span, "this key")
    .help("list the algorithm the token issuer signs with, or use the issuer's key for it")
}

pub fn algorithm_confusion(span: Span, other: Span) -> Diagnostic {
    Diagnostic::error(
        "edgepack::jwt::algorithm-confusion",
        "a JWT provider mixes shared-secret (HS*) and public-key algorithms",
    )
    .label(span, "shared-secret algorithm")
    .label(other, "public-key algorithm")
    .help("mixing them allows key-confusion attacks (a public key used as an HMAC secret): use one kind per provider")
}

pub fn jwt_secret_in_bundle(span: Span) -> Diagnostic {
    Diagnostic::warning(
        "edgepack::jwt::secret-in-bundle",
        "this shared secret ships in every bundle, where whoever can read a bundle can read it",
    )
    .label(span, "an HMAC secret")
    .help("bundles are signed, not encrypted: a registry, a CI artifact or a node's disk holding one gives the secret away, and with it the power to mint tokens; keep it on the nodes instead (`secret \"NAME\"`, given to edgepack-node with --jwt-secret NAME=FILE), or use a public-key algorithm (ES256, EdDSA, RS256), whose bundle holds only the public key")
}

pub fn jwt_secret_name(span: Span, name: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::jwt::secret-name",
        format!("`{name}` cannot name a node secret"),
    )
    .label(span, "this name")
    .help("use 1 to 64 letters, digits, `-` and `_`, starting with a letter or digit: nodes are given it as --jwt-secret NAME=FILE or in EDGEPACK_JWT_SECRET_NAME")
}

pub fn jwt_secret_without_hs(span: Span, name: &str, algorithms: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::key::algorithm-mismatch",
        format!("`{name}` is a shared secret, which none of the listed algorithms ({algorithms}) verifies"),
    )
    .label(span, "this secret")
    .help("a node secret verifies HS256, HS384 or HS512 tokens: list the one the token issuer signs with")
}

pub fn geo_no_source(span: Span) -> Diagnostic {
    Diagnostic::error(
        "edgepack::geo::no-source",
        "geo lists need a way to know the client's country",
    )
    .label(span, "no country is known to compare with this list")
    .help("add `country-header \"cf-ipcountry\"` with `trusted-peers`, or `database \"geo/GeoLite2-Country.mmdb\"`")
}

pub fn header_without_peers(span: Span) -> Diagnostic {
    Diagnostic::error(
        "edgepack::geo::untrusted-header",
        "a country header is only believed from trusted peers, and none are listed",
    )
    .label(span, "never honoured")
    .help("add `trusted-peers \"CIDR\" …` listing the proxies that set this header")
}

pub fn geo_database_invalid(span: Span, path: &str, reason: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::geo::database",
        format!("`{path}` is not a usable country database: {reason}"),
    )
    .label(span, "this database")
    .help("use a MaxMind DB (.mmdb) country or city database, such as GeoLite2-Country")
}

pub fn function_component(span: Span, path: &str, problem: ComponentProblem) -> Diagnostic {
    const BUILD: &str = "functions are wasi:http/proxy components, e.g. built with `cargo build --target wasm32-wasip2`";
    match problem {
        ComponentProblem::Invalid(reason) => Diagnostic::error(
            "edgepack::function::invalid",
            format!("`{path}` is not a valid WebAssembly component: {reason}"),
        )
        .label(span, "this file")
        .help(BUILD),
        ComponentProblem::CoreModule => Diagnostic::error(
            "edgepack::function::core-module",
            format!("`{path}` is a core WebAssembly module, not a component"),
        )
        .label(span, "this module")
        .help("build for `wasm32-wasip2` (not `wasm32-wasip1` or `wasm32-unknown-unknown`), or wrap the module with `wasm-tools component new`"),
        ComponentProblem::ForeignImports(imports) => Diagnostic::error(
            "edgepack::function::world",
            format!(
                "`{path}` imports {}, outside the wasi:http/proxy world",
                one_of(&imports.iter().map(String::as_str).collect::<Vec<_>>())
            ),
        )
        .label(span, "this component")
        .help(format!(
            "a function may import only the wasi:http/proxy world ({}) and the inert {} (WASI 0.2.0 to {}.{}.{}); drop the code that needs the rest (files, sockets)",
            PROXY_IMPORTS.join(", "),
            INERT_CLI_IMPORTS.join(", "),
            WASI_VERSION_MAX.0,
            WASI_VERSION_MAX.1,
            WASI_VERSION_MAX.2
        )),
        ComponentProblem::NoHandler(exports) => Diagnostic::error(
            "edgepack::function::no-handler",
            format!("`{path}` does not export `{HANDLER_EXPORT}`"),
        )
        .label(
            span,
            if exports.is_empty() {
                "this component exports nothing".to_string()
            } else {
                format!("this component exports {}", exports.join(", "))
            },
        )
        .help("export the handler, e.g. with `wasip2::http::proxy::export!` in Rust"),
    }
}

pub fn test_expects_nothing(span: Span) -> Diagnostic {
    Diagnostic::error("edgepack::test::empty", "test expects nothing")
        .label(span, "no expectation")
        .help("add `expect status=…` (and optionally `route=`, `rule=`, `cache-ttl=`, `header` children)")
}

pub fn import_unreadable(span: Span, path: &str, error: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::import::unreadable",
        format!("cannot read the rule set at `{path}`: {error}"),
    )
    .label(span, "imported here")
    .help("`path` names a directory of ModSecurity `*.conf` files or one file; Debian's `modsecurity-crs` package installs the CRS in /usr/share/modsecurity-crs/rules")
}

pub fn import_empty(span: Span, path: &str) -> Diagnostic {
    Diagnostic::error(
        "edgepack::import::empty",
        format!("`{path}` holds no `*.conf` rule files"),
    )
    .label(span, "imported here")
    .help("point `path` at the directory holding the rule set's `REQUEST-*.conf` files")
}

pub fn import_rules_skipped(span: Span, ids: &[&str], reason: &str) -> Diagnostic {
    let (noun, verb) = if ids.len() == 1 {
        ("rule", "is")
    } else {
        ("rules", "are")
    };
    Diagnostic::warning(
        "edgepack::import::rule-skipped",
        format!("{noun} {} {verb} not in the bundle: {reason}", ids.join(", ")),
    )
    .label(span, format!("{} {noun} left out", ids.len()))
    .help("the rest of the rule set is imported; `edgepack inspect` lists every rule left out, and `docs/waf.md` says what the import supports")
}

pub fn import_rules_approximated(span: Span, ids: &[&str], what: &str) -> Diagnostic {
    let noun = if ids.len() == 1 { "rule" } else { "rules" };
    Diagnostic::warning(
        "edgepack::import::rule-approximated",
        format!(
            "{noun} {} imported with a difference: {what}",
            ids.join(", ")
        ),
    )
    .label(span, format!("{} {noun} approximated", ids.len()))
    .help("`docs/waf.md` says what each difference means for detection")
}

pub fn import_response_rules(span: Span, count: usize) -> Diagnostic {
    let what = if count == 1 {
        "1 rule of the set reads responses and is".to_string()
    } else {
        format!("{count} rules of the set read responses and are")
    };
    Diagnostic::warning(
        "edgepack::import::response-rules",
        format!("{what} not imported"),
    )
    .label(span, "imported here")
    .help("edgepack's WAF reads requests; response rules (RESPONSE-*.conf, phases 3 and 4) have nothing to run on")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(suggest("rout", ["route", "zone"]), Some("route"));
        assert_eq!(
            suggest("ratelimt", ["ratelimit", "route"]),
            Some("ratelimit")
        );
        assert_eq!(suggest("xyz", ["route", "zone"]), None);
    }
}
