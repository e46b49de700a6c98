//! State files in the state dir: JSON parsing with field-path errors, the canonical bytes
//! of a state document and their digest (the control API's ETag), and their staging for
//! atomic replacement (through [`fs::stage`]).

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::fs;

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

/// The bytes a state document is stored and served as: pretty JSON and a newline.
pub fn to_bytes<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `value` as [`to_bytes`] to a temporary file beside `path` (mode 0600, fsynced;
/// see [`fs::stage`]); [`fs::Staged::commit`] puts it in place.
pub fn stage<T: serde::Serialize>(path: &Path, value: &T) -> Result<fs::Staged> {
    fs::stage(path, &to_bytes(value)?, fs::Mode::Private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_never_reuses_or_follows_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.json");
        std::fs::write(&path, "old\n").unwrap();
        let a = fs::stage(&path, b"a\n", fs::Mode::Private).unwrap();
        let b = fs::stage(&path, b"b\n", fs::Mode::Private).unwrap();
        assert_ne!(a.tmp(), b.tmp());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(a.tmp()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(a);
        b.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary files left: {names:?}");
        assert_eq!(
            sha256_hex(&to_bytes(&serde_json::json!({"a": 1})).unwrap()),
            sha256_hex(b"{\n  \"a\": 1\n}\n")
        );
    }
}
