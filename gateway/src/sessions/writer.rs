//! The session log's writer: one thread that owns the write connection and applies the
//! changes the relay queues, in order.
//!
//! Changes arrive through a bounded queue ([`QUEUE_CAP`]); when it is full, producers wait
//! (back-pressure) instead of dropping an audit record. The writer commits what is queued
//! as one group of up to [`GROUP_MAX`] changes, each in its own savepoint, so a change the
//! database rejects rolls back only itself, never another session's records.
//!
//! A storage failure (disk full, I/O error, a locked or unreadable file) commits nothing of
//! the group and makes the log unhealthy ([`Health`]). The group and everything queued
//! behind it are held, in order, and retried every [`RETRY_INTERVAL`] until they are
//! written; up to [`HELD_MAX`] changes or [`HELD_MAX_BYTES`] are held, and what arrives
//! beyond that is dropped and counted as lost. Under `on_log_failure = "refuse"`, a live
//! session with new activity (its start, login, a channel, a file operation) that cannot be
//! written is handed to the `unwritable` hook, which ends it.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use rusqlite::{Connection, ErrorCode, params};

use super::change::Write;
use super::{ChannelRecord, FileOpRecord, SessionRecord, health::Health};

/// Changes waiting for the writer before producers have to wait.
pub const QUEUE_CAP: usize = 1024;
/// Changes per transaction.
const GROUP_MAX: usize = 256;
/// Changes held while the log cannot be written, and their approximate size.
pub const HELD_MAX: usize = 16_384;
pub const HELD_MAX_BYTES: usize = 32 << 20;
/// How often a failing log is retried.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Called with (session id, message) for a live session whose new activity cannot be
/// written while the log refuses.
pub type UnwritableHook = Box<dyn Fn(&str, &str) + Send>;

/// Starts the writer thread on `conn`; returns the sending side of its queue.
pub(super) fn spawn(
    conn: Connection,
    health: Arc<Health>,
    unwritable: UnwritableHook,
) -> std::io::Result<mpsc::SyncSender<Write>> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_CAP);
    thread::Builder::new()
        .name("session-log".into())
        .spawn(move || {
            let _guard = StopGuard(health.clone());
            Writer {
                conn,
                rx,
                health,
                held: VecDeque::new(),
                held_bytes: 0,
                unwritable,
                reported: HashSet::new(),
            }
            .run()
        })?;
    Ok(tx)
}

/// Marks the log failing for good if the writer thread dies.
struct StopGuard(Arc<Health>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.failed("the session log writer stopped");
            tracing::error!("session log writer stopped: nothing more can be written");
            self.0.writer_stopped.notify_one();
        }
    }
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Write>,
    health: Arc<Health>,
    /// Changes taken from the queue and not yet committed, in order.
    held: VecDeque<Write>,
    held_bytes: usize,
    unwritable: UnwritableHook,
    /// Sessions already handed to `unwritable` during this failure.
    reported: HashSet<String>,
}

impl Writer {
    fn run(mut self) {
        loop {
            if self.held.is_empty() {
                let Ok(change) = self.rx.recv() else { return };
                self.take(change);
            }
            while self.held.len() < GROUP_MAX {
                let Ok(change) = self.rx.try_recv() else {
                    break;
                };
                self.take(change);
            }
            match self.flush() {
                Ok(()) => self.recovered(),
                Err(e) => {
                    self.storage_failed(&e);
                    if !self.wait_retry() {
                        tracing::error!(
                            changes = self.held.len(),
                            "session log: stopping with changes that could not be written"
                        );
                        return;
                    }
                }
            }
        }
    }

    /// Accepts a change from the queue: held for the next commit or, while the log is
    /// failing, answered (sync) or dropped when the held changes are at their cap.
    fn take(&mut self, change: Write) {
        let size = change.approx_bytes();
        if self.health.is_failing() {
            if let Write::Sync(done) = change {
                let _ = done.send(false);
                self.health.done();
                return;
            }
            self.report_unwritable(&change);
            if self.held.len() >= HELD_MAX || self.held_bytes + size > HELD_MAX_BYTES {
                self.drop_change(&change);
                return;
            }
        }
        self.held_bytes += size;
        self.held.push_back(change);
    }

