//! `edgepack test`: run the policy's `test` blocks through the node's own request path,
//! against the bundles that would ship, and report what no test covers.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser};
use edgepack_bundles::abi::Decision;
use edgepack_bundles::bundle::keys;
use edgepack_bundles::plan::{RegionPlan, TestPlan};
use edgepack_runtime_min::config::NodeArgs;
use edgepack_runtime_min::golden;
use edgepack_runtime_min::node::Node;
use serde::Serialize;

use super::Format;
use crate::pipeline::{self, Release};
use crate::report::HumanStyle;
use crate::{Exit, Output};

/// Run the policy's `test` blocks against its built bundles.
///
/// Each region's bundle is built and signed (with a throwaway key), activated on an
/// in-process edgepack-node, and every test that applies to the region is sent through
/// the node's request path: the same module, host and effects that serve real traffic.
/// Proxied requests get a stand-in 200 instead of reaching an origin. Prints pass or fail
/// per test (with the decision when it fails) and the routes and WAF rules no test reaches.
/// Exits 1 when a test fails.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The policy: a directory holding `edgepack.kdl`, or one `.kdl` file.
    pub policy: PathBuf,

    /// Test only these regions (repeatable); all regions by default.
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,

    /// `human` prints one line per test; `json` prints the results on stdout as JSON.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

