//! End-to-end tests of `edgepack-node`: the example policy built and signed by `edgepack`,
//! served by the node as a real process, a real TLS origin behind it, real HTTP in front.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgepack_tests::e2e::{self, Keys, NodeProcess, Origin, Pki, get, send};
use serde_json::json;

/// The origins of the example policy (`origin "api"`), all sent to the test origin.
const API_HOSTS: [&str; 4] = [
    "api-eu.internal:8443",
    "api-us.internal:8443",
    "api-apac.internal:8443",
    "api-sa.internal:8443",
];
const DE: (&str, &str) = ("cf-ipcountry", "DE");

/// What every test shares: keys, a CA, and the example built once per region and variant.
struct Fixture {
    dir: PathBuf,
    keys: Keys,
    pki: Pki,
    /// The example as shipped, version 1.
    example: BTreeMap<String, Vec<u8>>,
    /// The example with `/api/health` answering `healthy-b` and a one-second cache (its
    /// test of the cache TTL changed to match).
    variant: BTreeMap<String, Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let keys = e2e::keygen(&dir, "release");
        let pki = Pki::new(&dir);
        let regions = ["eu-west", "us-east"];
        let example_policy = edgepack_tests::workspace_root().join("examples/global-api");
        let example = e2e::build(&example_policy, &keys, &dir.join("v1"), 1, &regions);
        let variant_policy = dir.join("variant");
        e2e::policy_variant(
            &example_policy,
            &variant_policy,
            &[
                (
                    "edgepack.kdl",
                    r#"{"status":"healthy"}"#,
                    r#"{"status":"healthy-b"}"#,
                ),
                (
                    "edgepack.kdl",
                    r#"cache ttl="5m" stale-while-revalidate="30s""#,
                    r#"cache ttl="1s" stale-while-revalidate="1s""#,
                ),
                // Its own test must agree, or the node refuses it at its golden requests.
                (
                    "tests.kdl",
                    r#"expect route="/api/data/*" cache-ttl="5m""#,
                    r#"expect route="/api/data/*" cache-ttl="1s""#,
                ),
            ],
        );
        let variant = e2e::build(&variant_policy, &keys, &dir.join("vb"), 1, &regions);
        Fixture {
            dir,
            keys,
            pki,
            example,
            variant,
        }
    })
}

/// A node serving one region's bundle, with its own bundle and state directories and an
/// origin of its own.
struct Edge {
    node: NodeProcess,
    origin: Origin,
    bundles: PathBuf,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Edge {
    fn start(region: &str, bundle: &[u8], extra: &[&str]) -> Edge {
        let fixture = fixture();
        let dir = tempfile::tempdir().expect("tempdir");
        let bundles = dir.path().join("bundles");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&bundles).expect("mkdir");
        e2e::install(bundle, &bundles, region);
        let origin = Origin::start(&fixture.pki, &hosts(), dir.path());
        let node = NodeProcess::start(&node_args(&bundles, &state, &origin, extra));
        Edge {
            node,
            origin,
            bundles,
            state,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node.url)
    }

    /// Starts another node process on the same directories (after this one stopped).
    fn restart(&mut self, extra: &[&str]) {
        self.node.signal("TERM");
        self.node.wait_exit(Duration::from_secs(15));
        self.node = NodeProcess::start(&node_args(&self.bundles, &self.state, &self.origin, extra));
    }
}

fn hosts() -> Vec<&'static str> {
    API_HOSTS
        .iter()
        .map(|h| h.split(':').next().unwrap_or(h))
        .collect()
}

fn node_args(bundles: &Path, state: &Path, origin: &Origin, extra: &[&str]) -> Vec<String> {
    let fixture = fixture();
    e2e::node_args(
        bundles,
        state,
        &fixture.keys,
        &fixture.pki,
        origin,
        &API_HOSTS,
        extra,
    )
}

fn example(region: &str) -> &'static [u8] {
    &fixture().example[region]
}

#[test]
fn proxied_requests_carry_forwarding_and_edge_headers() {
    let edge = Edge::start("eu-west", example("eu-west"), &[]);
    let reply = get(
        &edge.url("/api/data/items?page=2"),
        &[
            DE,
            ("x-forwarded-for", "198.51.100.7"),
            ("connection", "x-trace-hop"),
            ("x-trace-hop", "1"),
            ("host", "api.example.com"),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["origin"], "ok");
    assert_eq!(reply.header("x-edge-region"), Some("eu-west"));
    assert_eq!(reply.header("x-edge-bundle"), Some("1"));
    assert!(
        reply
            .header("x-request-id")
            .is_some_and(|id| id.len() >= 16)
    );
    assert_eq!(reply.header("x-cache"), Some("MISS"));
    assert_eq!(
        reply.header("strict-transport-security"),
        Some("max-age=63072000; includeSubDomains"),
        "the policy's response headers are set"
    );
    assert_eq!(reply.header("server"), None, "the policy removes `server`");

    let seen = edge
        .origin
        .last("/api/data/items")
        .expect("the origin saw it");
    assert_eq!(seen.target, "/api/data/items?page=2");
    let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("x-forwarded-for"), Some("198.51.100.7, 127.0.0.1"));
    assert_eq!(header("x-forwarded-proto"), Some("http"));
    assert_eq!(header("x-forwarded-host"), Some("api.example.com"));
    assert_eq!(
        header("x-trace-hop"),
        None,
        "hop-by-hop headers are removed"
    );
    assert_eq!(header("cf-ipcountry"), Some("DE"));

    // The origin is sent the path the policy routed, its dot segments resolved.
    for (sent, forwarded) in [
        ("/api/data/x/./items?a=1", "/api/data/x/items?a=1"),
        ("/api/data/x/%2e/y/..", "/api/data/x/"),
    ] {
        let reply = get(&edge.url(sent), &[DE]);
        assert_eq!(reply.status, 200, "{sent}: {}", reply.body);
        let seen = edge.origin.seen();
        let last = seen.last().expect("the origin saw it");
        assert_eq!(last.target, forwarded, "{sent}");
    }

    // An origin's answer in a coding besides chunked (`gzip, chunked`: hyper removes only
    // the chunking) is not passed on as if it were plain.
    let coded = get(&edge.url("/api/data/gzip-transfer-coding"), &[DE]);
    assert_eq!(coded.status, 502, "{}", coded.body);
    assert!(coded.body.contains("transfer coding"), "{}", coded.body);
    assert_eq!(edge.origin.count("/api/data/gzip-transfer-coding"), 1);
}

