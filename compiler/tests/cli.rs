//! The `edgepack` binary as users run it: exit statuses, output formats, colour, `fmt`.

mod common;

use common::{build_in, copy_dir, edgepack, edited_example, policy_dir, root, text};

/// A copy of the main example with three mistakes appended, in a temporary directory.
fn broken_example() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    edited_example(dir.path(), |source| {
        source
            + "rout \"/typo/*\" { respond 200 }\nzone \"TEST\" { countries \"ZZ\" }\nroute \"/api/xx/*\" { proxy \"no-such-origin\" }\n"
    });
    dir
}

#[test]
fn a_clean_policy_exits_zero_with_a_summary() {
    let out = edgepack(&["check", "examples/global-api"], &root());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.trim_end().ends_with("0 errors, 0 warnings"),
        "{stderr}"
    );
}

#[test]
fn every_mistake_is_reported_in_one_run_without_colour_off_a_terminal() {
    let dir = broken_example();
    let out = edgepack(&["check", "."], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for needle in [
        "unknown node `rout`",
        "did you mean `route`?",
        "`ZZ`",
        "no origin named `no-such-origin`",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains('\u{1b}'),
        "colour escapes written to a pipe"
    );
    assert!(
        stderr.trim_end().ends_with("3 errors, 0 warnings"),
        "{stderr}"
    );
}

#[test]
fn json_format_has_codes_and_positions() {
    let dir = broken_example();
    let out = edgepack(&["check", "--format", "json", "."], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(report["errors"], 3);
    let diagnostics = report["diagnostics"].as_array().expect("diagnostics");
    let codes: Vec<&str> = diagnostics
        .iter()
        .filter_map(|d| d["code"].as_str())
        .collect();
    assert_eq!(
        codes,
        [
            "edgepack::node::unknown",
            "edgepack::country::invalid",
            "edgepack::ref::undefined"
        ]
    );
    let rout = &diagnostics[0];
    assert_eq!(rout["file"], "edgepack.kdl");
    assert!(rout["line"].as_u64().unwrap() > 100);
    assert_eq!(rout["column"], 1);
    assert_eq!(rout["end_column"], 5);
}

#[test]
fn github_format_prints_workflow_commands() {
    let dir = broken_example();
    let out = edgepack(&["check", "--format", "github", "."], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("::error "))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("::error file=edgepack.kdl,line="),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("title=edgepack%3A%3Anode%3A%3Aunknown::"),
        "{}",
        lines[0]
    );
}

#[test]
fn unreadable_paths_and_bad_usage_exit_two() {
    let out = edgepack(&["check", "no/such/policy"], &root());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no/such/policy: no such file or directory"));
    let dir = tempfile::tempdir().expect("temp dir");
    let out = edgepack(&["check", "."], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("has no edgepack.kdl"),
        "{}",
        text(&out.stderr)
    );
    let out = edgepack(&["check", "--format", "yaml"], &root());
    assert_eq!(out.status.code(), Some(2));
    let out = edgepack(&["frobnicate"], &root());
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn warnings_pass_unless_denied() {
    let dir = policy_dir(
        "edgepack 1\norigin \"spare\" { zone \"GLOBAL\" url=\"https://x.internal\" }\nroute \"/\" { respond 200 }\n",
    );
    let out = edgepack(&["check", "."], dir.path());
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("0 errors, 1 warning"));
    let out = edgepack(&["check", "--deny-warnings", "."], dir.path());
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn fmt_check_names_files_and_fmt_fixes_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&root().join("examples/global-api"), dir.path());
    let entry = dir.path().join("edgepack.kdl");
    let original = std::fs::read_to_string(&entry).expect("entry");
    let messy = original
        .replace("\n    ", "\n  ")
        .replace("zone \"US\" {", "zone   \"US\"   {");
    std::fs::write(&entry, &messy).expect("write");

    let out = edgepack(&["fmt", "--check", "."], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("would reformat: ./edgepack.kdl"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(&entry).expect("entry"),
        messy,
        "--check changed a file"
    );

    let out = edgepack(&["fmt", "."], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&entry).expect("entry"), original);
    let out = edgepack(&["fmt", "--check", "."], dir.path());
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn fmt_refuses_files_that_do_not_parse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.kdl");
    std::fs::write(&file, "route \"/x\" {\n").expect("write");
    let out = edgepack(&["fmt", "broken.kdl"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("edgepack::kdl::syntax"));
    assert_eq!(
        std::fs::read_to_string(&file).expect("file"),
        "route \"/x\" {\n"
    );
}

#[test]
fn help_teaches_the_commands() {
    let out = edgepack(&["--help"], &root());
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("check") && help.contains("fmt"), "{help}");
    let out = edgepack(&["check", "--help"], &root());
    let help = text(&out.stdout);
    assert!(
        help.contains("--format") && help.contains("Exit status"),
        "{help}"
    );
    // A two-command example keeps one command per line, ready to copy.
    let out = edgepack(&["push", "--help"], &root());
    let help = text(&out.stdout);
    assert!(
        help.lines()
            .any(|line| line.trim_start().starts_with("edgepack push dist ")),
        "{help}"
    );
}

