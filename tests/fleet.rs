//! A fleet: releases pushed to a real OCI registry (Debian's `docker-registry`, CNCF
//! distribution, on loopback) and pulled by three nodes of different regions, each its own
//! process; golden requests and automatic rollback on a node.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgepack_tests::e2e::{self, Keys, NodeProcess, get};

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-southeast"];
/// How often the nodes look at the registry.
const POLL: Duration = Duration::from_secs(2);

/// A policy whose `/where` names the region and the release, with a golden request that
/// checks it (`expect_status` is what the golden request expects of `/where`), and
/// `extra` appended.
fn fleet_policy(dir: &Path, release: &str, status: u16, expect_status: u16, extra: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut text = String::from(
        "edgepack 1\n\nzone \"EU\" { countries \"DE\" \"FR\" }\nzone \"US\" { countries \"US\" }\n\
         zone \"APAC\" { countries \"SG\" }\n\n",
    );
    let zones = ["EU", "US", "APAC"];
    for (region, zone) in REGIONS.iter().zip(zones) {
        text.push_str(&format!(
            "region \"{region}\" zone=\"{zone}\" {{\n    route \"/where\" {{\n        respond {status} \
             json=#\"{{\"served-by\":\"{region}\",\"release\":\"{release}\"}}\"#\n    }}\n}}\n"
        ));
    }
    text.push_str(&format!(
        "\nroute \"/where\" {{\n    respond {status} json=#\"{{\"served-by\":\"any\"}}\"#\n}}\n\n\
         test \"where answers\" {{\n    request \"GET\" \"/where\"\n    expect status={expect_status}\n}}\n{extra}"
    ));
    std::fs::write(dir.join("edgepack.kdl"), text).expect("write the policy");
}

