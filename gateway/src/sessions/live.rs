//! Sessions in progress: listed, shown and killed through the control API. Each relayed
//! connection reports to a [`Tracker`], which keeps its live entry and the stored record
//! in step.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::sync::Notify;

use super::{
    ChannelRecord, SessionRecord, now_micros,
    store::{SessionStore, UnwritableHook, Write},
};

/// Bytes relayed on a connection, updated by the channel pumps.
#[derive(Debug, Default)]
pub struct ByteCounters {
    pub from_client: AtomicU64,
    pub from_server: AtomicU64,
}

struct Entry {
    record: Mutex<SessionRecord>,
    bytes: Arc<ByteCounters>,
    kill: Arc<Notify>,
    /// Why the session is being killed; told to the user.
    kill_reason: Mutex<Option<KillReason>>,
}

impl Entry {
    fn snapshot(&self) -> SessionRecord {
        let mut record = self.record.lock().expect("session lock poisoned").clone();
        self.add_bytes(&mut record);
        record
    }

    /// The record without its file operations (what a listing shows).
    fn summary(&self) -> SessionRecord {
        let mut record = {
            let mut r = self.record.lock().expect("session lock poisoned");
            // Set aside, not cloned: up to LIVE_FILE_OPS of them.
            let file_ops = std::mem::take(&mut r.file_ops);
            let copy = r.clone();
            r.file_ops = file_ops;
            copy
        };
        self.add_bytes(&mut record);
        record
    }

