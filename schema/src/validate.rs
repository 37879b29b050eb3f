//! Checks that need the whole policy: names, references, route ambiguity, residency.
//!
//! Everything a single node can get wrong was reported while decoding; here each check looks
//! across nodes and reports every problem it finds, never stopping at the first. Route
//! checks run once per region, on the routes in effect there (overrides applied), because
//! ambiguity and residency are properties of what a region serves.

use std::collections::{HashMap, HashSet};

use crate::diagnostic::Diagnostic;
use crate::diagnostics as diag;

use crate::policy::*;
use crate::source::Span;

/// `partially_defined` holds (kind, name) of definitions that failed to decode: references
/// to them are not errors of their own.
pub(crate) fn validate(
    policy: &Policy,
    partially_defined: &HashSet<(&'static str, String)>,
    diags: &mut Vec<Diagnostic>,
) {
    let mut v = Validator {
        policy,
        diags,
        partially_defined,
        used: HashSet::new(),
    };
    v.names();
    v.zones();
    v.regions();
    v.origins();
    v.residency();
    v.functions();
    v.geo();
    v.cors();
    let all_routes: Vec<&Route> = policy.routes.iter().collect();
    v.ambiguity(&all_routes, None);
    let mut checked_routes = HashSet::new();
    for route in &policy.routes {
        v.route_refs(route, None);
        checked_routes.insert(route.span);
    }
    for region in &policy.regions {
        for route in &region.overrides.routes {
            if checked_routes.insert(route.span) {
                v.route_refs(route, Some(region));
            }
        }
        v.region_routes(region);
    }
    v.tests();
    v.unused();
}

struct Validator<'p, 'd> {
    policy: &'p Policy,
    diags: &'d mut Vec<Diagnostic>,
    partially_defined: &'d HashSet<(&'static str, String)>,
    /// (kind, name) of every definition something refers to.
    used: HashSet<(&'static str, String)>,
}

/// Reports names defined twice among `items`.
fn duplicates<'a, T: 'a>(
    diags: &mut Vec<Diagnostic>,
    kind: &str,
    items: impl IntoIterator<Item = &'a T>,
    name: impl Fn(&T) -> &Name,
) {
    let mut seen: HashMap<&str, Span> = HashMap::new();
    for item in items {
        let n = name(item);
        if let Some(first) = seen.get(n.value.as_str()) {
            diags.push(diag::duplicate_name(n.span, *first, kind, &n.value));
        } else {
            seen.insert(n.value.as_str(), n.span);
        }
    }
}

impl<'p> Validator<'p, '_> {
    fn names(&mut self) {
        let p = self.policy;
        duplicates(self.diags, "zone", &p.zones, |z| &z.name);
        duplicates(self.diags, "region", &p.regions, |r| &r.name);
        duplicates(self.diags, "origin", &p.origins, |o| &o.name);
        duplicates(self.diags, "rate limit", &p.ratelimits, |r| &r.name);
        duplicates(self.diags, "JWT provider", &p.jwts, |j| &j.name);
        duplicates(self.diags, "CORS policy", &p.cors, |c| &c.name);
        duplicates(self.diags, "residency block for zone", &p.residency, |r| {
            &r.zone
        });
        duplicates(self.diags, "function", &p.functions, |f| &f.name);
        duplicates(self.diags, "test", &p.tests, |t| &t.name);
        if let Some(waf) = &p.waf {
            duplicates(self.diags, "WAF rule", &waf.rules, |r| &r.id);
        }
        for region in &p.regions {
            duplicates(
                self.diags,
                "rate limit",
                &region.overrides.ratelimits,
                |r| &r.name,
            );
        }
    }

    /// Reports a reference to something not defined, unless its definition was written
    /// but had errors of its own (already reported).
    fn undefined(&mut self, kind: &'static str, name: &Name, defined: &[&str], help: Option<&str>) {
        if self.partially_defined.contains(&(kind, name.value.clone())) {
            return;
        }
        // Names whose definitions had errors are still names the author wrote: suggest them.
        let mut candidates = defined.to_vec();
        let mut written: Vec<&str> = self
            .partially_defined
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.as_str())
            .collect();
        written.sort_unstable();
        candidates.extend(written);
        let mut diagnostic = diag::undefined(name.span, kind, name, &candidates);
        if let Some(help) = help {
            diagnostic = diagnostic.help(help);
        }
        self.diags.push(diagnostic);
    }

    fn zone_names(&self) -> Vec<&'p str> {
        let mut names: Vec<&str> = self
            .policy
            .zones
            .iter()
            .map(|z| z.name.value.as_str())
            .collect();
        names.push(GLOBAL_ZONE);
        names
    }

    /// Reports a zone reference that names no zone; true when it is defined.
    fn zone_ref(&mut self, name: &Name) -> bool {
        let zones = self.zone_names();
        if zones.contains(&name.value.as_str()) {
            return true;
        }
        self.undefined("zone", name, &zones, None);
        false
    }

    fn zones(&mut self) {
        let mut home: HashMap<Country, (&str, Span)> = HashMap::new();
        for zone in &self.policy.zones {
            for country in &zone.countries {
                match home.get(&country.value) {
                    Some((other, first)) if *other != zone.name.value => {
                        self.diags.push(diag::country_in_two_zones(
                            country.span,
                            *first,
                            country.value.as_str(),
                            &zone.name,
                            other,
                        ));
                    }
                    Some(_) => {}
                    None => {
                        home.insert(country.value, (&zone.name.value, country.span));
                    }
                }
            }
        }
    }

    fn regions(&mut self) {
        for region in &self.policy.regions {
            self.zone_ref(&region.zone);
            let overrides = &region.overrides;
            for limit in &overrides.ratelimits {
                if !self
                    .policy
                    .ratelimits
                    .iter()
                    .any(|r| r.name.value == limit.name.value)
                {
                    let names: Vec<&str> = self
                        .policy
                        .ratelimits
                        .iter()
                        .map(|r| r.name.value.as_str())
                        .collect();
                    self.undefined(
                        "rate limit",
                        &limit.name,
                        &names,
                        Some("a region can only redefine a rate limit the policy defines"),
                    );
                }
            }
            if let Some(waf) = &overrides.waf {
                match &self.policy.waf {
                    None => self
                        .diags
                        .push(diag::undefined(waf.span, "WAF", "waf", &[]).help(
                        "a region can only adjust the policy's `waf`: define one at the top level",
                    )),
                    Some(policy_waf) => {
                        let ids = policy_waf.nameable_rule_ids();
                        for id in &waf.disable {
                            if !ids.contains(&id.value.as_str()) {
                                self.undefined("WAF rule", id, &ids, None);
                            }
                        }
                    }
                }
            }
            if let Some(geo) = &overrides.geo {
                let has_source = self
                    .policy
                    .geo
                    .as_ref()
                    .is_some_and(|g| g.country_header.is_some() || g.database.is_some());
                if !has_source && (geo.block.is_some() || geo.allow.is_some()) {
                    self.diags.push(diag::geo_no_source(geo.span));
                }
            }
        }
    }

    fn origins(&mut self) {
        for origin in &self.policy.origins {
            let mut seen: HashMap<&str, Span> = HashMap::new();
            for endpoint in &origin.endpoints {
                self.zone_ref(&endpoint.zone);
                if let Some(first) = seen.get(endpoint.zone.value.as_str()) {
                    self.diags.push(diag::duplicate_name(
                        endpoint.zone.span,
                        *first,
                        "endpoint for zone",
                        &endpoint.zone,
                    ));
                } else {
                    seen.insert(&endpoint.zone.value, endpoint.zone.span);
                }
            }
            if let Some(fallback) = &origin.fallback
                && self.zone_ref(fallback)
                && !seen.contains_key(fallback.value.as_str())
            {
                let zones: Vec<&str> = seen.keys().copied().collect();
                self.undefined(
                    "endpoint for zone",
                    fallback,
                    &zones,
                    Some("the fallback names one of the origin's own `zone` entries"),
                );
            }
        }
    }

    fn residency(&mut self) {
        for residency in &self.policy.residency {
            self.zone_ref(&residency.zone);
            for transfer in &residency.transfers {
                self.origin_ref(&transfer.origin);
                self.zone_ref(&transfer.to);
            }
        }
    }

    fn origin_ref(&mut self, name: &Name) -> Option<&'p Origin> {
        self.used.insert(("origin", name.value.clone()));
        let found = self.policy.origin(name);
        if found.is_none() {
            let names: Vec<&str> = self
                .policy
                .origins
                .iter()
                .map(|o| o.name.value.as_str())
                .collect();
            self.undefined("origin", name, &names, None);
        }
        found
    }

    fn functions(&mut self) {
        for function in &self.policy.functions {
            for origin in &function.origins {
                self.origin_ref(origin);
            }
        }
    }

    fn geo(&mut self) {
        let Some(geo) = &self.policy.geo else { return };
        if let Some(header) = &geo.country_header
            && geo.trusted_peers.is_empty()
        {
            self.diags.push(diag::header_without_peers(header.span));
        }
    }

    fn cors(&mut self) {
        for cors in &self.policy.cors {
            if cors.credentials.value
                && let Some(star) = cors.origins.iter().find(|o| o.value == "*")
            {
                self.diags.push(diag::cors_credentials_wildcard(star.span));
            }
        }
    }

    /// References a route makes, checked once per route whatever regions serve it.
    fn route_refs(&mut self, route: &'p Route, region: Option<&'p Region>) {
        let policy = self.policy;
        match &route.action.value {
            Action::Proxy { origin, .. } => {
                self.origin_ref(origin);
            }
            Action::Function { name } => {
                self.used.insert(("function", name.value.clone()));
                if policy.function(name).is_none() {
                    let names: Vec<&str> = policy
                        .functions
                        .iter()
                        .map(|f| f.name.value.as_str())
                        .collect();
                    self.undefined("function", name, &names, None);
                }
            }
            _ => {}
        }
        for limit in &route.ratelimits {
            self.used.insert(("rate limit", limit.value.clone()));
            let found = match region {
                Some(region) => policy.ratelimit_in(region, limit),
                None => policy
                    .ratelimits
                    .iter()
                    .find(|r| r.name.value == limit.value),
            };
            match found {
                None => {
                    let names: Vec<&str> = policy
                        .ratelimits
                        .iter()
                        .map(|r| r.name.value.as_str())
                        .collect();
                    self.undefined("rate limit", limit, &names, None);
                }
                Some(def) => {
                    if let LimitKey::Claim(claim) = &def.key.value
                        && route.auth.is_none()
                    {
                        self.diags.push(diag::claim_without_auth(
                            limit.span,
                            &format!("rate limit `{}`", def.name.value),
                            claim,
                        ));
                    }
                }
            }
        }
        if let Some(auth) = &route.auth {
            self.used.insert(("JWT provider", auth.value.clone()));
            if policy.jwt(auth).is_none() {
                let names: Vec<&str> = policy.jwts.iter().map(|j| j.name.value.as_str()).collect();
                self.undefined("JWT provider", auth, &names, None);
            }
        }
        if let Some(cors) = &route.cors {
            self.used.insert(("CORS policy", cors.value.clone()));
            if policy.cors_policy(cors).is_none() {
                let names: Vec<&str> = policy.cors.iter().map(|c| c.name.value.as_str()).collect();
                self.undefined("CORS policy", cors, &names, None);
            }
        }
        if let Some(cache) = &route.cache {
            let forwards = matches!(
                route.action.value,
                Action::Proxy { .. } | Action::Function { .. }
            );
            let reads = route.methods.is_empty()
                || route
                    .methods
                    .iter()
                    .any(|m| m.value == "GET" || m.value == "HEAD");
            if !forwards {
                self.diags.push(diag::cache_ineffective(
                    cache.span,
                    "it answers at the edge, and only answers from an origin or a function are stored",
                    "remove `cache`; a fixed answer costs nothing to give again",
                ));
            } else if !reads {
                self.diags.push(diag::cache_ineffective(
                    cache.span,
                    "only GET and HEAD requests are answered from the cache, and it takes neither",
                    "remove `cache`, or add `GET` to the route's `methods`",
                ));
            }
            for part in &cache.key {
                if let KeyPart::Claim(claim) = &part.value
                    && route.auth.is_none()
                {
                    self.diags
                        .push(diag::claim_without_auth(part.span, "the cache key", claim));
                }
            }
        }
        if !route.waf.exclude.is_empty() {
            let ids: Vec<&str> = policy
                .waf
                .as_ref()
                .map(|w| w.nameable_rule_ids())
                .unwrap_or_default();
            for id in &route.waf.exclude {
                if !ids.contains(&id.value.as_str()) {
                    self.undefined("WAF rule", id, &ids, None);
                }
            }
        }
    }

    /// Ambiguity, endpoints and residency of the routes a region serves.
    fn region_routes(&mut self, region: &'p Region) {
        let policy = self.policy;
        let routes = policy.routes_in(region);
        if !region.overrides.routes.is_empty() {
            self.ambiguity(&routes, Some(region));
        }
        let zone = region.zone.value.as_str();
        for route in routes {
            for origin_name in policy.origins_reached(route) {
                let Some(origin) = policy.origin(origin_name) else {
                    continue;
                };
                let Some(endpoint) = policy.endpoint_for(origin, zone) else {
                    self.diags.push(diag::origin_no_endpoint(
                        origin_name.span,
                        &origin.name,
                        zone,
                        &region.name,
                        region.name.span,
                    ));
                    continue;
                };
                let origin_zone = endpoint.zone.value.as_str();
                if origin_zone == zone {
                    continue;
                }
                let transfer = policy.residency_of(zone).and_then(|r| {
                    r.transfers
                        .iter()
                        .find(|t| t.origin.value == origin.name.value)
                });
                match transfer {
                    None => self.diags.push(diag::residency_violation(
                        origin_name.span,
                        &region.name,
                        zone,
                        &origin.name,
                        origin_zone,
                        region.name.span,
                    )),
                    Some(t) if t.to.value != origin_zone => self.diags.push(
                        diag::transfer_mismatch(t.to.span, &origin.name, &t.to, origin_zone),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    /// Reports pairs of routes that take the same request at equal rank. Routes are grouped
    /// by path shape first, so the cost stays near linear in the number of routes.
    /// In a region, only pairs involving one of its own routes are reported: the policy's
    /// routes among themselves were checked once already.
    fn ambiguity(&mut self, routes: &[&'p Route], region: Option<&Region>) {
        let is_regional = |route: &Route| {
            region.is_some_and(|r| r.overrides.routes.iter().any(|o| std::ptr::eq(o, route)))
        };
        let mut by_shape: HashMap<Vec<String>, Vec<&Route>> = HashMap::new();
        for route in routes {
            by_shape.entry(route.shape()).or_default().push(route);
        }
        let mut groups: Vec<&Vec<&Route>> = by_shape.values().filter(|g| g.len() > 1).collect();
        groups.sort_by_key(|g| (g[0].span.file, g[0].span.start));
        for group in groups {
            for (i, a) in group.iter().enumerate() {
                for b in &group[i + 1..] {
                    if (region.is_none() || is_regional(a) || is_regional(b))
                        && a.hosts_overlap(b)
                        && methods_overlap(a, b)
                    {
                        self.diags.push(diag::route_ambiguous(
                            b.pattern.span,
                            a.pattern.span,
                            &b.pattern.written,
                            &a.pattern.written,
                            region.map(|r| r.name.value.as_str()),
                        ));
                    }
                }
            }
        }
    }

    fn tests(&mut self) {
        let policy = self.policy;
        let region_names: Vec<&str> = policy
            .regions
            .iter()
            .map(|r| r.name.value.as_str())
            .collect();
        let rule_ids: Vec<&str> = policy
            .waf
            .as_ref()
            .map(|w| w.rules.iter().map(|r| r.id.value.as_str()).collect())
            .unwrap_or_default();
        let mut patterns: Vec<String> = policy
            .routes
            .iter()
            .map(|r| r.pattern.written.clone())
            .collect();
        for region in &policy.regions {
            patterns.extend(
                region
                    .overrides
                    .routes
                    .iter()
                    .map(|r| r.pattern.written.clone()),
            );
        }
        patterns.sort();
        patterns.dedup();
        for test in &policy.tests {
            if let Some(region) = &test.request.region
                && !region_names.contains(&region.value.as_str())
            {
                self.undefined("region", region, &region_names, None);
            }
            if let Some(rule) = &test.expect.rule
                && !rule_ids.contains(&rule.value.as_str())
            {
                self.undefined("WAF rule", rule, &rule_ids, None);
            }
            if let Some(route) = &test.expect.route
                && !patterns.contains(&route.value)
            {
                let names: Vec<&str> = patterns.iter().map(String::as_str).collect();
                self.undefined("route", route, &names, None);
            }
        }
    }

    fn unused(&mut self) {
        let policy = self.policy;
        let mut report = |used: &HashSet<(&str, String)>, kind: &'static str, name: &Name| {
            if !used.contains(&(kind, name.value.clone())) {
                self.diags.push(diag::unused(name.span, kind, name));
            }
        };
        for origin in &policy.origins {
            report(&self.used, "origin", &origin.name);
        }
        for limit in &policy.ratelimits {
            report(&self.used, "rate limit", &limit.name);
        }
        for jwt in &policy.jwts {
            report(&self.used, "JWT provider", &jwt.name);
        }
        for cors in &policy.cors {
            report(&self.used, "CORS policy", &cors.name);
        }
        for function in &policy.functions {
            report(&self.used, "function", &function.name);
        }
    }
}

fn methods_overlap(a: &Route, b: &Route) -> bool {
    match (a.methods.is_empty(), b.methods.is_empty()) {
        (true, true) => true,
        (false, false) => a
            .methods
            .iter()
            .any(|m| b.methods.iter().any(|n| m.value == n.value)),
        _ => false,
    }
}
