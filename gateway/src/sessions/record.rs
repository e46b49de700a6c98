//! The session log's records (a connection, its programs, their file operations) and the
//! closed vocabulary they are written in. Each name has one text, the same in SQLite, the
//! API's JSON and a recording's trailer; the store reads a text back only if it names one.

use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::format_time;
use crate::{
    file_audit::{FileEvent, ScpDirection, ScpOpKind, SftpOpKind},
    policy::model::Action,
    recording::writer::ChannelKind,
    util::vocabulary::text_names,
};

pub(super) fn serialize_time<S: serde::Serializer>(micros: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*micros))
}

pub(super) fn serialize_opt_time<S: serde::Serializer>(
    micros: &Option<i64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match micros {
        Some(m) => s.serialize_str(&format_time(*m)),
        None => s.serialize_none(),
    }
}

pub(super) fn deserialize_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let text = String::deserialize(d)?;
    parse_time(&text).map_err(serde::de::Error::custom)
}

pub(super) fn deserialize_opt_time<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|t| parse_time(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn parse_time(text: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339(text).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_micros() as i64)
}

/// One intercepted connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub email: Option<String>,
    pub device_id: Option<String>,
    /// The device's address and port.
    pub source: String,
    /// The original destination address and port.
    pub destination: String,
    /// The Unix login, once the user named it.
    pub login: Option<String>,
    pub policy_id: Option<String>,
    pub policy_name: Option<String>,
    pub decision: Action,
    #[serde(
        serialize_with = "serialize_time",
        deserialize_with = "deserialize_time"
    )]
    pub started_at: i64,
    #[serde(
        serialize_with = "serialize_opt_time",
        deserialize_with = "deserialize_opt_time"
    )]
    pub ended_at: Option<i64>,
    pub duration_ms: Option<u64>,
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
    /// `client`, `server`, `admin kill`, `max duration`, or an error text.
    pub close_reason: Option<String>,
    /// Serial of the minted user certificate (a string: 64-bit values exceed JSON numbers).
    pub cert_serial: Option<String>,
    /// SHA-256 fingerprint of the server's host key.
    pub upstream_host_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelRecord>,
    /// File operations seen on SFTP and legacy scp channels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_ops: Vec<FileOpRecord>,
}

/// One file operation on an SFTP or scp channel, with what the server (or the gateway,
/// when it denied it) answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileOpRecord {
    pub channel: u32,
    #[serde(
        serialize_with = "serialize_time",
        deserialize_with = "deserialize_time"
    )]
    pub at: i64,
    pub protocol: FileProtocol,
    pub op: FileOperation,
    pub path: String,
    pub target: Option<String>,
    pub flags: Option<String>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// `ok`, the server's error, or the gateway's denial.
    pub status: String,
    /// Refused by the gateway's transfer rules (never reached the server).
    pub denied: bool,
}

impl SessionRecord {
    /// A record just opened: everything not known at the accept is empty.
    pub fn new(
        id: String,
        source: String,
        destination: String,
        decision: Action,
        started_at: i64,
    ) -> Self {
        SessionRecord {
            id,
            email: None,
            device_id: None,
            source,
            destination,
            login: None,
            policy_id: None,
            policy_name: None,
            decision,
            started_at,
            ended_at: None,
            duration_ms: None,
            bytes_from_client: 0,
            bytes_from_server: 0,
            close_reason: None,
            cert_serial: None,
            upstream_host_key: None,
            channels: vec![],
            file_ops: vec![],
        }
    }
}

/// One program (shell, exec, subsystem) on a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelRecord {
    /// The device-side SSH channel number.
    pub channel: u32,
    pub kind: ProgramKind,
    /// The exec command line or the subsystem name.
    pub command: Option<String>,
    #[serde(
        serialize_with = "serialize_time",
        deserialize_with = "deserialize_time"
    )]
    pub started_at: i64,
    #[serde(
        serialize_with = "serialize_opt_time",
        deserialize_with = "deserialize_opt_time"
    )]
    pub ended_at: Option<i64>,
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    /// Path of the encrypted recording, when the policy asked for one.
    pub recording: Option<String>,
    /// Where the recording is in object storage, once uploaded (`null` before, and
    /// without `[storage]`).
    #[serde(default)]
    pub recording_object: Option<super::uploads::StoredObject>,
    /// Environment variables the server accepted for the program (`env` requests), as
    /// `[name, value]` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
}

/// What a channel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    Shell,
    Exec,
    Subsystem,
}

