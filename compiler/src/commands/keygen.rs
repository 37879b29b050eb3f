//! `edgepack keygen`: make an ed25519 signing key pair.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use ed25519_dalek::SigningKey;
use edgepack_bundles::bundle::{key_id, keys};

use crate::{Exit, Output};

/// Make an ed25519 key pair for signing bundles.
///
/// Writes `NAME.key` (the secret key, readable by you only; keep it in your CI's secret
/// store) and `NAME.pub` (the public key, for `edgepack-node --trust` and `edgepack verify
/// --trust`). Both are one line of text: `edgepack-secret-key-v1 <base64>` and
/// `edgepack-public-key-v1 <key id> <base64>`. Existing files are never overwritten.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory to write the key files into (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,

    /// Base name of the key files.
    #[arg(long, default_value = "edgepack")]
    pub name: String,
}

pub fn run(args: &KeygenArgs) -> Output {
    let mut out = Output::new();
    let fail = |out: &mut Output, message: String| {
        let _ = writeln!(out.stderr, "error: {message}");
        out.fail(Exit::Usage);
    };
    if args.name.is_empty() || args.name.contains(['/', '\\']) {
        fail(
            &mut out,
            format!("--name must be a plain file name, not {:?}", args.name),
        );
        return out;
    }
    let secret_path = args.out_dir.join(format!("{}.key", args.name));
    let public_path = args.out_dir.join(format!("{}.pub", args.name));
    for path in [&secret_path, &public_path] {
        if path.exists() {
            fail(
                &mut out,
                format!("{} exists; not overwriting a key", path.display()),
            );
            return out;
        }
    }
    let mut seed = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut seed) {
        fail(
            &mut out,
            format!("no randomness from the operating system: {e}"),
        );
        return out;
    }
    let key = SigningKey::from_bytes(&seed);
    if let Err(e) = std::fs::create_dir_all(&args.out_dir) {
        fail(&mut out, format!("{}: {e}", args.out_dir.display()));
        return out;
    }
    if let Err(e) = write_secret(&secret_path, keys::secret_key_text(&key).as_bytes()) {
        fail(&mut out, format!("{}: {e}", secret_path.display()));
        return out;
    }
    if let Err(e) = std::fs::write(&public_path, keys::public_key_text(&key.verifying_key())) {
        fail(&mut out, format!("{}: {e}", public_path.display()));
        return out;
    }
    let _ = writeln!(out.stdout, "secret key: {}", secret_path.display());
    let _ = writeln!(out.stdout, "public key: {}", public_path.display());
    let _ = writeln!(out.stdout, "key id:     {}", key_id(&key.verifying_key()));
    out
}

/// Creates the file readable and writable by its owner only.
fn write_secret(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}
