//! `edgepack-node`: the fixed runtime on every edge node. Parses its settings and runs the
//! node until SIGTERM (see `edgepack-node --help`).

use std::process::ExitCode;

use clap::Parser;
use edgepack_runtime_min::config::NodeArgs;

fn main() -> ExitCode {
    let args = NodeArgs::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("edgepack-worker");
    if let Some(workers) = args.workers {
        builder.worker_threads(workers.max(1));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("edgepack-node: cannot start the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(edgepack_runtime_min::server::run(args))
}
