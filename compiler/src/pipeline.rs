//! The stages run in order: check → lower → verify → emit → optimize.
//!
//! Commands call these instead of chaining the stages themselves, so `build`, `explain` and
//! the tests all compile a policy the same way.

use std::path::Path;

use edgepack_schema::{Checked, Policy};

use crate::codegen::{self, CodegenError};
use crate::lower;
use crate::optimize::{self, OptimizeError};
use crate::plan::RegionPlan;
use crate::report::{self, HumanStyle};
use crate::{Exit, Output};

/// One region's compiled policy.
#[derive(Debug)]
pub struct CompiledRegion {
    pub plan: RegionPlan,
    /// The optimized module.
    pub wasm: Vec<u8>,
    /// The module's size as generated, before optimization.
    pub generated_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("region {region}: the plan breaks invariants (a compiler bug): {problems:?}")]
    Verify {
        region: String,
        problems: Vec<String>,
    },
    #[error("region {region}: {source}")]
    Codegen {
        region: String,
        #[source]
        source: CodegenError,
    },
    #[error("region {region}: {source}")]
    Optimize {
        region: String,
        #[source]
        source: OptimizeError,
    },
}

/// Checks a policy; on errors, renders them into `out` and returns `None`.
pub fn check(path: &Path, out: &mut Output, style: HumanStyle) -> Option<(Checked, Policy)> {
    let mut checked = match edgepack_schema::check(path) {
        Ok(checked) => checked,
        Err(error) => {
            out.stderr.push_str(&format!("error: {error}\n"));
            out.fail(Exit::Usage);
            return None;
        }
    };
    let rendered = report::human(&checked.diagnostics, &checked.sources, style);
    out.stderr.push_str(&rendered);
    match checked.policy.take() {
        Some(policy) => Some((checked, policy)),
        None => {
            out.stderr.push_str(&format!(
                "{}\n",
                report::summary(checked.error_count(), checked.warning_count())
            ));
            out.fail(Exit::PolicyErrors);
            None
        }
    }
}

/// The plans of the named regions (all when `regions` is empty), or the unknown names.
pub fn plans(
    policy: &Policy,
    checked: &Checked,
    regions: &[String],
) -> Result<Vec<RegionPlan>, Vec<String>> {
    let unknown: Vec<String> = regions
        .iter()
        .filter(|r| policy.region(r).is_none())
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    Ok(policy
        .regions
        .iter()
        .filter(|r| regions.is_empty() || regions.contains(&r.name.value))
        .map(|r| lower::lower(policy, &checked.sources, r))
        .collect())
}

/// Verifies, emits and optimizes one region's plan.
pub fn compile(plan: RegionPlan) -> Result<CompiledRegion, CompileError> {
    let region = plan.region.clone();
    if cfg!(debug_assertions)
        && let Err(problems) = crate::verify::verify(&plan)
    {
        return Err(CompileError::Verify { region, problems });
    }
    let generated = codegen::emit(&plan).map_err(|source| CompileError::Codegen {
        region: region.clone(),
        source,
    })?;
    let wasm = optimize::optimize(&generated).map_err(|source| CompileError::Optimize {
        region: region.clone(),
        source,
    })?;
    Ok(CompiledRegion {
        plan,
        wasm,
        generated_size: generated.len(),
    })
}
