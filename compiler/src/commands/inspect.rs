//! `edgepack inspect`: what a bundle holds, who signed it, what its policy does.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;

use super::Format;
use edgepack_bundles::bundle::{self, Manifest, OpenLimits};
use edgepack_bundles::time::utc;
use serde::Serialize;

use crate::plan::{ActionPlan, LeftOutRulePlan, RegionPlan, RoutePlan, SegmentPlan, TemplatePart};
use crate::{Exit, Output};

/// Show a bundle's manifest, files, signers, routes, WAF rules and the secrets nodes must hold.
///
/// The bundle's integrity (layout, hashes, archive) is checked; who signed it is shown but
/// not judged: use `edgepack verify --trust` for that.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle.
    pub bundle: PathBuf,

    /// `human` or `json` (on stdout).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Serialize)]
struct Report<'a> {
    path: String,
    sha256: &'a str,
    bytes: usize,
    manifest: &'a Manifest,
    signed_by: Vec<&'a str>,
    routes: Vec<Item>,
    waf_rules: Vec<Item>,
    /// Rules of imported rule sets left out of the module, with the reason.
    waf_rules_left_out: Vec<&'a LeftOutRulePlan>,
    /// Secrets every node serving the bundle must hold (`--jwt-secret NAME=FILE`).
    node_secrets: Vec<NodeSecret>,
}

#[derive(Serialize)]
struct NodeSecret {
    name: String,
    /// What uses it: `jwt NAME`.
    used_by: String,
    source: String,
}

#[derive(Serialize)]
struct Item {
    id: u32,
    name: String,
    detail: String,
    source: String,
}

/// A one-line description of a route's action (`?` for an id the plan does not define: a
/// bundle's plan is only as consistent as whoever built it).
pub fn describe_action(plan: &RegionPlan, route: &RoutePlan) -> String {
    match &route.action {
        ActionPlan::Proxy { origin, websocket } => {
            let upgrades = if *websocket { ", WebSocket" } else { "" };
            match plan.origins.get(*origin as usize) {
                Some(o) => format!("proxy {} ({}{upgrades})", o.name, o.url),
                None => "proxy ?".to_string(),
            }
        }
        ActionPlan::Respond { response } => match plan.responses.get(*response as usize) {
            Some(r) => format!("respond {}", r.status),
            None => "respond ?".to_string(),
        },
        ActionPlan::Redirect { status, target } => {
            format!("redirect {status} {}", redirect_target(route, target))
        }
        ActionPlan::Function { function } => format!(
            "function {}",
            plan.functions
                .get(*function as usize)
                .map_or("?", |f| f.name.as_str())
        ),
        ActionPlan::Block { status } => format!("block {status}"),
    }
}

/// A redirect target as the policy wrote it (`https://docs.example.com/{*}`), with
/// ` +query` when the request's query goes along.
pub fn redirect_target(route: &RoutePlan, target: &[TemplatePart]) -> String {
    let mut text = String::new();
    for part in target {
        match part {
            TemplatePart::Literal(literal) => text.push_str(literal),
            TemplatePart::Segment(at) => match route.segments.get(*at as usize) {
                Some(SegmentPlan::Param(name)) => text.push_str(&format!("{{{name}}}")),
                _ => text.push_str("{?}"),
            },
            TemplatePart::Rest(_) => text.push_str("{*}"),
            TemplatePart::Query { .. } => {}
        }
    }
    if target
        .iter()
        .any(|part| matches!(part, TemplatePart::Query { .. }))
    {
        text.push_str(" +query");
    }
    text
}

