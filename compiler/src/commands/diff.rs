//! `edgepack diff`: what changed in meaning between two builds, and which requests flip.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;

use super::Format;
use edgepack_bundles::abi::{Answer, Decision, Effect, Outcome, method};
use edgepack_bundles::bundle::{self, OpenLimits};
use edgepack_runtime_min::host::{PolicyEngine, PolicyInstance};
use serde::Serialize;
use serde_json::{Value, json};

use crate::plan::{ActionPlan, RegionPlan, RoutePlan, Source};
use crate::report::HumanStyle;
use crate::requests::{self, RequestSpec};
use crate::{Exit, Output, pipeline};

/// Show what changed in meaning between two builds, and the requests whose decision flips.
///
/// OLD and NEW are each a policy (a directory holding `edgepack.kdl`, or a `.kdl` file), a
/// bundle (`eu-west.edgepack`) or a directory of bundles (what `edgepack build --out`
/// wrote). Regions are paired by name.
///
/// The report names routes (by methods, hosts and pattern), WAF rules and thresholds, cache
/// TTLs and keys, rate limits, JWT and CORS policies, geo lists, zones and origins that were
/// added, removed or changed, with where each is written. Then both policy modules decide
/// the same corpus — the policies' `test` requests and requests generated from every route,
/// country list and WAF probe — and every request decided differently is listed.
///
/// Exit status: 0 when nothing changed in meaning, 1 when something did, 2 when an input
/// cannot be read, checked or built.
///
/// Example: edgepack diff build/v41 build/v42
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier build: a policy, a bundle or a directory of bundles.
    pub old: PathBuf,

    /// The later build: a policy, a bundle or a directory of bundles.
    pub new: PathBuf,

    /// Compare only these regions (repeatable); all by default.
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,

    /// Public keys bundles must be signed by (repeatable); without it, bundles are checked
    /// for integrity but not for who signed them.
    #[arg(long, value_name = "PUBLIC_KEY")]
    pub trust: Vec<PathBuf>,

    /// At most this many generated requests per region (the policies' tests always run).
    #[arg(long, default_value_t = 20_000)]
    pub max_requests: usize,

    /// `human` or `json` (on stdout).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

/// One region of one side: its plan, its module and the digests of its other files.
struct Build {
    plan: RegionPlan,
    wasm: Vec<u8>,
    files: BTreeMap<String, String>,
}

