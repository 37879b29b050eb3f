//! `edgepack sign`: add a signature to a built bundle.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use edgepack_bundles::bundle;

use super::build::write_atomically;
use crate::{Exit, Output};

/// Add a signature to a built bundle, without touching its payload.
///
/// For a second signer, or for signing on a separate machine from the one that built the
/// bundle. A signature by the same key replaces the old one. The bundle is rewritten in
/// place unless `--out` is given.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The bundle to sign.
    pub bundle: PathBuf,

    /// The secret key to sign with.
    #[arg(long, value_name = "SECRET_KEY")]
    pub key: PathBuf,

    /// Write the signed bundle here instead of in place.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: &SignArgs) -> Output {
    let mut out = Output::new();
    let result = (|| -> Result<(Vec<u8>, String), (Exit, String)> {
        let key = super::read_secret_key(&args.key).map_err(|m| (Exit::Usage, m))?;
        let bytes = super::read_bundle(&args.bundle).map_err(|m| (Exit::Usage, m))?;
        let signed = bundle::add_signature(&bytes, &key).map_err(|e| {
            (
                Exit::PolicyErrors,
                format!("{}: {e}", args.bundle.display()),
            )
        })?;
        Ok((signed, bundle::key_id(&key.verifying_key())))
    })();
    match result {
        Ok((signed, key_id)) => {
            let target = args.out.as_ref().unwrap_or(&args.bundle);
            if let Err(e) = write_atomically(target, &signed) {
                let _ = writeln!(out.stderr, "error: {}: {e}", target.display());
                out.fail(Exit::Usage);
            } else {
                let _ = writeln!(out.stdout, "signed {} with key {key_id}", target.display());
            }
        }
        Err((exit, message)) => {
            let _ = writeln!(out.stderr, "error: {message}");
            out.fail(exit);
        }
    }
    out
}
