//! `edgepack fmt`: lay policy files out canonically, keeping comments.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use clap::Args;
use edgepack_schema::Sources;

use crate::report::{self, HumanStyle};
use crate::{Exit, Output};

/// Format policy files in the canonical layout, keeping comments.
///
/// Each PATH is a `.kdl` file or a directory, whose `.kdl` files are all formatted
/// (hidden directories and `target/` are skipped). `-` formats standard input to standard
/// output. Formatting is idempotent: a formatted file formats to itself.
/// Exit status: 0 on success, 1 when a file has syntax errors or, with `--check`, would
/// change, 2 when a file cannot be read or written.
#[derive(Debug, Args)]
pub struct FmtArgs {
    /// Files or directories to format.
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,

    /// Change nothing; list the files that are not formatted and exit 1 if there are any.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &FmtArgs, style: HumanStyle) -> Output {
    let mut out = Output::new();
    let mut files = Vec::new();
    for path in &args.paths {
        if path.as_os_str() == "-" {
            format_stdin(&mut out, style);
            continue;
        }
        if let Err(error) = collect(path, &mut files) {
            let _ = writeln!(out.stderr, "error: {}: {error}", path.display());
            out.fail(Exit::Usage);
        }
    }
    let mut unformatted = 0;
    for file in &files {
        let shown = file.display().to_string();
        let text = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(error) => {
                let _ = writeln!(out.stderr, "error: {shown}: {error}");
                out.fail(Exit::Usage);
                continue;
            }
        };
        let Some(formatted) = format_text(&mut out, &shown, file, text, style) else {
            continue;
        };
        let original = std::fs::read_to_string(file).unwrap_or_default();
        if formatted == original {
            continue;
        }
        if args.check {
            let _ = writeln!(out.stdout, "would reformat: {shown}");
            unformatted += 1;
            out.fail(Exit::PolicyErrors);
        } else if let Err(error) = write_atomically(file, &formatted) {
            let _ = writeln!(out.stderr, "error: {shown}: {error}");
            out.fail(Exit::Usage);
        } else {
            let _ = writeln!(out.stdout, "formatted: {shown}");
        }
    }
    if args.check && unformatted > 0 {
        let _ = writeln!(
            out.stderr,
            "{unformatted} of {} files would be reformatted; run `edgepack fmt` to fix them",
            files.len()
        );
    }
    out
}

/// Formats one file's bytes; on syntax errors reports them and returns `None`.
fn format_text(
    out: &mut Output,
    shown: &str,
    path: &Path,
    bytes: Vec<u8>,
    style: HumanStyle,
) -> Option<String> {
    let mut sources = Sources::new();
    let (text, utf8_error) = match String::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(e) => (
            String::from_utf8_lossy(e.as_bytes()).into_owned(),
            Some(e.utf8_error().valid_up_to()),
        ),
    };
    let file = sources.add(path, shown.to_string(), shown.to_string(), text);
    let diagnostics = match utf8_error {
        Some(offset) => vec![edgepack_schema::diagnostics::not_utf8(
            edgepack_schema::Span::new(file, offset, offset + 1),
            offset,
        )],
        None => match edgepack_schema::fmt::format(file, &sources.file(file).text) {
            Ok(formatted) => return Some(formatted),
            Err(diagnostics) => diagnostics,
        },
    };
    out.stderr
        .push_str(&report::human(&diagnostics, &sources, style));
    out.fail(Exit::PolicyErrors);
    None
}

fn format_stdin(out: &mut Output, style: HumanStyle) {
    let mut bytes = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut bytes) {
        let _ = writeln!(out.stderr, "error: standard input: {error}");
        out.fail(Exit::Usage);
        return;
    }
    if let Some(formatted) = format_text(out, "<stdin>", Path::new("<stdin>"), bytes, style) {
        out.stdout.push_str(&formatted);
    }
}

/// The `.kdl` files at `path`, sorted, skipping hidden directories and `target/`.
fn collect(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if entry.is_dir() {
            if !name.starts_with('.') && name != "target" {
                collect(&entry, files)?;
            }
        } else if name.ends_with(".kdl") {
            files.push(entry);
        }
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".edgepack-fmt.tmp");
    let temp = PathBuf::from(temp);
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::write(&temp, text)?;
        std::fs::set_permissions(&temp, meta.permissions())?;
    } else {
        std::fs::write(&temp, text)?;
    }
    std::fs::rename(&temp, path)
}
