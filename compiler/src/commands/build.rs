//! `edgepack build`: compile a policy, one module per region.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::pipeline;
use crate::report::HumanStyle;
use crate::{Exit, Output};

/// Compile a policy into one optimized Wasm module per region.
///
/// The policy is checked first; a policy with errors writes nothing. `--emit ir` writes each
/// region's plan as text (`DIR/<region>.ir`); `--emit wasm` writes each region's optimized,
/// unsigned policy module (`DIR/<region>.wasm`) and reports its size before and after
/// optimization.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The policy: a directory holding `edgepack.kdl`, or one `.kdl` file.
    pub policy: PathBuf,

    /// Where to write the output (created if missing).
    #[arg(long)]
    pub out: PathBuf,

    /// What to write.
    #[arg(long, value_enum)]
    pub emit: Emit,

    /// Build only these regions (repeatable); all regions by default.
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The region plans as text.
    Ir,
    /// The optimized policy modules.
    Wasm,
}

pub fn run(args: &BuildArgs, style: HumanStyle) -> Output {
    let mut out = Output::new();
    let Some((checked, policy)) = pipeline::check(&args.policy, &mut out, style) else {
        return out;
    };
    let plans = match pipeline::plans(&policy, &checked, &args.regions) {
        Ok(plans) => plans,
        Err(unknown) => {
            let known: Vec<&str> = policy
                .regions
                .iter()
                .map(|r| r.name.value.as_str())
                .collect();
            let _ = writeln!(
                out.stderr,
                "error: no region named {} (regions: {})",
                unknown.join(", "),
                known.join(", ")
            );
            out.fail(Exit::Usage);
            return out;
        }
    };
    // Compile everything before writing anything.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for plan in plans {
        match args.emit {
            Emit::Ir => files.push((format!("{}.ir", plan.region), plan.to_string().into_bytes())),
            Emit::Wasm => match pipeline::compile(plan) {
                Ok(compiled) => {
                    let _ = writeln!(
                        out.stderr,
                        "{}: {} bytes ({} before optimization)",
                        compiled.plan.region,
                        compiled.wasm.len(),
                        compiled.generated_size
                    );
                    files.push((format!("{}.wasm", compiled.plan.region), compiled.wasm));
                }
                Err(error) => {
                    let _ = writeln!(out.stderr, "error: {error}");
                    out.fail(Exit::PolicyErrors);
                    return out;
                }
            },
        }
    }
    if let Err(error) = std::fs::create_dir_all(&args.out) {
        let _ = writeln!(out.stderr, "error: {}: {error}", args.out.display());
        out.fail(Exit::Usage);
        return out;
    }
    for (name, bytes) in files {
        let path = args.out.join(&name);
        if let Err(error) = std::fs::write(&path, bytes) {
            let _ = writeln!(out.stderr, "error: {}: {error}", path.display());
            out.fail(Exit::Usage);
            return out;
        }
        let _ = writeln!(out.stdout, "{}", path.display());
    }
    out
}
