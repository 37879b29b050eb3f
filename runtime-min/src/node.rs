//! The node: what is shared by every request (the active bundle, cache, limits, origins,
//! metrics), and activation — the one place a bundle is swapped in.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use ed25519_dalek::VerifyingKey;
use edgepack_bundles::bundle::{self, OpenLimits};

use edgepack_bundles::abi::Decision;

use crate::activation::{Active, Floor, Loader};
use crate::cache::ResponseCache;
use crate::config::NodeArgs;
use crate::functions::{FunctionHost, FunctionLimits};
use crate::host::{HostError, PolicyEngine};
use crate::metrics::{ActivationLabels, BundleLabels, Metrics};
use crate::proxy::Origins;
use crate::ratelimit::RateLimits;
use crate::state::{Mark, StateDir, StateError};

/// Request handling settings, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body: u64,
    pub body_timeout: Duration,
    pub access_log: bool,
    /// Answer proxied requests with a stand-in 200 instead of calling the origin
    /// (`edgepack test` runs a bundle's tests this way; never set by a flag).
    pub stand_in_origins: bool,
    /// Attach each request's decision to its response as an extension (in-process callers
    /// such as `edgepack test` read it; it never goes on the wire).
    pub expose_decisions: bool,
    /// Decide the first request, then give every later one that decision without calling
    /// `decide`: the baseline the serving bench measures the policy's cost against (never
    /// set by a flag).
    pub skip_decide: bool,
}

/// Activations in this process, numbered across nodes: a worker thread keeps one policy
/// instance per generation, and two nodes in one process (`edgepack test` runs one per
/// region) must never share one.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Where a bundle came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Start,
    Watch,
    Poll,
    Signal,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Watch => "watch",
            Trigger::Poll => "poll",
            Trigger::Signal => "signal",
        }
    }
}

/// What activation remembers between attempts.
#[derive(Default)]
struct Control {
    /// The highest version activated, here or before a restart.
    mark: Option<Mark>,
    /// The region this node serves, once known.
    region: Option<String>,
    /// The sha256 of the last refused bundle file, so polling does not refuse it again.
    last_refused: Option<String>,
}

/// Everything a request needs, shared by all of them.
pub struct Node {
    pub settings: Settings,
    replayed: std::sync::OnceLock<Decision>,
    pub active: ArcSwapOption<Active>,
    pub metrics: Metrics,
    pub cache: ResponseCache,
    pub ratelimits: RateLimits,
    pub origins: Origins,
    loader: Loader,
    state: StateDir,
    bundle_path: PathBuf,
    fixed_region: Option<String>,
    pseudonymize_key: Option<Vec<u8>>,
    control: Mutex<Control>,
    /// Held for a whole activation, so two never interleave (a slower, older one could
    /// otherwise swap in after a newer one).
    activating: Mutex<()>,
    request_prefix: u32,
    request_counter: AtomicU64,
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Engine(#[from] HostError),
}

impl Node {
    /// Builds a node from its settings; no bundle is active yet.
    pub fn new(args: &NodeArgs) -> Result<Node, StartError> {
        let trusted = read_trusted(&args.trust)?;
        let state = StateDir::open(args.state_dir.as_deref())?;
        let mark = state.mark()?;
        let pseudonymize_key = read_pseudonymize_key(args.pseudonymize_key_file.as_deref())?;
        let origins = Origins::new(args.resolve_map(), args.origin_ca.as_deref())
            .map_err(StartError::Usage)?;
        let mut prefix = [0u8; 4];
        let _ = getrandom::fill(&mut prefix);
        let region = args
            .region
            .clone()
            .or_else(|| mark.as_ref().map(|m| m.region.clone()));
        Ok(Node {
            settings: Settings {
                max_body: args.max_body,
                body_timeout: args.body_timeout,
                access_log: !args.no_access_log,
                stand_in_origins: false,
                expose_decisions: false,
                skip_decide: false,
            },
            replayed: std::sync::OnceLock::new(),
            active: ArcSwapOption::empty(),
            metrics: Metrics::new(),
            cache: ResponseCache::new(args.cache_bytes, args.cache_max_entry),
            ratelimits: RateLimits::new(args.ratelimit_keys),
            origins,
            loader: Loader::new(
                PolicyEngine::with_time_limit(args.decide_timeout)?,
                trusted,
                args.require_expiry,
                OpenLimits::default(),
            )
            .with_functions(Arc::new(FunctionHost::new(
                FunctionLimits {
                    instances: args.function_instances,
                    memory_max: args.function_memory_max,
                },
                args.state_dir.clone(),
            ))),
            state,
            bundle_path: args.bundle.clone(),
            fixed_region: args.region.clone(),
            pseudonymize_key,
            control: Mutex::new(Control {
                mark,
                region,
                last_refused: None,
            }),
            activating: Mutex::new(()),
            request_prefix: u32::from_le_bytes(prefix),
            request_counter: AtomicU64::new(0),
        })
    }

