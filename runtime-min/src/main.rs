//! `edgepack-node`: the fixed runtime on every edge node.
//!
//! Not yet able to serve: it answers `--help` and `--version` and refuses to start, so no
//! deployment mistakes it for a working node.

use clap::Parser;

/// The edgepack edge runtime: verifies signed bundles and enforces them on HTTP traffic.
#[derive(Debug, Parser)]
#[command(name = "edgepack-node", version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("edgepack-node: this build cannot serve bundles yet");
    std::process::ExitCode::from(2)
}
