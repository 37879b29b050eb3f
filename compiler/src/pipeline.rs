//! The stages run in order: check → lower → verify → emit → optimize.
//!
//! Commands call these instead of chaining the stages themselves, so `build`, `explain` and
//! the tests all compile a policy the same way.

use std::collections::BTreeMap;
use std::path::Path;

use edgepack_schema::{Checked, Policy};
use sha2::{Digest, Sha256};

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

/// Every file on this machine the checked policy was built from: its `.kdl` sources and
/// the files they name (JWT keys, functions, the geo database).
pub fn input_files<'a>(
    checked: &'a Checked,
    policy: &'a Policy,
) -> impl Iterator<Item = &'a Path> + 'a {
    let sources = checked.sources.files().map(|(_, f)| f.path.as_path());
    let keys = policy
        .jwts
        .iter()
        .flat_map(|jwt| jwt.keys.iter().map(|k| k.path.value.absolute.as_path()));
    let functions = policy
        .functions
        .iter()
        .map(|f| f.source.value.absolute.as_path());
    let database = policy
        .geo
        .as_ref()
        .and_then(|g| g.database.as_ref())
        .map(|db| db.path.value.absolute.as_path());
    sources.chain(keys).chain(functions).chain(database)
}

/// sha256 of everything the policy is made of: every source file and every file it names
/// (keys, functions, databases), by path inside the policy directory.
pub fn sources_digest(checked: &Checked, policy: &Policy) -> String {
    let mut parts: std::collections::BTreeMap<String, &[u8]> = checked
        .sources
        .files()
        .map(|(_, f)| (f.relative.clone(), f.text.as_bytes()))
        .collect();
    for jwt in &policy.jwts {
        for key in &jwt.keys {
            parts.insert(key.path.value.relative.clone(), &key.contents);
        }
    }
    for function in &policy.functions {
        parts.insert(function.source.value.relative.clone(), &function.contents);
    }
    if let Some(db) = policy.geo.as_ref().and_then(|g| g.database.as_ref()) {
        parts.insert(db.path.value.relative.clone(), &db.contents);
    }
    let mut hasher = Sha256::new();
    for (path, contents) in parts {
        hasher.update((path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update((contents.len() as u64).to_le_bytes());
        hasher.update(contents);
    }
    edgepack_bundles::bundle::hex(&hasher.finalize())
}

/// What a release says about its bundles besides their files.
#[derive(Clone, Copy, Debug)]
pub struct Release {
    pub version: u64,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None`: never.
    pub expires: Option<u64>,
}

/// Packs one compiled region into a signed bundle.
pub fn pack(
    policy: &Policy,
    compiled: &CompiledRegion,
    sources_sha256: &str,
    release: Release,
    key: &ed25519_dalek::SigningKey,
) -> std::io::Result<Vec<u8>> {
    let plan = &compiled.plan;
    let input = edgepack_bundles::bundle::PackInput {
        region: &plan.region,
        zone: plan.zone_name(plan.zone),
        version: release.version,
        created: release.created,
        expires: release.expires,
        compiler: concat!("edgepack ", env!("CARGO_PKG_VERSION")),
        sources_sha256,
    };
    edgepack_bundles::bundle::pack(&input, &bundle_files(policy, compiled), key)
}

/// Checks, compiles and packs one region of the policy at `path`, for benches and tests
/// that need a real bundle; the error names the first thing that went wrong.
pub fn region_bundle(
    path: &Path,
    region: &str,
    release: Release,
    key: &ed25519_dalek::SigningKey,
) -> Result<Vec<u8>, String> {
    let checked = edgepack_schema::check(path).map_err(|e| e.to_string())?;
    let policy = checked
        .policy
        .as_ref()
        .ok_or_else(|| format!("{} does not check clean", path.display()))?;
    let plan = plans(policy, &checked, &[region.to_string()])
        .map_err(|unknown| format!("no region named {}", unknown.join(", ")))?
        .remove(0);
    let compiled = compile(plan).map_err(|e| e.to_string())?;
    let digest = sources_digest(&checked, policy);
    pack(policy, &compiled, &digest, release, key).map_err(|e| e.to_string())
}

/// The files of a region's bundle: the module, the plan, and the keys and functions it names.
pub fn bundle_files(policy: &Policy, compiled: &CompiledRegion) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert("policy.wasm".to_string(), compiled.wasm.clone());
    files.insert(
        "plan.json".to_string(),
        serde_json::to_vec(&compiled.plan).expect("plans serialize"),
    );
    for jwt in &policy.jwts {
        for key in &jwt.keys {
            let path = lower::bundle_path("keys", &key.path.value.relative);
            if compiled.plan.jwts.iter().any(|j| j.keys.contains(&path)) {
                files.insert(path, key.contents.clone());
            }
        }
    }
    for function in &policy.functions {
        let path = lower::bundle_path("functions", &function.source.value.relative);
        if compiled.plan.functions.iter().any(|f| f.file == path) {
            files.insert(path, function.contents.clone());
        }
    }
    files
}
