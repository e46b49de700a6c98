//! Retention of session records and recording files together: by age, then by total size
//! (oldest first). Only ended sessions are ever removed.

use std::path::Path;

use anyhow::Result;

use super::store::{SessionStore, Write};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Records (and recordings) older than this are removed; 0 keeps forever.
    pub max_age_days: u64,
    /// Database plus recordings above this many MiB: oldest sessions go; 0 means no limit.
    pub max_total_mb: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn remove_sessions(store: &SessionStore, doomed: Vec<(String, i64, Vec<String>)>) -> usize {
    let count = doomed.len();
    let mut ids = Vec::with_capacity(count);
    for (id, _, files) in doomed {
        for file in files {
            if let Err(e) = std::fs::remove_file(&file)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file, error = %e, "retention: cannot remove recording");
            }
        }
        ids.push(id);
    }
    store.write(Write::Delete(ids));
    store.sync();
    count
}

/// Applies the limits once; returns how many sessions were removed.
pub fn enforce(store: &SessionStore, recordings: &Path, limits: Limits) -> Result<usize> {
    let mut removed = 0;
    if limits.max_age_days > 0 {
        let cutoff = super::now_micros() - (limits.max_age_days as i64) * 86_400 * 1_000_000;
        loop {
            let batch: Vec<_> = store
                .oldest_ended(500)?
                .into_iter()
                .filter(|(_, started, _)| *started < cutoff)
                .collect();
            if batch.is_empty() {
                break;
            }
            removed += remove_sessions(store, batch);
        }
    }
    if limits.max_total_mb > 0 {
        let limit = limits.max_total_mb * 1024 * 1024;
        while store.used_bytes()? + dir_bytes(recordings) > limit {
            let batch = store.oldest_ended(50)?;
            if batch.is_empty() {
                break;
            }
            removed += remove_sessions(store, batch);
        }
    }
    if removed > 0 {
        tracing::info!(
            sessions = removed,
            "retention removed old sessions and their recordings"
        );
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{ChannelRecord, SessionRecord};

    #[test]
    fn removes_old_sessions_and_their_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("s.db")).unwrap();
        let recordings = dir.path().join("rec");
        std::fs::create_dir(&recordings).unwrap();
        let now = crate::sessions::now_micros();
        for (id, age_days, open) in [
            ("old", 10, false),
            ("new", 0, false),
            ("live-old", 10, true),
        ] {
            let started = now - age_days * 86_400 * 1_000_000;
            let file = recordings.join(id);
            std::fs::write(&file, b"x").unwrap();
            store.write(Write::Open(Box::new(SessionRecord {
                ended_at: (!open).then_some(started + 1),
                ..SessionRecord::new(id.into(), "s".into(), "d".into(), "audit_ssh", started)
            })));
            store.write(Write::ChannelOpen {
                session_id: id.into(),
                record: ChannelRecord {
                    channel: 0,
                    kind: "shell".into(),
                    command: None,
                    started_at: started,
                    ended_at: None,
                    exit_status: None,
                    exit_signal: None,
                    recording: Some(file.display().to_string()),
                },
            });
        }
        store.sync();
        let removed = enforce(
            &store,
            &recordings,
            Limits {
                max_age_days: 7,
                max_total_mb: 0,
            },
        )
        .unwrap();
        assert_eq!(removed, 1);
        assert!(store.get("old").unwrap().is_none());
        assert!(!recordings.join("old").exists());
        assert!(store.get("new").unwrap().is_some());
        // A session still in progress is never removed, however old.
        assert!(store.get("live-old").unwrap().is_some());
        assert!(recordings.join("live-old").exists());
    }
}
