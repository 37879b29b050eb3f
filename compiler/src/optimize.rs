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
    let optimized = merge_data_segments(&std::fs::read(&output)?)?;
    validate(&optimized, "after optimization")?;
    Ok(optimized)
}

/// Largest run of zeros kept between two data segments to merge them into one.
const MERGE_GAP: u32 = 32;

/// Merges active data segments that lie close together into one.
///
/// binaryen splits data at runs of zeros to save bytes, which leaves hundreds of small
/// segments; every segment costs the node time when it compiles the module, while a few
/// zeros cost nothing once the bundle is compressed. Segments are merged only when every
/// one is active at a constant offset (no `memory.init` can refer to them by index).
fn merge_data_segments(wasm: &[u8]) -> Result<Vec<u8>, OptimizeError> {
    use walrus::{ConstExpr, DataKind, ir::Value};
    let mut module =
        walrus::Module::from_buffer(wasm).map_err(|e| OptimizeError::Walrus(e.to_string()))?;
    let mut segments = Vec::new();
    for data in module.data.iter() {
        match data.kind {
            DataKind::Active {
                memory,
                offset: ConstExpr::Value(Value::I32(offset)),
            } => segments.push((memory, offset as u32, data.id())),
            _ => return Ok(wasm.to_vec()),
        }
    }
    if segments.len() < 2 || segments.iter().any(|s| s.0 != segments[0].0) {
        return Ok(wasm.to_vec());
    }
    segments.sort_by_key(|s| s.1);
    let memory = segments[0].0;
    let mut merged: Vec<(u32, Vec<u8>)> = Vec::new();
    let overlapping = segments.windows(2).any(|pair| {
        let end = pair[0].1 as u64 + module.data.get(pair[0].2).value.len() as u64;
        (pair[1].1 as u64) < end
    });
    if overlapping {
        // Later segments overwrite earlier ones: order matters, leave them as they are.
        return Ok(wasm.to_vec());
    }
    for (_, offset, id) in &segments {
        let bytes = std::mem::take(&mut module.data.get_mut(*id).value);
        match merged.last_mut() {
            Some((start, run)) if *offset - (*start + run.len() as u32) <= MERGE_GAP => {
                run.resize((*offset - *start) as usize, 0);
                run.extend_from_slice(&bytes);
            }
            _ => merged.push((*offset, bytes)),
        }
    }
    for (_, _, id) in segments {
        module.data.delete(id);
    }
    for (offset, bytes) in merged {
        module.data.add(
            DataKind::Active {
                memory,
                offset: ConstExpr::Value(Value::I32(offset as i32)),
            },
            bytes,
        );
    }
    Ok(module.emit_wasm())
}
