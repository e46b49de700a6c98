//! SQLite storage of the session log (WAL mode). All writes go through one thread that
//! owns the write connection ([`super::writer`]); reads open their own connection, which
//! WAL lets run alongside the writer.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
};

use anyhow::{Context, Result};
use rusqlite::{
    Connection, OptionalExtension,
    types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef},
};

use super::{
    ChannelRecord, FileOperation, FileProtocol, ProgramKind, SessionRecord,
    health::{Health, HealthReport},
    writer,
};
use crate::{config::LogFailure, policy::model::Action, util::vocabulary::UnknownName};

pub use super::{change::Write, writer::UnwritableHook};

const SCHEMA_VERSION: i64 = 5;

/// Brings a log written by an older sshgw up to [`SCHEMA_VERSION`]; new tables come from
/// [`SCHEMA`] itself.
fn migrate(conn: &Connection) -> Result<()> {
    // 3: channels.env (the program's environment).
    let has_env = conn
        .prepare("SELECT 1 FROM pragma_table_info('channels') WHERE name = 'env'")?
        .exists([])?;
    if !has_env {
        conn.execute_batch("ALTER TABLE channels ADD COLUMN env TEXT")?;
    }
    // 5: outbox.queued_at (an outbox of a development build before it).
    let has_queued = conn
        .prepare("SELECT 1 FROM pragma_table_info('outbox') WHERE name = 'queued_at'")?
        .exists([])?;
    if !has_queued {
        conn.execute_batch("ALTER TABLE outbox ADD COLUMN queued_at INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    email TEXT,
    device_id TEXT,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    login TEXT,
    policy_id TEXT,
    policy_name TEXT,
    decision TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    duration_ms INTEGER,
    bytes_from_client INTEGER NOT NULL DEFAULT 0,
    bytes_from_server INTEGER NOT NULL DEFAULT 0,
    close_reason TEXT,
    cert_serial TEXT,
    upstream_host_key TEXT
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions(started_at);
CREATE INDEX IF NOT EXISTS sessions_email ON sessions(email);
CREATE TABLE IF NOT EXISTS channels (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    channel INTEGER NOT NULL,
    kind TEXT NOT NULL,
    command TEXT,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    exit_status INTEGER,
    exit_signal TEXT,
    recording TEXT,
    env TEXT,
    PRIMARY KEY (session_id, channel, started_at)
);
CREATE TABLE IF NOT EXISTS file_ops (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    channel INTEGER NOT NULL,
    at INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    op TEXT NOT NULL,
    path TEXT NOT NULL,
    target TEXT,
    flags TEXT,
    bytes_read INTEGER NOT NULL,
    bytes_written INTEGER NOT NULL,
    status TEXT NOT NULL,
    denied INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS file_ops_session ON file_ops(session_id);
";

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<i64>,
    pub email: Option<String>,
    pub device: Option<String>,
    /// (exact, LIKE pattern), see [`super::destination_match`].
    pub destination: Option<(String, String)>,
    pub ids: Option<Vec<String>>,
    pub limit: Option<u32>,
    /// Started before this (µs).
    pub until: Option<i64>,
    /// Only sessions still open (and not blocked).
    pub active: bool,
    /// Only sessions with file operations.
    pub has_file_ops: bool,
}

impl Filter {
    /// Whether a live session matches the device and destination filters.
    pub fn matches_place(&self, s: &SessionRecord) -> bool {
        let device = self
            .device
            .as_deref()
            .is_none_or(|d| s.device_id.as_deref() == Some(d));
        let destination = self.destination.as_ref().is_none_or(|(exact, like)| {
            s.destination == *exact
                || like
                    .strip_suffix('%')
                    .is_some_and(|prefix| s.destination.starts_with(prefix))
        });
        device && destination
    }
}

#[derive(Clone)]
pub struct SessionStore {
    path: PathBuf,
    tx: mpsc::SyncSender<Write>,
    health: Arc<Health>,
}

/// One recording a channel row names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRef {
    pub session_id: String,
    pub path: String,
    /// Whether its session has ended (or was interrupted).
    pub ended: bool,
}

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open session log {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SessionStore {
    /// [`SessionStore::open_with`] refusing on failure, with no hook (tests).
    #[cfg(test)]
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, LogFailure::Refuse, Box::new(|_, _| {}))
    }

    /// Opens (creating) the database, marks sessions left open by a previous daemon as
    /// interrupted, and starts the writer thread. `unwritable` is told about live sessions
    /// whose records cannot be written while the log refuses (see [`super::writer`]).
    pub fn open_with(
        path: &Path,
        on_failure: LogFailure,
        unwritable: UnwritableHook,
    ) -> Result<Self> {
        let conn = open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "session log {} cannot use WAL mode",
            path.display()
        );
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        anyhow::ensure!(
            version <= SCHEMA_VERSION,
            "session log {} was written by a newer sshgw (schema {version})",
            path.display()
        );
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(super::uploads::SCHEMA)?;
        conn.execute_batch(super::outbox::SCHEMA)?;
        migrate(&conn)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let interrupted = super::outbox::mark_interrupted(&conn)?;
        super::uploads::backfill(&conn)?;
        if interrupted > 0 {
            tracing::warn!(
                sessions = interrupted,
                "session log: marked sessions of a previous run as interrupted"
            );
        }
        // The log holds who connected where: keep it private.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;

        let health = Arc::new(Health::new(on_failure));
        let tx = writer::spawn(conn, health.clone(), unwritable)?;
        Ok(SessionStore {
            path: path.to_path_buf(),
            tx,
            health,
        })
    }

    /// Queues a change. When the queue is full, waits for room (back-pressure; the writer
    /// always drains it, also while the log is failing): a record is never dropped here.
    pub fn write(&self, change: Write) {
        self.health.queued();
        let change = match self.tx.try_send(change) {
            Ok(()) => return,
            Err(mpsc::TrySendError::Full(change)) => change,
            Err(mpsc::TrySendError::Disconnected(change)) => {
                let (kind, session) = change.describe();
                return self.writer_gone(&format!("{kind} of session {session}"));
            }
        };
        self.health.waited();
        let (kind, session) = change.describe();
        let what = format!("{kind} of session {session}");
        let send = || self.tx.send(change).is_ok();
        // Blocking a runtime worker would stall other tasks: hand its work over first.
        let sent = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(send)
            }
            _ => send(),
        };
        if !sent {
            self.writer_gone(&what);
        }
    }

    fn writer_gone(&self, what: &str) {
        self.health.done();
        self.health.lost(1);
        tracing::error!(change = what, "session log writer is gone; record lost");
    }

    /// Waits until every change queued so far is committed; false when the log is failing
    /// (the changes are held and written once it recovers).
    pub fn sync(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        self.write(Write::Sync(tx));
        rx.recv().unwrap_or(false)
    }

    /// Whether the log can be written, and what the writer has counted.
    pub fn health(&self) -> HealthReport {
        self.health.report()
    }

    /// The message to refuse a new connection with, while the log is failing under
    /// `on_log_failure = "refuse"`.
    pub fn refusal(&self) -> Option<String> {
        self.health.refusal()
    }

    /// Applies a reloaded `on_log_failure`.
    pub fn set_on_failure(&self, mode: LogFailure) {
        self.health.set_on_failure(mode);
    }

    /// Resolves if the writer thread dies (the log can then never be written again).
    pub async fn writer_stopped(&self) {
        self.health.writer_stopped.notified().await
    }

    pub fn list(&self, filter: &Filter) -> Result<Vec<SessionRecord>> {
        list_in(&open(&self.path)?, filter)
    }

    /// One session with its channels.
    pub fn get(&self, id: &str) -> Result<Option<SessionRecord>> {
        get_in(&open(&self.path)?, id)
    }

    /// Ended sessions, oldest first, with the recordings they own: retention's input.
    /// `shipped_only` leaves out sessions with something not yet in object storage.
    pub fn oldest_ended(
        &self,
        limit: u32,
        shipped_only: bool,
    ) -> Result<Vec<(String, i64, Vec<String>)>> {
        let conn = open(&self.path)?;
        let unshipped = if shipped_only {
            format!("AND NOT {}", super::uploads::UNSHIPPED)
        } else {
            String::new()
        };
        let mut stmt = conn.prepare(&format!(
            "SELECT s.id, s.started_at, group_concat(c.recording, char(10))
             FROM sessions s LEFT JOIN channels c ON c.session_id = s.id
             WHERE (s.ended_at IS NOT NULL OR s.close_reason IS NOT NULL) {unshipped}
             GROUP BY s.id ORDER BY s.started_at LIMIT ?"
        ))?;
        let rows = stmt.query_map([limit], |r| {
            let files: Option<String> = r.get(2)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                files
                    .map(|f| f.lines().map(str::to_string).collect())
                    .unwrap_or_default(),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Recordings the store does not hold yet, oldest first; `due_by` keeps those whose
    /// next attempt is due by then.
    pub fn pending_recordings(
        &self,
        due_by: Option<i64>,
    ) -> Result<Vec<super::uploads::PendingRecording>> {
        Ok(super::uploads::pending_recordings(
            &open(&self.path)?,
            due_by,
        )?)
    }

    /// Ended sessions whose record is due for upload, their recordings settled.
    pub fn pending_sessions(
        &self,
        due_by: i64,
        limit: u32,
    ) -> Result<Vec<super::uploads::PendingSession>> {
        Ok(super::uploads::pending_sessions(
            &open(&self.path)?,
            due_by,
            limit,
        )?)
    }

    /// Recordings counted as gone: (session, channel, path).
    pub fn gone_recordings(&self) -> Result<Vec<(String, u32, String)>> {
        Ok(super::uploads::gone_recordings(&open(&self.path)?)?)
    }

    /// The error of the latest failed upload still pending.
    pub fn upload_error(&self) -> Result<Option<String>> {
        Ok(super::uploads::last_error(&open(&self.path)?)?)
    }

    /// Up to `limit` outbox rows after `seq`, in order.
    pub fn outbox_after(&self, seq: i64, limit: u32) -> Result<Vec<super::outbox::OutboxRow>> {
        Ok(super::outbox::after(&open(&self.path)?, seq, limit)?)
    }

    /// The session log's instance id, which the central index ties to the router id.
    pub fn outbox_instance(&self) -> Result<String> {
        Ok(super::outbox::instance(&open(&self.path)?)?)
    }

    /// The outbox's last seq, pruned rows included.
    pub fn outbox_last_seq(&self) -> Result<i64> {
        Ok(super::outbox::last_seq(&open(&self.path)?)?)
    }

    /// `consumer`'s cursor in the outbox (0 before its first delivery).
    pub fn outbox_cursor(&self, consumer: &str) -> Result<i64> {
        Ok(super::outbox::cursor(&open(&self.path)?, consumer)?)
    }

    /// What `consumer` has not delivered yet.
    pub fn outbox_backlog(&self, consumer: &str) -> Result<super::outbox::Backlog> {
        let conn = open(&self.path)?;
        let cursor = super::outbox::cursor(&conn, consumer)?;
        Ok(super::outbox::backlog(&conn, cursor, super::now_micros())?)
    }

    /// How many sessions the log holds.
    pub fn session_count(&self) -> Result<u64> {
        let conn = open(&self.path)?;
        Ok(conn.query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Every recording a channel row names, with whether its session has ended.
    pub fn recording_refs(&self) -> Result<Vec<RecordingRef>> {
        let conn = open(&self.path)?;
        let mut stmt = conn.prepare(
            "SELECT c.session_id, c.recording, s.ended_at IS NOT NULL OR s.close_reason IS NOT NULL
             FROM channels c JOIN sessions s ON s.id = c.session_id
             WHERE c.recording IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RecordingRef {
                session_id: r.get(0)?,
                path: r.get(1)?,
                ended: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Bytes the log's records occupy: pages in use, not the file size. SQLite reuses
    /// freed pages but never shrinks its file, so the file size would keep retention
    /// deleting sessions that are no longer there.
    pub fn used_bytes(&self) -> Result<u64> {
        let conn = open(&self.path)?;
        let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
        let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        // Undelivered outbox rows must not make retention delete sessions: not counted.
        let outbox = super::outbox::approx_bytes(&conn)?;
        Ok(((pages - free).max(0) * size).saturating_sub(outbox).max(0) as u64)
    }
}

/// The vocabulary's TEXT columns: a name is written as its one text; read back, a text that
/// names no member of its set is a conversion error naming the column's set and what it
/// expected, never a panic.
macro_rules! text_column {
    ($($ty:ty),*) => {$(
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: UnknownName| FromSqlError::Other(Box::new(e)))
            }
        }
    )*};
}

text_column!(Action, ProgramKind, FileProtocol, FileOperation);

/// Opens the session log read-only, for readers beside the daemon (`sshgw console`).
pub fn open_read_only(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open session log {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// The `WHERE` clause of `filter` (its `ids` and `limit` aside) and its arguments.
fn conditions(filter: &Filter) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = String::from(" WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(since) = filter.since {
        sql += " AND started_at >= ?";
        args.push(since.into());
    }
    if let Some(until) = filter.until {
        sql += " AND started_at < ?";
        args.push(until.into());
    }
    if let Some(email) = &filter.email {
        sql += " AND email = ? COLLATE NOCASE";
        args.push(email.clone().into());
    }
    if let Some(device) = &filter.device {
        sql += " AND device_id = ?";
        args.push(device.clone().into());
    }
    if let Some((exact, like)) = &filter.destination {
        sql += " AND (destination = ? OR destination LIKE ?)";
        args.push(exact.clone().into());
        args.push(like.clone().into());
    }
    if filter.active {
        sql += " AND ended_at IS NULL AND close_reason IS NULL AND decision <> 'block'";
    }
    if filter.has_file_ops {
        sql += " AND EXISTS (SELECT 1 FROM file_ops f WHERE f.session_id = sessions.id)";
    }
    if let Some(ids) = &filter.ids {
        sql += &format!(" AND id IN ({})", vec!["?"; ids.len()].join(","));
        args.extend(ids.iter().map(|i| i.clone().into()));
    }
    (sql, args)
}

/// Sessions matching `filter`, newest first.
pub fn list_in(conn: &Connection, filter: &Filter) -> Result<Vec<SessionRecord>> {
    if filter.ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(vec![]);
    }
    let (conditions, args) = conditions(filter);
    let mut sql = format!("SELECT * FROM sessions{conditions} ORDER BY started_at DESC");
    if let Some(limit) = filter.limit {
        sql += &format!(" LIMIT {limit}");
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), session_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many sessions match `filter` (its `limit` aside).
pub fn count_in(conn: &Connection, filter: &Filter) -> Result<u64> {
    let (conditions, args) = conditions(filter);
    let sql = format!("SELECT count(*) FROM sessions{conditions}");
    let n: i64 = conn.query_row(&sql, rusqlite::params_from_iter(args), |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// Start (µs), user and destination of every session matching `filter`, up to `limit`
/// (the newest): the console's chart.
pub fn starts_in(
    conn: &Connection,
    filter: &Filter,
    limit: u32,
) -> Result<Vec<(i64, Option<String>, String)>> {
    let (conditions, args) = conditions(filter);
    let sql = format!(
        "SELECT started_at, email, destination FROM sessions{conditions}
         ORDER BY started_at DESC LIMIT {limit}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The number of file operations of each of `ids` that has any.
pub fn file_op_counts_in(
    conn: &Connection,
    ids: &[String],
) -> Result<std::collections::HashMap<String, u64>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT session_id, count(*) FROM file_ops WHERE session_id IN ({}) GROUP BY session_id",
        vec!["?"; ids.len()].join(",")
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(ids), |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One session with its channels and file operations.
pub fn get_in(conn: &Connection, id: &str) -> Result<Option<SessionRecord>> {
    let Some(mut record) = conn
        .query_row("SELECT * FROM sessions WHERE id = ?", [id], session_row)
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare(
        "SELECT channel, kind, command, started_at, ended_at, exit_status, exit_signal, recording, env
         FROM channels WHERE session_id = ? ORDER BY started_at, channel",
    )?;
    record.channels = stmt
        .query_map([id], |r| {
            Ok(ChannelRecord {
                channel: r.get(0)?,
                kind: r.get(1)?,
                command: r.get(2)?,
                started_at: r.get(3)?,
                ended_at: r.get(4)?,
                exit_status: r.get(5)?,
                exit_signal: r.get(6)?,
                recording: r.get(7)?,
                recording_object: None,
                env: env_column(r.get(8)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    for channel in &mut record.channels {
        if let Some(path) = &channel.recording {
            channel.recording_object = super::uploads::object_of(conn, id, path)?;
        }
    }
    let mut stmt = conn.prepare(
        "SELECT channel, at, protocol, op, path, target, flags, bytes_read, bytes_written, status, denied
         FROM file_ops WHERE session_id = ? ORDER BY at, rowid",
    )?;
    record.file_ops = stmt
        .query_map([id], |r| {
            Ok(super::FileOpRecord {
                channel: r.get(0)?,
                at: r.get(1)?,
                protocol: r.get(2)?,
                op: r.get(3)?,
                path: r.get(4)?,
                target: r.get(5)?,
                flags: r.get(6)?,
                bytes_read: r.get::<_, i64>(7)? as u64,
                bytes_written: r.get::<_, i64>(8)? as u64,
                status: r.get(9)?,
                denied: r.get(10)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(record))
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get("id")?,
        email: r.get("email")?,
        device_id: r.get("device_id")?,
        source: r.get("source")?,
        destination: r.get("destination")?,
        login: r.get("login")?,
        policy_id: r.get("policy_id")?,
        policy_name: r.get("policy_name")?,
        decision: r.get("decision")?,
        started_at: r.get("started_at")?,
        ended_at: r.get("ended_at")?,
        duration_ms: r.get::<_, Option<i64>>("duration_ms")?.map(|v| v as u64),
        bytes_from_client: r.get::<_, i64>("bytes_from_client")? as u64,
        bytes_from_server: r.get::<_, i64>("bytes_from_server")? as u64,
        close_reason: r.get("close_reason")?,
        cert_serial: r.get("cert_serial")?,
        upstream_host_key: r.get("upstream_host_key")?,
        channels: vec![],
        file_ops: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::writer::ChannelKind;

    fn record(id: &str, email: &str, started_at: i64) -> SessionRecord {
        SessionRecord {
            email: Some(email.into()),
            device_id: Some("laptop".into()),
            policy_id: Some("audit".into()),
            policy_name: Some("Audit".into()),
            ..SessionRecord::new(
                id.into(),
                "100.96.0.7:40000".into(),
                "203.0.113.10:22".into(),
                Action::AuditSsh,
                started_at,
            )
        }
    }

    #[test]
    fn records_a_session_with_channels_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        let store = SessionStore::open(&path).unwrap();
        store.write(Write::Open(Box::new(record(
            "s1",
            "jdoe@example.com",
            1_000_000,
        ))));
        store.write(Write::LoggedIn {
            id: "s1".into(),
            login: "root".into(),
            cert_serial: "18446744073709551615".into(),
            upstream_host_key: "SHA256:abc".into(),
        });
        store.write(Write::ChannelOpen {
            session_id: "s1".into(),
            record: ChannelRecord {
                channel: 2,
                kind: ProgramKind::Exec,
                command: Some("uptime".into()),
                started_at: 1_100_000,
                ended_at: None,
                exit_status: None,
                exit_signal: None,
                recording: None,
                recording_object: None,
                env: Vec::new(),
            },
        });
        store.write(Write::ChannelClose {
            session_id: "s1".into(),
            channel: 2,
            ended_at: 1_200_000,
            exit_status: Some(3),
            exit_signal: None,
        });
        store.write(Write::Close {
            id: "s1".into(),
            ended_at: 2_000_000,
            duration_ms: 1000,
            bytes_from_client: 10,
            bytes_from_server: 20,
            close_reason: "client".into(),
        });
        store.write(Write::Open(Box::new(record(
            "s2",
            "other@example.com",
            3_000_000,
        ))));
        store.sync();

        let s1 = store.get("s1").unwrap().unwrap();
        assert_eq!(s1.login.as_deref(), Some("root"));
        assert_eq!(s1.cert_serial.as_deref(), Some("18446744073709551615"));
        assert_eq!(s1.close_reason.as_deref(), Some("client"));
        assert_eq!(s1.channels.len(), 1);
        assert_eq!(s1.channels[0].exit_status, Some(3));

        let by_user = store
            .list(&Filter {
                email: Some("JDOE@example.com".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(by_user.len(), 1);
        let since = store
            .list(&Filter {
                since: Some(2_500_000),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            since.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["s2"]
        );

        let mode: String = open(&path)
            .unwrap()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(store);

        // A restart marks the never-closed session as interrupted.
        let store = SessionStore::open(&path).unwrap();
        let s2 = store.get("s2").unwrap().unwrap();
        assert_eq!(
            s2.close_reason.as_deref(),
            Some("interrupted: sshgw stopped")
        );
        let json = serde_json::to_value(&s1).unwrap();
        assert!(
            json["started_at"]
                .as_str()
                .unwrap()
                .starts_with("1970-01-01T00:00:01")
        );
        let back: SessionRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, s1);
    }

    /// A row whose vocabulary column holds a text the gateway never writes (a hand edit, a
    /// newer version's value) is an error that names the column's set, not a panic.
    #[test]
    fn an_unknown_text_in_a_row_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.db");
        let store = SessionStore::open(&path).unwrap();
        store.write(Write::Open(Box::new(record("s1", "a@example.com", 1))));
        store.write(Write::ChannelOpen {
            session_id: "s1".into(),
            record: ChannelRecord::program(0, &ChannelKind::Shell, 2, None, vec![]),
        });
        store.sync();
        let conn = open(&path).unwrap();
        conn.execute("UPDATE channels SET kind = 'x11'", [])
            .unwrap();
        let err = format!("{:#}", store.get("s1").unwrap_err());
        assert!(err.contains(r#"unknown channel kind "x11""#), "{err}");
        conn.execute("UPDATE sessions SET decision = 'allow'", [])
            .unwrap();
        let err = format!("{:#}", store.list(&Filter::default()).unwrap_err());
        assert!(
            err.contains(r#"unknown decision "allow" (expected one of: audit_ssh, block)"#),
            "{err}"
        );
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[test]
    fn a_full_queue_makes_the_producer_wait_not_drop() {
        let (tx, rx) = mpsc::sync_channel(1);
        let store = SessionStore {
            path: PathBuf::from("/nonexistent"),
            tx,
            health: Arc::new(Health::new(LogFailure::Refuse)),
        };
        store.write(Write::Delete(vec![]));
        let producer = {
            let store = store.clone();
            std::thread::spawn(move || store.write(Write::Delete(vec!["second".into()])))
        };
        // Readiness: the producer has found the queue full and is waiting.
        while store.health().queue_waits == 0 {
            std::thread::yield_now();
        }
        assert!(!producer.is_finished());
        assert!(matches!(rx.recv(), Ok(Write::Delete(ids)) if ids.is_empty()));
        producer.join().unwrap();
        assert!(matches!(rx.recv(), Ok(Write::Delete(ids)) if ids == ["second"]));
        assert_eq!(store.health().queued, 2);
    }
}

/// The `env` column: JSON `[[name, value], …]`, or NULL for none.
pub(super) fn env_column(text: Option<String>) -> Vec<(String, String)> {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}
