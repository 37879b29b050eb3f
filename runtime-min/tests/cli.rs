//! The `edgepack-node` command line: help that teaches, clear refusals of bad settings.

use std::process::Command;

fn node(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgepack-node"))
        .args(args)
        .output()
        .expect("run edgepack-node")
}

#[test]
fn help_names_every_node_setting_and_no_policy_ones() {
    let output = node(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--bundle",
        "--trust",
        "--listen",
        "--admin",
        "--state-dir",
        "--region",
        "--resolve",
        "--origin-ca",
        "--tls-cert",
        "--pseudonymize-key-file",
        "--require-expiry",
        "--max-body",
        "--header-timeout",
        "--idle-timeout",
        "--decide-timeout",
        "--drain-timeout",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
    for policy_matter in ["--route", "--waf", "--cache-ttl", "--rate-limit"] {
        assert!(
            !help.contains(policy_matter),
            "{policy_matter} is policy, not a node setting"
        );
    }
}

#[test]
fn bad_settings_are_refused_before_anything_starts() {
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "--bundle",
                "b",
                "--trust",
                "k.pub",
                "--listen",
                "nowhere",
                "--admin",
                "127.0.0.1:0",
            ],
            "--listen",
        ),
        (
            &[
                "--bundle",
                "b",
                "--trust",
                "k.pub",
                "--resolve",
                "api.internal=1.2.3.4",
                "--admin",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
            ],
            "--resolve",
        ),
        (
            &[
                "--bundle",
                "b",
                "--trust",
                "/nonexistent/k.pub",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ],
            "k.pub",
        ),
    ];
    for (args, mentioned) in cases {
        let output = node(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(mentioned), "{args:?}: {stderr}");
    }
}