    pub fn next_request_id(&self) -> String {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:012x}", self.request_prefix, n & 0xffff_ffff_ffff)
    }

    /// The decision replayed instead of deciding, once one is recorded (`skip_decide`).
    pub fn replayed_decision(&self) -> Option<&Decision> {
        if self.settings.skip_decide {
            self.replayed.get()
        } else {
            None
        }
    }

    pub fn replay_decision(&self, decision: &Decision) {
        let _ = self.replayed.set(decision.clone());
    }

    pub fn pseudonymize_key(&self) -> Option<&[u8]> {
        self.pseudonymize_key.as_deref()
    }

    /// The bundle file `--bundle` names now: the file itself, or the one bundle in the
    /// directory (`<region>.edgepack` when the region is known).
    pub fn bundle_file(&self) -> Result<PathBuf, String> {
        let path = &self.bundle_path;
        if !path.is_dir() {
            return Ok(path.clone());
        }
        let region = self.control().region.clone();
        if let Some(region) = region {
            let named = path.join(format!("{region}.edgepack"));
            if named.is_file() {
                return Ok(named);
            }
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "edgepack"))
            .collect();
        found.sort();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(format!("{} holds no .edgepack bundle", path.display())),
            _ => Err(format!(
                "{} holds several bundles; name one, or give --region to pick <region>.edgepack",
                path.display()
            )),
        }
    }

    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Activates the bundle at `--bundle` on start, or the last good one from the state
    /// directory when it cannot be used. Returns whether a bundle is active.
    pub fn start(&self) -> bool {
        let offered = self
            .bundle_file()
            .and_then(|path| read_bounded(&path).map(|bytes| (path, bytes)));
        match offered {
            Ok((path, bytes)) => {
                if self
                    .try_activate(&bytes, &path, Trigger::Start, true)
                    .is_ok()
                {
                    return true;
                }
            }
            Err(message) => {
                tracing::error!(target: "edgepack::activation", trigger = "start", error = %message, "no bundle to load");
            }
        }
        let Some(bytes) = self.state.last_good() else {
            return false;
        };
        let path = PathBuf::from("state-dir/last-good.edgepack");
        match self.try_activate(&bytes, &path, Trigger::Start, true) {
            Ok(()) => {
                tracing::warn!(target: "edgepack::activation", "serving the last good bundle from the state directory");
                true
            }
            Err(_) => false,
        }
    }

    /// Looks at `--bundle` and activates it if it is new and valid.
    pub fn reload(&self, trigger: Trigger) {
        let path = match self.bundle_file() {
            Ok(path) => path,
            Err(message) => {
                if trigger == Trigger::Signal {
                    tracing::warn!(target: "edgepack::activation", trigger = trigger.as_str(), error = %message, "no bundle to load");
                }
                return;
            }
        };
        let bytes = match read_bounded(&path) {
            Ok(bytes) => bytes,
            Err(message) => {
                if trigger == Trigger::Signal {
                    tracing::warn!(target: "edgepack::activation", trigger = trigger.as_str(), error = %message, "cannot read the bundle");
                }
                return;
            }
        };
        let sha = bundle::sha256_hex(&bytes);
        if self.active.load().as_ref().is_some_and(|a| a.sha256 == sha) {
            return;
        }
        if trigger != Trigger::Signal
            && self.control().last_refused.as_deref() == Some(sha.as_str())
        {
            return;
        }
        let _ = self.try_activate(&bytes, &path, trigger, false);
    }

    /// Compiles the optimized tier of a freshly activated bundle off the activation path.
    fn optimize_later(&self, active: Arc<Active>) {
        let engine = self.loader.engine.clone();
        let modules = self.loader.modules.clone();
        let spawned = std::thread::Builder::new()
            .name("edgepack-optimize".into())
            .spawn(move || {
                let started = Instant::now();
                match active.optimize(&engine, &modules) {
                    Ok(()) => tracing::debug!(
                        target: "edgepack::activation",
                        version = active.manifest.version,
                        took_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "optimized module in use"
                    ),
                    Err(error) => tracing::warn!(
                        target: "edgepack::activation",
                        version = active.manifest.version,
                        error = %error,
                        "the optimized module failed to build; the quick one keeps serving"
                    ),
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(target: "edgepack::activation", error = %error, "cannot start the optimizer thread");
        }
    }

    /// Verifies, compiles and swaps in a bundle, or refuses it and keeps the active one.
    fn try_activate(
        &self,
        bytes: &[u8],
        path: &Path,
        trigger: Trigger,
        on_start: bool,
    ) -> Result<(), ()> {
        let _one_at_a_time = self
            .activating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let started = Instant::now();
        let floor = {
            let control = self.control();
            Floor {
                mark: control.mark.clone(),
                allow_same: on_start,
                region: control.region.clone(),
            }
        };
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
        let prepared = self
            .loader
            .prepare(bytes, &floor, generation, &self.ratelimits);
        let mut active = match prepared {
            Ok(active) => active,
            Err(refusal) => {
                let sha = bundle::sha256_hex(bytes);
                self.metrics
                    .activations
                    .get_or_create(&ActivationLabels {
                        result: "refused",
                        reason: refusal.reason(),
                    })
                    .inc();
                tracing::error!(
                    target: "edgepack::activation",
                    trigger = trigger.as_str(),
                    bundle = %path.display(),
                    sha256 = %sha,
                    reason = refusal.reason(),
                    error = %refusal,
                    "bundle refused; the active bundle keeps serving"
                );
                self.control().last_refused = Some(sha);
                return Err(());
            }
        };
        let mark = active.mark();
        {
            let mut control = self.control();
            control.mark = Some(mark.clone());
            if self.fixed_region.is_none() {
                control.region = Some(mark.region.clone());
            }
            control.last_refused = None;
        }
        self.origins.use_plan(&active.plan);
        self.metrics.bundle_info.clear();
        self.metrics
            .bundle_info
            .get_or_create(&BundleLabels {
                region: mark.region.clone(),
                version: mark.version.to_string(),
                sha256: mark.sha256.clone(),
            })
            .set(1);
        self.metrics.bundle_version.set(mark.version as i64);
        self.metrics
            .bundle_expires
            .set(active.manifest.expires.unwrap_or(0) as i64);
        active.activated_at = Instant::now();
        let active = Arc::new(active);
        let previous = self.active.swap(Some(active.clone()));
        let took = started.elapsed();
        // Recorded right after the swap, off the path to serving: the mark is already raised
        // in memory, and a crash before the record lands leaves the previous mark, which is
        // still below the bundle in place.
        if let Err(error) = self.state.record(&mark, bytes) {
            self.metrics.state_write_errors.inc();
            tracing::error!(
                target: "edgepack::activation",
                error = %error,
                "cannot record the active bundle in the state directory; serving it all the same"
            );
        }
        self.optimize_later(active);
        self.metrics.activation_seconds.observe(took.as_secs_f64());
        self.metrics
            .activations
            .get_or_create(&ActivationLabels {
                result: "activated",
                reason: "ok",
            })
            .inc();
        tracing::info!(
            target: "edgepack::activation",
            trigger = trigger.as_str(),
            bundle = %path.display(),
            region = %mark.region,
            version = mark.version,
            previous = previous.map(|p| p.manifest.version),
            sha256 = %mark.sha256,
            took_ms = took.as_secs_f64() * 1000.0,
            "bundle activated"
        );
        Ok(())
    }
}

fn read_trusted(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>, StartError> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .map_err(|e| StartError::Usage(format!("--trust {}: {e}", path.display())))?;
            bundle::keys::parse_public_key(&text)
                .map_err(|e| StartError::Usage(format!("--trust {}: {e}", path.display())))
        })
        .collect()
}

/// The pseudonymization key: `--pseudonymize-key-file`, else `EDGEPACK_PSEUDONYMIZE_KEY`.
fn read_pseudonymize_key(path: Option<&Path>) -> Result<Option<Vec<u8>>, StartError> {
    let key = match path {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            StartError::Usage(format!("--pseudonymize-key-file {}: {e}", path.display()))
        })?),
        None => std::env::var("EDGEPACK_PSEUDONYMIZE_KEY")
            .ok()
            .map(String::into_bytes),
    };
    let key = key.map(|mut k| {
        while k.last().is_some_and(|b| b.is_ascii_whitespace()) {
            k.pop();
        }
        k
    });
    match key {
        Some(k) if k.len() < 16 => Err(StartError::Usage(
            "the pseudonymization key must be at least 16 bytes".into(),
        )),
        other => Ok(other),
    }
}

/// Reads a bundle file, refusing one larger than any bundle may be.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    bundle::read_file(path).map_err(|e| format!("{}: {e}", path.display()))
}
