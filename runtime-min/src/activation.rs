//! Turning bundle bytes into an [`Active`] policy, or a [`Refusal`] that says why not.
//!
//! Everything that can fail happens here, off the serving path: verification, the region,
//! expiry and version checks, the plan, compiling the module (Cranelift) and instantiating
//! it once, the JWT keys. Only a bundle that passes all of it can be swapped in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use ed25519_dalek::VerifyingKey;
use edgepack_bundles::bundle::{self, Manifest, OpenError, OpenLimits};
use edgepack_bundles::plan::RegionPlan;
use http::{HeaderName, HeaderValue};

use crate::functions::{Function, FunctionEngine, FunctionHost, PrepareError};
use crate::host::{HostError, PolicyEngine, PolicyModule, Tier};
use crate::jwt::{JwtVerifier, NodeSecrets};
use crate::proxy::OriginTarget;
use crate::ratelimit::{Limiter, RateLimits};
use crate::state::Mark;

/// A verified, compiled bundle, ready to serve. Requests hold an `Arc` to the one they
/// started with, so a swap never changes the policy under a request in flight.
pub struct Active {
    /// Distinguishes activations (each worker thread instantiates the module once per).
    pub generation: u64,
    pub manifest: Manifest,
    /// sha256 of the bundle file.
    pub sha256: String,
    pub plan: RegionPlan,
    /// The compiled policy: quick at first, the optimized build once it is ready.
    module: ArcSwap<PolicyModule>,
    optimized: AtomicBool,
    /// The module's bytes, kept to compile the optimized tier after the swap.
    wasm: Vec<u8>,
    wasm_sha256: String,
    /// Body bytes the policy inspects.
    pub body_limit: usize,
    /// JWT verifiers, by the plan's JWT id.
    pub jwt: Vec<JwtVerifier>,
    /// Edge functions, by the plan's function id, and the engine that runs them.
    pub functions: Vec<Arc<Function>>,
    pub function_engine: Option<Arc<FunctionEngine>>,
    /// Rate limiters, by the plan's limit id.
    pub limiters: Vec<Arc<Limiter>>,
    /// Each route's name for logs and metrics: methods and pattern.
    pub route_names: Vec<String>,
    /// Where each origin's requests go, by the plan's origin id.
    pub origin_targets: Vec<OriginTarget>,
    /// `x-edge-region` and `x-edge-bundle`, the same on every response of the bundle.
    pub region_header: HeaderValue,
    pub bundle_header: HeaderValue,
    /// The header the policy reads the country from, stripped when the decision says so.
    pub country_header: Option<HeaderName>,
    pub activated_at: Instant,
    /// Requests and errors while the bundle's rollout window is open.
    pub watch: ErrorWatch,
}

/// A freshly swapped-in bundle's requests and 5xx answers, counted only while its rollout
/// window is open (one relaxed load per request otherwise).
#[derive(Debug, Default)]
pub struct ErrorWatch {
    open: AtomicBool,
    requests: AtomicU64,
    errors: AtomicU64,
}

