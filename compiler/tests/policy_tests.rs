//! `edgepack test`: the policy's `test` blocks run through the node's request path.

mod common;

use common::{copy_dir, edgepack, policy_dir, root, text};

#[test]
fn the_example_passes_its_tests_and_names_what_they_miss() {
    let out = edgepack(&["test", "examples/global-api"], &root());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    // 11 tests; `region=` limits two to eu-west: 9 × 5 regions + 2.
    assert!(stdout.contains("47 passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("ok    eu-west       SQL injection is blocked in the EU  (tests.kdl:12)"),
        "{stdout}"
    );
    assert!(stdout.contains("not covered by any test:"), "{stdout}");
    assert!(
        stdout.contains("route POST /api/ml/batch/* (edgepack.kdl:"),
        "{stdout}"
    );
    assert!(stdout.contains("WAF rule xss (waf.kdl:23)"), "{stdout}");
    assert!(
        !stdout.contains("route GET,HEAD /api/data/*"),
        "a tested route is covered: {stdout}"
    );
    assert!(
        !stdout.contains("route POST /api/ml/* "),
        "a function route is tested through the function: {stdout}"
    );
}

/// The CRS variant runs the API's tests and its own through the node, whose module imports
/// libinjection's `detect` (rule 942100).
#[test]
fn the_crs_example_passes_its_tests() {
    let out = edgepack(&["test", "examples/global-api-crs"], &root());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    // The API's 47, and 17 of its own in each of 5 regions.
    assert!(stdout.contains("132 passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("ok    au-southeast  analytics cookies are left out as the CRS says"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("ok    sa-east       SQL injection without quotes is found by libinjection"),
        "{stdout}"
    );
}

#[test]
fn a_failing_test_prints_the_decision_and_exits_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&root().join("examples/global-api"), dir.path());
    let tests = dir.path().join("tests.kdl");
    let mut text_of_tests = std::fs::read_to_string(&tests).expect("tests.kdl");
    text_of_tests.push_str(
        "test \"health is open to everyone\" {\n    request \"GET\" \"/api/health\" country=\"IR\" region=\"us-east\"\n    expect status=200 route=\"/api/health\"\n}\n",
    );
    std::fs::write(&tests, text_of_tests).expect("write tests.kdl");
    let policy = dir.path().display().to_string();
    let out = edgepack(&["test", &policy, "--region", "us-east"], &root());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  us-east  health is open to everyone"),
        "{stdout}"
    );
    assert!(stdout.contains("expected status 200, got 451"), "{stdout}");
    assert!(stdout.contains("decision: 451"), "{stdout}");
    assert!(stdout.contains("9 passed, 1 failed"), "{stdout}");

    let out = edgepack(
        &["test", &policy, "--region", "us-east", "--format", "json"],
        &root(),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["failed"], 1);
    let failed: Vec<&serde_json::Value> = report["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["status"], 451);
    assert!(
        failed[0]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("tests.kdl:"))
    );
}

#[test]
fn a_policy_with_errors_is_not_tested() {
    let dir = policy_dir("edgepack 1\nrout \"/x\" {}\n");
    let out = edgepack(&["test", &dir.path().display().to_string()], &root());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("rout"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn each_region_is_tested_with_its_own_bundle() {
    // The same request, two regions, two answers: a region that replaces a route must be
    // tested with its own module, not the one tested before it.
    let dir = policy_dir(
        r#"edgepack 1
region "one" zone="GLOBAL"
region "two" zone="GLOBAL" {
    route "/hello" { respond 202 body="two" }
}
route "/hello" { respond 200 body="one" }
test "one answers 200" {
    request "GET" "/hello" region="one"
    expect status=200
}
test "two answers 202" {
    request "GET" "/hello" region="two"
    expect status=202
}
"#,
    );
    let out = edgepack(&["test", &dir.path().display().to_string()], &root());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
}

#[test]
fn an_expected_response_header_is_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&root().join("examples/global-api"), dir.path());
    let tests = dir.path().join("tests.kdl");
    let mut text_of_tests = std::fs::read_to_string(&tests).expect("tests.kdl");
    text_of_tests.push_str(
        "test \"health says it is JSON\" {\n    request \"GET\" \"/api/health\" country=\"DE\"\n    expect status=200 {\n        header \"content-type\" \"text/plain\"\n        header \"x-content-type-options\" \"nosniff\"\n    }\n}\n",
    );
    std::fs::write(&tests, text_of_tests).expect("write tests.kdl");
    let policy = dir.path().display().to_string();
    let out = edgepack(&["test", &policy, "--region", "eu-west"], &root());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("expected header content-type: text/plain, got application/json"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("expected header x-content-type-options"),
        "the header the policy sets passes: {stdout}"
    );
}

#[test]
fn a_preflight_names_the_method_a_cors_policy_allows_by_the_route() {
    // `cors` without `methods` allows the route's methods: the preflight must name the one
    // asked for, or a browser sends nothing but GET, HEAD and POST.
    let dir = policy_dir(
        r#"edgepack 1
region "one" zone="GLOBAL"
origin "api" { zone "GLOBAL" url="http://api.internal" }
cors "web" { origins "https://app.example.com"; }
route "/items/*" {
    methods "PUT" "DELETE"
    cors "web"
    proxy "api"
}
test "a PUT from the app may go" {
    request "OPTIONS" "/items/1" {
        header "origin" "https://app.example.com"
        header "access-control-request-method" "PUT"
    }
    expect status=204 {
        header "access-control-allow-origin" "https://app.example.com"
        header "access-control-allow-methods" "PUT"
        header "vary" "origin"
    }
}
test "another site may not" {
    request "OPTIONS" "/items/1" {
        header "origin" "https://elsewhere.example"
        header "access-control-request-method" "PUT"
    }
    expect status=403 {
        header "vary" "origin"
    }
}
"#,
    );
    let out = edgepack(&["test", &dir.path().display().to_string()], &root());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
}
