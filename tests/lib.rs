//! Helpers shared by the end-to-end and golden tests: where things are, and how to run the
//! `edgepack` commands the way users do.

use std::path::{Path, PathBuf};

pub mod e2e;

/// The workspace root (the directory holding `examples/`, `tests/`, `docs/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Every example policy shipped in `examples/` (directories holding `edgepack.kdl`).
pub fn example_policies() -> Vec<PathBuf> {
    let mut policies: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("examples"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join(edgepack_schema::ENTRY_FILE).is_file())
                .collect()
        })
        .unwrap_or_default();
    policies.sort();
    policies
}

/// Every `.kdl` file under `dir`, sorted.
pub fn kdl_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "kdl") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Asserts that two KDL texts mean the same document (formatting and comments aside).
pub fn assert_same_document(before: &str, after: &str, file: &Path) {
    let parse = |text: &str| {
        let mut doc = kdl::KdlDocument::parse_v2(text)
            .unwrap_or_else(|e| panic!("{}: does not parse: {e}", file.display()));
        doc.clear_format_recursive();
        doc.to_string()
    };
    assert_eq!(
        parse(before),
        parse(after),
        "{}: fmt changed the meaning",
        file.display()
    );
}
