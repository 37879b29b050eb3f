//! `edgepack-node`: the fixed runtime on every edge node. Parses its settings and runs the
//! node until SIGTERM (see `edgepack-node --help`).

use std::process::ExitCode;

use clap::Parser;
use edgepack_runtime_min::config::NodeArgs;

fn main() -> ExitCode {
    edgepack_runtime_min::server::run(NodeArgs::parse())
}