/// A change in meaning to one named thing.
#[derive(Debug, Serialize)]
pub struct Change {
    /// `route`, `waf rule`, `rate limit`, …
    pub kind: &'static str,
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// For `changed`: one line per field that changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// Where the new (or removed) item is written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A request the two builds decide differently.
#[derive(Debug, Serialize)]
pub struct Flip {
    pub request: String,
    pub old: String,
    pub new: String,
    /// What differs, for grouping like flips in the human report: the steps only one side
    /// takes (or, when the steps agree, the route, WAF rules or zone that differ).
    #[serde(skip)]
    kind: String,
}

#[derive(Debug, Serialize)]
struct RegionReport {
    region: String,
    /// `changed`, `added` or `removed` (the region exists on one side only).
    status: &'static str,
    changes: Vec<Change>,
    requests_tried: usize,
    flips: Vec<Flip>,
}

pub fn run(args: &DiffArgs, style: HumanStyle) -> Output {
    let mut out = Output::new();
    let trusted = match super::read_public_keys(&args.trust) {
        Ok(keys) => keys,
        Err(message) => return usage(out, message),
    };
    let old = match load(&args.old, &args.regions, &trusted, &mut out, style) {
        Ok(side) => side,
        Err(message) => return usage(out, message),
    };
    let new = match load(&args.new, &args.regions, &trusted, &mut out, style) {
        Ok(side) => side,
        Err(message) => return usage(out, message),
    };
    let engine = match PolicyEngine::new() {
        Ok(engine) => engine,
        Err(error) => return usage(out, format!("cannot start the policy engine: {error}")),
    };
    let regions: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut reports = Vec::new();
    for region in regions {
        let report = match (old.get(region), new.get(region)) {
            (Some(_), None) => RegionReport {
                region: region.clone(),
                status: "removed",
                changes: Vec::new(),
                requests_tried: 0,
                flips: Vec::new(),
            },
            (None, Some(_)) => RegionReport {
                region: region.clone(),
                status: "added",
                changes: Vec::new(),
                requests_tried: 0,
                flips: Vec::new(),
            },
            (Some(a), Some(b)) => {
                let changes = changes(a, b);
                let (requests_tried, flips) = match flips(&engine, a, b, args.max_requests) {
                    Ok(result) => result,
                    Err(message) => return usage(out, format!("region {region}: {message}")),
                };
                RegionReport {
                    region: region.clone(),
                    status: "changed",
                    changes,
                    requests_tried,
                    flips,
                }
            }
            (None, None) => continue,
        };
        reports.push(report);
    }
    let changed = reports
        .iter()
        .any(|r| r.status != "changed" || !r.changes.is_empty() || !r.flips.is_empty());
    match args.format {
        Format::Json => {
            out.stdout = serde_json::to_string_pretty(&json!({
                "changed": changed,
                "regions": reports,
            }))
            .unwrap_or_default();
            out.stdout.push('\n');
        }
        Format::Human => out.stdout = human(&reports),
    }
    if changed {
        out.fail(Exit::PolicyErrors);
    }
    out
}

fn usage(mut out: Output, message: impl std::fmt::Display) -> Output {
    let _ = writeln!(out.stderr, "error: {message}");
    out.fail(Exit::Usage);
    out
}

/// Loads one side: a policy is checked and compiled, bundles are opened.
fn load(
    path: &Path,
    regions: &[String],
    trusted: &[ed25519_dalek::VerifyingKey],
    out: &mut Output,
    style: HumanStyle,
) -> Result<BTreeMap<String, Build>, String> {
    let is_policy = if path.is_dir() {
        path.join("edgepack.kdl").is_file()
    } else {
        path.extension().is_some_and(|e| e == "kdl")
    };
    if is_policy {
        return load_policy(path, regions, out, style);
    }
    let bundles: Vec<PathBuf> = if path.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "edgepack"))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(format!(
                "{}: neither a policy (no edgepack.kdl) nor a directory of bundles (no *.edgepack)",
                path.display()
            ));
        }
        found
    } else {
        vec![path.to_path_buf()]
    };
    let mut side = BTreeMap::new();
    for bundle_path in bundles {
        let build = load_bundle(&bundle_path, trusted)?;
        if regions.is_empty() || regions.contains(&build.plan.region) {
            side.insert(build.plan.region.clone(), build);
        }
    }
    Ok(side)
}

