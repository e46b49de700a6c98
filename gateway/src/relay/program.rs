//! Programs on a session channel (shell, exec, subsystem): judged by the policy in force,
//! run as a refusal that explains itself when it refuses, recorded from their first byte,
//! and entered in the session log as channel records.

use std::{future::Future, sync::Arc};

use russh::{ChannelId, ChannelWriteHalf, Disconnect, client, server::Session};

use super::{
    EndReason,
    channel::ChannelLink,
    device_side::DeviceSide,
    tap::{Admitted, ProgramTap, Refusal, Transfer, admit_program},
};
use crate::{
    config::RecordingFailure,
    recording::writer::{ChannelKind, ChannelMeta, Recorder},
    sessions::{ChannelRecord, FileOpRecord, FileProtocol, now_micros},
};

impl DeviceSide {
    /// Starts the program `kind` on `channel`: refused as the policy says, else its
    /// recording and watcher are ready before `send` passes the request to the server,
    /// and the channel is logged once the server accepted it.
    pub(super) async fn start_program<F, Fut>(
        &mut self,
        channel: ChannelId,
        kind: ChannelKind,
        session: &mut Session,
        send: F,
    ) where
        F: FnOnce(Arc<ChannelWriteHalf<client::Msg>>) -> Fut,
        Fut: Future<Output = Result<(), russh::Error>>,
    {
        if self.programs.contains(&channel) {
            // sshd would refuse it too; it must never run under the first one's tap.
            tracing::warn!(session = %self.info.id, channel = %channel, "refused a second program request on a channel");
            let _ = session.channel_failure(channel);
            return;
        }
        let admitted = match self.transfer_for(&kind) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.refuse_transfer(channel, &kind, &refusal, session)
                    .await;
                return;
            }
        };
        // Boxed: see `authorize`.
        let recording =
            match Box::pin(self.prepare_program(channel, &kind, admitted.transfer)).await {
                Ok(file) => file,
                Err(message) => {
                    // Disconnect first: a client that saw the request fail would exit before
                    // reading why.
                    self.info.fail(EndReason::Failed(message.clone()));
                    let _ = session.disconnect(Disconnect::ByApplication, &message, "en");
                    let _ = session.channel_failure(channel);
                    return;
                }
            };
        if !self.relay_request(channel, session, send).await {
            // The server refused it: nothing more is recorded or audited on the channel,
            // and the recording opened for it goes (no row would reference it).
            tracing::info!(session = %self.info.id, channel = %channel, "the server refused the program request");
            if let Some(tap) = self.channels.get(&channel).and_then(|l| l.detach()) {
                tap.discard().await;
            }
            return;
        }
        self.programs.insert(channel);
        // Recorded from here on: the spool limit no longer refuses this session.
        self.recorded |= recording.is_some();
        let env = self.envs.get(&channel).cloned().unwrap_or_default();
        let record =
            ChannelRecord::program(u32::from(channel), &kind, now_micros(), recording, env);
        self.info.tracker.channel_opened(record);
        if let Some(tap) = self.channels.get(&channel).and_then(|l| l.tap()) {
            tap.record_opened();
        }
        if let Some(note) = admitted.unrecorded {
            self.note_unrecorded(channel, &kind, &note);
        }
    }

    /// Prepares a program (shell, exec, subsystem) on `channel` before its request goes to
    /// the server, so that not a byte of its output escapes the recording: opens the
    /// recording when the policy asks for one and starts watching the channel. `Err` is
    /// the message to end the session with: the program must not run (an unrecordable
    /// session under `refuse`).
    async fn prepare_program(
        &mut self,
        channel: ChannelId,
        kind: &ChannelKind,
        transfer: Option<Transfer>,
    ) -> Result<Option<String>, String> {
        let Some(link) = self.channels.get(&channel).cloned() else {
            return Ok(None);
        };
        // The policy in force now: a change since the connection began applies here.
        let Some(permissions) = self.info.permissions.get() else {
            return Err("sshgw: internal error: connection was not admitted".into());
        };
        let refuse = self.ctx.recording.on_failure == RecordingFailure::Refuse;
        let recorder = if permissions.policy.ssh.command_logging {
            match self.open_recording(channel, kind).await {
                Ok(opened) => Some(opened),
                Err(error) if refuse => {
                    return Err(format!(
                        "sshgw: session refused: policy {:?} requires a recording, and it cannot be written ({error})",
                        permissions.policy.name
                    ));
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let file = recorder
            .as_ref()
            .map(|(_, path)| path.display().to_string());
        link.attach(Arc::new(ProgramTap::new(
            self.info.clone(),
            u32::from(channel),
            recorder,
            transfer,
            refuse,
        )));
        Ok(file)
    }

    /// Opens the recording of the program `kind` on `channel`; a failure is logged and
    /// counted, and its error returned.
    async fn open_recording(
        &self,
        channel: ChannelId,
        kind: &ChannelKind,
    ) -> Result<(Recorder, std::path::PathBuf), String> {
        let number = u32::from(channel);
        let meta = ChannelMeta {
            session_id: self.info.id.clone(),
            channel: kind.clone(),
            pty: self.ptys.get(&channel).cloned(),
            user_email: self.info.identity.as_ref().map(|i| i.email.clone()),
            device_id: self.info.identity.as_ref().map(|i| i.device_id.clone()),
            login: self.login.clone().unwrap_or_default(),
            destination: self.info.original_dst.to_string(),
            env: self.envs.get(&channel).cloned().unwrap_or_default(),
        };
        self.ctx
            .recording
            .open(&self.info.id, number, meta, !self.recorded)
            .await
            .map_err(|e| {
                let error = format!("{e:#}");
                tracing::error!(session = %self.info.id, channel = number, error = %error, "cannot open the recording");
                crate::metrics::METRICS
                    .recording_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                error
            })
    }

    /// What the policy lets a program request run as (its SFTP/scp auditor, an unrecorded
    /// handoff to note), or why it refuses it.
    fn transfer_for(&self, kind: &ChannelKind) -> Result<Admitted, Refusal> {
        // The policy in force now: a change since the connection began applies here.
        match self.info.permissions.get() {
            Some(permissions) => admit_program(&permissions.policy, kind),
            None => Ok(Admitted::default()),
        }
    }

    /// A program the policy refuses runs as a program that only explains why: the request
    /// is accepted (a client whose request failed would exit before printing anything),
    /// then the reason goes to stderr, exit status 1, and the channel closes. The server
    /// never sees the request. The refusal is logged as a channel and a denied file
    /// operation (`refused`).
    async fn refuse_transfer(
        &mut self,
        channel: ChannelId,
        kind: &ChannelKind,
        refusal: &Refusal,
        session: &mut Session,
    ) {
        let message = &refusal.message;
        let what = match refusal.protocol {
            FileProtocol::Sftp | FileProtocol::Scp => "file transfer refused by policy",
            _ => "program refused by policy",
        };
        tracing::info!(session = %self.info.id, channel = %channel, reason = %message, "{what}");
        self.log_refusal(u32::from(channel), kind, refusal);
        if let Some(link) = self.channels.get(&channel) {
            let _ = link.upstream.close().await;
        }
        let _ = session.channel_success(channel);
        let _ = session.extended_data(channel, 1, format!("{message}\r\n").into_bytes());
        let _ = session.exit_status_request(channel, 1);
        let _ = session.eof(channel);
        let _ = session.close(channel);
    }

    /// Logs a refused program: a channel that ran and exited 1, with the refusal as its
    /// denied file operation.
    fn log_refusal(&self, channel: u32, kind: &ChannelKind, refusal: &Refusal) {
        let now = now_micros();
        let record = ChannelRecord::program(channel, kind, now, None, Vec::new());
        // A shell has no command line (as when it runs), and an empty path.
        let path = record.command.clone().unwrap_or_default();
        self.info.tracker.channel_opened(record);
        self.info.tracker.file_op(FileOpRecord::refused(
            channel,
            now,
            refusal.protocol,
            path,
            refusal.message.to_string(),
        ));
        self.info.tracker.channel_closed(channel, Some(1), None);
    }

    /// The program hands the session over to a channel sshgw cannot record (the policy
    /// allows it): the session log and the recording say so.
    fn note_unrecorded(&self, channel: ChannelId, kind: &ChannelKind, note: &str) {
        let tap = self.channels.get(&channel).and_then(ChannelLink::tap);
        if let (ChannelKind::Exec { command }, Some(tap)) = (kind, tap) {
            tap.unrecorded_handoff(command, note);
        }
    }
}
