//! The edgepack compiler: the commands of the `edgepack` tool and what they share.
//!
//! The policy language itself (parsing, diagnostics, validation) lives in `edgepack-schema`.
//! This crate lowers a validated policy to one [`plan::RegionPlan`] per region
//! ([`lower`]), defines what a plan means ([`eval`], the reference evaluator), and compiles
//! plans to Wasm policy modules ([`codegen`], [`optimize`]). Each subcommand is one module
//! under [`commands`] holding its `clap` arguments (whose doc comments are the `--help`
//! text) and a `run` function that returns what to print and the exit status.

pub mod codegen;
pub mod commands;
pub mod decodings;
pub mod eval;
pub mod lower;
pub mod optimize;
pub mod pipeline;
/// The region plan, defined beside the ABI because the node reads it too.
pub use edgepack_bundles::plan;
pub mod report;
pub mod requests;
pub mod verify;

/// Exit statuses of the `edgepack` tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything checked out.
    Ok = 0,
    /// The policy has errors (or, with `fmt --check`, files need formatting).
    PolicyErrors = 1,
    /// Bad usage, or a file could not be read or written.
    Usage = 2,
}

/// What a command produced: text for stdout and stderr, and how to exit.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub exit: Exit,
}

impl Output {
    pub fn new() -> Output {
        Output {
            stdout: String::new(),
            stderr: String::new(),
            exit: Exit::Ok,
        }
    }

    /// Raises the exit status; a worse status is never lowered.
    pub fn fail(&mut self, exit: Exit) {
        if exit as u8 > self.exit as u8 {
            self.exit = exit;
        }
    }
}

impl Default for Output {
    fn default() -> Self {
        Output::new()
    }
}
