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
    store::{SessionStore, Write},
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
    kill_reason: Mutex<Option<String>>,
}

impl Entry {
    fn snapshot(&self) -> SessionRecord {
        let mut record = self.record.lock().expect("session lock poisoned").clone();
        record.bytes_from_client = self.bytes.from_client.load(Ordering::Relaxed);
        record.bytes_from_server = self.bytes.from_server.load(Ordering::Relaxed);
        record
    }
}

#[derive(Default)]
pub struct LiveSessions {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Notified whenever a session ends (for draining on shutdown).
    ended: Notify,
}

/// What an administrator's kill tells the user.
/// File operations a live record keeps (the session log has every one).
pub const LIVE_FILE_OPS: usize = 1000;

pub const ADMIN_KILL: &str = "sshgw: session terminated by an administrator";

impl LiveSessions {
    pub fn list(&self) -> Vec<SessionRecord> {
        let entries: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .expect("live sessions lock poisoned")
            .values()
            .cloned()
            .collect();
        let mut out: Vec<SessionRecord> = entries.iter().map(|e| e.snapshot()).collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.started_at));
        out
    }

    pub fn get(&self, id: &str) -> Option<SessionRecord> {
        let entry = self
            .entries
            .lock()
            .expect("live sessions lock poisoned")
            .get(id)
            .cloned();
        entry.map(|e| e.snapshot())
    }

    /// Asks session `id` to end, telling the user `reason`; false when it is not live.
    pub fn kill(&self, id: &str, reason: &str) -> bool {
        match self
            .entries
            .lock()
            .expect("live sessions lock poisoned")
            .get(id)
        {
            Some(entry) => {
                *entry.kill_reason.lock().expect("kill reason poisoned") = Some(reason.to_string());
                entry.kill.notify_one();
                true
            }
            None => false,
        }
    }

    /// Asks every live session to end.
    pub fn kill_all(&self, reason: &str) -> usize {
        let ids: Vec<String> = self
            .entries
            .lock()
            .expect("live sessions lock poisoned")
            .keys()
            .cloned()
            .collect();
        ids.iter().filter(|id| self.kill(id, reason)).count()
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
        store.write(Write::Open(Box::new(record)));
        live.entries
            .lock()
            .expect("live sessions lock poisoned")
            .insert(id.clone(), entry.clone());
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

    pub fn kill_reason(&self) -> String {
        self.entry
            .kill_reason
            .lock()
            .expect("kill reason poisoned")
            .clone()
            .unwrap_or_else(|| ADMIN_KILL.to_string())
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

    pub fn channel_opened(&self, record: ChannelRecord) {
        self.update(|r| r.channels.push(record.clone()));
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
            if let Some(c) = r
                .channels
                .iter_mut()
                .rev()
                .find(|c| c.channel == channel && c.ended_at.is_none())
            {
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
            !record
                .channels
                .iter()
                .any(|c| c.channel == *number && c.ended_at.is_some())
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
