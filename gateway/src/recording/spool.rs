//! Recordings still being written. The local recording directory is the spool the uploader
//! ([`crate::storage`]) ships from; a file is shipped only once its writer is gone, so an
//! object is never a copy of a recording that is still growing or whose header is about to
//! be rewritten. The set lives in the process: after a restart nothing is open, and what a
//! crash left behind is shipped as the truncated recording it is.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

static OPEN: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn open_set() -> MutexGuard<'static, Option<HashSet<PathBuf>>> {
    OPEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a recording as being written until dropped.
#[derive(Debug)]
pub struct Writing(PathBuf);

impl Writing {
    /// Registers `path` before the file is created, so no one sees the file unregistered.
    pub fn register(path: &Path) -> Writing {
        open_set()
            .get_or_insert_with(HashSet::new)
            .insert(path.to_owned());
        Writing(path.to_owned())
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if let Some(set) = open_set().as_mut() {
            set.remove(&self.0);
        }
    }
}

/// Whether a writer of this process still holds `path`.
pub fn is_being_written(path: &Path) -> bool {
    open_set().as_ref().is_some_and(|s| s.contains(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_is_open_while_its_guard_lives() {
        let path = Path::new("/spool-test/a-ch0.sshlog");
        assert!(!is_being_written(path));
        let guard = Writing::register(path);
        assert!(is_being_written(path));
        drop(guard);
        assert!(!is_being_written(path));
    }
}

/// What the spool holds that object storage does not have yet, as the uploader last
/// counted it, and the limit past which new recordings are refused.
#[derive(Debug, Default)]
pub struct Backlog {
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    /// Unix seconds of the oldest pending file's last write; 0 for none.
    oldest: std::sync::atomic::AtomicI64,
    /// `[storage] max_spool_mb` in bytes; 0 means no limit.
    limit: u64,
}

/// One count of the backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BacklogReport {
    pub backlog_files: u64,
    pub backlog_bytes: u64,
    /// Seconds since the oldest pending recording was last written (0 for none).
    pub oldest_pending_secs: u64,
}

impl Backlog {
    pub fn new(limit_mb: u64) -> Backlog {
        Backlog {
            limit: limit_mb.saturating_mul(1 << 20),
            ..Default::default()
        }
    }

    /// The uploader's latest count; `oldest` in Unix seconds (`None` for an empty backlog).
    pub fn set(&self, files: u64, bytes: u64, oldest: Option<i64>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.files.store(files, Relaxed);
        self.bytes.store(bytes, Relaxed);
        self.oldest.store(oldest.unwrap_or(0), Relaxed);
    }

    pub fn report(&self) -> BacklogReport {
        use std::sync::atomic::Ordering::Relaxed;
        let oldest = self.oldest.load(Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        BacklogReport {
            backlog_files: self.files.load(Relaxed),
            backlog_bytes: self.bytes.load(Relaxed),
            oldest_pending_secs: if oldest == 0 {
                0
            } else {
                (now - oldest).max(0) as u64
            },
        }
    }

    /// Why a new recording must not start: the backlog is past the limit.
    pub fn refusal(&self) -> Option<String> {
        let bytes = self.bytes.load(std::sync::atomic::Ordering::Relaxed);
        (self.limit > 0 && bytes > self.limit).then(|| {
            format!(
                "the recording spool holds {} MiB not yet uploaded to object storage, over [storage] max_spool_mb = {}",
                bytes >> 20,
                self.limit >> 20
            )
        })
    }
}

/// What waits for upload to object storage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StorageReport {
    pub backlog_files: u64,
    pub backlog_bytes: u64,
    pub oldest_pending_secs: u64,
    /// `[storage] max_spool_mb` (0: no limit).
    pub max_spool_mb: u64,
    /// Past the limit, new recordings get `on_recording_failure`.
    pub spool_full: bool,
    /// The error of the latest failed upload still pending.
    #[serde(default)]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod backlog_tests {
    use super::*;

    #[test]
    fn past_the_limit_new_recordings_are_refused() {
        let backlog = Backlog::new(1);
        backlog.set(2, 1 << 20, Some(1));
        assert_eq!(backlog.refusal(), None);
        backlog.set(3, (1 << 20) + 1, Some(1));
        let refusal = backlog.refusal().unwrap();
        assert!(refusal.contains("max_spool_mb = 1"), "{refusal}");
        assert!(backlog.report().oldest_pending_secs > 0);
        let unlimited = Backlog::new(0);
        unlimited.set(1, u64::MAX, None);
        assert_eq!(unlimited.refusal(), None);
        assert_eq!(unlimited.report().oldest_pending_secs, 0);
    }
}