#[test]
fn the_edge_answers_waf_geo_routes_and_redirects_itself() {
    let edge = Edge::start("eu-west", example("eu-west"), &[]);
    let health = get(&edge.url("/api/health"), &[DE]);
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, r#"{"status":"healthy"}"#)
    );

    let sqli = get(
        &edge.url("/api/data/1?id=1%20union%20select%20password%20from%20users"),
        &[DE],
    );
    assert_eq!(sqli.status, 403);
    let id = sqli
        .header("x-request-id")
        .expect("a request id")
        .to_string();
    assert_eq!(
        sqli.json()["request_id"],
        id.as_str(),
        "the error body names the request"
    );

    let blocked = get(&edge.url("/api/health"), &[("cf-ipcountry", "KP")]);
    assert_eq!(blocked.status, 451);
    assert_eq!(blocked.header("x-edge-region"), Some("eu-west"));

    assert_eq!(get(&edge.url("/nowhere"), &[DE]).status, 404);
    // A path routes take, with a method none of them takes: 405 and what they do take.
    let wrong_method = send("PATCH", &edge.url("/api/data/1"), &[DE], "");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(
        wrong_method.header("allow"),
        Some("GET, HEAD, POST, PUT, DELETE")
    );
    let redirect = get(&edge.url("/docs/guide/start"), &[DE]);
    assert_eq!(redirect.status, 301);
    assert_eq!(
        redirect.header("location"),
        Some("https://docs.example.com/guide/start")
    );
    // The query goes along, as received.
    let redirect = get(&edge.url("/docs/search?q=edge%20rules&page=2"), &[DE]);
    assert_eq!(
        redirect.header("location"),
        Some("https://docs.example.com/search?q=edge%20rules&page=2")
    );
    assert_eq!(
        edge.origin.count("/"),
        0,
        "none of these reached the origin"
    );

    // The access log is written in batches, at least every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = edge.node.access_log();
        if let Some(line) = log.into_iter().find(|l| l["request_id"] == id.as_str()) {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line for the blocked request"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(line["status"], 403);
    let rules = line["rules"].as_array().expect("rules");
    assert!(
        rules.iter().any(|r| r["rule"] == "sqli-union"
            && r["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("waf.kdl:"))),
        "the access log names the rule and its file:line: {line}"
    );
    let time = line["time"].as_str().expect("time").as_bytes();
    assert!(
        time.len() == 24 && time[10] == b'T' && time[19] == b'.' && time[23] == b'Z',
        "the line's time is RFC 3339 UTC with milliseconds: {line}"
    );
}

#[test]
fn the_101st_request_in_a_minute_from_one_client_gets_429() {
    let edge = Edge::start("eu-west", example("eu-west"), &[]);
    let client = ("x-forwarded-for", "203.0.113.9");
    // GCRA: a burst of 100, then one more every 0.6 s; count how many got through.
    let started = Instant::now();
    let mut limited = None;
    for n in 1..=200 {
        let reply = get(&edge.url(&format!("/api/data/rl-{n}")), &[DE, client]);
        if reply.status == 429 {
            limited = Some((n, reply));
            break;
        }
        assert_eq!(reply.status, 200, "request {n}: {}", reply.body);
    }
    let (n, limited) = limited.expect("a 429 within 200 requests");
    let replenished = (started.elapsed().as_secs_f64() / 0.6).ceil() as usize;
    assert!(
        n > 100 && n <= 101 + replenished,
        "first 429 at request {n}, {replenished} tokens replenished meanwhile"
    );
    let retry_after: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(edge.origin.count(&format!("/api/data/rl-{n}")), 0);

    let other = get(
        &edge.url("/api/data/rl-1"),
        &[DE, ("x-forwarded-for", "203.0.113.10")],
    );
    assert_eq!(other.status, 200, "another client has its own budget");
    let metrics = edge.node.metrics();
    assert!(
        metrics.contains(r#"edgepack_rate_limited_total{limit="per-ip"} 1"#),
        "{metrics}"
    );
}

/// A limit keyed by a header: each value has its own allowance, and requests without the
/// header share one (they are not let through unlimited).
#[test]
fn a_header_keyed_limit_counts_each_key_and_keyless_requests_together() {
    let fixture = fixture();
    let policy = fixture.dir.join("header-limit");
    std::fs::create_dir_all(&policy).expect("mkdir");
    std::fs::write(
        policy.join("edgepack.kdl"),
        r##"edgepack 1
region "local" zone="GLOBAL"
ratelimit "per-key" key="header:x-api-key" limit=2 per="1m"
route "/limited" {
    ratelimit "per-key"
    respond 200 json=#"{"ok":true}"#
}
"##,
    )
    .expect("write the policy");
    let bundles = e2e::build(
        &policy,
        &fixture.keys,
        &fixture.dir.join("header-limit-out"),
        1,
        &["local"],
    );
    let edge = Edge::start("local", &bundles["local"], &[]);
    let url = edge.url("/limited");
    let statuses = |headers: &[(&str, &str)]| -> Vec<u16> {
        (0..3).map(|_| get(&url, headers).status).collect()
    };
    assert_eq!(statuses(&[("x-api-key", "alpha")]), [200, 200, 429]);
    assert_eq!(statuses(&[("x-api-key", "beta")]), [200, 200, 429]);
    assert_eq!(
        statuses(&[]),
        [200, 200, 429],
        "keyless requests share one allowance"
    );
}

#[test]
fn responses_are_cached_by_key_and_expire() {
    let edge = Edge::start("eu-west", &fixture().variant["eu-west"], &[]);
    let url = edge.url("/api/data/catalog");
    let first = get(&url, &[DE]);
    assert_eq!((first.status, first.header("x-cache")), (200, Some("MISS")));
    let second = get(&url, &[DE]);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.body, first.body, "a hit is the stored response");
    assert_eq!(edge.origin.count("/api/data/catalog"), 1);

    // The policy varies the key on accept-encoding.
    let gzip = get(&url, &[DE, ("accept-encoding", "gzip")]);
    assert_eq!(gzip.header("x-cache"), Some("MISS"));
    assert_eq!(
        get(&url, &[DE, ("accept-encoding", "gzip")]).header("x-cache"),
        Some("HIT")
    );

    // Private answers, answers setting cookies, and answers varying on a header the
    // policy's key does not hold are not stored.
    for path in [
        "/api/data/private",
        "/api/data/cookie",
        "/api/data/by-language",
    ] {
        get(&edge.url(path), &[DE]);
        let again = get(&edge.url(path), &[DE]);
        assert_eq!(again.header("x-cache"), Some("MISS"), "{path}");
        assert_eq!(edge.origin.count(path), 2, "{path}");
    }

    // A browser revalidating: on a miss the origin is asked without the validator (its 304
    // would leave nothing to store), the full answer stored, and the client told 304.
    let tagged = edge.url("/api/data/tagged");
    let revalidate = [DE, ("if-none-match", e2e::TAG)];
    let miss = get(&tagged, &revalidate);
    assert_eq!((miss.status, miss.header("x-cache")), (304, Some("MISS")));
    assert_eq!(miss.header("etag"), Some(e2e::TAG));
    assert!(miss.body.is_empty());
    let asked = edge
        .origin
        .last("/api/data/tagged")
        .expect("reached the origin");
    assert!(!asked.headers.contains_key("if-none-match"));
    let hit = get(&tagged, &[DE]);
    assert_eq!((hit.status, hit.header("x-cache")), (200, Some("HIT")));
    assert!(hit.body.contains("\"origin\":\"ok\""), "{}", hit.body);
    let not_modified = get(&tagged, &revalidate);
    assert_eq!(
        (not_modified.status, not_modified.header("x-cache")),
        (304, Some("HIT"))
    );
    let other = get(&tagged, &[DE, ("if-none-match", "\"v0\"")]);
    assert_eq!(
        (other.status, other.body.as_str()),
        (200, hit.body.as_str())
    );
    // A HEAD is answered from the stored GET.
    let head = send("HEAD", &tagged, &[DE], "");
    assert_eq!((head.status, head.header("x-cache")), (200, Some("HIT")));
    assert_eq!(
        head.header("content-length"),
        Some(hit.body.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
    assert_eq!(edge.origin.count("/api/data/tagged"), 1);

    // An operator purges by path prefix on the admin address; other entries stay.
    let purge = format!("{}/cache/purge?prefix=/api/data/tag", edge.node.admin);
    assert_eq!(get(&purge, &[]).status, 405, "a GET purges nothing");
    let purged = send("POST", &purge, &[], "");
    assert_eq!(purged.status, 200, "{}", purged.body);
    assert_eq!(purged.json()["purged"], 1, "{}", purged.body);
    assert_eq!(get(&tagged, &[DE]).header("x-cache"), Some("MISS"));
    assert_eq!(get(&url, &[DE]).header("x-cache"), Some("HIT"));
    assert_eq!(edge.origin.count("/api/data/tagged"), 2);

    // ttl 1s, stale-while-revalidate 1s: stale, refreshed in the background, then fresh.
    std::thread::sleep(Duration::from_millis(1200));
    let stale = get(&url, &[DE]);
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(stale.body, first.body);
    let refreshed = e2e::eventually(&url, &[DE], Duration::from_secs(5), |r| {
        r.header("x-cache") == Some("HIT") && r.body != first.body
    });
    assert_eq!(
        refreshed.header("x-cache"),
        Some("HIT"),
        "{}",
        refreshed.body
    );
    // Two keys fetched once each, then one background refresh.
    assert_eq!(edge.origin.count("/api/data/catalog"), 3);

    // Past ttl + stale-while-revalidate the entry is gone.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(get(&url, &[DE]).header("x-cache"), Some("MISS"));
    assert_eq!(edge.origin.count("/api/data/catalog"), 4);
}

/// A successful write to a URL (here a `PUT` through the example's write route) removes
/// what the cache stored for it, every variant; a refused write leaves it (RFC 9111 4.4).
#[test]
fn a_successful_write_invalidates_the_cached_target() {
    let edge = Edge::start("eu-west", example("eu-west"), &[]);
    let url = edge.url("/api/data/items/7");
    let gzip = [DE, ("accept-encoding", "gzip")];
    for headers in [&[DE][..], &gzip] {
        assert_eq!(get(&url, headers).header("x-cache"), Some("MISS"));
        assert_eq!(get(&url, headers).header("x-cache"), Some("HIT"));
    }
    let other = edge.url("/api/data/items/8");
    get(&other, &[DE]);

    assert_eq!(send("PUT", &url, &[DE], r#"{"name":"new"}"#).status, 200);
    for headers in [&[DE][..], &gzip] {
        let after = get(&url, headers);
        assert_eq!(after.header("x-cache"), Some("MISS"), "{headers:?}");
    }
    assert_eq!(
        edge.origin
            .seen()
            .iter()
            .filter(|s| s.target == "/api/data/items/7" && s.method == "GET")
            .count(),
        4,
        "both variants fetched again after the write"
    );
    assert_eq!(
        get(&other, &[DE]).header("x-cache"),
        Some("HIT"),
        "another target keeps its entry"
    );

    // The origin refuses this write: what was stored still stands.
    let refused = edge.url("/api/data/refuse-writes");
    get(&refused, &[DE]);
    assert_eq!(send("DELETE", &refused, &[DE], "").status, 409);
    assert_eq!(get(&refused, &[DE]).header("x-cache"), Some("HIT"));
}

#[test]
fn jwt_routes_need_a_valid_token() {
    let edge = Edge::start("eu-west", example("eu-west"), &[]);
    let url = edge.url("/api/auth/me");
    let missing = get(&url, &[DE]);
    assert_eq!(missing.status, 401);
    // No token, no error code in the challenge (RFC 6750, 3.1).
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"users\""),
        "{:?}",
        missing.headers
    );

    let claims = |exp: u64, aud: &str| json!({ "sub": "user-1", "iss": "https://auth.example.com", "aud": aud, "exp": exp });
    let bearer = |token: &str| format!("Bearer {token}");
    let valid = bearer(&e2e::token(&claims(e2e::now() + 600, "api")));
    let spoofed = r#"{"sub":"admin"}"#;
    let reply = get(
        &url,
        &[
            DE,
            ("authorization", &valid),
            ("edgepack-identity", spoofed),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(edge.origin.count("/api/auth/me"), 1);
    // The origin gets the verified claims, never the client's header of that name.
    let seen = edge
        .origin
        .last("/api/auth/me")
        .expect("reached the origin");
    let identities: Vec<_> = seen.headers.get_all("edgepack-identity").iter().collect();
    assert_eq!(identities.len(), 1, "{identities:?}");
    let identity: serde_json::Value =
        serde_json::from_slice(identities[0].as_bytes()).expect("JSON claims");
    assert_eq!(identity["sub"], "user-1");
    // On a route without `auth` the client's header is removed all the same.
    get(
        &edge.url("/api/data/who"),
        &[DE, ("edgepack-identity", spoofed)],
    );
    let seen = edge
        .origin
        .last("/api/data/who")
        .expect("reached the origin");
    assert!(!seen.headers.contains_key("edgepack-identity"));

    let expired = bearer(&e2e::token(&claims(e2e::now() - 3600, "api")));
    let refused = get(&url, &[DE, ("authorization", &expired)]);
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some(
            "Bearer realm=\"users\", error=\"invalid_token\", error_description=\"the token has expired\""
        ),
    );
    let wrong_audience = bearer(&e2e::token(&claims(e2e::now() + 600, "billing")));
    assert_eq!(
        get(&url, &[DE, ("authorization", &wrong_audience)]).status,
        401
    );

    // `alg: none`, and HS256 keyed with the public key (algorithm confusion).
    let b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let payload = b64(claims(e2e::now() + 600, "api"));
    let none = format!(
        "Bearer {}.{payload}.",
        b64(json!({ "alg": "none", "typ": "JWT" }))
    );
    assert_eq!(get(&url, &[DE, ("authorization", &none)]).status, 401);
    let public_pem =
        std::fs::read(edgepack_tests::workspace_root().join("examples/global-api/keys/auth.pem"))
            .expect("the example's public key");
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(e2e::now() + 600, "api"),
        &jsonwebtoken::EncodingKey::from_secret(&public_pem),
    )
    .expect("an HS256 token");
    assert_eq!(
        get(&url, &[DE, ("authorization", &bearer(&confused))]).status,
        401
    );
    assert_eq!(
        edge.origin.count("/api/auth/me"),
        1,
        "only the valid token got through"
    );
}

/// A JWT provider whose HS secret the nodes hold: the node verifies with the secret it was
/// given, and refuses a bundle that names a secret it lacks, serving on.
#[test]
fn jwt_secrets_held_by_the_node_verify_tokens() {
    let fixture = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = |secret: &str| {
        format!(
            r##"edgepack 1
region "eu-west" zone="GLOBAL"
jwt "partners" {{
    algorithms "HS256"
    secret "{secret}"
    issuer "https://partners.example.com"
}}
route "/api/health" {{
    respond 200 json=#"{{"ok":true}}"#
}}
route "/partners/*" {{
    auth jwt="partners"
    respond 200 json=#"{{"partner":true}}"#
}}
"##
        )
    };
    let build = |name: &str, secret: &str, version: u64| {
        let dir = dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("edgepack.kdl"), policy(secret)).expect("write the policy");
        e2e::build(&dir, &fixture.keys, &dir.join("out"), version, &["eu-west"])
            .remove("eu-west")
            .expect("the region's bundle")
    };
    let v1 = build("v1", "partner-hmac", 1);
    let secret = b"0123456789abcdef0123456789abcdef-partners";
    let secret_file = dir.path().join("partner-hmac");
    std::fs::write(&secret_file, [&secret[..], b"\n"].concat()).expect("write the secret");
    let flag = format!("partner-hmac={}", secret_file.display());
    let edge = Edge::start("eu-west", &v1, &["--jwt-secret", &flag]);

    let token = |key: &[u8]| {
        let claims = json!({ "sub": "acme", "iss": "https://partners.example.com", "exp": e2e::now() + 600 });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .expect("an HS256 token");
        format!("Bearer {token}")
    };
    let url = edge.url("/partners/orders");
    let signed = get(&url, &[("authorization", &token(secret))]);
    assert_eq!(signed.status, 200, "{}", signed.body);
    assert_eq!(signed.body, r#"{"partner":true}"#);
    let forged = get(
        &url,
        &[(
            "authorization",
            &token(b"another-secret-of-at-least-32-bytes"),
        )],
    );
    assert_eq!(forged.status, 401);
    assert_eq!(get(&url, &[]).status, 401);

    // The next bundle names a secret this node was not given: refused, version 1 serves on.
    offer_refused(&edge, &build("v2", "partner-hmac-next", 2), "keys", 1);
    assert!(
        edge.node
            .log()
            .contains("no secret `partner-hmac-next` (give it with --jwt-secret"),
        "{}",
        edge.node.log()
    );
    assert_eq!(get(&url, &[("authorization", &token(secret))]).status, 200);
}

#[test]
fn cors_preflight_and_actual_requests() {
    let edge = Edge::start("eu-west", example("eu-west"), &[]);
    let url = edge.url("/api/data/items");
    let app = ("origin", "https://app.example.com");
    let preflight = send(
        "OPTIONS",
        &url,
        &[DE, app, ("access-control-request-method", "GET")],
        "",
    );
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        preflight.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    assert!(
        preflight
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("GET") && m.contains("DELETE"))
    );
    assert_eq!(
        edge.origin.count("/"),
        0,
        "a preflight is answered at the edge"
    );

    let actual = get(&url, &[DE, app]);
    assert_eq!(actual.status, 200);
    assert_eq!(
        actual.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        actual
            .header("access-control-expose-headers")
            .is_some_and(|h| h.contains("x-request-id"))
    );
    // A cached answer is the browser's as much as the first one.
    let hit = get(&url, &[DE, app]);
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(
        hit.header("access-control-allow-origin"),
        Some("https://app.example.com"),
        "a cache hit carries the CORS headers"
    );
    assert_eq!(hit.header("access-control-allow-credentials"), Some("true"));
    // Without an `Origin` the answer has no CORS headers, but says it depends on one.
    let plain = get(&url, &[DE]);
    assert_eq!(plain.header("x-cache"), Some("HIT"));
    assert_eq!(plain.header("access-control-allow-origin"), None);
    assert!(
        plain.headers.get_all("vary").iter().any(|v| v == "origin"),
        "{:?}",
        plain.headers
    );
    // An error the route's effects give reaches the page too: without a token, 401.
    let anonymous = get(&edge.url("/api/auth/me"), &[DE, app]);
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("access-control-allow-origin"),
        Some("https://app.example.com"),
        "a 401 on a CORS route is readable by the page"
    );
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Bearer realm=\"users\""),
        "no error code when no token was sent (RFC 6750 3.1)"
    );

    let stranger = send(
        "OPTIONS",
        &url,
        &[
            DE,
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
        "",
    );
    assert_eq!(stranger.header("access-control-allow-origin"), None);
}

#[test]
fn personal_data_of_eu_requests_does_not_leave_the_zone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("pseudonymize.key");
    std::fs::write(&key_file, "a node secret of at least sixteen bytes").expect("write key");
    let key_arg = key_file.display().to_string();
    let edge = Edge::start(
        "us-east",
        example("us-east"),
        &["--pseudonymize-key-file", &key_arg],
    );
    let personal = [
        ("x-user-id", "user-42"),
        ("x-user-email", "ada@example.eu"),
        ("x-user-phone", "+49 30 1234567"),
    ];
    let send_from = |country: &'static str, path: &str| {
        let mut headers = vec![("cf-ipcountry", country)];
        headers.extend(personal);
        let reply = get(&edge.url(path), &headers);
        assert_eq!(reply.status, 200, "{}", reply.body);
        edge.origin.last(path).expect("the origin saw it")
    };
    // A German user served in us-east: the request leaves the EU.
    let eu = send_from("DE", "/api/data/eu-1");
    let header = |seen: &e2e::Seen, name: &str| {
        seen.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header(&eu, "x-user-email"), None);
    assert_eq!(header(&eu, "x-user-phone"), None);
    let pseudonym = header(&eu, "x-user-id").expect("x-user-id is pseudonymized, not dropped");
    assert!(
        pseudonym.starts_with("ps1-") && !pseudonym.contains("user-42"),
        "{pseudonym}"
    );
    let again = send_from("DE", "/api/data/eu-2");
    assert_eq!(
        header(&again, "x-user-id").as_deref(),
        Some(pseudonym.as_str()),
        "the same person gets the same pseudonym"
    );
    // A US user's headers are theirs to send.
    let us = send_from("US", "/api/data/us-1");
    assert_eq!(
        header(&us, "x-user-email").as_deref(),
        Some("ada@example.eu")
    );
    assert_eq!(header(&us, "x-user-id").as_deref(), Some("user-42"));
}

