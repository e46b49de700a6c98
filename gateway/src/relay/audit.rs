//! What the relay keeps of a running program (shell, exec, subsystem): its channel record
//! in the session log and, when the policy asks for it, its encrypted recording.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;

use super::{ConnectionInfo, pump::ChannelExit};
use crate::recording::writer::{Exit, Recorder};

pub struct ProgramTap {
    pub info: Arc<ConnectionInfo>,
    pub channel: u32,
    pub recorder: Option<Recorder>,
    /// `on_recording_failure = "refuse"`: a recording that breaks ends the session.
    pub refuse_unrecorded: bool,
    failure_reported: AtomicBool,
}

impl ProgramTap {
    pub fn new(
        info: Arc<ConnectionInfo>,
        channel: u32,
        recorder: Option<Recorder>,
        refuse_unrecorded: bool,
    ) -> Self {
        ProgramTap {
            info,
            channel,
            recorder,
            refuse_unrecorded,
            failure_reported: AtomicBool::new(false),
        }
    }

    /// Channel data as relayed (`ext` = extended-data code, 1 for stderr).
    pub async fn data(&self, from_client: bool, ext: Option<u32>, data: &Bytes) {
        if let Some(recorder) = &self.recorder {
            recorder.data(from_client, ext, data.clone()).await;
            self.check(recorder);
        }
    }

    pub async fn resize(&self, cols: u32, rows: u32) {
        if let Some(recorder) = &self.recorder {
            recorder.resize(cols, rows).await;
        }
    }

    /// The channel closed: finish the recording and the channel record.
    pub async fn closed(&self, exit: ChannelExit) {
        if let Some(recorder) = &self.recorder {
            let end = match (&exit.signal, exit.status) {
                (Some((name, core_dumped)), _) => Exit::Signal {
                    name: name.clone(),
                    core_dumped: *core_dumped,
                },
                (None, Some(code)) => Exit::Status(code),
                // The gateway ended the session (a failure it told the user about).
                (None, None) => {
                    let failure = self
                        .info
                        .failure
                        .lock()
                        .expect("failure lock poisoned")
                        .clone();
                    let ended = self
                        .info
                        .ended_by_gateway
                        .lock()
                        .expect("end reason poisoned")
                        .clone();
                    match failure.or(ended) {
                        Some(reason) => Exit::Error(reason),
                        None => Exit::None,
                    }
                }
            };
            if let Err(e) = recorder.finish(end).await {
                self.report(format!("{e:#}"));
            }
        }
        self.info.tracker.channel_closed(
            self.channel,
            exit.status,
            exit.signal.map(|(name, _)| name),
        );
    }

    fn check(&self, recorder: &Recorder) {
        if let Some(error) = recorder.failed() {
            self.report(error);
        }
    }

    /// A recording failed mid-session: log it once, and end the session when unrecorded
    /// sessions are refused.
    fn report(&self, error: String) {
        if self.failure_reported.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(session = %self.info.id, channel = self.channel, error = %error, "recording failed");
        crate::metrics::METRICS
            .recording_failures
            .fetch_add(1, Ordering::Relaxed);
        if self.refuse_unrecorded {
            self.info.abort(format!(
                "sshgw: session ended: its recording failed ({error})"
            ));
        }
    }
}
