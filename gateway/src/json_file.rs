//! JSON state files in the state dir: parsing with field-path errors.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

/// Parses `text`, naming the failing field path (`policies[3].destinations[0]: …`).
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            anyhow::anyhow!("{inner}")
        } else {
            anyhow::anyhow!("{path}: {inner}")
        }
    })
}

/// Loads a state file with `parse`; a missing file yields `None`.
pub fn load_with<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T>) -> Result<Option<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse(&text)
        .map(Some)
        .with_context(|| format!("invalid {}", path.display()))
}

/// A new version of a state file, written and synced next to it but not yet in place.
/// Dropping it without `commit` removes it, leaving the old file untouched.
pub struct Staged {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    committed: bool,
}

/// Writes `value` as pretty JSON to a temporary file beside `path` (mode 0600, fsynced).
pub fn stage<T: serde::Serialize>(path: &Path, value: &T) -> Result<Staged> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let staged = Staged {
        tmp,
        path: path.to_path_buf(),
        committed: false,
    };
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", staged.tmp.display()))?;
    Ok(staged)
}

impl Staged {
    /// Atomically replaces the old file and makes the rename durable.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        self.committed = true;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {}", dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
