//! `edgepack build`: compile a policy into one signed bundle per region.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::Format;
use edgepack_bundles::bundle;
use serde::Serialize;

use crate::pipeline;
use crate::report::HumanStyle;
use crate::{Exit, Output};

/// Compile a policy into one signed bundle per region (`DIR/<region>.edgepack`).
///
/// The policy is checked first; a policy with errors writes nothing. Bundles are
/// reproducible: the same sources, key, `--version` and `SOURCE_DATE_EPOCH` give the same
/// bytes. Without `--version`, a bundle's version is its creation time in Unix seconds
/// (`SOURCE_DATE_EPOCH` when set), so a later build gets a higher version.
///
/// `--emit wasm` writes each region's optimized, unsigned policy module instead, with its
/// size before and after optimization; `--emit ir` writes each region's plan as text.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The policy: a directory holding `edgepack.kdl`, or one `.kdl` file.
    pub policy: PathBuf,

    /// Where to write the output (created if missing).
    #[arg(long)]
    pub out: PathBuf,

    /// The secret key that signs the bundles (see `edgepack keygen`).
    #[arg(long, value_name = "SECRET_KEY", required_if_eq("emit", "bundle"))]
    pub key: Option<PathBuf>,

    /// What to write.
    #[arg(long, value_enum, default_value_t = Emit::Bundle)]
    pub emit: Emit,

    /// Build only these regions (repeatable); all regions by default.
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,

    /// The bundle version (nodes only accept versions above the one they run).
    #[arg(long)]
    pub version: Option<u64>,

    /// How long the bundles stay valid, e.g. "30d"; by default they do not expire.
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,

    /// `human` prints a table; `json` prints the same on stdout as JSON.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// Signed bundles.
    Bundle,
    /// The optimized, unsigned policy modules.
    Wasm,
    /// The region plans as text.
    Ir,
}

/// One row of the build report.
#[derive(Debug, Serialize)]
pub struct BuiltRegion {
    pub region: String,
    pub path: String,
    pub routes: usize,
    pub waf_rules: usize,
    pub module_bytes: usize,
    pub module_bytes_generated: usize,
    pub bundle_bytes: usize,
    pub sha256: String,
    pub version: u64,
}

/// The build time: `SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
pub fn build_time() -> Result<u64, String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH is not a number of seconds: {value:?}")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())),
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}

fn usage(out: &mut Output, message: impl std::fmt::Display) {
    let _ = writeln!(out.stderr, "error: {message}");
    out.fail(Exit::Usage);
}

pub fn run(args: &BuildArgs, style: HumanStyle) -> Output {
    let mut out = Output::new();
    let key = match (&args.emit, &args.key) {
        (Emit::Bundle, Some(path)) => match super::read_secret_key(path) {
            Ok(key) => Some(key),
            Err(message) => {
                usage(&mut out, message);
                return out;
            }
        },
        _ => None,
    };
    let created = match build_time() {
        Ok(t) => t,
        Err(message) => {
            usage(&mut out, message);
            return out;
        }
    };
    let expires = match &args.expires {
        None => None,
        Some(text) => match edgepack_schema::units::parse_duration(text) {
            Ok(d) => Some(created + d.as_secs()),
            Err(e) => {
                usage(&mut out, format!("--expires {text:?}: {}", e.reason));
                return out;
            }
        },
    };
    let version = args.version.unwrap_or(created);
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
            usage(
                &mut out,
                format!(
                    "no region named {} (regions: {})",
                    unknown.join(", "),
                    known.join(", ")
                ),
            );
            return out;
        }
    };
    let sources_sha256 = pipeline::sources_digest(&checked, &policy);
    let progress = (std::io::stderr().is_terminal() && args.emit != Emit::Ir).then(|| {
        let bar = indicatif::ProgressBar::new(plans.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} building {msg} [{pos}/{len}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    // Compile everything before writing anything.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rows: Vec<BuiltRegion> = Vec::new();
    for plan in plans {
        if let Some(bar) = &progress {
            bar.set_message(plan.region.clone());
        }
        if args.emit == Emit::Ir {
            files.push((format!("{}.ir", plan.region), plan.to_string().into_bytes()));
            continue;
        }
        let compiled = match pipeline::compile(plan) {
            Ok(c) => c,
            Err(error) => {
                let _ = writeln!(out.stderr, "error: {error}");
                out.fail(Exit::PolicyErrors);
                return out;
            }
        };
        let region = compiled.plan.region.clone();
        let mut row = BuiltRegion {
            region: region.clone(),
            path: String::new(),
            routes: compiled.plan.routes.len(),
            waf_rules: compiled.plan.waf.as_ref().map_or(0, |w| w.rules.len()),
            module_bytes: compiled.wasm.len(),
            module_bytes_generated: compiled.generated_size,
            bundle_bytes: 0,
            sha256: String::new(),
            version,
        };
        let (name, bytes) = match &key {
            None => (format!("{region}.wasm"), compiled.wasm.clone()),
            Some(key) => {
                let release = pipeline::Release {
                    version,
                    created,
                    expires,
                };
                match pipeline::pack(&policy, &compiled, &sources_sha256, release, key) {
                    Ok(bytes) => (format!("{region}.edgepack"), bytes),
                    Err(error) => {
                        usage(
                            &mut out,
                            format!("{region}: cannot pack the bundle: {error}"),
                        );
                        return out;
                    }
                }
            }
        };
        row.bundle_bytes = if key.is_some() { bytes.len() } else { 0 };
        row.sha256 = bundle::sha256_hex(&bytes);
        row.path = args.out.join(&name).display().to_string();
        rows.push(row);
        files.push((name, bytes));
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if let Err(error) = std::fs::create_dir_all(&args.out) {
        usage(&mut out, format!("{}: {error}", args.out.display()));
        return out;
    }
    for (name, bytes) in &files {
        let path = args.out.join(name);
        if let Err(error) = write_atomically(&path, bytes) {
            usage(&mut out, format!("{}: {error}", path.display()));
            return out;
        }
        if args.emit == Emit::Ir {
            let _ = writeln!(out.stdout, "{}", path.display());
        }
    }
    if args.emit == Emit::Ir {
        return out;
    }
    match args.format {
        Format::Json => {
            out.stdout = serde_json::to_string_pretty(&rows).unwrap_or_default();
            out.stdout.push('\n');
        }
        Format::Human => out.stdout.push_str(&table(&rows, args.emit)),
    }
    out
}

fn table(rows: &[BuiltRegion], emit: Emit) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<16} {:>6} {:>9} {:>16} {:>10}  sha256",
        "region", "routes", "WAF rules", "module (before)", "bundle"
    );
    for r in rows {
        let bundle = if emit == Emit::Bundle {
            r.bundle_bytes.to_string()
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            t,
            "{:<16} {:>6} {:>9} {:>16} {:>10}  {}",
            r.region,
            r.routes,
            r.waf_rules,
            format!("{} ({})", r.module_bytes, r.module_bytes_generated),
            bundle,
            &r.sha256[..16]
        );
    }
    t
}
