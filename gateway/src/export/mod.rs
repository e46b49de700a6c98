//! SIEM exporters: each reads the outbox after its own cursor and sends one event per row
//! ([`event`]), to OpenTelemetry (OTLP/HTTP, [`otlp`]) or syslog (RFC 5424, [`syslog`]).
//! A batch counts as delivered only once the receiver took it; then the cursor moves
//! (through the session log's writer, in order). After a crash or a receiver restart the
//! batch is sent again: delivery is at least once, and the event id `ROUTER:SEQ`
//! deduplicates.

pub mod event;
pub mod otlp;
pub mod syslog;

use std::{sync::Arc, time::Duration};

use crate::sessions::{
    outbox::Delivery,
    store::{SessionStore, Write},
};
use anyhow::Result;

/// Events per batch.
const BATCH: u32 = 200;
/// How often an idle exporter looks for new rows.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Retry backoff: from the first to the last, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// The receiver refused the request as such (an OTLP 4xx): sending it again would fail
/// again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

/// Where an exporter sends.
pub enum Sink {
    Otlp(otlp::OtlpSink),
    Syslog(syslog::SyslogSink),
}

impl Sink {
    async fn send(&mut self, events: &[event::Event]) -> Result<()> {
        match self {
            Sink::Otlp(s) => s.send(events).await,
            Sink::Syslog(s) => s.send(events).await,
        }
    }
}

/// One exporter: its cursor's name, its sink, and what it leaves out.
pub struct Exporter {
    /// The cursor's name (`otlp`, `syslog`).
    pub name: &'static str,
    pub sink: Sink,
    pub router_id: String,
    pub redact: event::Redaction,
    pub store: SessionStore,
    pub delivery: Arc<Delivery>,
}

impl Exporter {
    /// Runs until the daemon stops.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF.0;
        let mut cursor = None;
        loop {
            let wait = match self.step(&mut cursor).await {
                Ok(true) => {
                    backoff = BACKOFF.0;
                    if self.delivery.ok() {
                        tracing::info!(exporter = self.name, "export: delivering again");
                    }
                    continue;
                }
                Ok(false) => IDLE_POLL,
                Err(e) => {
                    let error = format!("{e:#}");
                    if self.delivery.failed(&error) {
                        tracing::warn!(
                            exporter = self.name,
                            error,
                            retry_secs = backoff.as_secs(),
                            "export: delivery paused"
                        );
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// After a refused batch: each event alone; one the receiver refuses by itself is
    /// skipped and logged (it stays in the router's log and the central index).
    async fn one_by_one(&mut self, events: &[event::Event]) -> Result<()> {
        for event in events {
            match self.sink.send(std::slice::from_ref(event)).await {
                Ok(()) => {}
                Err(e) if e.downcast_ref::<Permanent>().is_some() => {
                    tracing::error!(exporter = self.name, event = %event.id, error = %format!("{e:#}"), "export: the receiver refuses this event; it is skipped");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends the next batch; `Ok(false)` when there was none.
    async fn step(&mut self, cursor: &mut Option<i64>) -> Result<bool> {
        let store = self.store.clone();
        let name = self.name;
        let after = match *cursor {
            Some(c) => c,
            None => tokio::task::spawn_blocking(move || store.outbox_cursor(name)).await??,
        };
        *cursor = Some(after);
        let store = self.store.clone();
        let rows = tokio::task::spawn_blocking(move || store.outbox_after(after, BATCH)).await??;
        let Some(last) = rows.last().map(|r| r.seq) else {
            return Ok(false);
        };
        let events: Vec<_> = rows
            .iter()
            .map(|r| event::build(&self.router_id, r, self.redact))
            .collect();
        if let Err(e) = self.sink.send(&events).await {
            if e.downcast_ref::<Permanent>().is_none() {
                return Err(e);
            }
            self.one_by_one(&events).await?;
        }
        self.store.write(Write::Shipped {
            consumer: self.name.to_owned(),
            seq: last,
        });
        *cursor = Some(last);
        Ok(true)
    }
}
