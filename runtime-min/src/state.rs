//! The node's state directory: the version high-water mark and the last good bundle, so a
//! restart neither accepts an older bundle nor loses the one it was serving.
//!
//! `state.json` holds the mark (region, version, sha256 of the highest bundle activated,
//! and whether that version was rolled back); `last-good.edgepack` holds the bundle being
//! served and `previous.edgepack` the one served before it, for an automatic rollback. All
//! are written through a temporary file, fsync and rename, bundles first, so the mark never
//! names a bundle that is not there.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the node has activated: nothing below this version is accepted again, and this
/// version only with these exact bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    pub region: String,
    pub version: u64,
    pub sha256: String,
    /// The node rolled this version back: it is never accepted again, only a higher one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid state file ({reason}); fix it or remove it to start afresh")]
    Corrupt { path: PathBuf, reason: String },
}

/// The state directory, or none (nothing survives a restart).
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: Option<PathBuf>,
}

const MARK_FILE: &str = "state.json";
const BUNDLE_FILE: &str = "last-good.edgepack";
const PREVIOUS_FILE: &str = "previous.edgepack";

impl StateDir {
    /// Opens (creating it if needed) the state directory.
    pub fn open(dir: Option<&Path>) -> Result<StateDir, StateError> {
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        Ok(StateDir {
            dir: dir.map(Path::to_path_buf),
        })
    }

    /// No directory: nothing is kept.
    pub fn none() -> StateDir {
        StateDir { dir: None }
    }

    pub fn is_persistent(&self) -> bool {
        self.dir.is_some()
    }

    /// The recorded mark, if any.
    pub fn mark(&self) -> Result<Option<Mark>, StateError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join(MARK_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// The last good bundle's bytes, if any.
    pub fn last_good(&self) -> Option<Vec<u8>> {
        let dir = self.dir.as_ref()?;
        std::fs::read(dir.join(BUNDLE_FILE)).ok()
    }

    /// Records a newly activated bundle: the one it replaces becomes the previous one, then
    /// its bytes, then the mark.
    pub fn record(&self, mark: &Mark, bundle: &[u8]) -> Result<(), StateError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let current = dir.join(BUNDLE_FILE);
        let same = std::fs::read(&current).is_ok_and(|kept| kept == bundle);
        if current.is_file() && !same {
            let previous = dir.join(PREVIOUS_FILE);
            std::fs::rename(&current, &previous).map_err(|source| StateError::Io {
                path: previous,
                source,
            })?;
        }
        write_durably(&current, bundle)?;
        self.record_mark(mark)
    }

    /// Records a rollback: `bundle` (the previous one) is served again, and `mark` (the
    /// version rolled back, revoked) stays the high-water mark.
    pub fn record_rollback(&self, mark: &Mark, bundle: &[u8]) -> Result<(), StateError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        write_durably(&dir.join(BUNDLE_FILE), bundle)?;
        let _ = std::fs::remove_file(dir.join(PREVIOUS_FILE));
        self.record_mark(mark)
    }

    /// The bundle served before the last good one, if any.
    pub fn previous(&self) -> Option<Vec<u8>> {
        let dir = self.dir.as_ref()?;
        std::fs::read(dir.join(PREVIOUS_FILE)).ok()
    }

    fn record_mark(&self, mark: &Mark) -> Result<(), StateError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(mark).unwrap_or_default();
        write_durably(&dir.join(MARK_FILE), &json)
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let mut file = std::fs::File::create(&temp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)?;
    if let Some(parent) = path.parent()
        && let Ok(dir) = std::fs::File::open(parent)
    {
        // Make the rename itself durable; not every file system supports it.
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_bundles_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(Some(dir.path())).unwrap();
        assert_eq!(state.mark().unwrap(), None);
        assert_eq!(state.last_good(), None);
        let mark = Mark {
            region: "eu-west".into(),
            version: 7,
            sha256: "ab".repeat(32),
            revoked: false,
        };
        state.record(&mark, b"bundle bytes").unwrap();
        let reopened = StateDir::open(Some(dir.path())).unwrap();
        assert_eq!(reopened.mark().unwrap(), Some(mark.clone()));
        assert_eq!(reopened.last_good().as_deref(), Some(&b"bundle bytes"[..]));
        assert_eq!(reopened.previous(), None);

        let next = Mark {
            version: 8,
            ..mark.clone()
        };
        state.record(&next, b"next bundle").unwrap();
        assert_eq!(state.previous().as_deref(), Some(&b"bundle bytes"[..]));
        assert_eq!(state.last_good().as_deref(), Some(&b"next bundle"[..]));

        let revoked = Mark {
            revoked: true,
            ..next
        };
        state.record_rollback(&revoked, b"bundle bytes").unwrap();
        let reopened = StateDir::open(Some(dir.path())).unwrap();
        assert_eq!(reopened.mark().unwrap(), Some(revoked));
        assert_eq!(reopened.last_good().as_deref(), Some(&b"bundle bytes"[..]));
        assert_eq!(reopened.previous(), None);
    }

    #[test]
    fn marks_written_before_rollbacks_existed_still_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MARK_FILE),
            br#"{"region":"eu-west","version":3,"sha256":"ab"}"#,
        )
        .unwrap();
        let mark = StateDir::open(Some(dir.path())).unwrap().mark().unwrap();
        assert_eq!(mark.map(|m| (m.version, m.revoked)), Some((3, false)));
    }

    #[test]
    fn a_corrupt_mark_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARK_FILE), b"{not json").unwrap();
        let state = StateDir::open(Some(dir.path())).unwrap();
        assert!(matches!(state.mark(), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn without_a_directory_nothing_is_kept() {
        let state = StateDir::open(None).unwrap();
        let mark = Mark {
            region: "r".into(),
            version: 1,
            sha256: String::new(),
            revoked: false,
        };
        state.record(&mark, b"x").unwrap();
        assert_eq!(state.mark().unwrap(), None);
        assert!(!state.is_persistent());
    }
}
