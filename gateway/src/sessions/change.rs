//! The changes the session log's writer applies, in order ([`super::writer`]); each may
//! also be an outbox event ([`super::outbox`]).

use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::{ChannelRecord, FileOpRecord, SessionRecord};
use crate::policy::model::Action;

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
        record: FileOpRecord,
    },
    /// Deletes sessions (and their channels and file operations) by id.
    Delete(Vec<String>),
    /// An upload attempt's result.
    Upload(Box<super::uploads::UploadResult>),
    /// A recording found without its channel row (see `storage::orphans`).
    Adopt(Box<super::uploads::Adopted>),
    /// An administrative request (control API) that may have changed something.
    Admin(Box<AdminAction>),
    /// An outbox consumer delivered every row up to `seq`.
    Shipped {
        consumer: String,
        seq: i64,
    },
    /// Deletes the outbox rows every one of these consumers has delivered.
    PruneOutbox(Vec<String>),
    /// Answers `true` once everything queued before it is committed, `false` when the log
    /// is failing (nothing is committed until it recovers).
    Sync(mpsc::Sender<bool>),
}

impl Write {
    /// The session whose new activity this is: not its end (closes carry no new activity),
    /// and not the start of a connection that is refused anyway.
    pub(super) fn activity_of(&self) -> Option<&str> {
        match self {
            Write::Open(s) => (s.decision != Action::Block).then_some(s.id.as_str()),
            Write::LoggedIn { id, .. } => Some(id),
            Write::ChannelOpen { session_id, .. } | Write::FileOp { session_id, .. } => {
                Some(session_id)
            }
            _ => None,
        }
    }

    /// What the change is, for the log: (kind, session).
    pub(super) fn describe(&self) -> (&'static str, &str) {
        match self {
            Write::Open(s) => ("session open", &s.id),
            Write::LoggedIn { id, .. } => ("login", id),
            Write::Close { id, .. } => ("session close", id),
            Write::ChannelOpen { session_id, .. } => ("channel open", session_id),
            Write::ChannelClose { session_id, .. } => ("channel close", session_id),
            Write::FileOp { session_id, .. } => ("file operation", session_id),
            Write::Delete(_) => ("retention delete", "-"),
            Write::Upload(r) => ("upload", &r.session_id),
            Write::Adopt(a) => ("adopted recording", &a.session_id),
            Write::Admin(_) => ("admin action", "-"),
            Write::Shipped { .. } => ("outbox cursor", "-"),
            Write::PruneOutbox(_) => ("outbox prune", "-"),
            Write::Sync(_) => ("sync", "-"),
        }
    }

    /// Roughly the memory the change holds.
    pub(super) fn approx_bytes(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let strings = match self {
            Write::Open(s) => {
                s.id.len() + s.source.len() + s.destination.len() + opt(&s.email) + opt(&s.login)
            }
            Write::LoggedIn {
                login,
                upstream_host_key,
                ..
            } => login.len() + upstream_host_key.len(),
            Write::Close { close_reason, .. } => close_reason.len(),
            Write::ChannelOpen { record, .. } => opt(&record.command) + opt(&record.recording),
            Write::ChannelClose { exit_signal, .. } => opt(exit_signal),
            Write::FileOp { record, .. } => {
                record.path.len() + opt(&record.target) + record.status.len()
            }
            Write::Delete(ids) => ids.iter().map(String::len).sum(),
            Write::Upload(r) => r.approx_bytes(),
            Write::Adopt(a) => a.path.len() + a.command.as_ref().map_or(0, String::len),
            Write::Admin(a) => a.route.len() + opt(&a.digest),
            Write::Shipped { consumer, .. } => consumer.len(),
            Write::PruneOutbox(consumers) => consumers.iter().map(String::len).sum(),
            Write::Sync(_) => 0,
        };
        256 + strings
    }
}

/// One administrative request that may have changed something (see `control::admin_log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminAction {
    /// µs since the epoch.
    #[serde(skip)]
    pub at: i64,
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub method: String,
    pub route: String,
    pub status: u16,
    pub digest: Option<String>,
    pub recording_key_fingerprint: Option<String>,
}
