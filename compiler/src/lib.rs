//! The edgepack compiler: the commands of the `edgepack` tool and what they share.
//!
//! The policy language itself (parsing, diagnostics, validation) lives in `edgepack-schema`;
//! this crate runs it and, in later stages, lowers a validated policy per region and builds
//! bundles. Each subcommand is one module under [`commands`] holding its `clap` arguments
//! (whose doc comments are the `--help` text) and a `run` function that returns what to
//! print and the exit status, so tests can run commands without a process.

pub mod commands;
pub mod report;

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