    /// Loses a change that arrives while the log is failing and the held changes are at
    /// their cap: counted, and logged (the first and every thousandth).
    fn drop_change(&mut self, change: &Write) {
        let (kind, session) = change.describe();
        let before = self.health.report().lost;
        if before.is_multiple_of(1000) {
            tracing::error!(
                kind,
                session,
                lost = before + 1,
                "session log: change dropped: the log is failing and the records waiting for it are at their cap"
            );
        }
        self.health.lost(1);
        self.health.done();
    }

    /// Commits the first group of held changes. `Err` is a storage failure: nothing was
    /// committed and every change stays held.
    fn flush(&mut self) -> rusqlite::Result<()> {
        let n = self.held.len().min(GROUP_MAX);
        let mut rejected = Vec::new();
        let mut tx = self.conn.transaction()?;
        for (i, change) in self.held.iter().take(n).enumerate() {
            if matches!(change, Write::Sync(_)) {
                continue;
            }
            let savepoint = tx.savepoint()?;
            match apply(&savepoint, change) {
                Ok(()) => savepoint.commit()?,
                Err(e) if is_storage(&e) => return Err(e),
                // Dropping the savepoint rolls back this change alone.
                Err(e) => rejected.push((i, e)),
            }
        }
        tx.commit()?;
        for (i, change) in self.held.drain(..n).enumerate() {
            self.held_bytes -= change.approx_bytes();
            self.health.done();
            if let Write::Sync(done) = change {
                let _ = done.send(true);
            } else if let Some((_, e)) = rejected.iter().find(|(r, _)| *r == i) {
                let (kind, session) = change.describe();
                tracing::error!(kind, session, error = %e, "session log: change rejected by the database; it is lost");
                self.health.lost(1);
            }
        }
        Ok(())
    }

    fn storage_failed(&mut self, e: &rusqlite::Error) {
        let error = e.to_string();
        if self.health.failed(&error) {
            tracing::error!(
                error,
                held = self.held.len(),
                refusing = self.health.refusing(),
                "session log: cannot write; records wait in memory and are retried every second"
            );
        }
        let held = std::mem::take(&mut self.held);
        for change in held {
            if let Write::Sync(done) = &change {
                let _ = done.send(false);
                self.held_bytes -= change.approx_bytes();
                self.health.done();
            } else {
                self.report_unwritable(&change);
                self.held.push_back(change);
            }
        }
    }

    fn report_unwritable(&mut self, change: &Write) {
        if let Some(session) = change.activity_of()
            && self.health.refusing()
            && self.reported.insert(session.to_string())
        {
            (self.unwritable)(session, &self.health.ended());
        }
    }

    fn recovered(&mut self) {
        if self.held.is_empty()
            && let Some((error, since)) = self.health.recovered()
        {
            self.reported.clear();
            let secs = (super::now_micros() - since) / 1_000_000;
            tracing::warn!(
                failed_for_secs = secs,
                error,
                "session log: writable again; the held records are written"
            );
        }
    }

    /// Keeps taking changes until the next retry is due; false when every producer is gone.
    fn wait_retry(&mut self) -> bool {
        let deadline = Instant::now() + RETRY_INTERVAL;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            match self.rx.recv_timeout(left) {
                Ok(change) => self.take(change),
                Err(mpsc::RecvTimeoutError::Timeout) => return true,
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
    }
}

/// Whether an error is the storage's (worth retrying) rather than the change's own.
fn is_storage(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => !matches!(
            f.code,
            ErrorCode::ConstraintViolation
                | ErrorCode::TooBig
                | ErrorCode::TypeMismatch
                | ErrorCode::ApiMisuse
                | ErrorCode::ParameterOutOfRange
        ),
        _ => false,
    }
}

/// Applies one change and appends its outbox event, in the caller's savepoint.
fn apply(conn: &Connection, change: &Write) -> rusqlite::Result<()> {
    let touched = apply_change(conn, change)?;
    super::outbox::append(conn, change, touched)
}

