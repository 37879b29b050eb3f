//! Edge functions: `wasi:http/proxy` components from the bundle, compiled once (and cached
//! in the state directory), run in a fresh instance per request with the limits the policy
//! sets, allowed to call only the origins the policy names for them.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgepack_bundles::bundle::{self, FileEntry};
use edgepack_bundles::plan::{FunctionPlan, OriginPlan, RegionPlan};
use http::{Request, Response, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    ResourceLimiter, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::proxy::{self, OriginTarget, Origins, UpstreamError};

/// Compiled components kept in memory, so a bundle whose functions did not change
/// activates without compiling or reading the disk.
const COMPILED_IN_MEMORY: usize = 16;

/// The largest body a function may send to an origin.
const MAX_OUTBOUND_BODY: usize = 10 << 20;

/// The node's limits for all functions, from its flags.
#[derive(Debug, Clone)]
pub struct FunctionLimits {
    /// Function instances alive at once (each serves one request).
    pub instances: u32,
    /// The most memory any one function may be given.
    pub memory_max: u64,
}

/// Why a function could not be prepared (the bundle is refused).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("function {name}: the bundle has no {file}")]
    Missing { name: String, file: String },
    #[error("function {name} asks for {asked} bytes of memory, this node allows at most {max}")]
    Memory { name: String, asked: u64, max: u64 },
    #[error("function {name} does not compile: {reason}")]
    Compile { name: String, reason: String },
    #[error("function {name} is not a wasi:http/proxy handler this node can run: {reason}")]
    Link { name: String, reason: String },
    #[error("the functions engine cannot start: {0}")]
    Engine(String),
}

/// How a function run failed; each kind has its own status and metric label.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("ran past its time limit of {0:?}")]
    Timeout(Duration),
    #[error("reached its memory limit of {0} bytes")]
    Memory(u64),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("answered with an error: {0}")]
    Failed(String),
    #[error("no instance is free ({0})")]
    Capacity(String),
}

impl RunError {
    /// A short, fixed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::Timeout(_) => "timeout",
            RunError::Memory(_) => "memory",
            RunError::Trap(_) => "trap",
            RunError::Failed(_) => "error",
            RunError::Capacity(_) => "capacity",
        }
    }
}

impl Default for FunctionLimits {
    fn default() -> FunctionLimits {
        FunctionLimits {
            instances: 1000,
            memory_max: 1 << 30,
        }
    }
}

/// Starts the functions engine when a bundle first needs it: a node whose bundles carry no
/// functions never reserves the instance pool.
#[derive(Default)]
pub struct FunctionHost {
    pub limits: FunctionLimits,
    pub state_dir: Option<PathBuf>,
    /// The node's request counter: the epoch clock wakes less often while it is still.
    activity: Arc<AtomicU64>,
    engine: Mutex<Option<Arc<FunctionEngine>>>,
}

impl FunctionHost {
    pub fn new(
        limits: FunctionLimits,
        state_dir: Option<PathBuf>,
        activity: Arc<AtomicU64>,
    ) -> FunctionHost {
        FunctionHost {
            limits,
            state_dir,
            activity,
            engine: Mutex::new(None),
        }
    }

    pub fn engine(&self) -> Result<Arc<FunctionEngine>, PrepareError> {
        let mut engine = self
            .engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(engine) = engine.as_ref() {
            return Ok(engine.clone());
        }
        let started = Arc::new(
            FunctionEngine::new(
                self.limits.clone(),
                self.state_dir.as_deref(),
                self.activity.clone(),
            )
            .map_err(PrepareError::Engine)?,
        );
        *engine = Some(started.clone());
        Ok(started)
    }
}

