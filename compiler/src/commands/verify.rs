//! `edgepack verify`: check bundles as a node would.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use edgepack_bundles::bundle::{self, OpenLimits};

use crate::{Exit, Output};

/// Check that bundles are signed by a trusted key and intact, as a node checks them.
///
/// Exit status: 0 when every bundle verifies; 1 when one is refused (the reason is
/// printed: not signed, untrusted key, altered, truncated, files not matching the manifest,
/// unsafe archive, …); 2 when a file cannot be read.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Bundles to check.
    #[arg(required = true)]
    pub bundles: Vec<PathBuf>,

    /// Public keys to trust (repeatable); a bundle needs a valid signature by one of them.
    #[arg(long, value_name = "PUBLIC_KEY", required = true)]
    pub trust: Vec<PathBuf>,
}

pub fn run(args: &VerifyArgs) -> Output {
    let mut out = Output::new();
    let trusted = match super::read_public_keys(&args.trust) {
        Ok(keys) => keys,
        Err(message) => {
            let _ = writeln!(out.stderr, "error: {message}");
            out.fail(Exit::Usage);
            return out;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for path in &args.bundles {
        let bytes = match super::read_bundle(path) {
            Ok(b) => b,
            Err(message) => {
                let _ = writeln!(out.stderr, "error: {message}");
                out.fail(Exit::Usage);
                continue;
            }
        };
        match bundle::open(&bytes, &trusted, &OpenLimits::default()) {
            Ok(b) => {
                let m = &b.manifest;
                let _ = writeln!(
                    out.stdout,
                    "ok: {} (region {}, version {}, {} files, signed by {})",
                    path.display(),
                    m.region,
                    m.version,
                    m.files.len(),
                    b.signed_by.join(", ")
                );
                if let Some(expires) = m.expires
                    && expires <= now
                {
                    let _ = writeln!(
                        out.stderr,
                        "warning: {} expired at {expires} (Unix seconds); nodes will refuse it",
                        path.display()
                    );
                }
            }
            Err(error) => {
                let _ = writeln!(out.stderr, "refused: {}: {error}", path.display());
                out.fail(Exit::PolicyErrors);
            }
        }
    }
    out
}