impl ErrorWatch {
    /// Counts one answered request.
    pub fn count(&self, status: u16) {
        if self.open.load(Ordering::Relaxed) {
            self.requests.fetch_add(1, Ordering::Relaxed);
            if status >= 500 {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::Relaxed);
    }

    pub fn close(&self) {
        self.open.store(false, Ordering::Relaxed);
    }

    /// Requests and errors counted so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

impl Active {
    pub fn mark(&self) -> Mark {
        Mark {
            region: self.manifest.region.clone(),
            version: self.manifest.version,
            sha256: self.sha256.clone(),
            revoked: false,
        }
    }

    /// The same bundle for a trial run, with its own rate limiters, so golden requests
    /// neither spend nor meet live traffic's limits.
    pub fn for_trial(&self, generation: u64, limiters: Vec<Arc<Limiter>>) -> Active {
        Active {
            generation,
            manifest: self.manifest.clone(),
            sha256: self.sha256.clone(),
            plan: self.plan.clone(),
            module: ArcSwap::new(self.module.load_full()),
            optimized: AtomicBool::new(self.optimized.load(Ordering::Acquire)),
            // Only the optimizer reads the bytes, and a trial is never optimized.
            wasm: Vec::new(),
            wasm_sha256: self.wasm_sha256.clone(),
            body_limit: self.body_limit,
            jwt: self.jwt.clone(),
            functions: self.functions.clone(),
            function_engine: self.function_engine.clone(),
            limiters,
            route_names: self.route_names.clone(),
            origin_targets: self.origin_targets.clone(),
            region_header: self.region_header.clone(),
            bundle_header: self.bundle_header.clone(),
            country_header: self.country_header.clone(),
            activated_at: Instant::now(),
            watch: ErrorWatch::default(),
        }
    }

    /// The module requests are decided with now.
    pub fn module(&self) -> Arc<PolicyModule> {
        self.module.load_full()
    }

    /// The tier of [`Active::module`], cheap enough to ask on every request.
    pub fn tier(&self) -> Tier {
        if self.optimized.load(Ordering::Acquire) {
            Tier::Optimized
        } else {
            Tier::Quick
        }
    }

    /// Compiles the optimized tier and moves new instances to it. Decisions do not change:
    /// both tiers compile the same module. On failure the quick tier keeps serving.
    pub fn optimize(&self, engine: &PolicyEngine, modules: &ModuleCache) -> Result<(), HostError> {
        if self.optimized.load(Ordering::Acquire) {
            return Ok(());
        }
        let module = engine.compile_tier(&self.wasm, Tier::Optimized)?;
        module.instantiate()?;
        modules.put(&self.wasm_sha256, module.clone());
        self.module.store(Arc::new(module));
        self.optimized.store(true, Ordering::Release);
        Ok(())
    }

    pub fn route_name(&self, route: Option<u32>) -> &str {
        route
            .and_then(|id| self.route_names.get(id as usize))
            .map_or("none", String::as_str)
    }
}

/// Why a bundle was not activated.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("cannot read the bundle: {0}")]
    Read(String),
    #[error(transparent)]
    Bundle(#[from] OpenError),
    #[error("the bundle is for region {found}, this node serves {expected}")]
    Region { expected: String, found: String },
    #[error("version {offered} is not above version {floor}, which this node has activated")]
    NotNewer { offered: u64, floor: u64 },
    #[error("version {version} was activated before with other contents (sha256 {recorded})")]
    Replaced { version: u64, recorded: String },
    #[error("the bundle expired at {expires} (Unix seconds)")]
    Expired { expires: u64 },
    #[error("the bundle has no expiry time and this node requires one")]
    NoExpiry,
    #[error("version {version} was rolled back on this node; only a higher version is accepted")]
    Revoked { version: u64 },
    #[error("golden request {0}")]
    Golden(String),
    #[error("the bundle's plan is unusable: {0}")]
    Plan(String),
    #[error(transparent)]
    Module(#[from] HostError),
    #[error("{0}")]
    Keys(String),
    #[error(transparent)]
    Function(#[from] PrepareError),
}

impl Refusal {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Read(_) => "read",
            Refusal::Bundle(e) => match e {
                OpenError::Unsigned
                | OpenError::UnknownKeyId(_)
                | OpenError::Untrusted(_)
                | OpenError::BadSignature(_)
                | OpenError::ManifestAltered(_)
                | OpenError::PayloadAltered(_)
                | OpenError::SignatureList(_)
                | OpenError::TooManySignatures(_) => "signature",
                OpenError::UnknownAbi { .. } => "abi",
                OpenError::UnknownFormat(_) | OpenError::NotABundle => "format",
                OpenError::Truncated(_) | OpenError::TrailingData => "truncated",
                OpenError::TooLarge { .. } => "size",
                _ => "archive",
            },
            Refusal::Region { .. } => "region",
            Refusal::NotNewer { .. } | Refusal::Replaced { .. } | Refusal::Revoked { .. } => {
                "version"
            }
            Refusal::Golden(_) => "golden",
            Refusal::Expired { .. } | Refusal::NoExpiry => "expiry",
            Refusal::Plan(_) => "plan",
            Refusal::Module(HostError::Abi { .. }) => "abi",
            Refusal::Module(_) => "module",
            Refusal::Keys(_) => "keys",
            Refusal::Function(_) => "function",
        }
    }
}

/// What a bundle must be above to be accepted.
#[derive(Debug, Clone)]
pub struct Floor {
    /// The highest version activated (the state directory's mark, or the active bundle).
    pub mark: Option<Mark>,
    /// Whether the very bundle of the mark may be activated again (on start, not later).
    pub allow_same: bool,
    /// The region this node serves, once known.
    pub region: Option<String>,
    /// The node's own record of a bundle it served (the state directory's last good one,
    /// or the previous one on a rollback): checked like any other, except for its version.
    pub known_good: bool,
}

/// Verifies and prepares bundles.
#[derive(Clone)]
pub struct Loader {
    pub engine: PolicyEngine,
    pub trusted: Vec<VerifyingKey>,
    pub require_expiry: bool,
    pub limits: OpenLimits,
    /// Modules compiled lately, so a bundle whose module did not change (a new version of
    /// the same policy, a rollback to one served before) skips compilation.
    pub modules: Arc<ModuleCache>,
    /// Runs the bundles' edge functions.
    pub functions: Arc<FunctionHost>,
    /// The HS secrets JWT providers name, which bundles never carry.
    pub jwt_secrets: NodeSecrets,
}

/// The last few compiled modules, by the sha256 of their Wasm, at the best tier built.
#[derive(Default)]
pub struct ModuleCache {
    entries: std::sync::Mutex<std::collections::VecDeque<(String, PolicyModule)>>,
}

impl ModuleCache {
    const CAPACITY: usize = 4;

    fn get(&self, sha256: &str) -> Option<PolicyModule> {
        let entries = self.lock();
        entries
            .iter()
            .find(|(key, _)| key == sha256)
            .map(|(_, module)| module.clone())
    }

    /// Keeps `module` for `sha256`, replacing a lower tier, evicting the oldest.
    fn put(&self, sha256: &str, module: PolicyModule) {
        let mut entries = self.lock();
        entries.retain(|(key, _)| key != sha256);
        if entries.len() == Self::CAPACITY {
            entries.pop_front();
        }
        entries.push_back((sha256.to_string(), module));
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(String, PolicyModule)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Loader {
    pub fn new(
        engine: PolicyEngine,
        trusted: Vec<VerifyingKey>,
        require_expiry: bool,
        limits: OpenLimits,
    ) -> Loader {
        Loader {
            engine,
            trusted,
            require_expiry,
            limits,
            modules: Arc::default(),
            functions: Arc::default(),
            jwt_secrets: NodeSecrets::default(),
        }
    }

    /// The shared secrets this node holds for JWT providers.
    pub fn with_jwt_secrets(mut self, secrets: NodeSecrets) -> Loader {
        self.jwt_secrets = secrets;
        self
    }

    /// The node's limits for edge functions, and where compiled ones are kept.
    pub fn with_functions(mut self, functions: Arc<FunctionHost>) -> Loader {
        self.functions = functions;
        self
    }

    /// Checks a bundle against every rule and compiles it. The returned `Active` is not
    /// serving yet; the caller swaps it in.
    pub fn prepare(
        &self,
        bytes: &[u8],
        floor: &Floor,
        generation: u64,
        ratelimits: &RateLimits,
    ) -> Result<Active, Refusal> {
        let opened = bundle::open(bytes, &self.trusted, &self.limits)?;
        let manifest = opened.manifest;
        if let Some(expected) = &floor.region
            && *expected != manifest.region
        {
            return Err(Refusal::Region {
                expected: expected.clone(),
                found: manifest.region.clone(),
            });
        }
        match manifest.expires {
            Some(expires) if expires <= now_unix() => return Err(Refusal::Expired { expires }),
            None if self.require_expiry => return Err(Refusal::NoExpiry),
            _ => {}
        }
        if let Some(mark) = floor.mark.as_ref().filter(|_| !floor.known_good) {
            if mark.revoked && manifest.version == mark.version {
                return Err(Refusal::Revoked {
                    version: mark.version,
                });
            }
            let same = manifest.version == mark.version && opened.sha256 == mark.sha256;
            if manifest.version < mark.version || (manifest.version == mark.version && !same) {
                return Err(if manifest.version == mark.version {
                    Refusal::Replaced {
                        version: mark.version,
                        recorded: mark.sha256.clone(),
                    }
                } else {
                    Refusal::NotNewer {
                        offered: manifest.version,
                        floor: mark.version,
                    }
                });
            }
            if same && !floor.allow_same {
                return Err(Refusal::NotNewer {
                    offered: manifest.version,
                    floor: mark.version,
                });
            }
        }
        let plan: RegionPlan = opened
            .files
            .get("plan.json")
            .ok_or_else(|| Refusal::Plan("the bundle has no plan.json".into()))
            .and_then(|p| serde_json::from_slice(p).map_err(|e| Refusal::Plan(e.to_string())))?;
        if plan.region != manifest.region {
            return Err(Refusal::Plan(format!(
                "plan.json is for region {}, the manifest says {}",
                plan.region, manifest.region
            )));
        }
        check_plan(&plan).map_err(Refusal::Plan)?;
        let wasm = opened
            .files
            .get("policy.wasm")
            .ok_or_else(|| Refusal::Plan("the bundle has no policy.wasm".into()))?;
        let wasm_sha256 = bundle::listed_sha256(&manifest.files, "policy.wasm", wasm);
        let module = match self.modules.get(&wasm_sha256) {
            Some(module) => module,
            None => {
                let module = self.engine.compile_tier(wasm, Tier::Quick)?;
                self.modules.put(&wasm_sha256, module.clone());
                module
            }
        };
        let body_limit = module.instantiate()?.body_limit();
        let jwt = plan
            .jwts
            .iter()
            .map(|j| JwtVerifier::new(j, &opened.files, &self.jwt_secrets))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Refusal::Keys)?;
        let route_names = plan
            .routes
            .iter()
            .map(|r| {
                if r.methods.is_empty() {
                    r.pattern.clone()
                } else {
                    format!("{} {}", r.methods.join(","), r.pattern)
                }
            })
            .collect();
        let origin_targets = plan
            .origins
            .iter()
            .map(|origin| {
                OriginTarget::new(origin).map_err(|e| {
                    Refusal::Plan(format!(
                        "origin {} has an address the node cannot use: {e}",
                        origin.name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let country_header = plan
            .geo
            .as_ref()
            .and_then(|g| g.country_header.as_deref())
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        let (functions, function_engine) = if plan.functions.is_empty() {
            (Vec::new(), None)
        } else {
            let engine = self.functions.engine()?;
            (
                engine.prepare(&plan, &opened.files, &manifest.files)?,
                Some(engine),
            )
        };
        let limiters = ratelimits.for_plan(&plan.ratelimits);
        let region_header = HeaderValue::from_str(&manifest.region)
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        let bundle_header = HeaderValue::from(manifest.version);
        Ok(Active {
            generation,
            manifest,
            sha256: opened.sha256,
            plan,
            optimized: AtomicBool::new(module.tier() == Tier::Optimized),
            module: ArcSwap::from_pointee(module),
            wasm: wasm.clone(),
            wasm_sha256,
            body_limit,
            jwt,
            functions,
            function_engine,
            limiters,
            route_names,
            origin_targets,
            region_header,
            bundle_header,
            country_header,
            activated_at: Instant::now(),
            watch: ErrorWatch::default(),
        })
    }
}

/// The ids a decision may name must exist in the plan: a module and plan built together
/// agree, but the node checks rather than trusts (an id out of range is a refusal, never a
/// panic while serving).
fn check_plan(plan: &RegionPlan) -> Result<(), String> {
    let mut problems = Vec::new();
    for (i, route) in plan.routes.iter().enumerate() {
        if route.id as usize != i {
            problems.push(format!("route #{i} has id {}", route.id));
        }
        if plan.edit_sets.get(route.edits as usize).is_none() {
            problems.push(format!("route {} names a missing edit set", route.pattern));
        }
        use edgepack_bundles::plan::ActionPlan;
        let missing = match &route.action {
            ActionPlan::Proxy { origin, .. } => plan.origins.get(*origin as usize).is_none(),
            ActionPlan::Respond { response } => plan.responses.get(*response as usize).is_none(),
            ActionPlan::Function { function } => plan.functions.get(*function as usize).is_none(),
            ActionPlan::Redirect { .. } | ActionPlan::Block { .. } => false,
        };
        if missing {
            problems.push(format!("route {} names a missing target", route.pattern));
        }
    }
    for (what, count, ids) in [
        (
            "rate limit",
            plan.ratelimits.len(),
            plan.ratelimits.iter().map(|l| l.id).collect::<Vec<_>>(),
        ),
        (
            "jwt",
            plan.jwts.len(),
            plan.jwts.iter().map(|j| j.id).collect(),
        ),
        (
            "cors",
            plan.cors.len(),
            plan.cors.iter().map(|c| c.id).collect(),
        ),
        (
            "origin",
            plan.origins.len(),
            plan.origins.iter().map(|o| o.id).collect(),
        ),
        (
            "response",
            plan.responses.len(),
            plan.responses.iter().map(|r| r.id).collect(),
        ),
    ] {
        if ids.iter().enumerate().any(|(i, id)| *id as usize != i) || ids.len() != count {
            problems.push(format!("{what} ids are not 0..{count}"));
        }
    }
    if plan.zones.is_empty() || plan.zones.len() != plan.zone_countries.len() {
        problems.push("the zone table is inconsistent".to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
