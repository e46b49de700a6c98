//! The outbox: every change to the session log also appends one event row, in the same
//! transaction, so what leaves the router (the central PostgreSQL index, SIEM exporters)
//! is exactly what the log holds, in order, whatever crashes in between.
//!
//! `seq` is the row's `INTEGER PRIMARY KEY AUTOINCREMENT`: it only grows, and a row is
//! never rewritten. Each consumer keeps its cursor (the last `seq` it delivered) in
//! `outbox_cursors`; the central shipper's authoritative cursor lives in PostgreSQL, in the
//! same transaction as the rows it applied, and is mirrored here for retention and status.
//! Rows are pruned only once every configured consumer has passed them ([`prune`]).

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    ChannelRecord, FileOpRecord, SessionRecord,
    change::Write,
    uploads::{UploadOutcome, UploadResult},
};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    -- When the row was written (µs): the lag is measured from it.
    queued_at INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL,
    session_id TEXT,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_cursors (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    shipped_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- This log's identity: a central index refuses rows from another log under the same
-- router id (a replaced log would start its seqs again; a copied router would interleave).
INSERT OR IGNORE INTO outbox_meta (key, value) VALUES ('instance', lower(hex(randomblob(16))));
CREATE TABLE IF NOT EXISTS admin_actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    pid INTEGER,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    digest TEXT,
    recording_key_fingerprint TEXT
);
";

/// The outbox's consumers, by the name their cursor has.
pub mod consumer {
    pub const CENTRAL: &str = "central";
    pub const OTLP: &str = "otlp";
    pub const SYSLOG: &str = "syslog";
}

/// The event kinds, as they appear in the outbox, PostgreSQL and SIEM events.
pub mod kind {
    pub const SESSION_OPENED: &str = "session.opened";
    pub const SESSION_LOGGED_IN: &str = "session.logged_in";
    pub const SESSION_CLOSED: &str = "session.closed";
    pub const CHANNEL_OPENED: &str = "channel.opened";
    pub const CHANNEL_CLOSED: &str = "channel.closed";
    pub const FILE_OPERATION: &str = "file.operation";
    pub const RECORDING_UPLOADED: &str = "recording.uploaded";
    pub const RECORD_UPLOADED: &str = "record.uploaded";
    pub const RECORDING_ADOPTED: &str = "recording.adopted";
    pub const ADMIN_ACTION: &str = "admin.action";
    /// Central only: stands in for a row PostgreSQL refused (see `central::apply`).
    pub const UNSHIPPABLE: &str = "row.unshippable";
}

pub use super::change::AdminAction;

/// One outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub seq: i64,
    /// µs since the epoch.
    pub at: i64,
    pub kind: String,
    pub session_id: Option<String>,
    pub payload: Value,
}

/// What a consumer has not delivered yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    pub outbox_rows: u64,
    /// Age of the oldest undelivered row, in seconds (0 when there is none).
    pub lag_secs: u64,
}