#[test]
fn without_a_pseudonymization_key_the_header_is_dropped() {
    let edge = Edge::start("us-east", example("us-east"), &[]);
    let reply = get(&edge.url("/api/data/eu-3"), &[DE, ("x-user-id", "user-42")]);
    assert_eq!(reply.status, 200);
    let seen = edge
        .origin
        .last("/api/data/eu-3")
        .expect("the origin saw it");
    assert_eq!(seen.headers.get("x-user-id"), None);
}

/// Waits until the node serves bundle `version`.
fn wait_for_version(edge: &Edge, version: u64) -> e2e::Reply {
    let expected = version.to_string();
    let reply = e2e::eventually(
        &edge.url("/api/health"),
        &[DE],
        Duration::from_secs(20),
        |r| r.header("x-edge-bundle") == Some(expected.as_str()),
    );
    assert_eq!(
        reply.header("x-edge-bundle"),
        Some(expected.as_str()),
        "bundle {version} not served; log:\n{}",
        edge.node.log()
    );
    reply
}

/// Offers a bundle, waits until the node has refused it, and checks it kept `serving`.
/// The refusal is found by the bundle's sha256: the file event and the SIGHUP may each
/// log one for the same file, in either order with the previous offer's.
fn offer_refused(edge: &Edge, bytes: &[u8], reason: &str, serving: u64) {
    let sha256 = edgepack_bundles::bundle::sha256_hex(bytes);
    let refusal_of = |log: &str| -> Option<String> {
        log.lines()
            .find(|l| l.contains("bundle refused") && l.contains(&sha256))
            .map(str::to_string)
    };
    e2e::install(bytes, &edge.bundles, "eu-west");
    edge.node.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while refusal_of(&edge.node.log()).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = edge.node.log();
    let refusal =
        refusal_of(&log).unwrap_or_else(|| panic!("no refusal logged for {reason}:\n{log}"));
    let label = format!(r#""reason":"{reason}""#);
    assert!(refusal.contains(&label), "expected {label}: {refusal}");
    let reply = get(&edge.url("/api/health"), &[DE]);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("x-edge-bundle"),
        Some(serving.to_string().as_str())
    );
}