/// Applies one change; the rows it touched (for updates: whether it matched anything).
fn apply_change(conn: &Connection, change: &Write) -> rusqlite::Result<usize> {
    Ok(match change {
        Write::Open(s) => insert_session(conn, s)?,
        Write::LoggedIn {
            id,
            login,
            cert_serial,
            upstream_host_key,
        } => conn.execute(
            "UPDATE sessions SET login = ?2, cert_serial = ?3, upstream_host_key = ?4 WHERE id = ?1",
            params![id, login, cert_serial, upstream_host_key],
        )?,
        Write::Close {
            id,
            ended_at,
            duration_ms,
            bytes_from_client,
            bytes_from_server,
            close_reason,
        } => conn.execute(
            "UPDATE sessions SET ended_at = ?2, duration_ms = ?3, bytes_from_client = ?4,
                    bytes_from_server = ?5, close_reason = ?6 WHERE id = ?1",
            params![
                id,
                ended_at,
                *duration_ms as i64,
                *bytes_from_client as i64,
                *bytes_from_server as i64,
                close_reason
            ],
        )? + super::uploads::enqueue_record(conn, id)?,
        Write::ChannelOpen { session_id, record } => {
            insert_channel(conn, session_id, record)?;
            if let Some(path) = &record.recording {
                super::uploads::enqueue_recording(conn, session_id, record.channel, path)?;
            }
            0
        }
        Write::ChannelClose {
            session_id,
            channel,
            ended_at,
            exit_status,
            exit_signal,
        } => conn.execute(
            "UPDATE channels SET ended_at = ?3, exit_status = ?4, exit_signal = ?5
                 WHERE session_id = ?1 AND channel = ?2 AND ended_at IS NULL",
            params![session_id, channel, ended_at, exit_status, exit_signal],
        )?,
        Write::FileOp { session_id, record } => insert_file_op(conn, session_id, record)?,
        Write::Delete(ids) => {
            for id in ids {
                conn.execute("DELETE FROM uploads WHERE session_id = ?", [id])?;
                conn.execute("DELETE FROM file_ops WHERE session_id = ?", [id])?;
                conn.execute("DELETE FROM channels WHERE session_id = ?", [id])?;
                conn.execute("DELETE FROM sessions WHERE id = ?", [id])?;
            }
            0
        }
        Write::Upload(result) => super::uploads::apply(conn, result)?,
        Write::Adopt(adopted) => super::uploads::adopt(conn, adopted)?,
        Write::Admin(action) => super::outbox::insert_admin(conn, action)?,
        Write::Shipped { consumer, seq } => super::outbox::advance(conn, consumer, *seq)?,
        Write::PruneOutbox(consumers) => super::outbox::prune(conn, consumers)?,
        Write::Sync(_) => 0,
    })
}

fn insert_session(conn: &Connection, s: &SessionRecord) -> rusqlite::Result<usize> {
    conn.execute(
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
    )
}

fn insert_channel(
    conn: &Connection,
    session_id: &str,
    c: &ChannelRecord,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO channels (session_id, channel, kind, command, started_at, recording, env)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            session_id,
            c.channel,
            c.kind,
            c.command,
            c.started_at,
            c.recording,
            (!c.env.is_empty())
                .then(|| serde_json::to_string(&c.env).ok())
                .flatten()
        ],
    )
}