/// The event a change appends, if any: (kind, at, session, payload).
pub(super) fn event_of(change: &Write) -> Option<(&'static str, i64, Option<&str>, Value)> {
    let now = super::now_micros();
    Some(match change {
        Write::Open(s) => (kind::SESSION_OPENED, s.started_at, Some(&s.id), opened(s)),
        Write::LoggedIn {
            id,
            login,
            cert_serial,
            upstream_host_key,
        } => (
            kind::SESSION_LOGGED_IN,
            now,
            Some(id),
            json!({"login": login, "cert_serial": cert_serial, "upstream_host_key": upstream_host_key}),
        ),
        Write::Close {
            id,
            ended_at,
            duration_ms,
            bytes_from_client,
            bytes_from_server,
            close_reason,
        } => (
            kind::SESSION_CLOSED,
            *ended_at,
            Some(id),
            json!({
                "ended_at": super::format_time(*ended_at),
                "duration_ms": duration_ms,
                "bytes_from_client": bytes_from_client,
                "bytes_from_server": bytes_from_server,
                "close_reason": close_reason,
            }),
        ),
        Write::ChannelOpen { session_id, record } => (
            kind::CHANNEL_OPENED,
            record.started_at,
            Some(session_id),
            json!({ "channel": channel_json(record) }),
        ),
        Write::ChannelClose {
            session_id,
            channel,
            ended_at,
            exit_status,
            exit_signal,
        } => (
            kind::CHANNEL_CLOSED,
            *ended_at,
            Some(session_id),
            json!({
                "channel": channel,
                "ended_at": super::format_time(*ended_at),
                "exit_status": exit_status,
                "exit_signal": exit_signal,
            }),
        ),
        Write::FileOp { session_id, record } => (
            kind::FILE_OPERATION,
            record.at,
            Some(session_id),
            json!({ "file_op": file_op_json(record) }),
        ),
        Write::Upload(r) => return uploaded(r, now),
        Write::Adopt(a) => (
            kind::RECORDING_ADOPTED,
            a.started_at,
            Some(&a.session_id),
            json!({
                "channel": a.channel, "kind": a.kind.as_str(), "command": a.command,
                "email": a.email, "device_id": a.device_id, "login": a.login,
                "destination": a.destination, "recording": a.path,
                "started_at": super::format_time(a.started_at),
            }),
        ),
        Write::Admin(a) => (
            kind::ADMIN_ACTION,
            a.at,
            None,
            serde_json::to_value(a).unwrap_or(Value::Null),
        ),
        Write::Delete(_) | Write::Shipped { .. } | Write::PruneOutbox(_) | Write::Sync(_) => {
            return None;
        }
    })
}

/// A session's opening, without its (still empty) channels and file operations.
fn opened(s: &SessionRecord) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.remove("channels");
        map.remove("file_ops");
    }
    json!({ "session": v })
}

fn channel_json(c: &ChannelRecord) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn file_op_json(f: &FileOpRecord) -> Value {
    serde_json::to_value(f).unwrap_or(Value::Null)
}

/// A confirmed upload is an event; attempts and their failures are the uploader's business.
fn uploaded(r: &UploadResult, now: i64) -> Option<(&'static str, i64, Option<&str>, Value)> {
    let UploadOutcome::Uploaded { size, object, at } = &r.outcome else {
        return None;
    };
    let kind = if r.channel.is_some() {
        kind::RECORDING_UPLOADED
    } else {
        kind::RECORD_UPLOADED
    };
    let at = if *at > 0 { *at } else { now };
    Some((
        kind,
        at,
        Some(&r.session_id),
        json!({
            "channel": r.channel, "path": r.path, "key": object.key, "version_id": object.version_id,
            "sha256": object.sha256, "size": size,
        }),
    ))
}

/// Appends the event of `change`, if it has one (the writer, inside the change's savepoint).
/// `touched`: the rows the change itself changed; an update of nothing is no event.
pub(super) fn append(conn: &Connection, change: &Write, touched: usize) -> rusqlite::Result<()> {
    let updates = matches!(
        change,
        Write::LoggedIn { .. } | Write::Close { .. } | Write::ChannelClose { .. }
    );
    if updates && touched == 0 {
        return Ok(());
    }
    let Some((kind, at, session_id, payload)) = event_of(change) else {
        return Ok(());
    };
    insert(conn, kind, at, session_id, &payload)
}

fn insert(
    conn: &Connection,
    kind: &str,
    at: i64,
    session_id: Option<&str>,
    payload: &Value,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO outbox (at, queued_at, kind, session_id, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            at,
            super::now_micros(),
            kind,
            session_id,
            payload.to_string()
        ],
    )?;
    Ok(())
}

/// The close reason of sessions a stopped daemon left open.
pub const INTERRUPTED: &str = "interrupted: sshgw stopped";

/// At start: marks the sessions a previous run left open as interrupted, each with its
/// `session.closed` event (no end time: it is unknown), in one transaction.
pub(super) fn mark_interrupted(conn: &Connection) -> rusqlite::Result<usize> {
    let tx = conn.unchecked_transaction()?;
    let ids: Vec<String> = tx
        .prepare("SELECT id FROM sessions WHERE ended_at IS NULL AND close_reason IS NULL")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in &ids {
        tx.execute(
            "UPDATE sessions SET close_reason = ?2 WHERE id = ?1",
            params![id, INTERRUPTED],
        )?;
        let payload = json!({
            "ended_at": null, "duration_ms": null, "bytes_from_client": null,
            "bytes_from_server": null, "close_reason": INTERRUPTED,
        });
        insert(
            &tx,
            kind::SESSION_CLOSED,
            super::now_micros(),
            Some(id),
            &payload,
        )?;
    }
    tx.commit()?;
    Ok(ids.len())
}

