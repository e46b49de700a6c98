//! The upload loop: every [`PASS_INTERVAL`], finished recordings the store does not hold
//! yet are uploaded, oldest first, then the records of ended sessions whose recordings are
//! all settled. Each attempt's result goes into the session log; a failed one is retried
//! after a backoff that doubles up to [`MAX_BACKOFF`], and ends the pass (the store is most
//! likely unreachable). The local copy of an uploaded recording is deleted only when
//! `delete_local_after_upload` is set, and only after the store confirmed its size and
//! SHA-256. While the session log cannot be written nothing is attempted: a result that
//! cannot be recorded would only be attempted again and again.
//!
//! The backlog (what the spool limit and the metrics count) is measured on its own timer,
//! so a long upload never leaves it stale.

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

/// How often the log is checked for work, and the backlog measured.
pub const PASS_INTERVAL: Duration = Duration::from_secs(2);
/// The longest wait before a failed upload is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a recording must have been missing, continuously and in this run, before it
/// counts as gone: a disk mounted late is not taken for lost evidence. A gone recording
/// that comes back is pending again ([`RECHECK_GONE_EVERY`] passes).
pub const GONE_AFTER: Duration = Duration::from_secs(3600);
/// Passes between checks that gone recordings are still gone (about a minute).
const RECHECK_GONE_EVERY: u32 = 30;
/// Session records uploaded per pass.
const SESSIONS_PER_PASS: u32 = 200;

pub struct Uploader {
    pub bucket: Bucket,
    pub layout: Layout,
    pub store: SessionStore,
    /// The configured recording directory: where a recording is looked for when its row's
    /// path does not exist (the directory was moved between runs).
    pub recordings: PathBuf,
    pub delete_local: bool,
    pub backlog: Arc<Backlog>,
    /// Since when each recording (by its row's path) has been missing, in this run.
    pub missing_since: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Uploader {
    /// Runs until the daemon stops.
    pub async fn run(self) {
        tokio::join!(self.measure_loop(), self.upload_loop());
    }

    async fn upload_loop(&self) {
        let mut tick = tokio::time::interval(PASS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0u32.. {
            tick.tick().await;
            if !self.store.health().is_ok() {
                continue;
            }
            if n % RECHECK_GONE_EVERY == 0 {
                self.recheck_gone().await;
            }
            if let Err(e) = self.pass().await {
                tracing::error!(error = %format!("{e:#}"), "storage: cannot read the upload queue from the session log");
            }
        }
    }

    async fn measure_loop(&self) {
        let mut tick = tokio::time::interval(PASS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.pending().await {
                Ok(pending) => self.count_backlog(&pending).await,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "storage: cannot measure the upload backlog")
                }
            }
        }
    }

    /// Recordings not uploaded yet whose writer is gone.
    async fn pending(&self) -> Result<Vec<PendingRecording>> {
        let store = self.store.clone();
        let pending = tokio::task::spawn_blocking(move || store.pending_recordings(None)).await??;
        Ok(pending
            .into_iter()
            .filter(|p| !spool::is_being_written(Path::new(&p.path)))
            .collect())
    }

    /// Gone recordings whose file is back are pending again.
    async fn recheck_gone(&self) {
        let store = self.store.clone();
        let Ok(Ok(gone)) = tokio::task::spawn_blocking(move || store.gone_recordings()).await
        else {
            return;
        };
        for (session, channel, path) in gone {
            let found = self.locate(&path);
            if tokio::fs::symlink_metadata(&found).await.is_ok() {
                tracing::warn!(session = %session, channel, file = %found.display(), "storage: a recording counted as gone is back; uploading it");
                self.record(
                    &session,
                    Some(channel),
                    Some(&path),
                    "",
                    UploadOutcome::Reappeared,
                );
            }
        }
    }

