//! `edgepack dev`: build a policy with a development key, serve it on a local
//! edgepack-node, and rebuild and swap it in on every save.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Args, Parser};
use edgepack_bundles::bundle::keys;
use edgepack_runtime_min::config::NodeArgs;

use crate::pipeline::{self, Release};
use crate::report::HumanStyle;
use crate::{Exit, Output};

/// Serve a policy locally and rebuild it on every save.
///
/// Builds one region (the first, or `--region`) with a throwaway development key, runs
/// edgepack-node on it in this process, and watches the policy's directory: each save
/// rebuilds the bundle under the next version and the node swaps it in, as it would a
/// shipped one. A save with errors prints the diagnostics and keeps the last good build
/// serving. Origins are reached as the policy says; send them elsewhere with `--resolve`.
///
/// Example: `edgepack dev examples/global-api --region eu-west`, then
/// `curl -H 'cf-ipcountry: DE' localhost:8080/api/health`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// The policy: a directory holding `edgepack.kdl`, or one `.kdl` file.
    pub policy: PathBuf,

    /// The region to serve (default: the policy's first).
    #[arg(long)]
    pub region: Option<String>,

    /// Address to serve requests on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Address of `/metrics`, `/healthz` and `POST /cache/purge`.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,

    /// Send an origin's `HOST:PORT` to another address, as curl does (repeatable).
    #[arg(long, value_name = "HOST:PORT=ADDR")]
    pub resolve: Vec<String>,

    /// PEM file of CA certificates trusted for `https` origins.
    #[arg(long, value_name = "FILE")]
    pub origin_ca: Option<PathBuf>,

    /// An HS shared secret a JWT provider names (`secret "NAME"`), as edgepack-node takes it
    /// (repeatable; or EDGEPACK_JWT_SECRET_<NAME>).
    #[arg(long, value_name = "NAME=FILE")]
    pub jwt_secret: Vec<String>,
}

pub fn run(args: &DevArgs, style: HumanStyle) -> Output {
    let mut out = Output::new();
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => {
            let _ = writeln!(
                out.stderr,
                "error: cannot make a working directory: {error}"
            );
            out.fail(Exit::Usage);
            return out;
        }
    };
    let mut seed = [0u8; 32];
    if let Err(error) = getrandom::fill(&mut seed) {
        let _ = writeln!(out.stderr, "error: no randomness for a key: {error}");
        out.fail(Exit::Usage);
        return out;
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let bundles = dir.path().join("bundles");
    let trust = dir.path().join("dev.pub");
    if let Err(error) = std::fs::create_dir_all(&bundles)
        .and_then(|()| std::fs::write(&trust, keys::public_key_text(&key.verifying_key())))
    {
        let _ = writeln!(out.stderr, "error: {error}");
        out.fail(Exit::Usage);
        return out;
    }
    let mut builder = Builder {
        policy: args.policy.clone(),
        region: args.region.clone(),
        bundles: bundles.clone(),
        key,
        version: 0,
        style,
        inputs: HashSet::new(),
        failure: None,
    };
    let Some(region) = builder.build() else {
        out.fail(Exit::PolicyErrors);
        return out;
    };
    let mut node_args = vec![
        "edgepack-node".to_string(),
        "--bundle".into(),
        bundles.display().to_string(),
        "--trust".into(),
        trust.display().to_string(),
        "--region".into(),
        region,
        "--listen".into(),
        args.listen.clone(),
        "--admin".into(),
        args.admin.clone(),
        "--log-format".into(),
        "text".into(),
        "--no-access-log".into(),
        "--poll".into(),
        "1s".into(),
    ];
    for resolve in &args.resolve {
        node_args.extend(["--resolve".to_string(), resolve.clone()]);
    }
    for secret in &args.jwt_secret {
        node_args.extend(["--jwt-secret".to_string(), secret.clone()]);
    }
    if let Some(ca) = &args.origin_ca {
        node_args.extend(["--origin-ca".to_string(), ca.display().to_string()]);
    }
    let node_args = match NodeArgs::try_parse_from(&node_args) {
        Ok(parsed) => parsed,
        Err(error) => {
            let _ = writeln!(out.stderr, "error: {error}");
            out.fail(Exit::Usage);
            return out;
        }
    };
    let watched = policy_dir(&args.policy);
    if let Err(message) = rebuild_on_save(&watched, builder) {
        let _ = writeln!(out.stderr, "error: {message}");
        out.fail(Exit::Usage);
        return out;
    }
    eprintln!(
        "edgepack dev: starting a node on http://{} (metrics on http://{}/metrics); watching {}",
        args.listen,
        args.admin,
        watched.display()
    );
    let status = edgepack_runtime_min::server::run(node_args);
    if status != std::process::ExitCode::SUCCESS {
        out.fail(Exit::Usage);
    }
    drop(dir);
    out
}