#[test]
fn explain_shows_the_decision_the_route_and_the_rules_that_fired() {
    let explain = |request: &str, format: &str| {
        edgepack(
            &[
                "explain",
                "examples/global-api",
                "--region",
                "eu-west",
                "--country",
                "DE",
                "--request",
                request,
                "--format",
                format,
            ],
            &root(),
        )
    };
    let out = explain("GET /api/data/1?id=1%20union%20select%20password", "human");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let human = text(&out.stdout);
    assert!(human.starts_with("region eu-west decides: 403"), "{human}");
    assert!(human.contains("→ #1 GET,HEAD /api/data/*"), "{human}");
    assert!(
        human.contains("✓ sqli-union") && human.contains("✗ xss"),
        "{human}"
    );
    assert!(
        human.contains("agrees with the reference evaluator"),
        "{human}"
    );

    let out = explain("GET /docs/search?q=edge", "human");
    let human = text(&out.stdout);
    assert!(
        human.starts_with(
            "region eu-west decides: 301 redirect to https://docs.example.com/search?q=edge\n"
        ),
        "{human}"
    );

    let out = explain("PATCH /api/data/1", "human");
    let human = text(&out.stdout);
    assert!(
        human.starts_with(
            "region eu-west decides: 405 method not allowed (the path takes GET, HEAD, POST, PUT, DELETE)\n"
        ),
        "{human}"
    );

    let out = explain("GET /api/health", "json");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(report["route"]["name"], "/api/health");
    assert_eq!(report["decision"]["outcome"]["final"]["status"], 200);
    assert_eq!(report["agrees_with_reference"], true);
}