fn load_bundle(path: &Path, trusted: &[ed25519_dalek::VerifyingKey]) -> Result<Build, String> {
    let bytes = super::read_bundle(path)?;
    let limits = OpenLimits::default();
    let opened = if trusted.is_empty() {
        bundle::open_unverified(&bytes, &limits).map(|(b, _)| b)
    } else {
        bundle::open(&bytes, trusted, &limits)
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut files = opened.files;
    let plan: RegionPlan = files
        .get("plan.json")
        .and_then(|p| serde_json::from_slice(p).ok())
        .ok_or_else(|| format!("{}: the bundle has no readable plan.json", path.display()))?;
    let wasm = files
        .remove("policy.wasm")
        .ok_or_else(|| format!("{}: the bundle has no policy.wasm", path.display()))?;
    let files = files
        .iter()
        .map(|(name, bytes)| (name.clone(), bundle::sha256_hex(bytes)))
        .collect();
    Ok(Build { plan, wasm, files })
}

fn load_policy(
    path: &Path,
    regions: &[String],
    out: &mut Output,
    style: HumanStyle,
) -> Result<BTreeMap<String, Build>, String> {
    let Some((checked, policy)) = pipeline::check(path, out, style) else {
        return Err(format!("{} has errors; nothing to compare", path.display()));
    };
    let all: Vec<String> = policy
        .regions
        .iter()
        .map(|r| r.name.value.clone())
        .collect();
    // A region missing on one side is a difference, not an error.
    let wanted: Vec<String> = if regions.is_empty() {
        all
    } else {
        all.into_iter().filter(|r| regions.contains(r)).collect()
    };
    let plans = pipeline::plans(&policy, &checked, &wanted)
        .map_err(|unknown| format!("no region named {}", unknown.join(", ")))?;
    let mut side = BTreeMap::new();
    for plan in plans {
        let compiled = pipeline::compile(plan).map_err(|e| e.to_string())?;
        let files = pipeline::bundle_files(&policy, &compiled)
            .iter()
            .filter(|(name, _)| name.as_str() != "policy.wasm")
            .map(|(name, bytes)| (name.clone(), bundle::sha256_hex(bytes)))
            .collect();
        side.insert(
            compiled.plan.region.clone(),
            Build {
                wasm: compiled.wasm,
                plan: compiled.plan,
                files,
            },
        );
    }
    Ok(side)
}

// ---------------------------------------------------------------------------------------
// What changed in meaning.

/// A named thing, as comparable JSON with ids replaced by names, and where it is written.
type Keyed = BTreeMap<String, (Value, Option<String>)>;

fn changes(old: &Build, new: &Build) -> Vec<Change> {
    let mut all = Vec::new();
    compare("zone", &zones(&old.plan), &zones(&new.plan), &mut all);
    compare("geo", &geo(&old.plan), &geo(&new.plan), &mut all);
    compare("route", &routes(&old.plan), &routes(&new.plan), &mut all);
    compare("WAF", &waf(&old.plan), &waf(&new.plan), &mut all);
    compare(
        "WAF rule",
        &waf_rules(&old.plan),
        &waf_rules(&new.plan),
        &mut all,
    );
    compare(
        "rate limit",
        &ratelimits(&old.plan),
        &ratelimits(&new.plan),
        &mut all,
    );
    compare("JWT", &jwts(old), &jwts(new), &mut all);
    compare("CORS", &cors(&old.plan), &cors(&new.plan), &mut all);
    compare("origin", &origins(&old.plan), &origins(&new.plan), &mut all);
    compare("function", &functions(old), &functions(new), &mut all);
    compare(
        "residency",
        &residency(&old.plan),
        &residency(&new.plan),
        &mut all,
    );
    all
}

fn compare(kind: &'static str, old: &Keyed, new: &Keyed, into: &mut Vec<Change>) {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let change = match (old.get(name), new.get(name)) {
            (Some((_, source)), None) => Change {
                kind,
                name: name.clone(),
                change: "removed",
                details: Vec::new(),
                source: source.clone(),
            },
            (None, Some((_, source))) => Change {
                kind,
                name: name.clone(),
                change: "added",
                details: Vec::new(),
                source: source.clone(),
            },
            (Some((a, _)), Some((b, source))) if a != b => {
                let mut details = Vec::new();
                field_changes("", a, b, &mut details);
                Change {
                    kind,
                    name: name.clone(),
                    change: "changed",
                    details,
                    source: source.clone(),
                }
            }
            _ => continue,
        };
        into.push(change);
    }
}