/// Roughly the bytes the outbox's rows take.
pub(super) fn approx_bytes(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce(sum(length(payload)) + count(*) * 64, 0) FROM outbox",
        [],
        |r| r.get(0),
    )
}

/// Keeps an admin action in the log itself (its event goes through [`append`]).
pub(super) fn insert_admin(conn: &Connection, a: &AdminAction) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO admin_actions (at, uid, gid, pid, method, route, status, digest,
                                    recording_key_fingerprint)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            a.at,
            a.uid,
            a.gid,
            a.pid,
            a.method,
            a.route,
            a.status,
            a.digest,
            a.recording_key_fingerprint
        ],
    )
}

/// Moves `consumer`'s cursor forward to `seq` (never back).
pub(super) fn advance(conn: &Connection, consumer: &str, seq: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO outbox_cursors (consumer, seq, shipped_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (consumer) DO UPDATE SET seq = max(seq, excluded.seq),
                                              shipped_at = excluded.shipped_at",
        params![consumer, seq, super::now_micros()],
    )
}

/// `consumer`'s cursor: the last `seq` it delivered (0 before its first).
pub(super) fn cursor(conn: &Connection, consumer: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            "SELECT seq FROM outbox_cursors WHERE consumer = ?",
            [consumer],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// This log's instance id (see the schema).
pub(super) fn instance(conn: &Connection) -> rusqlite::Result<String> {
    conn.query_row(
        "SELECT value FROM outbox_meta WHERE key = 'instance'",
        [],
        |r| r.get(0),
    )
}

/// The last seq ever given out (0 before the first row), pruned rows included.
pub(super) fn last_seq(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Up to `limit` rows after `after`, in order.
pub(super) fn after(conn: &Connection, after: i64, limit: u32) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, kind, session_id, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        let text: String = r.get(4)?;
        let payload = serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
        })?;
        Ok(OutboxRow {
            seq: r.get(0)?,
            at: r.get(1)?,
            kind: r.get(2)?,
            session_id: r.get(3)?,
            payload,
        })
    })?;
    rows.collect()
}

/// What is left after `cursor`: rows and the age of the oldest.
pub(super) fn backlog(conn: &Connection, cursor: i64, now: i64) -> rusqlite::Result<Backlog> {
    let (rows, oldest): (i64, Option<i64>) = conn.query_row(
        "SELECT count(*), min(queued_at) FROM outbox WHERE seq > ?",
        [cursor],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Backlog {
        outbox_rows: rows.max(0) as u64,
        lag_secs: oldest.map_or(0, |at| ((now - at).max(0) / 1_000_000) as u64),
    })
}

/// Deletes rows every one of `consumers` has delivered. With none configured, the outbox
/// keeps what the log keeps: rows older than its oldest session go.
pub(super) fn prune(conn: &Connection, consumers: &[String]) -> rusqlite::Result<usize> {
    if consumers.is_empty() {
        return conn.execute(
            "DELETE FROM outbox WHERE at < coalesce((SELECT min(started_at) FROM sessions), ?)",
            [super::now_micros()],
        );
    }
    let mut done = i64::MAX;
    for consumer in consumers {
        done = done.min(cursor(conn, consumer)?);
    }
    conn.execute("DELETE FROM outbox WHERE seq <= ?", [done])
}

/// How a consumer's deliveries go: its last error, if the last attempt failed.
#[derive(Debug, Default)]
pub struct Delivery {
    last_error: Mutex<Option<String>>,
}

