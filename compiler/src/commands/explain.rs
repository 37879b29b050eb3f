//! `edgepack explain`: what a region's policy decides about one request, and why.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

use super::Format;
use edgepack_bundles::abi::{Answer, Decision, Outcome};
use edgepack_bundles::request::Request;
use edgepack_runtime_min::host::PolicyEngine;
use serde::Serialize;

use crate::eval::{self, Evaluator};
use crate::pipeline;
use crate::plan::{ActionPlan, RegionPlan};
use crate::report::HumanStyle;
use crate::requests::RequestSpec;
use crate::{Exit, Output};

/// Show what a region's policy decides about a request, and every route and rule it looked at.
///
/// The decision is made by the compiled module, run in wasmtime exactly as a node runs it,
/// and compared with the reference evaluator; a disagreement is reported (and is a bug).
///
/// Example: edgepack explain examples/global-api --region eu-west
/// --request "GET /api/data/1?id=1%20union%20select" --country DE
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The policy: a directory holding `edgepack.kdl`, or one `.kdl` file.
    pub policy: PathBuf,

    /// The region whose policy decides.
    #[arg(long)]
    pub region: String,

    /// The request line: method and target, e.g. "GET /api/data/1?x=y".
    #[arg(long)]
    pub request: String,

    /// A request header, "name: value" (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// The client's country, sent the way the policy reads it (its country header, from a
    /// trusted peer).
    #[arg(long)]
    pub country: Option<String>,

    /// The client's address (the connection's peer unless a country header needs a trusted
    /// proxy in between).
    #[arg(long)]
    pub ip: Option<IpAddr>,

    /// The Host header.
    #[arg(long, default_value = "localhost")]
    pub host: String,

    /// The request body.
    #[arg(long)]
    pub body: Option<String>,

    /// `human` or `json` (on stdout).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Serialize)]
struct JsonExplain<'a> {
    region: &'a str,
    decision: &'a Decision,
    route: Option<JsonItem>,
    routes: Vec<JsonConsidered>,
    rules: Vec<JsonConsidered>,
    agrees_with_reference: bool,
    reference: Option<&'a Decision>,
}

#[derive(Serialize)]
struct JsonItem {
    id: u32,
    name: String,
    source: String,
}

#[derive(Serialize)]
struct JsonConsidered {
    id: u32,
    name: String,
    source: String,
    matched: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

/// Builds the request the arguments describe, for this plan.
/// Who answers a request after which the node drops the cached answers of its URL, when
/// they answer with success: a method that writes, sent to an origin or a function, in a
/// region that caches.
fn invalidates_cache(method: &str, decision: &Decision, plan: &RegionPlan) -> Option<&'static str> {
    use edgepack_bundles::abi::Effect;
    let writes = !matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE");
    if !writes || !plan.routes.iter().any(|r| r.cache.is_some()) {
        return None;
    }
    let Outcome::Effects(effects) = &decision.outcome else {
        return None;
    };
    effects.iter().find_map(|effect| match effect {
        Effect::Proxy(_) => Some("origin"),
        Effect::Function(_) => Some("function"),
        _ => None,
    })
}

pub fn request_from(args: &ExplainArgs, plan: &RegionPlan) -> Result<Request, String> {
    let (method, target) = args.request.split_once(' ').ok_or_else(|| {
        format!(
            "--request needs a method and a target, e.g. \"GET /\", not {:?}",
            args.request
        )
    })?;
    let mut spec = RequestSpec::new(method.trim(), target.trim());
    spec.host = Some(args.host.clone());
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header needs \"name: value\", not {header:?}"))?;
        spec.headers
            .push((name.trim().to_string(), value.trim().to_string()));
    }
    spec.body = args.body.clone();
    spec.country = args.country.clone();
    spec.ip = args.ip;
    spec.to_request(&[plan])
}