/// One line per leaf that differs: `cache ttl: 5m → 10m`, `countries: added KP; removed CU`.
fn field_changes(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    let label = |key: &str| -> String {
        let key = key.strip_suffix("_ms").unwrap_or(key).replace('_', " ");
        if path.is_empty() {
            key
        } else {
            format!("{path} {key}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let (x, y) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                if x == y {
                    continue;
                }
                if key.ends_with("_ms") {
                    out.push(format!("{}: {} → {}", label(key), duration(x), duration(y)));
                } else {
                    field_changes(&label(key), x, y, out);
                }
            }
        }
        (Value::Array(a), Value::Array(b))
            if a.iter().chain(b).all(|v| v.is_string() || v.is_number()) =>
        {
            let a_set: BTreeSet<String> = a.iter().map(compact).collect();
            let b_set: BTreeSet<String> = b.iter().map(compact).collect();
            let added: Vec<&String> = b_set.difference(&a_set).collect();
            let removed: Vec<&String> = a_set.difference(&b_set).collect();
            let mut parts = Vec::new();
            if !added.is_empty() {
                parts.push(format!("added {}", join(&added)));
            }
            if !removed.is_empty() {
                parts.push(format!("removed {}", join(&removed)));
            }
            if parts.is_empty() {
                parts.push(format!("reordered: {} → {}", compact(old), compact(new)));
            }
            out.push(format!("{}: {}", display_path(path), parts.join("; ")));
        }
        _ => out.push(format!(
            "{}: {} → {}",
            display_path(path),
            compact(old),
            compact(new)
        )),
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "value" } else { path }
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value on one line, long ones cut.
fn compact(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Null => "none".to_string(),
        other => other.to_string(),
    };
    if text.chars().count() > 120 {
        let cut: String = text.chars().take(117).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn duration(value: &Value) -> String {
    match value.as_u64() {
        Some(ms) => edgepack_schema::units::format_duration(std::time::Duration::from_millis(ms)),
        None => compact(value),
    }
}

fn to_value(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The JSON of a plan item without its id and source (which move when files are edited).
fn without_position(value: &impl Serialize) -> Value {
    let mut value = to_value(value);
    if let Value::Object(map) = &mut value {
        map.remove("id");
        map.remove("source");
    }
    value
}

fn name_of(names: &[String], id: u32) -> &str {
    names.get(id as usize).map_or("?", String::as_str)
}

fn route_key(route: &RoutePlan) -> String {
    let mut key = String::new();
    if !route.methods.is_empty() {
        key.push_str(&route.methods.join(","));
        key.push(' ');
    }
    for host in &route.hosts {
        match host {
            crate::plan::HostPlan::Exact(h) => key.push_str(h),
            crate::plan::HostPlan::Wildcard(suffix) => {
                key.push('*');
                key.push_str(suffix);
            }
        }
        key.push(' ');
    }
    key.push_str(&route.pattern);
    key
}

/// A route's action in names: what a reader of the policy would compare.
fn action_meaning(plan: &RegionPlan, route: &RoutePlan) -> Value {
    match &route.action {
        ActionPlan::Proxy { origin, websocket } => json!({
            "proxy": plan.origins.get(*origin as usize).map_or("?", |o| o.name.as_str()),
            "websocket": websocket,
        }),
        ActionPlan::Respond { response } => json!({
            "respond": plan.responses.get(*response as usize).map(without_position),
        }),
        ActionPlan::Redirect { status, target } => json!({
            "redirect": {
                "status": status,
                "target": super::inspect::redirect_target(route, target),
            },
        }),
        ActionPlan::Function { function } => json!({
            "function": plan.functions.get(*function as usize).map_or("?", |f| f.name.as_str()),
        }),
        ActionPlan::Block { status } => json!({ "block": status }),
    }
}

/// A WAF rule's name by its plan id (`?` for an id the plan does not define).
fn rule_name(plan: &RegionPlan, id: u32) -> &str {
    plan.waf
        .iter()
        .flat_map(|w| &w.rules)
        .find(|r| r.id == id)
        .map_or("?", |r| r.name.as_str())
}

fn routes(plan: &RegionPlan) -> Keyed {
    let jwt_names: Vec<String> = plan.jwts.iter().map(|j| j.name.clone()).collect();
    let limit_names: Vec<String> = plan.ratelimits.iter().map(|l| l.name.clone()).collect();
    let cors_names: Vec<String> = plan.cors.iter().map(|c| c.name.clone()).collect();
    let mut keyed = Keyed::new();
    for route in &plan.routes {
        let mut waf_rules: Vec<&str> = route
            .waf
            .rules
            .iter()
            .map(|id| rule_name(plan, *id))
            .collect();
        waf_rules.sort_unstable();
        let meaning = json!({
            "action": action_meaning(plan, route),
            "auth": route.auth.map(|id| name_of(&jwt_names, id)),
            "rate_limits": route.ratelimits.iter().map(|id| name_of(&limit_names, *id)).collect::<Vec<_>>(),
            "cache": route.cache.as_ref().map(to_value),
            "cors": route.cors.map(|id| name_of(&cors_names, id)),
            "header_edits": plan.edit_sets.get(route.edits as usize).map(to_value),
            "waf": { "mode": to_value(&route.waf.mode), "rules": waf_rules },
            "processing_zone": route.processing_zone.map(|z| plan.zone_name(z).to_string()),
        });
        keyed
            .entry(route_key(route))
            .or_insert((meaning, Some(route.source.to_string())));
    }
    keyed
}

fn zones(plan: &RegionPlan) -> Keyed {
    let mut keyed: Keyed = plan
        .zones
        .iter()
        .zip(&plan.zone_countries)
        .map(|(name, countries)| (name.clone(), (json!({ "countries": countries }), None)))
        .collect();
    keyed.insert(
        format!("of region {}", plan.region),
        (json!({ "zone": plan.zone_name(plan.zone) }), None),
    );
    keyed
}

fn geo(plan: &RegionPlan) -> Keyed {
    let Some(geo) = &plan.geo else {
        return Keyed::new();
    };
    let list = |l: &Option<crate::plan::CountryListPlan>| {
        l.as_ref()
            .map(|l| json!({ "countries": l.countries, "status": l.status }))
    };
    let ranges = to_value(&geo.ranges);
    let meaning = json!({
        "country_header": geo.country_header,
        "trusted_peers": geo.trusted_peers,
        "address_ranges": format!("{} ranges, sha256 {}", geo.ranges.len(),
            &bundle::sha256_hex(ranges.to_string().as_bytes())[..16]),
        "database": geo.database,
        "block": list(&geo.block),
        "allow": list(&geo.allow),
    });
    let source = geo
        .block
        .as_ref()
        .or(geo.allow.as_ref())
        .map(|l| l.source.to_string());
    Keyed::from([("policy".to_string(), (meaning, source))])
}

fn waf(plan: &RegionPlan) -> Keyed {
    plan.waf
        .iter()
        .map(|w| {
            let meaning = json!({
                "threshold": w.threshold,
                "body_limit": w.body_limit,
                "block_oversized_bodies": w.block_oversized_bodies,
            });
            ("settings".to_string(), (meaning, None))
        })
        .collect()
}

fn waf_rules(plan: &RegionPlan) -> Keyed {
    by_name(plan.waf.iter().flat_map(|w| &w.rules), |r| {
        (&r.name, &r.source)
    })
}

fn ratelimits(plan: &RegionPlan) -> Keyed {
    by_name(&plan.ratelimits, |r| (&r.name, &r.source))
}

fn jwts(build: &Build) -> Keyed {
    build
        .plan
        .jwts
        .iter()
        .map(|j| {
            let mut meaning = without_position(j);
            // A key file's name says little; its contents are what verifies tokens.
            let digests: Vec<&str> = j
                .keys
                .iter()
                .map(|k| build.files.get(k).map_or("missing", String::as_str))
                .collect();
            meaning["keys"] = json!(digests);
            (j.name.clone(), (meaning, Some(j.source.to_string())))
        })
        .collect()
}

fn cors(plan: &RegionPlan) -> Keyed {
    by_name(&plan.cors, |c| (&c.name, &c.source))
}

/// Items that refer to nothing by id, compared by name as their JSON without position.
fn by_name<'a, T: Serialize + 'a>(
    items: impl IntoIterator<Item = &'a T>,
    name_and_source: impl Fn(&T) -> (&String, &Source),
) -> Keyed {
    items
        .into_iter()
        .map(|item| {
            let (name, source) = name_and_source(item);
            (
                name.clone(),
                (without_position(item), Some(source.to_string())),
            )
        })
        .collect()
}

fn origins(plan: &RegionPlan) -> Keyed {
    plan.origins
        .iter()
        .map(|o| {
            let mut meaning = without_position(o);
            meaning["zone"] = json!(plan.zone_name(o.zone));
            (o.name.clone(), (meaning, Some(o.source.to_string())))
        })
        .collect()
}

fn functions(build: &Build) -> Keyed {
    build
        .plan
        .functions
        .iter()
        .map(|f| {
            let mut meaning = without_position(f);
            meaning["module_sha256"] =
                json!(build.files.get(&f.file).map_or("missing", String::as_str));
            meaning["origins"] = json!(
                f.origins
                    .iter()
                    .map(|id| build
                        .plan
                        .origins
                        .get(*id as usize)
                        .map_or("?", |o| o.name.as_str()))
                    .collect::<Vec<_>>()
            );
            (f.name.clone(), (meaning, Some(f.source.to_string())))
        })
        .collect()
}

fn residency(plan: &RegionPlan) -> Keyed {
    plan.residency
        .iter()
        .map(|r| {
            let meaning = json!({ "pseudonymize": r.pseudonymize, "drop": r.drop });
            (plan.zone_name(r.zone).to_string(), (meaning, None))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Requests whose decision flips.

fn flips(
    engine: &PolicyEngine,
    old: &Build,
    new: &Build,
    max_requests: usize,
) -> Result<(usize, Vec<Flip>), String> {
    let instance = |build: &Build, side: &str| -> Result<PolicyInstance, String> {
        engine
            .compile(&build.wasm)
            .and_then(|module| module.instantiate())
            .map_err(|e| format!("the {side} policy module cannot run: {e}"))
    };
    let mut old_instance = instance(old, "old")?;
    let mut new_instance = instance(new, "new")?;
    let plans = [&old.plan, &new.plan];
    let mut corpus: BTreeSet<RequestSpec> = old
        .plan
        .tests
        .iter()
        .chain(&new.plan.tests)
        .map(RequestSpec::from_test)
        .collect();
    corpus.extend(requests::generated(&plans, max_requests));
    let mut tried = 0;
    let mut found = Vec::new();
    for spec in corpus {
        let Ok(request) = spec.to_request(&plans) else {
            continue;
        };
        tried += 1;
        let before = decide(&mut old_instance, &request, &old.plan);
        let after = decide(&mut new_instance, &request, &new.plan);
        if before != after {
            found.push(Flip {
                request: spec.to_string(),
                kind: before.difference(&after),
                old: before.to_string(),
                new: after.to_string(),
            });
        }
    }
    Ok((tried, found))
}

fn decide(
    instance: &mut PolicyInstance,
    request: &edgepack_bundles::request::Request,
    plan: &RegionPlan,
) -> Meaning {
    match instance.decide(request) {
        Ok(decision) => Meaning::of(&decision, plan),
        Err(error) => Meaning {
            steps: vec![format!("error: {error}")],
            details: Vec::new(),
            answered: true,
        },
    }
}

/// A decision in the policy's words, so two builds whose ids differ compare by meaning:
/// `200 respond (route GET /api/health)`, `proxy api → cache 5m (route /api/data/*)`.
pub fn meaning(decision: &Decision, plan: &RegionPlan) -> String {
    Meaning::of(decision, plan).to_string()
}

/// A decision's steps (its answer, or each effect in order), then its route, the WAF rules
/// that fired and the data zone.
#[derive(PartialEq)]
struct Meaning {
    steps: Vec<String>,
    details: Vec<String>,
    /// A final answer (one step), not effects.
    answered: bool,
}

impl std::fmt::Display for Meaning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.steps.join(" → "))?;
        for detail in &self.details {
            write!(f, " {detail}")?;
        }
        Ok(())
    }
}

impl Meaning {
    /// What only one side has: the steps, or when they agree, the details. Requests that
    /// come to a new final answer (`451 geo blocked`) are alike whatever they came to before,
    /// and so are requests that leave one.
    fn difference(&self, new: &Meaning) -> String {
        if self.steps != new.steps {
            if new.answered {
                return format!("⇒  {}", new.steps.join(" → "));
            }
            if self.answered {
                return format!("{}  ⇒", self.steps.join(" → "));
            }
        }
        let only = |a: &[String], b: &[String]| -> String {
            let parts: Vec<&str> = a
                .iter()
                .filter(|x| !b.contains(x))
                .map(String::as_str)
                .collect();
            if parts.is_empty() {
                "nothing".to_string()
            } else {
                parts.join(" → ")
            }
        };
        let (a, b) = if self.steps == new.steps {
            (&self.details, &new.details)
        } else {
            (&self.steps, &new.steps)
        };
        format!("{}  ⇒  {}", only(a, b), only(b, a))
    }

    fn of(decision: &Decision, plan: &RegionPlan) -> Meaning {
        let route = decision
            .route
            .and_then(|id| plan.routes.get(id as usize))
            .map(route_key);
        let steps = match &decision.outcome {
            Outcome::Final(answer) => {
                let kind = to_value(answer)
                    .get("answer")
                    .and_then(Value::as_str)
                    .unwrap_or("answer")
                    .replace('_', " ");
                let mut text = format!("{} {kind}", answer.status());
                match answer {
                    Answer::Redirect { location, .. } => {
                        let _ = write!(text, " to {location}");
                    }
                    Answer::MethodNotAllowed { allow, .. } => {
                        let allow: Vec<&str> = method::names(*allow).collect();
                        let _ = write!(text, " (allow {})", allow.join(", "));
                    }
                    _ => {}
                }
                vec![text]
            }
            Outcome::Effects(effects) => effects
                .iter()
                .map(|effect| effect_meaning(effect, decision, plan))
                .collect::<Vec<_>>(),
        };
        let mut details = Vec::new();
        if let Some(route) = route {
            details.push(format!("(route {route})"));
        }
        if !decision.rules.is_empty() {
            let names: Vec<&str> = decision
                .rules
                .iter()
                .map(|id| rule_name(plan, *id))
                .collect();
            details.push(format!("[WAF {}]", names.join(", ")));
        }
        details.push(format!("zone {}", plan.zone_name(decision.data_zone)));
        let answered = matches!(decision.outcome, Outcome::Final(_));
        Meaning {
            steps,
            details,
            answered,
        }
    }
}

fn effect_meaning(effect: &Effect, decision: &Decision, plan: &RegionPlan) -> String {
    let name = |names: Option<&str>| names.unwrap_or("?").to_string();
    match *effect {
        Effect::VerifyJwt(id) => format!(
            "verify JWT {}",
            name(plan.jwts.get(id as usize).map(|j| j.name.as_str()))
        ),
        Effect::RateLimit(id) => match plan.ratelimits.get(id as usize) {
            Some(l) => format!(
                "rate limit {} ({}/{} by {})",
                l.name,
                l.limit,
                edgepack_schema::units::format_duration(std::time::Duration::from_millis(l.per_ms)),
                l.key
            ),
            None => "rate limit ?".to_string(),
        },
        Effect::Cache(route) => match plan
            .routes
            .get(route as usize)
            .and_then(|r| r.cache.as_ref())
        {
            Some(c) => {
                let ms = |v: u64| {
                    edgepack_schema::units::format_duration(std::time::Duration::from_millis(v))
                };
                let mut text = format!("cache {}", ms(c.ttl_ms));
                if c.stale_while_revalidate_ms > 0 {
                    let _ = write!(text, " swr {}", ms(c.stale_while_revalidate_ms));
                }
                if !c.key.is_empty() {
                    let _ = write!(text, " key {}", c.key.join(","));
                }
                if !c.vary.is_empty() {
                    let _ = write!(text, " vary {}", c.vary.join(","));
                }
                text
            }
            None => "cache".to_string(),
        },
        Effect::EditHeaders(id) => format!(
            "edit headers {}",
            plan.edit_sets
                .get(id as usize)
                .map_or(Value::Null, to_value)
        ),
        Effect::Residency(zone) => format!("residency {}", plan.zone_name(zone)),
        Effect::Cors(id) => format!(
            "CORS {}",
            name(plan.cors.get(id as usize).map(|c| c.name.as_str()))
        ),
        Effect::Proxy(id) => match plan.origins.get(id as usize) {
            Some(o) => format!("proxy {} ({})", o.name, o.url),
            None => "proxy ?".to_string(),
        },
        Effect::Function(id) => format!(
            "function {}",
            name(plan.functions.get(id as usize).map(|f| f.name.as_str()))
        ),
        Effect::Respond(id) => match plan.responses.get(id as usize) {
            Some(r) => format!("respond {} ({} bytes)", r.status, r.body.len()),
            None => "respond ?".to_string(),
        },
        Effect::Redirect(_) => format!(
            "redirect to {}",
            decision.location.as_deref().unwrap_or("?")
        ),
        Effect::Block(route) => match plan.routes.get(route as usize).map(|r| &r.action) {
            Some(ActionPlan::Block { status }) => format!("block {status}"),
            _ => "block".to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------
// The report.

/// At most this many kinds of flip per region in the human report, each with an example
/// request (JSON lists every request).
const SHOWN_KINDS: usize = 6;

fn human(reports: &[RegionReport]) -> String {
    let mut o = String::new();
    let mut unchanged = Vec::new();
    for report in reports {
        match report.status {
            "added" => {
                let _ = writeln!(o, "region {}: added\n", report.region);
                continue;
            }
            "removed" => {
                let _ = writeln!(o, "region {}: removed\n", report.region);
                continue;
            }
            _ => {}
        }
        if report.changes.is_empty() && report.flips.is_empty() {
            unchanged.push(report.region.as_str());
            continue;
        }
        let _ = writeln!(o, "region {}:", report.region);
        for change in &report.changes {
            let sign = match change.change {
                "added" => '+',
                "removed" => '-',
                _ => '~',
            };
            let _ = write!(
                o,
                "  {sign} {} {} {}",
                change.kind, change.name, change.change
            );
            if let Some(source) = &change.source {
                let _ = write!(o, " ({source})");
            }
            o.push('\n');
            for detail in &change.details {
                let _ = writeln!(o, "      {detail}");
            }
        }
        // Like flips together, the most common first, each with one request as its example:
        // a change that flips many requests does not hide one that flips a few.
        let mut kinds: BTreeMap<&str, Vec<&Flip>> = BTreeMap::new();
        for flip in &report.flips {
            kinds.entry(flip.kind.as_str()).or_default().push(flip);
        }
        let mut kinds: Vec<(&str, Vec<&Flip>)> = kinds.into_iter().collect();
        kinds.sort_by_key(|(_, flips)| std::cmp::Reverse(flips.len()));
        let _ = write!(
            o,
            "  {} of {} requests decided differently",
            report.flips.len(),
            report.requests_tried
        );
        match kinds.len() {
            0 => o.push('\n'),
            1 => o.push_str(":\n"),
            n => {
                let _ = writeln!(o, ", in {n} ways:");
            }
        }
        for (_, flips) in kinds.iter().take(SHOWN_KINDS) {
            let example = flips[0];
            let _ = match flips.len() {
                1 => writeln!(o, "    {}", example.request),
                n => writeln!(o, "    {} and {} like it", example.request, n - 1),
            };
            let _ = writeln!(o, "      was  {}", example.old);
            let _ = writeln!(o, "      now  {}", example.new);
        }
        if kinds.len() > SHOWN_KINDS {
            let rest: usize = kinds[SHOWN_KINDS..].iter().map(|(_, f)| f.len()).sum();
            let _ = writeln!(
                o,
                "    … and {rest} more requests, flipped in {} other ways (`--format json` lists them all)",
                kinds.len() - SHOWN_KINDS
            );
        }
        o.push('\n');
    }
    if !unchanged.is_empty() {
        let _ = writeln!(o, "unchanged in meaning: {}", unchanged.join(", "));
    }
    if reports.is_empty() {
        o.push_str("no regions to compare\n");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_changes_name_durations_and_list_edits() {
        let old = json!({ "cache": { "ttl_ms": 300_000, "key": ["header:a"] }, "limit": 10 });
        let new = json!({ "cache": { "ttl_ms": 600_000, "key": ["header:b"] }, "limit": 10 });
        let mut out = Vec::new();
        field_changes("", &old, &new, &mut out);
        assert_eq!(
            out,
            vec![
                "cache key: added header:b; removed header:a".to_string(),
                "cache ttl: 5m → 10m".to_string(),
            ]
        );
    }

    #[test]
    fn scalar_changes_show_both_values() {
        let mut out = Vec::new();
        field_changes(
            "",
            &json!({ "limit": 10 }),
            &json!({ "limit": 20 }),
            &mut out,
        );
        assert_eq!(out, vec!["limit: 10 → 20".to_string()]);
    }
}