/// What region `one` of `policy` decides about `request`, as `explain` prints it.
fn explain_in_region_one(policy: &str, request: &str) -> String {
    let out = edgepack(
        &["explain", policy, "--region", "one", "--request", request],
        &root(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn only_get_and_head_are_answered_from_the_cache() {
    // A route that caches and takes any method: a POST changes things, so it must reach the
    // origin every time, never a stored answer.
    let dir = policy_dir(
        r#"edgepack 1
region "one" zone="GLOBAL"
origin "api" { zone "GLOBAL" url="http://api.internal" }
route "/items/*" {
    cache ttl="1m"
    proxy "api"
}
"#,
    );
    let policy = dir.path().display().to_string();
    let explain = |request: &str| explain_in_region_one(&policy, request);
    for request in ["GET /items/1", "HEAD /items/1"] {
        let human = explain(request);
        assert!(
            human.starts_with("region one decides: cache → proxy to api"),
            "{human}"
        );
        assert!(!human.contains("removes what is cached"), "{human}");
    }
    for request in ["POST /items/1", "PUT /items/1", "DELETE /items/1"] {
        let human = explain(request);
        assert!(
            human.starts_with("region one decides: proxy to api"),
            "{request}: {human}"
        );
        assert!(
            human.contains(
                "cache: a success or redirect from the origin removes what is cached for this URL"
            ),
            "a write says what it does to the cache: {human}"
        );
        assert!(
            human.contains("agrees with the reference evaluator"),
            "{human}"
        );
    }
}

#[test]
fn a_get_route_takes_head_unless_a_route_of_its_rank_lists_head() {
    let dir = policy_dir(
        r#"edgepack 1
region "one" zone="GLOBAL"
route "/page" {
    methods "GET"
    respond 200 body="page"
}
route "/probe" {
    methods "GET"
    respond 200 body="get"
}
route "/probe" {
    methods "HEAD"
    respond 204
}
"#,
    );
    let policy = dir.path().display().to_string();
    let explain = |request: &str| explain_in_region_one(&policy, request);
    let head = explain("HEAD /page");
    assert!(head.starts_with("region one decides: 200"), "{head}");
    assert!(head.contains("route: GET,HEAD /page"), "{head}");
    let post = explain("POST /page");
    assert!(post.contains("405") && post.contains("GET, HEAD"), "{post}");
    let probe = explain("HEAD /probe");
    assert!(
        probe.starts_with("region one decides: 204"),
        "the route that lists HEAD takes it: {probe}"
    );
    assert!(
        probe.contains("agrees with the reference evaluator"),
        "{probe}"
    );
}

#[test]
fn explain_and_inspect_say_where_websocket_upgrades_go_through() {
    let dir = policy_dir(
        r#"edgepack 1
region "one" zone="GLOBAL"
origin "chat" { zone "GLOBAL" url="http://chat.internal"; }
route "/live/*" { proxy "chat" websocket=#true; }
route "/history/*" { proxy "chat"; }
"#,
    );
    let policy = dir.path().display().to_string();
    let explain = |request: &str| explain_in_region_one(&policy, request);
    let live = explain("GET /live/room");
    assert!(
        live.starts_with("region one decides: proxy to chat (WebSocket upgrades go through)"),
        "{live}"
    );
    let history = explain("GET /history/room");
    assert!(
        history.starts_with("region one decides: proxy to chat\n"),
        "{history}"
    );

    let bundle = build_in(dir.path(), "one");
    let inspected = text(&edgepack(&["inspect", &bundle], &root()).stdout);
    assert!(
        inspected.contains("proxy chat (http://chat.internal, WebSocket)"),
        "{inspected}"
    );
    assert_eq!(inspected.matches("WebSocket").count(), 1, "{inspected}");
}

#[test]
fn inspect_lists_the_secrets_nodes_must_hold() {
    let dir = policy_dir(
        r#"edgepack 1
region "one" zone="GLOBAL"
jwt "partners" {
    algorithms "HS256"
    secret "partner-hmac"
    secret "partner-hmac-next"
}
route "/partners/*" {
    auth jwt="partners"
    respond 200 json="{}"
}
"#,
    );
    let bundle = build_in(dir.path(), "one");
    let inspected = text(&edgepack(&["inspect", &bundle], &root()).stdout);
    assert!(inspected.contains("node secrets"), "{inspected}");
    for name in ["partner-hmac ", "partner-hmac-next "] {
        assert!(
            inspected
                .lines()
                .any(|l| l.trim_start().starts_with(name) && l.contains("jwt partners")),
            "{name}: {inspected}"
        );
    }
    let json: serde_json::Value = serde_json::from_slice(
        &edgepack(&["inspect", "--format", "json", &bundle], &root()).stdout,
    )
    .expect("JSON");
    let names: Vec<&str> = json["node_secrets"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["partner-hmac", "partner-hmac-next"]);
}
