//! What the relay keeps of a running program (shell, exec, subsystem): its channel record
//! in the session log and, when the policy asks for it, its encrypted recording.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;

use super::{
    ConnectionInfo, EndReason,
    channel::{ChannelExit, Filter, Tap},
};
use crate::{
    file_audit::{
        FileEvent, Filtered, ScpAudit, ScpDirection, SftpAudit, SftpMode, TransferRules,
        exec::{self, ExecProgram},
    },
    policy::eval::{self, Program, Verdict},
    policy::model::{Policy, SftpRule},
    recording::writer::{ChannelKind, Exit, Recorder},
    sessions::{FileOpRecord, FileProtocol, now_micros},
};

pub struct ProgramTap {
    pub info: Arc<ConnectionInfo>,
    pub channel: u32,
    pub recorder: Option<Recorder>,
    /// The recording's file, while the program may still be refused.
    pub recording_path: Option<std::path::PathBuf>,
    /// SFTP/scp auditor; both directions of the channel go through it, one at a time.
    pub transfer: Option<tokio::sync::Mutex<Transfer>>,
    /// `on_recording_failure = "refuse"`: a recording that breaks ends the session.
    pub refuse_unrecorded: bool,
    failure_reported: AtomicBool,
    /// How the program ended, once the server said so: its exit can overtake the reply to
    /// its own request, and so the channel's record ([`ProgramTap::record_opened`]).
    exit: std::sync::Mutex<Option<ChannelExit>>,
}

impl ProgramTap {
    pub fn new(
        info: Arc<ConnectionInfo>,
        channel: u32,
        recorder: Option<(Recorder, std::path::PathBuf)>,
        transfer: Option<Transfer>,
        refuse_unrecorded: bool,
    ) -> Self {
        let (recorder, recording_path) = recorder.unzip();
        ProgramTap {
            info,
            channel,
            recorder,
            recording_path,
            transfer: transfer.map(tokio::sync::Mutex::new),
            refuse_unrecorded,
            failure_reported: AtomicBool::new(false),
            exit: Default::default(),
        }
    }

    /// The channel's record is in the session now: it takes an exit the server already
    /// reported (a fast program's exit status can arrive before the request's reply).
    pub fn record_opened(&self) {
        let exit = self.exit.lock().expect("exit lock poisoned").clone();
        if let Some(exit) = exit {
            self.note_exit(&exit);
        }
    }

    fn note_exit(&self, exit: &ChannelExit) {
        self.info.tracker.program_exited(
            self.channel,
            exit.status,
            exit.signal.as_ref().map(|(name, _)| name.clone()),
        );
    }

    /// Channel data as relayed (`ext` = extended-data code, 1 for stderr).
    pub async fn data(&self, from_client: bool, ext: Option<u32>, data: &Bytes) {
        if let Some(recorder) = &self.recorder {
            recorder.data(from_client, ext, data.clone()).await;
            self.check(recorder);
        }
    }

    /// The program was refused: its recording never happened, so it leaves no file behind
    /// (nothing would reference it; see docs/recording-format.md).
    pub async fn discard(&self) {
        if let Some(recorder) = &self.recorder {
            let _ = recorder.finish(Exit::None).await;
        }
        if let Some(path) = &self.recording_path
            && let Err(e) = tokio::fs::remove_file(path).await
        {
            tracing::error!(session = %self.info.id, channel = self.channel, file = %path.display(), error = %e, "cannot remove the recording of a refused program");
        }
    }

    pub async fn resize(&self, cols: u32, rows: u32) {
        if let Some(recorder) = &self.recorder {
            recorder.resize(cols, rows).await;
        }
    }

    /// The channel closed: finish the recording and the channel record.
    pub async fn closed(&self, exit: ChannelExit) {
        if let Some(transfer) = &self.transfer {
            let mut auditor = transfer.lock().await;
            let events = auditor.finish();
            let unparseable = auditor.unparseable();
            drop(auditor);
            self.file_events(events);
            if let Some(reason) = unparseable {
                // Flagged, not fatal (under plain `allow` the bytes passed unchanged).
                tracing::warn!(session = %self.info.id, channel = self.channel, reason = %reason, "file-transfer stream could not be parsed");
                self.file_op(FileOpRecord::unparseable(
                    self.channel,
                    now_micros(),
                    reason,
                ));
            }
        }
        if let Some(recorder) = &self.recorder {
            let end = recording_end(&self.info, &exit);
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
            self.info.abort(EndReason::RecordingFailed(error));
        }
    }
}

