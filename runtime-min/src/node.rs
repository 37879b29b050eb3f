//! The node: what is shared by every request (the active bundle, cache, limits, origins,
//! metrics), and activation — the one place a bundle is swapped in.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use ed25519_dalek::VerifyingKey;
use edgepack_bundles::bundle::{self, OpenLimits};

use edgepack_bundles::abi::Decision;
use edgepack_bundles::plan::RolloutPlan;

use crate::activation::{Active, Floor, Loader, Refusal};
use crate::cache::ResponseCache;
use crate::config::NodeArgs;
use crate::functions::{FunctionHost, FunctionLimits};
use crate::golden;
use crate::host::{HostError, PolicyEngine};
use crate::jwt::NodeSecrets;
use crate::metrics::{ActivationLabels, BundleLabels, Metrics, RollbackLabels};
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
    /// Send a bundle's `test` blocks through it before it may serve, and refuse it if one
    /// fails (always on for `edgepack-node`; `edgepack test` runs and reports them itself).
    pub golden_requests: bool,
    /// A WebSocket tunnel with no bytes moving either way for this long is closed.
    pub tunnel_idle: Duration,
    /// WebSocket tunnels open at once; an upgrade beyond them is answered 503.
    pub max_tunnels: usize,
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
    Pull,
    Rollback,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Watch => "watch",
            Trigger::Poll => "poll",
            Trigger::Signal => "signal",
            Trigger::Pull => "pull",
            Trigger::Rollback => "rollback",
        }
    }
}

/// A bundle offered for activation: where it came from, and why now.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// A path or registry reference, for the log.
    pub origin: &'a str,
    pub trigger: Trigger,
    /// The node's own record of a bundle it served: the version floor does not apply.
    known_good: bool,
    /// A rollback from this generation: void if another bundle serves by then.
    replaces: Option<u64>,
}

impl<'a> Offer<'a> {
    /// A bundle from outside the node: every rule applies.
    pub fn outside(origin: &'a str, trigger: Trigger) -> Offer<'a> {
        Offer {
            origin,
            trigger,
            known_good: false,
            replaces: None,
        }
    }
}

/// Golden requests of one bundle may take this long in all.
const GOLDEN_TIME_LIMIT: Duration = Duration::from_secs(10);

/// One bundle's golden requests, run on the golden runner's thread and runtime.
type GoldenJob = Box<dyn FnOnce(&tokio::runtime::Runtime) + Send>;

/// The thread that runs golden requests, with a runtime of its own (activation runs both
/// inside and outside async contexts, where no runtime may be started or entered), kept for
/// the process: starting one per activation cost about 0.6 ms.
fn golden_runner() -> Result<&'static Mutex<std::sync::mpsc::Sender<GoldenJob>>, String> {
    static RUNNER: std::sync::OnceLock<Result<Mutex<std::sync::mpsc::Sender<GoldenJob>>, String>> =
        std::sync::OnceLock::new();
    RUNNER
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a runtime for them: {e}"))?;
            let (jobs, incoming) = std::sync::mpsc::channel::<GoldenJob>();
            std::thread::Builder::new()
                .name("edgepack-golden".into())
                .spawn(move || {
                    for job in incoming {
                        // A panic is one bundle's failure, not the runner's end.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            job(&runtime)
                        }));
                    }
                })
                .map_err(|e| format!("checks cannot start: {e}"))?;
            Ok(Mutex::new(jobs))
        })
        .as_ref()
        .map_err(Clone::clone)
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
    /// The bytes of the bundle serving, and of the one it replaced (what a rollback returns
    /// to).
    current: Option<Arc<Vec<u8>>>,
    previous: Option<Arc<Vec<u8>>>,
    /// Payloads (by the manifest's tar sha256) whose golden requests passed lately: a new
    /// version of the same files need not run them again.
    golden_passed: std::collections::VecDeque<String>,
}

/// How many passed payloads [`Control::golden_passed`] remembers.
const GOLDEN_PASSED_KEPT: usize = 8;