    /// One pass over what is due.
    pub async fn pass(&self) -> Result<()> {
        let now = now_micros();
        for p in self
            .pending()
            .await?
            .iter()
            .filter(|p| p.next_attempt_at <= now)
        {
            if !self.upload_recording(p).await {
                return Ok(());
            }
        }
        let store = self.store.clone();
        let sessions = tokio::task::spawn_blocking(move || {
            store.pending_sessions(now_micros(), SESSIONS_PER_PASS)
        })
        .await??;
        for s in sessions {
            if !self
                .upload_session(&s.session_id, s.started_at, s.attempts)
                .await
            {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn count_backlog(&self, pending: &[PendingRecording]) {
        let paths: Vec<PathBuf> = pending.iter().map(|p| self.locate(&p.path)).collect();
        let (files, bytes, oldest) = tokio::task::spawn_blocking(move || measure(&paths))
            .await
            .unwrap_or_default();
        self.backlog.set(files, bytes, oldest);
    }

    /// The recording's file: where its row says, else under that name in the configured
    /// recording directory.
    fn locate(&self, recorded: &str) -> PathBuf {
        let path = PathBuf::from(recorded);
        if path.symlink_metadata().is_err()
            && let Some(name) = path.file_name()
        {
            let moved = self.recordings.join(name);
            if moved.symlink_metadata().is_ok() {
                return moved;
            }
        }
        path
    }

    /// Uploads one recording; false when the store failed it (a missing file is no reason
    /// to end the pass).
    async fn upload_recording(&self, p: &PendingRecording) -> bool {
        let path = self.locate(&p.path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key = self
            .layout
            .recording(session_start(&p.session_id, p.started_at), &name);
        let mut store_failed = false;
        let outcome = match tokio::fs::symlink_metadata(&path).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.missing(p, &key, &path),
            _ => match self.present(p).bucket.put_file(&path, &key).await {
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
                Err(e) => {
                    store_failed = true;
                    self.failed(&p.session_id, &key, p.attempts, &e)
                }
            },
        };
        let uploaded = matches!(outcome, UploadOutcome::Uploaded { .. });
        self.record(&p.session_id, Some(p.channel), Some(&p.path), &key, outcome);
        if uploaded && self.delete_local {
            self.delete_local_copy(p, &path, &key).await;
        }
        !store_failed
    }

    /// The recording's file is there: it is not missing (any more).
    fn present(&self, p: &PendingRecording) -> &Self {
        self.missing_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p.path);
        self
    }

    /// The recording is not where it should be: a failure to retry, until it has been
    /// missing for [`GONE_AFTER`] in this run.
    fn missing(&self, p: &PendingRecording, key: &str, path: &Path) -> UploadOutcome {
        let error = format!("{} is missing: it was never uploaded", path.display());
        let since = *self
            .missing_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(p.path.clone())
            .or_insert_with(std::time::Instant::now);
        if since.elapsed() < GONE_AFTER {
            return self.failed(&p.session_id, key, p.attempts, &anyhow::anyhow!(error));
        }
        self.missing_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p.path);
        METRICS.storage_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(session = %p.session_id, channel = p.channel, error = %error, attempts = p.attempts + 1, "storage: recording gone from the spool; it will not be uploaded");
        UploadOutcome::Gone { error }
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

    /// Uploads one session record; false when the attempt failed.
    async fn upload_session(&self, id: &str, started_at: i64, attempts: u32) -> bool {
        let store = self.store.clone();
        let owned = id.to_string();
        let key = self.layout.session(session_start(id, started_at), id);
        let record = match tokio::task::spawn_blocking(move || store.get(&owned)).await {
            Ok(Ok(Some(record))) => Ok(record),
            Ok(Ok(None)) => Err(anyhow::anyhow!("the session is not in the log")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        };
        let outcome = match record {
            Ok(record) => self.put_record(id, &key, attempts, &record).await,
            Err(e) => self.failed(id, &key, attempts, &e),
        };
        let failed = matches!(outcome, UploadOutcome::Failed { .. });
        self.record(id, None, None, &key, outcome);
        !failed
    }

    async fn put_record(
        &self,
        id: &str,
        key: &str,
        attempts: u32,
        record: &crate::sessions::SessionRecord,
    ) -> UploadOutcome {
        let document = serde_json::json!({
            "router_id": self.layout.router_id(),
            "session": record,
        });
        let bytes = serde_json::to_vec_pretty(&document).unwrap_or_default();
        match self.bucket.put_bytes(key, bytes.into()).await {
            Ok(stored) => {
                METRICS.storage_uploads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(session = %id, key = %key, "storage: session record uploaded");
                UploadOutcome::Uploaded {
                    size: stored.size,
                    object: stored.object,
                    at: now_micros(),
                }
            }
            Err(e) => self.failed(id, key, attempts, &e),
        }
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

/// The start of a session (µs), from its id (milliseconds in hex), else `fallback`: the
/// one date a session's objects share.
fn session_start(session_id: &str, fallback: i64) -> i64 {
    session_id
        .get(..11)
        .and_then(|h| i64::from_str_radix(h, 16).ok())
        .map_or(fallback, |ms| ms * 1000)
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

    #[test]
    fn a_session_is_dated_by_its_id() {
        // 0x19aec8a0c00 ms = 2025-11-29T...; a malformed id falls back.
        assert_eq!(
            session_start("19aec8a0c00deadbeef", 7),
            0x19aec8a0c00 * 1000
        );
        assert_eq!(session_start("s1", 7), 7);
    }
}