/// How a program's recording ends: its exit signal or status, else the message of the
/// gateway that ended the session (a failure it told the user about).
fn recording_end(info: &ConnectionInfo, exit: &ChannelExit) -> Exit {
    match (&exit.signal, exit.status) {
        (Some((name, core_dumped)), _) => Exit::Signal {
            name: name.clone(),
            core_dumped: *core_dumped,
        },
        (None, Some(code)) => Exit::Status(code),
        (None, None) => {
            let failure = info
                .failure
                .lock()
                .expect("failure lock poisoned")
                .as_ref()
                .and_then(EndReason::user_message);
            let ended = info
                .ended_by_gateway
                .lock()
                .expect("end reason poisoned")
                .clone();
            match failure.or(ended) {
                Some(reason) => Exit::Error(reason),
                None => Exit::None,
            }
        }
    }
}

impl Tap for ProgramTap {
    fn exited(&self, exit: &ChannelExit) {
        *self.exit.lock().expect("exit lock poisoned") = Some(exit.clone());
        self.note_exit(exit);
    }

    type Filter = Transfer;

    fn data(
        &self,
        from_client: bool,
        ext: Option<u32>,
        data: &Bytes,
    ) -> impl Future<Output = ()> + Send {
        ProgramTap::data(self, from_client, ext, data)
    }

    fn filter(&self) -> Option<&tokio::sync::Mutex<Transfer>> {
        self.transfer.as_ref()
    }

    fn file_events(&self, events: Vec<FileEvent>) {
        ProgramTap::file_events(self, events)
    }

    fn closed(&self, exit: ChannelExit) -> impl Future<Output = ()> + Send {
        ProgramTap::closed(self, exit)
    }

    fn session(&self) -> &str {
        &self.info.id
    }

    fn channel(&self) -> u32 {
        self.channel
    }
}

/// The file-transfer auditor of an SFTP or legacy scp channel (see `file_audit`).
pub enum Transfer {
    Sftp(SftpAudit),
    Scp(ScpAudit),
}

impl Filter for Transfer {
    fn client_data(&mut self, data: Bytes) -> Filtered {
        Transfer::client_data(self, data)
    }

    fn server_data(&mut self, data: Bytes) -> Filtered {
        Transfer::server_data(self, data)
    }
}

impl Transfer {
    pub fn client_data(&mut self, data: Bytes) -> Filtered {
        match self {
            Transfer::Sftp(a) => a.from_client(data),
            Transfer::Scp(a) => a.from_client(data),
        }
    }

    pub fn server_data(&mut self, data: Bytes) -> Filtered {
        match self {
            Transfer::Sftp(a) => a.from_server(data),
            Transfer::Scp(a) => a.from_server(data),
        }
    }

    fn finish(&mut self) -> Vec<FileEvent> {
        match self {
            Transfer::Sftp(a) => a.finish(),
            Transfer::Scp(a) => a.finish(),
        }
    }

    /// Why the stream could not be parsed, if it could not.
    fn unparseable(&self) -> Option<String> {
        match self {
            Transfer::Sftp(a) => a.unparseable(),
            Transfer::Scp(a) => a.unparseable(),
        }
        .map(str::to_string)
    }
}

/// A program request the policy lets run: the auditor of its file transfers, and, for a
/// program that hands the session over to a channel sshgw cannot record, what the session
/// log must say about it.
#[derive(Default)]
pub struct Admitted {
    pub transfer: Option<Transfer>,
    pub unrecorded: Option<String>,
}

/// A program request the policy refuses.
pub struct Refusal {
    /// The `protocol` of its file-operation row: SFTP, scp, or `ssh` (shells, other execs
    /// and subsystems).
    pub protocol: FileProtocol,
    /// For the user.
    pub message: String,
}

