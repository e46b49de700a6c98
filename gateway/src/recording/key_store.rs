//! The public key new recordings are encrypted to, as the running daemon holds it: the one
//! last set through the API (kept in the state dir, it wins), else the configured file,
//! else none. New channels read it when they start; the API replaces it and SIGHUP
//! re-reads the configured file.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use anyhow::{Context, Result};

use super::keys::RecordingKey;
use crate::util::fs;

/// The current recording key and where a key set through the API is kept.
pub struct KeyStore {
    /// `<state_dir>/recording.pub`, written by [`KeyStore::replace`].
    pushed: PathBuf,
    current: RwLock<Option<Arc<RecordingKey>>>,
}

impl KeyStore {
    /// At start: the key at `pushed` if there is one, else the one in `configured`, else
    /// none (policies that need a recording then refuse or go unrecorded, per
    /// `on_recording_failure`). A key file that cannot be read is an error.
    pub fn load(pushed: PathBuf, configured: Option<&Path>) -> Result<KeyStore> {
        let path = if pushed.exists() {
            Some(pushed.as_path())
        } else {
            configured
        };
        let current = match path {
            Some(path) => {
                let key = read(path)?;
                tracing::info!(path = %path.display(), "recording key loaded");
                Some(Arc::new(key))
            }
            None => {
                tracing::warn!(
                    "no recording key configured: policies with command_logging cannot record"
                );
                None
            }
        };
        Ok(KeyStore {
            pushed,
            current: RwLock::new(current),
        })
    }

    /// The key new recordings use now.
    pub fn current(&self) -> Option<Arc<RecordingKey>> {
        self.current
            .read()
            .expect("recording key lock poisoned")
            .clone()
    }

    /// Where [`KeyStore::replace`] keeps the key.
    pub fn path(&self) -> &Path {
        &self.pushed
    }

    /// The API's `set-key`: stores `key` durably (replacing the file atomically), then
    /// makes it current. Callers serialise this with [`KeyStore::reload`].
    pub fn replace(&self, key: RecordingKey) -> Result<()> {
        fs::stage(&self.pushed, key.to_base64().as_bytes(), fs::Mode::Private)?.commit()?;
        self.set(key);
        Ok(())
    }

    /// SIGHUP, first step: reads the configured key file, unless a key set through the API
    /// wins over it (then `None`). An unreadable file is an error, before anything changed.
    pub fn read_configured(&self, configured: Option<&Path>) -> Result<Option<RecordingKey>> {
        match configured {
            Some(file) if !self.pushed.exists() => read(file).map(Some),
            _ => Ok(None),
        }
    }

    /// SIGHUP, second step: makes the key from [`KeyStore::read_configured`] current, unless
    /// a key was set through the API meanwhile (that one is never undone).
    pub fn reload(&self, key: RecordingKey) {
        if !self.pushed.exists() {
            self.set(key);
        }
    }

    fn set(&self, key: RecordingKey) {
        *self.current.write().expect("recording key lock poisoned") = Some(Arc::new(key));
    }
}

fn read(path: &Path) -> Result<RecordingKey> {
    RecordingKey::from_file(path)
        .with_context(|| format!("cannot load the recording key {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::keys;

    #[test]
    fn a_key_set_through_the_api_wins_over_the_configured_file() {
        let dir = tempfile::tempdir().unwrap();
        let pushed = dir.path().join("recording.pub");
        let configured = dir.path().join("operator.pub");
        let (_, first) = keys::generate();
        std::fs::write(&configured, first.to_base64()).unwrap();
        let store = KeyStore::load(pushed.clone(), Some(&configured)).unwrap();
        assert_eq!(store.current().unwrap().to_base64(), first.to_base64());

        let (_, second) = keys::generate();
        let reread = store.read_configured(Some(&configured)).unwrap().unwrap();
        store.replace(second.clone()).unwrap();
        store.reload(reread);
        assert_eq!(store.current().unwrap().to_base64(), second.to_base64());
        assert_eq!(
            std::fs::read_to_string(&pushed).unwrap(),
            second.to_base64()
        );
        assert!(store.read_configured(Some(&configured)).unwrap().is_none());
        let again = KeyStore::load(pushed, Some(&configured)).unwrap();
        assert_eq!(again.current().unwrap().to_base64(), second.to_base64());
    }

    #[test]
    fn no_key_is_none_and_a_bad_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let pushed = dir.path().join("recording.pub");
        assert!(
            KeyStore::load(pushed.clone(), None)
                .unwrap()
                .current()
                .is_none()
        );
        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, "AAAA").unwrap();
        let err = format!("{:#}", KeyStore::load(pushed, Some(&bad)).err().unwrap());
        assert!(err.starts_with("cannot load the recording key "), "{err}");
    }
}