/// Everything a request needs, shared by all of them.
pub struct Node {
    pub settings: Settings,
    replayed: std::sync::OnceLock<Decision>,
    /// While set, the node decides one request and gives every later one that decision
    /// without calling `decide`: the baseline the serving bench measures the policy's cost
    /// against, switched on and off under load (never set by a flag).
    pub skip_decide: AtomicBool,
    pub active: ArcSwapOption<Active>,
    pub metrics: Metrics,
    pub cache: ResponseCache,
    pub ratelimits: RateLimits,
    pub origins: Origins,
    loader: Loader,
    state: StateDir,
    /// `--bundle`, when the node reads a file (else it pulls from a registry).
    bundle_path: Option<PathBuf>,
    fixed_region: Option<String>,
    pseudonymize_key: Option<Vec<u8>>,
    control: Mutex<Control>,
    /// Held for a whole activation, so two never interleave (a slower, older one could
    /// otherwise swap in after a newer one).
    activating: Mutex<()>,
    request_prefix: u32,
    /// Requests so far: request ids, and the epoch clocks' sign of activity.
    request_counter: Arc<AtomicU64>,
    /// The node itself, for the threads it starts (set by [`Node::shared`]).
    me: std::sync::OnceLock<std::sync::Weak<Node>>,
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
        let request_counter: Arc<AtomicU64> = Arc::default();
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
                golden_requests: true,
                tunnel_idle: args.idle_timeout,
                max_tunnels: args.max_connections,
            },
            replayed: std::sync::OnceLock::new(),
            skip_decide: AtomicBool::new(false),
            active: ArcSwapOption::empty(),
            metrics: Metrics::new(),
            cache: ResponseCache::new(args.cache_bytes, args.cache_max_entry),
            ratelimits: RateLimits::new(args.ratelimit_keys),
            origins,
            loader: Loader::new(
                PolicyEngine::with_time_limit(args.decide_timeout, request_counter.clone())?,
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
                request_counter.clone(),
            )))
            .with_jwt_secrets(NodeSecrets::new(args.jwt_secret.iter().cloned())),
            state,
            bundle_path: args.bundle.clone(),
            fixed_region: args.region.clone(),
            pseudonymize_key,
            control: Mutex::new(Control {
                mark,
                region,
                ..Control::default()
            }),
            activating: Mutex::new(()),
            request_prefix: u32::from_le_bytes(prefix),
            request_counter,
            me: std::sync::OnceLock::new(),
        })
    }

    /// The node, shared; only a shared node watches a new bundle's error rate (the watch
    /// runs on a thread of its own).
    pub fn shared(self) -> Arc<Node> {
        let node = Arc::new(self);
        let _ = node.me.set(Arc::downgrade(&node));
        node
    }

    pub fn next_request_id(&self) -> RequestId {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        RequestId::new(self.request_prefix, n)
    }

    /// With `skip_decide` set, the decision to replay (`None` until one is recorded) and
    /// whether one is; `None` when the node decides.
    pub fn replayed_decision(&self) -> Option<Option<&Decision>> {
        self.skip_decide
            .load(Ordering::Relaxed)
            .then(|| self.replayed.get())
    }

    pub fn replay_decision(&self, decision: &Decision) {
        let _ = self.replayed.set(decision.clone());
    }

    /// Verifies tokens without the JWT secrets this node lacks, instead of refusing bundles
    /// that name them: for running a policy's tests where the nodes' secrets are not.
    pub fn allow_missing_jwt_secrets(&mut self) {
        self.loader.jwt_secrets = std::mem::take(&mut self.loader.jwt_secrets).missing_ok();
    }

    pub fn pseudonymize_key(&self) -> Option<&[u8]> {
        self.pseudonymize_key.as_deref()
    }

    /// The bundle file `--bundle` names now: the file itself, or the one bundle in the
    /// directory (`<region>.edgepack` when the region is known).
    pub fn bundle_file(&self) -> Result<PathBuf, String> {
        let Some(path) = &self.bundle_path else {
            return Err("the node pulls its bundles from a registry".to_string());
        };
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
        if self.bundle_path.is_some() {
            let offered = self
                .bundle_file()
                .and_then(|path| read_bounded(&path).map(|bytes| (path, bytes)));
            match offered {
                Ok((path, bytes)) => {
                    let origin = path.display().to_string();
                    let offer = Offer::outside(&origin, Trigger::Start);
                    if self.try_activate(&bytes, &offer).is_ok() {
                        return true;
                    }
                }
                Err(message) => {
                    tracing::error!(target: "edgepack::activation", trigger = "start", error = %message, "no bundle to load");
                }
            }
        }
        let Some(bytes) = self.state.last_good() else {
            return false;
        };
        let offer = Offer {
            origin: "state-dir/last-good.edgepack",
            trigger: Trigger::Start,
            known_good: true,
            replaces: None,
        };
        match self.try_activate(&bytes, &offer) {
            Ok(()) => {
                tracing::warn!(target: "edgepack::activation", "serving the last good bundle from the state directory");
                true
            }
            Err(_) => false,
        }
    }

    /// The limits every bundle is opened with.
    pub fn open_limits(&self) -> OpenLimits {
        self.loader.limits
    }

    /// Looks at `--bundle` and activates it if it is new and valid.
    pub fn reload(&self, trigger: Trigger) {
        if self.bundle_path.is_none() {
            return;
        }
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
        let origin = path.display().to_string();
        let _ = self.offer(&bytes, &Offer::outside(&origin, trigger));
    }

    /// Activates bundle bytes from outside (a file, a registry) if they are new and valid;
    /// the same bytes again are neither reactivated nor refused twice (except on SIGHUP).
    /// Returns whether the bundle is the one serving now.
    pub fn offer(&self, bytes: &[u8], offer: &Offer<'_>) -> bool {
        let sha = bundle::sha256_hex(bytes);
        if self.active.load().as_ref().is_some_and(|a| a.sha256 == sha) {
            return true;
        }
        if offer.trigger != Trigger::Signal
            && self.control().last_refused.as_deref() == Some(sha.as_str())
        {
            return false;
        }
        self.try_activate(bytes, offer).is_ok()
    }

    /// Sends the bundle's `test` blocks through a trial node serving it (its own cache and
    /// rate limits, origins stood in for) and refuses the bundle if any fails.
    fn run_golden_requests(&self, active: Active) -> Result<Active, Refusal> {
        if !self.settings.golden_requests || active.plan.tests.is_empty() {
            return Ok(active);
        }
        let payload = active.manifest.tar_sha256.clone();
        if self.control().golden_passed.contains(&payload) {
            return Ok(active);
        }
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
        let ratelimits = RateLimits::new(1024);
        let trial = active.for_trial(generation, ratelimits.for_plan(&active.plan.ratelimits));
        let plan = active.plan.clone();
        let node = Arc::new(self.trial(trial, ratelimits));
        let (reply, outcome) = std::sync::mpsc::channel();
        let job: GoldenJob = Box::new(move |runtime| {
            let all = async {
                for test in &plan.tests {
                    let result = golden::run(&node, &plan, test).await;
                    if !result.passed() {
                        return Err(format!(
                            "\"{}\" ({}) failed: {}",
                            test.name,
                            test.source,
                            result.failures.join("; ")
                        ));
                    }
                }
                Ok(())
            };
            // The timer must be made inside the runtime.
            let checked =
                runtime.block_on(async { tokio::time::timeout(GOLDEN_TIME_LIMIT, all).await });
            let _ = reply.send(checked.unwrap_or_else(|_| {
                Err(format!(
                    "checks took longer than {}s",
                    GOLDEN_TIME_LIMIT.as_secs()
                ))
            }));
            // The trial node is dropped here, after the answer is on its way.
        });
        let outcome = golden_runner()
            .and_then(|runner| {
                runner
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .send(job)
                    .map_err(|_| "the runner has stopped".to_string())
            })
            .and_then(|()| outcome.recv().map_err(|_| "checks crashed".to_string()))
            .and_then(|result| result);
        match outcome {
            Ok(()) => {
                self.metrics
                    .golden_requests
                    .inc_by(active.plan.tests.len() as u64);
                let mut control = self.control();
                if control.golden_passed.len() == GOLDEN_PASSED_KEPT {
                    control.golden_passed.pop_front();
                }
                control.golden_passed.push_back(payload);
                Ok(active)
            }
            Err(message) => Err(Refusal::Golden(message)),
        }
    }

    /// A node that serves `active` alone, for golden requests: decisions exposed, origins
    /// stood in for, its own cache and limits, nothing logged or recorded.
    fn trial(&self, active: Active, ratelimits: RateLimits) -> Node {
        Node {
            settings: Settings {
                access_log: false,
                stand_in_origins: true,
                expose_decisions: true,
                golden_requests: false,
                ..self.settings.clone()
            },
            replayed: std::sync::OnceLock::new(),
            skip_decide: AtomicBool::new(false),
            active: ArcSwapOption::from_pointee(active),
            metrics: Metrics::new(),
            cache: ResponseCache::new(1 << 20, 1 << 20),
            ratelimits,
            origins: self.origins.clone(),
            loader: self.loader.clone(),
            state: StateDir::none(),
            bundle_path: None,
            fixed_region: self.fixed_region.clone(),
            pseudonymize_key: self.pseudonymize_key.clone(),
            control: Mutex::new(Control::default()),
            activating: Mutex::new(()),
            request_prefix: self.request_prefix,
            request_counter: Arc::default(),
            me: std::sync::OnceLock::new(),
        }
    }

    /// Watches a freshly swapped-in bundle's error rate for its rollout window, and rolls
    /// back to the previous bundle if it crosses the bundle's threshold.
    fn watch_errors(&self, active: Arc<Active>, rollout: RolloutPlan) {
        let Some(node) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        active.watch.open();
        let window = Duration::from_millis(rollout.watch_ms);
        let step = (window / 50).clamp(Duration::from_millis(20), Duration::from_millis(500));
        let spawned = std::thread::Builder::new()
            .name("edgepack-rollout".into())
            .spawn(move || {
                let started = Instant::now();
                while started.elapsed() < window {
                    std::thread::sleep(step);
                    let serving = node
                        .active
                        .load()
                        .as_ref()
                        .is_some_and(|a| a.generation == active.generation);
                    if !serving {
                        active.watch.close();
                        return;
                    }
                    let (requests, errors) = active.watch.counts();
                    if requests >= rollout.min_requests
                        && errors * 1000 > requests * u64::from(rollout.max_error_permille)
                    {
                        active.watch.close();
                        node.roll_back(&active, requests, errors);
                        return;
                    }
                }
                active.watch.close();
                let (requests, errors) = active.watch.counts();
                tracing::info!(
                    target: "edgepack::activation",
                    version = active.manifest.version,
                    requests,
                    errors,
                    "rollout window closed; the bundle stays"
                );
            });
        if let Err(error) = spawned {
            tracing::warn!(target: "edgepack::activation", error = %error, "cannot watch the new bundle's error rate");
        }
    }

    /// Returns to the bundle served before `failed`, re-verified; `failed`'s version is
    /// revoked, so only a higher version is accepted from then on.
    fn roll_back(&self, failed: &Active, requests: u64, errors: u64) {
        let previous = self.control().previous.clone();
        let Some(previous) = previous else {
            return;
        };
        tracing::error!(
            target: "edgepack::activation",
            version = failed.manifest.version,
            requests,
            errors,
            "error rate above the bundle's rollout threshold; rolling back"
        );
        let offer = Offer {
            origin: "previous bundle",
            trigger: Trigger::Rollback,
            known_good: true,
            replaces: Some(failed.generation),
        };
        let result = if self.try_activate(&previous, &offer).is_ok() {
            "rolled-back"
        } else if self
            .active
            .load()
            .as_ref()
            .is_some_and(|a| a.generation == failed.generation)
        {
            "failed"
        } else {
            // A newer bundle replaced the failed one meanwhile: nothing to roll back.
            return;
        };
        self.metrics
            .rollbacks
            .get_or_create(&RollbackLabels { result })
            .inc();
    }

    /// Compiles the optimized tier of a freshly activated bundle off the activation path,
    /// then hands the memory both compiles freed back to the system.
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
                        took_ms = crate::logs::millis(started.elapsed()),
                        "optimized module in use"
                    ),
                    Err(error) => tracing::warn!(
                        target: "edgepack::activation",
                        version = active.manifest.version,
                        error = %error,
                        "the optimized module failed to build; the quick one keeps serving"
                    ),
                }
                release_freed_memory();
            });
        if let Err(error) = spawned {
            tracing::warn!(target: "edgepack::activation", error = %error, "cannot start the optimizer thread");
        }
    }

    /// Verifies, compiles and swaps in a bundle, or refuses it and keeps the active one.
    fn try_activate(&self, bytes: &[u8], offer: &Offer<'_>) -> Result<(), ()> {
        let trigger = offer.trigger;
        let _one_at_a_time = self
            .activating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(generation) = offer.replaces
            && self
                .active
                .load()
                .as_ref()
                .is_none_or(|a| a.generation != generation)
        {
            tracing::info!(target: "edgepack::activation", "another bundle serves already; no rollback");
            return Err(());
        }
        let started = Instant::now();
        let floor = {
            let control = self.control();
            Floor {
                mark: control.mark.clone(),
                allow_same: trigger == Trigger::Start,
                region: control.region.clone(),
                known_good: offer.known_good,
            }
        };
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
        let mut golden_took = Duration::ZERO;
        let prepared = self
            .loader
            .prepare(bytes, &floor, generation, &self.ratelimits)
            // The node's own record passed its golden requests when it was new.
            .and_then(|active| {
                if offer.known_good {
                    return Ok(active);
                }
                let started = Instant::now();
                let checked = self.run_golden_requests(active);
                golden_took = started.elapsed();
                checked
            });
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
                    bundle = %offer.origin,
                    sha256 = %sha,
                    reason = refusal.reason(),
                    error = %refusal,
                    "bundle refused; the active bundle keeps serving"
                );
                self.control().last_refused = Some(sha);
                return Err(());
            }
        };
        let rolling_back = trigger == Trigger::Rollback;
        let mark = match (rolling_back, floor.mark.clone()) {
            // A rollback keeps the failed version as the mark, revoked.
            (true, Some(failed)) => Mark {
                revoked: true,
                ..failed
            },
            // The state directory's last good bundle may sit below a revoked mark.
            (false, Some(mark)) if offer.known_good && mark.version > active.manifest.version => {
                mark
            }
            _ => active.mark(),
        };
        let bytes_kept = Arc::new(bytes.to_vec());
        let watch_from = {
            let mut control = self.control();
            control.mark = Some(mark.clone());
            if self.fixed_region.is_none() {
                control.region = Some(mark.region.clone());
            }
            control.last_refused = None;
            let replaced = control.current.replace(bytes_kept);
            control.previous = if rolling_back { None } else { replaced };
            control.previous.is_some()
        };
        self.origins.use_plan(&active.plan);
        self.metrics.bundle_info.clear();
        self.metrics
            .bundle_info
            .get_or_create(&BundleLabels {
                region: active.manifest.region.clone(),
                version: active.manifest.version.to_string(),
                sha256: active.sha256.clone(),
            })
            .set(1);
        self.metrics
            .bundle_version
            .set(active.manifest.version as i64);
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
        let recorded = if rolling_back {
            self.state.record_rollback(&mark, bytes)
        } else if offer.known_good {
            Ok(())
        } else {
            self.state.record(&mark, bytes)
        };
        if let Err(error) = recorded {
            self.metrics.state_write_errors.inc();
            tracing::error!(
                target: "edgepack::activation",
                error = %error,
                "cannot record the active bundle in the state directory; serving it all the same"
            );
        }
        if watch_from && let Some(rollout) = active.plan.rollout.clone() {
            self.watch_errors(active.clone(), rollout);
        }
        self.optimize_later(active.clone());
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
            bundle = %offer.origin,
            region = %active.manifest.region,
            version = active.manifest.version,
            previous = previous.map(|p| p.manifest.version),
            sha256 = %active.sha256,
            took_ms = crate::logs::millis(took),
            golden_ms = crate::logs::millis(golden_took),
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

