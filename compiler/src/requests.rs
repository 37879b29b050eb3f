//! Requests described by users (`explain`, `test` blocks) and generated from plans (`diff`).
//!
//! A [`RequestSpec`] (shared with the node, which sends a bundle's `test` blocks as golden
//! requests) says what a request is in the policy's terms; [`generated`] makes a corpus of
//! them from plans.

use std::collections::BTreeSet;

pub use edgepack_runtime_min::golden::RequestSpec;

use crate::plan::{HostPlan, RegionPlan, SegmentPlan};

/// Query strings that wake the usual WAF rules, and one that should not.
const PROBES: &[&str] = &[
    "",
    "?q=hello",
    "?id=1%27%20union%20select%20password%20from%20users--",
    "?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "?file=..%2f..%2f..%2fetc%2fpasswd",
];

/// Requests that exercise what these plans decide: every route with its methods and hosts,
/// from a client in every listed country (and none), with benign and hostile queries, with
/// and without credentials, plus CORS preflights. Sorted, without duplicates, and at most
/// `limit` of them (an even sample when there are more).
pub fn generated(plans: &[&RegionPlan], limit: usize) -> Vec<RequestSpec> {
    let mut countries: BTreeSet<Option<String>> = BTreeSet::from([None]);
    for plan in plans {
        if let Some(geo) = &plan.geo {
            for list in geo.block.iter().chain(&geo.allow) {
                countries.extend(list.countries.iter().cloned().map(Some));
            }
        }
        for zone in &plan.zone_countries {
            countries.extend(zone.first().cloned().map(Some));
        }
        countries.insert(Some("US".to_string()));
    }
    let mut specs: BTreeSet<RequestSpec> = BTreeSet::new();
    for plan in plans {
        for route in &plan.routes {
            let path = sample_path(&route.segments);
            let host = route.hosts.first().map(|h| match h {
                HostPlan::Exact(host) => host.clone(),
                HostPlan::Wildcard(suffix) => format!("a{suffix}"),
            });
            let methods: Vec<&str> = if route.methods.is_empty() {
                vec!["GET", "POST"]
            } else {
                route.methods.iter().map(String::as_str).collect()
            };
            for country in &countries {
                for method in &methods {
                    for probe in PROBES {
                        let mut spec = RequestSpec::new(method, &format!("{path}{probe}"));
                        spec.host = host.clone();
                        spec.country = country.clone();
                        specs.insert(spec);
                    }
                    let mut credentialed = RequestSpec::new(method, &path);
                    credentialed.host = host.clone();
                    credentialed.country = country.clone();
                    credentialed.headers = vec![(
                        "authorization".to_string(),
                        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl".to_string(),
                    )];
                    specs.insert(credentialed);
                }
                for cors in &plan.cors {
                    let origin = cors
                        .origins
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "https://example.com".to_string());
                    let mut preflight = RequestSpec::new("OPTIONS", &path);
                    preflight.host = host.clone();
                    preflight.country = country.clone();
                    preflight.headers = vec![
                        ("origin".to_string(), origin),
                        (
                            "access-control-request-method".to_string(),
                            methods[0].to_string(),
                        ),
                    ];
                    specs.insert(preflight);
                }
            }
        }
        let mut unknown = RequestSpec::new("GET", "/edgepack-diff-no-such-path");
        unknown.country = Some("US".to_string());
        specs.insert(unknown);
    }
    sample(specs.into_iter().collect(), limit)
}

/// A path the segments match: literals as written, a parameter as `1`, a rest as `a/b`.
fn sample_path(segments: &[SegmentPlan]) -> String {
    let mut path = String::new();
    for segment in segments {
        path.push('/');
        match segment {
            SegmentPlan::Literal(text) => path.push_str(text),
            SegmentPlan::Param(_) => path.push('1'),
            SegmentPlan::Rest => path.push_str("a/b"),
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

/// Every `len / limit`-th item, so a large corpus keeps its spread.
fn sample<T>(items: Vec<T>, limit: usize) -> Vec<T> {
    if items.len() <= limit || limit == 0 {
        return if limit == 0 { Vec::new() } else { items };
    }
    let len = items.len();
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i * limit / len != (i + 1) * limit / len)
        .map(|(_, item)| item)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_keeps_exactly_the_limit_spread_out() {
        let items: Vec<u32> = (0..1000).collect();
        let kept = sample(items, 10);
        assert_eq!(kept.len(), 10);
        assert!(kept.windows(2).all(|w| w[1] - w[0] == 100));
        assert_eq!(sample(vec![1, 2, 3], 10), vec![1, 2, 3]);
        assert!(sample(vec![1, 2, 3], 0).is_empty());
    }

    #[test]
    fn sample_paths_match_their_patterns() {
        let segments = vec![
            SegmentPlan::Literal("api".into()),
            SegmentPlan::Param("id".into()),
            SegmentPlan::Rest,
        ];
        assert_eq!(sample_path(&segments), "/api/1/a/b");
        assert_eq!(sample_path(&[]), "/");
    }
}
