//! Validation and optimization of generated policy modules.
//!
//! Every module is validated with `wasmparser` against exactly the Wasm 2.0 feature set the
//! node's engine enables, before and after optimization. `walrus` removes functions and
//! data nothing reaches; `wasm-opt` (binaryen) then runs its size and speed passes.
//! Optimization must never change a decision: the differential tests run on its output.

use wasmparser::{Validator, WasmFeatures};

/// The features policy modules may use, and the node enables.
pub const POLICY_FEATURES: WasmFeatures = WasmFeatures::WASM2;

#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    #[error("the generated module is invalid ({stage}): {message}")]
    Invalid {
        stage: &'static str,
        message: String,
    },
    #[error("walrus: {0}")]
    Walrus(String),
    #[error("wasm-opt: {0}")]
    WasmOpt(String),
    #[error("wasm-opt: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks a module against the policy feature set.
pub fn validate(wasm: &[u8], stage: &'static str) -> Result<(), OptimizeError> {
    Validator::new_with_features(POLICY_FEATURES)
        .validate_all(wasm)
        .map(|_| ())
        .map_err(|e| OptimizeError::Invalid {
            stage,
            message: e.to_string(),
        })
}

/// Removes what nothing reaches, then runs binaryen's `-O3` passes.
pub fn optimize(wasm: &[u8]) -> Result<Vec<u8>, OptimizeError> {
    validate(wasm, "as generated")?;
    let mut module =
        walrus::Module::from_buffer(wasm).map_err(|e| OptimizeError::Walrus(e.to_string()))?;
    walrus::passes::gc::run(&mut module);
    // Names and producers would only make the module larger.
    module.producers.clear();
    let trimmed = module.emit_wasm();

    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.wasm");
    let output = dir.path().join("out.wasm");
    std::fs::write(&input, &trimmed)?;
    let mut options = wasm_opt::OptimizationOptions::new_opt_level_3();
    options.mvp_features_only();
    for feature in [
        wasm_opt::Feature::MutableGlobals,
        wasm_opt::Feature::BulkMemory,
        wasm_opt::Feature::SignExt,
        wasm_opt::Feature::TruncSat,
        wasm_opt::Feature::Simd,
        wasm_opt::Feature::Multivalue,
    ] {
        options.enable_feature(feature);
    }
    options.debug_info(false);
    options
        .run(&input, &output)
        .map_err(|e| OptimizeError::WasmOpt(e.to_string()))?;
    let optimized = std::fs::read(&output)?;
    validate(&optimized, "after optimization")?;
    Ok(optimized)
}