/// Returns the memory freed since to the system. glibc keeps what a thread frees in that
/// thread's arena, and compiling a policy module frees a lot of it: with the CRS imported,
/// the quick and optimized compiles left a node idling at 139 MiB resident, 103 MiB once
/// trimmed.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: `malloc_trim` takes no pointer and only gives free pages of the
        // allocator's arenas back to the system; any thread may call it at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// A request's id: this node's random prefix and its request count, 20 hex digits, kept
/// on the stack (a request's id is written into a header, an error body and a log line).
#[derive(Clone, Copy)]
pub struct RequestId([u8; 20]);

impl RequestId {
    fn new(prefix: u32, count: u64) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // 80 bits: the prefix's 32, then the count's low 48.
        let value = (u128::from(prefix) << 48) | u128::from(count & 0xffff_ffff_ffff);
        let mut text = [0u8; 20];
        for (i, digit) in text.iter_mut().enumerate() {
            *digit = HEX[((value >> (4 * (19 - i))) & 0xf) as usize];
        }
        RequestId(text)
    }

    pub fn as_str(&self) -> &str {
        // Hex digits only: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_bytes(&self.0)
            .unwrap_or_else(|_| http::HeaderValue::from_static("-"))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn a_request_id_is_the_prefix_then_the_count_in_twenty_hex_digits() {
        for (prefix, count) in [(0, 0), (0x0a1b_2c3d, 42), (u32::MAX, u64::MAX)] {
            let id = RequestId::new(prefix, count);
            let expected = format!("{prefix:08x}{:012x}", count & 0xffff_ffff_ffff);
            assert_eq!(id.as_str(), expected);
            assert_eq!(id.header_value(), expected.as_str());
        }
    }
}