/// Builds a release of the fleet policy into `out` and returns `out`.
fn release(
    work: &Path,
    name: &str,
    version: u64,
    key: &Keys,
    shape: (u16, u16),
    extra: &str,
) -> PathBuf {
    let policy = work.join(format!("policy-{name}"));
    fleet_policy(&policy, name, shape.0, shape.1, extra);
    let out = work.join(format!("dist-{name}"));
    e2e::build(&policy, key, &out, version, &REGIONS);
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A CNCF distribution registry on loopback with its own configuration and storage.
struct Registry {
    child: Child,
    config: PathBuf,
    port: u16,
}

/// `ci:fleet-secret`, bcrypt-hashed as the registry's htpasswd wants it.
const HTPASSWD: &str = "ci:$2b$05$JccNvU4VaX2tXCs.TjJYWOO4sBe7OxWA32eDcn5ZklIkbT1jRxPs.\n";

impl Registry {
    fn start(dir: &Path) -> Registry {
        Registry::configure(dir, "")
    }

    /// A registry that wants `ci:fleet-secret` for every request.
    fn with_password(dir: &Path) -> Registry {
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, HTPASSWD).expect("write htpasswd");
        let auth = format!(
            "auth:\n  htpasswd:\n    realm: edgepack-test\n    path: {}\n",
            htpasswd.display()
        );
        Registry::configure(dir, &auth)
    }

    fn configure(dir: &Path, auth: &str) -> Registry {
        let port = free_port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.join("storage").display()
            ),
        )
        .expect("write the registry configuration");
        Registry::run(config, port)
    }

    fn run(config: PathBuf, port: u16) -> Registry {
        let binary = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("Debian's docker-registry is not installed (`apt-get install docker-registry`; .ci/run does)");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child,
            config,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ready = get(&format!("http://127.0.0.1:{port}/v2/"), &[]);
        assert!(
            [200, 401].contains(&ready.status),
            "the registry answers the distribution API: {}",
            ready.status
        );
        registry
    }

    fn reference(&self) -> String {
        format!("127.0.0.1:{}/edgepack/fleet:prod", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pushes a release directory (with `extra` arguments); returns the release digest.
fn push(dist: &Path, reference: &str, extra: &[&str]) -> String {
    let dist = dist.display().to_string();
    let mut args = vec!["push", dist.as_str(), reference];
    args.extend_from_slice(extra);
    let printed = e2e::edgepack(&args);
    printed
        .trim()
        .rsplit_once('@')
        .map(|(_, digest)| digest.to_string())
        .expect("push prints the release's reference by digest")
}

fn pulling_node(region: &str, reference: &str, keys: &Keys, state: &Path) -> NodeProcess {
    NodeProcess::start(&[
        "--pull".into(),
        reference.into(),
        "--region".into(),
        region.into(),
        "--poll".into(),
        format!("{}ms", POLL.as_millis()),
        "--trust".into(),
        keys.public.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--log-format".into(),
        "json".into(),
    ])
}

/// What a node answers on `/where`: (release, served-by, bundle version).
fn where_is(node: &NodeProcess) -> (String, String, String) {
    let reply = get(&format!("{}/where", node.url), &[]);
    if reply.status != 200 {
        return (String::new(), String::new(), reply.status.to_string());
    }
    let json = reply.json();
    (
        json["release"].as_str().unwrap_or_default().to_string(),
        json["served-by"].as_str().unwrap_or_default().to_string(),
        reply
            .header("x-edge-bundle")
            .unwrap_or_default()
            .to_string(),
    )
}

fn wait_for_release(nodes: &[(&str, NodeProcess)], release: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let behind: Vec<&str> = nodes
            .iter()
            .filter(|(_, node)| where_is(node).0 != release)
            .map(|(region, _)| *region)
            .collect();
        if behind.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "release {release} did not reach {behind:?} within {within:?}; logs:\n{}",
            nodes
                .iter()
                .map(|(_, n)| n.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every node logged a refusal of `release` with `reason`, then checks each
/// still serves `serving`.
fn refused_by_all(nodes: &[(&str, NodeProcess)], release: &str, reason: &str, serving: &str) {
    let reason_label = format!(r#""reason":"{reason}""#);
    for (region, node) in nodes {
        let deadline = Instant::now() + POLL * 5;
        let refused = |log: &str| {
            log.lines().any(|l| {
                l.contains("bundle refused") && l.contains(release) && l.contains(&reason_label)
            })
        };
        while !refused(&node.log()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            refused(&node.log()),
            "{region} did not refuse {release} for {reason}:\n{}",
            node.log()
        );
        assert_eq!(where_is(node).0, serving, "{region} keeps serving");
    }
}

#[test]
fn a_fleet_pulls_each_region_s_bundle_and_refuses_bad_releases() {
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let keys = e2e::keygen(work, "release");
    let stranger = e2e::keygen(work, "stranger");
    let mut registry = Registry::start(work);
    let reference = registry.reference();

    let one = release(work, "one", 1, &keys, (200, 200), "");
    push(&one, &reference, &[]);
    let nodes: Vec<(&str, NodeProcess)> = REGIONS
        .iter()
        .map(|region| {
            let state = work.join(format!("state-{region}"));
            (*region, pulling_node(region, &reference, &keys, &state))
        })
        .collect();
    wait_for_release(&nodes, "one", Duration::from_secs(30));
    for (region, node) in &nodes {
        let (_, served_by, version) = where_is(node);
        assert_eq!((served_by.as_str(), version.as_str()), (*region, "1"));
        let health = get(&format!("{}/healthz", node.admin), &[]).json();
        assert_eq!(health["region"], *region);
    }

    // A new release reaches all three within two poll intervals.
    let two = release(work, "two", 2, &keys, (200, 200), "");
    push(&two, &reference, &[]);
    let took = wait_for_release(&nodes, "two", POLL * 2);
    eprintln!("release two reached all three nodes in {took:?}");

    // Signed by a key the nodes do not trust.
    let forged = release(work, "forged", 3, &stranger, (200, 200), "");
    let digest = push(&forged, &reference, &[]);
    refused_by_all(&nodes, &digest, "signature", "two");
    // Release one again: below the version every node runs.
    let digest = push(&one, &reference, &[]);
    refused_by_all(&nodes, &digest, "version", "two");
    // A release whose golden request fails on the node.
    let failing = release(work, "failing", 4, &keys, (200, 418), "");
    let digest = push(&failing, &reference, &[]);
    refused_by_all(&nodes, &digest, "golden", "two");
    // SIGHUP makes a node look at once, retrying the release it refused.
    let (_, first) = &nodes[0];
    first.signal("HUP");
    let deadline = Instant::now() + POLL;
    while first.log_count(&digest) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(first.log_count(&digest), 2, "{}", first.log());
    for (i, (region, node)) in nodes.iter().enumerate() {
        let metrics = node.metrics();
        for reason in ["signature", "version", "golden"] {
            let count = if i == 0 && reason == "golden" { 2 } else { 1 };
            assert!(
                metrics.contains(&format!(
                    r#"edgepack_activations_total{{result="refused",reason="{reason}"}} {count}"#
                )),
                "{region} counts the {reason} refusal:\n{metrics}"
            );
        }
    }

    // Without the registry the nodes keep serving, and say why they cannot look.
    registry.stop();
    for (region, node) in &nodes {
        assert!(
            node.wait_for_log("cannot reach the registry", POLL * 3),
            "{region}: {}",
            node.log()
        );
        assert_eq!(
            where_is(node).0,
            "two",
            "{region} serves without the registry"
        );
    }
    // A node restarted while the registry is away serves its last good bundle.
    let mut nodes = nodes;
    let (region, mut stopped) = nodes.remove(0);
    stopped.signal("TERM");
    stopped.wait_exit(Duration::from_secs(15));
    drop(stopped);
    let restarted = pulling_node(
        region,
        &reference,
        &keys,
        &work.join(format!("state-{region}")),
    );
    let (release_served, served_by, _) = where_is(&restarted);
    assert_eq!(
        (release_served.as_str(), served_by.as_str()),
        ("two", region),
        "{}",
        restarted.log()
    );
    nodes.insert(0, (region, restarted));
    // The registry returns (same storage): the next release goes out.
    let registry = Registry::run(registry.config.clone(), registry.port);
    let five = release(work, "five", 5, &keys, (200, 200), "");
    push(&five, &registry.reference(), &[]);
    wait_for_release(&nodes, "five", POLL * 3);
}

#[test]
fn push_and_pull_round_trip_one_region_and_name_what_is_missing() {
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let keys = e2e::keygen(work, "release");
    let registry = Registry::start(work);
    let reference = registry.reference();
    let one = release(work, "one", 1, &keys, (200, 200), "");
    let digest = push(&one, &reference, &["--tag", "v1"]);
    let trust = keys.public.display().to_string();
    let out = work.join("pulled");
    for target in [
        reference.clone(),
        format!("127.0.0.1:{}/edgepack/fleet:v1", registry.port),
        format!("127.0.0.1:{}/edgepack/fleet@{digest}", registry.port),
    ] {
        e2e::edgepack(&[
            "pull",
            &target,
            "--region",
            "us-east",
            "--out",
            &out.display().to_string(),
            "--trust",
            &trust,
        ]);
        assert_eq!(
            std::fs::read(out.join("us-east.edgepack")).expect("pulled"),
            std::fs::read(one.join("us-east.edgepack")).expect("built"),
            "the pulled bundle is the pushed one, byte for byte"
        );
    }
    let missing = Command::new(e2e::binary("edgepack"))
        .args(["pull", &reference, "--region", "mars", "--out"])
        .arg(&out)
        .output()
        .expect("run edgepack pull");
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("no bundle for region mars")
            && stderr.contains("ap-southeast, eu-west, us-east"),
        "{stderr}"
    );
    // Nothing listening: the error says so, not just that a request failed.
    let nowhere = format!("127.0.0.1:{}/edgepack/fleet:prod", free_port());
    let unreachable = Command::new(e2e::binary("edgepack"))
        .args(["pull", &nowhere, "--region", "eu-west", "--out"])
        .arg(&out)
        .output()
        .expect("run edgepack pull");
    assert_eq!(unreachable.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[test]
fn a_bundle_whose_error_rate_crosses_its_threshold_is_rolled_back() {
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let keys = e2e::keygen(work, "release");
    let rollout = "rollout watch=\"30s\" max-error-rate=\"50%\" min-requests=5\n";
    let good = release(work, "good", 1, &keys, (200, 200), rollout);
    // Passes its golden request (it expects the 503), then fails real traffic.
    let bad = release(work, "bad", 2, &keys, (503, 503), rollout);
    let bundles = work.join("bundles");
    let state = work.join("state");
    std::fs::create_dir_all(&bundles).expect("mkdir");
    let install = |dist: &Path| {
        let bytes = std::fs::read(dist.join("eu-west.edgepack")).expect("built");
        e2e::install(&bytes, &bundles, "eu-west");
    };
    install(&good);
    let args = vec![
        "--bundle".to_string(),
        bundles.display().to_string(),
        "--region".into(),
        "eu-west".into(),
        "--trust".into(),
        keys.public.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--log-format".into(),
        "json".into(),
    ];
    let mut node = NodeProcess::start(&args);
    let url = format!("{}/where", node.url);
    assert_eq!(get(&url, &[]).status, 200);

    install(&bad);
    let serving_bad = e2e::eventually(&url, &[], Duration::from_secs(20), |r| r.status == 503);
    assert_eq!(
        serving_bad.header("x-edge-bundle"),
        Some("2"),
        "{}",
        node.log()
    );
    for _ in 0..10 {
        get(&url, &[]);
    }
    let back = e2e::eventually(&url, &[], Duration::from_secs(10), |r| r.status == 200);
    assert_eq!(
        back.header("x-edge-bundle"),
        Some("1"),
        "rolled back:\n{}",
        node.log()
    );
    assert!(node.log().contains("rolling back"), "{}", node.log());
    // The count follows the swap by a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut metrics = node.metrics();
    while !metrics.contains(r#"edgepack_rollbacks_total{result="rolled-back"} 1"#)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        metrics = node.metrics();
    }
    assert!(
        metrics.contains(r#"edgepack_rollbacks_total{result="rolled-back"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("edgepack_bundle_version 1"), "{metrics}");

    // The failed version stays out, here and after a restart; a higher one goes in.
    node.signal("HUP");
    assert!(
        node.wait_for_log("rolled back on this node", Duration::from_secs(10)),
        "{}",
        node.log()
    );
    assert_eq!(get(&url, &[]).header("x-edge-bundle"), Some("1"));
    node.signal("TERM");
    node.wait_exit(Duration::from_secs(15));
    let node = NodeProcess::start(&args);
    let url = format!("{}/where", node.url);
    let reply = e2e::eventually(&url, &[], Duration::from_secs(20), |r| r.status == 200);
    assert_eq!(reply.header("x-edge-bundle"), Some("1"), "{}", node.log());
    let fixed = release(work, "fixed", 3, &keys, (200, 200), rollout);
    install(&fixed);
    let reply = e2e::eventually(&url, &[], Duration::from_secs(20), |r| {
        r.header("x-edge-bundle") == Some("3")
    });
    assert_eq!(reply.json()["release"], "fixed", "{}", node.log());
}

#[test]
fn registry_credentials_come_from_flags_or_the_docker_configuration() {
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    let keys = e2e::keygen(work, "release");
    let registry = Registry::with_password(work);
    let reference = registry.reference();
    let one = release(work, "one", 1, &keys, (200, 200), "");
    let dist = one.display().to_string();

    let anonymous = Command::new(e2e::binary("edgepack"))
        .args(["push", &dist, &reference])
        .env("DOCKER_CONFIG", work.join("no-docker-config"))
        .output()
        .expect("run edgepack push");
    assert_eq!(anonymous.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("wants credentials"), "{stderr}");

    let mut push = Command::new(e2e::binary("edgepack"))
        .args([
            "push",
            &dist,
            &reference,
            "--user",
            "ci",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run edgepack push");
    {
        use std::io::Write as _;
        let mut stdin = push.stdin.take().expect("stdin");
        stdin
            .write_all(b"fleet-secret\n")
            .expect("write the password");
    }
    let pushed = push.wait_with_output().expect("push finishes");
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    // `docker login` writes the Docker configuration; pull reads it.
    let docker = work.join("docker");
    std::fs::create_dir_all(&docker).expect("mkdir");
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "ci:fleet-secret",
    );
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"{auth}"}}}}}}"#,
            registry.port
        ),
    )
    .expect("write the Docker configuration");
    let out = work.join("pulled");
    let pulled = Command::new(e2e::binary("edgepack"))
        .args(["pull", &reference, "--region", "eu-west", "--out"])
        .arg(&out)
        .env("DOCKER_CONFIG", &docker)
        .output()
        .expect("run edgepack pull");
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    assert!(out.join("eu-west.edgepack").is_file());

    // A node with its password in a file.
    let password = work.join("registry-password");
    std::fs::write(&password, "fleet-secret\n").expect("write the password file");
    let node = NodeProcess::start(&[
        "--pull".into(),
        reference.clone(),
        "--region".into(),
        "us-east".into(),
        "--registry-user".into(),
        "ci".into(),
        "--registry-password-file".into(),
        password.display().to_string(),
        "--trust".into(),
        keys.public.display().to_string(),
        "--log-format".into(),
        "json".into(),
    ]);
    let reply = e2e::eventually(
        &format!("{}/where", node.url),
        &[],
        Duration::from_secs(20),
        |r| r.status == 200,
    );
    assert_eq!(reply.json()["served-by"], "us-east", "{}", node.log());
}
