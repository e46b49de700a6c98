//! Prometheus metrics, in the text exposition format, served at `/metrics` on the control
//! socket and, when `[metrics] listen` is set, on a TCP address.
//!
//! The counters are process-wide statics: every part of the daemon can count without
//! being handed a registry, and a scrape reads them all at once.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::{
    datapath::Counters,
    policy::model::Action,
    recording::spool::StorageReport,
    sessions::{
        health::HealthReport,
        live::LiveSessions,
        retention::{self, Reason},
    },
};

/// Bucket upper bounds in seconds, for handshake-scale latencies.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket upper bounds in seconds for an admission decision (a device lookup and a policy
/// evaluation): 100 ns to 1 ms.
const DECISION_BUCKETS: [f64; 13] = [
    1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3,
];

/// A Prometheus histogram with `N` fixed bucket bounds (seconds); the sum is kept in
/// nanoseconds, so sub-microsecond observations add up exactly.
pub struct Histogram<const N: usize = 14> {
    bounds: &'static [f64; N],
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// A histogram with the handshake-scale [`BUCKETS`].
    const fn new() -> Self {
        Self::with_bounds(&BUCKETS)
    }
}

impl<const N: usize> Histogram<N> {
    const fn with_bounds(bounds: &'static [f64; N]) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

pub struct Metrics {
    sessions_audited: AtomicU64,
    sessions_blocked: AtomicU64,
    /// Bytes of sessions that have ended; live ones are added at scrape time.
    closed_bytes_from_client: AtomicU64,
    closed_bytes_from_server: AtomicU64,
    /// (policy id or "none", decision) → count.
    decisions: Mutex<BTreeMap<(String, &'static str), u64>>,
    pub recording_failures: AtomicU64,
    /// Relayed channels closed because a peer sent beyond its window.
    pub window_violations: AtomicU64,
    /// Relayed channels found stalled by the watchdog.
    pub relay_stalls: AtomicU64,
    /// Channel data held by the relay between its two legs (a gauge).
    pub relay_queued_bytes: AtomicU64,
    /// Connections over a `[limits]` limit, by limit.
    over_limit: Mutex<BTreeMap<&'static str, u64>>,
    pub certificate_mint: Histogram,
    pub upstream_connect: Histogram,
    /// Deciding an intercepted connection: device lookup and policy evaluation.
    pub admission_decision: Histogram<{ DECISION_BUCKETS.len() }>,
    /// Objects uploaded to object storage (recordings and session records).
    pub storage_uploads: AtomicU64,
    /// Bytes of recordings uploaded.
    pub storage_uploaded_bytes: AtomicU64,
    /// Failed upload attempts (and recordings gone before upload).
    pub storage_failures: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    sessions_audited: AtomicU64::new(0),
    sessions_blocked: AtomicU64::new(0),
    closed_bytes_from_client: AtomicU64::new(0),
    closed_bytes_from_server: AtomicU64::new(0),
    decisions: Mutex::new(BTreeMap::new()),
    recording_failures: AtomicU64::new(0),
    window_violations: AtomicU64::new(0),
    relay_stalls: AtomicU64::new(0),
    relay_queued_bytes: AtomicU64::new(0),
    over_limit: Mutex::new(BTreeMap::new()),
    certificate_mint: Histogram::new(),
    upstream_connect: Histogram::new(),
    admission_decision: Histogram::with_bounds(&DECISION_BUCKETS),
    storage_uploads: AtomicU64::new(0),
    storage_uploaded_bytes: AtomicU64::new(0),
    storage_failures: AtomicU64::new(0),
};

impl Metrics {
    /// A connection was judged: `audit` true for relayed, false for blocked.
    pub fn decision(&self, policy_id: Option<&str>, audit: bool) {
        let (counter, decision) = if audit {
            (&self.sessions_audited, Action::AuditSsh.as_str())
        } else {
            (&self.sessions_blocked, Action::Block.as_str())
        };
        counter.fetch_add(1, Ordering::Relaxed);
        *self
            .decisions
            .lock()
            .expect("metrics lock poisoned")
            .entry((policy_id.unwrap_or("none").to_string(), decision))
            .or_default() += 1;
    }

    /// A connection broke `limit` (a `[limits]` setting) and was refused or dropped.
    pub fn limit_refused(&self, limit: &'static str) {
        *self
            .over_limit
            .lock()
            .expect("metrics lock poisoned")
            .entry(limit)
            .or_default() += 1;
    }

    /// A session ended after relaying these bytes.
    pub fn session_closed(&self, from_client: u64, from_server: u64) {
        self.closed_bytes_from_client
            .fetch_add(from_client, Ordering::Relaxed);
        self.closed_bytes_from_server
            .fetch_add(from_server, Ordering::Relaxed);
    }
}

/// Escapes a label value (`\`, `"` and newlines).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counter(out: &mut String, name: &str, help: &str, series: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, value) in series {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// The session log's health.
fn render_session_log(out: &mut String, log: &HealthReport) {
    gauge(
        out,
        "sshgw_session_log_healthy",
        "1 while the session log can be written, 0 while it is failing.",
        u64::from(log.is_ok()),
    );
    counter(
        out,
        "sshgw_session_log_write_failures_total",
        "Session log commits that failed (retries included).",
        &[("", log.write_failures)],
    );
    counter(
        out,
        "sshgw_session_log_lost_total",
        "Session log records never written (rejected, or dropped while failing).",
        &[("", log.lost)],
    );
    gauge(
        out,
        "sshgw_session_log_queued",
        "Session log records waiting to be written.",
        log.queued,
    );
    counter(
        out,
        "sshgw_session_log_queue_waits_total",
        "Writes that waited for room in the full session log queue.",
        &[("", log.queue_waits)],
    );
}

/// Uploads to object storage and what still waits for one.
fn render_storage(out: &mut String, s: &StorageReport) {
    let m = &METRICS;
    gauge(
        out,
        "sshgw_storage_backlog_files",
        "Finished recordings not yet uploaded to object storage.",
        s.backlog_files,
    );
    gauge(
        out,
        "sshgw_storage_backlog_bytes",
        "Bytes of finished recordings not yet uploaded to object storage.",
        s.backlog_bytes,
    );
    gauge(
        out,
        "sshgw_storage_oldest_pending_seconds",
        "Seconds since the oldest recording awaiting upload was last written (0 when none waits).",
        s.oldest_pending_secs,
    );
    gauge(
        out,
        "sshgw_storage_spool_full",
        "1 while the backlog is over [storage] max_spool_mb (new recordings get on_recording_failure).",
        u64::from(s.spool_full),
    );
    counter(
        out,
        "sshgw_storage_uploads_total",
        "Objects uploaded to object storage (recordings and session records).",
        &[("", m.storage_uploads.load(Ordering::Relaxed))],
    );
    counter(
        out,
        "sshgw_storage_uploaded_bytes_total",
        "Bytes of recordings uploaded to object storage.",
        &[("", m.storage_uploaded_bytes.load(Ordering::Relaxed))],
    );
    counter(
        out,
        "sshgw_storage_upload_failures_total",
        "Failed upload attempts, and recordings gone from the spool before their upload.",
        &[("", m.storage_failures.load(Ordering::Relaxed))],
    );
}

/// Retention's deletions, by reason.
fn render_retention(out: &mut String) {
    let by_reason = |f: fn(&retention::Tally) -> u64| -> Vec<(String, u64)> {
        Reason::ALL
            .iter()
            .map(|r| {
                (
                    format!("reason=\"{}\"", r.as_str()),
                    f(&retention::DELETED.get(*r)),
                )
            })
            .collect()
    };
    for (name, help, f) in [
        (
            "sshgw_retention_deleted_sessions_total",
            "Session records deleted by retention, by reason.",
            (|t: &retention::Tally| t.sessions) as fn(&retention::Tally) -> u64,
        ),
        (
            "sshgw_retention_deleted_files_total",
            "Recording files deleted by retention, by reason.",
            |t| t.files,
        ),
        (
            "sshgw_retention_deleted_bytes_total",
            "Bytes of recording files deleted by retention, by reason.",
            |t| t.bytes,
        ),
    ] {
        counter_labelled(out, name, help, by_reason(f).into_iter());
    }
}

/// The whole exposition, read at scrape time.
pub fn render(
    live: &LiveSessions,
    datapath: Option<&Counters>,
    log: &HealthReport,
    storage: Option<&StorageReport>,
    outbox: &[(&'static str, crate::sessions::outbox::ConsumerReport)],
) -> String {
    let mut out = String::with_capacity(4096);
    render_sessions(&mut out, live);
    render_relay(&mut out);
    render_session_log(&mut out, log);
    if let Some(storage) = storage {
        render_storage(&mut out, storage);
    }
    render_outbox(&mut out, outbox);
    render_retention(&mut out);
    render_datapath(&mut out, datapath);
    let m = &METRICS;
    m.certificate_mint.render(
        &mut out,
        "sshgw_certificate_mint_seconds",
        "Time to mint a user certificate.",
    );
    m.upstream_connect.render(
        &mut out,
        "sshgw_upstream_connect_seconds",
        "Time for the TCP connect and SSH handshake with the real server.",
    );
    m.admission_decision.render(
        &mut out,
        "sshgw_admission_decision_seconds",
        "Time to decide an intercepted connection: the device lookup and the policy evaluation (not the logging).",
    );
    out
}

/// Each outbox consumer's backlog (`[central]`, `[export.*]`).
fn render_outbox(
    out: &mut String,
    outbox: &[(&'static str, crate::sessions::outbox::ConsumerReport)],
) {
    if outbox.is_empty() {
        return;
    }
    let series = |f: fn(&crate::sessions::outbox::ConsumerReport) -> u64| {
        outbox
            .iter()
            .map(|(name, r)| (format!("consumer=\"{name}\""), f(r)))
            .collect::<Vec<_>>()
    };
    for (name, help, kind, values) in [
        (
            "sshgw_outbox_rows",
            "Outbox rows the consumer has not delivered yet.",
            "gauge",
            series(|r| r.outbox_rows),
        ),
        (
            "sshgw_outbox_lag_seconds",
            "Age of the oldest outbox row the consumer has not delivered (0 when none).",
            "gauge",
            series(|r| r.lag_secs),
        ),
        (
            "sshgw_outbox_delivery_failing",
            "1 while the consumer's last delivery attempt failed.",
            "gauge",
            series(|r| u64::from(r.last_error.is_some())),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in values {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// A counter whose series are labelled with text built at render time.
fn counter_labelled(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (String, u64)>,
) {
    let labels: Vec<(String, u64)> = series.collect();
    let series: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    counter(out, name, help, &series);
}

/// Sessions, relayed bytes and policy decisions.
fn render_sessions(out: &mut String, live: &LiveSessions) {
    let m = &METRICS;
    let (active, live_client, live_server) = live.totals();
    gauge(
        out,
        "sshgw_sessions_active",
        "Sessions in progress.",
        active as u64,
    );
    counter(
        out,
        "sshgw_sessions_total",
        "Intercepted connections by decision.",
        &[
            (
                "decision=\"audit_ssh\"",
                m.sessions_audited.load(Ordering::Relaxed),
            ),
            (
                "decision=\"block\"",
                m.sessions_blocked.load(Ordering::Relaxed),
            ),
        ],
    );
    counter(
        out,
        "sshgw_bytes_total",
        "Channel payload relayed, by direction.",
        &[
            (
                "direction=\"from_client\"",
                m.closed_bytes_from_client.load(Ordering::Relaxed) + live_client,
            ),
            (
                "direction=\"from_server\"",
                m.closed_bytes_from_server.load(Ordering::Relaxed) + live_server,
            ),
        ],
    );
    let decisions = m.decisions.lock().expect("metrics lock poisoned");
    counter_labelled(
        out,
        "sshgw_policy_decisions_total",
        "Policy decisions by policy and decision.",
        decisions.iter().map(|((policy, decision), n)| {
            (
                format!("policy=\"{}\",decision=\"{decision}\"", label(policy)),
                *n,
            )
        }),
    );
}

/// Recording failures, limits, stalls, window violations and queued data.
fn render_relay(out: &mut String) {
    let m = &METRICS;
    counter(
        out,
        "sshgw_recording_failures_total",
        "Recordings that could not be opened or written.",
        &[("", m.recording_failures.load(Ordering::Relaxed))],
    );
    let over = m.over_limit.lock().expect("metrics lock poisoned");
    counter_labelled(
        out,
        "sshgw_connections_over_limit_total",
        "Connections refused or closed because a [limits] setting was reached, by setting.",
        over.iter()
            .map(|(limit, n)| (format!("limit=\"{limit}\""), *n)),
    );
    drop(over);
    counter(
        out,
        "sshgw_relay_stalls_total",
        "Relayed channels that held data for a peer with an open window and passed none of it on for [ssh] stall_warning_secs.",
        &[("", m.relay_stalls.load(Ordering::Relaxed))],
    );
    counter(
        out,
        "sshgw_relay_window_violations_total",
        "Relayed channels closed because a peer sent more than its window allowed.",
        &[("", m.window_violations.load(Ordering::Relaxed))],
    );
    let _ = writeln!(
        out,
        "# HELP sshgw_relay_queued_bytes Channel data held by the relay between its two legs.\n# TYPE sshgw_relay_queued_bytes gauge\nsshgw_relay_queued_bytes {}",
        m.relay_queued_bytes.load(Ordering::Relaxed)
    );
}

/// The TC program's counters (when the datapath is up) and interface-check errors.
fn render_datapath(out: &mut String, datapath: Option<&Counters>) {
    if let Some(counters) = datapath {
        counter_labelled(
            out,
            "sshgw_datapath_packets_total",
            "Datapath counters of the TC program (summed over CPUs).",
            counters
                .iter()
                .map(|(name, value)| (format!("counter=\"{name}\""), *value)),
        );
    }
    counter(
        out,
        "sshgw_datapath_interface_check_errors_total",
        "Interface lookups that failed without an answer (e.g. EMFILE); the program stayed attached.",
        &[(
            "",
            crate::datapath::INTERFACE_CHECK_ERRORS.load(Ordering::Relaxed),
        )],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
    }

    #[test]
    fn decision_histogram_exposition() {
        let h = Histogram::with_bounds(&DECISION_BUCKETS);
        h.observe(Duration::from_nanos(150));
        h.observe(Duration::from_nanos(3_000));
        h.observe(Duration::from_millis(2));
        let mut out = String::new();
        h.render(&mut out, "sshgw_admission_decision_seconds", "Decisions.");
        let name = "sshgw_admission_decision_seconds";
        let mut want = format!("# HELP {name} Decisions.\n# TYPE {name} histogram\n");
        for (le, n) in [
            ("0.0000001", 0),
            ("0.00000025", 1),
            ("0.0000005", 1),
            ("0.000001", 1),
            ("0.0000025", 1),
            ("0.000005", 2),
            ("0.00001", 2),
            ("0.000025", 2),
            ("0.00005", 2),
            ("0.0001", 2),
            ("0.00025", 2),
            ("0.0005", 2),
            ("0.001", 2),
            ("+Inf", 3),
        ] {
            want.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {n}\n"));
        }
        // The sum is exact to the nanosecond: 150 ns + 3 µs + 2 ms.
        want.push_str(&format!("{name}_sum 0.00200315\n{name}_count 3\n"));
        assert_eq!(out, want);
    }

    #[test]
    fn the_exposition_has_the_decision_histogram() {
        METRICS
            .admission_decision
            .observe(Duration::from_nanos(500));
        let out = render(
            &LiveSessions::default(),
            None,
            &crate::sessions::health::Health::default().report(),
            None,
            &[],
        );
        assert!(out.contains("# TYPE sshgw_admission_decision_seconds histogram\n"));
        assert!(out.contains("sshgw_admission_decision_seconds_bucket{le=\"0.0000005\"} "));
        assert!(out.contains("\nsshgw_admission_decision_seconds_count "));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