/// The wasmtime engine for functions: component model, pooling allocator with
/// copy-on-write memory images, epoch interruption, and the `wasi:http/proxy` world.
pub struct FunctionEngine {
    engine: Engine,
    linker: Linker<FunctionState>,
    limits: FunctionLimits,
    /// Where compiled components are kept across restarts (`<state-dir>/functions`).
    cache_dir: Option<PathBuf>,
    /// Hex digest of the engine's compatibility hash: compiled files of another engine
    /// (another wasmtime, other settings) are never loaded.
    compatibility: String,
    compiled: Mutex<Vec<(String, ProxyPre<FunctionState>)>>,
    /// Set when the epoch thread should stop (the engine is dropped).
    stopped: Arc<AtomicBool>,
}

impl Drop for FunctionEngine {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

impl FunctionEngine {
    pub fn new(
        limits: FunctionLimits,
        state_dir: Option<&Path>,
        activity: Arc<AtomicU64>,
    ) -> Result<FunctionEngine, String> {
        let mut pool = PoolingAllocationConfig::default();
        let instances = limits.instances.max(1);
        let memory_max = usize::try_from(limits.memory_max).unwrap_or(usize::MAX);
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(8))
            .max_core_instances_per_component(16)
            .total_memories(instances.saturating_mul(2))
            .max_memories_per_component(2)
            .total_tables(instances.saturating_mul(4))
            .max_tables_per_component(4)
            .total_stacks(instances)
            .max_memory_size(memory_max)
            // Pages a request touched stay mapped for the next one (reset, not unmapped):
            // fewer page faults per fresh instance.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            // Where the kernel can say which pages an instance dirtied (Linux 6.7+), only
            // those are reset, instead of the whole resident megabyte.
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .memory_init_cow(true)
            .memory_reservation(limits.memory_max)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
        let mut linker = Linker::new(&engine);
        link_proxy_world(&mut linker).map_err(|e| format!("{e:#}"))?;
        let compatibility = {
            let mut hasher = Sha256Hasher(Sha256::new());
            std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
            bundle::hex(&hasher.0.finalize()[..16])
        };
        let cache_dir = match state_dir {
            Some(dir) => {
                let dir = dir.join("functions");
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                Some(dir)
            }
            None => None,
        };
        let stopped = Arc::new(AtomicBool::new(false));
        let ticking = engine.weak();
        let stop = stopped.clone();
        std::thread::Builder::new()
            .name("edgepack-fn-epoch".into())
            .spawn(move || {
                crate::host::run_epoch_clock(&activity, |ticks| {
                    if stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    let Some(engine) = ticking.upgrade() else {
                        return false;
                    };
                    for _ in 0..ticks {
                        engine.increment_epoch();
                    }
                    true
                });
            })
            .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
        Ok(FunctionEngine {
            engine,
            linker,
            limits,
            cache_dir,
            compatibility,
            compiled: Mutex::new(Vec::new()),
            stopped,
        })
    }

    /// Compiles (or finds compiled) and links every function of a plan, by function id.
    /// `digests` are the verified manifest's entries, whose sha256 keys the compiled form.
    pub fn prepare(
        &self,
        plan: &RegionPlan,
        files: &std::collections::BTreeMap<String, Vec<u8>>,
        digests: &[FileEntry],
    ) -> Result<Vec<Arc<Function>>, PrepareError> {
        plan.functions
            .iter()
            .map(|function| {
                let bytes = files
                    .get(&function.file)
                    .ok_or_else(|| PrepareError::Missing {
                        name: function.name.clone(),
                        file: function.file.clone(),
                    })?;
                if function.memory_bytes > self.limits.memory_max {
                    return Err(PrepareError::Memory {
                        name: function.name.clone(),
                        asked: function.memory_bytes,
                        max: self.limits.memory_max,
                    });
                }
                let digest = bundle::listed_sha256(digests, &function.file, bytes);
                let pre = self.pre(&function.name, bytes, digest)?;
                // One instance now, so a component that cannot start within its limits is
                // refused with the bundle rather than failing each request.
                self.start(&pre, function.memory_bytes)
                    .map_err(|error| PrepareError::Link {
                        name: function.name.clone(),
                        reason: format!("it does not start: {error}"),
                    })?;
                let outbound = function
                    .origins
                    .iter()
                    .filter_map(|id| plan.origins.get(*id as usize).cloned())
                    .collect();
                Ok(Arc::new(Function {
                    plan: function.clone(),
                    pre,
                    outbound: Arc::new(outbound),
                }))
            })
            .collect()
    }

