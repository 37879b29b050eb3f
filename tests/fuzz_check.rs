//! Bad input never panics `check` or `fmt`: arbitrary bytes, and the example policies with
//! random damage (bytes flipped, cut, duplicated, KDL fragments spliced in).
//!
//! A bounded proptest run is part of the test suite; `PROPTEST_CASES` raises the count for a
//! longer local run.

use std::path::Path;

use edgepack_schema::FileId;
use proptest::prelude::*;

/// Fragments that steer mutations towards deep parts of the decoder.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "\"",
    "#\"",
    "\"#",
    ";",
    "=",
    "/-",
    "//",
    "/*",
    "*/",
    "\\",
    "\n",
    " ",
    "route \"/x/:a/*\" { respond 200 }",
    "include \"edgepack.kdl\"",
    "include \"../x\"",
    "regex #\"(a|b)*c{1,999}\"#",
    "countries \"ZZ\"",
    "(ty)",
    "#true",
    "#null",
    "1e999",
    "0x",
    "\u{0}",
    "\u{feff}",
    "é",
    "key=\"/etc/passwd\"",
    "zone \"GLOBAL\"",
    "ratelimit \"r\" key=\"claim:sub\" limit=0 per=\"0s\"",
    "respond 99999999999999999999",
];

fn check_dir(files: &[(String, Vec<u8>)]) {
    let dir = tempdir();
    for (name, bytes) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&path, bytes).expect("write policy file");
    }
    let checked = edgepack_schema::check(dir.path()).expect("the entry file exists");
    // Rendering must not panic either.
    let _ = edgepack_compiler::report::human(
        &checked.diagnostics,
        &checked.sources,
        edgepack_compiler::report::HumanStyle::GOLDEN,
    );
    for (_, bytes) in files {
        if let Ok(text) = std::str::from_utf8(bytes)
            && let Ok(once) = edgepack_schema::fmt::format(FileId(0), text)
        {
            let twice =
                edgepack_schema::fmt::format(FileId(0), &once).expect("formatted text parses");
            assert_eq!(once, twice, "fmt is not idempotent on:\n{text}");
        }
    }
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "edgepack-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}

/// The files of the main example, keyed by their path inside the policy.
fn example_files() -> Vec<(String, Vec<u8>)> {
    let root = edgepack_tests::workspace_root().join("examples/global-api");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("example dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .strip_prefix(&root)
                    .expect("inside the example")
                    .to_string_lossy()
                    .into_owned();
                files.push((name, std::fs::read(&path).expect("read example file")));
            }
        }
    }
    files.sort();
    files
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, byte: u8 },
    Cut { at: usize, len: usize },
    Splice { at: usize, fragment: usize },
    Repeat { at: usize, len: usize },
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let n = bytes.len().max(1);
    match *mutation {
        Mutation::Flip { at, byte } => {
            if !bytes.is_empty() {
                bytes[at % n] ^= byte | 1;
            }
        }
        Mutation::Cut { at, len } => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Mutation::Splice { at, fragment } => {
            let at = (at % n).min(bytes.len());
            let fragment = FRAGMENTS[fragment % FRAGMENTS.len()].as_bytes();
            bytes.splice(at..at, fragment.iter().copied());
        }
        Mutation::Repeat { at, len } => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            let copy: Vec<u8> = bytes[at..end].to_vec();
            bytes.splice(end..end, copy);
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        (any::<usize>(), 1usize..200).prop_map(|(at, len)| Mutation::Cut { at, len }),
        (any::<usize>(), any::<usize>())
            .prop_map(|(at, fragment)| Mutation::Splice { at, fragment }),
        (any::<usize>(), 1usize..400).prop_map(|(at, len)| Mutation::Repeat { at, len }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_dir(&[("edgepack.kdl".to_string(), bytes)]);
    }

    #[test]
    fn damaged_examples_never_panic(
        file in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let mut files = example_files();
        let kdl: Vec<usize> = (0..files.len()).filter(|i| files[*i].0.ends_with(".kdl")).collect();
        let target = kdl[file % kdl.len()];
        for m in &mutations {
            mutate(&mut files[target].1, m);
        }
        check_dir(&files);
    }
}