impl ProgramKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProgramKind::Shell => "shell",
            ProgramKind::Exec => "exec",
            ProgramKind::Subsystem => "subsystem",
        }
    }

    pub fn all() -> [ProgramKind; 3] {
        [
            ProgramKind::Shell,
            ProgramKind::Exec,
            ProgramKind::Subsystem,
        ]
    }

    /// The kind of a channel's program request.
    pub fn of(request: &ChannelKind) -> ProgramKind {
        match request {
            ChannelKind::Shell => ProgramKind::Shell,
            ChannelKind::Exec { .. } => ProgramKind::Exec,
            ChannelKind::Subsystem { .. } => ProgramKind::Subsystem,
        }
    }
}

text_names!(ProgramKind, "channel kind", serde);

/// Which protocol a file operation row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileProtocol {
    Sftp,
    Scp,
    /// A transfer stream that could not be parsed (the row does not say which).
    SftpOrScp,
    /// Not a transfer: a refused or unaudited program (shell, other exec, subsystem).
    Ssh,
}

impl FileProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            FileProtocol::Sftp => "sftp",
            FileProtocol::Scp => "scp",
            FileProtocol::SftpOrScp => "sftp/scp",
            FileProtocol::Ssh => "ssh",
        }
    }

    pub fn all() -> [FileProtocol; 4] {
        use FileProtocol::*;
        [Sftp, Scp, SftpOrScp, Ssh]
    }
}

text_names!(FileProtocol, "file protocol", serde);

/// What a file operation row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOperation {
    /// An SFTP request (`open`, `rename`, …) or what the auditor noticed.
    Sftp(SftpOpKind),
    /// A legacy scp file, directory, error or refusal, e.g. `upload file`.
    Scp(ScpDirection, ScpOpKind),
    /// The policy refused the program before it ran (`refused`).
    Refused,
    /// The transfer stream could not be parsed (`unparseable`).
    Unparseable,
    /// An allowed program hands the session to a channel sshgw cannot record.
    UnauditedHandoff,
}

impl FileOperation {
    pub fn as_str(self) -> &'static str {
        use {ScpDirection::*, ScpOpKind::*};
        match self {
            FileOperation::Sftp(op) => op.as_str(),
            FileOperation::Scp(Upload, File) => "upload file",
            FileOperation::Scp(Upload, Dir) => "upload dir",
            FileOperation::Scp(Upload, Error) => "upload error",
            FileOperation::Scp(Upload, Refused) => "upload refused",
            FileOperation::Scp(Download, File) => "download file",
            FileOperation::Scp(Download, Dir) => "download dir",
            FileOperation::Scp(Download, Error) => "download error",
            FileOperation::Scp(Download, Refused) => "download refused",
            FileOperation::Refused => "refused",
            FileOperation::Unparseable => "unparseable",
            FileOperation::UnauditedHandoff => "unaudited handoff",
        }
    }

    pub fn all() -> impl Iterator<Item = FileOperation> {
        let sftp = SftpOpKind::ALL.into_iter().map(FileOperation::Sftp);
        let scp = ScpDirection::ALL
            .into_iter()
            .flat_map(|d| ScpOpKind::ALL.map(|op| FileOperation::Scp(d, op)));
        let gateway = [
            FileOperation::Refused,
            FileOperation::Unparseable,
            FileOperation::UnauditedHandoff,
        ];
        sftp.chain(scp).chain(gateway)
    }
}

text_names!(FileOperation, "file operation", serde);

impl ChannelRecord {
    /// A program (shell, exec, subsystem) that starts, or is refused, on `channel`: its kind
    /// and command line (the subsystem's name; none for a shell) come from its request.
    pub fn program(
        channel: u32,
        request: &ChannelKind,
        started_at: i64,
        recording: Option<String>,
        env: Vec<(String, String)>,
    ) -> Self {
        let command = match request {
            ChannelKind::Shell => None,
            ChannelKind::Exec { command } => Some(command.clone()),
            ChannelKind::Subsystem { name } => Some(name.clone()),
        };
        ChannelRecord {
            channel,
            kind: ProgramKind::of(request),
            command,
            started_at,
            ended_at: None,
            exit_status: None,
            exit_signal: None,
            recording,
            recording_object: None,
            env,
        }
    }
}

