//! Whether the session log can be written, as the writer last found it: a health state
//! that admission, `sshgw status` and `/metrics` read. Under `[sessions] on_log_failure =
//! "refuse"` an unwritable log refuses new connections (fail closed).

use std::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};

use crate::config::LogFailure;

/// The log's state, shared by the writer thread and every store handle.
#[derive(Default)]
pub struct Health {
    failing: AtomicBool,
    /// The error that made the log fail, and since when (µs), while it is failing.
    failure: Mutex<Option<(String, i64)>>,
    on_failure: Mutex<LogFailure>,
    /// Attempts to commit that failed (a change retried five times counts five).
    write_failures: AtomicU64,
    /// Changes that were never written: rejected by the database, or dropped while the
    /// log was failing and the held changes were at their cap.
    lost: AtomicU64,
    /// Changes queued or held, not yet written.
    queued: AtomicU64,
    /// Producers that found the queue full and had to wait.
    waits: AtomicU64,
    /// Notified when the writer thread dies.
    pub(super) writer_stopped: tokio::sync::Notify,
}

/// `sshgw status`'s view of the log (`session_log` in `--json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthReport {
    /// `ok` or `failing`.
    pub state: String,
    /// `refuse` or `allow`: what a failing log does to new connections.
    pub on_failure: LogFailure,
    /// Why the log is failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "super::serialize_opt_time",
        deserialize_with = "super::deserialize_opt_time"
    )]
    pub since: Option<i64>,
    pub write_failures: u64,
    pub lost: u64,
    pub queued: u64,
    pub queue_waits: u64,
}

impl HealthReport {
    pub fn is_ok(&self) -> bool {
        self.state == "ok"
    }
}

/// What a user is told when a new connection is refused because of the log.
pub fn refusal_message(error: &str) -> String {
    format!(
        "sshgw: session refused: the gateway cannot write its session log ({error}); \
         new sessions are refused until it can"
    )
}

/// What a user is told when a session is ended because its record cannot be written.
pub fn ended_message(error: &str) -> String {
    format!("sshgw: session ended: the gateway cannot write its session log ({error})")
}

impl Health {
    pub fn new(on_failure: LogFailure) -> Self {
        Health {
            on_failure: Mutex::new(on_failure),
            ..Default::default()
        }
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub fn set_on_failure(&self, mode: LogFailure) {
        *self.on_failure.lock().expect("health lock poisoned") = mode;
    }

    fn on_failure(&self) -> LogFailure {
        *self.on_failure.lock().expect("health lock poisoned")
    }

    fn error(&self) -> Option<String> {
        self.failure
            .lock()
            .expect("health lock poisoned")
            .as_ref()
            .map(|(e, _)| e.clone())
    }

    /// Whether sessions must be refused (or ended) now: failing under `refuse`.
    pub fn refusing(&self) -> bool {
        self.is_failing() && self.on_failure() == LogFailure::Refuse
    }

    /// The message for a new connection while the log is failing under `refuse`.
    pub fn refusal(&self) -> Option<String> {
        if !self.refusing() {
            return None;
        }
        Some(refusal_message(
            self.error().as_deref().unwrap_or("unknown error"),
        ))
    }

    /// The message for a live session whose record cannot be written.
    pub fn ended(&self) -> String {
        ended_message(self.error().as_deref().unwrap_or("unknown error"))
    }

    /// A commit failed with `error`; true when this turned the log from ok to failing.
    pub(super) fn failed(&self, error: &str) -> bool {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        let mut failure = self.failure.lock().expect("health lock poisoned");
        match failure.as_mut() {
            Some((e, _)) => {
                error.clone_into(e);
                false
            }
            None => {
                *failure = Some((error.to_string(), super::now_micros()));
                self.failing.store(true, Ordering::Release);
                true
            }
        }
    }

    /// Everything held was written; returns the failure that ended (error, since), if any.
    pub(super) fn recovered(&self) -> Option<(String, i64)> {
        if !self.is_failing() {
            return None;
        }
        let mut failure = self.failure.lock().expect("health lock poisoned");
        self.failing.store(false, Ordering::Release);
        failure.take()
    }

    pub(super) fn lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn queued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn done(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn waited(&self) {
        self.waits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self) -> HealthReport {
        let failure = self.failure.lock().expect("health lock poisoned").clone();
        HealthReport {
            state: if failure.is_some() { "failing" } else { "ok" }.into(),
            on_failure: self.on_failure(),
            since: failure.as_ref().map(|(_, since)| *since),
            error: failure.map(|(e, _)| e),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            queue_waits: self.waits.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_while_failing_under_refuse() {
        let h = Health::new(LogFailure::Refuse);
        assert!(h.refusal().is_none());
        assert!(h.report().is_ok());
        assert!(h.failed("database or disk is full"));
        assert!(!h.failed("database or disk is full"));
        let message = h.refusal().unwrap();
        assert!(
            message.contains("cannot write its session log (database or disk is full)"),
            "{message}"
        );
        let report = h.report();
        assert_eq!(report.state, "failing");
        assert_eq!(report.write_failures, 2);
        assert!(report.since.is_some());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["on_failure"], "refuse");
        assert!(json["since"].as_str().unwrap().ends_with('Z'));

        h.set_on_failure(LogFailure::Allow);
        assert!(h.is_failing() && h.refusal().is_none());
        h.set_on_failure(LogFailure::Refuse);
        assert_eq!(h.recovered().unwrap().0, "database or disk is full");
        assert!(h.refusal().is_none() && h.recovered().is_none());
        let json = serde_json::to_value(h.report()).unwrap();
        assert!(json.get("error").is_none() && json.get("since").is_none());
    }
}