    /// The linked component for these bytes: from memory, from the state directory, or
    /// compiled now (and then stored in both).
    fn pre(
        &self,
        name: &str,
        bytes: &[u8],
        digest: String,
    ) -> Result<ProxyPre<FunctionState>, PrepareError> {
        if let Some(pre) = self
            .lock()
            .iter()
            .find(|(d, _)| *d == digest)
            .map(|(_, p)| p.clone())
        {
            return Ok(pre);
        }
        let component = match self.load_compiled(&digest) {
            Some(component) => component,
            None => {
                let component =
                    Component::new(&self.engine, bytes).map_err(|e| PrepareError::Compile {
                        name: name.to_string(),
                        reason: format!("{e:#}"),
                    })?;
                self.store_compiled(&digest, &component);
                component
            }
        };
        let link = |e: wasmtime::Error| PrepareError::Link {
            name: name.to_string(),
            reason: format!("{e:#}"),
        };
        let pre =
            ProxyPre::new(self.linker.instantiate_pre(&component).map_err(link)?).map_err(link)?;
        let mut compiled = self.lock();
        if compiled.len() == COMPILED_IN_MEMORY {
            compiled.remove(0);
        }
        compiled.push((digest, pre.clone()));
        Ok(pre)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, ProxyPre<FunctionState>)>> {
        self.compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn compiled_path(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{digest}-{}.cwasm", self.compatibility)))
    }

    #[allow(unsafe_code)]
    fn load_compiled(&self, digest: &str) -> Option<Component> {
        let path = self.compiled_path(digest)?;
        if !path.is_file() {
            return None;
        }
        // SAFETY: wasmtime runs deserialized code as is, so the file must be one this
        // engine wrote. It is: only the node writes its state directory, every file is
        // written whole under a temporary name and renamed into place, and the name
        // carries both the component's sha256 and this engine's compatibility hash
        // (wasmtime checks the latter again in the file's header).
        match unsafe { Component::deserialize_file(&self.engine, &path) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(target: "edgepack::functions", path = %path.display(), error = %error, "compiled function unusable; compiling again");
                None
            }
        }
    }