impl FileOpRecord {
    /// A file operation the SFTP or scp auditor completed.
    pub fn from_event(channel: u32, at: i64, event: FileEvent) -> Self {
        match event {
            FileEvent::Sftp(op) => FileOpRecord {
                target: op.target,
                flags: op.flags,
                bytes_read: op.bytes_read,
                bytes_written: op.bytes_written,
                status: op.status_text,
                denied: op.denied,
                ..Self::bare(
                    channel,
                    at,
                    FileProtocol::Sftp,
                    FileOperation::Sftp(op.op),
                    op.path,
                )
            },
            FileEvent::Scp(file) => {
                let upload = file.direction == ScpDirection::Upload;
                let op = FileOperation::Scp(file.direction, file.op);
                FileOpRecord {
                    target: file.name,
                    flags: Some(format!("size={},mode={:04o}", file.size, file.mode)),
                    bytes_read: if upload { 0 } else { file.bytes },
                    bytes_written: if upload { file.bytes } else { 0 },
                    status: file.status_text,
                    denied: file.denied,
                    ..Self::bare(channel, at, FileProtocol::Scp, op, file.path)
                }
            }
        }
    }

    /// The policy refused a program (`command`: its command line or subsystem name) with
    /// `message`; the server never saw it.
    pub fn refused(
        channel: u32,
        at: i64,
        protocol: FileProtocol,
        command: String,
        message: String,
    ) -> Self {
        FileOpRecord {
            status: message,
            denied: true,
            ..Self::bare(channel, at, protocol, FileOperation::Refused, command)
        }
    }

    /// The channel's transfer stream could not be parsed, for `reason`.
    pub fn unparseable(channel: u32, at: i64, reason: String) -> Self {
        FileOpRecord {
            status: reason,
            ..Self::bare(
                channel,
                at,
                FileProtocol::SftpOrScp,
                FileOperation::Unparseable,
                String::new(),
            )
        }
    }

    /// `command` hands the session over to a channel sshgw cannot record (`note` says so).
    pub fn unaudited_handoff(channel: u32, at: i64, command: &str, note: &str) -> Self {
        FileOpRecord {
            status: note.to_string(),
            ..Self::bare(
                channel,
                at,
                FileProtocol::Ssh,
                FileOperation::UnauditedHandoff,
                command.to_string(),
            )
        }
    }

    fn bare(
        channel: u32,
        at: i64,
        protocol: FileProtocol,
        op: FileOperation,
        path: String,
    ) -> Self {
        FileOpRecord {
            channel,
            at,
            protocol,
            op,
            path,
            target: None,
            flags: None,
            bytes_read: 0,
            bytes_written: 0,
            status: String::new(),
            denied: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_audit::{ScpFile, SftpOp};

    /// Every name reads back as itself, in JSON as in text; and no two share a text.
    fn round_trips<T>(all: impl IntoIterator<Item = T>)
    where
        T: Copy + PartialEq + std::fmt::Debug + std::str::FromStr + Serialize,
        T: for<'de> Deserialize<'de> + std::fmt::Display,
        <T as std::str::FromStr>::Err: std::fmt::Debug,
    {
        let mut seen = std::collections::HashSet::new();
        for name in all {
            let text = name.to_string();
            assert!(seen.insert(text.clone()), "{text:?} names two members");
            assert_eq!(text.parse::<T>().unwrap(), name);
            let json = serde_json::to_string(&name).unwrap();
            assert_eq!(json, serde_json::to_string(&text).unwrap());
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), name);
        }
    }

    #[test]
    fn each_name_has_one_text_in_sqlite_and_json() {
        round_trips(Action::all());
        round_trips(ProgramKind::all());
        round_trips(FileProtocol::all());
        round_trips(FileOperation::all());
        assert_eq!(FileOperation::all().count(), 19 + 8 + 3);
    }

    #[test]
    fn todays_texts() {
        let texts = |names: Vec<&'static str>| names.join(",");
        assert_eq!(
            texts(Action::all().map(Action::as_str).to_vec()),
            "audit_ssh,block"
        );
        assert_eq!(
            texts(ProgramKind::all().map(ProgramKind::as_str).to_vec()),
            "shell,exec,subsystem"
        );
        assert_eq!(
            texts(FileProtocol::all().map(FileProtocol::as_str).to_vec()),
            "sftp,scp,sftp/scp,ssh"
        );
        assert_eq!(
            texts(FileOperation::all().map(FileOperation::as_str).collect()),
            "open,opendir,close,remove,rename,posix-rename,mkdir,rmdir,setstat,fsetstat,\
             lsetstat,symlink,hardlink,copy-data,write,extended,unknown,protocol violation,\
             tracking stopped,upload file,upload dir,upload error,upload refused,\
             download file,download dir,download error,download refused,refused,\
             unparseable,unaudited handoff"
        );
        // The policy document's own serde writes the decision the same way.
        for action in Action::all() {
            assert_eq!(
                serde_json::to_value(action).unwrap(),
                serde_json::json!(action.as_str())
            );
        }
    }

