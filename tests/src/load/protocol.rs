//! The JSON lines between the harness and the load processes: one [`Command`] per line on
//! their standard input, one [`Event`] per line on their standard output.

use std::io::Write;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What the harness asks of the load client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open one session, time one keystroke, close it: the gateway pins the server's host
    /// key and warms its caches before anything is measured.
    Warmup,
    /// Open sessions until `to` are up (at most `window` handshakes in flight).
    Ramp { to: usize },
    /// Time `count` keystroke round trips, one at a time, on sessions spread over the open
    /// ones.
    Keystrokes { count: usize },
    /// Close every session and exit.
    Quit,
}

/// What the load processes report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The server listens (its first line).
    Listening {
        addr: String,
    },
    /// The warm-up session came up, echoed a keystroke and was closed.
    WarmedUp {
        setup_ms: f64,
        keystroke_ms: f64,
    },
    Ramped(RampReport),
    Keystrokes(KeystrokeReport),
}

/// The outcome of a [`Command::Ramp`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RampReport {
    /// Sessions open now.
    pub open: usize,
    /// Sessions this step opened.
    pub opened: usize,
    /// From the first connect of the step to its last session up.
    pub seconds: f64,
    /// Connect-to-marker time of each session this step opened.
    pub setup_ms: Vec<f64>,
    /// Sessions that failed to come up (each was replaced by a new attempt).
    pub failures: Vec<String>,
    /// Why the step stopped before `to`, if it did.
    pub error: Option<String>,
}

/// The outcome of a [`Command::Keystrokes`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeystrokeReport {
    /// Round trip of each keystroke that came back, in ms.
    pub ms: Vec<f64>,
    /// Keystrokes that did not come back.
    pub errors: Vec<String>,
}

/// Writes `event` as one line on standard output and flushes it.
pub fn emit(event: &Event) -> Result<()> {
    let line = serde_json::to_string(event).context("encoding an event")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("writing an event to standard output")
}
