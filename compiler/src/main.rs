//! `edgepack`: check, format, build, sign, verify, inspect and compare edge policies.
//!
//! A thin shell over the library: parse arguments, run the subcommand, print what it
//! produced, exit with its status (0 ok, 1 policy errors, 2 usage or I/O, 101 a bug).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgepack_compiler::commands::{
    build, check, dev, diff, explain, fmt, inspect, keygen, registry, sign, test, verify,
};
use edgepack_compiler::report::HumanStyle;

/// Edge policy as code: check, format and compile KDL policies into signed Wasm bundles.
///
/// A policy is a directory whose entry file is `edgepack.kdl`. Start with
/// `edgepack check examples/global-api`, then `edgepack keygen --out-dir keys` and
/// `edgepack build examples/global-api --key keys/edgepack.key --out dist`; ship with
/// `edgepack push dist registry.example.com/team/api:prod`.
/// See docs/language.md for the language and docs/bundle-format.md for what ships.
#[derive(Debug, Parser)]
#[command(name = "edgepack", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Check(check::CheckArgs),
    Fmt(fmt::FmtArgs),
    Build(build::BuildArgs),
    Explain(explain::ExplainArgs),
    Keygen(keygen::KeygenArgs),
    Sign(sign::SignArgs),
    Verify(verify::VerifyArgs),
    Inspect(inspect::InspectArgs),
    Diff(diff::DiffArgs),
    Test(test::TestArgs),
    Dev(dev::DevArgs),
    Push(registry::PushArgs),
    Pull(registry::PullArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let style = HumanStyle::for_terminal(std::io::stderr().is_terminal());
    let output = match &cli.command {
        Command::Check(args) => check::run(args, style),
        Command::Fmt(args) => fmt::run(args, style),
        Command::Build(args) => build::run(args, style),
        Command::Explain(args) => explain::run(args, style),
        Command::Keygen(args) => keygen::run(args),
        Command::Sign(args) => sign::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Diff(args) => diff::run(args, style),
        Command::Test(args) => test::run(args, style),
        Command::Dev(args) => dev::run(args, style),
        Command::Push(args) => registry::push(args),
        Command::Pull(args) => registry::pull(args),
    };
    // A closed pipe (`edgepack check | head`) is not an error worth reporting.
    let _ = std::io::stdout().write_all(output.stdout.as_bytes());
    let _ = std::io::stderr().write_all(output.stderr.as_bytes());
    ExitCode::from(output.exit as u8)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