/// One test's result in one region.
#[derive(Debug, Serialize)]
pub struct TestResult {
    pub region: String,
    pub name: String,
    pub source: String,
    pub passed: bool,
    /// What did not hold, one line each.
    pub failures: Vec<String>,
    /// The decision in the policy's words.
    pub decision: String,
    pub status: u16,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct TestReport {
    pub results: Vec<TestResult>,
    pub passed: usize,
    pub failed: usize,
    /// Routes no test reached, as `METHODS PATTERN (file:line)`.
    pub uncovered_routes: Vec<String>,
    /// WAF rules no test fired, as `name (file:line)`.
    pub uncovered_rules: Vec<String>,
}

pub fn run(args: &TestArgs, style: HumanStyle) -> Output {
    let mut out = Output::new();
    let Some((checked, policy)) = pipeline::check(&args.policy, &mut out, style) else {
        return out;
    };
    let plans = match pipeline::plans(&policy, &checked, &args.regions) {
        Ok(plans) => plans,
        Err(unknown) => {
            let _ = writeln!(out.stderr, "error: no region named {}", unknown.join(", "));
            out.fail(Exit::Usage);
            return out;
        }
    };
    let key = match throwaway_key() {
        Ok(key) => key,
        Err(message) => {
            let _ = writeln!(out.stderr, "error: {message}");
            out.fail(Exit::Usage);
            return out;
        }
    };
    let digest = pipeline::sources_digest(&checked, &policy);
    let release = Release {
        version: 1,
        created: 0,
        expires: None,
    };
    let mut results = Vec::new();
    let mut covered_routes: BTreeSet<(String, String)> = BTreeSet::new();
    let mut covered_rules: BTreeSet<String> = BTreeSet::new();
    let mut all_routes: Vec<(String, String)> = Vec::new();
    let mut all_rules: Vec<(String, String)> = Vec::new();
    for plan in plans {
        let compiled = match pipeline::compile(plan) {
            Ok(compiled) => compiled,
            Err(error) => {
                let _ = writeln!(out.stderr, "error: {error}");
                out.fail(Exit::PolicyErrors);
                return out;
            }
        };
        let bytes = match pipeline::pack(&policy, &compiled, &digest, release, &key) {
            Ok(bytes) => bytes,
            Err(error) => {
                let _ = writeln!(out.stderr, "error: cannot pack the bundle: {error}");
                out.fail(Exit::Usage);
                return out;
            }
        };
        let plan = &compiled.plan;
        for route in &plan.routes {
            let entry = (route_name(plan, Some(route.id)), route.source.to_string());
            if !all_routes.contains(&entry) {
                all_routes.push(entry);
            }
        }
        for rule in plan.waf.iter().flat_map(|w| &w.rules) {
            let entry = (rule.name.clone(), rule.source.to_string());
            if !all_rules.contains(&entry) {
                all_rules.push(entry);
            }
        }
        let region_results = match run_region(plan, &bytes, &key) {
            Ok(results) => results,
            Err(message) => {
                let _ = writeln!(out.stderr, "error: region {}: {message}", plan.region);
                out.fail(Exit::Usage);
                return out;
            }
        };
        for (result, decision) in region_results {
            if let Some(decision) = decision {
                if let Some(route) = decision.route.and_then(|id| plan.routes.get(id as usize)) {
                    covered_routes
                        .insert((route_name(plan, Some(route.id)), route.source.to_string()));
                }
                for id in &decision.rules {
                    if let Some(rule) = plan.waf.as_ref().and_then(|w| w.rules.get(*id as usize)) {
                        covered_rules.insert(rule.name.clone());
                    }
                }
            }
            results.push(result);
        }
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    let report = TestReport {
        passed: results.len() - failed,
        failed,
        results,
        uncovered_routes: all_routes
            .into_iter()
            .filter(|r| !covered_routes.contains(r))
            .map(|(name, source)| format!("{name} ({source})"))
            .collect(),
        uncovered_rules: all_rules
            .into_iter()
            .filter(|(name, _)| !covered_rules.contains(name))
            .map(|(name, source)| format!("{name} ({source})"))
            .collect(),
    };
    match args.format {
        Format::Json => {
            out.stdout = serde_json::to_string_pretty(&report).unwrap_or_default();
            out.stdout.push('\n');
        }
        Format::Human => out.stdout = human(&report),
    }
    if failed > 0 {
        out.fail(Exit::PolicyErrors);
    }
    out
}

/// A signing key that lives as long as this run: test bundles are never shipped.
fn throwaway_key() -> Result<ed25519_dalek::SigningKey, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness for a key: {e}"))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// Activates one region's bundle on an in-process node and runs its tests.
fn run_region(
    plan: &RegionPlan,
    bundle: &[u8],
    key: &ed25519_dalek::SigningKey,
) -> Result<Vec<(TestResult, Option<Decision>)>, String> {
    if plan.tests.is_empty() {
        return Ok(Vec::new());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let node = in_process_node(dir.path(), &plan.region, bundle, key)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(plan
        .tests
        .iter()
        .map(|test| runtime.block_on(run_test(&node, plan, test)))
        .collect())
}

/// A node serving `bundle` with stand-in origins, its decisions attached to responses.
fn in_process_node(
    dir: &Path,
    region: &str,
    bundle: &[u8],
    key: &ed25519_dalek::SigningKey,
) -> Result<Arc<Node>, String> {
    let bundle_path = dir.join(format!("{region}.edgepack"));
    let trust = dir.join("test.pub");
    std::fs::write(&bundle_path, bundle).map_err(|e| e.to_string())?;
    std::fs::write(&trust, keys::public_key_text(&key.verifying_key()))
        .map_err(|e| e.to_string())?;
    let args = NodeArgs::try_parse_from([
        "edgepack-node".as_ref(),
        "--bundle".as_ref(),
        bundle_path.as_os_str(),
        "--trust".as_ref(),
        trust.as_os_str(),
        "--region".as_ref(),
        region.as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--admin".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--no-access-log".as_ref(),
    ])
    .map_err(|e| e.to_string())?;
    let mut node = Node::new(&args).map_err(|e| e.to_string())?;
    node.settings.stand_in_origins = true;
    node.settings.expose_decisions = true;
    // The tests are what this command runs and reports; activation need not run them too.
    node.settings.golden_requests = false;
    // A token signed with a secret the nodes hold is verified where EDGEPACK_JWT_SECRET_<NAME>
    // gives it; without it such tokens are refused here (a node lacking the secret refuses
    // the bundle instead).
    node.allow_missing_jwt_secrets();
    if !node.start() {
        return Err("the bundle was not activated".into());
    }
    Ok(Arc::new(node))
}

async fn run_test(
    node: &Arc<Node>,
    plan: &RegionPlan,
    test: &TestPlan,
) -> (TestResult, Option<Decision>) {
    let outcome = golden::run(node, plan, test).await;
    let result = TestResult {
        region: plan.region.clone(),
        name: test.name.clone(),
        source: test.source.to_string(),
        passed: outcome.passed(),
        decision: outcome
            .decision
            .as_ref()
            .map(|d| super::diff::meaning(d, plan))
            .unwrap_or_default(),
        failures: outcome.failures,
        status: outcome.status,
    };
    (result, outcome.decision)
}

fn route_name(plan: &RegionPlan, route: Option<u32>) -> String {
    match route.and_then(|id| plan.routes.get(id as usize)) {
        Some(r) if r.methods.is_empty() => r.pattern.clone(),
        Some(r) => format!("{} {}", r.methods.join(","), r.pattern),
        None => "none".to_string(),
    }
}

fn human(report: &TestReport) -> String {
    let mut text = String::new();
    let width = report
        .results
        .iter()
        .map(|r| r.region.len())
        .max()
        .unwrap_or(0);
    for result in &report.results {
        let mark = if result.passed { "ok  " } else { "FAIL" };
        let _ = writeln!(
            text,
            "{mark}  {:<width$}  {}  ({})",
            result.region, result.name, result.source
        );
        if !result.passed {
            for failure in &result.failures {
                let _ = writeln!(text, "        {failure}");
            }
            if !result.decision.is_empty() {
                let _ = writeln!(text, "        decision: {}", result.decision);
            }
        }
    }
    let _ = writeln!(text, "\n{} passed, {} failed", report.passed, report.failed);
    if report.results.is_empty() {
        let _ = writeln!(text, "the policy has no `test` blocks");
    }
    if !report.uncovered_routes.is_empty() || !report.uncovered_rules.is_empty() {
        let _ = writeln!(text, "\nnot covered by any test:");
        for route in &report.uncovered_routes {
            let _ = writeln!(text, "  route {route}");
        }
        for rule in &report.uncovered_rules {
            let _ = writeln!(text, "  WAF rule {rule}");
        }
    }
    text
}
