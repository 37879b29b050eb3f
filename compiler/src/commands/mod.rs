//! One module per `edgepack` subcommand, and the key-file helpers several of them share.

pub mod build;
pub mod check;
pub mod dev;
pub mod diff;
pub mod explain;
pub mod fmt;
pub mod inspect;
pub mod keygen;
pub mod registry;
pub mod sign;
pub mod test;
pub mod verify;

use std::path::Path;

use clap::ValueEnum;
use ed25519_dalek::{SigningKey, VerifyingKey};
use edgepack_bundles::bundle::keys;

/// How a command prints its report (`check` adds GitHub annotations to these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people.
    Human,
    /// JSON on stdout, for tools.
    Json,
}

/// Reads a secret key file, with a message fit for the user on failure.
pub fn read_secret_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    keys::parse_secret_key(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads public key files, with a message fit for the user on failure.
pub fn read_public_keys(paths: &[impl AsRef<Path>]) -> Result<Vec<VerifyingKey>, String> {
    paths
        .iter()
        .map(|path| {
            let path = path.as_ref();
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            keys::parse_public_key(&text).map_err(|e| format!("{}: {e}", path.display()))
        })
        .collect()
}

/// Reads a bundle file whole, bounded by the opener's limit.
pub fn read_bundle(path: &Path) -> Result<Vec<u8>, String> {
    edgepack_bundles::bundle::read_file(path).map_err(|e| format!("{}: {e}", path.display()))
}