/// Judges a program request (shell, exec, subsystem) under `policy`: an exec of an
/// sftp-server binary is SFTP like the subsystem, plain scp is scp, and the rest is up to
/// `ssh.shell`, `ssh.exec` and `ssh.unrecordable_programs` (see `policy::eval`).
pub fn admit_program(policy: &Policy, kind: &ChannelKind) -> Result<Admitted, Refusal> {
    let mut scp = None;
    let program = match kind {
        ChannelKind::Shell => Program::Shell,
        ChannelKind::Subsystem { name } if name == "sftp" => Program::Sftp,
        ChannelKind::Subsystem { name } => Program::Subsystem(name),
        ChannelKind::Exec { command } => match exec::classify(command) {
            ExecProgram::SftpServer => Program::Sftp,
            ExecProgram::Scp(cmd) => {
                let upload = cmd.direction == ScpDirection::Upload;
                scp = Some(cmd);
                Program::Scp { upload }
            }
            ExecProgram::Unrecordable(program) => Program::Unrecordable {
                program,
                origin: exec::unrecordable_origin(program),
            },
            ExecProgram::Other => Program::Exec,
        },
    };
    let protocol = match program {
        Program::Sftp => FileProtocol::Sftp,
        Program::Scp { .. } => FileProtocol::Scp,
        _ => FileProtocol::Ssh,
    };
    let verdict =
        eval::judge_program(policy, program).map_err(|message| Refusal { protocol, message })?;
    let rules = transfer_rules(policy);
    let transfer = match (program, scp) {
        (Program::Sftp, _) => Some(Transfer::Sftp(SftpAudit::new(rules))),
        (_, Some(cmd)) => Some(Transfer::Scp(ScpAudit::new(cmd, rules))),
        _ => None,
    };
    let unrecorded = match verdict {
        Verdict::Run => None,
        Verdict::RunUnrecorded(note) => Some(note),
    };
    Ok(Admitted {
        transfer,
        unrecorded,
    })
}

/// The policy's transfer rules as the auditor takes them.
pub fn transfer_rules(policy: &Policy) -> TransferRules {
    TransferRules {
        sftp: match policy.ssh.sftp {
            SftpRule::Allow => SftpMode::Allow,
            SftpRule::ReadOnly => SftpMode::ReadOnly,
            SftpRule::Deny => SftpMode::Deny,
        },
        max_upload_bytes: policy.ssh.max_upload_bytes,
        policy_name: policy.name.clone(),
    }
}

impl ProgramTap {
    /// Logs file operations the auditor completed.
    pub fn file_events(&self, events: Vec<FileEvent>) {
        for event in events {
            let record = FileOpRecord::from_event(self.channel, now_micros(), event);
            tracing::info!(
                session = %self.info.id,
                channel = self.channel,
                protocol = %record.protocol,
                op = %record.op,
                path = %record.path,
                target = record.target.as_deref().unwrap_or("-"),
                bytes_read = record.bytes_read,
                bytes_written = record.bytes_written,
                status = %record.status,
                denied = record.denied,
                "file operation"
            );
            self.file_op(record);
        }
    }

    /// The program hands the session over to a channel sshgw cannot record (allowed by
    /// the policy): the session log, and the recording, say so.
    pub fn unrecorded_handoff(&self, command: &str, note: &str) {
        tracing::warn!(session = %self.info.id, channel = self.channel, command = %command, note = %note, "unaudited handoff");
        self.file_op(FileOpRecord::unaudited_handoff(
            self.channel,
            now_micros(),
            command,
            note,
        ));
    }

    /// Into the session log and, when the channel is recorded, the recording's trailer.
    fn file_op(&self, record: FileOpRecord) {
        if let Some(recorder) = &self.recorder {
            match serde_json::to_vec(&record) {
                Ok(json) => recorder.file_op(json),
                Err(e) => {
                    tracing::warn!(session = %self.info.id, error = %e, "file operation not recorded")
                }
            }
        }
        self.info.tracker.file_op(record);
    }
}
