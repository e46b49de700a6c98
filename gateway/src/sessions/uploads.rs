//! The uploader's queue and results, kept in the session log so that they survive a crash
//! and travel with the records they belong to.
//!
//! One row per thing to upload, written in the same transaction as the change that makes
//! it due: a channel that is recorded ([`enqueue_recording`], at its start: the uploader
//! skips files still being written), and a session that ended ([`enqueue_record`]).
//! [`backfill`] adds rows for what a log of an older sshgw, or a crash, left without one.
//! A row stays pending until it says uploaded (or that its local file is gone); a failed
//! attempt leaves its error and the time of the next attempt. A partial index keeps the
//! pending rows cheap to find however long the log is.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS uploads (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    -- The local recording's path, or 'record' for the session record.
    item TEXT NOT NULL,
    channel INTEGER,
    key TEXT,
    size INTEGER,
    sha256 TEXT,
    version_id TEXT,
    uploaded_at INTEGER,
    local_deleted INTEGER NOT NULL DEFAULT 0,
    gone INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (session_id, item)
);
CREATE INDEX IF NOT EXISTS uploads_pending ON uploads(next_attempt_at)
    WHERE uploaded_at IS NULL AND gone = 0;
CREATE INDEX IF NOT EXISTS uploads_gone ON uploads(session_id)
    WHERE uploaded_at IS NULL AND gone = 1;
";

/// The `item` of a session's record.
const RECORD: &str = "record";

/// A recorded channel is due for upload once its file is finished.
pub(super) fn enqueue_recording(
    conn: &Connection,
    session_id: &str,
    channel: u32,
    path: &str,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT OR IGNORE INTO uploads (session_id, item, channel) VALUES (?1, ?2, ?3)",
        params![session_id, path, channel],
    )
}

/// An ended session's record is due once its recordings are settled.
pub(super) fn enqueue_record(conn: &Connection, session_id: &str) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT OR IGNORE INTO uploads (session_id, item) VALUES (?1, ?2)",
        params![session_id, RECORD],
    )
}

/// Rows for recordings and ended sessions that have none: a log from before uploads, and
/// sessions a stopped daemon left open (marked interrupted at start).
pub(super) fn backfill(conn: &Connection) -> rusqlite::Result<usize> {
    let recordings = conn.execute(
        "INSERT OR IGNORE INTO uploads (session_id, item, channel)
         SELECT session_id, recording, channel FROM channels WHERE recording IS NOT NULL",
        [],
    )?;
    let records = conn.execute(
        "INSERT OR IGNORE INTO uploads (session_id, item)
         SELECT id, ?1 FROM sessions WHERE ended_at IS NOT NULL OR close_reason IS NOT NULL",
        [RECORD],
    )?;
    Ok(recordings + records)
}

/// A recording found in the spool without a channel row, as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub session_id: String,
    pub channel: u32,
    pub path: String,
    pub kind: super::ProgramKind,
    pub command: Option<String>,
    pub email: Option<String>,
    pub device_id: Option<String>,
    pub login: Option<String>,
    pub destination: Option<String>,
    /// µs since the epoch.
    pub started_at: i64,
}

/// The close reason of a session known only from an adopted recording.
pub const ADOPTED_CLOSE_REASON: &str =
    "interrupted: sshgw stopped (session record rebuilt from its recording's header)";

/// Puts an adopted recording in the log: its session (unless the log has it), its channel
/// and both uploads.
pub(super) fn adopt(conn: &Connection, a: &Adopted) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT OR IGNORE INTO sessions
           (id, email, device_id, source, destination, login, decision, started_at, close_reason)
         VALUES (?1, ?2, ?3, '-', ?4, ?5, 'audit_ssh', ?6, ?7)",
        params![
            a.session_id,
            a.email,
            a.device_id,
            a.destination.as_deref().unwrap_or("-"),
            a.login,
            a.started_at,
            ADOPTED_CLOSE_REASON
        ],
    )?;
    // A channel the log has (without this file) gets it; else a new channel row.
    let named = conn.execute(
        "UPDATE channels SET recording = ?3
         WHERE session_id = ?1 AND channel = ?2 AND recording IS NULL",
        params![a.session_id, a.channel, a.path],
    )?;
    if named == 0 {
        conn.execute(
            "INSERT INTO channels (session_id, channel, kind, command, started_at, recording)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6
             WHERE NOT EXISTS (SELECT 1 FROM channels WHERE session_id = ?1 AND channel = ?2)",
            params![
                a.session_id,
                a.channel,
                a.kind,
                a.command,
                a.started_at,
                a.path
            ],
        )?;
    }
    enqueue_recording(conn, &a.session_id, a.channel, &a.path)?;
    enqueue_record(conn, &a.session_id)
}

