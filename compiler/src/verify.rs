//! The plan verifier: invariants every [`RegionPlan`] must hold before code generation.
//!
//! Lowering should never produce a plan that breaks these; the verifier runs in tests and
//! debug builds (`build` calls it under `debug_assertions`) so a lowering bug is caught
//! where it happens, not as a wrong decision at the edge.

use std::collections::HashSet;

use crate::plan::*;

/// Every invariant the plan breaks, or `Ok`.
pub fn verify(plan: &RegionPlan) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, problem: String| {
        if !ok {
            problems.push(problem);
        }
    };
    let zones = plan.zones.len() as u32;
    check(
        plan.zones.last().map(String::as_str) == Some("GLOBAL"),
        "the last zone is not GLOBAL".into(),
    );
    check(
        plan.zone_countries.len() == plan.zones.len(),
        "zone_countries does not cover every zone".into(),
    );
    check(
        plan.zone < zones,
        format!("region zone {} out of range", plan.zone),
    );
    check(!plan.edit_sets.is_empty(), "edit set 0 is missing".into());
    for (i, origin) in plan.origins.iter().enumerate() {
        check(
            origin.id == i as u32,
            format!("origin {} has id {}", i, origin.id),
        );
        check(
            origin.zone < zones,
            format!("origin {} zone out of range", origin.name),
        );
    }
    for (i, response) in plan.responses.iter().enumerate() {
        check(
            response.id == i as u32,
            format!("response {i} has id {}", response.id),
        );
    }
    for (i, limit) in plan.ratelimits.iter().enumerate() {
        check(
            limit.id == i as u32,
            format!("rate limit {i} has id {}", limit.id),
        );
    }
    for residency in &plan.residency {
        check(residency.zone < zones, "residency zone out of range".into());
    }
    if let Some(waf) = &plan.waf {
        for (i, rule) in waf.rules.iter().enumerate() {
            check(
                rule.id == i as u32,
                format!("WAF rule {i} has id {}", rule.id),
            );
            for condition in rule.conditions() {
                check(
                    !condition.parts.is_empty()
                        && condition.count.is_some() == condition.matchers.is_empty(),
                    format!("WAF rule {} reads nothing or matches nothing", rule.name),
                );
            }
        }
    }
    if let Some(geo) = &plan.geo {
        for peer in &geo.trusted_peers {
            check(
                peer.parse::<ipnet::IpNet>().is_ok(),
                format!("trusted peer {peer} is not a network"),
            );
        }
        for pair in geo.ranges.windows(2) {
            check(
                pair[0].end < pair[1].start,
                format!("geo ranges overlap or are unsorted at {:?}", pair[1].start),
            );
        }
        for range in &geo.ranges {
            check(
                range.start <= range.end,
                "a geo range ends before it starts".into(),
            );
        }
    }
    let mut identities = HashSet::new();
    for (i, route) in plan.routes.iter().enumerate() {
        let name = format!("route {} ({})", i, route.pattern);
        check(route.id == i as u32, format!("{name} has id {}", route.id));
        let rest_at = route.segments.iter().position(|s| *s == SegmentPlan::Rest);
        check(
            rest_at.is_none_or(|at| at + 1 == route.segments.len()),
            format!("{name}: `*` is not last"),
        );
        match &route.action {
            ActionPlan::Proxy { origin, .. } => {
                let origin_zone = plan.origins.get(*origin as usize).map(|o| o.zone);
                check(
                    origin_zone.is_some(),
                    format!("{name}: origin out of range"),
                );
                check(
                    route.processing_zone == origin_zone,
                    format!("{name}: processing zone is not its origin's"),
                );
            }
            ActionPlan::Function { function } => {
                check(
                    (*function as usize) < plan.functions.len(),
                    format!("{name}: function out of range"),
                );
                check(
                    route.processing_zone == Some(plan.zone),
                    format!("{name}: a function runs in the region's zone"),
                );
            }
            ActionPlan::Respond { response } => check(
                (*response as usize) < plan.responses.len(),
                format!("{name}: response out of range"),
            ),
            ActionPlan::Redirect { target, .. } => {
                for part in target {
                    match part {
                        TemplatePart::Segment(at) => check(
                            matches!(
                                route.segments.get(*at as usize),
                                Some(SegmentPlan::Param(_))
                            ),
                            format!("{name}: capture {at} is not a parameter"),
                        ),
                        TemplatePart::Rest(at) => check(
                            matches!(route.segments.get(*at as usize), Some(SegmentPlan::Rest)),
                            format!("{name}: capture {at} is not the final `*`"),
                        ),
                        TemplatePart::Literal(_) | TemplatePart::Query { .. } => {}
                    }
                }
            }
            ActionPlan::Block { status } => check(
                (400..600).contains(status),
                format!("{name}: block status {status}"),
            ),
        }
        if !matches!(
            route.action,
            ActionPlan::Proxy { .. } | ActionPlan::Function { .. }
        ) {
            check(
                route.processing_zone.is_none(),
                format!("{name}: answers at the edge but has a processing zone"),
            );
        }
        check(
            route.auth.is_none_or(|a| (a as usize) < plan.jwts.len()),
            format!("{name}: JWT provider out of range"),
        );
        check(
            route.cors.is_none_or(|c| (c as usize) < plan.cors.len()),
            format!("{name}: CORS policy out of range"),
        );
        check(
            (route.edits as usize) < plan.edit_sets.len(),
            format!("{name}: edit set out of range"),
        );
        for limit in &route.ratelimits {
            match plan.ratelimits.get(*limit as usize) {
                None => check(false, format!("{name}: rate limit out of range")),
                Some(l) => check(
                    !l.key.starts_with("claim:") || route.auth.is_some(),
                    format!("{name}: a claim-keyed limit without authentication"),
                ),
            }
        }
        let rule_count = plan.waf.as_ref().map_or(0, |w| w.rules.len()) as u32;
        check(
            route.waf.rules.windows(2).all(|w| w[0] < w[1])
                && route.waf.rules.iter().all(|r| *r < rule_count),
            format!("{name}: WAF rules unsorted or out of range"),
        );
        check(
            route.waf.mode != WafModePlan::Off || route.waf.rules.is_empty(),
            format!("{name}: WAF off but rules listed"),
        );
        let shape: Vec<String> = route
            .segments
            .iter()
            .map(|s| match s {
                SegmentPlan::Literal(l) => format!("={l}"),
                SegmentPlan::Param(_) => ":".into(),
                SegmentPlan::Rest => "*".into(),
            })
            .collect();
        let mut hosts = route.hosts.clone();
        hosts.sort_by_key(|h| format!("{h:?}"));
        for method in if route.methods.is_empty() {
            vec![String::new()]
        } else {
            route.methods.clone()
        } {
            let hosts_keys: Vec<String> = if hosts.is_empty() {
                vec![String::new()]
            } else {
                hosts.iter().map(|h| format!("{h:?}")).collect()
            };
            for host in hosts_keys {
                check(
                    identities.insert((shape.clone(), host, method.clone())),
                    format!("{name}: takes the same requests as another route at equal rank"),
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
