//! `edgepack push` and `edgepack pull`: releases in an OCI registry (the format is in
//! `edgepack_runtime_min::registry`, shared with nodes that `--pull`).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use clap::Args;
use edgepack_bundles::bundle::{self, OpenLimits};
use edgepack_runtime_min::registry::{Login, Registry, ReleaseBundle};

use crate::{Exit, Output};

/// Publish a release — every region's bundle in DIR — to an OCI registry.
///
/// The release is one image index with one manifest per region (artifactType
/// `application/vnd.edgepack.bundle.v1`, the region in the `dev.edgepack.region`
/// annotation, the bundle as the one layer). Everything is pushed by digest; the tag in
/// REF moves last, so nodes pulling REF see the old release or the whole new one. Prints
/// the release's digest.
///
/// Plain HTTP is used only for a registry on this machine (localhost, 127.0.0.1, [::1]).
/// Credentials: --user with --password-stdin, else the Docker configuration
/// (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, credential helpers included).
#[derive(Debug, Args)]
#[command(after_help = "Example:
  edgepack build examples/global-api --key keys/edgepack.key --out dist --version 42
  edgepack push dist registry.example.com/team/global-api:prod")]
pub struct PushArgs {
    /// The directory `edgepack build` wrote: one `<region>.edgepack` per region.
    pub dir: PathBuf,

    /// Where to publish: `registry/repository:tag`.
    pub reference: String,

    /// Refuse to push unless every bundle is signed by one of these keys (repeatable).
    #[arg(long, value_name = "PUBLIC_KEY")]
    pub trust: Vec<PathBuf>,

    /// Also point these tags at the release (repeatable), e.g. `--tag v42` for a name that
    /// never moves; they are set before REF's own tag.
    #[arg(long = "tag", value_name = "TAG", value_parser = parse_tag)]
    pub tags: Vec<String>,

    #[command(flatten)]
    pub login: LoginArgs,
}

/// An OCI tag: up to 128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
fn parse_tag(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 128
        && !text.starts_with(['.', '-'])
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a tag: up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"
        ))
    }
}

/// Fetch one region's bundle of a release from an OCI registry.
///
/// Writes `<region>.edgepack` into --out. With --trust, the bundle is verified as a node
/// would before it is written.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  edgepack pull registry.example.com/team/global-api:prod --region eu-west --out dist")]
pub struct PullArgs {
    /// The release: `registry/repository:tag` or `registry/repository@sha256:…`.
    pub reference: String,

    /// The region whose bundle to fetch.
    #[arg(long, value_name = "REGION")]
    pub region: String,

    /// Directory to write `<region>.edgepack` into (created if needed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Verify the bundle's signature against these keys before writing it (repeatable).
    #[arg(long, value_name = "PUBLIC_KEY")]
    pub trust: Vec<PathBuf>,

    #[command(flatten)]
    pub login: LoginArgs,
}

/// Registry credentials given on the command line.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name for the registry.
    #[arg(long, value_name = "USER", requires = "password_stdin")]
    pub user: Option<String>,

    /// Read the password or token for --user from standard input.
    #[arg(long, requires = "user")]
    pub password_stdin: bool,
}

impl LoginArgs {
    fn login(&self) -> Result<Login, String> {
        let password = if self.password_stdin {
            let mut text = String::new();
            std::io::stdin()
                .take(64 << 10)
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
            Some(text.trim_end_matches(['\r', '\n']).to_string())
        } else {
            None
        };
        Ok(Login {
            username: self.user.clone(),
            password,
        })
    }
}

/// Runs an async registry operation on a runtime of its own.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    Ok(runtime.block_on(future))
}

pub fn push(args: &PushArgs) -> Output {
    let mut out = Output::new();
    let release = match read_release(&args.dir, &args.trust) {
        Ok(release) => release,
        Err((exit, message)) => {
            let _ = writeln!(out.stderr, "error: {message}");
            out.fail(exit);
            return out;
        }
    };
    let pushed = args
        .login
        .login()
        .and_then(|login| Registry::connect(&args.reference, &login).map_err(|e| e.to_string()))
        .and_then(|registry| {
            block_on(registry.push(&release, &args.tags))?.map_err(|e| e.to_string())
        });
    match pushed {
        Ok(digest) => {
            let regions: Vec<&str> = release.iter().map(|b| b.region.as_str()).collect();
            let _ = writeln!(
                out.stderr,
                "pushed version {} for {} region(s): {}",
                release[0].version,
                regions.len(),
                regions.join(", ")
            );
            let _ = writeln!(out.stdout, "{}@{digest}", base_reference(&args.reference));
        }
        Err(message) => {
            let _ = writeln!(out.stderr, "error: {message}");
            out.fail(Exit::Usage);
        }
    }
    out
}