pub fn run(args: &InspectArgs) -> Output {
    let mut out = Output::new();
    let bytes = match super::read_bundle(&args.bundle) {
        Ok(b) => b,
        Err(message) => {
            let _ = writeln!(out.stderr, "error: {message}");
            out.fail(Exit::Usage);
            return out;
        }
    };
    let (opened, signatures) = match bundle::open_unverified(&bytes, &OpenLimits::default()) {
        Ok(b) => b,
        Err(error) => {
            let _ = writeln!(out.stderr, "refused: {}: {error}", args.bundle.display());
            out.fail(Exit::PolicyErrors);
            return out;
        }
    };
    let plan: Option<RegionPlan> = opened
        .files
        .get("plan.json")
        .and_then(|p| serde_json::from_slice(p).ok());
    let routes: Vec<Item> = plan
        .iter()
        .flat_map(|plan| {
            plan.routes.iter().map(move |r| Item {
                id: r.id,
                name: if r.methods.is_empty() {
                    r.pattern.clone()
                } else {
                    format!("{} {}", r.methods.join(","), r.pattern)
                },
                detail: describe_action(plan, r),
                source: r.source.to_string(),
            })
        })
        .collect();
    let waf_rules: Vec<Item> = plan
        .iter()
        .flat_map(|plan| plan.waf.iter().flat_map(|w| &w.rules))
        .map(|r| Item {
            id: r.id,
            name: r.name.clone(),
            detail: format!("score {}", r.score),
            source: r.source.to_string(),
        })
        .collect();
    let node_secrets: Vec<NodeSecret> = plan
        .iter()
        .flat_map(|plan| &plan.jwts)
        .flat_map(|jwt| {
            jwt.secrets.iter().map(|name| NodeSecret {
                name: name.clone(),
                used_by: format!("jwt {}", jwt.name),
                source: jwt.source.to_string(),
            })
        })
        .collect();
    let m = &opened.manifest;
    match args.format {
        Format::Json => {
            let report = Report {
                path: args.bundle.display().to_string(),
                sha256: &opened.sha256,
                bytes: bytes.len(),
                manifest: m,
                signed_by: signatures.iter().map(|s| s.key_id.as_str()).collect(),
                routes,
                waf_rules,
                waf_rules_left_out: plan
                    .iter()
                    .flat_map(|p| p.waf.iter().flat_map(|w| &w.left_out))
                    .collect(),
                node_secrets,
            };
            out.stdout = serde_json::to_string_pretty(&report).unwrap_or_default();
            out.stdout.push('\n');
        }
        Format::Human => {
            let o = &mut out.stdout;
            let _ = writeln!(o, "bundle    {}", args.bundle.display());
            let _ = writeln!(o, "sha256    {}", opened.sha256);
            let _ = writeln!(o, "size      {} bytes", bytes.len());
            let _ = writeln!(o, "region    {} (zone {})", m.region, m.zone);
            let _ = writeln!(o, "version   {}", m.version);
            let _ = writeln!(o, "created   {} ({})", utc(m.created), m.created);
            let _ = writeln!(
                o,
                "expires   {}",
                m.expires
                    .map_or("never".to_string(), |e| format!("{} ({e})", utc(e)))
            );
            let _ = writeln!(o, "format    {}, ABI {}, {}", m.format, m.abi, m.compiler);
            let _ = writeln!(o, "sources   {}", m.sources_sha256);
            let signers: Vec<&str> = signatures.iter().map(|s| s.key_id.as_str()).collect();
            let _ = writeln!(
                o,
                "signed by {} (not verified here: use `edgepack verify --trust`)",
                if signers.is_empty() {
                    "nobody".to_string()
                } else {
                    signers.join(", ")
                }
            );
            let _ = writeln!(o, "\nfiles:");
            for f in &m.files {
                let _ = writeln!(
                    o,
                    "  {:<32} {:>9} bytes  {}",
                    f.path,
                    f.size,
                    &f.sha256[..16]
                );
            }
            let _ = writeln!(o, "\nroutes:");
            for r in &routes {
                let _ = writeln!(
                    o,
                    "  #{:<3} {:<36} {:<40} {}",
                    r.id, r.name, r.detail, r.source
                );
            }
            if !node_secrets.is_empty() {
                let _ = writeln!(
                    o,
                    "\nnode secrets (every node serving this bundle needs them: --jwt-secret NAME=FILE):"
                );
                for secret in &node_secrets {
                    let _ = writeln!(
                        o,
                        "  {:<41} {:<40} {}",
                        secret.name, secret.used_by, secret.source
                    );
                }
            }
            if let Some(waf) = plan.as_ref().and_then(|p| p.waf.as_ref()) {
                let _ = writeln!(o, "\nWAF rules (threshold {}):", waf.threshold);
                for r in &waf_rules {
                    let _ = writeln!(
                        o,
                        "  #{:<3} {:<36} {:<40} {}",
                        r.id, r.name, r.detail, r.source
                    );
                }
                if !waf.left_out.is_empty() {
                    let _ = writeln!(
                        o,
                        "\nimported WAF rules not in the bundle ({}):",
                        waf.left_out.len()
                    );
                    for r in &waf.left_out {
                        let _ = writeln!(o, "  {:<12} {:<72} {}", r.name, r.reason, r.source);
                    }
                }
            }
        }
    }
    out
}