    fn store_compiled(&self, digest: &str, component: &Component) {
        let Some(path) = self.compiled_path(digest) else {
            return;
        };
        let written = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                let temporary = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&temporary, bytes)
                    .and_then(|()| std::fs::rename(&temporary, &path))
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&temporary);
                        e.to_string()
                    })
            });
        if let Err(error) = written {
            tracing::warn!(target: "edgepack::functions", path = %path.display(), error = %error, "cannot keep the compiled function");
        }
    }

    /// Starts a fresh instance of `function` and drops it, as each request does: how long
    /// its store took to set up and how long instantiation took.
    pub fn start_instance(&self, function: &Function) -> Result<StartTimes, RunError> {
        self.start(&function.pre, function.plan.memory_bytes)
    }

    fn start(&self, pre: &ProxyPre<FunctionState>, memory: u64) -> Result<StartTimes, RunError> {
        let started = Instant::now();
        let mut store = Store::new(
            &self.engine,
            FunctionState::new(
                Outbound::none(),
                MemoryLimit {
                    limit: usize::try_from(memory).unwrap_or(usize::MAX),
                    hit: Arc::new(AtomicBool::new(false)),
                },
            ),
        );
        store.limiter(|state| &mut state.memory);
        store.set_epoch_deadline(u64::MAX / 2);
        let setup = started.elapsed();
        let instantiated = block_on(pre.instantiate_async(&mut store));
        let instantiate = started.elapsed() - setup;
        match instantiated {
            Ok(_) => Ok(StartTimes { setup, instantiate }),
            Err(_) if store.data().memory.hit.load(Ordering::Relaxed) => {
                Err(RunError::Memory(memory))
            }
            Err(error) => Err(RunError::Trap(format!("{error:#}"))),
        }
    }

    /// Runs `function` on `request` in a fresh instance and returns its response, whose
    /// body streams from the instance; instantiation time and live instances go to `meters`.
    pub async fn run(
        &self,
        function: &Function,
        request: Request<Full<Bytes>>,
        https: bool,
        origins: Origins,
        meters: RunMeters,
    ) -> Result<Response<FunctionBody>, RunError> {
        let plan = &function.plan;
        let limit = Duration::from_millis(plan.timeout_ms.max(1));
        let memory_hit = Arc::new(AtomicBool::new(false));
        // Set before the instance goes when it did not end well, so a body it leaves
        // unfinished ends in an error, not in what looks like a complete answer.
        let cut_off = Arc::new(AtomicBool::new(false));
        let state = FunctionState::new(
            Outbound {
                allowed: function.outbound.clone(),
                origins: Some(origins),
                function: plan.name.clone(),
                refused: meters.refused,
            },
            MemoryLimit {
                limit: usize::try_from(plan.memory_bytes).unwrap_or(usize::MAX),
                hit: memory_hit.clone(),
            },
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        // Every epoch tick, a running instance yields to the other tasks of its worker
        // thread (a spinning function holds up no one), and past its time limit it traps.
        // The first deadline is set when the task starts (below): the time it waits to be
        // run does not make the instance yield before it has run at all.
        let started = Instant::now();
        store.epoch_deadline_callback(move |_| {
            if started.elapsed() >= limit {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        let scheme = if https { Scheme::Https } else { Scheme::Http };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let prepared = store
            .data_mut()
            .http()
            .new_incoming_request(scheme, request)
            .and_then(|req| {
                let out = store.data_mut().http().new_response_outparam(sender)?;
                Ok((req, out))
            });
        let (req, out) = prepared.map_err(|e| RunError::Failed(format!("{e:#}")))?;
        let pre = function.pre.clone();
        let ended_badly = cut_off.clone();
        let deadline = started + limit;
        let task = tokio::spawn(async move {
            store.set_epoch_deadline(1);
            let store = &mut store;
            let outcome = within(deadline, async {
                let instantiating = Instant::now();
                let proxy = pre.instantiate_async(&mut *store).await?;
                meters
                    .instantiate
                    .observe(instantiating.elapsed().as_secs_f64());
                store.data_mut().live = Some(Live::new(meters.live));
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut *store, req, out)
                    .await
            })
            .await;
            if !matches!(outcome, Some(Ok(()))) {
                ended_badly.store(true, Ordering::Release);
            }
            outcome
        });
        let abort = task.abort_handle();
        let failure = |error: wasmtime::Error| -> RunError {
            if memory_hit.load(Ordering::Relaxed) {
                RunError::Memory(plan.memory_bytes)
            } else if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                RunError::Timeout(limit)
            } else if error
                .chain()
                .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>())
            {
                RunError::Capacity(format!("{error:#}"))
            } else {
                RunError::Trap(format!("{error:#}"))
            }
        };
        // The instance's task keeps to the time limit itself (it also bounds the rest of the
        // body the instance writes after answering), so waiting here needs no timer.
        match receiver.await {
            Ok(Ok(response)) => Ok(response.map(|body| FunctionBody {
                body: Mutex::new(body),
                cut_off,
            })),
            Ok(Err(code)) => {
                abort.abort();
                Err(RunError::Failed(format!("{code:?}")))
            }
            // The instance ended without answering: its result says why.
            Err(_) => match task.await {
                Ok(Some(Ok(()))) => Err(RunError::Failed(
                    "the handler returned without a response".into(),
                )),
                Ok(Some(Err(error))) => Err(failure(error)),
                Ok(None) => Err(RunError::Timeout(limit)),
                Err(join) => Err(RunError::Trap(join.to_string())),
            },
        }
    }
}