fn insert_file_op(
    conn: &Connection,
    session_id: &str,
    f: &FileOpRecord,
) -> rusqlite::Result<usize> {
    conn.execute(
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
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::LogFailure,
        policy::model::Action,
        sessions::{ProgramKind, store::SessionStore},
    };
    use std::sync::Mutex;

    fn open(id: &str, decision: Action) -> Write {
        Write::Open(Box::new(SessionRecord::new(
            id.into(),
            "100.96.0.7:40000".into(),
            "203.0.113.10:22".into(),
            decision,
            1,
        )))
    }

    fn channel(session: &str) -> Write {
        Write::ChannelOpen {
            session_id: session.into(),
            record: ChannelRecord {
                channel: 0,
                kind: ProgramKind::Exec,
                command: Some("true".into()),
                started_at: 2,
                ended_at: None,
                exit_status: None,
                exit_signal: None,
                recording: None,
                recording_object: None,
                env: Vec::new(),
            },
        }
    }

    #[test]
    fn a_rejected_change_rolls_back_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("s.db")).unwrap();
        store.write(open("s1", Action::AuditSsh));
        store.write(open("s1", Action::AuditSsh)); // duplicate id
        store.write(channel("no-such-session")); // foreign key
        store.write(open("s2", Action::AuditSsh));
        store.write(channel("s2"));
        assert!(store.sync());
        assert!(store.get("s1").unwrap().is_some());
        assert_eq!(store.get("s2").unwrap().unwrap().channels.len(), 1);
        let health = store.health();
        assert!(health.is_ok(), "{health:?}");
        assert_eq!((health.lost, health.queued), (2, 0));
    }

    /// A writer on a database that may grow by no more pages (SQLITE_FULL, as on a full
    /// disk), run by hand; returns it with the sessions its hook was called for.
    fn full_writer(dir: &std::path::Path) -> (Writer, Arc<Mutex<Vec<String>>>) {
        let path = dir.join("s.db");
        drop(SessionStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        let pages: i64 = conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages).unwrap();
        let ended = Arc::new(Mutex::new(Vec::new()));
        let seen = ended.clone();
        let (_tx, rx) = mpsc::sync_channel(1);
        let writer = Writer {
            conn,
            rx,
            health: Arc::new(Health::new(LogFailure::Refuse)),
            held: VecDeque::new(),
            held_bytes: 0,
            unwritable: Box::new(move |id, message| {
                assert!(message.contains("cannot write its session log"));
                seen.lock().unwrap().push(id.to_string());
            }),
            reported: HashSet::new(),
        };
        (writer, ended)
    }

    /// What `take` would have counted, for changes handed to the writer directly.
    fn give(w: &mut Writer, change: Write) {
        w.health.queued();
        w.take(change);
    }

    #[test]
    fn a_full_log_holds_changes_in_order_until_it_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, ended) = full_writer(dir.path());
        // Enough rows that the tables need new pages.
        for i in 0..300 {
            give(&mut w, open(&format!("a{i}"), Action::AuditSsh));
        }
        give(&mut w, open("blocked", Action::Block));
        let (done, answer) = mpsc::channel();
        give(&mut w, Write::Sync(done));
        let e = w.flush().unwrap_err();
        w.storage_failed(&e);
        assert_eq!(answer.recv(), Ok(false));
        let report = w.health.report();
        assert_eq!(report.state, "failing");
        assert!(report.error.unwrap().contains("full"));
        assert_eq!(report.queued, 301);
        assert!(w.health.refusal().is_some());
        // Live sessions with unwritten activity are ended once; refused ones are not.
        assert_eq!(ended.lock().unwrap().len(), 300);
        assert!(!ended.lock().unwrap().contains(&"blocked".to_string()));
        give(&mut w, channel("a0"));
        assert_eq!(ended.lock().unwrap().len(), 300);
        assert!(w.flush().is_err());

        w.conn
            .pragma_update(None, "max_page_count", 100_000)
            .unwrap();
        while !w.held.is_empty() {
            w.flush().unwrap();
        }
        w.recovered();
        let report = w.health.report();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!((report.queued, report.lost), (0, 0));
        assert!(w.health.refusal().is_none());
        let channels: i64 = w
            .conn
            .query_row(
                "SELECT count(*) FROM channels WHERE session_id = 'a0'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(channels, 1, "the channel row follows its session's row");
    }

    #[test]
    fn a_failing_log_holds_a_bounded_number_of_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = full_writer(dir.path());
        w.health.failed("database or disk is full");
        for i in 0..HELD_MAX + 5 {
            give(&mut w, open(&format!("s{i}"), Action::Block));
        }
        assert_eq!(w.held.len(), HELD_MAX);
        let report = w.health.report();
        assert_eq!((report.lost, report.queued), (5, HELD_MAX as u64));
        // A big change counts by its size.
        w.held.clear();
        w.held_bytes = HELD_MAX_BYTES - 100;
        give(&mut w, open("small", Action::Block));
        assert_eq!(w.health.report().lost, 6);
    }
}