pub fn run(args: &ExplainArgs, style: HumanStyle) -> Output {
    let mut out = Output::new();
    let Some((checked, policy)) = pipeline::check(&args.policy, &mut out, style) else {
        return out;
    };
    let plan = match pipeline::plans(&policy, &checked, std::slice::from_ref(&args.region)) {
        Ok(mut plans) => plans.remove(0),
        Err(_) => {
            let known: Vec<&str> = policy
                .regions
                .iter()
                .map(|r| r.name.value.as_str())
                .collect();
            let _ = writeln!(
                out.stderr,
                "error: no region named {} (regions: {})",
                args.region,
                known.join(", ")
            );
            out.fail(Exit::Usage);
            return out;
        }
    };
    let request = match request_from(args, &plan) {
        Ok(r) => r,
        Err(message) => {
            let _ = writeln!(out.stderr, "error: {message}");
            out.fail(Exit::Usage);
            return out;
        }
    };
    let compiled = match pipeline::compile(plan) {
        Ok(c) => c,
        Err(error) => {
            let _ = writeln!(out.stderr, "error: {error}");
            out.fail(Exit::PolicyErrors);
            return out;
        }
    };
    let plan = &compiled.plan;
    let module_decision = PolicyEngine::new()
        .and_then(|engine| engine.compile(&compiled.wasm))
        .and_then(|module| module.instantiate())
        .and_then(|mut instance| instance.decide(&request));
    let decision = match module_decision {
        Ok(d) => d,
        Err(error) => {
            let _ = writeln!(out.stderr, "error: the request cannot be decided: {error}");
            out.fail(Exit::Usage);
            return out;
        }
    };
    let body_limit = plan.waf.as_ref().map_or(0, |w| w.body_limit);
    let evaluator = Evaluator::new(plan);
    let trace = match eval::parse(&request, body_limit) {
        Ok(parsed) => evaluator.trace(&parsed),
        Err(error) => {
            let _ = writeln!(out.stderr, "error: the request cannot be decided: {error}");
            out.fail(Exit::Usage);
            return out;
        }
    };
    let agrees = trace.decision == decision;
    let route_item = |id: u32| {
        let r = &plan.routes[id as usize];
        JsonItem {
            id,
            name: describe_route(plan, id),
            source: r.source.to_string(),
        }
    };
    let routes: Vec<JsonConsidered> = trace
        .routes
        .iter()
        .map(|(id, matched)| JsonConsidered {
            id: *id,
            name: describe_route(plan, *id),
            source: plan.routes[*id as usize].source.to_string(),
            matched: *matched,
            value: None,
        })
        .collect();
    let rules: Vec<JsonConsidered> = trace
        .rules
        .iter()
        .filter_map(|(id, value)| {
            let rule = plan.waf.as_ref()?.rules.get(*id as usize)?;
            Some(JsonConsidered {
                id: *id,
                name: rule.name.clone(),
                source: rule.source.to_string(),
                matched: value.is_some(),
                value: value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            })
        })
        .collect();
    match args.format {
        Format::Json => {
            let report = JsonExplain {
                region: &plan.region,
                decision: &decision,
                route: decision.route.map(route_item),
                routes,
                rules,
                agrees_with_reference: agrees,
                reference: (!agrees).then_some(&trace.decision),
            };
            out.stdout = serde_json::to_string_pretty(&report).unwrap_or_default();
            out.stdout.push('\n');
        }
        Format::Human => {
            let o = &mut out.stdout;
            let _ = writeln!(
                o,
                "region {} decides: {}",
                plan.region,
                describe_outcome(plan, &decision)
            );
            if let Some(route) = decision.route {
                let r = route_item(route);
                let _ = writeln!(o, "route: {} ({})", r.name, r.source);
            }
            if let Some(answerer) = invalidates_cache(&request.method, &decision, plan) {
                let _ = writeln!(
                    o,
                    "cache: a success or redirect from the {answerer} removes what is cached for this URL, every variant"
                );
            }
            let _ = writeln!(
                o,
                "client {} country {} (data zone {})",
                decision.client_ip,
                decision
                    .country
                    .map_or("unknown".to_string(), |c| c.to_string()),
                plan.zone_name(decision.data_zone)
            );
            if let Some(waf) = &plan.waf
                && !rules.is_empty()
            {
                let _ = writeln!(
                    o,
                    "WAF score {} (threshold {})",
                    decision.waf_score, waf.threshold
                );
            }
            let _ = writeln!(o, "\nroutes considered:");
            for r in &routes {
                let mark = if decision.route == Some(r.id) {
                    "→"
                } else if r.matched {
                    "✓"
                } else {
                    "✗"
                };
                let _ = writeln!(o, "  {mark} #{} {:<40} {}", r.id, r.name, r.source);
            }
            if !rules.is_empty() {
                let _ = writeln!(o, "\nWAF rules run:");
                for r in &rules {
                    let mark = if r.matched { "✓" } else { "✗" };
                    let value = r
                        .value
                        .as_deref()
                        .map_or(String::new(), |v| format!(" matched {v:?}"));
                    let _ = writeln!(o, "  {mark} {:<24} {}{value}", r.name, r.source);
                }
            }
            let _ = writeln!(
                o,
                "\n{}",
                if agrees {
                    "the compiled module agrees with the reference evaluator".to_string()
                } else {
                    format!(
                        "DISAGREEMENT: the reference evaluator decides {}",
                        describe_outcome(plan, &trace.decision)
                    )
                }
            );
        }
    }
    if !agrees {
        let _ = writeln!(
            out.stderr,
            "error: the compiled module and the reference evaluator disagree on this request (a compiler bug; please report it)"
        );
        out.fail(Exit::PolicyErrors);
    }
    out
}

