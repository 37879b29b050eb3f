//! `edgepack build`, `keygen`, `sign`, `verify`, `inspect` and `diff` as users run them.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, edgepack, edgepack_with, edited_example, replaced, root, text};
use edgepack_bundles::bundle;

const EPOCH: &str = "1700000000";

/// A key pair `NAME.key` / `NAME.pub` in `dir`.
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = edgepack(
        &[
            "keygen",
            "--out-dir",
            &dir.display().to_string(),
            "--name",
            name,
        ],
        &root(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// Builds `policy` into `out` with a fixed clock; returns the command's output.
fn build(policy: &Path, key: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "build".to_string(),
        policy.display().to_string(),
        "--key".to_string(),
        key.display().to_string(),
        "--out".to_string(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    edgepack_with(&args, &root(), &[("SOURCE_DATE_EPOCH", EPOCH)])
}

/// Builds one region of the main example into `out`; returns the bundle's path.
fn build_region(key: &Path, out: &Path, region: &str) -> PathBuf {
    let built = build(
        &root().join("examples/global-api"),
        key,
        out,
        &["--region", region],
    );
    assert_eq!(built.status.code(), Some(0), "{}", text(&built.stderr));
    out.join(format!("{region}.edgepack"))
}

fn bundles_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("out dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "edgepack"))
        .collect();
    found.sort();
    found
}

fn verify(bundle: &Path, trust: &Path) -> std::process::Output {
    edgepack(
        &[
            "verify",
            &bundle.display().to_string(),
            "--trust",
            &trust.display().to_string(),
        ],
        &root(),
    )
}

fn manifest_json(bundle: &Path) -> serde_json::Value {
    let out = edgepack(
        &["inspect", &bundle.display().to_string(), "--format", "json"],
        &root(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
}

#[test]
fn builds_are_reproducible_across_checkouts_and_verify() {
    let work = tempfile::tempdir().expect("temp dir");
    let (key, public) = keygen(&work.path().join("keys"), "ci");
    let mut outputs = Vec::new();
    for copy in ["one/checkout", "two"] {
        let source = work.path().join(copy).join("global-api");
        copy_dir(&root().join("examples/global-api"), &source);
        let out_dir = work.path().join(format!("{}-out", copy.replace('/', "-")));
        let out = build(&source, &key, &out_dir, &["--version", "7"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let table = text(&out.stdout);
        assert!(
            table.contains("region") && table.contains("eu-west") && table.contains("sha256"),
            "{table}"
        );
        outputs.push(out_dir);
    }
    let first = bundles_in(&outputs[0]);
    let second = bundles_in(&outputs[1]);
    assert_eq!(first.len(), 5, "one bundle per region");
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.file_name(), b.file_name());
        assert!(
            std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
            "{} differs between checkouts",
            a.display()
        );
        let out = verify(a, &public);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let manifest = &manifest_json(&first[0])["manifest"];
    assert_eq!(manifest["version"], 7);
    assert_eq!(manifest["created"], 1_700_000_000u64);
    assert!(manifest["expires"].is_null());
}

#[test]
fn a_bundle_is_a_tar_zst_any_operator_can_open() {
    let work = tempfile::tempdir().expect("temp dir");
    let (key, _) = keygen(work.path(), "ci");
    let bundle = build_region(&key, &work.path().join("out"), "eu-west");
    let extracted = work.path().join("x");
    std::fs::create_dir_all(&extracted).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&bundle)
        .arg("-C")
        .arg(&extracted)
        .output()
        .expect("run tar");
    assert!(tar.status.success(), "{}", text(&tar.stderr));
    assert!(extracted.join("policy.wasm").is_file());
    let plan = std::fs::read_to_string(extracted.join("plan.json")).expect("plan.json");
    assert!(plan.contains("\"region\":\"eu-west\""), "{plan}");
    assert!(plan.contains("edgepack.kdl"), "plan names sources: {plan}");
}

#[test]
fn without_a_version_the_creation_time_is_the_version_and_expiry_is_optional() {
    let work = tempfile::tempdir().expect("temp dir");
    let (key, public) = keygen(work.path(), "ci");
    let out_dir = work.path().join("out");
    let out = build(
        &root().join("examples/global-api"),
        &key,
        &out_dir,
        &["--region", "us-east", "--expires", "1h", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    assert_eq!(rows.as_array().map(Vec::len), Some(1));
    assert_eq!(rows[0]["region"], "us-east");
    assert!(rows[0]["bundle_bytes"].as_u64().unwrap() > 1000);
    let path = out_dir.join("us-east.edgepack");
    let manifest = &manifest_json(&path)["manifest"];
    assert_eq!(manifest["version"], 1_700_000_000u64);
    assert_eq!(manifest["expires"], 1_700_003_600u64);
    // Signed and intact, but long expired: verify says so, a node would refuse it.
    let out = verify(&path, &public);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("expired"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_policy_with_errors_writes_nothing() {
    let work = tempfile::tempdir().expect("temp dir");
    let (key, _) = keygen(work.path(), "ci");
    let policy = work.path().join("policy");
    edited_example(&policy, |source| {
        source + "route \"/x/*\" { proxy \"no-such-origin\" }\n"
    });
    let out_dir = work.path().join("out");
    let out = build(&policy, &key, &out_dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no-such-origin"),
        "{}",
        text(&out.stderr)
    );
    assert!(!out_dir.exists(), "nothing is written");
    // A bad key (here a policy file) is a usage error, and also writes nothing.
    let not_a_key = policy.join("edgepack.kdl");
    let out = build(
        &root().join("examples/global-api"),
        &not_a_key,
        &out_dir,
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("key"), "{}", text(&out.stderr));
    assert!(!out_dir.exists());
}

#[test]
fn keygen_keeps_the_secret_private_and_never_overwrites() {
    let work = tempfile::tempdir().expect("temp dir");
    let (key, public) = keygen(work.path(), "ops");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(secret.starts_with("edgepack-secret-key-v1 "));
    assert!(
        std::fs::read_to_string(&public)
            .unwrap()
            .starts_with("edgepack-public-key-v1 ")
    );
    let again = edgepack(
        &[
            "keygen",
            "--out-dir",
            &work.path().display().to_string(),
            "--name",
            "ops",
        ],
        &root(),
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("not overwriting"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), secret);
}

#[test]
fn verify_names_each_kind_of_tampering() {
    let work = tempfile::tempdir().expect("temp dir");
    let (key, public) = keygen(work.path(), "ci");
    let (_, other_public) = keygen(work.path(), "other");
    let good = std::fs::read(build_region(&key, &work.path().join("out"), "eu-west")).unwrap();
    let raw = bundle::split(&good, &bundle::OpenLimits::default()).expect("split");

    let mut cases: Vec<(&str, Vec<u8>, PathBuf)> = Vec::new();
    cases.push(("truncated", good[..good.len() / 2].to_vec(), public.clone()));
    let mut payload = good.clone();
    let last = payload.len() - 3;
    payload[last] ^= 0x01;
    cases.push(("payload byte flipped", payload, public.clone()));
    // The manifest starts after the frame header (8 bytes), tag, format and length (16).
    let manifest_at = 24 + raw.manifest_bytes.len() / 2;
    let mut manifest = good.clone();
    manifest[manifest_at] ^= 0x01;
    cases.push(("manifest byte flipped", manifest, public.clone()));
    cases.push((
        "signature stripped",
        bundle::assemble(raw.manifest_bytes, &[], raw.tar_frame),
        public.clone(),
    ));
    let mut forged = raw.signatures[0].clone();
    let digit = if forged.signature.starts_with('0') {
        "1"
    } else {
        "0"
    };
    forged.signature.replace_range(0..1, digit);
    cases.push((
        "signature byte flipped",
        bundle::assemble(raw.manifest_bytes, &[forged], raw.tar_frame),
        public.clone(),
    ));
    let mut unknown = raw.signatures[0].clone();
    unknown.key_id = "release-key".to_string();
    cases.push((
        "unknown key id",
        bundle::assemble(raw.manifest_bytes, &[unknown], raw.tar_frame),
        public.clone(),
    ));
    cases.push(("untrusted signer", good.clone(), other_public));
    cases.push(("not a bundle", b"hello, world".to_vec(), public.clone()));

    let mut messages = Vec::new();
    for (what, bytes, trust) in &cases {
        let path = work
            .path()
            .join(format!("{}.edgepack", what.replace(' ', "-")));
        std::fs::write(&path, bytes).unwrap();
        let out = verify(&path, trust);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out.stdout));
        let message = text(&out.stderr);
        assert!(message.contains("refused"), "{what}: {message}");
        let reason = message
            .split_once(".edgepack: ")
            .map(|(_, reason)| reason.trim().to_string())
            .unwrap_or(message.clone());
        messages.push((what, reason));
    }
    for (i, (what, reason)) in messages.iter().enumerate() {
        for (other, other_reason) in &messages[i + 1..] {
            assert_ne!(reason, other_reason, "{what} and {other} read the same");
        }
    }
}

#[test]
fn a_second_signer_leaves_the_payload_alone() {
    let work = tempfile::tempdir().expect("temp dir");
    let (key, public) = keygen(work.path(), "ci");
    let (second_key, second_public) = keygen(work.path(), "release");
    let path = build_region(&key, &work.path().join("out"), "sa-east");
    let before = std::fs::read(&path).unwrap();
    let out = edgepack(
        &[
            "sign",
            &path.display().to_string(),
            "--key",
            &second_key.display().to_string(),
        ],
        &root(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let after = std::fs::read(&path).unwrap();
    let limits = bundle::OpenLimits::default();
    let (old, new) = (
        bundle::split(&before, &limits).unwrap(),
        bundle::split(&after, &limits).unwrap(),
    );
    assert_eq!(old.tar_frame, new.tar_frame);
    assert_eq!(old.manifest_bytes, new.manifest_bytes);
    for trust in [&public, &second_public] {
        let out = verify(&path, trust);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let report = manifest_json(&path);
    assert_eq!(report["signed_by"].as_array().map(Vec::len), Some(2));
}

#[test]
fn diff_names_a_changed_ttl_and_the_requests_it_flips() {
    let work = tempfile::tempdir().expect("temp dir");
    let (key, _) = keygen(work.path(), "ci");
    let edited = work.path().join("edited");
    edited_example(&edited, |source| {
        replaced(&source, "ttl=\"5m\"", "ttl=\"10m\"")
    });
    let (old_dir, new_dir) = (work.path().join("old"), work.path().join("new"));
    let region = ["--region", "eu-west"];
    assert_eq!(
        build(&root().join("examples/global-api"), &key, &old_dir, &region)
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        build(&edited, &key, &new_dir, &region).status.code(),
        Some(0)
    );

    let out = edgepack(
        &[
            "diff",
            &old_dir.display().to_string(),
            &new_dir.display().to_string(),
        ],
        &root(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("route GET,HEAD /api/data/*"), "{report}");
    assert!(report.contains("cache ttl: 5m → 10m"), "{report}");
    assert!(
        report.contains("was  ") && report.contains("cache 10m"),
        "{report}"
    );

    // The same comparison between the policies themselves, as JSON.
    let out = edgepack(
        &[
            "diff",
            "examples/global-api",
            &edited.display().to_string(),
            "--region",
            "eu-west",
            "--format",
            "json",
        ],
        &root(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["changed"], true);
    let flips = json["regions"][0]["flips"].as_array().expect("flips");
    assert!(
        flips
            .iter()
            .any(|f| f["request"] == "GET /api/data/items country=DE"),
        "the policy's own test request flips: {flips:?}"
    );

    // A build compared with itself, or with its policy, has not changed in meaning.
    let out = edgepack(
        &[
            "diff",
            &old_dir.display().to_string(),
            "examples/global-api",
            "--region",
            "eu-west",
        ],
        &root(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("unchanged in meaning: eu-west"));
}

#[test]
fn inspect_shows_manifest_routes_rules_and_signers() {
    let work = tempfile::tempdir().expect("temp dir");
    let (key, _) = keygen(work.path(), "ci");
    let bundle = build_region(&key, &work.path().join("out"), "eu-west");
    let out = edgepack(&["inspect", &bundle.display().to_string()], &root());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    for expected in [
        "region    eu-west (zone EU)",
        "policy.wasm",
        "plan.json",
        "/api/health",
        "sqli-union",
        "signed by",
        "edgepack.kdl:",
        "redirect 301 https://docs.example.com/{*} +query",
    ] {
        assert!(
            report.contains(expected),
            "{expected} missing from:\n{report}"
        );
    }
}

#[test]
fn diff_refuses_inputs_it_cannot_compare() {
    let work = tempfile::tempdir().expect("temp dir");
    let broken = work.path().join("broken");
    edited_example(&broken, |source| {
        source + "route \"/x/*\" { proxy \"no-such-origin\" }\n"
    });
    let out = edgepack(
        &["diff", "examples/global-api", &broken.display().to_string()],
        &root(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let message = text(&out.stderr);
    assert!(
        message.contains("no-such-origin") && message.contains("has errors"),
        "{message}"
    );

    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = edgepack(
        &["diff", "examples/global-api", &empty.display().to_string()],
        &root(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("neither a policy"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn diff_shows_a_changed_redirect_and_where_requests_now_go() {
    let work = tempfile::tempdir().expect("temp dir");
    let edited = work.path().join("edited");
    let redirect = r#"redirect "https://docs.example.com/{*}" status=301"#;
    edited_example(&edited, |source| {
        replaced(&source, redirect, &format!("{redirect} query=\"drop\""))
    });
    let out = edgepack(
        &[
            "diff",
            "examples/global-api",
            &edited.display().to_string(),
            "--region",
            "eu-west",
        ],
        &root(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains(
            "redirect target: https://docs.example.com/{*} +query → https://docs.example.com/{*}"
        ),
        "{report}"
    );
    assert!(
        report.contains("301 redirect to https://docs.example.com/a/b?q=hello"),
        "{report}"
    );
}

#[test]
fn diff_groups_like_flips_so_a_small_change_is_not_hidden_by_a_large_one() {
    // A tighter rate limit flips every request of the data routes; one more blocked
    // country flips far fewer. The report must show both kinds, with how many of each.
    let work = tempfile::tempdir().expect("temp dir");
    let edited = work.path().join("edited");
    edited_example(&edited, |source| {
        let source = replaced(
            &source,
            r#"ratelimit "per-ip" key="client-ip" limit=100 per="1m""#,
            r#"ratelimit "per-ip" key="client-ip" limit=50 per="1m""#,
        );
        replaced(&source, r#"block "KP" "IR""#, r#"block "KP" "IR" "CU""#)
    });
    let edited = edited.display().to_string();
    let out = edgepack(&["diff", "examples/global-api", &edited], &root());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    let region = report
        .split("region eu-west:")
        .nth(1)
        .and_then(|r| r.split("\n\n").next())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(region.contains("decided differently, in "), "{region}");
    assert!(
        region.contains("country=CU and ") && region.contains("now  451 geo blocked"),
        "the new block is shown: {region}"
    );
    assert!(
        region.contains("rate limit per-ip (50/1m by client-ip)"),
        "and the tighter limit: {region}"
    );
}