impl Delivery {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("delivery lock").clone()
    }

    /// Records a failure; true when it differs from the previous one (worth a log line).
    pub fn failed(&self, error: &str) -> bool {
        let mut last = self.last_error.lock().expect("delivery lock");
        let new = last.as_deref() != Some(error);
        *last = Some(error.to_owned());
        new
    }

    /// Clears the error; true when there was one.
    pub fn ok(&self) -> bool {
        self.last_error
            .lock()
            .expect("delivery lock")
            .take()
            .is_some()
    }
}

/// The configured consumers of the outbox, for status, metrics and pruning.
#[derive(Debug, Default, Clone)]
pub struct Consumers {
    pub central: Option<Arc<Delivery>>,
    pub otlp: Option<Arc<Delivery>>,
    pub syslog: Option<Arc<Delivery>>,
}

impl Consumers {
    /// (cursor name, delivery) of each configured consumer.
    pub fn configured(&self) -> Vec<(&'static str, &Arc<Delivery>)> {
        [
            (consumer::CENTRAL, &self.central),
            (consumer::OTLP, &self.otlp),
            (consumer::SYSLOG, &self.syslog),
        ]
        .into_iter()
        .filter_map(|(name, d)| d.as_ref().map(|d| (name, d)))
        .collect()
    }

    /// The cursor names of the configured consumers (the outbox is pruned to them).
    pub fn names(&self) -> Vec<String> {
        self.configured()
            .into_iter()
            .map(|(name, _)| name.to_owned())
            .collect()
    }
}

/// One consumer in `status --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerReport {
    pub outbox_rows: u64,
    pub lag_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::model::Action,
        sessions::{ProgramKind, store::SessionStore},
    };

    fn open(id: &str) -> Write {
        Write::Open(Box::new(SessionRecord::new(
            id.into(),
            "100.96.0.7:40000".into(),
            "203.0.113.10:22".into(),
            Action::AuditSsh,
            1,
        )))
    }

    #[test]
    fn every_change_appends_one_event_in_order_and_rejected_ones_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("s.db")).unwrap();
        store.write(open("s1"));
        store.write(open("s1")); // rejected (duplicate id): no event either
        store.write(Write::ChannelOpen {
            session_id: "s1".into(),
            record: ChannelRecord {
                channel: 0,
                kind: ProgramKind::Exec,
                command: Some("uptime".into()),
                started_at: 2,
                ended_at: None,
                exit_status: None,
                exit_signal: None,
                recording: None,
                recording_object: None,
                env: vec![],
            },
        });
        store.write(Write::Close {
            id: "s1".into(),
            ended_at: 3,
            duration_ms: 2,
            bytes_from_client: 1,
            bytes_from_server: 2,
            close_reason: "client".into(),
        });
        assert!(store.sync());
        let rows = store.outbox_after(0, 100).unwrap();
        let kinds: Vec<_> = rows.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                kind::SESSION_OPENED,
                kind::CHANNEL_OPENED,
                kind::SESSION_CLOSED
            ]
        );
        let seqs: Vec<_> = rows.iter().map(|r| r.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
        assert_eq!(rows[1].payload["channel"]["command"], "uptime");
        assert_eq!(rows[0].payload["session"]["destination"], "203.0.113.10:22");
    }

    #[test]
    fn rows_are_pruned_only_once_every_consumer_delivered_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("s.db")).unwrap();
        for i in 0..5 {
            store.write(open(&format!("s{i}")));
        }
        assert!(store.sync());
        let both = vec![consumer::CENTRAL.to_owned(), consumer::SYSLOG.to_owned()];
        store.write(Write::Shipped {
            consumer: consumer::CENTRAL.into(),
            seq: 4,
        });
        store.write(Write::Shipped {
            consumer: consumer::SYSLOG.into(),
            seq: 2,
        });
        // A cursor never moves back.
        store.write(Write::Shipped {
            consumer: consumer::CENTRAL.into(),
            seq: 1,
        });
        store.write(Write::PruneOutbox(both));
        assert!(store.sync());
        let left: Vec<_> = store
            .outbox_after(0, 100)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, [3, 4, 5]);
        assert_eq!(store.outbox_cursor(consumer::CENTRAL).unwrap(), 4);
        let backlog = store.outbox_backlog(consumer::SYSLOG).unwrap();
        assert_eq!(backlog.outbox_rows, 3);
    }
}