#[test]
fn bad_bundles_are_refused_while_the_good_one_keeps_serving() {
    let fixture = fixture();
    let good = example("eu-west");
    let mut edge = Edge::start("eu-west", good, &[]);
    let v2 = e2e::with_version(good, 2, &fixture.keys);
    e2e::install(&v2, &edge.bundles, "eu-west");
    wait_for_version(&edge, 2);

    // A higher version with a flipped byte: only verification can refuse it.
    let mut tampered = e2e::with_version(good, 5, &fixture.keys);
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    offer_refused(&edge, &tampered, "signature", 2);

    let stranger = e2e::keygen(&fixture.dir, "stranger");
    offer_refused(
        &edge,
        &e2e::with_version(good, 6, &stranger),
        "signature",
        2,
    );
    assert!(edge.node.log().contains("not trusted"));
    offer_refused(&edge, good, "version", 2);
    let us = e2e::with_version(example("us-east"), 7, &fixture.keys);
    offer_refused(&edge, &us, "region", 2);
    let expired = e2e::repack(good, &fixture.keys, |manifest| {
        manifest.version = 8;
        manifest.expires = Some(e2e::now() - 60);
    });
    offer_refused(&edge, &expired, "expiry", 2);
    // Signed, but its plan names an origin at an address no request can be sent to.
    let unusable_origin = e2e::repack_with(good, &fixture.keys, |manifest, files| {
        manifest.version = 8;
        let plan = files.get_mut("plan.json").expect("a plan");
        let mut json: serde_json::Value = serde_json::from_slice(plan).expect("plan JSON");
        json["origins"][0]["host"] = "api eu.internal".into();
        *plan = serde_json::to_vec(&json).expect("plan JSON");
    });
    offer_refused(&edge, &unusable_origin, "plan", 2);
    assert!(
        edge.node
            .log()
            .contains("has an address the node cannot use"),
        "the refusal says why"
    );

    let metrics = edge.node.metrics();
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with(r#"edgepack_activations_total{result="refused""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused >= 6.0, "refusals are counted:\n{metrics}");
    assert!(
        metrics.contains(r#"edgepack_bundle_version 2"#),
        "{metrics}"
    );

    // Restart with the tampered file in place: the node serves its last good bundle.
    e2e::install(&tampered, &edge.bundles, "eu-west");
    edge.restart(&[]);
    wait_for_version(&edge, 2);
    // And version 1, below the high-water mark, is still refused after the restart.
    e2e::install(good, &edge.bundles, "eu-west");
    edge.restart(&[]);
    wait_for_version(&edge, 2);
    // A higher good version goes in.
    e2e::install(
        &e2e::with_version(good, 9, &fixture.keys),
        &edge.bundles,
        "eu-west",
    );
    wait_for_version(&edge, 9);
}

/// With `--require-expiry`, a bundle without an expiry time is refused, at start as later,
/// and one that expires in the future is served.
#[test]
fn with_require_expiry_a_bundle_without_one_is_refused() {
    let fixture = fixture();
    let good = example("eu-west");
    let edge = Edge::start("eu-west", good, &["--require-expiry"]);
    let unserved = get(&edge.url("/api/health"), &[DE]);
    assert_eq!(unserved.status, 503, "{}", unserved.body);
    let log = edge.node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("bundle refused") && l.contains(r#""reason":"expiry""#)),
        "{log}"
    );
    let expiring = e2e::repack(good, &fixture.keys, |manifest| {
        manifest.version = 2;
        manifest.expires = Some(e2e::now() + 3600);
    });
    e2e::install(&expiring, &edge.bundles, "eu-west");
    wait_for_version(&edge, 2);
    let lasting = e2e::with_version(good, 3, &fixture.keys);
    offer_refused(&edge, &lasting, "expiry", 2);
}

#[test]
fn fifty_swaps_under_concurrent_load_lose_no_request() {
    let fixture = fixture();
    let edge = Edge::start("eu-west", example("eu-west"), &[]);
    let url = edge.url("/api/health");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (url, stop, served, failures) =
                (url.clone(), stop.clone(), served.clone(), failures.clone());
            e2e::runtime().spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match e2e::send_async("GET", &url, &[DE], "").await {
                        Ok(reply) if reply.status == 200 => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(reply) => failures
                            .lock()
                            .expect("failures")
                            .push(format!("{}: {}", reply.status, reply.body)),
                        Err(error) => failures.lock().expect("failures").push(error),
                    }
                }
            })
        })
        .collect();
    let swaps = 50;
    for version in 2..2 + swaps {
        // Alternate the policy so each swap changes what is served.
        let (source, body) = if version % 2 == 0 {
            (&fixture.variant["eu-west"], r#"{"status":"healthy-b"}"#)
        } else {
            (&fixture.example["eu-west"], r#"{"status":"healthy"}"#)
        };
        let served_before = served.load(Ordering::Relaxed);
        e2e::install(
            &e2e::with_version(source, version, &fixture.keys),
            &edge.bundles,
            "eu-west",
        );
        let reply = wait_for_version(&edge, version);
        assert_eq!(reply.body, body, "version {version} serves its own policy");
        // Keep load flowing across the swap.
        let deadline = Instant::now() + Duration::from_secs(5);
        while served.load(Ordering::Relaxed) < served_before + 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        e2e::runtime().block_on(worker).expect("a load worker");
    }
    let failures = failures.lock().expect("failures");
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let served = served.load(Ordering::Relaxed);
    assert!(served >= 1000, "only {served} requests under load");
    // The last bundle serves before its log line has been read from the node's stderr.
    edge.node.wait_for_log(
        &format!(r#""version":{},"previous""#, 1 + swaps),
        Duration::from_secs(5),
    );
    assert_eq!(
        edge.node.log_count("bundle activated"),
        1 + swaps as usize,
        "{}",
        edge.node.log()
    );
}

/// Sends raw bytes on a fresh connection and returns what came back before it closed.
fn raw(edge: &Edge, bytes: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(edge.node.listen).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// An origin that sends the start of an answer and then nothing is cut off once its
/// response timeout passes with no bytes: the client's connection is not held for ever, and
/// the client can tell the answer broke off (no last chunk).
#[test]
fn an_origin_that_stalls_mid_answer_is_cut_off_at_its_response_timeout() {
    let fixture = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("edgepack.kdl"),
        r##"edgepack 1
region "eu-west" zone="GLOBAL"
origin "api" response-timeout="1s" {
    zone "GLOBAL" url="https://api-eu.internal:8443"
}
route "/api/health" {
    respond 200 json=#"{"status":"healthy"}"#
}
route "/api/data/*" {
    proxy "api"
}
"##,
    )
    .expect("write the policy");
    let bundle = e2e::build(
        dir.path(),
        &fixture.keys,
        &dir.path().join("out"),
        1,
        &["eu-west"],
    )
    .remove("eu-west")
    .expect("the region's bundle");
    let edge = Edge::start("eu-west", &bundle, &[]);
    let started = Instant::now();
    let reply = raw(
        &edge,
        b"GET /api/data/stall-body HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let took = started.elapsed();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains(r#"{"partial":"#),
        "the first bytes came: {reply}"
    );
    assert!(
        !reply.ends_with("0\r\n\r\n"),
        "not ended as complete: {reply:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "cut off after about 1 s, not held: {took:?}"
    );
    // The node serves on.
    let health = get(&edge.url("/api/health"), &[DE]);
    assert_eq!(health.status, 200);
}

#[test]
fn ambiguous_framing_oversized_requests_and_slow_clients_are_refused() {
    let edge = Edge::start(
        "eu-west",
        example("eu-west"),
        &[
            "--max-body",
            "1024",
            "--header-timeout",
            "1s",
            "--max-header-bytes",
            "8192",
            "--max-headers",
            "40",
        ],
    );
    let smuggled = raw(
        &edge,
        b"POST /api/data/x HTTP/1.1\r\nHost: a\r\ncf-ipcountry: DE\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    );
    assert!(smuggled.starts_with("HTTP/1.1 400"), "{smuggled}");
    assert_eq!(edge.origin.count("/"), 0);
    // A coding besides chunked would reach the WAF and the origin still applied (hyper
    // only removes the chunking): a gzip-compressed attack is refused, not passed on.
    let compressed = raw(
        &edge,
        b"POST /api/data/x HTTP/1.1\r\nHost: a\r\ncf-ipcountry: DE\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nx=1\r\n\r\n0\r\n\r\n",
    );
    assert!(
        compressed.starts_with("HTTP/1.1 501") && compressed.contains("transfer coding"),
        "{compressed}"
    );
    assert_eq!(edge.origin.count("/"), 0);
    let chunked = raw(
        &edge,
        b"POST /api/health HTTP/1.1\r\nHost: a\r\ncf-ipcountry: DE\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n3\r\nx=1\r\n0\r\n\r\n",
    );
    assert!(chunked.starts_with("HTTP/1.1 200"), "{chunked}");

    // The host the policy routes on is the host the origin is told of: a request that
    // names none, two, or one that is not a host is refused.
    for (head, problem) in [
        ("GET /api/data/x HTTP/1.1\r\n", "needs a Host header"),
        (
            "GET /api/data/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
            "one Host header",
        ),
        ("GET /api/data/x HTTP/1.1\r\nHost: a@b\r\n", "is not a host"),
    ] {
        let reply = raw(
            &edge,
            format!("{head}cf-ipcountry: DE\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(
            reply.starts_with("HTTP/1.1 400") && reply.contains(problem),
            "{head:?}: {reply}"
        );
    }
    assert_eq!(edge.origin.count("/"), 0);
    let http10 = raw(
        &edge,
        b"GET /api/health HTTP/1.0\r\ncf-ipcountry: DE\r\n\r\n",
    );
    assert!(http10.starts_with("HTTP/1.0 200"), "{http10}");

    let big_body = "x".repeat(4096);
    let reply = send("POST", &edge.url("/api/data/x"), &[DE], &big_body);
    assert_eq!(reply.status, 413);

    // Requests the policy's request block cannot hold are the client's error, not the
    // policy's, and are never sent on: more arguments than a request may carry, and a
    // multipart content type naming two boundaries (which one the origin takes is a guess).
    let many_args = format!("/api/data/x?{}", "a=1&".repeat(1100));
    let two_boundaries = (
        "content-type",
        "multipart/form-data; boundary=a; xboundary=b",
    );
    let form = "--a\r\nContent-Disposition: form-data; name=q\r\n\r\n1\r\n--a--\r\n";
    for (method, path, headers, body, status, says) in [
        (
            "GET",
            many_args.as_str(),
            vec![DE],
            "",
            414,
            "more than 1024 arguments",
        ),
        (
            "POST",
            "/api/data/x",
            vec![DE, two_boundaries],
            form,
            400,
            "more than one boundary",
        ),
    ] {
        let reply = send(method, &edge.url(path), &headers, body);
        assert_eq!(reply.status, status, "{}", reply.body);
        assert!(reply.body.contains(says), "{}", reply.body);
    }
    assert_eq!(edge.origin.count("/"), 0);

    let big_head = format!(
        "GET /api/health HTTP/1.1\r\nHost: a\r\nx-filler: {}\r\n\r\n",
        "y".repeat(16 * 1024)
    );
    let answer = raw(&edge, big_head.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // More headers than `--max-headers`, each short: refused the same way.
    let many_headers: String = (0..60).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let answer = raw(
        &edge,
        format!("GET /api/health HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A client that never finishes its head is let go.
    let started = Instant::now();
    let answer = raw(&edge, b"GET /api/health HTTP/1.1\r\nHost: a\r\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    // The node still serves others: a new client on a connection of its own (the shared
    // client's pooled connections have idled past the one-second header timeout, and the
    // node may be closing one as the client reuses it).
    let answer = raw(
        &edge,
        b"GET /api/health HTTP/1.1\r\nHost: a\r\ncf-ipcountry: DE\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A request target with a host of its own wins over `Host` (RFC 9112 3.2.2).
    let absolute = raw(
        &edge,
        b"GET http://b.example/api/data/absolute HTTP/1.1\r\nHost: a.example\r\ncf-ipcountry: DE\r\nConnection: close\r\n\r\n",
    );
    assert!(absolute.starts_with("HTTP/1.1 200"), "{absolute}");
    let seen = edge
        .origin
        .last("/api/data/absolute")
        .expect("the origin saw it");
    assert_eq!(
        seen.headers
            .get("x-forwarded-host")
            .and_then(|v| v.to_str().ok()),
        Some("b.example")
    );
}

#[test]
fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let edge = Edge::start("eu-west", example("eu-west"), &["--idle-timeout", "1s"]);
    let started = Instant::now();
    // A keep-alive request, answered; then the client says nothing more.
    let answer = raw(
        &edge,
        b"GET /api/health HTTP/1.1\r\nHost: a\r\ncf-ipcountry: DE\r\n\r\n",
    );
    let held = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        held >= Duration::from_secs(1) && held < Duration::from_secs(4),
        "closed after {held:?}"
    );
    // A request slower than a quarter of the timeout is not cut short by the idle check.
    let reply = get(&edge.url("/api/data/slow/idle"), &[DE]);
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn tls_termination_serves_http2_and_reloads_its_certificate_on_sighup() {
    let fixture = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let first = fixture.pki.issue(&["localhost"], dir.path(), "node");
    let cert = first.cert_file.display().to_string();
    let key = first.key_file.display().to_string();
    let edge = Edge::start(
        "eu-west",
        example("eu-west"),
        &["--tls-cert", &cert, "--tls-key", &key],
    );
    let (version, status, served_cert) = tls_get(&edge, &fixture.pki, b"h2");
    assert_eq!((version, status), (http::Version::HTTP_2, 200));
    assert_eq!(served_cert, first.chain[0]);
    let (version, status, _) = tls_get(&edge, &fixture.pki, b"http/1.1");
    assert_eq!((version, status), (http::Version::HTTP_11, 200));

    let second = fixture.pki.issue(&["localhost"], dir.path(), "node");
    assert_ne!(second.chain[0], first.chain[0]);
    edge.node.signal("HUP");
    assert!(
        edge.node
            .wait_for_log("TLS certificate reloaded", Duration::from_secs(10))
    );
    let (_, status, served_cert) = tls_get(&edge, &fixture.pki, b"h2");
    assert_eq!(status, 200);
    assert_eq!(
        served_cert, second.chain[0],
        "new connections get the new certificate"
    );
}

/// GET /api/health over TLS offering one ALPN protocol: the HTTP version, the status and
/// the certificate the node presented.
fn tls_get(
    edge: &Edge,
    pki: &Pki,
    alpn: &[u8],
) -> (
    http::Version,
    u16,
    rustls::pki_types::CertificateDer<'static>,
) {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let config = Arc::new(pki.client_config(&[alpn]));
    let addr = edge.node.listen;
    e2e::runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the node");
        let served = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .expect("a certificate");
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        // hyper's connection-level client sends HTTP/1.1 in origin form and adds no `Host`.
        let request = http::Request::builder()
            .uri(format!("https://localhost:{}/api/health", addr.port()))
            .header("host", format!("localhost:{}", addr.port()))
            .header("cf-ipcountry", "DE")
            .body(Full::new(Bytes::new()))
            .expect("a request");
        let io = TokioIo::new(tls);
        let response = if h2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("HTTP/2 handshake");
            tokio::spawn(connection);
            sender.send_request(request).await.expect("HTTP/2 request")
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("HTTP/1 handshake");
            tokio::spawn(connection);
            let mut request = request;
            request
                .headers_mut()
                .insert("host", http::HeaderValue::from_static("localhost"));
            sender.send_request(request).await.expect("HTTP/1 request")
        };
        (response.version(), response.status().as_u16(), served)
    })
}

#[test]
fn sigterm_lets_requests_in_flight_finish_and_exits_zero() {
    // Two workers, each with its own runtime and origin connections: every one drains.
    let mut edge = Edge::start("eu-west", example("eu-west"), &["--workers", "2"]);
    const IN_FLIGHT: usize = 8;
    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let url = edge.url(&format!("/api/data/slow/{i}"));
            e2e::runtime().spawn(async move { e2e::send_async("GET", &url, &[DE], "").await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.origin.count("/api/data/slow") < IN_FLIGHT && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    edge.node.signal("TERM");
    for request in in_flight {
        let reply = e2e::runtime()
            .block_on(request)
            .expect("the request task")
            .expect("the request in flight is answered");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let status = edge
        .node
        .wait_exit(Duration::from_secs(15))
        .expect("the node exits");
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(edge.node.listen).is_err(),
        "no longer accepting"
    );
}

#[test]
fn metrics_and_health_describe_the_node() {
    let edge = Edge::start("eu-west", example("eu-west"), &[]);
    get(&edge.url("/api/health"), &[DE]);
    get(&edge.url("/api/data/m"), &[DE]);
    get(&edge.url("/api/data/m"), &[DE]);
    get(
        &edge.url("/api/data/1?q=1%20union%20select%20a%20from%20b"),
        &[DE],
    );
    let metrics = edge.node.metrics();
    for expected in [
        r#"edgepack_requests_total{route="/api/health""#,
        "edgepack_request_duration_seconds_bucket",
        "edgepack_decide_duration_seconds_bucket",
        r#"edgepack_cache_lookups_total{result="hit"} 1"#,
        r#"edgepack_cache_lookups_total{result="miss"} 1"#,
        r#"edgepack_waf_blocks_total{rule="sqli-union"} 1"#,
        r#"edgepack_bundle_info{region="eu-west""#,
        "edgepack_bundle_version 1",
        r#"edgepack_activations_total{result="activated",reason="ok"} 1"#,
        "edgepack_upstream_duration_seconds_bucket",
        "# EOF",
    ] {
        assert!(metrics.contains(expected), "no {expected} in:\n{metrics}");
    }
    let health = get(&format!("{}/healthz", edge.node.admin), &[]);
    assert_eq!(health.status, 200);
    let health = health.json();
    assert_eq!(health["region"], "eu-west");
    assert_eq!(health["version"], 1);
    assert_eq!(
        health["sha256"].as_str().map(str::len),
        Some(64),
        "{health}"
    );
}

#[test]
fn a_second_node_on_the_same_address_is_refused_and_the_first_serves_alone() {
    let edge = Edge::start("eu-west", example("eu-west"), &["--workers", "2"]);
    let listen = edge.node.listen.to_string();
    let state = tempfile::tempdir().expect("tempdir");
    let admin = format!("127.0.0.1:{}", free_port());
    let args = node_args(
        &edge.bundles,
        state.path(),
        &edge.origin,
        &["--listen", &listen, "--admin", &admin],
    );
    let mut second = std::process::Command::new(e2e::binary("edgepack-node"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the second node starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().expect("the second node's status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second node on {listen} is still running: it shares the address");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = second.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {listen}")),
        "{stderr}"
    );
    // Its workers' sockets would share the port's connections: none is left behind.
    for _ in 0..20 {
        let reply = get(&edge.url("/api/health"), &[DE]);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn edgepack_dev_serves_and_swaps_in_every_save() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    e2e::copy_dir(
        &edgepack_tests::workspace_root().join("examples/global-api"),
        &policy,
    );
    let (port, admin) = (free_port(), free_port());
    let mut dev = std::process::Command::new(e2e::binary("edgepack"))
        .args(["dev", &policy.display().to_string(), "--region", "eu-west"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start edgepack dev");
    let url = format!("http://127.0.0.1:{port}/api/health");
    let healthy = |r: &e2e::Reply| r.body == r#"{"status":"healthy"}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Ok(reply) = e2e::runtime().block_on(e2e::send_async("GET", &url, &[DE], "")) {
            break reply;
        }
        assert!(Instant::now() < deadline, "edgepack dev did not serve");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(healthy(&first), "{}", first.body);
    assert_eq!(first.header("x-edge-bundle"), Some("1"));

    let entry = policy.join("edgepack.kdl");
    let text = std::fs::read_to_string(&entry).expect("read");
    std::fs::write(
        &entry,
        text.replace(r#"{"status":"healthy"}"#, r#"{"status":"saved"}"#),
    )
    .expect("save");
    let saved = e2e::eventually(&url, &[DE], Duration::from_secs(30), |r| {
        r.body == r#"{"status":"saved"}"#
    });
    assert_eq!(saved.body, r#"{"status":"saved"}"#);
    assert_eq!(saved.header("x-edge-bundle"), Some("2"));

    // Files the policy does not read (a log, notes) come and go without a rebuild.
    std::fs::write(policy.join("dev.log"), "a line\n").expect("write a log");
    std::fs::write(policy.join("notes.txt"), "to do\n").expect("write notes");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get(&url, &[DE]).header("x-edge-bundle"), Some("2"));

    // A save with an error keeps the last good build serving.
    let text = std::fs::read_to_string(&entry).expect("read");
    std::fs::write(&entry, format!("{text}\nrout \"/typo\" {{}}\n")).expect("save");
    std::thread::sleep(Duration::from_secs(2));
    let still = get(&url, &[DE]);
    assert_eq!(
        (still.body.as_str(), still.header("x-edge-bundle")),
        (r#"{"status":"saved"}"#, Some("2"))
    );
    e2e::send_signal(dev.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Ok(Some(status)) = dev.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "edgepack dev did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// Sends a WebSocket upgrade for `path` on a new connection; returns the connection and the
/// response head.
fn open_websocket(edge: &Edge, path: &str) -> (std::net::TcpStream, String) {
    let address = edge.node.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).expect("connect to the node");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("send the upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read the head");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).to_lowercase())
}

#[test]
fn websocket_upgrades_go_through_where_the_route_takes_them() {
    let fixture = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).expect("mkdir");
    std::fs::write(
        policy.join("edgepack.kdl"),
        r#"edgepack 1
region "eu-west" zone="GLOBAL"
origin "api" { zone "GLOBAL" url="https://api-eu.internal:8443"; }
route "/chat/*" {
    cache ttl="1m"
    proxy "api" websocket=#true
}
route "/plain/*" {
    proxy "api"
}
"#,
    )
    .expect("write the policy");
    let built = e2e::build(
        &policy,
        &fixture.keys,
        &dir.path().join("out"),
        1,
        &["eu-west"],
    );
    let edge = Edge::start("eu-west", &built["eu-west"], &["--idle-timeout", "1s"]);
    let tunnels = || {
        let metrics = get(&format!("{}/metrics", edge.node.admin), &[]).body;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("edgepack_websocket_tunnels "))
            .map(str::to_string)
    };

    // A plain GET of the same path is stored; the upgrade must still reach the origin.
    let stored = get(&edge.url("/chat/ws"), &[]);
    assert_eq!(
        (stored.status, stored.header("x-cache")),
        (200, Some("MISS"))
    );
    let (mut chat, head) = open_websocket(&edge, "/chat/ws");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("x-edge-region: eu-west"), "{head}");
    for message in ["hello", "and again, both ways"] {
        chat.write_all(message.as_bytes()).expect("send");
        let mut echoed = vec![0u8; message.len()];
        chat.read_exact(&mut echoed).expect("the origin's echo");
        assert_eq!(echoed, message.as_bytes());
    }
    let seen = edge.origin.last("/chat/ws").expect("reached the origin");
    assert_eq!(
        seen.headers.get("upgrade").map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
    assert_eq!(tunnels().as_deref(), Some("1"));
    // Quiet for longer than the idle timeout, the tunnel is closed and counted out.
    std::thread::sleep(Duration::from_millis(1500));
    let mut rest = Vec::new();
    assert_eq!(chat.read_to_end(&mut rest).expect("read to the close"), 0);
    assert_eq!(tunnels().as_deref(), Some("0"));

    // A route that does not take upgrades proxies the request as a plain one.
    let (_plain, head) = open_websocket(&edge, "/plain/ws");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let seen = edge.origin.last("/plain/ws").expect("reached the origin");
    assert!(!seen.headers.contains_key("upgrade"));

    // Plain requests on the WebSocket route are proxied as ever.
    assert_eq!(get(&edge.url("/chat/history"), &[]).status, 200);
}