/// Builds the served region's bundle into the node's bundle directory.
struct Builder {
    policy: PathBuf,
    region: Option<String>,
    bundles: PathBuf,
    key: ed25519_dalek::SigningKey,
    version: u64,
    style: HumanStyle,
    /// The files the last good build read (canonical paths).
    inputs: HashSet<PathBuf>,
    /// What the last build printed when it failed.
    failure: Option<String>,
}

impl Builder {
    /// Whether a change to `paths` may change the build: a policy file, or a file the last
    /// build read. Other files in the directory (logs, a node's state, editor backups) do
    /// not rebuild. After a failed build, any change does: the fix may be a file not read
    /// yet, such as a missing key.
    fn affected_by(&self, paths: &[PathBuf]) -> bool {
        self.failure.is_some()
            || paths.iter().any(|path| {
                path.extension().is_some_and(|e| e == "kdl")
                    || self.inputs.contains(&canonical(path))
            })
    }

    /// Builds the next version; prints diagnostics and returns `None` on errors (the same
    /// failure is printed once, however often it is rebuilt).
    fn build(&mut self) -> Option<String> {
        let started = Instant::now();
        let mut out = Output::new();
        let built = self.try_build(&mut out);
        if built.is_none() {
            if self.failure.as_ref() != Some(&out.stderr) {
                let _ = std::io::stderr().write_all(out.stderr.as_bytes());
            }
            self.failure = Some(out.stderr);
            return None;
        }
        self.failure = None;
        let _ = std::io::stderr().write_all(out.stderr.as_bytes());
        let region = built?;
        eprintln!(
            "edgepack dev: built {region} version {} in {} ms",
            self.version,
            started.elapsed().as_millis()
        );
        Some(region)
    }

    fn try_build(&mut self, out: &mut Output) -> Option<String> {
        let (checked, policy) = pipeline::check(&self.policy, out, self.style)?;
        let region = match &self.region {
            Some(region) => region.clone(),
            None => policy.regions.first()?.name.value.clone(),
        };
        let plans = match pipeline::plans(&policy, &checked, std::slice::from_ref(&region)) {
            Ok(plans) => plans,
            Err(unknown) => {
                out.stderr
                    .push_str(&format!("error: no region named {}\n", unknown.join(", ")));
                return None;
            }
        };
        let compiled = match plans.into_iter().next().map(pipeline::compile) {
            Some(Ok(compiled)) => compiled,
            Some(Err(error)) => {
                out.stderr.push_str(&format!("error: {error}\n"));
                return None;
            }
            None => return None,
        };
        self.inputs = pipeline::input_files(&checked, &policy)
            .map(canonical)
            .collect();
        let digest = pipeline::sources_digest(&checked, &policy);
        let release = Release {
            version: self.version + 1,
            created: super::build::build_time().unwrap_or(0),
            expires: None,
        };
        let bytes = match pipeline::pack(&policy, &compiled, &digest, release, &self.key) {
            Ok(bytes) => bytes,
            Err(error) => {
                out.stderr
                    .push_str(&format!("error: cannot pack the bundle: {error}\n"));
                return None;
            }
        };
        let path = self.bundles.join(format!("{region}.edgepack"));
        if let Err(error) = super::build::write_atomically(&path, &bytes) {
            out.stderr
                .push_str(&format!("error: {}: {error}\n", path.display()));
            return None;
        }
        self.version += 1;
        Some(region)
    }
}

/// The directory a policy's files live in.
fn policy_dir(policy: &Path) -> PathBuf {
    if policy.is_dir() {
        policy.to_path_buf()
    } else {
        policy
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

/// A path as the filesystem names it, for comparing paths written differently; a removed
/// file is named by its directory's canonical path.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| {
        match (
            path.parent().and_then(|p| p.canonicalize().ok()),
            path.file_name(),
        ) {
            (Some(parent), Some(name)) => parent.join(name),
            _ => path.to_path_buf(),
        }
    })
}

/// Rebuilds on changes under `dir` that can change the build, on a thread of its own;
/// saves that come in a burst (editors write several files, or write twice) give one build.
fn rebuild_on_save(dir: &Path, mut builder: Builder) -> Result<(), String> {
    use notify::Watcher;
    let (sender, receiver) = mpsc::channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && (event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove())
        {
            let _ = sender.send(event.paths);
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(dir, notify::RecursiveMode::Recursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    std::thread::Builder::new()
        .name("edgepack-dev-watch".into())
        .spawn(move || {
            let _watcher = watcher;
            while let Ok(mut paths) = receiver.recv() {
                // Let the burst settle.
                while let Ok(more) = receiver.recv_timeout(Duration::from_millis(150)) {
                    paths.extend(more);
                }
                if builder.affected_by(&paths) {
                    builder.build();
                }
            }
        })
        .map_err(|e| format!("cannot start the watcher: {e}"))?;
    Ok(())
}
