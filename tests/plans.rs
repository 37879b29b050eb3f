//! Region plans: every plan of every example verifies, and lowering is deterministic (the
//! same policy gives the same IR text, so `--emit ir` can be diffed).

use edgepack_compiler::{pipeline, verify};

#[test]
fn example_plans_verify_and_print_deterministically() {
    for policy in edgepack_tests::example_policies() {
        let checked = edgepack_schema::check(&policy).expect("readable");
        let p = checked.policy.as_ref().expect("clean");
        let first = pipeline::plans(p, &checked, &[]).expect("plans");
        let again = edgepack_schema::check(&policy).expect("readable");
        let second =
            pipeline::plans(again.policy.as_ref().expect("clean"), &again, &[]).expect("plans");
        assert_eq!(first.len(), p.regions.len());
        for (a, b) in first.iter().zip(&second) {
            if let Err(problems) = verify::verify(a) {
                panic!("{} region {}: {problems:?}", policy.display(), a.region);
            }
            assert_eq!(
                a.to_string(),
                b.to_string(),
                "{} region {}",
                policy.display(),
                a.region
            );
            assert!(
                a.to_string()
                    .contains(&format!("region {} zone=", a.region))
            );
        }
    }
}

#[test]
fn the_verifier_catches_broken_plans() {
    let policy = edgepack_tests::workspace_root().join("examples/global-api");
    let checked = edgepack_schema::check(&policy).expect("readable");
    let mut plan = pipeline::plans(checked.policy.as_ref().expect("clean"), &checked, &[])
        .expect("plans")
        .remove(0);
    plan.routes[1].edits = 99;
    let duplicate = plan.routes[0].clone();
    plan.routes.push(duplicate);
    let problems = verify::verify(&plan).expect_err("broken plan");
    assert!(
        problems.iter().any(|p| p.contains("edit set out of range")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("same requests")),
        "{problems:?}"
    );
}

#[test]
fn a_rollout_window_reaches_every_region_s_plan() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("edgepack.kdl"),
        "edgepack 1\nzone \"EU\" { countries \"DE\" }\nregion \"eu-west\" zone=\"EU\"\n\
         region \"eu-north\" zone=\"EU\"\nrollout watch=\"5m\" max-error-rate=\"2.5%\"\n\
         route \"/\" { respond 200 }\n",
    )
    .expect("write the policy");
    let checked = edgepack_schema::check(dir.path()).expect("readable");
    let policy = checked.policy.as_ref().expect("clean");
    let plans = pipeline::plans(policy, &checked, &[]).expect("plans");
    assert_eq!(plans.len(), 2);
    for plan in plans {
        let rollout = plan.rollout.expect("the rollout is in the plan");
        assert_eq!(
            (
                rollout.watch_ms,
                rollout.max_error_permille,
                rollout.min_requests
            ),
            (300_000, 25, 20),
            "2.5% is 25 thousandths; min-requests defaults to 20"
        );
    }
}