/// Runs `work` until `deadline`: `None` when the deadline came first (or had come before
/// it started).
///
/// The timer is armed only once `work` waits for something. Most instances answer within
/// their first poll, and a timer per request costs more than its own upkeep: tokio's time
/// driver wakes the worker's event loop (a write to its eventfd) for each timer inserted
/// before its next wake-up. A running instance needs no timer: the epoch callback stops it
/// at the same limit.
async fn within<F: Future>(deadline: Instant, work: F) -> Option<F::Output> {
    if Instant::now() >= deadline {
        return None;
    }
    let mut work = std::pin::pin!(work);
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(output) = work.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(output));
        }
        timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())))
            .as_mut()
            .poll(cx)
            .map(|()| None)
    })
    .await
}

/// A function's response body, as the node sends it.
///
/// wasi:http ends a body its instance dropped unfinished as if it were complete; this one
/// ends it in an error when the instance trapped or was stopped. It is also `Sync`, as the
/// node's bodies are: polling takes `&mut self`, which reaches the inner body unlocked.
pub struct FunctionBody {
    body: Mutex<HyperOutgoingBody>,
    cut_off: Arc<AtomicBool>,
}

/// Why a function's body ended early.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl http_body::Body for FunctionBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let body = this
            .body
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match std::pin::Pin::new(body).poll_frame(cx) {
            std::task::Poll::Ready(None) if this.cut_off.load(Ordering::Acquire) => {
                std::task::Poll::Ready(Some(Err(BodyError::from(
                    "the function stopped before finishing its body",
                ))))
            }
            polled => polled
                .map_err(|code| BodyError::from(format!("the function's body failed: {code:?}"))),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body
            .lock()
            .map_or_else(|_| http_body::SizeHint::default(), |body| body.size_hint())
    }
}

/// Where a fresh instance's start goes.
#[derive(Debug, Clone, Copy)]
pub struct StartTimes {
    /// A store with its WASI and HTTP contexts and limits.
    pub setup: Duration,
    /// Instantiating the pre-linked component in it.
    pub instantiate: Duration,
}

/// The metrics a run reports to.
pub struct RunMeters {
    /// Instantiation time of this function.
    pub instantiate: Histogram,
    /// Instances alive now.
    pub live: Gauge,
    /// Outbound requests of this function refused.
    pub refused: Counter,
}

/// Counts an instance as alive until its store is dropped.
struct Live(Gauge);

impl Live {
    fn new(gauge: Gauge) -> Live {
        gauge.inc();
        Live(gauge)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The host interfaces a function gets: the `wasi:http/proxy` world, and the parts of
/// `wasi:cli` that Rust's `std` imports on `wasm32-wasip2` and that grant nothing (an empty
/// environment, `exit` as a trap, no terminals). The compiler allows exactly these imports.
fn link_proxy_world(linker: &mut Linker<FunctionState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::p2::bindings::cli;
    wasmtime_wasi_http::p2::add_to_linker_async(linker)?;
    cli::environment::add_to_linker::<FunctionState, WasiCli>(linker, FunctionState::cli)?;
    cli::exit::add_to_linker::<FunctionState, WasiCli>(linker, FunctionState::cli)?;
    cli::terminal_input::add_to_linker::<FunctionState, WasiCli>(linker, FunctionState::cli)?;
    cli::terminal_output::add_to_linker::<FunctionState, WasiCli>(linker, FunctionState::cli)?;
    cli::terminal_stdin::add_to_linker::<FunctionState, WasiCli>(linker, FunctionState::cli)?;
    cli::terminal_stdout::add_to_linker::<FunctionState, WasiCli>(linker, FunctionState::cli)?;
    cli::terminal_stderr::add_to_linker::<FunctionState, WasiCli>(linker, FunctionState::cli)?;
    Ok(())
}

/// One function of the active bundle, linked and ready to instantiate.
pub struct Function {
    pub plan: FunctionPlan,
    pre: ProxyPre<FunctionState>,
    /// The origins it may call, as this region resolves them.
    outbound: Arc<Vec<OriginPlan>>,
}

/// What a function's instance owns for the length of one request.
pub struct FunctionState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: Outbound,
    memory: MemoryLimit,
    live: Option<Live>,
}

impl FunctionState {
    fn new(outbound: Outbound, memory: MemoryLimit) -> FunctionState {
        FunctionState {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound,
            memory,
            live: None,
        }
    }
}

/// Polls a future that never waits on I/O (instantiation with no time limit) to its end on
/// this thread.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::yield_now();
    }
}