/// Where an uploaded file is in the store: what `sessions show` gives each recorded
/// channel, and what `recording fetch` downloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    pub key: String,
    /// The store's version id (none from a bucket without versioning).
    pub version_id: Option<String>,
    /// Hex SHA-256 of the whole object, as uploaded.
    pub sha256: String,
}

/// A recording the session log names and the store does not hold yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecording {
    pub session_id: String,
    pub channel: u32,
    pub path: String,
    pub started_at: i64,
    pub attempts: u32,
    pub next_attempt_at: i64,
}

/// An ended session whose record is not in the store yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSession {
    pub session_id: String,
    pub started_at: i64,
    pub attempts: u32,
}

/// What became of one upload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    Uploaded {
        size: u64,
        object: StoredObject,
        at: i64,
    },
    Failed {
        error: String,
        next_attempt_at: i64,
    },
    /// The local recording is gone (nothing can be uploaded any more).
    Gone {
        error: String,
    },
    /// The uploaded recording's local copy was deleted.
    LocalDeleted,
    /// A recording counted as gone is back (a late mount): pending again, from scratch.
    Reappeared,
}

/// One attempt's result, for [`super::store::Write::Upload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadResult {
    pub session_id: String,
    /// `None` for the session record.
    pub channel: Option<u32>,
    pub path: Option<String>,
    pub key: String,
    pub outcome: UploadOutcome,
}

impl UploadResult {
    pub(super) fn approx_bytes(&self) -> usize {
        self.session_id.len()
            + self.key.len()
            + self.path.as_ref().map_or(0, String::len)
            + match &self.outcome {
                UploadOutcome::Failed { error, .. } | UploadOutcome::Gone { error } => error.len(),
                _ => 0,
            }
    }
}

/// Applies one result (the writer thread, inside its transaction).
pub(super) fn apply(conn: &Connection, r: &UploadResult) -> rusqlite::Result<usize> {
    let item = r.path.as_deref().unwrap_or(RECORD);
    match (&r.path, r.channel) {
        (Some(path), Some(channel)) => enqueue_recording(conn, &r.session_id, channel, path)?,
        _ => enqueue_record(conn, &r.session_id)?,
    };
    if !r.key.is_empty() {
        conn.execute(
            "UPDATE uploads SET key = ?3 WHERE session_id = ?1 AND item = ?2",
            params![r.session_id, item, r.key],
        )?;
    }
    let row = params![r.session_id, item];
    match &r.outcome {
        UploadOutcome::Uploaded { size, object, at } => conn.execute(
            "UPDATE uploads SET key = ?3, size = ?4, sha256 = ?5, version_id = ?6, uploaded_at = ?7,
                    attempts = attempts + 1, last_error = NULL
             WHERE session_id = ?1 AND item = ?2",
            params![
                r.session_id,
                item,
                object.key,
                *size as i64,
                object.sha256,
                object.version_id,
                at
            ],
        ),
        UploadOutcome::Failed {
            error,
            next_attempt_at,
        } => conn.execute(
            "UPDATE uploads SET attempts = attempts + 1, last_error = ?3, next_attempt_at = ?4
             WHERE session_id = ?1 AND item = ?2",
            params![r.session_id, item, error, next_attempt_at],
        ),
        UploadOutcome::Gone { error } => conn.execute(
            "UPDATE uploads SET gone = 1, last_error = ?3 WHERE session_id = ?1 AND item = ?2",
            params![r.session_id, item, error],
        ),
        UploadOutcome::LocalDeleted => conn.execute(
            "UPDATE uploads SET local_deleted = 1 WHERE session_id = ?1 AND item = ?2",
            row,
        ),
        UploadOutcome::Reappeared => conn.execute(
            "UPDATE uploads SET gone = 0, attempts = 0, next_attempt_at = 0, last_error = NULL
             WHERE session_id = ?1 AND item = ?2",
            row,
        ),
    }
}

