//! SQLite storage of the session log (WAL mode). All writes go through one thread that
//! owns the write connection and batches whatever is queued into one transaction; reads
//! open their own connection, which WAL lets run alongside the writer.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};

use super::{ChannelRecord, SessionRecord};

const SCHEMA_VERSION: i64 = 2;

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

/// A change to the log, applied in order by the writer thread.
#[derive(Debug)]
pub enum Write {
    Open(Box<SessionRecord>),
    LoggedIn {
        id: String,
        login: String,
        cert_serial: String,
        upstream_host_key: String,
    },
    Close {
        id: String,
        ended_at: i64,
        duration_ms: u64,
        bytes_from_client: u64,
        bytes_from_server: u64,
        close_reason: String,
    },
    ChannelOpen {
        session_id: String,
        record: ChannelRecord,
    },
    ChannelClose {
        session_id: String,
        channel: u32,
        ended_at: i64,
        exit_status: Option<u32>,
        exit_signal: Option<String>,
    },
    FileOp {
        session_id: String,
        record: super::FileOpRecord,
    },
    /// Deletes sessions (and their channels) by id.
    Delete(Vec<String>),
    /// Answers once everything queued before it is committed.
    Sync(std::sync::mpsc::Sender<()>),
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<i64>,
    pub email: Option<String>,
    pub ids: Option<Vec<String>>,
    pub limit: Option<u32>,
}

#[derive(Clone)]
pub struct SessionStore {
    path: PathBuf,
    tx: mpsc::Sender<Write>,
}

fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open session log {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SessionStore {
    /// Opens (creating) the database, marks sessions left open by a previous daemon as
    /// interrupted, and starts the writer thread.
    pub fn open(path: &Path) -> Result<Self> {
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
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let interrupted = conn.execute(
            "UPDATE sessions SET close_reason = 'interrupted: sshgw stopped' WHERE ended_at IS NULL AND close_reason IS NULL",
            [],
        )?;
        if interrupted > 0 {
            tracing::warn!(
                sessions = interrupted,
                "session log: marked sessions of a previous run as interrupted"
            );
        }
        // The log holds who connected where: keep it private.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;

        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("session-log".into())
            .spawn(move || writer(conn, rx))?;
        Ok(SessionStore {
            path: path.to_path_buf(),
            tx,
        })
    }

    /// Queues a change. Never blocks.
    pub fn write(&self, change: Write) {
        if self.tx.send(change).is_err() {
            tracing::error!("session log writer is gone; record lost");
        }
    }

    /// Waits until every change queued so far is committed.
    pub fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        self.write(Write::Sync(tx));
        let _ = rx.recv();
    }

    pub fn list(&self, filter: &Filter) -> Result<Vec<SessionRecord>> {
        let conn = open(&self.path)?;
        let mut sql = String::from("SELECT * FROM sessions WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(since) = filter.since {
            sql += " AND started_at >= ?";
            args.push(since.into());
        }
        if let Some(email) = &filter.email {
            sql += " AND email = ? COLLATE NOCASE";
            args.push(email.clone().into());
        }
        if let Some(ids) = &filter.ids {
            if ids.is_empty() {
                return Ok(vec![]);
            }
            sql += &format!(" AND id IN ({})", vec!["?"; ids.len()].join(","));
            args.extend(ids.iter().map(|i| i.clone().into()));
        }
        sql += " ORDER BY started_at DESC";
        if let Some(limit) = filter.limit {
            sql += &format!(" LIMIT {limit}");
        }
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), session_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One session with its channels.
    pub fn get(&self, id: &str) -> Result<Option<SessionRecord>> {
        let conn = open(&self.path)?;
        let Some(mut record) = conn
            .query_row("SELECT * FROM sessions WHERE id = ?", [id], session_row)
            .optional()?
        else {
            return Ok(None);
        };
        let mut stmt = conn.prepare(
            "SELECT channel, kind, command, started_at, ended_at, exit_status, exit_signal, recording
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
                })
            })?
            .collect::<Result<_, _>>()?;
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

    /// Ended sessions, oldest first, with the recordings they own: retention's input.
    pub fn oldest_ended(&self, limit: u32) -> Result<Vec<(String, i64, Vec<String>)>> {
        let conn = open(&self.path)?;
        let mut stmt = conn.prepare(
            "SELECT s.id, s.started_at, group_concat(c.recording, char(10))
             FROM sessions s LEFT JOIN channels c ON c.session_id = s.id
             WHERE s.ended_at IS NOT NULL OR s.close_reason IS NOT NULL
             GROUP BY s.id ORDER BY s.started_at LIMIT ?",
        )?;
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

    /// Bytes the log's records occupy: pages in use, not the file size. SQLite reuses
    /// freed pages but never shrinks its file, so the file size would keep retention
    /// deleting sessions that are no longer there.
    pub fn used_bytes(&self) -> Result<u64> {
        let conn = open(&self.path)?;
        let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
        let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        Ok(((pages - free).max(0) * size) as u64)
    }
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

fn writer(mut conn: Connection, rx: mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut syncs = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for change in batch {
                match change {
                    Write::Sync(done) => syncs.push(done),
                    change => apply(&tx, change)?,
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "session log write failed");
        }
        for done in syncs {
            let _ = done.send(());
        }
    }
}

