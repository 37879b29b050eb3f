//! Helpers shared by the tests that run the `edgepack` binary.
#![allow(dead_code)] // Each test file uses its own subset.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `edgepack` with these arguments in `cwd`.
pub fn edgepack(args: &[&str], cwd: &Path) -> Output {
    edgepack_with(args, cwd, &[])
}

/// Runs `edgepack` with extra environment variables.
pub fn edgepack_with(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgepack"));
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("NO_COLOR")
        .env_remove("SOURCE_DATE_EPOCH");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run edgepack")
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// A temporary policy directory whose `edgepack.kdl` is `policy`.
pub fn policy_dir(policy: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("edgepack.kdl"), policy).expect("write the policy");
    dir
}

/// Builds the policy in `dir` with the example's development key into `dir/dist`; the path
/// of region `region`'s bundle.
pub fn build_in(dir: &Path, region: &str) -> String {
    let out_dir = dir.join("dist").display().to_string();
    let built = edgepack(
        &[
            "build",
            &dir.display().to_string(),
            "--key",
            "examples/dev.key",
            "--out",
            &out_dir,
        ],
        &root(),
    );
    assert_eq!(built.status.code(), Some(0), "{}", text(&built.stderr));
    format!("{out_dir}/{region}.edgepack")
}

/// A copy of the main example in `to`, its `edgepack.kdl` changed by `edit`.
pub fn edited_example(to: &Path, edit: impl FnOnce(String) -> String) {
    copy_dir(&root().join("examples/global-api"), to);
    let entry = to.join("edgepack.kdl");
    let source = std::fs::read_to_string(&entry).expect("the example's edgepack.kdl");
    std::fs::write(&entry, edit(source)).expect("write the edited example");
}

/// `text` with `from` replaced by `to`, which it must contain.
pub fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example has no {from:?}");
    text.replace(from, to)
}
