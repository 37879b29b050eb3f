//! Geo databases: a MaxMind DB named by a policy is compiled into each region's module as
//! ranges, so the node needs no database of its own. Uses MaxMind's public test databases
//! from ../shared/data/geo (copied into a temporary policy at test time).

use std::net::IpAddr;

use edgepack_bundles::abi::{Answer, Outcome};
use edgepack_bundles::request::Request;
use edgepack_compiler::eval::{self, Evaluator};
use edgepack_compiler::pipeline;
use edgepack_runtime_min::host::PolicyEngine;

fn shared_geo(file: &str) -> std::path::PathBuf {
    edgepack_tests::workspace_root()
        .join("../shared/data/geo")
        .join(file)
}

fn policy_with_database(database: &str) -> tempfile_dir::Dir {
    let dir = tempfile_dir::Dir::new();
    std::fs::create_dir_all(dir.path().join("geo")).expect("mkdir");
    std::fs::copy(shared_geo(database), dir.path().join("geo/countries.mmdb"))
        .expect("copy test database");
    std::fs::write(
        dir.path().join("edgepack.kdl"),
        r#"edgepack 1
zone "EU" { countries "SE" "DE" }
region "eu-west" zone="EU"
geo {
    database "geo/countries.mmdb"
    block "SE" status=451
}
route "/*" { respond 200 body="ok" }
"#,
    )
    .expect("write policy");
    dir
}

#[test]
fn database_countries_are_compiled_into_the_module() {
    let dir = policy_with_database("GeoLite2-Country-Test.mmdb");
    let checked = edgepack_schema::check(dir.path()).expect("readable");
    assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
    let policy = checked.policy.as_ref().expect("clean");
    let plan = pipeline::plans(policy, &checked, &[])
        .expect("plans")
        .remove(0);
    assert!(plan.geo.as_ref().expect("geo").ranges.len() > 10);
    let compiled = pipeline::compile(plan).expect("compiles");
    let mut instance = PolicyEngine::new()
        .and_then(|e| e.compile(&compiled.wasm))
        .and_then(|m| m.instantiate())
        .expect("instantiates");
    let evaluator = Evaluator::new(&compiled.plan);
    let cases: [(&str, Option<&str>, u16, u32); 5] = [
        ("81.2.69.160", Some("GB"), 200, 1),
        ("89.160.20.112", Some("SE"), 451, 0),
        ("2001:218::1", Some("JP"), 200, 1),
        ("192.0.2.1", None, 200, 1),
        ("::1", None, 200, 1),
    ];
    for (ip, country, status, zone) in cases {
        let peer: IpAddr = ip.parse().expect("address");
        let request = Request::new("GET", "/x").peer(peer);
        let decision = instance.decide(&request).expect("decides");
        let reference = evaluator.eval(&eval::parse(&request, 0).expect("parses"));
        assert_eq!(decision, reference, "{ip}");
        assert_eq!(
            decision.country.map(|c| c.to_string()).as_deref(),
            country,
            "{ip}"
        );
        assert_eq!(decision.status(), Some(status), "{ip}");
        assert_eq!(decision.data_zone, zone, "{ip}");
        if status == 451 {
            assert_eq!(
                decision.outcome,
                Outcome::Final(Answer::GeoBlocked { status: 451 })
            );
        }
    }
}

#[test]
fn a_malformed_database_is_refused_at_check_time() {
    let dir = policy_with_database("GeoIP2-City-Test-Broken-Double-Format.mmdb");
    let checked = edgepack_schema::check(dir.path()).expect("readable");
    let codes: Vec<&str> = checked.diagnostics.iter().map(|d| d.code).collect();
    assert!(codes.contains(&"edgepack::geo::database"), "{codes:?}");
    assert!(checked.policy.is_none());
}

/// A scratch directory removed on drop.
mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "edgepack-geo-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