fn describe_route(plan: &RegionPlan, id: u32) -> String {
    let r = &plan.routes[id as usize];
    let mut name = r.pattern.clone();
    if !r.methods.is_empty() {
        name = format!("{} {name}", r.methods.join(","));
    }
    name
}

fn describe_outcome(plan: &RegionPlan, decision: &Decision) -> String {
    match &decision.outcome {
        Outcome::Final(answer) => {
            let json = serde_json::to_value(answer).unwrap_or_default();
            let kind = json
                .get("answer")
                .and_then(|a| a.as_str())
                .unwrap_or("answer");
            let mut described = format!("{} {}", answer.status(), kind.replace('_', " "));
            match answer {
                Answer::Redirect { location, .. } => described.push_str(&format!(" to {location}")),
                Answer::MethodNotAllowed { allow, .. } => {
                    let allow: Vec<&str> = edgepack_bundles::abi::method::names(*allow).collect();
                    described.push_str(&format!(" (the path takes {})", allow.join(", ")));
                }
                _ => {}
            }
            described
        }
        Outcome::Effects(effects) => {
            let steps: Vec<String> = effects
                .iter()
                .map(|e| {
                    use edgepack_bundles::abi::Effect::*;
                    match e {
                        VerifyJwt(j) => format!("verify JWT ({})", plan.jwts[*j as usize].name),
                        RateLimit(l) => {
                            format!("rate limit ({})", plan.ratelimits[*l as usize].name)
                        }
                        Cache(_) => "cache".to_string(),
                        EditHeaders(_) => "edit headers".to_string(),
                        Residency(z) => format!("residency transforms ({})", plan.zone_name(*z)),
                        Cors(c) => format!("CORS ({})", plan.cors[*c as usize].name),
                        Proxy(o) => {
                            let websocket = decision
                                .route
                                .and_then(|r| plan.routes.get(r as usize))
                                .is_some_and(|r| {
                                    matches!(
                                        r.action,
                                        ActionPlan::Proxy {
                                            websocket: true,
                                            ..
                                        }
                                    )
                                });
                            let upgrades = if websocket {
                                " (WebSocket upgrades go through)"
                            } else {
                                ""
                            };
                            format!("proxy to {}{upgrades}", plan.origins[*o as usize].name)
                        }
                        Function(f) => format!("run function {}", plan.functions[*f as usize].name),
                        Respond(r) => format!("respond {}", plan.responses[*r as usize].status),
                        Redirect(_) => {
                            format!("redirect to {}", decision.location.as_deref().unwrap_or(""))
                        }
                        Block(r) => format!("block (route #{r})"),
                    }
                })
                .collect();
            steps.join(" → ")
        }
    }
}