/// The bundles of a release directory, checked: intact, one per region, one version, and
/// signed by a trusted key when keys are given.
fn read_release(dir: &Path, trust: &[PathBuf]) -> Result<Vec<ReleaseBundle>, (Exit, String)> {
    let trusted = super::read_public_keys(trust).map_err(|m| (Exit::Usage, m))?;
    let entries =
        std::fs::read_dir(dir).map_err(|e| (Exit::Usage, format!("{}: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "edgepack"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err((
            Exit::Usage,
            format!(
                "{} holds no .edgepack bundles; run `edgepack build … --out {}` first",
                dir.display(),
                dir.display()
            ),
        ));
    }
    let limits = OpenLimits::default();
    let mut release: Vec<ReleaseBundle> = Vec::new();
    for path in paths {
        let bytes = super::read_bundle(&path).map_err(|m| (Exit::Usage, m))?;
        let manifest = if trusted.is_empty() {
            bundle::open_unverified(&bytes, &limits).map(|(b, _)| b.manifest)
        } else {
            bundle::open(&bytes, &trusted, &limits).map(|b| b.manifest)
        }
        .map_err(|e| (Exit::PolicyErrors, format!("{}: {e}", path.display())))?;
        if let Some(first) = release.first()
            && first.version != manifest.version
        {
            return Err((
                Exit::PolicyErrors,
                format!(
                    "{} is version {}, {}.edgepack version {}: a release is one build",
                    path.display(),
                    manifest.version,
                    first.region,
                    first.version
                ),
            ));
        }
        if release.iter().any(|b| b.region == manifest.region) {
            return Err((
                Exit::PolicyErrors,
                format!(
                    "two bundles in {} are for region {}",
                    dir.display(),
                    manifest.region
                ),
            ));
        }
        release.push(ReleaseBundle {
            region: manifest.region,
            version: manifest.version,
            bytes,
        });
    }
    Ok(release)
}

/// `registry/repo:tag` without its tag or digest.
fn base_reference(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    match without_digest.rsplit_once(':') {
        Some((base, tag)) if !tag.contains('/') => base,
        _ => without_digest,
    }
}

pub fn pull(args: &PullArgs) -> Output {
    let mut out = Output::new();
    let trusted = match super::read_public_keys(&args.trust) {
        Ok(keys) => keys,
        Err(message) => {
            let _ = writeln!(out.stderr, "error: {message}");
            out.fail(Exit::Usage);
            return out;
        }
    };
    let limits = OpenLimits::default();
    let pulled = args
        .login
        .login()
        .and_then(|login| Registry::connect(&args.reference, &login).map_err(|e| e.to_string()))
        .and_then(|registry| {
            block_on(registry.pull(&args.region, None, &limits))?.map_err(|e| e.to_string())
        });
    let pulled = match pulled {
        Ok(pulled) => pulled,
        Err(message) => {
            let _ = writeln!(out.stderr, "error: {message}");
            out.fail(Exit::Usage);
            return out;
        }
    };
    let opened = if trusted.is_empty() {
        bundle::open_unverified(&pulled.bytes, &limits).map(|(b, _)| b)
    } else {
        bundle::open(&pulled.bytes, &trusted, &limits)
    };
    let manifest = match opened {
        Ok(b) => b.manifest,
        Err(error) => {
            let _ = writeln!(out.stderr, "refused: the pulled bundle: {error}");
            out.fail(Exit::PolicyErrors);
            return out;
        }
    };
    if manifest.region != args.region {
        let _ = writeln!(
            out.stderr,
            "refused: the release's {} entry holds a bundle for region {}",
            args.region, manifest.region
        );
        out.fail(Exit::PolicyErrors);
        return out;
    }
    let path = args.out.join(format!("{}.edgepack", args.region));
    let written = std::fs::create_dir_all(&args.out).and_then(|()| {
        let temp = args.out.join(format!(".{}.edgepack.tmp", args.region));
        std::fs::write(&temp, &pulled.bytes)?;
        std::fs::rename(&temp, &path)
    });
    match written {
        Ok(()) => {
            let _ = writeln!(
                out.stdout,
                "{} (region {}, version {}, release {})",
                path.display(),
                manifest.region,
                manifest.version,
                pulled.release
            );
        }
        Err(error) => {
            let _ = writeln!(out.stderr, "error: {}: {error}", path.display());
            out.fail(Exit::Usage);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_lose_their_tag_or_digest() {
        assert_eq!(
            base_reference("127.0.0.1:5000/team/api:prod"),
            "127.0.0.1:5000/team/api"
        );
        assert_eq!(
            base_reference("127.0.0.1:5000/team/api"),
            "127.0.0.1:5000/team/api"
        );
        assert_eq!(
            base_reference("registry.example.com/api@sha256:ab"),
            "registry.example.com/api"
        );
    }

    #[test]
    fn tags_follow_the_oci_rules() {
        assert_eq!(parse_tag("v42").as_deref(), Ok("v42"));
        assert!(parse_tag("release_2026.11-rc1").is_ok());
        assert!(parse_tag("").is_err());
        assert!(parse_tag("-x").is_err());
        assert!(parse_tag("a/b").is_err());
        assert!(parse_tag(&"x".repeat(129)).is_err());
    }

    #[test]
    fn an_empty_directory_is_not_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let error = read_release(dir.path(), &[]).unwrap_err();
        assert!(error.1.contains("no .edgepack bundles"), "{}", error.1);
    }
}