/// Every recording not uploaded yet, oldest first (`due_by`: only those whose next attempt
/// is due by then).
pub(super) fn pending_recordings(
    conn: &Connection,
    due_by: Option<i64>,
) -> rusqlite::Result<Vec<PendingRecording>> {
    let mut stmt = conn.prepare(
        "SELECT u.session_id, coalesce(u.channel, 0), u.item, s.started_at, u.attempts, u.next_attempt_at
         FROM uploads u JOIN sessions s ON s.id = u.session_id
         WHERE u.uploaded_at IS NULL AND u.gone = 0 AND u.next_attempt_at <= ?1 AND u.item != ?2
         ORDER BY s.started_at, u.item",
    )?;
    let rows = stmt.query_map(params![due_by.unwrap_or(i64::MAX), RECORD], |r| {
        Ok(PendingRecording {
            session_id: r.get(0)?,
            channel: r.get(1)?,
            path: r.get(2)?,
            started_at: r.get(3)?,
            attempts: r.get(4)?,
            next_attempt_at: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Ended sessions whose record is due, once every recording they name is settled.
pub(super) fn pending_sessions(
    conn: &Connection,
    due_by: i64,
    limit: u32,
) -> rusqlite::Result<Vec<PendingSession>> {
    let mut stmt = conn.prepare(
        "SELECT u.session_id, s.started_at, u.attempts FROM uploads u
         JOIN sessions s ON s.id = u.session_id
         WHERE u.uploaded_at IS NULL AND u.gone = 0 AND u.next_attempt_at <= ?1 AND u.item = ?2
           AND (s.ended_at IS NOT NULL OR s.close_reason IS NOT NULL)
           AND NOT EXISTS (
             SELECT 1 FROM uploads r WHERE r.session_id = u.session_id AND r.item != ?2
               AND r.uploaded_at IS NULL AND r.gone = 0)
         ORDER BY u.next_attempt_at LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![due_by, RECORD, limit], |r| {
        Ok(PendingSession {
            session_id: r.get(0)?,
            started_at: r.get(1)?,
            attempts: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Recordings counted as gone: (session, channel, path), for the check that they are back.
pub(super) fn gone_recordings(conn: &Connection) -> rusqlite::Result<Vec<(String, u32, String)>> {
    let mut stmt = conn.prepare(
        "SELECT session_id, coalesce(channel, 0), item FROM uploads
         WHERE uploaded_at IS NULL AND gone = 1 AND item != ?1",
    )?;
    let rows = stmt.query_map([RECORD], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// The stored object of a local recording, once uploaded.
pub(super) fn object_of(
    conn: &Connection,
    session_id: &str,
    path: &str,
) -> rusqlite::Result<Option<StoredObject>> {
    conn.query_row(
        "SELECT key, version_id, sha256 FROM uploads
         WHERE session_id = ?1 AND item = ?2 AND uploaded_at IS NOT NULL",
        params![session_id, path],
        |r| {
            Ok(StoredObject {
                key: r.get(0)?,
                version_id: r.get(1)?,
                sha256: r.get(2)?,
            })
        },
    )
    .optional()
}

/// The last error of the most recent failed attempt, if the latest attempt failed.
pub(super) fn last_error(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT last_error FROM uploads WHERE last_error IS NOT NULL AND uploaded_at IS NULL AND gone = 0
         ORDER BY next_attempt_at DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Sessions that still have something to upload (retention keeps them).
pub(super) const UNSHIPPED: &str = "EXISTS (
    SELECT 1 FROM uploads u WHERE u.session_id = s.id AND u.uploaded_at IS NULL AND u.gone = 0)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::model::Action,
        recording::writer::ChannelKind,
        sessions::{ChannelRecord, SessionRecord, store::SessionStore, store::Write},
    };

    fn session(store: &SessionStore, id: &str, recordings: &[&str]) {
        store.write(Write::Open(Box::new(SessionRecord::new(
            id.into(),
            "100.96.0.7:1".into(),
            "203.0.113.10:22".into(),
            Action::AuditSsh,
            1,
        ))));
        for (n, path) in recordings.iter().enumerate() {
            store.write(Write::ChannelOpen {
                session_id: id.into(),
                record: ChannelRecord::program(
                    n as u32,
                    &ChannelKind::Shell,
                    2,
                    Some(path.to_string()),
                    vec![],
                ),
            });
        }
    }

    fn close(store: &SessionStore, id: &str) {
        store.write(Write::Close {
            id: id.into(),
            ended_at: 3,
            duration_ms: 1,
            bytes_from_client: 0,
            bytes_from_server: 0,
            close_reason: "client".into(),
        });
    }

    fn result(id: &str, channel: Option<u32>, path: Option<&str>, outcome: UploadOutcome) -> Write {
        Write::Upload(Box::new(UploadResult {
            session_id: id.into(),
            channel,
            path: path.map(str::to_string),
            key: format!("k/{id}-{channel:?}"),
            outcome,
        }))
    }

    fn uploaded(sha: &str) -> UploadOutcome {
        UploadOutcome::Uploaded {
            size: 1,
            object: StoredObject {
                key: "k/object".into(),
                version_id: Some("v".into()),
                sha256: sha.into(),
            },
            at: 9,
        }
    }

    fn pending_paths(store: &SessionStore, due_by: Option<i64>) -> Vec<String> {
        store
            .pending_recordings(due_by)
            .unwrap()
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    #[test]
    fn a_recording_is_pending_until_uploaded_and_a_session_until_its_recordings_are() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("sessions.db")).unwrap();
        session(&store, "s1", &["/r/s1-ch0.sshlog", "/r/s1-ch1.sshlog"]);
        session(&store, "s2", &[]);
        store.sync();
        assert_eq!(
            pending_paths(&store, None),
            ["/r/s1-ch0.sshlog", "/r/s1-ch1.sshlog"]
        );
        // Live sessions' records wait for their end.
        assert!(store.pending_sessions(i64::MAX, 10).unwrap().is_empty());
        close(&store, "s1");
        close(&store, "s2");
        store.write(result(
            "s1",
            Some(0),
            Some("/r/s1-ch0.sshlog"),
            UploadOutcome::Failed {
                error: "503".into(),
                next_attempt_at: 100,
            },
        ));
        store.sync();
        // A failed attempt waits for its backoff; its error is the latest.
        assert_eq!(pending_paths(&store, Some(99)), ["/r/s1-ch1.sshlog"]);
        assert_eq!(pending_paths(&store, Some(100)).len(), 2);
        assert_eq!(store.upload_error().unwrap().as_deref(), Some("503"));
        let ids = |v: Vec<PendingSession>| v.into_iter().map(|s| s.session_id).collect::<Vec<_>>();
        assert_eq!(ids(store.pending_sessions(i64::MAX, 10).unwrap()), ["s2"]);
        store.write(result(
            "s1",
            Some(0),
            Some("/r/s1-ch0.sshlog"),
            uploaded("aa"),
        ));
        store.write(result(
            "s1",
            Some(1),
            Some("/r/s1-ch1.sshlog"),
            UploadOutcome::Gone {
                error: "gone".into(),
            },
        ));
        store.sync();
        assert!(pending_paths(&store, None).is_empty());
        assert_eq!(store.upload_error().unwrap(), None);
        assert_eq!(
            ids(store.pending_sessions(i64::MAX, 10).unwrap()),
            ["s1", "s2"]
        );
        let s1 = store.get("s1").unwrap().unwrap();
        let object = s1.channels[0].recording_object.as_ref().unwrap();
        assert_eq!(
            (object.key.as_str(), object.sha256.as_str()),
            ("k/object", "aa")
        );
        assert_eq!(s1.channels[1].recording_object, None);
    }

    #[test]
    fn retention_with_storage_keeps_what_is_not_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("sessions.db")).unwrap();
        session(&store, "s1", &["/r/s1-ch0.sshlog"]);
        close(&store, "s1");
        session(&store, "s2", &[]);
        close(&store, "s2");
        store.sync();
        let ids = |shipped_only| {
            store
                .oldest_ended(10, shipped_only)
                .unwrap()
                .into_iter()
                .map(|(id, _, _)| id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(false), ["s1", "s2"]);
        assert!(ids(true).is_empty());
        store.write(result("s2", None, None, uploaded("bb")));
        store.write(result(
            "s1",
            Some(0),
            Some("/r/s1-ch0.sshlog"),
            uploaded("aa"),
        ));
        store.sync();
        // s1's recording is up, its record is not.
        assert_eq!(ids(true), ["s2"]);
        store.write(result("s1", None, None, uploaded("cc")));
        store.sync();
        assert_eq!(ids(true), ["s1", "s2"]);
        // Deleting a session takes its upload rows with it.
        store.write(Write::Delete(vec!["s1".into()]));
        assert!(store.sync());
    }
}

#[cfg(test)]
mod adoption_tests {
    use super::*;
    use crate::{
        policy::model::Action,
        sessions::{ProgramKind, SessionRecord, store::SessionStore, store::Write},
    };

    fn adopted(session: &str, channel: u32, path: &str) -> Adopted {
        Adopted {
            session_id: session.into(),
            channel,
            path: path.into(),
            kind: ProgramKind::Shell,
            command: None,
            email: None,
            device_id: None,
            login: None,
            destination: None,
            started_at: 5,
        }
    }

    #[test]
    fn an_adopted_recording_joins_its_channel_and_waits_for_a_live_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("sessions.db")).unwrap();
        store.write(Write::Open(Box::new(SessionRecord::new(
            "s1".into(),
            "100.96.0.7:1".into(),
            "203.0.113.10:22".into(),
            Action::AuditSsh,
            1,
        ))));
        store.write(Write::ChannelOpen {
            session_id: "s1".into(),
            record: crate::sessions::ChannelRecord::program(
                2,
                &crate::recording::writer::ChannelKind::Shell,
                3,
                None,
                vec![],
            ),
        });
        store.write(Write::Adopt(Box::new(adopted("s1", 2, "/r/s1-ch2.sshlog"))));
        store.sync();
        // The existing channel row names the file; no second row.
        let s1 = store.get("s1").unwrap().unwrap();
        assert_eq!(s1.channels.len(), 1);
        assert_eq!(
            s1.channels[0].recording.as_deref(),
            Some("/r/s1-ch2.sshlog")
        );
        assert_eq!(store.pending_recordings(None).unwrap().len(), 1);
        // The session is live: its record waits for its end, whatever adoption queued.
        let done = |id: &str| {
            Write::Upload(Box::new(UploadResult {
                session_id: id.into(),
                channel: Some(2),
                path: Some("/r/s1-ch2.sshlog".into()),
                key: "k".into(),
                outcome: UploadOutcome::Uploaded {
                    size: 1,
                    object: StoredObject {
                        key: "k".into(),
                        version_id: None,
                        sha256: "00".into(),
                    },
                    at: 1,
                },
            }))
        };
        store.write(done("s1"));
        store.write(Write::Adopt(Box::new(adopted("s1", 3, "/r/s1-ch3.sshlog"))));
        store.sync();
        assert_eq!(store.get("s1").unwrap().unwrap().channels.len(), 2);
        assert!(store.pending_sessions(i64::MAX, 10).unwrap().is_empty());
    }

    #[test]
    fn a_gone_recording_that_is_back_is_pending_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("sessions.db")).unwrap();
        store.write(Write::Adopt(Box::new(adopted("s9", 0, "/r/s9-ch0.sshlog"))));
        let result = |outcome| {
            Write::Upload(Box::new(UploadResult {
                session_id: "s9".into(),
                channel: Some(0),
                path: Some("/r/s9-ch0.sshlog".into()),
                key: String::new(),
                outcome,
            }))
        };
        store.write(result(UploadOutcome::Gone {
            error: "missing".into(),
        }));
        store.sync();
        assert!(store.pending_recordings(None).unwrap().is_empty());
        assert_eq!(store.gone_recordings().unwrap().len(), 1);
        store.write(result(UploadOutcome::Reappeared));
        store.sync();
        assert!(store.gone_recordings().unwrap().is_empty());
        let pending = store.pending_recordings(None).unwrap();
        assert_eq!((pending[0].attempts, pending[0].next_attempt_at), (0, 0));
    }
}
