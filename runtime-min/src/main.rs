//! `edgepack-node`: the fixed runtime on every edge node. Parses its settings and runs the
//! node until SIGTERM (see `edgepack-node --help`).

use std::process::ExitCode;

use clap::Parser;
use edgepack_runtime_min::config::NodeArgs;

fn main() -> ExitCode {
    let args = NodeArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgepack-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("edgepack-node: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(edgepack_runtime_min::server::run(args))
}
