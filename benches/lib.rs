//! Shared helpers for edgepack's benches: the workspace's examples and generated policies
//! of a chosen size, so every bench measures the same inputs.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A policy with `n_routes` routes (literal, `:param` and `*` segments) and `n_rules` WAF
/// rules, as KDL text.
pub fn generated_policy(n_routes: usize, n_rules: usize) -> String {
    let mut kdl = String::from("edgepack 1\n");
    kdl.push_str("region \"r1\" zone=\"GLOBAL\"\n");
    kdl.push_str("origin \"app\" { zone \"GLOBAL\" url=\"http://app.internal:8080\" }\n");
    kdl.push_str("ratelimit \"per-ip\" key=\"client-ip\" limit=100 per=\"1m\"\n");
    if n_rules > 0 {
        kdl.push_str("waf threshold=5 {\n");
        for i in 0..n_rules {
            let _ = writeln!(
                kdl,
                "    rule \"r{i}\" score=5 {{ in \"args\" \"path\"; decode \"url-decode\" \"lowercase\"; regex #\"attack{i}[a-z]*\\d+\"#; }}"
            );
        }
        kdl.push_str("}\n");
    }
    for i in 0..n_routes {
        let pattern = match i % 3 {
            0 => format!("/svc{i}/items"),
            1 => format!("/svc{i}/items/:id"),
            _ => format!("/svc{i}/files/*"),
        };
        let _ = writeln!(
            kdl,
            "route \"{pattern}\" {{ ratelimit \"per-ip\"; cache ttl=\"{}s\"; proxy \"app\" }}",
            i % 600
        );
    }
    kdl
}