    #[test]
    fn an_unknown_text_is_refused_by_name() {
        let err = "sftp2".parse::<FileProtocol>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown file protocol "sftp2" (expected one of: sftp, scp, sftp/scp, ssh)"#
        );
        let err = serde_json::from_str::<ProgramKind>(r#""x11""#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"unknown channel kind "x11" (expected one of: shell"#),
            "{err}"
        );
        assert!("allow".parse::<Action>().is_err());
        assert!("upload".parse::<FileOperation>().is_err());
    }

    #[test]
    fn a_channel_record_takes_kind_and_command_from_the_request() {
        let requests = [
            (ChannelKind::Shell, None),
            (
                ChannelKind::Exec {
                    command: "uptime".into(),
                },
                Some("uptime"),
            ),
            (
                ChannelKind::Subsystem {
                    name: "sftp".into(),
                },
                Some("sftp"),
            ),
        ];
        for (request, command) in requests {
            let record = ChannelRecord::program(4, &request, 7, Some("r".into()), vec![]);
            assert_eq!(record.kind.as_str(), request.as_str());
            assert_eq!(record.command.as_deref(), command);
            assert_eq!((record.channel, record.started_at), (4, 7));
            assert_eq!(record.recording.as_deref(), Some("r"));
        }
    }

    fn sftp_setstat() -> SftpOp {
        SftpOp {
            op: SftpOpKind::Setstat,
            path: "/tmp/a".into(),
            target: Some("/tmp/b".into()),
            flags: Some("write".into()),
            attrs: Some("mode=0600".into()),
            bytes_read: 1,
            bytes_written: 2,
            status: Some(3),
            status_text: "Permission denied".into(),
            denied: true,
        }
    }

    fn scp_file(direction: ScpDirection) -> ScpFile {
        ScpFile {
            direction,
            op: ScpOpKind::File,
            path: "/tmp/f.txt".into(),
            name: Some("f.txt".into()),
            size: 3,
            mode: 0o644,
            bytes: 3,
            ok: true,
            denied: false,
            status_text: "ok".into(),
        }
    }

    fn json(record: FileOpRecord) -> serde_json::Value {
        serde_json::to_value(record).unwrap()
    }

    #[test]
    fn file_operation_rows_as_the_relay_writes_them() {
        let sftp = FileOpRecord::from_event(2, 0, FileEvent::Sftp(sftp_setstat()));
        assert_eq!(
            json(sftp),
            serde_json::json!({"channel": 2, "at": "1970-01-01T00:00:00.000000Z",
                "protocol": "sftp", "op": "setstat", "path": "/tmp/a", "target": "/tmp/b",
                "flags": "write", "bytes_read": 1, "bytes_written": 2,
                "status": "Permission denied", "denied": true})
        );
        let up = FileOpRecord::from_event(2, 0, FileEvent::Scp(scp_file(ScpDirection::Upload)));
        let up = json(up);
        assert_eq!(up["op"], "upload file");
        assert_eq!(up["flags"], "size=3,mode=0644");
        assert_eq!(
            (&up["bytes_read"], &up["bytes_written"]),
            (&0.into(), &3.into())
        );
        let down = json(FileOpRecord::from_event(
            2,
            0,
            FileEvent::Scp(scp_file(ScpDirection::Download)),
        ));
        assert_eq!(
            (&down["protocol"], &down["op"]),
            (&"scp".into(), &"download file".into())
        );
        assert_eq!(
            (&down["bytes_read"], &down["bytes_written"]),
            (&3.into(), &0.into())
        );
    }

    #[test]
    fn the_gateways_own_file_operation_rows() {
        let refused =
            FileOpRecord::refused(3, 0, FileProtocol::Scp, "scp -t /etc".into(), "no".into());
        assert_eq!(
            json(refused),
            serde_json::json!({"channel": 3, "at": "1970-01-01T00:00:00.000000Z",
                "protocol": "scp", "op": "refused", "path": "scp -t /etc", "target": null,
                "flags": null, "bytes_read": 0, "bytes_written": 0, "status": "no",
                "denied": true})
        );
        let broken = json(FileOpRecord::unparseable(2, 0, "packet too long".into()));
        assert_eq!(
            (&broken["protocol"], &broken["op"]),
            (&"sftp/scp".into(), &"unparseable".into())
        );
        assert_eq!(
            (&broken["path"], &broken["denied"]),
            (&"".into(), &false.into())
        );
        let handoff = json(FileOpRecord::unaudited_handoff(
            1,
            0,
            "mosh-server new",
            "note",
        ));
        assert_eq!(
            (
                &handoff["protocol"],
                &handoff["op"],
                &handoff["path"],
                &handoff["status"]
            ),
            (
                &"ssh".into(),
                &"unaudited handoff".into(),
                &"mosh-server new".into(),
                &"note".into()
            )
        );
    }
}