    fn add_bytes(&self, record: &mut SessionRecord) {
        record.bytes_from_client = self.bytes.from_client.load(Ordering::Relaxed);
        record.bytes_from_server = self.bytes.from_server.load(Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct LiveSessions {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Notified whenever a session ends (for draining on shutdown).
    ended: Notify,
}

/// File operations a live record keeps (the session log has every one).
pub const LIVE_FILE_OPS: usize = 1000;
/// Channels a live record keeps: every open one up to this many, then the newest ended
/// ones (the session log has every one).
pub const LIVE_CHANNELS: usize = 64;
/// Bytes of an exec command line a live record keeps (the session log has all of it).
pub const LIVE_COMMAND_BYTES: usize = 1024;

/// Why the gateway asks a live session to end (see [`LiveSessions::kill`]). The relay
/// tells the user [`KillReason::user_message`] and logs the close reason it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillReason {
    /// An administrator, through the control API.
    Admin,
    /// The gateway stops and its drain timed out.
    Shutdown,
    /// The gateway hit an internal error and exits to be restarted.
    Restart,
    /// The session's records cannot be written while the log refuses; the message is
    /// the session log's (see [`super::health::ended_message`]).
    LogUnwritable(String),
}

impl KillReason {
    /// What the user is told.
    pub fn user_message(&self) -> String {
        match self {
            KillReason::Admin => "sshgw: session terminated by an administrator".into(),
            KillReason::Shutdown => "sshgw: the gateway is shutting down".into(),
            KillReason::Restart => {
                "sshgw: the gateway hit an internal error and is restarting".into()
            }
            KillReason::LogUnwritable(message) => message.clone(),
        }
    }
}

impl LiveSessions {
    fn entries(&self) -> Vec<Arc<Entry>> {
        self.entries
            .lock()
            .expect("live sessions lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.entries
            .lock()
            .expect("live sessions lock poisoned")
            .get(id)
            .cloned()
    }

    /// Every live session, newest first, as listed: without file operations, with at
    /// most [`LIVE_CHANNELS`] channels each.
    pub fn list(&self) -> Vec<SessionRecord> {
        let mut out: Vec<SessionRecord> = self.entries().iter().map(|e| e.summary()).collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.started_at));
        out
    }

    /// One live session as listed (see [`LiveSessions::list`]).
    pub fn summary(&self, id: &str) -> Option<SessionRecord> {
        self.entry(id).map(|e| e.summary())
    }

    /// One live session with what its live record keeps (see [`complete`] for all of it).
    pub fn get(&self, id: &str) -> Option<SessionRecord> {
        self.entry(id).map(|e| e.snapshot())
    }

    /// The ids of the live sessions.
    pub fn ids(&self) -> std::collections::HashSet<String> {
        self.entries
            .lock()
            .expect("live sessions lock poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Live sessions and the bytes they relayed so far, without copying any record.
    pub fn totals(&self) -> (usize, u64, u64) {
        let entries = self.entries();
        let (mut from_client, mut from_server) = (0, 0);
        for e in &entries {
            from_client += e.bytes.from_client.load(Ordering::Relaxed);
            from_server += e.bytes.from_server.load(Ordering::Relaxed);
        }
        (entries.len(), from_client, from_server)
    }

    /// The session log's hook: ends a live session whose records cannot be written while
    /// the log refuses (`[sessions] on_log_failure = "refuse"`), telling the user why.
    pub fn unwritable_hook(self: &Arc<Self>) -> UnwritableHook {
        let live = Arc::downgrade(self);
        Box::new(move |session, message| {
            let Some(live) = live.upgrade() else { return };
            if live.kill(session, KillReason::LogUnwritable(message.to_string())) {
                tracing::warn!(
                    session,
                    "ending the session: its records cannot be written to the session log"
                );
            }
        })
    }

    /// Asks session `id` to end for `reason`; false when it is not live.
    pub fn kill(&self, id: &str, reason: KillReason) -> bool {
        match self
            .entries
            .lock()
            .expect("live sessions lock poisoned")
            .get(id)
        {
            Some(entry) => {
                *entry.kill_reason.lock().expect("kill reason poisoned") = Some(reason);
                entry.kill.notify_one();
                true
            }
            None => false,
        }
    }

    /// Asks every live session to end.
    pub fn kill_all(&self, reason: KillReason) -> usize {
        let ids: Vec<String> = self
            .entries
            .lock()
            .expect("live sessions lock poisoned")
            .keys()
            .cloned()
            .collect();
        ids.iter()
            .filter(|id| self.kill(id, reason.clone()))
            .count()
    }

    pub fn count(&self) -> usize {
        self.entries
            .lock()
            .expect("live sessions lock poisoned")
            .len()
    }

    /// Resolves once no session is live.
    pub async fn drained(&self) {
        loop {
            let ended = self.ended.notified();
            if self.count() == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// One connection's bookkeeping: stored record, live entry, kill switch.
pub struct Tracker {
    id: String,
    started: Instant,
    entry: Arc<Entry>,
    live: Arc<LiveSessions>,
    store: SessionStore,
    closed: AtomicBool,
    /// Channels the device opened and has not closed (see
    /// [`Tracker::has_open_device_channel`]).
    device_channels: Mutex<std::collections::BTreeSet<u32>>,
}

impl Tracker {
    /// Records the new connection and makes it visible as live.
    pub fn open(record: SessionRecord, store: SessionStore, live: Arc<LiveSessions>) -> Self {
        let entry = Arc::new(Entry {
            record: Mutex::new(record.clone()),
            bytes: Default::default(),
            kill: Default::default(),
            kill_reason: Default::default(),
        });
        let id = record.id.clone();
        // Live first: a record that cannot be written must find the session to end it.
        live.entries
            .lock()
            .expect("live sessions lock poisoned")
            .insert(id.clone(), entry.clone());
        store.write(Write::Open(Box::new(record)));
        Tracker {
            id,
            started: Instant::now(),
            entry,
            live,
            store,
            closed: AtomicBool::new(false),
            device_channels: Default::default(),
        }
    }

    pub fn bytes(&self) -> Arc<ByteCounters> {
        self.entry.bytes.clone()
    }

    /// Resolves when the session is killed (see [`Tracker::kill_reason`]).
    pub fn kill_switch(&self) -> Arc<Notify> {
        self.entry.kill.clone()
    }

    pub fn kill_reason(&self) -> KillReason {
        self.entry
            .kill_reason
            .lock()
            .expect("kill reason poisoned")
            .clone()
            .unwrap_or(KillReason::Admin)
    }

    fn update(&self, f: impl FnOnce(&mut SessionRecord)) {
        f(&mut self.entry.record.lock().expect("session lock poisoned"));
    }

    pub fn logged_in(&self, login: &str, cert_serial: u64, upstream_host_key: &str) {
        self.update(|r| {
            r.login = Some(login.to_string());
            r.cert_serial = Some(cert_serial.to_string());
            r.upstream_host_key = Some(upstream_host_key.to_string());
        });
        self.store.write(Write::LoggedIn {
            id: self.id.clone(),
            login: login.to_string(),
            cert_serial: cert_serial.to_string(),
            upstream_host_key: upstream_host_key.to_string(),
        });
    }

    /// The login the user asked for, also when it is refused.
    pub fn login_attempted(&self, login: &str) {
        self.update(|r| r.login = Some(login.to_string()));
    }

    /// Logs a program. The live record keeps at most [`LIVE_CHANNELS`] channels, with
    /// command lines cut at [`LIVE_COMMAND_BYTES`] (every snapshot clones them); the store
    /// has them all, in full.
    pub fn channel_opened(&self, record: ChannelRecord) {
        self.update(|r| keep_channel(&mut r.channels, live_copy(&record)));
        self.store.write(Write::ChannelOpen {
            session_id: self.id.clone(),
            record,
        });
    }

    pub fn channel_closed(
        &self,
        channel: u32,
        exit_status: Option<u32>,
        exit_signal: Option<String>,
    ) {
        let ended_at = now_micros();
        self.update(|r| {
            if let Some(c) = running_channel(r, channel) {
                c.ended_at = Some(ended_at);
                c.exit_status = exit_status;
                c.exit_signal = exit_signal.clone();
            }
        });
        self.store.write(Write::ChannelClose {
            session_id: self.id.clone(),
            channel,
            ended_at,
            exit_status,
            exit_signal,
        });
    }

    /// The server reported how channel `channel`'s program ended, before the channel
    /// closes: the live record shows it at once (the log gets it with the close).
    pub fn program_exited(
        &self,
        channel: u32,
        exit_status: Option<u32>,
        exit_signal: Option<String>,
    ) {
        self.update(|r| {
            if let Some(c) = running_channel(r, channel) {
                c.exit_status = exit_status;
                c.exit_signal = exit_signal.clone();
            }
        });
    }

    /// The device opened channel `channel` (and the server its side).
    pub fn device_channel_opened(&self, channel: u32) {
        self.device_channels
            .lock()
            .expect("device channels poisoned")
            .insert(channel);
    }

    /// The device closed channel `channel` itself (sent CHANNEL_CLOSE first).
    pub fn device_channel_closed(&self, channel: u32) {
        self.device_channels
            .lock()
            .expect("device channels poisoned")
            .remove(&channel);
    }

    /// Whether the device still has a channel open: one it has not closed whose program,
    /// if it had one, has not ended either (a channel the server ended first is closed by
    /// the relay; the device's answering CHANNEL_CLOSE is not reported).
    pub fn has_open_device_channel(&self) -> bool {
        let open = self
            .device_channels
            .lock()
            .expect("device channels poisoned")
            .clone();
        let record = self.entry.record.lock().expect("session lock poisoned");
        open.iter().any(|number| {
            !record.channels.iter().any(|c| {
                c.channel == *number
                    && (c.ended_at.is_some() || c.exit_status.is_some() || c.exit_signal.is_some())
            })
        })
    }

    /// Logs a file operation. The live record keeps only the first [`LIVE_FILE_OPS`] (a
    /// long SFTP session would otherwise grow it, and every snapshot clones it); the store
    /// has them all.
    pub fn file_op(&self, record: super::FileOpRecord) {
        self.update(|r| {
            if r.file_ops.len() < LIVE_FILE_OPS {
                r.file_ops.push(record.clone());
            }
        });
        self.store.write(Write::FileOp {
            session_id: self.id.clone(),
            record,
        });
    }

    /// Ends the record (once); returns it as stored, for the closing log event.
    pub fn close(&self, reason: &str) -> SessionRecord {
        if self.closed.swap(true, Ordering::AcqRel) {
            return self.entry.snapshot();
        }
        let ended_at = now_micros();
        let duration_ms = self.started.elapsed().as_millis() as u64;
        self.update(|r| {
            r.ended_at = Some(ended_at);
            r.duration_ms = Some(duration_ms);
            r.close_reason = Some(reason.to_string());
        });
        let record = self.entry.snapshot();
        self.store.write(Write::Close {
            id: self.id.clone(),
            ended_at,
            duration_ms,
            bytes_from_client: record.bytes_from_client,
            bytes_from_server: record.bytes_from_server,
            close_reason: reason.to_string(),
        });
        self.live
            .entries
            .lock()
            .expect("live sessions lock poisoned")
            .remove(&self.id);
        self.live.ended.notify_waiters();
        record
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.close("error: relay ended unexpectedly");
    }
}

/// The newest record of channel `channel` that has not ended (a channel number is reused
/// once its channel closed).
fn running_channel(record: &mut SessionRecord, channel: u32) -> Option<&mut ChannelRecord> {
    record
        .channels
        .iter_mut()
        .rev()
        .find(|c| c.channel == channel && c.ended_at.is_none())
}

/// A channel record as the live record keeps it: the command line cut at
/// [`LIVE_COMMAND_BYTES`] (on a character boundary), marked with `…`.
fn live_copy(record: &ChannelRecord) -> ChannelRecord {
    let mut copy = record.clone();
    if let Some(command) = &mut copy.command
        && command.len() > LIVE_COMMAND_BYTES
    {
        let mut end = LIVE_COMMAND_BYTES;
        while !command.is_char_boundary(end) {
            end -= 1;
        }
        command.truncate(end);
        command.push('…');
    }
    copy
}

/// Adds a channel to a live list at its cap: the oldest ended channel makes room; when
/// every kept channel is still open, the new one is left to the store.
fn keep_channel(channels: &mut Vec<ChannelRecord>, record: ChannelRecord) {
    if channels.len() >= LIVE_CHANNELS {
        match channels.iter().position(|c| c.ended_at.is_some()) {
            Some(i) => {
                channels.remove(i);
            }
            None => return,
        }
    }
    channels.push(record);
}

/// A live session for `GET /v1/sessions/{id}`: the live record completed from the stored
/// one. Channels come from the log, with the live state (end, exit) of those the live
/// record has, plus live ones the log has not got yet; file operations come from the log
/// when it has more.
pub fn complete(mut live: SessionRecord, stored: Option<SessionRecord>) -> SessionRecord {
    let Some(stored) = stored else { return live };
    if stored.file_ops.len() > live.file_ops.len() {
        live.file_ops = stored.file_ops;
    }
    let mut channels = stored.channels;
    for c in std::mem::take(&mut live.channels) {
        match channels
            .iter_mut()
            .find(|s| s.channel == c.channel && s.started_at == c.started_at)
        {
            Some(s) => {
                s.ended_at = s.ended_at.or(c.ended_at);
                s.exit_status = s.exit_status.or(c.exit_status);
                s.exit_signal = s.exit_signal.take().or(c.exit_signal);
            }
            None => channels.push(c),
        }
    }
    channels.sort_by_key(|c| (c.started_at, c.channel));
    live.channels = channels;
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        file_audit::SftpOpKind,
        policy::model::Action,
        sessions::{FileOpRecord, FileOperation, FileProtocol, ProgramKind},
    };

    fn setup() -> (tempfile::TempDir, SessionStore, Arc<LiveSessions>, Tracker) {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("s.db")).unwrap();
        let live = Arc::new(LiveSessions::default());
        let record =
            SessionRecord::new("s1".into(), "src".into(), "dst".into(), Action::AuditSsh, 1);
        let tracker = Tracker::open(record, store.clone(), live.clone());
        (dir, store, live, tracker)
    }

    fn channel(n: u32, command: &str) -> ChannelRecord {
        ChannelRecord {
            channel: n,
            kind: ProgramKind::Exec,
            command: Some(command.into()),
            started_at: 10 + i64::from(n),
            ended_at: None,
            exit_status: None,
            exit_signal: None,
            recording: None,
            recording_object: None,
            env: Vec::new(),
        }
    }

    #[test]
    fn the_live_channel_list_is_capped_and_the_log_completes_it() {
        let (_dir, store, live, tracker) = setup();
        let total = LIVE_CHANNELS as u32 + 20;
        // One channel stays open all along; the others end one after the other.
        tracker.channel_opened(channel(0, "sleep 600"));
        for n in 1..total {
            tracker.channel_opened(channel(n, &format!("echo {n}")));
            tracker.channel_closed(n, Some(0), None);
        }
        tracker.channel_opened(channel(total, "the newest"));
        let kept = live.get("s1").unwrap().channels;
        assert_eq!(kept.len(), LIVE_CHANNELS);
        // Open ones stay, ended ones make room for newer ones.
        assert_eq!(kept[0].command.as_deref(), Some("sleep 600"));
        assert_eq!(kept.last().unwrap().command.as_deref(), Some("the newest"));
        assert_eq!(live.list()[0].channels.len(), LIVE_CHANNELS);

        assert!(store.sync());
        let shown = complete(live.get("s1").unwrap(), store.get("s1").unwrap());
        assert_eq!(shown.channels.len(), total as usize + 1);
        assert!(
            shown
                .channels
                .windows(2)
                .all(|w| w[0].started_at < w[1].started_at)
        );
        assert!(
            shown.channels[1..total as usize]
                .iter()
                .all(|c| c.exit_status == Some(0))
        );
        // Live state the log has not got yet wins over the stored record.
        tracker.channel_closed(0, None, Some("TERM".into()));
        let stored = store.get("s1").unwrap();
        let shown = complete(live.get("s1").unwrap(), stored);
        assert_eq!(shown.channels[0].exit_signal.as_deref(), Some("TERM"));

        // When every kept channel is open, a new one is left to the log.
        let (_dir, _store, live, tracker) = setup();
        for n in 0..=LIVE_CHANNELS as u32 {
            tracker.channel_opened(channel(n, "cat"));
        }
        let kept = live.get("s1").unwrap().channels;
        assert_eq!(kept.len(), LIVE_CHANNELS);
        assert_eq!(kept.last().unwrap().channel, LIVE_CHANNELS as u32 - 1);
    }

    #[test]
    fn live_command_lines_are_cut_and_listings_skip_file_ops() {
        let (_dir, store, live, tracker) = setup();
        let long = format!("scp -t {}", "é".repeat(100_000));
        tracker.channel_opened(channel(0, &long));
        for i in 0..LIVE_FILE_OPS + 5 {
            tracker.file_op(FileOpRecord {
                channel: 0,
                at: i as i64,
                protocol: FileProtocol::Sftp,
                op: FileOperation::Sftp(SftpOpKind::Open),
                path: format!("/f{i}"),
                target: None,
                flags: None,
                bytes_read: 0,
                bytes_written: 0,
                status: "ok".into(),
                denied: false,
            });
        }
        let record = live.get("s1").unwrap();
        let command = record.channels[0].command.as_deref().unwrap();
        assert!(command.len() <= LIVE_COMMAND_BYTES + '…'.len_utf8() && command.ends_with('…'));
        assert_eq!(record.file_ops.len(), LIVE_FILE_OPS);
        let listed = live.summary("s1").unwrap();
        assert!(listed.file_ops.is_empty() && listed.channels.len() == 1);
        assert_eq!(live.get("s1").unwrap().file_ops.len(), LIVE_FILE_OPS);

        assert!(store.sync());
        let shown = complete(record, store.get("s1").unwrap());
        assert_eq!(shown.channels[0].command.as_deref(), Some(long.as_str()));
        assert_eq!(shown.file_ops.len(), LIVE_FILE_OPS + 5);
    }

    #[test]
    fn the_unwritable_hook_ends_the_live_session() {
        let (_dir, _store, live, tracker) = setup();
        let hook = live.unwritable_hook();
        hook(
            "s1",
            "sshgw: session ended: the gateway cannot write its session log (x)",
        );
        assert!(
            tracker
                .kill_reason()
                .user_message()
                .contains("cannot write its session log")
        );
        hook("gone", "message");
        assert_eq!(live.totals().0, 1);
    }
}