fn apply(tx: &rusqlite::Transaction<'_>, change: Write) -> rusqlite::Result<()> {
    match change {
        Write::Open(s) => {
            let s = *s;
            tx.execute(
                "INSERT INTO sessions (id, email, device_id, source, destination, login, policy_id,
                    policy_name, decision, started_at, ended_at, duration_ms, bytes_from_client,
                    bytes_from_server, close_reason, cert_serial, upstream_host_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![
                    s.id, s.email, s.device_id, s.source, s.destination, s.login, s.policy_id,
                    s.policy_name, s.decision, s.started_at, s.ended_at,
                    s.duration_ms.map(|v| v as i64), s.bytes_from_client as i64,
                    s.bytes_from_server as i64, s.close_reason, s.cert_serial,
                    s.upstream_host_key
                ],
            )?;
        }
        Write::LoggedIn {
            id,
            login,
            cert_serial,
            upstream_host_key,
        } => {
            tx.execute(
                "UPDATE sessions SET login = ?2, cert_serial = ?3, upstream_host_key = ?4 WHERE id = ?1",
                params![id, login, cert_serial, upstream_host_key],
            )?;
        }
        Write::Close {
            id,
            ended_at,
            duration_ms,
            bytes_from_client,
            bytes_from_server,
            close_reason,
        } => {
            tx.execute(
                "UPDATE sessions SET ended_at = ?2, duration_ms = ?3, bytes_from_client = ?4,
                    bytes_from_server = ?5, close_reason = ?6 WHERE id = ?1",
                params![
                    id,
                    ended_at,
                    duration_ms as i64,
                    bytes_from_client as i64,
                    bytes_from_server as i64,
                    close_reason
                ],
            )?;
        }
        Write::ChannelOpen {
            session_id,
            record: c,
        } => {
            tx.execute(
                "INSERT INTO channels (session_id, channel, kind, command, started_at, recording)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    session_id,
                    c.channel,
                    c.kind,
                    c.command,
                    c.started_at,
                    c.recording
                ],
            )?;
        }
        Write::ChannelClose {
            session_id,
            channel,
            ended_at,
            exit_status,
            exit_signal,
        } => {
            tx.execute(
                "UPDATE channels SET ended_at = ?3, exit_status = ?4, exit_signal = ?5
                 WHERE session_id = ?1 AND channel = ?2 AND ended_at IS NULL",
                params![session_id, channel, ended_at, exit_status, exit_signal],
            )?;
        }
        Write::FileOp {
            session_id,
            record: f,
        } => {
            tx.execute(
                "INSERT INTO file_ops (session_id, channel, at, protocol, op, path, target, flags,
                    bytes_read, bytes_written, status, denied)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    session_id,
                    f.channel,
                    f.at,
                    f.protocol,
                    f.op,
                    f.path,
                    f.target,
                    f.flags,
                    f.bytes_read as i64,
                    f.bytes_written as i64,
                    f.status,
                    f.denied
                ],
            )?;
        }
        Write::Delete(ids) => {
            for id in ids {
                tx.execute("DELETE FROM file_ops WHERE session_id = ?", [&id])?;
                tx.execute("DELETE FROM channels WHERE session_id = ?", [&id])?;
                tx.execute("DELETE FROM sessions WHERE id = ?", [&id])?;
            }
        }
        Write::Sync(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
                "audit_ssh",
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
                kind: "exec".into(),
                command: Some("uptime".into()),
                started_at: 1_100_000,
                ended_at: None,
                exit_status: None,
                exit_signal: None,
                recording: None,
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
}
