//! The one host of policy modules: load a compiled policy in wasmtime, write a request into
//! its memory, call `decide`, read the decision back.
//!
//! `edgepack explain`, `edgepack test`, the differential tests and the node all use this
//! host; there is no second one. An instance is reused across requests (one per worker):
//! the request is written straight into linear memory and nothing is allocated per call
//! beyond the decision's own lists.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgepack_bundles::abi::{self, Decision, DecisionError, export};
use edgepack_bundles::request::RequestParts;
use edgepack_bundles::wire::{self, EncodeError, Limits};
use wasmtime::{
    Caller, Config, Engine, Extern, Func, Instance, Memory, Module, OptLevel, RegallocAlgorithm,
    Store, StoreLimits, StoreLimitsBuilder, Strategy, TypedFunc, ValType,
};

/// The largest memory a policy module may declare.
pub const MAX_POLICY_MEMORY: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the policy module does not compile: {0}")]
    Compile(String),
    #[error("the policy module cannot be instantiated: {0}")]
    Instantiate(String),
    #[error("the policy module lacks the export `{0}`")]
    MissingExport(&'static str),
    #[error("the policy module speaks ABI {found}, this host speaks {expected}")]
    Abi { found: u32, expected: u32 },
    #[error("the policy module's memory layout is inconsistent: {0}")]
    Layout(&'static str),
    #[error(transparent)]
    Request(#[from] EncodeError),
    #[error("decide trapped: {0}")]
    Trap(String),
    #[error("decide ran past its time limit")]
    TimedOut,
    #[error("decide refused the request block (code {0})")]
    Refused(i32),
    #[error("the decision block is malformed: {0}")]
    Decision(#[from] DecisionError),
}

/// One epoch: deadlines are counted in milliseconds.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// How often the epoch clock wakes while requests arrive, and once they have stopped.
const CLOCK_BUSY: Duration = Duration::from_millis(1);
const CLOCK_IDLE: Duration = Duration::from_millis(10);
/// How long without a request before the clock wakes less often.
const CLOCK_QUIET: Duration = Duration::from_millis(50);

/// Advances an epoch by the milliseconds that pass, calling `advance(n)` with each step's
/// count until it returns false. It wakes every millisecond while `activity` (a request
/// counter) moves, and every 10 ms after 50 ms without a request, so an idle node does not
/// wake a thousand times a second; deadlines keep their length in wall time either way and
/// are only checked less finely while idle.
pub(crate) fn run_epoch_clock(activity: &AtomicU64, mut advance: impl FnMut(u64) -> bool) {
    let mut seen = activity.load(Ordering::Relaxed);
    let mut last_request = Instant::now();
    let mut last_step = Instant::now();
    let mut carried = Duration::ZERO;
    loop {
        let now_seen = activity.load(Ordering::Relaxed);
        if now_seen != seen {
            seen = now_seen;
            last_request = Instant::now();
        }
        let pause = if last_request.elapsed() < CLOCK_QUIET {
            CLOCK_BUSY
        } else {
            CLOCK_IDLE
        };
        std::thread::sleep(pause);
        let now = Instant::now();
        let elapsed = now.duration_since(last_step) + carried;
        last_step = now;
        let ticks = (elapsed.as_micros() / EPOCH_TICK.as_micros()) as u64;
        carried = elapsed.saturating_sub(EPOCH_TICK * ticks as u32);
        if !advance(ticks) {
            return;
        }
    }
}

/// Which compiler builds a module.
///
/// A new bundle is compiled `Quick` first, with Winch, wasmtime's baseline compiler (about
/// half Cranelift's compile time on a policy module, slower code), so the node serves it
/// within milliseconds; then `Optimized` with Cranelift in the background, and moves to
/// that. Both compile the same bytes and decide alike. Policy modules arrive optimized by
/// wasm-opt, so Cranelift's register allocator matters more than its own passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Quick,
    Optimized,
}

/// wasmtime engines configured for policy modules (one per [`Tier`]): Cranelift, Wasm 2.0
/// features only.
#[derive(Clone)]
pub struct PolicyEngine {
    optimized: Engine,
    quick: Engine,
    /// Epoch ticks a `decide` call may run, when bounded.
    deadline_ticks: Option<u64>,
}

impl PolicyEngine {
    /// Engines whose `decide` calls are not time-bounded (tools and tests).
    pub fn new() -> Result<PolicyEngine, HostError> {
        Self::build(None)
    }

    /// Engines whose `decide` calls trap once they have run for about `limit` (at least
    /// one epoch tick of 1 ms; at most two ticks more while `activity`, the node's request
    /// counter, moves, at most 10 ms more after it has been still for 50 ms): a policy module
    /// cannot hold a worker. A background thread advances the epochs while the engines live.
    pub fn with_time_limit(
        limit: Duration,
        activity: Arc<AtomicU64>,
    ) -> Result<PolicyEngine, HostError> {
        let ticks = (limit.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1;
        let engine = Self::build(Some(ticks))?;
        let (optimized, quick) = (engine.optimized.weak(), engine.quick.weak());
        std::thread::Builder::new()
            .name("edgepack-epoch".into())
            .spawn(move || {
                run_epoch_clock(&activity, |ticks| {
                    let (Some(optimized), Some(quick)) = (optimized.upgrade(), quick.upgrade())
                    else {
                        return false;
                    };
                    for _ in 0..ticks {
                        optimized.increment_epoch();
                        quick.increment_epoch();
                    }
                    true
                });
            })
            .map_err(|e| HostError::Compile(format!("cannot start the epoch thread: {e}")))?;
        Ok(engine)
    }

    fn build(deadline_ticks: Option<u64>) -> Result<PolicyEngine, HostError> {
        let engine = |tier: Tier| {
            let mut config = Config::new();
            config
                .wasm_simd(true)
                .wasm_relaxed_simd(false)
                .wasm_multi_memory(false)
                .wasm_memory64(false)
                .wasm_tail_call(false)
                .wasm_component_model(false)
                .epoch_interruption(deadline_ticks.is_some());
            match tier {
                Tier::Optimized => config
                    .cranelift_opt_level(OptLevel::Speed)
                    .cranelift_regalloc_algorithm(RegallocAlgorithm::Backtracking),
                Tier::Quick => config.strategy(Strategy::Winch),
            };
            Engine::new(&config).map_err(|e| HostError::Compile(e.to_string()))
        };
        Ok(PolicyEngine {
            optimized: engine(Tier::Optimized)?,
            quick: engine(Tier::Quick)?,
            deadline_ticks,
        })
    }

    /// Compiles a policy module at the optimized tier and checks its exports.
    pub fn compile(&self, wasm: &[u8]) -> Result<PolicyModule, HostError> {
        self.compile_tier(wasm, Tier::Optimized)
    }

    /// Compiles a policy module (Cranelift) at `tier` and checks its exports.
    pub fn compile_tier(&self, wasm: &[u8], tier: Tier) -> Result<PolicyModule, HostError> {
        let engine = match tier {
            Tier::Optimized => &self.optimized,
            Tier::Quick => &self.quick,
        };
        let module = match Module::new(engine, wasm) {
            Ok(module) => module,
            // A module the baseline compiler cannot build still serves, optimized.
            Err(_) if tier == Tier::Quick => return self.compile_tier(wasm, Tier::Optimized),
            Err(e) => return Err(HostError::Compile(format!("{e:#}"))),
        };
        for name in [
            export::MEMORY,
            export::DECIDE,
            export::ABI_VERSION,
            export::REQUEST_BASE,
            export::REQUEST_CAPACITY,
            export::DECISION_BASE,
            export::BODY_LIMIT,
        ] {
            if module.get_export(name).is_none() {
                return Err(HostError::MissingExport(name));
            }
        }
        for import in module.imports() {
            let known = import.module() == abi::import::MODULE
                && import.name() == abi::import::DETECT
                && import.ty().func().is_some_and(|f| {
                    f.params().len() == 3
                        && f.params().all(|p| matches!(p, ValType::I32))
                        && f.results().len() == 1
                        && f.results().all(|r| matches!(r, ValType::I32))
                });
            if !known {
                return Err(HostError::Compile(format!(
                    "a policy module imports only `{}.{}`, not `{}.{}`",
                    abi::import::MODULE,
                    abi::import::DETECT,
                    import.module(),
                    import.name()
                )));
            }
        }
        Ok(PolicyModule {
            engine: engine.clone(),
            deadline_ticks: self.deadline_ticks,
            tier,
            module: Arc::new(module),
        })
    }
}

/// A compiled policy module, ready to instantiate (cheap to clone).
#[derive(Clone)]
pub struct PolicyModule {
    engine: Engine,
    deadline_ticks: Option<u64>,
    tier: Tier,
    module: Arc<Module>,
}

impl PolicyModule {
    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub fn instantiate(&self) -> Result<PolicyInstance, HostError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(MAX_POLICY_MEMORY as usize)
            .instances(1)
            .memories(1)
            .tables(4)
            .build();
        let mut store = Store::new(
            &self.engine,
            InstanceData {
                limits,
                memory: None,
            },
        );
        store.limiter(|data| &mut data.limits);
        if let Some(ticks) = self.deadline_ticks {
            // Instantiation runs no start function, but bound it all the same.
            store.set_epoch_deadline(ticks);
        }
        // The only import a module may have (checked at compile): libinjection.
        let imports: Vec<Extern> = self
            .module
            .imports()
            .map(|_| Func::wrap(&mut store, detect).into())
            .collect();
        let instance = Instance::new(&mut store, &self.module, &imports)
            .map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
        let memory = instance
            .get_memory(&mut store, export::MEMORY)
            .ok_or(HostError::MissingExport(export::MEMORY))?;
        store.data_mut().memory = Some(memory);
        let decide = instance
            .get_typed_func::<i32, i32>(&mut store, export::DECIDE)
            .map_err(|_| HostError::MissingExport(export::DECIDE))?;
        let mut global = |name: &'static str| -> Result<u32, HostError> {
            instance
                .get_global(&mut store, name)
                .and_then(|g| g.get(&mut store).i32())
                .map(|v| v as u32)
                .ok_or(HostError::MissingExport(name))
        };
        let abi_version = global(export::ABI_VERSION)?;
        if abi_version != abi::ABI_VERSION {
            return Err(HostError::Abi {
                found: abi_version,
                expected: abi::ABI_VERSION,
            });
        }
        let request_base = global(export::REQUEST_BASE)? as usize;
        let request_capacity = global(export::REQUEST_CAPACITY)? as usize;
        let decision_base = global(export::DECISION_BASE)? as usize;
        let body_limit = global(export::BODY_LIMIT)? as usize;
        let memory_len = memory.data_size(&store);
        if memory_len as u64 > MAX_POLICY_MEMORY {
            return Err(HostError::Layout("memory larger than the limit"));
        }
        if request_base
            .checked_add(request_capacity)
            .is_none_or(|end| end > memory_len)
            || decision_base
                .checked_add(abi::dec::SIZE as usize)
                .is_none_or(|end| end > memory_len)
            || body_limit > request_capacity
        {
            return Err(HostError::Layout("request or decision area outside memory"));
        }
        Ok(PolicyInstance {
            store,
            deadline_ticks: self.deadline_ticks,
            memory,
            decide,
            request_base,
            request_capacity,
            decision_base,
            body_limit,
            limits: Limits::default(),
        })
    }
}

/// The module's `detect(kind, ptr, len)` import: libinjection over bytes of its memory. Out
/// of range arguments find nothing (the module only passes its own values).
fn detect(caller: Caller<'_, InstanceData>, kind: i32, ptr: i32, len: i32) -> i32 {
    let Some(memory) = caller.data().memory else {
        return 0;
    };
    let (Some(kind), Ok(start), Ok(len)) = (
        edgepack_bundles::detect::DetectKind::from_code(kind as u32),
        usize::try_from(ptr as u32),
        usize::try_from(len as u32),
    ) else {
        return 0;
    };
    let data = memory.data(&caller);
    match start.checked_add(len).and_then(|end| data.get(start..end)) {
        Some(value) => i32::from(edgepack_bundles::detect::detect(kind, value)),
        None => 0,
    }
}

/// What an instance's store holds: its limits, and its memory for the `detect` import
/// (found once, not by name on every call).
struct InstanceData {
    limits: StoreLimits,
    memory: Option<Memory>,
}

/// An instantiated policy: decides one request at a time.
pub struct PolicyInstance {
    store: Store<InstanceData>,
    deadline_ticks: Option<u64>,
    memory: Memory,
    decide: TypedFunc<i32, i32>,
    request_base: usize,
    request_capacity: usize,
    decision_base: usize,
    body_limit: usize,
    limits: Limits,
}

impl PolicyInstance {
    /// How many body bytes the policy inspects (the node buffers at most this many for it).
    pub fn body_limit(&self) -> usize {
        self.body_limit
    }

    /// Writes the request into the instance and returns the policy's decision.
    pub fn decide<R: RequestParts + ?Sized>(&mut self, request: &R) -> Result<Decision, HostError> {
        let mut decision = Decision::default();
        self.decide_into(request, &mut decision)?;
        Ok(decision)
    }

    /// Like [`PolicyInstance::decide`], writing into a decision the caller reuses.
    pub fn decide_into<R: RequestParts + ?Sized>(
        &mut self,
        request: &R,
        decision: &mut Decision,
    ) -> Result<(), HostError> {
        let memory = self.memory.data_mut(&mut self.store);
        let block = &mut memory[self.request_base..self.request_base + self.request_capacity];
        let len = wire::encode(request, &self.limits, self.body_limit, block)?;
        if let Some(ticks) = self.deadline_ticks {
            self.store.set_epoch_deadline(ticks);
        }
        let code = self
            .decide
            .call(&mut self.store, len as i32)
            .map_err(|e| match e.downcast_ref::<wasmtime::Trap>() {
                Some(wasmtime::Trap::Interrupt) => HostError::TimedOut,
                _ => HostError::Trap(format!("{e:#}")),
            })?;
        if code != 0 {
            return Err(HostError::Refused(code));
        }
        let memory = self.memory.data(&self.store);
        let block = &memory[self.decision_base..self.decision_base + abi::dec::SIZE as usize];
        decision.read_into(block)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        CodeSection, ConstExpr, ExportKind, ExportSection, Function, FunctionSection,
        GlobalSection, GlobalType, Instruction, MemorySection, MemoryType, Module as Encoded,
        TypeSection, ValType,
    };

    #[test]
    fn the_epoch_clock_counts_milliseconds_and_wakes_less_when_idle() {
        let activity = AtomicU64::new(0);
        let started = Instant::now();
        let (mut wakeups, mut ticks) = (0u64, 0u64);
        run_epoch_clock(&activity, |n| {
            wakeups += 1;
            ticks += n;
            started.elapsed() < Duration::from_millis(300)
        });
        let elapsed = started.elapsed().as_millis() as u64;
        assert!(
            ticks <= elapsed && ticks + 15 >= elapsed,
            "{ticks} ticks in {elapsed} ms"
        );
        // 50 ms of 1 ms steps, then 10 ms steps: far fewer wake-ups than milliseconds.
        assert!(wakeups < 90, "{wakeups} wake-ups in {elapsed} ms");
    }

    /// A module with the policy exports whose `decide` runs `body`.
    fn module(body: &[Instruction<'_>]) -> Vec<u8> {
        let mut module = Encoded::new();
        let mut types = TypeSection::new();
        types.ty().function([ValType::I32], [ValType::I32]);
        module.section(&types);
        let mut functions = FunctionSection::new();
        functions.function(0);
        module.section(&functions);
        let mut memory = MemorySection::new();
        memory.memory(MemoryType {
            minimum: 8,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memory);
        let mut globals = GlobalSection::new();
        let values = [
            abi::ABI_VERSION as i32,
            0,
            abi::REQUEST_CAPACITY_BASE as i32,
            abi::REQUEST_CAPACITY_BASE as i32 + 4096,
            0,
        ];
        for value in values {
            globals.global(
                GlobalType {
                    val_type: ValType::I32,
                    mutable: false,
                    shared: false,
                },
                &ConstExpr::i32_const(value),
            );
        }
        module.section(&globals);
        let mut exports = ExportSection::new();
        exports.export(export::MEMORY, ExportKind::Memory, 0);
        exports.export(export::DECIDE, ExportKind::Func, 0);
        for (index, name) in [
            export::ABI_VERSION,
            export::REQUEST_BASE,
            export::REQUEST_CAPACITY,
            export::DECISION_BASE,
            export::BODY_LIMIT,
        ]
        .into_iter()
        .enumerate()
        {
            exports.export(name, ExportKind::Global, index as u32);
        }
        module.section(&exports);
        let mut code = CodeSection::new();
        let mut function = Function::new([]);
        for instruction in body {
            function.instruction(instruction);
        }
        function.instruction(&Instruction::End);
        code.function(&function);
        module.section(&code);
        module.finish()
    }

    fn request() -> edgepack_bundles::request::Request {
        edgepack_bundles::request::Request::new("GET", "/")
    }

    #[test]
    fn a_decide_that_never_ends_is_stopped_at_its_time_limit() {
        let forever = module(&[
            Instruction::Loop(wasm_encoder::BlockType::Empty),
            Instruction::Br(0),
            Instruction::End,
            Instruction::I32Const(0),
        ]);
        let engine = PolicyEngine::with_time_limit(Duration::from_millis(5), Arc::default())
            .expect("engine");
        for tier in [Tier::Quick, Tier::Optimized] {
            let mut instance = engine
                .compile_tier(&forever, tier)
                .and_then(|m| m.instantiate())
                .expect("instantiates");
            let started = std::time::Instant::now();
            let result = instance.decide(&request());
            assert!(
                matches!(result, Err(HostError::TimedOut)),
                "{tier:?}: {result:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(1), "{tier:?}");
        }
    }

    #[test]
    fn a_decide_that_grows_memory_past_the_limit_is_refused_the_memory() {
        // memory.grow by 8192 pages (512 MiB) fails under the store's limit: -1.
        let greedy = module(&[
            Instruction::I32Const(8192),
            Instruction::MemoryGrow(0),
            Instruction::I32Const(-1),
            Instruction::I32Eq,
            Instruction::If(wasm_encoder::BlockType::Empty),
            Instruction::Unreachable,
            Instruction::End,
            Instruction::I32Const(0),
        ]);
        let engine = PolicyEngine::new().expect("engine");
        let mut instance = engine
            .compile(&greedy)
            .and_then(|m| m.instantiate())
            .expect("instantiates");
        assert!(
            matches!(instance.decide(&request()), Err(HostError::Trap(_))),
            "the grow was refused, and the module trapped on it"
        );
    }
}