impl WasiView for FunctionState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for FunctionState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// The per-function memory limit; records that it was hit, to tell the trap that
/// follows from other traps.
struct MemoryLimit {
    limit: usize,
    hit: Arc<AtomicBool>,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// A function's outbound HTTP: to its declared origins, through the node's origin client
/// (so `--resolve` and `--origin-ca` apply), and nowhere else.
struct Outbound {
    allowed: Arc<Vec<OriginPlan>>,
    /// None: no request may leave (an instance started only to check it starts).
    origins: Option<Origins>,
    function: String,
    refused: Counter,
}

impl Outbound {
    fn none() -> Outbound {
        Outbound {
            allowed: Arc::default(),
            origins: None,
            function: String::new(),
            refused: Counter::default(),
        }
    }

    /// The declared origin a request is for: named by the origin's name
    /// (`http://api/path`) or by its endpoint's host and port.
    fn origin_for(&self, uri: &Uri) -> Option<&OriginPlan> {
        let host = uri.host()?;
        self.allowed.iter().find(|origin| {
            origin.name.eq_ignore_ascii_case(host)
                || (origin
                    .host
                    .eq_ignore_ascii_case(host.trim_matches(['[', ']']))
                    && uri.port_u16().unwrap_or(origin.port) == origin.port)
        })
    }
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let (Some(origin), Some(origins)) = (
            self.origin_for(request.uri()).cloned(),
            self.origins.clone(),
        ) else {
            tracing::warn!(
                target: "edgepack::functions",
                function = %self.function,
                uri = %request.uri(),
                "outbound request refused: not an origin the function may call"
            );
            self.refused.inc();
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        Box::new(async move {
            let (mut parts, body) = request.into_parts();
            let body = Limited::new(body, MAX_OUTBOUND_BODY)
                .collect()
                .await
                .map_err(|_| HttpError::HttpRequestBodySize(None))?
                .to_bytes();
            let target =
                OriginTarget::new(&origin).map_err(|_| HttpError::HttpRequestUriInvalid)?;
            parts.uri = target
                .uri(parts.uri.path_and_query())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            proxy::strip_hop_by_hop(&mut parts.headers);
            parts.headers.insert(header::HOST, target.host().clone());
            parts.headers.remove(header::CONTENT_LENGTH);
            let timeout = Duration::from_millis(origin.response_timeout_ms.max(1));
            let response = origins
                .send(Request::from_parts(parts, Full::new(body)), timeout)
                .await
                .map_err(|error| match error {
                    UpstreamError::Timeout => HttpError::ConnectionTimeout,
                    UpstreamError::Connect(_) => HttpError::ConnectionRefused,
                    UpstreamError::Protocol(_) => HttpError::HttpProtocolError,
                })?;
            let response = response.map(|body| body.map_err(HttpError::from).boxed_unsync());
            let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// Feeds `Hash` output into sha256, for a digest stable across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
