//! The upload loop: every [`PASS_INTERVAL`], finished recordings the store does not hold
//! yet are uploaded, oldest first, then the records of ended sessions whose recordings are
//! all settled. Each attempt's result goes into the session log; a failed one is retried
//! after a backoff that doubles up to [`MAX_BACKOFF`]. The local copy of an uploaded
//! recording is deleted only when `delete_local_after_upload` is set, and only after the
//! store confirmed its size and SHA-256.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Result;

use super::{bucket::Bucket, keys::Layout};
use crate::{
    metrics::METRICS,
    recording::spool::{self, Backlog},
    sessions::{
        now_micros,
        store::{SessionStore, Write},
        uploads::{PendingRecording, UploadOutcome, UploadResult},
    },
};

/// How often the log is checked for work.
pub const PASS_INTERVAL: Duration = Duration::from_secs(2);
/// The longest wait before a failed upload is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Session records uploaded per pass.
const SESSIONS_PER_PASS: u32 = 200;

pub struct Uploader {
    pub bucket: Bucket,
    pub layout: Layout,
    pub store: SessionStore,
    pub delete_local: bool,
    pub backlog: Arc<Backlog>,
}

impl Uploader {
    /// Runs until the daemon stops.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(PASS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.pass().await {
                tracing::error!(error = %format!("{e:#}"), "storage: cannot read the upload queue from the session log");
            }
        }
    }

    /// One pass over what is due.
    pub async fn pass(&self) -> Result<()> {
        let store = self.store.clone();
        let pending = tokio::task::spawn_blocking(move || store.pending_recordings(None)).await??;
        let pending: Vec<_> = pending
            .into_iter()
            .filter(|p| !spool::is_being_written(&self.local_path(&p.path)))
            .collect();
        self.count_backlog(&pending).await;
        let now = now_micros();
        for p in pending.iter().filter(|p| p.next_attempt_at <= now) {
            // A failure most often means the store is unreachable: the rest wait for the
            // next pass (each keeps its own backoff), so a pass stays short and the backlog
            // count current.
            if !self.upload_recording(p).await {
                break;
            }
        }
        let store = self.store.clone();
        let sessions = tokio::task::spawn_blocking(move || {
            store.pending_sessions(now_micros(), SESSIONS_PER_PASS)
        })
        .await??;
        for s in sessions {
            self.upload_session(&s.session_id, s.attempts).await;
        }
        let store = self.store.clone();
        let remaining =
            tokio::task::spawn_blocking(move || store.pending_recordings(None)).await??;
        let remaining: Vec<_> = remaining
            .into_iter()
            .filter(|p| !spool::is_being_written(&self.local_path(&p.path)))
            .collect();
        self.count_backlog(&remaining).await;
        Ok(())
    }

    /// The recording's file, as its channel row names it (the path the relay created).
    fn local_path(&self, recorded: &str) -> PathBuf {
        PathBuf::from(recorded)
    }

    async fn count_backlog(&self, pending: &[PendingRecording]) {
        let paths: Vec<PathBuf> = pending.iter().map(|p| self.local_path(&p.path)).collect();
        let (files, bytes, oldest) = tokio::task::spawn_blocking(move || measure(&paths))
            .await
            .unwrap_or_default();
        self.backlog.set(files, bytes, oldest);
    }

    /// Uploads one recording; false when the attempt failed (not when the file is gone).
    async fn upload_recording(&self, p: &PendingRecording) -> bool {
        let path = self.local_path(&p.path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key = self
            .layout
            .recording(self.session_start(&p.session_id, p.started_at), &name);
        let outcome = match tokio::fs::symlink_metadata(&path).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => UploadOutcome::Gone {
                error: format!("{} is gone: it was never uploaded", path.display()),
            },
            _ => match self.bucket.put_file(&path, &key).await {
                Ok(stored) => {
                    METRICS.storage_uploads.fetch_add(1, Ordering::Relaxed);
                    METRICS
                        .storage_uploaded_bytes
                        .fetch_add(stored.size, Ordering::Relaxed);
                    tracing::info!(session = %p.session_id, channel = p.channel, key = %key, version = ?stored.object.version_id, bytes = stored.size, existed = stored.existed, "storage: recording uploaded");
                    UploadOutcome::Uploaded {
                        size: stored.size,
                        object: stored.object,
                        at: now_micros(),
                    }
                }
                Err(e) => self.failed(&p.session_id, &key, p.attempts, &e),
            },
        };
        if let UploadOutcome::Gone { error } = &outcome {
            METRICS.storage_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(session = %p.session_id, channel = p.channel, error = %error, "storage: recording missing from the spool");
        }
        let uploaded = matches!(outcome, UploadOutcome::Uploaded { .. });
        let failed = matches!(outcome, UploadOutcome::Failed { .. });
        self.record(&p.session_id, Some(p.channel), Some(&p.path), &key, outcome);
        if uploaded && self.delete_local {
            self.delete_local_copy(p, &path, &key).await;
        }
        !failed
    }

    /// The recording is confirmed in the store: its local copy goes, and the log says so
    /// (only once the log has the upload, so a crash never leaves an unrecorded deletion).
    async fn delete_local_copy(&self, p: &PendingRecording, path: &Path, key: &str) {
        let store = self.store.clone();
        if !tokio::task::spawn_blocking(move || store.sync())
            .await
            .unwrap_or(false)
        {
            return;
        }
        match tokio::fs::remove_file(path).await {
            Ok(()) => self.record(
                &p.session_id,
                Some(p.channel),
                Some(&p.path),
                key,
                UploadOutcome::LocalDeleted,
            ),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "storage: cannot delete the uploaded recording's local copy")
            }
        }
    }

    async fn upload_session(&self, id: &str, attempts: u32) {
        let store = self.store.clone();
        let owned = id.to_string();
        let record = match tokio::task::spawn_blocking(move || store.get(&owned)).await {
            Ok(Ok(Some(record))) => record,
            _ => return,
        };
        let key = self
            .layout
            .session(self.session_start(id, record.started_at), id);
        let document = serde_json::json!({
            "router_id": self.layout.router_id(),
            "session": record,
        });
        let bytes = serde_json::to_vec_pretty(&document).unwrap_or_default();
        let outcome = match self.bucket.put_bytes(&key, bytes.into()).await {
            Ok(stored) => {
                METRICS.storage_uploads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(session = %id, key = %key, "storage: session record uploaded");
                UploadOutcome::Uploaded {
                    size: stored.size,
                    object: stored.object,
                    at: now_micros(),
                }
            }
            Err(e) => self.failed(id, &key, attempts, &e),
        };
        self.record(id, None, None, &key, outcome);
    }

    /// The start of the session, from its id (milliseconds in hex), else the channel's.
    fn session_start(&self, session_id: &str, fallback: i64) -> i64 {
        session_id
            .get(..11)
            .and_then(|h| i64::from_str_radix(h, 16).ok())
            .map_or(fallback, |ms| ms * 1000)
    }

    fn failed(&self, session: &str, key: &str, attempts: u32, e: &anyhow::Error) -> UploadOutcome {
        let error = format!("{e:#}");
        METRICS.storage_failures.fetch_add(1, Ordering::Relaxed);
        let backoff = backoff(attempts);
        tracing::error!(session, key, attempt = attempts + 1, retry_in = ?backoff, error = %error, "storage: upload failed");
        UploadOutcome::Failed {
            error,
            next_attempt_at: now_micros() + backoff.as_micros() as i64,
        }
    }

    fn record(
        &self,
        session: &str,
        channel: Option<u32>,
        path: Option<&str>,
        key: &str,
        outcome: UploadOutcome,
    ) {
        self.store.write(Write::Upload(Box::new(UploadResult {
            session_id: session.to_string(),
            channel,
            path: path.map(str::to_string),
            key: key.to_string(),
            outcome,
        })));
    }
}

/// 1 s after the first failure, doubling up to [`MAX_BACKOFF`].
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(16)).min(MAX_BACKOFF)
}

/// Files, bytes and the oldest last write (Unix seconds) of the pending recordings that
/// still exist.
fn measure(paths: &[PathBuf]) -> (u64, u64, Option<i64>) {
    let mut out = (0, 0, None::<i64>);
    for meta in paths.iter().filter_map(|p| std::fs::metadata(p).ok()) {
        out.0 += 1;
        out.1 += meta.len();
        let written = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        out.2 = Some(out.2.map_or(written, |o| o.min(written)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
